"""A minimal Engine.IO v4 / Socket.IO v5 server that acks every event at once (uvloop).

Only for measuring the load generator's own ceiling: it is far cheaper per event than the
reference server, so the generator, not the server, is what a benchmark against it measures.
Prints ``listening on http://127.0.0.1:PORT`` first, like the reference server.
"""

import asyncio
import signal

import uvloop
from aiohttp import WSMsgType, web

OPEN = '0{"sid":"s","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}'


async def ws_handler(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=0, compress=False)
    await ws.prepare(request)
    await ws.send_str(OPEN)
    async for msg in ws:
        if msg.type != WSMsgType.TEXT:
            break
        d = msg.data
        if d.startswith("40"):
            await ws.send_str('40{"sid":"n"}')
        elif d.startswith("42"):
            i = 2
            while d[i].isdigit():
                i += 1
            if i > 2:
                await ws.send_str("43" + d[2:i] + "[" + d[i:].split(",", 1)[1])  # ack with the args
    return ws


async def main() -> None:
    app = web.Application()
    app.router.add_get("/socket.io/", ws_handler)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    print(f"listening on http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvloop.run(main())
