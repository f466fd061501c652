"""Round-2 fast paths (issue 12), each a toggle: ``fast_json`` (orjson, as strict as the stdlib guard),
``direct_write`` (frames straight to the transport) and ``batch_flush_soon`` (no window wait for an
idle client)."""

from __future__ import annotations

import asyncio
import json
import struct
import time

import aiohttp
import pytest
import socketio

from server.batching import Batcher
from server.codec import FastJson, data_is_binary
from server.guard import PacketRejected, StrictJson
from server.metrics import Metrics
from server.transport import ws_frame
from tests.sio import Client

CORPUS = [
    '["echo",{"t":1.5,"p":"xxx"}]',
    '["chat",{"room":"r1","n":-3,"ok":true,"none":null}]',
    '["echo","\\u00e9\\u4e2d"]',
    '["echo",18446744073709551615]',  # the largest u64: orjson's int
    '["echo",123456789012345678901234567890]',  # past 64 bits: the stdlib's int
    '["echo",' + "9" * 150 + "]",  # refused (bad_payload)
    '["echo",NaN]',
    '["echo",Infinity]',
    '["echo",-Infinity]',
    '["echo",1e999]',
    '["echo","\\ud800"]',  # a lone surrogate: the stdlib reads it
    "[" * 3000 + "]" * 3000,  # too deep
    "[" * 500 + "]" * 500,  # deep, but within Python's reach
    '["echo",',  # malformed
    "01",
]


def outcome(loads, text):
    try:
        return "ok", loads(text)
    except PacketRejected as exc:
        return "refused", exc.kind
    except ValueError as exc:
        return "error", type(exc).__name__


@pytest.mark.parametrize("text", CORPUS, ids=lambda t: t[:30])
def test_fast_json_reads_what_the_strict_guard_reads_and_refuses_what_it_refuses(text):
    assert outcome(FastJson.loads, text) == outcome(StrictJson.loads, text)


@pytest.mark.parametrize(
    "obj", [["echo", {"a": 1.25, "b": [1, 2, None, True]}], {"k": "é"}, {1: 2}, [2**70], ("a", 1), [{"x": []}]]
)
def test_fast_json_writes_the_same_values(obj):
    assert json.loads(FastJson.dumps(obj)) == json.loads(StrictJson.dumps(obj))
    assert " " not in FastJson.dumps(["a", {"b": 1}])  # compact, like python-socketio's separators


@pytest.mark.parametrize(
    "data", [None, 1, "x", b"x", [1, [2, {"a": b"y"}]], {"a": [1, 2, {"b": "c"}]}, [[[]]], {"a": bytearray(b"z")}]
)
def test_the_binary_scan_gives_python_socketios_answer(data):
    assert data_is_binary(None, data) == socketio.packet.Packet.data_is_binary(data)


@pytest.mark.parametrize(("size", "head"), [(5, b"\x81\x05"), (200, b"\x81\x7e\x00\xc8"), (70_000, None)])
def test_ws_frame_is_an_rfc6455_unmasked_final_frame(size, head):
    frame = ws_frame("a" * size)
    if head is None:
        head = b"\x81\x7f" + struct.pack("!Q", size)
    assert frame == head + b"a" * size
    assert ws_frame(b"\x00\x01")[:2] == b"\x82\x02"


async def test_flush_soon_sends_an_idle_clients_batch_in_the_same_loop_turn_and_keeps_a_busy_ones():
    sent: list[tuple[str, list]] = []
    busy = {"b"}
    batcher = Batcher(lambda sid, pkts: sent.append((sid, pkts)) or True, 50, 64_000, 5.0, 0, Metrics())
    batcher.busy = busy.__contains__
    batcher.push(["a", "b"], '["chat",1]')
    batcher.push(["a"], '["chat",2]')  # arrives in the same turn: merged
    assert sent == []
    await asyncio.sleep(0)
    assert [sid for sid, _ in sent] == ["a"]
    assert json.loads(sent[0][1][0].data[1:]) == ["batch", [["chat", 1], ["chat", 2]]]
    assert batcher.pending == {"b": ['["chat",1]']}  # still writing: waits for the window (or its write)
    busy.clear()
    batcher.push(["b"], '["chat",3]')
    await asyncio.sleep(0)
    assert [sid for sid, _ in sent] == ["a", "b"]
    assert json.loads(sent[1][1][0].data[1:]) == ["batch", [["chat", 1], ["chat", 3]]]


