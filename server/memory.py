"""Memory monitor, garbage-collector pauses and tuning, event-loop lag."""

from __future__ import annotations

import asyncio
import gc
import time
from collections import deque

import psutil

from .metrics import Metrics


class MemoryMonitor:
    """RSS against the configured threshold, with a status and a trend."""

    def __init__(self, threshold: int, degraded_ratio: float, critical_ratio: float, metrics: Metrics) -> None:
        self.threshold = threshold
        self.degraded_ratio = degraded_ratio
        self.critical_ratio = critical_ratio
        self.metrics = metrics
        self.process = psutil.Process()
        self.samples: deque[int] = deque(maxlen=12)

    def rss(self) -> int:
        return self.process.memory_info().rss

    def sample(self) -> int:
        rss = self.rss()
        self.samples.append(rss)
        self.metrics.rss.set(rss)
        self.metrics.memory_pct.set(100.0 * rss / self.threshold)
        return rss

    def status(self, rss: int | None = None) -> str:
        ratio = (self.rss() if rss is None else rss) / self.threshold
        if ratio >= self.critical_ratio:
            return "critical"
        if ratio >= self.degraded_ratio:
            return "degraded"
        return "healthy"

    def trend(self) -> str:
        """'rising', 'falling' or 'stable': change over the kept samples beyond 5 %."""
        if len(self.samples) < 3:
            return "stable"
        first, last = self.samples[0], self.samples[-1]
        change = (last - first) / first
        return "rising" if change > 0.05 else "falling" if change < -0.05 else "stable"


class GcMonitor:
    """Times every collection through ``gc.callbacks``; keeps recent pauses for calibration."""

    def __init__(self, metrics: Metrics, keep: int = 512) -> None:
        self.metrics = metrics
        self.recent: deque[tuple[int, float, int, float]] = deque(maxlen=keep)  # seq, t, gen, pause
        self.seq = 0
        self.total_pause = 0.0
        self._start = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
            return
        pause = time.perf_counter() - self._start
        gen = info.get("generation", 0)
        self.seq += 1
        self.total_pause += pause
        self.recent.append((self.seq, time.time(), gen, pause))
        self.metrics.gc_pause.labels(generation=str(gen)).observe(pause)

    def install(self) -> None:
        gc.callbacks.append(self)

    def uninstall(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)


def tune_gc() -> dict:
    """Freeze start-up objects out of the collector's way and make gen-0 collections rarer."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    return {"frozen": gc.get_freeze_count(), "threshold": gc.get_threshold()}


class LoopLagMonitor:
    """Measures how late a periodic timer fires: the event loop's queueing delay."""

    def __init__(self, metrics: Metrics, period_s: float = 0.05) -> None:
        self.metrics = metrics
        self.period_s = period_s
        self.last = 0.0
        self.max_recent = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + self.period_s
            await asyncio.sleep(self.period_s)
            lag = max(0.0, loop.time() - expected)
            self.last = lag
            self.max_recent = max(self.max_recent, lag)
            self.metrics.loop_lag.set(lag)
            self.metrics.loop_lag_hist.observe(lag)

    def take_max(self) -> float:
        value, self.max_recent = self.max_recent, 0.0
        return value
