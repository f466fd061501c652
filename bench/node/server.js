// Node socket.io 4 reference server for the peer benchmark (scripts/bench_peers.py).
// The reference server's minimal contract (server/events.py): a token in the CONNECT auth, looked
// up in the users file the lab created (`python -m server users`, JSON lines); every socket in its
// company's room; `echo` acks its argument, `join` enters a sub-room, `chat` goes to the company or
// a joined sub-room and is acked with {ok: true}.
// Usage: node server.js USERS.jsonl  -> prints "listening on http://127.0.0.1:PORT"
"use strict";
const fs = require("fs");
const http = require("http");
const { Server } = require("socket.io");

const users = new Map();
for (const line of fs.readFileSync(process.argv[2], "utf8").split("\n")) {
  if (line.trim()) {
    const u = JSON.parse(line);
    users.set(u.token, u);
  }
}
const ROOM_NAME = /^[A-Za-z0-9_.-]{1,64}$/;
const httpServer = http.createServer();
const io = new Server(httpServer, {
  pingInterval: 25000,
  pingTimeout: 20000,
  maxHttpBufferSize: 1e6,
  cors: { origin: "*" },
});

io.use((socket, next) => {
  const auth = socket.handshake.auth || {};
  const user = typeof auth.token === "string" ? users.get(auth.token) : undefined;
  if (!user) return next(new Error("invalid token"));
  socket.data.company = user.company;
  socket.data.user = user.user;
  socket.data.rooms = new Set();
  next();
});

function roomName(socket, arg) {
  if (arg && typeof arg === "object" && !Array.isArray(arg)) {
    const company = "company" in arg ? arg.company : socket.data.company;
    if (company !== socket.data.company) throw { error: "cross_tenant", detail: "another company's room" };
    arg = arg.room;
  }
  if (typeof arg !== "string" || !ROOM_NAME.test(arg)) throw { error: "bad_argument", detail: "bad room name" };
  return arg;
}

io.on("connection", (socket) => {
  const { company, user } = socket.data;
  socket.join([`c:${company}`, `u:${company}:${user}`]);
  socket.on("echo", (...args) => {
    const ack = typeof args[args.length - 1] === "function" ? args.pop() : null;
    if (ack) ack(...args);
  });
  socket.on("join", (arg, ack) => {
    if (typeof ack !== "function") ack = () => {};
    try {
      const name = roomName(socket, arg);
      socket.data.rooms.add(name);
      socket.join(`c:${company}:r:${name}`);
      ack({ ok: true, room: name });
    } catch (e) {
      ack(e);
    }
  });
  socket.on("chat", (payload, ack) => {
    if (typeof ack !== "function") ack = () => {};
    let room = `c:${company}`;
    try {
      if (payload && typeof payload === "object" && ("room" in payload || "company" in payload)) {
        const name = roomName(socket, payload);
        if (!socket.data.rooms.has(name)) throw { error: "bad_argument", detail: "join the room first" };
        room = `c:${company}:r:${name}`;
      }
    } catch (e) {
      return ack(e);
    }
    io.to(room).emit("chat", { from: { company, user }, data: payload });
    ack({ ok: true });
  });
});

httpServer.listen(0, "127.0.0.1", () => {
  console.log(`listening on http://127.0.0.1:${httpServer.address().port}`);
});
for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => {
    io.close();
    process.exit(0);
  });
}
