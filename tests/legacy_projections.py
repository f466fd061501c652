"""The projections as they were before eventlog.scan (commit 66ddb90): the whole run read into one
pandas DataFrame. Kept only as the oracle the bounded-memory projections are tested against
(tests/test_projections_bounded.py) and measured against (tests/test_bench_memory.py).

"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

import numpy as np
import pandas as pd

from eventlog.load import GENERATOR_MAX_SEND_LAG_MS, SLO, generator_ok
from eventlog.manifest import Manifest
from eventlog.schema import GEN_CPU

SelfCheck = dict

ERROR_KINDS = ("connect_fail", "timeout", "reject", "error")
ATTEMPT_KINDS = ("connect_start", "send", "error")
WARMUP_MIN_S = 1.0
WARMUP_FRACTION = 0.25
WARMUP_RULE = (
    f"each step counts from max({WARMUP_MIN_S:g} s, {100 * WARMUP_FRACTION:g} % of its hold) "
    "after its connection ramp ends"
)


def percentile(values: np.ndarray, q: float) -> float:
    """Nearest-rank percentile (the smallest value with at least q % of samples at or below it)."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan")
    return float(np.percentile(values, q, method="inverted_cdf"))


def steps(df: pd.DataFrame) -> pd.DataFrame:
    """Load steps: index, target connections, start, end, and the counted window after warm-up."""
    marks = df[(df["kind"] == "sample") & (df["name"] == "step")]
    holds = df[(df["kind"] == "sample") & (df["name"] == "hold")]["t"].to_numpy(float)
    ends = df[(df["kind"] == "sample") & (df["name"] == "end")]
    t_end = float(ends["t"].max()) if len(ends) else float(df["t"].max()) if len(df) else 0.0
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


def live_connections(df: pd.DataFrame) -> pd.Series:
    """Client-side live connections after each connect_ok / disconnect row, indexed by t."""
    ev = df[df["kind"].isin(["connect_ok", "disconnect"])]
    delta = np.where(ev["kind"] == "connect_ok", 1, -1)
    return pd.Series(np.cumsum(delta), index=ev["t"].to_numpy())


def _latencies(df: pd.DataFrame, t0: float, t1: float, kinds: tuple[str, ...] = ("ack", "push")) -> np.ndarray:
    ev = df[df["kind"].isin(kinds)]
    sent = ev["t"].to_numpy() - ev["latency_s"].to_numpy()
    return ev["latency_s"].to_numpy()[(sent >= t0) & (sent < t1)]


def recovery_stats(counts: Mapping[str, int] | pd.Series, span_s: float | None = None) -> dict[str, Any]:
    """Recovered deliveries and failed room recoveries from a row count by kind (per second too,
    given the span). Version 1 logs have neither kind: zeros."""
    out: dict[str, Any] = {
        "recovered": int(counts.get("recovered", 0)),
        "recovery_failures": int(counts.get("recovery_fail", 0)),
    }
    if span_s is not None:
        out["recovered_per_s"] = out["recovered"] / span_s
    return out


def window_stats(df: pd.DataFrame, t0: float, t1: float) -> dict:
    """Latency percentiles, error rate and throughput of events intended in ``[t0, t1)``."""
    in_win = df[(df["t"] >= t0) & (df["t"] < t1)]
    counts = in_win["kind"].value_counts()
    lat = _latencies(df, t0, t1)
    err = df[df["kind"].isin(ERROR_KINDS)]
    tried = err["t"].to_numpy() - np.nan_to_num(err["latency_s"].to_numpy(float), nan=0.0)
    errors = int(((tried >= t0) & (tried < t1)).sum())
    attempts = sum(int(counts.get(k, 0)) for k in ATTEMPT_KINDS)
    span = max(t1 - t0, 1e-9)
    return {
        "p50_ms": 1000 * percentile(lat, 50),
        "p95_ms": 1000 * percentile(lat, 95),
        "p99_ms": 1000 * percentile(lat, 99),
        "ack_p95_ms": 1000 * percentile(_latencies(df, t0, t1, ("ack",)), 95),
        "push_p95_ms": 1000 * percentile(_latencies(df, t0, t1, ("push",)), 95),
        "error_rate": errors / attempts if attempts else 0.0,
        "throughput_eps": int(counts.get("ack", 0)) / span,
        "deliveries_per_s": int(counts.get("push", 0)) / span,
        "sends_per_s": int(counts.get("send", 0)) / span,
        "send_lag_p99_ms": 1000 * percentile(in_win[in_win["kind"] == "send"]["latency_s"].to_numpy(), 99),
        **recovery_stats(counts, span),
    }


