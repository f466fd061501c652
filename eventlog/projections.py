"""Projections of a run's events: steps, the benchmark row, time series, before/after comparison.

One code path for measured and simulated runs, on disk or in memory: every projection takes a
:class:`~eventlog.reader.Run` (or a run folder, a DataFrame, an Arrow table) and reads it through
:mod:`eventlog.scan`, batch by batch, so its memory grows with steps, seconds and connections, not
with rows. Rules, stated once:

- Steps: ``sample`` rows named ``step`` mark the start of each load step (value = target
  connections); a ``sample`` row named ``end`` closes the last one.
- Warm-up cut: {warmup} (inside a step only
  ``[hold start + settle, end)`` counts).
- Latency: ``ack`` and ``push`` rows, placed in a window by their intended send time
  (``t - latency_s``); percentiles are nearest-rank over every sample, never averaged.
- Errors: ``connect_fail + timeout + reject + error`` over ``connect_start + send + error`` (an
  ``error`` row, a dropped connection or a send that failed, is a failed attempt with no row of its
  own, so it counts on both sides and the rate stays a fraction even when everything fails), each error
  placed in a window by the time of the attempt it ends (``t - latency_s`` where the row has one:
  timeouts, refused connects, rejects; its own ``t`` otherwise), as attempts are by theirs.
- Recovery: ``recovered`` rows (missed deliveries replayed at a reconnect) and ``recovery_fail``
  rows (rooms that could not be replayed) are counted by :func:`recovery_stats`, apart from
  ``push`` latency and from the error rate: a replay is late by design, and a failed recovery fails
  no request (the client resyncs).
- A step holds when p95 <= SLO p95, error rate <= SLO error rate and at least 99 % of its target
  connections were live; max stable connections is the target of the last step of the leading
  run of steps that held; max stable throughput is the highest acked rate of any step that held.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

import numpy as np
import pandas as pd

from .load import SLO, generator_ok
from .manifest import Manifest
from .scan import Digest, Source, digest, overview
from .schema import GEN_CPU, KINDS

ERROR_KINDS = ("connect_fail", "timeout", "reject", "error")
ATTEMPT_KINDS = ("connect_start", "send", "error")
WARMUP_MIN_S = 1.0
WARMUP_FRACTION = 0.25
WARMUP_RULE = (
    f"each step counts from max({WARMUP_MIN_S:g} s, {100 * WARMUP_FRACTION:g} % of its hold) "
    "after its connection ramp ends"
)
__doc__ = (__doc__ or "").format(warmup=WARMUP_RULE)


def percentile(values: np.ndarray, q: float) -> float:
    """Nearest-rank percentile (the smallest value with at least q % of samples at or below it)."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan")
    return float(np.percentile(values, q, method="inverted_cdf"))


def _steps_from(samples: pd.DataFrame, t_max: float) -> pd.DataFrame:
    df = samples
    marks = df[(df["kind"] == "sample") & (df["name"] == "step")]
    holds = df[(df["kind"] == "sample") & (df["name"] == "hold")]["t"].to_numpy(float)
    ends = df[(df["kind"] == "sample") & (df["name"] == "end")]
    t_end = float(ends["t"].max()) if len(ends) else t_max if not np.isnan(t_max) else 0.0
    starts = marks["t"].to_numpy(float)
    targets = marks["value"].to_numpy(float)
    stops = np.append(starts[1:], t_end) if len(starts) else starts
    # a step's hold starts after its connection ramp, where the generator marked it
    in_step = [(holds >= a) & (holds < b) for a, b in zip(starts, stops, strict=True)]
    hold = np.array([holds[m].min() if m.any() else a for m, a in zip(in_step, starts, strict=True)])
    settle = np.maximum(WARMUP_MIN_S, WARMUP_FRACTION * (stops - hold))
    return pd.DataFrame(
        {
            "step": np.arange(len(starts)),
            "target": targets.astype(int),
            "start": starts,
            "end": stops,
            "hold": hold,
            "window_start": np.minimum(hold + settle, stops),
        }
    )


def steps(events: Source) -> pd.DataFrame:
    """Load steps: index, target connections, start, end, and the counted window after warm-up."""
    ov = overview(events)
    return _steps_from(ov.samples, ov.t_max)


