"""Scrape a live node's ``/socket-metrics`` into a run (no load), so any node can be calibrated."""

from __future__ import annotations

import asyncio
from pathlib import Path

from eventlog import EventWriter, create_run, finish_run
from loadgen import LoadSpec
from loadgen.scrape import Scraper


def scrape_live(url: str, seconds: float, runs_root: Path, profile: str, interval_s: float = 1.0) -> Path:
    """Scrape ``url`` for ``seconds`` into a new measured run. /socket-metrics does not show the node's
    settings, so the run records those of ``profile`` (as the operator declared it runs)."""
    from server.settings import build_settings

    LoadSpec(url=url, steps=[{"connections": 1, "hold_s": 1}])  # the same loopback-only rule as load
    settings = build_settings(profile, {}, env={})
    run_dir, manifest = create_run(
        runs_root,
        "measured",
        "live",
        scrape=[url],
        profile=profile,
        label="live",
        server={"set": {}, "toggles": settings.toggles.model_dump(), "settings": settings.public()},
    )
    writer = EventWriter(run_dir, "scrape", t0=manifest.monotonic_t0)
    writer.row("sample", 0.0, name="step", value=0.0)

    async def go() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(Scraper([url], writer, interval_s).run(stop))
        await asyncio.sleep(seconds)
        stop.set()
        await task

    try:
        asyncio.run(go())
    finally:
        writer.row("sample", writer.now(), name="end", value=0.0)
        writer.close()
    finish_run(run_dir, "complete")
    return run_dir
