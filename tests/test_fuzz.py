"""Protocol fuzzer: Hypothesis-made frames against a live server, with a well-behaved client alongside.

After every batch of frames the bystander must still be served; at the end the server must be
alive, have logged no traceback, hold no phantom connection, and its RSS after a cleanup must be
back within a bound. A fast slice runs by default; ``-m load`` sends at least 100 000 frames.
"""

from __future__ import annotations

import asyncio
import os
import time

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lab.servers import ServerProcess, create_users
from tests.fuzz import CORPUS, frames
from tests.raw import RawPeer
from tests.sio import Client

ADMIN = "fuzz-admin-token"
# the fuzzer is one client on one IP: lift the limits that would (rightly) ban it, keep every parser check
SETS = {
    "event_rate": 1e6,
    "event_burst": 1e6,
    "max_per_user": 10_000,
    "max_per_company": 10_000,
    "connect_rate_per_ip": 1e6,
    "connect_burst_per_ip": 1e6,
    "accept_rate_per_ip": 1e6,  # the fuzzer reconnects from one address after every close
    "accept_burst_per_ip": 1e6,
    "metrics_interval_ms": 1000,
    "max_payload_bytes": 100_000,
}


class Target:
    """One live server, a bystander client and an event loop the synchronous Hypothesis test drives."""

    def __init__(self, profile: str, tmp) -> None:
        self.loop = asyncio.new_event_loop()
        users = create_users(tmp / "db", 2, 5)
        self.tokens = [u["token"] for u in users if u["company"] == 1]
        env = {"SOCKET_ADMIN_TOKEN": ADMIN}
        self.server = ServerProcess(profile, tmp / "db", SETS, env, log_path=tmp / "server.log").start()
        self.bystander = self.run(Client.connect(self.server.url, users[-1]["token"]))
        self.frames = self.examples = self.closed_by_server = 0
        self.culprit: list | None = None

    def run(self, coro):
        return self.loop.run_until_complete(asyncio.wait_for(coro, 30))

    async def send(self, batch: list[str | bytes]) -> None:
        token = self.tokens[self.examples % len(self.tokens)]
        peer = await RawPeer.open(self.server.url, token)
        try:
            for frame in batch:
                if peer.ws.closed or peer.closed.is_set():  # closed for an earlier frame: go on with a new one
                    self.closed_by_server += 1
                    await peer.close()
                    peer = await RawPeer.open(self.server.url, token)
                await peer.send(frame)
                self.frames += 1
            probe = 10**7 + self.examples  # an ack id no generated frame uses
            await peer.send(f'42{probe}["echo","probe"]')
            try:  # answered, or the connection was closed for what it sent; never silence
                await peer.wait_for(lambda: probe in peer.acks or peer.closed.is_set(), 10)
            except ConnectionError:
                pass
            self.closed_by_server += peer.closed.is_set()
        finally:
            await peer.close()
        assert await self.bystander.call("echo", self.examples, timeout=5) == [self.examples]
        self.examples += 1
        # no phantom: once the fuzz connection is gone, only the bystander is counted (shrinks to the culprit)
        deadline = time.monotonic() + 3
        while (health := await self.get("/socket-health"))["connections"] != 1:
            if time.monotonic() > deadline:
                # the first batch that failed: shrinking replays examples on a server already dirty
                self.culprit = self.culprit or batch
                raise AssertionError(f"phantom connections after {self.culprit!r}: {health['connections'] - 1}")
            await asyncio.sleep(0.02)

    async def get(self, path: str, method: str = "GET") -> dict:
        headers = {"Authorization": f"Bearer {ADMIN}"}
        async with aiohttp.ClientSession() as s, s.request(method, self.server.url + path, headers=headers) as r:
            return await r.json()

    async def settle(self) -> dict:
        """Wait for every fuzz connection to be gone; return the metrics after a cleanup."""
        deadline = time.monotonic() + 10
        while (await self.get("/socket-health"))["connections"] != 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await self.get("/socket-cleanup", "POST")
        return await self.get("/socket-metrics")

    def close(self) -> None:
        self.run(self.bystander.close())
        self.loop.close()
        assert self.server.stop() == 0


def fuzz(profile: str, tmp_path, examples: int, min_frames: int, max_frames: int) -> Target:
    target = Target(profile, tmp_path)
    try:
        start = target.run(target.settle())

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
        )
        @given(st.lists(frames, min_size=min_frames, max_size=max_frames))
        def one(batch):
            target.run(target.send(batch))

        target.run(target.send(CORPUS))
        one()
        end = target.run(target.settle())
        health = target.run(target.get("/socket-health"))
        assert target.server.proc.poll() is None, "the server died"
        assert health["connections"] == 1, f"phantom connections: {health}"
        assert end["counters"]["socket_states"] <= (1 if profile == "optimized" else target.examples + 2)
        log = target.server.log_path.read_text()
        assert "Traceback" not in log, log[-3000:]
        growth = end["counters"]["rss_bytes"] - start["counters"]["rss_bytes"]
        target.report = {
            "profile": profile,
            "examples": target.examples,
            "frames": target.frames,
            "closed_by_server": target.closed_by_server,
            "errors": end["counters"]["errors"],
            "rss_growth_mb": round(growth / 1e6, 1),
            "log_bytes": len(log),
        }
        print(target.report)
        return target
    finally:
        target.close()


@pytest.mark.parametrize("profile", ["baseline", "optimized"])
def test_fuzz_fast_slice(tmp_path, profile):
    target = fuzz(profile, tmp_path, examples=int(os.environ.get("FUZZ_EXAMPLES", 60)), min_frames=1, max_frames=10)
    assert target.frames >= 150
    assert target.report["rss_growth_mb"] < 30


@pytest.mark.load
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("profile", ["baseline", "optimized"])
def test_fuzz_100k_frames(tmp_path, profile):
    target = fuzz(profile, tmp_path, examples=2100, min_frames=40, max_frames=60)
    assert target.frames >= 100_000, target.report
    assert target.report["rss_growth_mb"] < 40, target.report