def live_connections(events: Source) -> pd.Series:
    """Client-side live connections after each connect_ok / disconnect row, indexed by t."""
    return overview(events).live()


def recovery_stats(counts: Mapping[str, float] | pd.Series, span_s: float | None = None) -> dict[str, Any]:
    """Recovered deliveries and failed room recoveries from a row count by kind (per second too,
    given the span). Version 1 logs have neither kind: zeros."""
    out: dict[str, Any] = {
        "recovered": int(counts.get("recovered", 0)),
        "recovery_failures": int(counts.get("recovery_fail", 0)),
    }
    if span_s is not None:
        out["recovered_per_s"] = out["recovered"] / span_s
    return out


def _window_stats(d: Digest, i: int, t0: float, t1: float) -> dict:
    counts = dict(zip(KINDS, d.window_counts[i], strict=True))
    errors = int(d.window_errors[i])
    attempts = sum(int(counts.get(k, 0)) for k in ATTEMPT_KINDS)
    span = max(t1 - t0, 1e-9)
    return {
        "p50_ms": 1000 * d.pct[("lat", i, 50.0)],
        "p95_ms": 1000 * d.pct[("lat", i, 95.0)],
        "p99_ms": 1000 * d.pct[("lat", i, 99.0)],
        "ack_p95_ms": 1000 * d.pct[("ack", i, 95.0)],
        "push_p95_ms": 1000 * d.pct[("push", i, 95.0)],
        "error_rate": errors / attempts if attempts else 0.0,
        "throughput_eps": int(counts.get("ack", 0)) / span,
        "deliveries_per_s": int(counts.get("push", 0)) / span,
        "sends_per_s": int(counts.get("send", 0)) / span,
        "send_lag_p99_ms": 1000 * d.pct[("send", i, 99.0)],
        **recovery_stats(counts, span),
    }


def window_stats(events: Source, t0: float, t1: float) -> dict:
    """Latency percentiles, error rate and throughput of events intended in ``[t0, t1)``."""
    return _window_stats(digest(events, [(t0, t1)]), 0, t0, t1)


def _step_windows(st: pd.DataFrame) -> list[tuple[float, float]]:
    return [(float(a), float(b)) for a, b in zip(st["window_start"], st["end"], strict=True)]


def step_table(events: Source, slo: SLO | None = None) -> pd.DataFrame:
    """Per step: target and reached connections, latency, errors, throughput, and whether it held
    (against ``slo``, by default :class:`SLO`'s default)."""
    st_all = steps(events)
    return _step_table(st_all, digest(events, _step_windows(st_all), 1.0), live_connections(events), slo or SLO())


def _step_table(st_all: pd.DataFrame, d: Digest, live: pd.Series, slo: SLO) -> pd.DataFrame:
    rows = []
    for i, st in enumerate(st_all.itertuples()):
        stats = _window_stats(d, i, st.window_start, st.end)
        in_step = live[(live.index >= st.start) & (live.index < st.end)]
        before = live[live.index < st.start]
        reached = int(max(in_step.max() if len(in_step) else 0, before.iloc[-1] if len(before) else 0))
        # a step that sent nothing (an idle step of a calibration design) has no latency to miss the SLO by
        idle = np.isnan(stats["p95_ms"]) and not stats["sends_per_s"]
        p95_ok = idle or (not np.isnan(stats["p95_ms"]) and stats["p95_ms"] <= slo.p95_s * 1000)
        held = p95_ok and stats["error_rate"] <= slo.error_rate and reached >= 0.99 * st.target
        rows.append(
            {
                "step": st.step,
                "target": st.target,
                "reached": reached,
                "window_s": st.end - st.window_start,
                **stats,
                "held": held,
            }
        )
    return pd.DataFrame(rows)


def max_stable(table: pd.DataFrame) -> tuple[int, bool]:
    """(connections, is_lower_bound): the last step of the leading run of held steps."""
    best = 0
    for row in table.itertuples():
        if not row.held:
            return best, False
        best = int(row.target)
    return best, bool(len(table))


