"""Fit the model's parameters from event logs (the scraped server counters and client latencies).

- CPU: non-negative least squares of the per-interval CPU rate on event, delivery, batch, connect
  and live-connection rates (samples where the loop was below 90 % busy).
- Memory: RSS against live connections (least squares line).
- GC: collections per inbound event, and a scipy.stats fit of the pause lengths (lognorm, gamma,
  expon), the best by the Kolmogorov-Smirnov statistic, with its p-value.
- Base latency: median ack latency of the first step's counted window, less the CPU per event.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import optimize, stats

from eventlog import Run, steps

from .parameters import Calibration, GcModel

REGRESSORS = ("events_in", "events_out", "batches", "connects", "connections")

# Server settings that shape the model's behaviour: read from the runs' manifests, never assumed.
SETTINGS_USED = (
    "flush_interval_ms",
    "batch_size",
    "heartbeat_s",
    "ping_timeout_s",
    "max_connections",
    "max_per_company",
)


# Read only from runs whose server had the recovery toggle on (a run without it replays nothing).
RECOVERY_SETTINGS = ("recovery_window_s", "recovery_max_events")


def settings_of(run: Run) -> dict:
    """The :data:`SETTINGS_USED` a run's manifest records; ValueError naming the missing ones."""
    recorded = run.manifest.server.settings if run.manifest.server else {}
    toggles = run.manifest.server.toggles if run.manifest.server else {}
    used = SETTINGS_USED + (RECOVERY_SETTINGS if toggles.get("recovery") else ())
    missing = [k for k in used if recorded.get(k) is None]
    if missing:
        raise ValueError(
            f"run {run.run_id} records no server setting {', '.join(missing)}; "
            "the model takes them from the run, it does not assume them"
        )
    return {k: recorded[k] for k in used}


