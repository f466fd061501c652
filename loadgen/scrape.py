"""Poll nodes' ``/socket-metrics`` and write their counters as ``sample`` rows.

Works against any server exposing that JSON (the seed guide's shape plus a ``counters`` object);
missing fields are simply not written.
"""

from __future__ import annotations

import asyncio

import aiohttp

from eventlog import EventWriter

COUNTERS = (
    "events_in",
    "events_out",
    "packets_out",
    "handler_seconds",
    "cpu_seconds",
    "wakeups",
    "runqueue_wait_s",
    "rss_bytes",
    "loop_lag_s",
    "loop_lag_max_s",
    "gc_collections",
    "gc_pause_s",
    "db_queries",
    "batches",
    "batch_events",
    "batches_compressed",
    "connects",
    "disconnects",
    "socket_states",
    "redis_published",
    "redis_received",
)


def sample_rows(writer: EventWriter, t: float, node: int, doc: dict, seen_gc: dict[int, int]) -> int:
    """Write one scrape as rows; returns how many."""
    n = 0
    counters = doc.get("counters", {})
    for name in COUNTERS:
        value = counters.get(name)
        if isinstance(value, int | float):
            writer.row("sample", t, node=node, name=name, value=float(value))
            n += 1
    conns = doc.get("connections", {}).get("total")
    if isinstance(conns, int | float):
        writer.row("sample", t, node=node, name="connections", value=float(conns))
        n += 1
    for name, value in (counters.get("refusals") or {}).items():
        writer.row("sample", t, node=node, name=f"refusals:{name}", value=float(value))
        n += 1
    p95 = doc.get("performance", {}).get("latency", {}).get("p95")
    if isinstance(p95, int | float):
        writer.row("sample", t, node=node, name="server_p95_s", value=p95 / 1000.0)
        n += 1
    last = seen_gc.get(node, 0)
    for seq, _wall, gen, pause in doc.get("gc", {}).get("recent", []):
        if seq > last:
            writer.row("sample", t, node=node, name=f"gc_pause_gen{gen}", value=float(pause))
            seen_gc[node] = seq
            n += 1
    return n


class Scraper:
    """Scrapes every node once per interval until stopped."""

    def __init__(self, urls: list[str], writer: EventWriter, interval_s: float = 1.0) -> None:
        self.urls = urls
        self.writer = writer
        self.interval_s = interval_s
        self.seen_gc: dict[int, int] = {}
        self.failures = 0
        self.last: dict[int, dict] = {}

    async def scrape_once(self, session: aiohttp.ClientSession) -> None:
        for node, url in enumerate(self.urls):
            t = self.writer.now()
            try:
                async with session.get(url.rstrip("/") + "/socket-metrics", timeout=aiohttp.ClientTimeout(5)) as r:
                    doc = await r.json()
            except (TimeoutError, aiohttp.ClientError, ValueError):
                self.failures += 1
                self.writer.row("error", t, node=node, name="scrape_failed")
                continue
            self.last[node] = doc
            sample_rows(self.writer, t, node, doc, self.seen_gc)

    async def run(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                await self.scrape_once(session)
                try:
                    await asyncio.wait_for(stop.wait(), self.interval_s)
                except TimeoutError:
                    pass
            await self.scrape_once(session)  # a last look after the load stopped
