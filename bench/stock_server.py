"""Stock python-socketio server for the peer benchmark (scripts/bench_peers.py): the reference
server's minimal contract (server/events.py) on ``socketio.AsyncServer`` + aiohttp + uvloop, with
nothing of the lab's (no guards, limits, metrics or toggles): what a team gets out of the box.

Usage: python bench/stock_server.py USERS.jsonl  -> prints ``listening on http://127.0.0.1:PORT``
"""

from __future__ import annotations

import asyncio
import json
import re
import resource
import signal
import sys

import socketio
import uvloop
from aiohttp import web

ROOM_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def room_name(company: int, arg: object) -> str:
    if isinstance(arg, dict):
        if arg.get("company", company) != company:
            raise ValueError("cross_tenant")
        arg = arg.get("room")
    if not isinstance(arg, str) or not ROOM_NAME.fullmatch(arg):
        raise ValueError("bad_argument")
    return arg


def build(users: dict[str, dict]) -> web.Application:
    sio = socketio.AsyncServer(async_mode="aiohttp", ping_interval=25, ping_timeout=20, cors_allowed_origins="*")
    sessions: dict[str, dict] = {}

    @sio.on("connect")
    async def connect(sid, environ, auth=None):
        user = users.get(auth.get("token")) if isinstance(auth, dict) else None
        if user is None:
            raise socketio.exceptions.ConnectionRefusedError("invalid token")
        sessions[sid] = {"company": user["company"], "user": user["user"], "rooms": set()}
        await sio.enter_room(sid, f"c:{user['company']}")
        await sio.enter_room(sid, f"u:{user['company']}:{user['user']}")

    @sio.on("disconnect")
    async def disconnect(sid, reason=None):
        sessions.pop(sid, None)

    @sio.on("echo")
    async def echo(sid, *args):
        return args[0] if len(args) == 1 else args

    @sio.on("join")
    async def join(sid, arg=None, *rest):
        s = sessions[sid]
        try:
            name = room_name(s["company"], arg)
        except ValueError as exc:
            return {"error": str(exc)}
        s["rooms"].add(name)
        await sio.enter_room(sid, f"c:{s['company']}:r:{name}")
        return {"ok": True, "room": name}

    @sio.on("chat")
    async def chat(sid, payload=None, *rest):
        s = sessions[sid]
        room = f"c:{s['company']}"
        if isinstance(payload, dict) and ("room" in payload or "company" in payload):
            try:
                name = room_name(s["company"], payload)
            except ValueError as exc:
                return {"error": str(exc)}
            if name not in s["rooms"]:
                return {"error": "bad_argument"}
            room = f"c:{s['company']}:r:{name}"
        await sio.emit("chat", {"from": {"company": s["company"], "user": s["user"]}, "data": payload}, room=room)
        return {"ok": True}

    app = web.Application()
    sio.attach(app)
    return app


async def main(users_path: str) -> None:
    users = {}
    with open(users_path) as f:
        for line in f:
            if line.strip():
                u = json.loads(line)
                users[u["token"]] = u
    runner = web.AppRunner(build(users), handle_signals=False, access_log=None, shutdown_timeout=3.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    port = runner.addresses[0][1]
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvloop.run(main(sys.argv[1]))
