#!/usr/bin/env node
// The official socket.io-client v4 against the reference server, driven by the Python tests
// (tests/nodeclient.py). It prints one JSON line per thing it observes on stdout:
//
//   {"type":"connected","id":SID}
//   {"type":"event","event":NAME,"args":[...]}              every event except `batch`
//   {"type":"batch","compressed":BOOL,"entries":N}          then one line per entry:
//   {"type":"event","event":NAME,"args":[...],"batched":true}
//   {"type":"bad_batch","error":MSG,"text":PREFIX}          a batch that is not JSON (or not a list)
//   {"type":"ack","event":NAME,"args":[...]}                the reply to an emit
//   {"type":"ack_timeout","event":NAME}
//   {"type":"disconnect","reason":REASON,"description":...}
//   {"type":"connect_error","message":MSG,"data":...}
//   {"type":"exit","reason":"closed"|"stdin closed"|"deadline"|"disconnected"|"connect_error"}
//
// Usage: node client.js --url=http://127.0.0.1:PORT --token=TOKEN [--emit='["chat",{"x":1}]']...
//                       [--max-ms=20000] [--ack-timeout-ms=5000] [--reconnect]
// (use the --name=value form: a token may start with "-")
// Each --emit (a JSON array: event name, then its arguments) is sent with an ack once connected.
// Commands on stdin, one JSON line each: {"emit":["chat",{"x":1}]} or {"close":true}; closing
// stdin also closes the client. It always exits by --max-ms, and never reconnects unless told to,
// so a disconnect is final and its reason is the last word.
"use strict";

const readline = require("node:readline");
const { parseArgs } = require("node:util");
const zlib = require("node:zlib");
const { io } = require("socket.io-client");

const { values: opts } = parseArgs({
  options: {
    url: { type: "string" },
    token: { type: "string" },
    emit: { type: "string", multiple: true, default: [] },
    "max-ms": { type: "string", default: "20000" },
    "ack-timeout-ms": { type: "string", default: "5000" },
    reconnect: { type: "boolean", default: false },
  },
});
if (!opts.url) {
  process.stderr.write("usage: client.js --url URL [--token TOKEN] [--emit JSON]... [--max-ms N]\n");
  process.exit(2);
}

function out(obj) {
  process.stdout.write(JSON.stringify(obj, jsonSafe) + "\n");
}

// Buffers (binary arguments) are written as {"$binary": base64}; anything else JSON can say.
function jsonSafe(key, value) {
  if (value && value.type === "Buffer" && Array.isArray(value.data)) {
    return { $binary: Buffer.from(value.data).toString("base64") };
  }
  if (ArrayBuffer.isView(value)) {
    return { $binary: Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString("base64") };
  }
  if (value instanceof ArrayBuffer) {
    return { $binary: Buffer.from(value).toString("base64") };
  }
  return value;
}

let exiting = false;
let closing = false; // we closed it: the disconnect that follows is ours, not the last word
function shutdown(reason) {
  closing = true;
  clearTimeout(deadline);
  socket.close();
  finish(reason);
}
function finish(reason, code = 0) {
  if (exiting) return;
  exiting = true;
  out({ type: "exit", reason });
  // flush stdout before leaving (a pipe write may still be pending)
  process.stdout.write("", () => process.exit(code));
}

const deadline = setTimeout(() => shutdown("deadline"), Number(opts["max-ms"]));

const socket = io(opts.url, {
  transports: ["websocket"],
  auth: opts.token === undefined ? undefined : { token: opts.token },
  reconnection: opts.reconnect,
  forceNew: true,
  timeout: 10000,
});

socket.on("connect", () => {
  out({ type: "connected", id: socket.id });
  for (const text of opts.emit) emit(JSON.parse(text));
});

socket.on("connect_error", (err) => {
  out({ type: "connect_error", message: err.message, data: err.data === undefined ? null : err.data });
  if (!opts.reconnect) finish("connect_error");
});

socket.on("disconnect", (reason, details) => {
  const description = details && details.description !== undefined ? String(details.description) : null;
  out({ type: "disconnect", reason, description });
  if (!opts.reconnect && !closing) finish("disconnected");
});

socket.onAny((event, ...args) => {
  if (event === "batch" && args.length === 1) {
    batch(args[0]);
  } else {
    out({ type: "event", event, args });
  }
});

// The server's batch: one argument, a JSON array of [event, ...args] entries, or a binary
// attachment holding the zlib (RFC 1950) compressed UTF-8 JSON of that array (README).
function batch(arg) {
  let entries = arg;
  const compressed = !Array.isArray(arg);
  if (compressed) {
    let text = "";
    try {
      text = zlib.inflateSync(Buffer.from(arg.buffer ? arg : new Uint8Array(arg))).toString("utf8");
      entries = JSON.parse(text);
    } catch (err) {
      out({ type: "bad_batch", error: err.message, text: text.slice(0, 200) });
      return;
    }
  }
  if (!Array.isArray(entries) || !entries.every((e) => Array.isArray(e) && typeof e[0] === "string")) {
    out({ type: "bad_batch", error: "not a list of [event, ...args] entries", text: JSON.stringify(entries).slice(0, 200) });
    return;
  }
  out({ type: "batch", compressed, entries: entries.length });
  for (const [event, ...args] of entries) out({ type: "event", event, args, batched: true });
}

function emit(list) {
  if (!Array.isArray(list) || typeof list[0] !== "string") {
    out({ type: "usage_error", error: "emit takes a JSON array [event, ...args]", got: list });
    return;
  }
  const [event, ...args] = list;
  socket.timeout(Number(opts["ack-timeout-ms"])).emit(event, ...args, (err, ...reply) => {
    out(err ? { type: "ack_timeout", event } : { type: "ack", event, args: reply });
  });
}

const commands = readline.createInterface({ input: process.stdin });
commands.on("line", (line) => {
  if (!line.trim()) return;
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (err) {
    out({ type: "usage_error", error: `stdin: ${err.message}` });
    return;
  }
  if (cmd.emit) emit(cmd.emit);
  if (cmd.close) shutdown("closed");
});
commands.on("close", () => shutdown("stdin closed"));
