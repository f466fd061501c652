/*
 * batch.js: unwrap the reference server's `batch` frames for the official socket.io-client (v4).
 *
 * With batching on (the optimized profile) every server-pushed event for a client inside one flush
 * window arrives as ONE event named `batch` with a single argument (server/batching.py):
 *   - a JSON array of entries [eventName, arg1, ...] in send order, or
 *   - a binary attachment: the zlib (RFC 1950) compressed UTF-8 JSON text of that array.
 * unwrapBatches(socket) turns each entry back into an event for the socket's own `socket.on(name)`
 * handlers (and its `onAny` handlers), in order, compressed or not.
 *
 * Browser:  <script src="socket.io.min.js"></script><script src="batch.js"></script>
 *           const socket = io(url, { auth: { token } });
 *           SocketBatch.unwrapBatches(socket);          // zlib via DecompressionStream
 *           socket.on("chat", (msg) => ...);
 * Node:     const { unwrapBatches } = require("./client/js/batch.js");   // zlib via node:zlib
 *
 * unwrapBatches(socket, options) -> { off(), idle() }
 *   options.inflate  "auto" (default: node:zlib in Node, DecompressionStream elsewhere), "zlib",
 *                    "stream", or a function (Uint8Array) -> Promise<string>
 *   options.any      also call the socket's onAny handlers per entry (default true); note that
 *                    socket.io-client itself still shows them the raw `batch` event first
 *   options.onError  (error) -> void, for a batch that cannot be decoded or a handler that throws
 *                    (default: console.error); the remaining entries and batches still go through
 *   off()            stop unwrapping; idle() resolves once every batch received so far is handled
 * decodeBatch(arg, options) -> Promise<Array<[name, ...args]>>: the same decoding, on its own.
 */
(function (root, factory) {
  if (typeof module === "object" && module.exports) {
    module.exports = factory(function () {
      return require("node:zlib");
    });
  } else {
    root.SocketBatch = factory(null);
  }
})(typeof self !== "undefined" ? self : this, function (loadZlib) {
  "use strict";

  function toBytes(arg) {
    if (arg instanceof Uint8Array) return arg; // Node's Buffer too
    if (arg instanceof ArrayBuffer) return new Uint8Array(arg);
    if (ArrayBuffer.isView(arg)) return new Uint8Array(arg.buffer, arg.byteOffset, arg.byteLength);
    return null;
  }

  function inflateZlib(bytes) {
    const zlib = loadZlib();
    return new Promise(function (resolve, reject) {
      zlib.inflate(bytes, function (err, out) {
        if (err) reject(err);
        else resolve(out.toString("utf8"));
      });
    });
  }

  function inflateStream(bytes) {
    if (typeof DecompressionStream !== "function") {
      return Promise.reject(new Error("this runtime has no DecompressionStream: pass options.inflate"));
    }
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Response(stream).text();
  }

  function inflater(choice) {
    if (typeof choice === "function") return choice;
    if (choice === "zlib") {
      if (!loadZlib) throw new Error('inflate "zlib" needs Node (node:zlib)');
      return inflateZlib;
    }
    if (choice === "stream") return inflateStream;
    if (choice === undefined || choice === "auto") return loadZlib ? inflateZlib : inflateStream;
    throw new Error('options.inflate: expected "auto", "zlib", "stream" or a function');
  }

  async function decodeBatch(arg, options) {
    let entries = arg;
    if (!Array.isArray(arg)) {
      if (typeof Blob !== "undefined" && arg instanceof Blob) arg = await arg.arrayBuffer();
      const bytes = toBytes(arg);
      if (bytes === null) throw new Error("batch: expected a JSON array or a zlib-compressed binary attachment");
      const text = await inflater(options && options.inflate)(bytes);
      entries = JSON.parse(text);
    }
    if (!Array.isArray(entries)) throw new Error("batch: not a list of entries");
    for (const entry of entries) {
      if (!Array.isArray(entry) || typeof entry[0] !== "string") {
        throw new Error("batch: an entry is not [eventName, ...args]");
      }
    }
    return entries;
  }

  function unwrapBatches(socket, options) {
    const opts = options || {};
    inflater(opts.inflate); // a bad option fails here, not at the first compressed batch
    const any = opts.any !== false;
    const onError =
      opts.onError ||
      function (err) {
        console.error("batch.js:", err);
      };
    let chain = Promise.resolve(); // batches are handled one after the other, in arrival order
    let active = true;

    function dispatch(entry) {
      const name = entry[0];
      const args = entry.slice(1);
      const handlers = [];
      if (any && typeof socket.listenersAny === "function") {
        for (const fn of socket.listenersAny()) handlers.push([fn, [name].concat(args)]);
      }
      for (const fn of socket.listeners(name).slice()) handlers.push([fn, args]);
      for (const [fn, fnArgs] of handlers) {
        try {
          fn.apply(socket, fnArgs);
        } catch (err) {
          onError(err);
        }
      }
    }

    function onBatch(arg) {
      chain = chain.then(async function () {
        let entries;
        try {
          entries = await decodeBatch(arg, opts);
        } catch (err) {
          onError(err);
          return;
        }
        if (active) entries.forEach(dispatch);
      });
    }

    socket.on("batch", onBatch);
    return {
      off: function () {
        active = false;
        socket.off("batch", onBatch);
      },
      idle: function () {
        return chain;
      },
    };
  }

  return { unwrapBatches: unwrapBatches, decodeBatch: decodeBatch };
});