def step_table(df: pd.DataFrame, slo: SLO | None = None) -> pd.DataFrame:
    """Per step: target and reached connections, latency, errors, throughput, and whether it held
    (against ``slo``, by default :class:`SLO`'s default)."""
    slo = slo or SLO()
    rows = []
    live = live_connections(df)
    for st in steps(df).itertuples():
        stats = window_stats(df, st.window_start, st.end)
        in_step = live[(live.index >= st.start) & (live.index < st.end)]
        before = live[live.index < st.start]
        reached = int(max(in_step.max() if len(in_step) else 0, before.iloc[-1] if len(before) else 0))
        p95_ok = not np.isnan(stats["p95_ms"]) and stats["p95_ms"] <= slo.p95_s * 1000
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


def _node_rate(df: pd.DataFrame, name: str, t0: float, t1: float) -> float:
    """Sum over nodes of the counter's increase per second within [t0, t1]."""
    total = 0.0
    for _, s in _samples(df, name).groupby("node"):
        s = s[(s["t"] >= t0) & (s["t"] <= t1)]
        if len(s) >= 2 and s["t"].iloc[-1] > s["t"].iloc[0]:
            total += (s["value"].iloc[-1] - s["value"].iloc[0]) / (s["t"].iloc[-1] - s["t"].iloc[0])
    return total


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
    df: pd.DataFrame,
    manifest: Manifest | None = None,
    slo: SLO | None = None,
    steady_step: int | None = None,
) -> BenchmarkRow:
    """The seed guide's benchmark table row for one run, plus connect rate, loop lag, generator health.

    Latency, CPU, throughput and error rate come from the steady step (``steady_step``, else the
    manifest's ``steady_step``, else the last step); max stable connections and throughput from
    the whole ramp; peak memory from the whole run.
    """
    slo = slo or (SLO.from_manifest(manifest) if manifest is not None else SLO())
    st = steps(df)
    if st.empty:
        raise ValueError("the log holds no load steps (sample rows 'step'): no benchmark row")
    table = step_table(df, slo)
    best, lower_bound = max_stable(table)
    if steady_step is None and manifest is not None:
        steady_step = manifest.steady_step
    k = int(steady_step) if steady_step is not None else len(st) - 1
    t0, t1 = float(st["window_start"].iloc[k]), float(st["end"].iloc[k])
    steady = window_stats(df, t0, t1)
    counts = df["kind"].value_counts()
    errors = sum(int(counts.get(k, 0)) for k in ERROR_KINDS)
    attempts = sum(int(counts.get(k, 0)) for k in ATTEMPT_KINDS)

    peak_mb = peak_memory_mb(_samples(df, "rss_bytes"))
    lag = _samples(df, "loop_lag_max_s")
    lag = lag[(lag["t"] >= t0) & (lag["t"] <= t1)]["value"]
    oks = df[df["kind"] == "connect_ok"]["t"]
    starts = df[df["kind"] == "connect_start"]["t"]
    ramp = (oks.max() - starts.min()) if len(oks) else float("nan")
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
    send_lag_p99_ms = 1000 * percentile(df[df["kind"] == "send"]["latency_s"].to_numpy(), 99)
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
        connect_rate_per_s=len(oks) / ramp if ramp and ramp > 0 else float("nan"),
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


def timeseries(df: pd.DataFrame, bucket_s: float = 1.0) -> pd.DataFrame:
    """Per-second series: sends, acks, pushes, errors, p95 latency, live connections, server RSS and CPU %."""
    if df.empty:
        return pd.DataFrame()
    b = np.floor(df["t"].to_numpy() / bucket_s).astype(np.int64)
    frame = pd.DataFrame({"b": b, "kind": df["kind"].to_numpy(), "lat": df["latency_s"].to_numpy()})
    counts = pd.crosstab(frame["b"], frame["kind"]).reindex(columns=["send", "ack", "push", *ERROR_KINDS], fill_value=0)
    out = pd.DataFrame(index=pd.RangeIndex(b.min(), b.max() + 1, name="second"))
    out["sends_per_s"] = counts["send"] / bucket_s
    out["acks_per_s"] = counts["ack"] / bucket_s
    out["pushes_per_s"] = counts["push"] / bucket_s
    out["errors_per_s"] = counts[list(ERROR_KINDS)].sum(axis=1) / bucket_s
    lat = frame[frame["kind"].isin(["ack", "push"])]
    out["p95_ms"] = lat.groupby("b")["lat"].apply(lambda x: 1000 * percentile(x.to_numpy(), 95))
    live = live_connections(df)
    if len(live):
        out["connections"] = (
            pd.Series(live.values, index=np.floor(live.index / bucket_s).astype(int))
            .groupby(level=0)
            .last()
            .reindex(out.index)
            .ffill()
        )
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


