"""Slack alerts (``SLACK_WEBHOOK_URL``) from a real server process to a real local webhook receiver.

The receiver is an aiohttp app on a free loopback port that records every JSON body it is sent;
it can answer 200, answer 500, or hang. Transitions are driven through real settings, not a test
hook: ``SOCKET_MEMORY_THRESHOLD`` (a tiny one puts the node's real RSS at "critical") and
``SOCKET_MAX_CONNECTIONS`` (real connections past 90 % and to the limit).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.sio import Client


class Receiver:
    """A Slack-webhook stand-in: ``mode`` is "ok" (200), "fail" (500) or "hang" (never answers)."""

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.bodies: list[dict] = []
        self.times: list[float] = []
        self.hanging = 0
        self.release = asyncio.Event()
        self.changed = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/json"
        self.bodies.append(await request.json())
        self.times.append(time.monotonic())
        self.changed.set()
        if self.mode == "hang":
            self.hanging += 1
            await self.release.wait()
        return web.Response(status=500 if self.mode == "fail" else 200, text="ok")

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/services/T0/B0/secret", self.handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/services/T0/B0/secret"
        return self

    async def __aexit__(self, *exc) -> None:
        self.release.set()
        await self.runner.cleanup()

    async def wait_bodies(self, n: int, timeout: float = 10.0) -> list[dict]:
        """The first ``n`` bodies; fails with what arrived if fewer came within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while len(self.bodies) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"expected {n} webhook posts within {timeout} s, got {len(self.bodies)}: {self.bodies}")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except TimeoutError:
                pass
        return self.bodies[:n]


def shape(body: dict) -> tuple[str, str, str]:
    """(text, colour, Metric) after checking the seed's payload shape exactly."""
    assert set(body) == {"text", "attachments"}, body
    (att,) = body["attachments"]
    assert set(att) == {"color", "fields"}, body
    metric, value = att["fields"]
    assert set(metric) == set(value) == {"title", "value", "short"}, body
    assert (metric["title"], value["title"], metric["short"], value["short"]) == ("Metric", "Value", True, True)
    assert isinstance(value["value"], str) and value["value"], body
    return body["text"], att["color"], metric["value"]


async def prometheus(url: str) -> dict[tuple[str, str], float]:
    """Alert counters from the live exposition: {(name, label value): value}."""
    async with aiohttp.ClientSession() as http, http.get(url + "/socket-metrics?format=prometheus") as resp:
        text = await resp.text()
    return {
        (s.name, next(iter(s.labels.values()))): s.value
        for fam in text_string_to_metric_families(text)
        if fam.name.startswith("socketio_alert_")
        for s in fam.samples
    }


async def poll_counter(url: str, key: tuple[str, str], want: float, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        got = await prometheus(url)
        if got.get(key) == want:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"{key} != {want} within {timeout} s: {got}")
        await asyncio.sleep(0.1)


async def round_trip(url: str, token: str) -> float:
    """Connect a real client, get an echo ack, disconnect; returns the seconds it took."""
    t0 = time.monotonic()
    client = await Client.connect(url, token)
    try:
        assert await client.call("echo", {"n": 1}, timeout=3.0) == [{"n": 1}]
    finally:
        await client.close()
    return time.monotonic() - t0


def env(receiver: Receiver, **extra: str) -> dict[str, str]:
    return {"REDIS_URL": "", "SLACK_WEBHOOK_URL": receiver.url, **extra}


FAST = {"metrics_interval_ms": 100}
# real RSS (tens of MB) against 1 GB is over a 1 % "degraded" ratio and under a 100 % critical one
DEGRADED = {"degraded_ratio": 0.01, "critical_ratio": 1.0}


@pytest.mark.parametrize(
    ("profile", "threshold", "sets", "level", "colour"),
    [
        pytest.param("baseline", "1", {}, "critical", "danger", id="baseline-critical"),
        pytest.param("optimized", "1000000000", DEGRADED, "degraded", "warning", id="optimized-degraded"),
    ],
)
async def test_memory_status_is_posted_once_in_the_seed_shape(start_server, profile, threshold, sets, level, colour):
    async with Receiver() as receiver:
        server, _ = start_server(
            profile, companies=0, sets={**FAST, **sets}, env=env(receiver, SOCKET_MEMORY_THRESHOLD=threshold)
        )
        (body,) = await receiver.wait_bodies(1)
        text, got_colour, metric = shape(body)
        assert got_colour == colour
        assert metric == "socketio_memory_usage_percent"
        assert text.startswith(f"🚨 Socket Alert: memory {level}: RSS at "), text
        async with aiohttp.ClientSession() as http, http.get(server.url + "/socket-health") as resp:
            assert (await resp.json())["status"] == level  # the health monitor agrees
        # de-duplicated: the state holds over many evaluations (every 0.1 s) and nothing more is posted
        await poll_counter(server.url, ("socketio_alert_messages_total", "sent"), 1.0)
        ticks_before = len(receiver.bodies)
        async with aiohttp.ClientSession() as http:
            for _ in range(10):  # each metrics read is after at least one more evaluation
                async with http.get(server.url + "/socket-metrics") as resp:
                    assert (await resp.json())["memory"]["status"] == level
                await asyncio.sleep(0.1)
        assert len(receiver.bodies) == ticks_before == 1, receiver.bodies


