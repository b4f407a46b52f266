#!/usr/bin/env python3
"""Writes JSON records, one per line, to a starsink sink's Unix socket.

    STARSINK_SOCKET_ORDERS=/var/run/starsink/orders.sock python3 producer.py [COUNT]

In a pod the injector sets STARSINK_SOCKET_<SINK>; outside one, pass the path with
--socket PATH. A missing socket (the loader not started yet, or the pod not injected) is
retried for a while with a message saying what to check.

With --acks (for a sink with `acks: spooled` or `acks: committed`), the producer waits for
the loader's answer on the same connection: `ok N` once lines 1..N are safe, and
`err LINE REASON` for each line that is not. It exits 1 unless every line was acked.
"""

import argparse
import json
import os
import socket
import sys
import time


def connect(path: str, attempts: int, delay: float) -> socket.socket:
    for attempt in range(1, attempts + 1):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except (FileNotFoundError, ConnectionRefusedError) as e:
            sock.close()
            print(
                f"producer: cannot connect to {path} ({e.strerror}), attempt {attempt}/{attempts}; "
                "is the loader running (pod labelled starsink.io/inject and the sink Ready)?",
                file=sys.stderr,
            )
            time.sleep(delay)
    sys.exit(f"producer: gave up on {path} after {attempts} attempts")


def read_acks(sock: socket.socket, sent: int, timeout: float) -> bool:
    """Reads `ok N` / `err LINE REASON` until the loader closes; True if all `sent` are safe."""
    sock.settimeout(timeout)
    acked, errors, buf = 0, [], b""
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            buf += data
            *lines, buf = buf.split(b"\n")
            for line in lines:
                kind, _, rest = line.decode().partition(" ")
                if kind == "ok":
                    acked = int(rest)  # cumulative: only the latest matters
                elif kind == "err":
                    number, _, reason = rest.partition(" ")
                    errors.append((int(number), reason))
    except socket.timeout:
        print(f"producer: no final ack within {timeout}s", file=sys.stderr)
    for number, reason in errors:
        print(f"producer: line {number} not loaded: {reason}", file=sys.stderr)
    print(f"producer: {acked} of {sent} lines acked, {len(errors)} refused", file=sys.stderr)
    return acked == sent and not errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("count", type=int, nargs="?", default=10, help="records to write")
    parser.add_argument("--socket", default=os.environ.get("STARSINK_SOCKET_ORDERS"),
                        help="socket path (default: $STARSINK_SOCKET_ORDERS)")
    parser.add_argument("--start", type=int, default=0, help="first record id")
    parser.add_argument("--attempts", type=int, default=30)
    parser.add_argument("--acks", action="store_true",
                        help="wait for the loader's acks (sink acks: spooled|committed)")
    parser.add_argument("--ack-timeout", type=float, default=60.0)
    parser.add_argument("--bad", type=int, action="append", default=[],
                        help="also send a line that is not JSON after record N (to see an err)")
    args = parser.parse_args()
    if not args.socket:
        sys.exit("producer: no socket: set STARSINK_SOCKET_ORDERS or pass --socket PATH")

    sock = connect(args.socket, args.attempts, delay=1.0)
    sent = 0
    with sock:
        for i in range(args.start, args.start + args.count):
            record = {"id": i, "customer": f"c-{i % 97}", "amount": round(i * 1.25, 2),
                      "ts": time.strftime("%Y-%m-%d %H:%M:%S")}
            # One record per line; the loader batches them and loads with Stream Load.
            sock.sendall(json.dumps(record, separators=(",", ":")).encode() + b"\n")
            sent += 1
            if i in args.bad:
                sock.sendall(b"not json\n")
                sent += 1
        # Closing the write side tells the loader this connection is done.
        sock.shutdown(socket.SHUT_WR)
        print(f"producer: wrote {sent} lines to {args.socket}", file=sys.stderr)
        if args.acks and not read_acks(sock, sent, args.ack_timeout):
            sys.exit(1)


if __name__ == "__main__":
    main()