def max_stable_throughput(table: pd.DataFrame) -> float:
    """Highest acked events/s of any step that held the SLO (NaN if none held)."""
    held = table[table["held"]] if len(table) else table
    return float(held["throughput_eps"].max()) if len(held) else float("nan")


def _samples(df: pd.DataFrame, name: str) -> pd.DataFrame:
    s = df[(df["kind"] == "sample") & (df["name"] == name) & (df["node"] >= 0)]
    return s[["t", "node", "value"]]


def peak_memory_mb(rss: pd.DataFrame) -> float:
    """Highest total RSS over all nodes: each node's highest sample per second, carried forward over
    seconds where it has none, summed across nodes. (Summing raw samples by rounded time counted a
    node twice whenever two of its samples, ~1 s apart, rounded to the same second.)"""
    if rss.empty:
        return float("nan")
    per = rss.assign(b=np.floor(rss["t"]).astype(np.int64)).groupby(["b", "node"])["value"].max().unstack("node")
    return float(per.sort_index().ffill().sum(axis=1).max() / 1e6)


def _node_rate(df: pd.DataFrame, name: str, t0: float, t1: float, missing: float = 0.0) -> float:
    """Sum over nodes of the counter's increase per second within [t0, t1]; ``missing`` when no node
    has two samples of it there."""
    total, seen = 0.0, False
    for _, s in _samples(df, name).groupby("node"):
        s = s[(s["t"] >= t0) & (s["t"] <= t1)]
        if len(s) >= 2 and s["t"].iloc[-1] > s["t"].iloc[0]:
            total += (s["value"].iloc[-1] - s["value"].iloc[0]) / (s["t"].iloc[-1] - s["t"].iloc[0])
            seen = True
    return total if seen else missing


def step_costs(events: Source) -> pd.DataFrame:
    """Per load step's counted window, from the server's own counters (all nodes): events/s, CPU,
    CPU per event, loop wake-ups per second and per event (NaN where the log has no wake-up count or
    no event), and the share of the time the nodes' loops waited for a CPU (mean over nodes; NaN where
    not counted). The CPU per event falls with load because more events share each wake-up (issue 11);
    a loop that waits for a CPU is sharing the machine's cores with other processes."""
    ov = overview(events)
    df, rows = ov.samples, []
    nodes = _samples(df, "runqueue_wait_s")["node"].nunique()  # the nodes that count it
    for st in _steps_from(df, ov.t_max).itertuples():
        t0, t1 = float(st.window_start), float(st.end)
        ev, cpu, woke, waited = (
            _node_rate(df, name, t0, t1, missing=np.nan)
            for name in ("events_in", "cpu_seconds", "wakeups", "runqueue_wait_s")
        )
        rows.append(
            {
                "step": st.step,
                "target": st.target,
                "events_per_s": ev,
                "cpu_pct": 100 * cpu,
                "cpu_us_per_event": 1e6 * cpu / ev if ev > 0 else np.nan,
                "wakeups_per_s": woke,
                "wakeups_per_event": woke / ev if ev > 0 else np.nan,
                "cpu_wait_pct": 100 * waited / nodes if nodes else np.nan,
            }
        )
    return pd.DataFrame(rows)


class BenchmarkRow(TypedDict):
    """One run's row of the seed guide's benchmark table (units in the names; NaN: not measured)."""

    run_id: str
    source: str
    profile: str
    steady_step: int  # the step latency, CPU, throughput and errors come from
    connections: int  # that step's target
    max_stable_connections: int
    max_stable_is_lower_bound: bool  # every step tried held
    p50_ms: float
    p95_ms: float
    p99_ms: float
    ack_p95_ms: float
    push_p95_ms: float
    peak_memory_mb: float  # whole run, all nodes
    mean_cpu_pct: float  # % of one core, all nodes
    error_rate_pct: float
    error_rate_run_pct: float  # whole run
    throughput_eps: float  # acked events/s
    max_stable_throughput_eps: float
    deliveries_per_s: float
    connect_rate_per_s: float
    loop_lag_max_ms: float
    gen_cpu_pct: float
    send_lag_p99_ms: float
    sends: int
    acks: int
    pushes: int
    recovered: int  # missed deliveries replayed at reconnects, whole run
    recovery_failures: int  # rooms a reconnect could not replay, whole run
    errors: int
    generator_ok: bool


