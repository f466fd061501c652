"""The client SDK (``client/``) against real server processes over loopback."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from client import AsyncClient, Backoff, NotConnectedError, decode_batch
from client.frames import FrameError
from lab.servers import create_users
from tests.sio import Client
from tests.test_recovery import Inbox, prometheus, wait_until

SINGLE = {"REDIS_URL": ""}


async def _true(value) -> bool:
    return bool(value)


@pytest.mark.parametrize("profile", ["baseline", "optimized"])
async def test_subscribe_emit_ack(start_server, profile):
    server, users = start_server(profile, companies=1, users=2, sets={"flush_interval_ms": 20}, env=SINGLE)
    a = AsyncClient(server.url, token=users[0]["token"], recover=profile == "optimized", recovery_timeout_s=0.5)
    b = AsyncClient(server.url, token=users[1]["token"], recover=False)
    assert not a.is_connected
    with pytest.raises(NotConnectedError):
        await a.emit("echo", 1)
    got, seen = [], []
    a.subscribe("chat", got.append)

    async def slow(msg):  # coroutine handlers are awaited, in order
        await asyncio.sleep(0.001)
        seen.append(msg["data"])

    a.subscribe("chat", slow)
    await a.connect()
    await b.connect()
    assert a.is_connected and b.is_connected
    assert await a.emit("echo", {"x": [1, 2]}) == {"x": [1, 2]}
    assert await b.emit("chat", {"n": 1}) == {"ok": True}
    assert await b.emit("chat", {"n": 2}, ack=False) is None
    await wait_until(lambda: _true(len(seen) == 2), 5, "two chats")
    assert [m["data"] for m in got] == seen == [{"n": 1}, {"n": 2}]
    assert got[0]["from"] == {"company": 1, "user": users[1]["user"]}
    a.unsubscribe("chat")
    await b.emit("chat", {"n": 3})
    assert await a.emit("echo", "after") == "after"  # a round trip later, the chat has surely arrived
    assert len(got) == 2
    with pytest.raises(ValueError, match="wire protocol"):
        a.subscribe("batch", print)
    await a.disconnect()
    await b.disconnect()
    assert not a.is_connected


async def test_batch_frames_decoded_json_and_zlib(start_server):
    server, users = start_server("optimized", companies=1, users=2, sets={"flush_interval_ms": 20}, env=SINGLE)
    a = AsyncClient(server.url, token=users[0]["token"])
    inbox = Inbox(a, key="i")
    await a.connect()
    sender = await Client.connect(server.url, users[1]["token"])
    await sender.call("chat", {"i": 0})  # small: a JSON batch
    await inbox.wait(1)
    big = "é" * 3000  # over the 1 KB threshold: a zlib binary attachment
    for i in range(1, 4):
        await sender.send("chat", {"i": i, "pad": big})
    await inbox.wait(4)
    counters = await prometheus(server.url)
    assert counters["socketio_batches_compressed_total"] >= 1
    assert counters["socketio_batches_total"] >= 2
    assert inbox.got == [0, 1, 2, 3]
    await a.disconnect()
    await sender.close()


def test_decode_batch_wire_format():
    entries = [["chat", {"text": "hi"}], ["chat", {"text": "ho"}, {"_seq": ["c:1", "ab", 2]}]]
    assert decode_batch(entries) == entries
    assert decode_batch(zlib.compress(json.dumps(entries).encode())) == entries
    with pytest.raises(FrameError, match="zlib"):
        decode_batch(b"not zlib")
    with pytest.raises(FrameError, match="list of"):
        decode_batch({"chat": 1})


def test_backoff_full_jitter():
    b = Backoff(base_s=0.1, cap_s=1.0, rng=random.Random(7))
    assert [b.ceiling(k) for k in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    delays = [b.delay(3) for _ in range(2000)]
    assert 0 <= min(delays) < 0.05 and 0.75 < max(delays) <= 0.8  # the whole interval, from 0
    assert abs(sum(delays) / len(delays) - 0.4) < 0.03
    with pytest.raises(ValueError, match="base_s"):
        Backoff(base_s=2, cap_s=1)


async def test_client_batching_counts_every_entry(start_server):
    sets = {"event_rate": 5, "event_burst": 10, "flood_strikes": 1000}
    server, users = start_server("optimized", companies=1, users=1, sets=sets, env=SINGLE)
    client = AsyncClient(server.url, token=users[0]["token"], batch_window_s=0.05, batch_size=50, recover=False)
    await client.connect()
    before = await prometheus(server.url)
    replies = await asyncio.gather(*(client.emit("echo", i) for i in range(40)))
    ok = [r for r in replies if not isinstance(r, dict)]
    limited = [r for r in replies if isinstance(r, dict) and r.get("error") == "rate_limited"]
    assert len(ok) + len(limited) == 40
    assert 9 <= len(ok) <= 12, replies  # the bucket's burst of 10 (the batch packet paid one), plus refill
    assert ok == list(range(len(ok))), "entries were answered out of order"
    after = await prometheus(server.url)
    refused = after["socketio_refusals_total{reason=rate_limited}"] - before.get(
        "socketio_refusals_total{reason=rate_limited}", 0
    )
    assert refused == len(limited)
    assert after["socketio_events_received_total{event=echo}"] == len(ok)
    assert after["socketio_packets_sent_total"] - before["socketio_packets_sent_total"] <= 2  # one ack per batch
    await client.disconnect()


class PortServer:
    """A server node on a fixed port, so it can be restarted where its clients left it."""

    def __init__(self, profile: str, db: Path, log: Path) -> None:
        self.profile, self.db, self.log = profile, db, log
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = [sys.executable, "-m", "server", "--profile", self.profile, "--port", str(self.port)]
        cmd += ["--db", str(self.db)]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, **SINGLE}
            )
        line = self.proc.stdout.readline()
        assert line.startswith("listening on "), f"server did not start: {line!r}; see {self.log}"

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(10)
        self.proc.stdout.close()
        return code


@pytest.mark.parametrize("profile", ["baseline", "optimized"])
async def test_reconnect_with_backoff_and_rejoin(tmp_path, profile):
    db = tmp_path / "lab.db"
    users = create_users(db, 1, 2)
    node = PortServer(profile, db, tmp_path / "server.log")
    node.start()
    client = sender = None
    try:
        client = AsyncClient(node.url, token=users[0]["token"], backoff=Backoff(0.05, 0.4), recover=True)
        client.recovery_timeout_s = 0.3  # baseline ignores the recovery request: rooms are joined by events
        inbox = Inbox(client)
        await client.connect()
        assert (await client.join("ops"))["ok"]
        assert node.stop(signal.SIGKILL) == -signal.SIGKILL  # a crash: a graceful stop waits 3 s on open sockets
        await wait_until(lambda: _true(not client.is_connected), 5, "the client to see the server go")
        down = time.monotonic()
        await wait_until(lambda: _true(len(client.delays) >= 2), 5, "failed reconnect attempts")
        node.start()
        await client.wait_connected(10)
        assert time.monotonic() - down < 5
        assert client.reconnects == 1
        assert all(0 <= d <= Backoff(0.05, 0.4).ceiling(k) for k, d in enumerate(client.delays))
        sender = await Client.connect(node.url, users[1]["token"])
        await sender.call("join", "ops")
        assert await sender.call("chat", {"room": "ops", "i": "in-ops"}) == [{"ok": True}]
        assert await inbox.wait(1) == ["in-ops"]  # the sub-room was re-joined
        if profile == "optimized":  # a restarted node has a new epoch: recovery says so, and counts anew
            assert client.last_recovery["rooms"]["c:1:r:ops"] == {"ok": False, "reason": "epoch"}
    finally:
        if client is not None:
            await client.disconnect()
        if sender is not None:
            await sender.close()
        if node.proc is not None and node.proc.poll() is None:
            node.stop()
