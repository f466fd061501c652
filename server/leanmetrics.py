"""The ``lean_metrics`` toggle: per-event metrics added up in plain numbers, folded in when read.

Every event records its latency twice (a Prometheus histogram with a lock per observation, an HDR
histogram for the exact window percentiles) and bumps two or three locked counters: together more
CPU than decoding the event. Here an event appends its latency to a list and adds to plain numbers;
they are folded into the same Prometheus metrics whenever anything reads them (a scrape, the
diagnostics snapshot, the metrics tick), so every reader sees the same values as without the toggle.
The window percentiles come from the raw latencies of the interval (numpy, nearest rank), exact as
the HDR histogram's are to 3 significant digits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .metrics import Metrics

MAX_WINDOW_SAMPLES = 2_000_000  # per metrics interval (16 MB of floats); beyond it a sample is dropped


class FoldedCounter:
    """``inc()`` of a Prometheus counter (or labelled child), added up here until ``fold()``."""

    __slots__ = ("child", "n")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.n = 0.0

    def inc(self, amount: float = 1) -> None:
        self.n += amount

    def fold(self) -> None:
        if self.n:
            self.child.inc(self.n)
            self.n = 0.0


class ListWindow:
    """``LatencyWindow``'s interface over the raw latencies of the current and previous interval."""

    def __init__(self, before_read: Callable[[], None]) -> None:
        self.before_read = before_read
        self.current: list[float] = []
        self.previous: list[float] = []

    def record(self, seconds: float) -> None:
        if len(self.current) < MAX_WINDOW_SAMPLES:
            self.current.append(seconds)

    def extend(self, values: list[float]) -> None:
        self.current.extend(values[: max(0, MAX_WINDOW_SAMPLES - len(self.current))])

    def rotate(self) -> None:
        self.before_read()
        self.previous, self.current = self.current, []

    def percentiles_ms(self) -> dict[str, float]:
        self.before_read()
        values = self.previous or self.current
        if not values:
            return {"p50": 0.0, "p95": 0.0, "p99": 0.0}
        q = np.percentile(np.asarray(values), [50, 95, 99], method="inverted_cdf")
        return {f"p{p}": round(float(v) * 1000.0, 3) for p, v in zip((50, 95, 99), q, strict=True)}


class LeanMetrics:
    """Installs the folding on one ``Metrics``: ``observe_latency`` appends, hot counters fold."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.pending: list[float] = []
        self.counters: list[FoldedCounter] = []
        self.window = ListWindow(self.fold)
        metrics.window = self.window  # type: ignore[assignment]
        metrics.observe_latency = self.pending.append  # type: ignore[method-assign,assignment]
        self.packets_out = self.counter(metrics.packets_out)
        self.handler_seconds = self.counter(metrics.handler_seconds)
        for metric in (metrics.latency, metrics.events_in, metrics.packets_out, metrics.handler_seconds):
            self._fold_before_collect(metric)

    def counter(self, child: Any) -> FoldedCounter:
        folded = FoldedCounter(child)
        self.counters.append(folded)
        return folded

    def _fold_before_collect(self, metric: Any) -> None:
        collect = metric.collect

        def folded_collect():
            self.fold()
            return collect()

        metric.collect = folded_collect  # the registry (and counter_value) call the instance's collect

    def fold(self) -> None:
        for c in self.counters:
            c.fold()
        if not self.pending:
            return
        values, self.pending[:] = list(self.pending), []
        self.window.extend(values)
        observe = self.metrics.latency.observe
        for v in values:
            observe(v)
