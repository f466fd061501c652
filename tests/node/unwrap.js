#!/usr/bin/env node
// client/js/batch.js with the official socket.io-client v4 against the reference server, driven
// by tests/test_node_batch_js.py through tests/nodeclient.py. One JSON line per observation:
//
//   {"type":"connected","id":SID}
//   {"type":"raw_batch","compressed":BOOL}                 each `batch` frame as the client got it
//   {"type":"on","event":NAME,"args":[...]}                a socket.on(NAME) handler ran (--on=NAME)
//   {"type":"any","event":NAME,"args":[...]}               an onAny handler ran for a non-batch event
//   {"type":"ack","event":NAME,"args":[...]}               the reply to an emit (stdin {"emit":[...]})
//   {"type":"batch_error","error":MSG}
//   {"type":"exit","reason":...}
//
// Usage: node unwrap.js --url=URL --token=TOKEN --on=chat [--on=...] [--inflate=auto|zlib|stream]
//                       [--max-ms=20000]
"use strict";

const path = require("node:path");
const readline = require("node:readline");
const { parseArgs } = require("node:util");
const { io } = require("socket.io-client");
const { unwrapBatches } = require(path.join(__dirname, "..", "..", "client", "js", "batch.js"));

const { values: opts } = parseArgs({
  options: {
    url: { type: "string" },
    token: { type: "string" },
    on: { type: "string", multiple: true, default: [] },
    inflate: { type: "string", default: "auto" },
    "max-ms": { type: "string", default: "20000" },
  },
});

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

let exiting = false;
function finish(reason) {
  if (exiting) return;
  exiting = true;
  clearTimeout(deadline);
  socket.close();
  out({ type: "exit", reason });
  process.stdout.write("", () => process.exit(0));
}
const deadline = setTimeout(() => finish("deadline"), Number(opts["max-ms"]));

const socket = io(opts.url, {
  transports: ["websocket"],
  auth: opts.token === undefined ? undefined : { token: opts.token },
  reconnection: false,
  forceNew: true,
});
socket.on("batch", (arg) => out({ type: "raw_batch", compressed: !Array.isArray(arg) }));
unwrapBatches(socket, { inflate: opts.inflate, onError: (err) => out({ type: "batch_error", error: err.message }) });
for (const name of opts.on) socket.on(name, (...args) => out({ type: "on", event: name, args }));
socket.onAny((event, ...args) => {
  if (event !== "batch") out({ type: "any", event, args });
});
socket.on("connect", () => out({ type: "connected", id: socket.id }));
socket.on("connect_error", (err) => {
  out({ type: "connect_error", message: err.message });
  finish("connect_error");
});
socket.on("disconnect", (reason) => {
  out({ type: "disconnect", reason });
  finish("disconnected");
});

const commands = readline.createInterface({ input: process.stdin });
commands.on("line", (line) => {
  const cmd = JSON.parse(line);
  if (cmd.emit) {
    const [event, ...args] = cmd.emit;
    socket.timeout(5000).emit(event, ...args, (err, ...reply) => out({ type: "ack", event, args: err ? null : reply }));
  }
});
commands.on("close", () => finish("stdin closed"));