async def test_an_idle_client_gets_a_chat_without_waiting_for_the_window(start_server):
    server, users = start_server("optimized", companies=1, users=2, sets={"flush_interval_ms": 5000})
    a = await Client.connect(server.url, users[0]["token"])
    b = await Client.connect(server.url, users[1]["token"])
    try:
        t0 = time.monotonic()
        assert await a.call("chat", {"hi": 1}) == [{"ok": True}]
        events = await b.wait_events(1, timeout=2)
        assert time.monotonic() - t0 < 1.0, "the chat waited for the 5 s window"
        assert events[0][0] == "chat" and events[0][1][0]["data"] == {"hi": 1}
        for i in range(50):  # echo acks through the direct write path, in order
            assert await a.call("echo", {"i": i}) == [{"i": i}]
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("toggle", ["fast_json", "direct_write", "batch_flush_soon"])
async def test_each_toggle_alone_keeps_the_contract(start_server, toggle):
    server, users = start_server(
        "baseline", companies=1, users=2, sets={toggle: "on", "lean_transport": "on", "batching": "on"}
    )
    a = await Client.connect(server.url, users[0]["token"])
    b = await Client.connect(server.url, users[1]["token"])
    try:
        assert await a.call("echo", {"x": [1, 2.5, "é"]}) == [{"x": [1, 2.5, "é"]}]
        assert await a.call("echo", 10**30) == [10**30]
        assert (await a.call("echo", 1))[0] == 1
        await a.call("chat", {"n": 1})
        assert (await b.wait_events(1, timeout=3))[0][1][0]["data"] == {"n": 1}
    finally:
        await a.close()
        await b.close()


async def test_lean_metrics_show_every_event_to_a_scrape_at_once(start_server):
    """Counters and the latency histogram are plain numbers between reads, folded in by the read itself."""
    server, users = start_server("baseline", companies=1, users=1, sets={"lean_metrics": "on"})
    a = await Client.connect(server.url, users[0]["token"])
    try:
        for i in range(25):
            await a.call("echo", i)
        async with aiohttp.ClientSession() as s:
            async with s.get(server.url + "/socket-metrics?format=prometheus") as r:
                text = await r.text()
            async with s.get(server.url + "/socket-metrics") as r:
                snap = await r.json()
    finally:
        await a.close()
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[:1] != "#"}
    assert samples['socketio_events_received_total{event="echo"}'] == 25
    assert samples["socketio_latency_seconds_count"] == 25
    assert samples["socketio_handler_seconds_total"] > 0
    assert snap["performance"]["latency"]["p95"] > 0  # the window's percentiles, from the folded latencies


async def test_direct_write_pings_from_a_timer_and_keeps_an_answering_client(start_server):
    """With direct_write engine.io's per-connection ping task is a loop timer: pings keep coming after
    each pong, and a client that answers them stays connected."""
    server, users = start_server("optimized", companies=1, users=1, sets={"heartbeat_s": 0.3, "ping_timeout_s": 5})
    pings = 0
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(server.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket") as ws,
    ):
        assert (await ws.receive()).data.startswith("0")
        await ws.send_str("40" + json.dumps({"token": users[0]["token"]}))
        end = time.monotonic() + 2.0
        while (left := end - time.monotonic()) > 0:
            try:
                msg = await ws.receive(timeout=left)
            except TimeoutError:
                break
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            if msg.data == "2":
                pings += 1
                await ws.send_str("3")
        await ws.send_str('421["echo","still here"]')
        assert (await ws.receive(timeout=2)).data == '431["still here"]'
    assert pings >= 3, f"{pings} pings in 2 s at a 0.3 s interval"