def benchmark_row(
    events: Source,
    manifest: Manifest | None = None,
    slo: SLO | None = None,
    steady_step: int | None = None,
) -> BenchmarkRow:
    """The seed guide's benchmark table row for one run, plus connect rate, loop lag, generator health.

    ``events``: a :class:`~eventlog.reader.Run` (its parts are scanned in bounded memory), a run
    folder, or the rows themselves (a DataFrame or Arrow table). Latency, CPU, throughput and error
    rate come from the steady step (``steady_step``, else the manifest's ``steady_step``, else the
    last step); max stable connections and throughput from the whole ramp; peak memory from the
    whole run.
    """
    slo = slo or (SLO.from_manifest(manifest) if manifest is not None else SLO())
    ov = overview(events)
    df = ov.samples
    st = _steps_from(df, ov.t_max)
    if st.empty:
        raise ValueError("the log holds no load steps (sample rows 'step'): no benchmark row")
    d = digest(events, _step_windows(st), 1.0)
    table = _step_table(st, d, ov.live(), slo)
    best, lower_bound = max_stable(table)
    if steady_step is None and manifest is not None:
        steady_step = manifest.steady_step
    k = int(steady_step) if steady_step is not None else len(st) - 1
    t0, t1 = float(st["window_start"].iloc[k]), float(st["end"].iloc[k])
    steady = _window_stats(d, k, t0, t1)
    counts = ov.counts
    errors = sum(int(counts.get(k, 0)) for k in ERROR_KINDS)
    attempts = sum(int(counts.get(k, 0)) for k in ATTEMPT_KINDS)

    peak_mb = peak_memory_mb(_samples(df, "rss_bytes"))
    lag = _samples(df, "loop_lag_max_s")
    lag = lag[(lag["t"] >= t0) & (lag["t"] <= t1)]["value"]
    ramp = ov.connect_ok_t_max - ov.connect_start_t_min if ov.connect_ok_n else float("nan")
    gen_cpu = df[(df["kind"] == "sample") & df["name"].astype(str).str.startswith(GEN_CPU)]
    gen_pct = float("nan")
    if len(gen_cpu) >= 2:
        gen_pct = 0.0
        # one series per worker: named gen_cpu_seconds:<worker> (schema 1 runs: one name, the worker in conn)
        for _, g in gen_cpu.groupby([gen_cpu["name"].astype(str), "conn"]):
            if len(g) >= 2:
                gen_pct += (
                    100 * (g["value"].iloc[-1] - g["value"].iloc[0]) / max(g["t"].iloc[-1] - g["t"].iloc[0], 1e-9)
                )
    send_lag_p99_ms = 1000 * d.pct[("send_all", 0, 99.0)]
    recovery = recovery_stats(counts)
    return BenchmarkRow(
        run_id=manifest.run_id if manifest else "",
        source=manifest.source if manifest else "",
        profile=manifest.profile if manifest else "",
        steady_step=k,
        connections=int(st["target"].iloc[k]),
        max_stable_connections=best,
        max_stable_is_lower_bound=lower_bound,
        p50_ms=steady["p50_ms"],
        p95_ms=steady["p95_ms"],
        p99_ms=steady["p99_ms"],
        ack_p95_ms=steady["ack_p95_ms"],
        push_p95_ms=steady["push_p95_ms"],
        peak_memory_mb=peak_mb,
        mean_cpu_pct=100 * _node_rate(df, "cpu_seconds", t0, t1),
        error_rate_pct=100 * steady["error_rate"],
        error_rate_run_pct=100 * errors / attempts if attempts else 0.0,
        throughput_eps=steady["throughput_eps"],
        max_stable_throughput_eps=max_stable_throughput(table),
        deliveries_per_s=steady["deliveries_per_s"],
        connect_rate_per_s=ov.connect_ok_n / ramp if ramp and ramp > 0 else float("nan"),
        loop_lag_max_ms=1000 * float(lag.max()) if len(lag) else float("nan"),
        gen_cpu_pct=gen_pct,
        send_lag_p99_ms=send_lag_p99_ms,
        sends=int(counts.get("send", 0)),
        acks=int(counts.get("ack", 0)),
        pushes=int(counts.get("push", 0)),
        recovered=recovery["recovered"],
        recovery_failures=recovery["recovery_failures"],
        errors=errors,
        generator_ok=generator_ok(gen_pct, send_lag_p99_ms),
    )