async def test_connections_warning_critical_resolved_and_cooldown(start_server):
    """9 of 10 -> warning; 10 -> critical; 9 (suppressed); 0 -> resolved; 9 again (suppressed until the
    cool-down ends, then announced once more)."""
    cooldown = 6.0
    async with Receiver() as receiver:
        server, users = start_server(
            "optimized",
            companies=1,
            users=4,
            sets={**FAST, "max_connections": 10, "alert_cooldown_s": cooldown},
            env=env(receiver),
        )
        clients: list[Client] = []

        async def connect(n: int) -> None:
            for _ in range(n):
                clients.append(await Client.connect(server.url, users[len(clients) % 4]["token"]))

        async def close(n: int) -> None:
            for _ in range(n):
                await clients.pop().close()

        try:
            await connect(9)
            (warning,) = await receiver.wait_bodies(1)
            await connect(1)
            critical = (await receiver.wait_bodies(2))[1]
            await close(1)
            await close(9)
            resolved = (await receiver.wait_bodies(3))[2]
            await connect(9)  # the same warning again within the cool-down: held back
            again = (await receiver.wait_bodies(4, timeout=cooldown + 5))[3]
        finally:
            await asyncio.gather(*(c.close() for c in clients))

        assert shape(warning) == (
            "🚨 Socket Alert: 9 active connections, 90 % of SOCKET_MAX_CONNECTIONS",
            "warning",
            "socketio_connections_active",
        )
        assert warning["attachments"][0]["fields"][1]["value"] == "9 of 10 (90 %)"
        assert shape(critical)[1:] == ("danger", "socketio_connections_active")
        assert critical["attachments"][0]["fields"][1]["value"] == "10 of 10 (100 %)"
        assert shape(resolved) == (
            "✅ Socket Alert resolved: connections is back to normal (0 of 10 (0 %))",
            "good",
            "socketio_connections_active",
        )
        assert again == warning
        # the repeat waited for the cool-down (measured at the receiver: the decision is a little earlier)
        assert receiver.times[3] - receiver.times[0] >= cooldown - 0.5, receiver.times
        counters = await prometheus(server.url)
        assert counters[("socketio_alert_messages_total", "sent")] == 4
        assert counters[("socketio_alert_messages_total", "failed")] == 0


@pytest.mark.parametrize(
    ("mode", "sets", "reason", "attempts"),
    [
        pytest.param("fail", {"alert_retries": 2}, "http_status", 3, id="http-500"),
        pytest.param("hang", {"alert_retries": 1, "alert_timeout_s": 0.5}, "timeout", 2, id="hang"),
    ],
)
async def test_failing_webhook_is_counted_and_serving_goes_on(start_server, mode, sets, reason, attempts):
    async with Receiver(mode) as receiver:
        server, users = start_server(
            "optimized",
            companies=1,
            users=1,
            sets={**FAST, **DEGRADED, **sets},  # degraded, not critical: the memory guard still admits clients
            env=env(receiver, SOCKET_MEMORY_THRESHOLD="1000000000"),
        )
        await receiver.wait_bodies(1)
        if mode == "hang":
            assert receiver.hanging == 1  # the webhook holds the server's request right now
        # a real client round trip while the webhook misbehaves: the event loop is not waiting on it
        assert await round_trip(server.url, users[0]["token"]) < 2.0
        got = await poll_counter(server.url, ("socketio_alert_messages_total", "failed"), 1.0)
        assert got[("socketio_alert_webhook_errors_total", reason)] == attempts
        assert got[("socketio_alert_messages_total", "sent")] == 0
        assert len(receiver.bodies) == attempts  # bounded retries, each the same message
        assert all(b == receiver.bodies[0] for b in receiver.bodies)
        assert await round_trip(server.url, users[0]["token"]) < 2.0
        # and the message is not retried again later (the next evaluations see the same state)
        async with aiohttp.ClientSession() as http:
            for _ in range(5):
                async with http.get(server.url + "/socket-health") as resp:
                    assert resp.status == 200
                await asyncio.sleep(0.1)
        assert len(receiver.bodies) == attempts


@pytest.mark.redis
async def test_redis_link_down_then_back_is_a_warning_then_resolved(start_server, tmp_path):
    """A node whose Redis is not there yet: warning; the Redis starts on that port: resolved."""
    from tests.test_server_redis_outage import RedisProcess

    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server required in CI")
        pytest.skip("no redis-server binary")
    redis_server = RedisProcess(tmp_path / "redis.log")  # a free port, nothing listening on it yet
    try:
        async with Receiver() as receiver:
            start_server("optimized", companies=0, sets=FAST, env={**env(receiver), "REDIS_URL": redis_server.url()})
            (down,) = await receiver.wait_bodies(1)
            assert shape(down) == (
                "🚨 Socket Alert: Redis pub/sub link down: events reach this node's clients only",
                "warning",
                "socketio_redis_up",
            )
            redis_server.start()
            back = (await receiver.wait_bodies(2, timeout=20))[1]
            assert shape(back) == (
                "✅ Socket Alert resolved: redis_link is back to normal (1)",
                "good",
                "socketio_redis_up",
            )
    finally:
        redis_server.kill()
