// A producer that writes JSON records, one per line, to a starsink sink's Unix socket.
//
//	STARSINK_SOCKET_ORDERS=/var/run/starsink/orders.sock go run . [count]
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"
)

func connect(path string, attempts int) (net.Conn, error) {
	var err error
	for i := 1; i <= attempts; i++ {
		var c net.Conn
		if c, err = net.Dial("unix", path); err == nil {
			return c, nil
		}
		fmt.Fprintf(os.Stderr, "producer: cannot connect to %s (%v), attempt %d/%d; is the loader running (pod labelled starsink.io/inject and the sink Ready)?\n", path, err, i, attempts)
		time.Sleep(time.Second)
	}
	return nil, fmt.Errorf("gave up on %s: %w", path, err)
}

func main() {
	path := os.Getenv("STARSINK_SOCKET_ORDERS")
	if path == "" {
		fmt.Fprintln(os.Stderr, "producer: set STARSINK_SOCKET_ORDERS to the socket path")
		os.Exit(2)
	}
	count := 10
	if len(os.Args) > 1 {
		n, err := strconv.Atoi(os.Args[1])
		if err != nil {
			fmt.Fprintf(os.Stderr, "producer: %q is not a count\n", os.Args[1])
			os.Exit(2)
		}
		count = n
	}
	conn, err := connect(path, 30)
	if err != nil {
		fmt.Fprintln(os.Stderr, "producer:", err)
		os.Exit(1)
	}
	defer conn.Close()
	w := bufio.NewWriter(conn)
	enc := json.NewEncoder(w) // Encode ends each record with '\n': one record per line.
	for i := 0; i < count; i++ {
		record := map[string]any{"id": i, "customer": fmt.Sprintf("c-%d", i%97), "amount": float64(i) * 1.25}
		if err := enc.Encode(record); err != nil {
			fmt.Fprintln(os.Stderr, "producer:", err)
			os.Exit(1)
		}
	}
	if err := w.Flush(); err != nil {
		fmt.Fprintln(os.Stderr, "producer:", err)
		os.Exit(1)
	}
}
