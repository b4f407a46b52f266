#!/usr/bin/env node
// Writes JSON records, one per line, to a starsink sink's Unix socket.
//
//   STARSINK_SOCKET_ORDERS=/var/run/starsink/orders.sock node producer.js [count]
"use strict";
const net = require("net");

const path = process.env.STARSINK_SOCKET_ORDERS;
if (!path) {
  console.error("producer: set STARSINK_SOCKET_ORDERS to the socket path");
  process.exit(2);
}
const count = Number(process.argv[2] || 10);

function connect(attempt) {
  const sock = net.createConnection(path);
  sock.on("connect", () => {
    for (let i = 0; i < count; i++) {
      const record = { id: i, customer: `c-${i % 97}`, amount: i * 1.25 };
      sock.write(JSON.stringify(record) + "\n"); // one record per line
    }
    sock.end(); // closing tells the loader this connection is done
  });
  sock.on("error", (e) => {
    if ((e.code === "ENOENT" || e.code === "ECONNREFUSED") && attempt < 30) {
      console.error(`producer: cannot connect to ${path} (${e.code}), attempt ${attempt}/30; is the loader running (pod labelled starsink.io/inject and the sink Ready)?`);
      setTimeout(() => connect(attempt + 1), 1000);
    } else {
      console.error(`producer: ${e.message}`);
      process.exit(1);
    }
  });
}
connect(1);
