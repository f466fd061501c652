"""Monitoring endpoints: shapes, Prometheus text parsed back, admin token, memory leak and cleanup."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.sio import Client


async def get(url: str, path: str, **kw) -> tuple[int, object]:
    async with aiohttp.ClientSession() as s, s.request(kw.pop("method", "GET"), url + path, **kw) as r:
        body = await r.json() if r.content_type == "application/json" else await r.text()
        return r.status, body


@pytest.mark.parametrize("profile", ["baseline", "optimized"])
async def test_health_and_metrics_shapes(start_server, profile):
    server, users = start_server(
        profile,
        companies=2,
        users=1,
        sets={"metrics_interval_ms": 2000},
        env={"SOCKET_ADMIN_TOKEN": "s3cret", "REDIS_URL": ""},  # a single node: CI exports REDIS_URL
    )
    clients = [await Client.connect(server.url, u["token"]) for u in users]
    for c in clients:
        await c.call("echo", "x")
    await asyncio.sleep(0.5)
    status, health = await get(server.url, "/socket-health")
    assert status == 200
    assert health["status"] == "healthy" and health["connections"] == 2
    assert set(health["memory"]) == {"used", "threshold"} and health["memory"]["threshold"] == 500_000_000
    assert set(health["performance"]) == {"latency", "errors"}
    assert "redis" not in health and "reason" not in health  # one node, no Redis link to report
    status, m = await get(server.url, "/socket-metrics")
    assert set(m["performance"]["latency"]) == {"p50", "p95", "p99"}
    assert m["performance"]["latency"]["p50"] > 0
    assert "eventsPerSecond" in m["performance"]["throughput"]
    assert m["connections"] == {"total": 2, "byCompany": {"1": 1, "2": 1}}
    assert {"usage", "trend", "rooms"} <= set(m["memory"]) and m["memory"]["rooms"] == 4
    c = m["counters"]
    assert c["events_in"] == 2 and c["packets_out"] == 2 and c["cpu_seconds"] > 0 and c["rss_bytes"] > 1e6
    assert c["db_queries"] == 2
    assert m["redis"] is None and c["redis_errors"] == {} and c["redis_local_only"] == 0
    assert (await get(server.url, "/socket-diagnostics"))[0] == 401
    status, diag = await get(server.url, "/socket-diagnostics", headers={"Authorization": "Bearer s3cret"})
    assert diag["companies"] == {
        "1": {"connections": 1, "sub_room_memberships": 0},
        "2": {"connections": 1, "sub_room_memberships": 0},
    }
    assert diag["settings"]["profile"] == profile and "admin_token" in diag["settings"]
    for c in clients:
        await c.close()


async def test_prometheus_text_parses(start_server):
    server, users = start_server("optimized", companies=1, users=1)
    c = await Client.connect(server.url, users[0]["token"])
    await c.call("echo", 1)
    await c.call("chat", "hi")
    await c.wait_events(1)
    await c.close()
    _status, text = await get(server.url, "/socket-metrics?format=prometheus")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["socketio_connections_active"].type == "gauge"
    assert families["socketio_latency_seconds"].type == "histogram"
    events = {s.labels["event"]: s.value for s in families["socketio_events_received"].samples}
    assert events["echo"] == 1 and events["chat"] == 1
    assert families["socketio_batches"].samples[0].value >= 1
    assert "process_cpu_seconds" in families
    assert (await get(server.url, "/socket-metrics?format=xml"))[0] == 400


@pytest.mark.parametrize("profile", ["baseline", "optimized"])  # asyncio's loop and uvloop
async def test_loop_wakeups_count_the_loops_waits(start_server, profile):
    """Issue 11: the loop thread's wake-ups from idle, in JSON and Prometheus, read in the loop's own
    thread. Against an idle stretch as long (its timers wake it too), 20 calls spaced so that the
    loop idles between them add at least 15 (a count read in another thread would add none), and
    the two exports agree (the Prometheus read comes later, so never less)."""
    server, users = start_server(profile, companies=1, users=1)
    c = await Client.connect(server.url, users[0]["token"])

    async def woken(work) -> tuple[float, float]:
        _status, before = await get(server.url, "/socket-metrics")
        t0 = time.perf_counter()
        await work()
        elapsed = time.perf_counter() - t0
        _status, after = await get(server.url, "/socket-metrics")
        return after["counters"]["wakeups"] - before["counters"]["wakeups"], elapsed

    async def calls() -> None:
        for i in range(20):
            await c.call("echo", i)
            await asyncio.sleep(0.03)  # the loop goes idle between calls

    busy, elapsed = await woken(calls)
    idle, idle_s = await woken(lambda: asyncio.sleep(elapsed))
    _status, now = await get(server.url, "/socket-metrics")
    _status, text = await get(server.url, "/socket-metrics?format=prometheus")
    await c.close()
    assert busy - idle * elapsed / idle_s >= 15, (busy, idle)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    exported = families["socketio_loop_wakeups"]
    assert exported.type == "counter" and exported.samples[0].value >= now["counters"]["wakeups"]


@pytest.mark.skipif(not Path("/proc/thread-self/schedstat").exists(), reason="the kernel keeps no schedstat")
async def test_loop_runqueue_wait_counts_the_time_the_loop_waited_for_a_cpu(start_server):
    """The loop thread's time runnable but without a CPU, in JSON and Prometheus: a stream of calls
    while more busy processes than cores run makes the loop wait far longer than the same stream on
    a quiet machine (the spinners stop by themselves after 3 s). The baseline: no rate limit to end a
    client that calls back to back."""
    server, users = start_server("baseline", companies=1, users=1)
    c = await Client.connect(server.url, users[0]["token"])

    async def waited(seconds: float) -> float:
        _status, before = await get(server.url, "/socket-metrics")
        t_end = time.perf_counter() + seconds
        i = 0
        while time.perf_counter() < t_end:
            await c.call("echo", i)
            i += 1
        _status, after = await get(server.url, "/socket-metrics")
        return (after["counters"]["runqueue_wait_s"] - before["counters"]["runqueue_wait_s"]) / seconds

    quiet = await waited(1.0)
    spin = "import time\nt = time.monotonic() + 3\nwhile time.monotonic() < t: pass"
    spinners = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range((os.cpu_count() or 1) + 2)]
    try:
        busy = await waited(1.0)
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    _status, now = await get(server.url, "/socket-metrics")
    _status, text = await get(server.url, "/socket-metrics?format=prometheus")
    await c.close()
    assert busy > quiet + 0.05, (busy, quiet)  # of every second, the loop waited 5 % more for a CPU
    families = {f.name: f for f in text_string_to_metric_families(text)}
    exported = families["socketio_loop_runqueue_wait_seconds"]
    assert exported.type == "counter" and exported.samples[0].value >= now["counters"]["runqueue_wait_s"]


async def test_cleanup_needs_admin_token(start_server):
    server, _ = start_server("optimized", companies=1, users=1, env={"SOCKET_ADMIN_TOKEN": "s3cret"})
    assert (await get(server.url, "/socket-cleanup", method="POST"))[0] == 401
    hdr = {"Authorization": "Bearer wrong"}
    assert (await get(server.url, "/socket-cleanup", method="POST", headers=hdr))[0] == 403
    hdr = {"Authorization": "Bearer s3cret"}
    status, body = await get(server.url, "/socket-cleanup", method="POST", headers=hdr)
    assert status == 200 and {"socket_states", "empty_rooms", "gc_objects", "rss_freed_bytes"} <= set(body["freed"])
    _, diag = await get(server.url, "/socket-diagnostics", headers=hdr)
    assert diag["settings"]["admin_token"] == "set" and "s3cret" not in str(diag)


@pytest.mark.parametrize(("profile", "kept"), [("baseline", 3), ("optimized", 0)])
async def test_per_socket_state_leaks_only_in_baseline(start_server, profile, kept):
    server, users = start_server(profile, companies=1, users=1)
    for _ in range(3):
        c = await Client.connect(server.url, users[0]["token"])
        await c.close()
    await asyncio.sleep(0.3)
    _, m = await get(server.url, "/socket-metrics")
    assert m["connections"]["total"] == 0
    assert m["counters"]["socket_states"] == kept


async def test_malformed_packets_close_only_the_offender(start_server):
    server, users = start_server("optimized", companies=1, users=2, sets={"max_payload_bytes": 10_000})
    good = await Client.connect(server.url, users[0]["token"])
    ws_url = server.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
    bad_frames = ['42["echo", nope]', "4garbage", "4" + "5" * 3 + "-[]", "9", "42" + "[" * 10, "x"]
    async with aiohttp.ClientSession() as s:
        for frame in [*bad_frames, "42" + '["echo","' + "x" * 20000 + '"]']:
            async with s.ws_connect(ws_url) as ws:
                await ws.receive()
                await ws.send_str('40{{"token":"{}"}}'.format(users[1]["token"]))
                await ws.receive()
                await ws.send_str(frame)
                try:
                    await asyncio.wait_for(ws.receive(), 2)
                except TimeoutError:
                    pass
            assert await good.call("echo", frame[:5]) == [frame[:5]], f"server stopped serving after {frame!r}"
    _, m = await get(server.url, "/socket-metrics")
    assert m["counters"]["errors"].get("malformed_packet", 0) >= 2
    await good.close()


def test_sigusr1_dumps_stacks_and_server_lives_on(start_server):
    """What a hung shutdown leaves in the log: ServerProcess.stop sends SIGUSR1 before killing."""
    server, _ = start_server("baseline")
    server.proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while "File " not in server.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "File " in server.log_path.read_text()
    assert server.proc.poll() is None
