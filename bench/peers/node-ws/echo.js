#!/usr/bin/env node
// WebSocket echo server on node `ws` (the library node users pick), as its README writes one: a
// WebSocketServer, every message sent back with its type. One process, one thread (node's event loop),
// no permessage-deflate (so nothing is compressed on either side), backlog 4096 like every bench peer.
// `ws` comes from NODE_PATH (bench/websocket points it at the node_modules that tests/clients/node's
// package-lock.json installs). Usage: echo.js [--listen 127.0.0.1:0]; prints `listening on ADDR` to
// stderr when ready.
'use strict';

const { WebSocketServer } = require('ws');

let listen = '127.0.0.1:0';
const args = process.argv.slice(2);
for (let i = 0; i < args.length; i += 2) {
  if (args[i] === '--listen') listen = args[i + 1];
  else if (args[i] === '--threads') { /* one event loop; accepted for the bench's uniform command line */ }
  else { process.stderr.write(`node-ws: unknown argument ${args[i]}\n`); process.exit(2); }
}
const at = listen.lastIndexOf(':');
const host = listen.slice(0, at);
const port = Number(listen.slice(at + 1));

const wss = new WebSocketServer({ host, port, backlog: 4096, perMessageDeflate: false });
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  ws.on('error', () => {});
});
wss.on('listening', () => {
  const a = wss.address();
  process.stderr.write(`node-ws: listening on ${a.address}:${a.port}\n`);
});
wss.on('error', (e) => {
  process.stderr.write(`node-ws: ${e.message}\n`);
  process.exit(1);
});