def _final_counter(df: pd.DataFrame, name: str) -> tuple[float, float] | None:
    s = df[(df["kind"] == "sample") & (df["name"] == name) & (df["node"] >= 0)]
    if s.empty:
        return None
    per_node = s.groupby("node", observed=True)["value"]
    return float(per_node.first().sum()), float(per_node.last().sum())


def littles_law(df: pd.DataFrame, t0: float, t1: float) -> dict:
    """L (mean acks in flight, integrated from the log) against lambda * W (throughput x mean latency)."""
    acks = df[(df["kind"] == "ack")]
    sent = acks["t"].to_numpy() - acks["latency_s"].to_numpy()
    done = acks["t"].to_numpy()
    # time each request spends in flight inside [t0, t1]
    overlap = np.clip(np.minimum(done, t1) - np.maximum(sent, t0), 0, None)
    span = t1 - t0
    L = overlap.sum() / span
    inside = (sent >= t0) & (sent < t1)
    lam = inside.sum() / span
    W = float(np.mean(done[inside] - sent[inside])) if inside.any() else float("nan")
    return {"L": L, "lambda_W": lam * W}


def self_checks(df: pd.DataFrame, manifest: Manifest | None = None) -> list[SelfCheck]:
    """Named checks with ok/detail; a failed check says the figures of this run need a second look."""
    out: list[SelfCheck] = []
    counts = df["kind"].value_counts()
    sends = int(counts.get("send", 0))
    events_in = _final_counter(df, "events_in")
    if events_in is not None:
        first, last = events_in
        server = last - first
        # the first scrape can follow the first sends; allow what was sent before it
        sample_t = df[(df["kind"] == "sample") & (df["name"] == "events_in")]["t"].min()
        before_first = int(((df["kind"] == "send") & (df["t"] < sample_t)).sum())
        gap = sends - server
        ok = 0 <= gap <= before_first + 0.001 * sends + 5
        detail = f"generator {sends}, server {server:.0f} (+{before_first} before the first scrape)"
        if gap > 0 and not ok:
            detail += f"; {gap:.0f} events were still queued in the server, or lost, when the run ended"
        out.append({"check": "sends recorded = events counted by the server", "ok": bool(ok), "detail": detail})
    st = steps(df)
    slo = SLO.from_manifest(manifest) if manifest is not None else SLO()
    table = step_table(df, slo) if len(st) else None
    held = table[table["held"]] if table is not None else None
    if held is not None and len(held):
        # on the busiest step that held: in overload, latencies as long as the window make the
        # edges dominate and the check says nothing
        best = held.sort_values("throughput_eps").iloc[-1]
        step = st[st["step"] == best["step"]].iloc[0]
        ll = littles_law(df, float(step["window_start"]), float(step["end"]))
        rel = abs(ll["L"] - ll["lambda_W"]) / ll["lambda_W"] if ll["lambda_W"] > 0 else 0.0
        out.append(
            {
                "check": "Little's law on acks (L = lambda W)",
                "ok": bool(rel < 0.1),
                "detail": f"step {int(best['step'])}: L {ll['L']:.3f}, lambda*W {ll['lambda_W']:.3f} "
                f"({100 * rel:.1f} % apart)",
            }
        )
    row = benchmark_row(df, manifest, slo)
    lagging = table[table["send_lag_p99_ms"] >= GENERATOR_MAX_SEND_LAG_MS]["step"].tolist() if table is not None else []
    detail = f"generator CPU {row['gen_cpu_pct']:.0f} %, send lag p99 {row['send_lag_p99_ms']:.2f} ms"
    if lagging:
        detail += (
            f"; send lag p99 over {GENERATOR_MAX_SEND_LAG_MS:g} ms in steps {lagging}: "
            "their latencies include the generator's delay"
        )
    out.append(
        {"check": "generator was not the bottleneck", "ok": bool(row["generator_ok"]) and not lagging, "detail": detail}
    )
    return out