def timeseries(events: Source, bucket_s: float = 1.0) -> pd.DataFrame:
    """Per-second series: sends, acks, pushes, errors, p95 latency, live connections, server RSS and CPU %."""
    ov = overview(events)
    if not ov.rows:
        return pd.DataFrame()
    d = digest(events, _step_windows(steps(events)), bucket_s)  # one scan with the step table's
    assert d.second_counts is not None
    n = d.second_counts.shape[0]
    out = pd.DataFrame(index=pd.RangeIndex(d.b_min, d.b_min + n, name="second"))
    counts = pd.DataFrame(d.second_counts, index=out.index, columns=list(KINDS))
    out["sends_per_s"] = counts["send"] / bucket_s
    out["acks_per_s"] = counts["ack"] / bucket_s
    out["pushes_per_s"] = counts["push"] / bucket_s
    out["errors_per_s"] = counts[list(ERROR_KINDS)].sum(axis=1) / bucket_s
    out["p95_ms"] = 1000 * np.array([d.pct[("second", i, 95.0)] for i in range(n)])
    live = ov.live()
    if len(live):
        out["connections"] = (
            pd.Series(live.values, index=np.floor(live.index / bucket_s).astype(int))
            .groupby(level=0)
            .last()
            .reindex(out.index)
            .ffill()
        )
    df = ov.samples
    for name, col in (("rss_bytes", "rss_mb"), ("cpu_seconds", "cpu_pct"), ("loop_lag_max_s", "loop_lag_ms")):
        s = _samples(df, name)
        if s.empty:
            continue
        s = s.assign(b=np.floor(s["t"] / bucket_s).astype(int))
        per = s.groupby(["b", "node"])["value"].last().unstack("node")
        if col == "cpu_pct":
            per = per.diff() / bucket_s * 100
        scale = {"rss_mb": 1e-6, "cpu_pct": 1.0, "loop_lag_ms": 1000.0}[col]
        out[col] = per.sum(axis=1, min_count=1).reindex(out.index) * scale
    return out.fillna({"sends_per_s": 0, "acks_per_s": 0, "pushes_per_s": 0, "errors_per_s": 0})


# metric -> (label, True when lower is better)
TABLE_METRICS: dict[str, tuple[str, bool]] = {
    "max_stable_connections": ("Max stable connections", False),
    "p95_ms": ("P95 latency (ms)", True),
    "peak_memory_mb": ("Peak memory (MB)", True),
    "mean_cpu_pct": ("CPU (% of one core)", True),
    "error_rate_pct": ("Error rate (%)", True),
    "max_stable_throughput_eps": ("Max throughput within SLO (acked/s)", False),
    "throughput_eps": ("Event throughput, steady step (acked/s)", False),
    "deliveries_per_s": ("Room deliveries (/s)", False),
    "p99_ms": ("P99 latency (ms)", True),
    "connect_rate_per_s": ("Connect rate (/s)", False),
    "loop_lag_max_ms": ("Event-loop lag, max (ms)", True),
}


def improvement(before: float, after: float, lower_is_better: bool) -> float:
    """Percent improvement: reduction for lower-is-better metrics, increase otherwise."""
    if before is None or after is None or np.isnan(before) or np.isnan(after) or before == 0:
        return float("nan")
    return 100 * ((before - after) / before if lower_is_better else (after - before) / before)


def compare(before: Mapping[str, Any], after: Mapping[str, Any]) -> pd.DataFrame:
    """The before/after table with an improvement column."""
    rows = []
    for key, (label, lower) in TABLE_METRICS.items():
        b, a = before.get(key, float("nan")), after.get(key, float("nan"))
        rows.append({"metric": label, "key": key, "before": b, "after": a, "improvement_pct": improvement(b, a, lower)})
    return pd.DataFrame(rows)
