"""Batching on the wire: one frame per flush window, the documented format, compression, timing."""

from __future__ import annotations

import asyncio
import json
import time
import zlib

import aiohttp

from tests.sio import Client


async def raw_frames(url: str, token: str, seconds: float, ready: asyncio.Event) -> list[tuple[float, object]]:
    """Connect over a raw websocket and record every frame after the namespace connect."""
    frames = []
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket") as ws,
    ):
        assert (await ws.receive()).data.startswith("0")
        await ws.send_str("40" + json.dumps({"token": token}))
        assert (await ws.receive()).data.startswith("40")
        await ws.send_str('421["join","room1"]')
        assert (await ws.receive()).data.startswith("431")
        ready.set()
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            try:
                msg = await ws.receive(timeout=left)
            except TimeoutError:
                break
            frames.append((time.monotonic(), msg.data))
    return frames


async def test_events_within_window_arrive_as_one_batch_frame(start_server):
    sets = {"flush_interval_ms": 200, "batch_flush_soon": "off"}  # the window's merging (flush_soon: see below)
    server, users = start_server("optimized", companies=1, users=2, sets=sets)
    ready = asyncio.Event()
    listener = asyncio.create_task(raw_frames(server.url, users[1]["token"], 1.0, ready))
    await ready.wait()
    sender = await Client.connect(server.url, users[0]["token"])
    t0 = time.monotonic()
    for i in range(3):
        await sender.send("chat", {"i": i})
    frames = await listener
    await sender.close()
    text = [(t, f) for t, f in frames if isinstance(f, str) and f.startswith("42")]
    assert len(text) == 1, frames
    t, frame = text[0]
    name, entries = json.loads(frame[2:])
    assert name == "batch"
    assert [e[0] for e in entries] == ["chat"] * 3
    assert [e[1]["data"] for e in entries] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert entries[0][1]["from"] == {"company": 1, "user": users[0]["user"]}
    assert t - t0 <= 0.2 + 0.1, "flushed later than one window (+100 ms slack)"


async def test_full_batch_is_sent_at_once(start_server):
    server, users = start_server("optimized", companies=1, users=2, sets={"flush_interval_ms": 5000, "batch_size": 4})
    a = await Client.connect(server.url, users[0]["token"])
    t0 = time.monotonic()
    for i in range(4):
        await a.send("chat", {"i": i})
    events = await a.wait_events(4, timeout=2)
    assert time.monotonic() - t0 < 2, "a full batch waited for the 5 s window"
    assert [e[1][0]["data"]["i"] for e in events] == [0, 1, 2, 3]
    await a.close()


async def test_a_batch_is_cut_by_bytes(start_server):
    """Entries over ``batch_max_bytes`` go out before the window ends, in frames under the bound."""
    sets = {"flush_interval_ms": 5000, "batch_max_bytes": 10_000, "compression_threshold": 0, "batch_flush_soon": "off"}
    server, users = start_server("optimized", companies=1, users=2, sets=sets)
    ready = asyncio.Event()
    listener = asyncio.create_task(raw_frames(server.url, users[1]["token"], 1.5, ready))
    await ready.wait()
    sender = await Client.connect(server.url, users[0]["token"])
    for i in range(10):
        await sender.call("chat", {"i": i, "text": "x" * 3000})
    frames = await listener
    await sender.close()
    batches = [json.loads(f[2:])[1] for _, f in frames if isinstance(f, str) and f.startswith("42")]
    assert [e[1]["data"]["i"] for b in batches for e in b] == list(range(9))  # the 10th waits for the window
    assert [len(b) for b in batches] == [3, 3, 3]
    assert all(len(json.dumps(b)) < 10_000 + 100 for b in batches)


async def test_large_batch_is_compressed_binary(start_server):
    server, users = start_server(
        "optimized", companies=1, users=2, sets={"flush_interval_ms": 100, "compression_threshold": 256}
    )
    ready = asyncio.Event()
    listener = asyncio.create_task(raw_frames(server.url, users[1]["token"], 0.8, ready))
    await ready.wait()
    sender = await Client.connect(server.url, users[0]["token"])
    await sender.send("chat", {"text": "x" * 2000})
    frames = await listener
    await sender.close()
    heads = [f for _, f in frames if isinstance(f, str) and f.startswith("45")]
    blobs = [f for _, f in frames if isinstance(f, bytes)]
    assert heads == ['451-["batch",{"_placeholder":true,"num":0}]']
    entries = json.loads(zlib.decompress(blobs[0]))
    assert entries[0][1]["data"] == {"text": "x" * 2000}
    assert len(blobs[0]) < 500