def node_series(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (node, scrape): the scraped counters side by side."""
    s = df[(df["kind"] == "sample") & (df["node"] >= 0)]
    wide = s.pivot_table(index=["node", "t"], columns="name", values="value", aggfunc="last", observed=True)
    return wide.reset_index().sort_values(["node", "t"])


def rates(wide: pd.DataFrame) -> pd.DataFrame:
    """Per-interval rates of the cumulative counters, per node."""
    out = []
    for _, g in wide.groupby("node"):
        g = g.sort_values("t")
        dt = g["t"].diff()
        r = pd.DataFrame({"t": g["t"], "node": g["node"], "dt": dt})
        for col in ("cpu_seconds", "events_in", "events_out", "packets_out", "connects", "gc_collections"):
            r[col] = g[col].diff() / dt if col in g else 0.0
        r["batches"] = (
            (r["packets_out"] - r["events_in"]).clip(lower=0) if "batches" not in g else g["batches"].diff() / dt
        )
        r["connections"] = g.get("connections", 0.0)
        r["rss_bytes"] = g.get("rss_bytes", np.nan)
        out.append(r.iloc[1:])
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def fit_cpu(r: pd.DataFrame, batching: bool) -> tuple[dict, dict]:
    use = r[(r["cpu_seconds"] < 0.9) & (r["dt"] > 0.5)].dropna(subset=["cpu_seconds"])
    names = [n for n in REGRESSORS if n != "batches" or batching]
    names = [n for n in names if use[n].fillna(0).abs().sum() > 0]  # a regressor that never moved fits nothing
    X = np.column_stack([np.ones(len(use))] + [use[n].fillna(0).to_numpy() for n in names])
    y = use["cpu_seconds"].to_numpy()
    if len(use) < len(names) + 2:
        raise ValueError(f"too few unsaturated samples to fit CPU ({len(use)}); measure longer or at lower load")
    coef, _ = optimize.nnls(X, y)
    pred = X @ coef
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum()) or 1e-12
    params = dict.fromkeys(REGRESSORS, 0.0) | dict(zip(["idle", *names], coef.tolist(), strict=True))
    quality = {
        "r2": 1 - ss_res / ss_tot,
        "n_samples": len(use),
        "residual_sd": float(np.sqrt(ss_res / len(use))),
        "regressors": names,
    }
    return params, quality


def fit_memory(r: pd.DataFrame) -> tuple[float, float, dict]:
    m = r.dropna(subset=["rss_bytes"])
    if m["connections"].nunique() < 2:
        return float(m["rss_bytes"].median()), 0.0, {"r2": None, "n_samples": len(m)}
    fit = stats.linregress(m["connections"], m["rss_bytes"])
    return (
        float(max(fit.intercept, 0.0)),
        float(max(fit.slope, 0.0)),
        {"r2": float(fit.rvalue**2), "n_samples": len(m), "slope_stderr": float(fit.stderr)},
    )


def fit_gc(df: pd.DataFrame, r: pd.DataFrame) -> GcModel:
    pauses = df[(df["kind"] == "sample") & df["name"].astype(str).str.startswith("gc_pause_gen")]["value"].to_numpy()
    events = float((r["events_in"] * r["dt"]).sum())
    collections = float((r["gc_collections"] * r["dt"]).sum()) if "gc_collections" in r else 0.0
    if pauses.size < 5 or events <= 0:
        return GcModel(n_pauses=int(pauses.size))
    pauses = np.clip(pauses, 1e-7, None)
    best = None
    for name in ("lognorm", "gamma", "expon"):
        dist = getattr(stats, name)
        params = dist.fit(pauses, floc=0)
        ks = stats.kstest(pauses, name, args=params)
        if best is None or ks.statistic < best[2]:
            best = (name, params, ks.statistic, ks.pvalue)
    assert best is not None  # three candidates were tried
    name, params, _, p = best
    return GcModel(
        collections_per_event=collections / events,
        dist=name,
        params=[float(x) for x in params],
        ks_pvalue=float(p),
        n_pauses=int(pauses.size),
        mean_pause_s=float(pauses.mean()),
    )


def base_latency(df: pd.DataFrame, cpu_per_event: float) -> float:
    st = steps(df)
    acks = df[df["kind"] == "ack"]
    if acks.empty:
        return 0.0
    if len(st):
        sent = acks["t"] - acks["latency_s"]
        acks = acks[(sent >= st["window_start"].iloc[0]) & (sent < st["end"].iloc[0])]
    return float(max(0.0, acks["latency_s"].median() - cpu_per_event))


def calibrate(runs: list[Run]) -> Calibration:
    """One calibration from measured runs of the same server profile and settings."""
    if not runs:
        raise ValueError("no runs to calibrate from")
    profiles = {(r.manifest.profile, str(r.manifest.server.toggles if r.manifest.server else None)) for r in runs}
    if len(profiles) > 1:
        raise ValueError(f"runs mix server configurations {sorted(map(str, profiles))}; calibrate each separately")
    m = runs[0].manifest
    settings = settings_of(runs[0])
    toggles = m.server.toggles if m.server else {}
    batching = bool(toggles.get("batching"))
    r = pd.concat([rates(node_series(run.events)) for run in runs], ignore_index=True)
    if r.empty:
        raise ValueError("the runs hold no scraped server samples (was /socket-metrics scraped?)")
    cpu, cpu_q = fit_cpu(r, batching)
    mem_base, mem_conn, mem_q = fit_memory(r)
    gc = fit_gc(pd.concat([run.events for run in runs]), r)
    base = float(np.median([base_latency(run.events, cpu["events_in"]) for run in runs]))
    assumptions = [
        "service times are gamma distributed with coefficient of variation 1 (not fitted)",
        "per-event CPU is one mean over the measured event mix",
        "Redis publish cost and round trip are not fitted from single-node runs (cost = 0, rtt = 0.5 ms)",
        "baseline's per-socket leak is not fitted unless the runs had churn (leak = 0 otherwise)",
    ]
    return Calibration(
        profile=m.profile,
        toggles=toggles,
        cpu_idle_s_per_s=cpu["idle"],
        cpu_per_event_s=max(cpu["events_in"], 1e-7),
        cpu_per_delivery_s=cpu["events_out"],
        cpu_per_packet_s=cpu.get("batches", 0.0),
        cpu_per_connect_s=cpu["connects"],
        cpu_per_connection_s_per_s=cpu["connections"],
        base_latency_s=base,
        memory_base_bytes=mem_base,
        memory_per_connection_bytes=mem_conn,
        gc=gc,
        batching=batching,
        flush_interval_s=settings["flush_interval_ms"] / 1000.0,
        batch_size=settings["batch_size"],
        heartbeat_s=settings["heartbeat_s"],
        ping_timeout_s=settings["ping_timeout_s"],
        conn_limits=bool(toggles.get("conn_limits")),
        max_connections=settings["max_connections"],
        max_per_company=settings["max_per_company"],
        recovery_window_s=settings.get("recovery_window_s", 0.0),
        recovery_max_events=settings.get("recovery_max_events", 0),
        source_runs=[run.run_id for run in runs],
        fit={"cpu": cpu_q, "memory": mem_q, "units": {"cpu": "seconds of loop time", "memory": "bytes"}},
        assumptions=assumptions,
    )