async def test_baseline_sends_plain_events(start_server):
    server, users = start_server("baseline", companies=1, users=2)
    a = await Client.connect(server.url, users[0]["token"])
    await a.call("chat", {"hello": 1})
    events = await a.wait_events(1)
    assert events[0][0] == "chat"
    await a.close()


def test_next_flush_is_due_on_the_fixed_grid():
    from server.batching import next_due

    assert next_due(1.0, 1.02, 0.1) == 1.1  # on time: the next tick one window on
    assert next_due(1.0, 1.09, 0.1) == 1.1  # a slow flush does not push the grid back
    assert abs(next_due(1.0, 1.35, 0.1) - 1.4) < 1e-12  # ticks missed while busy are skipped, not bunched


async def test_flush_tick_keeps_its_rate_when_flushes_take_time():
    """The server flushed with sleep(window); flush(), so a flush costing 40 % of the window made the period
    1.4 windows and drifted off any grid; on the fixed-rate tick every flush keeps to the window's grid."""
    from server.batching import Batcher
    from server.metrics import Metrics

    window, cost, seconds = 0.05, 0.02, 1.5
    batcher = Batcher(lambda sid, packets: True, 50, 1 << 20, window, 0, Metrics())
    ticks: list[float] = []

    def slow_flush() -> int:
        ticks.append(time.perf_counter())
        end = time.perf_counter() + cost
        while time.perf_counter() < end:  # the loop is busy, as with a real flush
            pass
        return 0

    batcher.flush = slow_flush  # type: ignore[method-assign]
    task = asyncio.create_task(batcher.run())
    await asyncio.sleep(seconds)
    task.cancel()
    assert on_the_grid(ticks, window) > 0.6, f"flushes off the {window * 1000:.0f} ms grid: {ticks}"


def on_the_grid(ticks: list[float], window: float) -> float:
    """How closely flush times keep to one grid of ``window`` spacing: the mean resultant length of
    their phases (1: every flush on the grid, wherever it starts; about 0: phases spread evenly).

    A fixed-rate tick keeps its phase even when a loaded machine delays or skips some ticks, so this
    does not depend on the machine's load the way a mean period does; the old sleep-then-flush loop
    drifts by the flush's cost every tick (a 40 % cost: phases 0, .4, .8, .2, .6 ..., length near 0).
    """
    import cmath
    import math

    phases = [cmath.exp(2j * math.pi * ((t - ticks[0]) / window)) for t in ticks]
    return abs(sum(phases)) / len(phases)


def test_on_the_grid_tells_a_fixed_rate_from_sleep_then_flush():
    assert on_the_grid([k * 0.05 + (0.004 if k % 7 == 0 else 0) for k in range(30) if k % 5], 0.05) > 0.9
    assert on_the_grid([k * 0.07 for k in range(30)], 0.05) < 0.2  # a 20 ms flush after each 50 ms sleep


def test_a_compressed_batch_shared_with_a_websocket_client_still_encodes_for_a_polling_one():
    """One batch's packets go to every recipient; engine.io caches a packet's first encoding, so a
    binary (compressed) batch encoded as bytes for a websocket client broke a long-polling client's
    payload (it needs base64 text): Payload.encode raised TypeError."""
    import asyncio
    from types import SimpleNamespace

    from engineio.payload import Payload

    from server.batching import batch_packets
    from server.fanout import LabManager

    ws = SimpleNamespace(closed=False, upgraded=True, queue=asyncio.Queue())
    polling = SimpleNamespace(closed=False, upgraded=False, queue=asyncio.Queue())
    manager = LabManager()
    manager.server = SimpleNamespace(eio=SimpleNamespace(sockets={"ws": ws, "poll": polling}))
    packets = batch_packets(['["chat","' + "x" * 300 + '"]'], compression_threshold=100)
    assert len(packets) == 2 and packets[1].binary  # a text head and the zlib attachment
    assert manager.deliver("ws", packets) and manager.deliver("poll", packets)
    for p in [ws.queue.get_nowait() for _ in range(2)]:
        p.encode()  # the websocket writer encodes first: the attachment's cache is bytes now
    sent = [polling.queue.get_nowait() for _ in range(2)]
    text = Payload(packets=sent).encode()
    assert isinstance(text, str) and "\x1eb" in text  # the attachment as base64 text
