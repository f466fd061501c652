"""Validation: predict measured runs the calibration was not fitted on, metric by metric, per step.

The acceptance bands are fixed here, before any fit, and printed with every result.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from eventlog import SLO, Run, max_stable_throughput, read_run, step_table, steps

from .parameters import Calibration
from .replications import replicate
from .workload import Workload

BANDS = {  # metric -> (allowed relative error, where it applies)
    "throughput_eps": (0.05, "every step"),
    "cpu_pct": (0.05, "every step"),
    "memory_mb": (0.10, "every step"),
    "p95_ms": (0.15, "steps below saturation (measured CPU < 80 %)"),
    "saturation_eps": (0.10, "highest step rate holding the SLO"),
}


def server_by_step(run: Run) -> pd.DataFrame:
    """Per step: server CPU % (sum over nodes) and mean RSS in MB over the counted window."""
    df = run.events
    s = df[(df["kind"] == "sample") & (df["node"] >= 0)]
    rows = []
    for st in steps(df).itertuples():
        w = s[(s["t"] >= st.window_start) & (s["t"] <= st.end)]
        cpu = 0.0
        for _, g in w[w["name"] == "cpu_seconds"].groupby("node"):
            if len(g) >= 2:
                cpu += 100 * (g["value"].iloc[-1] - g["value"].iloc[0]) / (g["t"].iloc[-1] - g["t"].iloc[0])
        rss = w[w["name"] == "rss_bytes"].groupby("node")["value"].mean()  # each node's mean, summed
        rows.append(
            {"step": st.step, "cpu_pct": cpu if cpu else np.nan, "memory_mb": rss.sum() / 1e6 if len(rss) else np.nan}
        )
    return pd.DataFrame(rows)


def step_metrics(run: Run, slo: SLO) -> tuple[pd.DataFrame, float]:
    table = step_table(run, slo).merge(server_by_step(run), on="step")
    return table, max_stable_throughput(step_table(run, slo))


def validate(
    cal: Calibration, measured: Run, out: Path | str, slo: SLO | None = None, replications: int = 3, seed: int = 1
) -> pd.DataFrame:
    """Simulate the measured run's workload; one row per (step, metric) with errors and verdicts."""
    slo = slo or SLO()
    wl = Workload.from_manifest(measured.manifest)
    sims = [
        read_run(p)
        for p in replicate(
            cal,
            wl,
            out,
            replications,
            seed,
            nodes=measured.manifest.nodes,
            name=f"validate-{measured.manifest.label or 'run'}",
            extra={"validates": measured.run_id},
        )
    ]
    meas, meas_sat = step_metrics(measured, slo)
    sim_tables = [step_metrics(s, slo) for s in sims]
    sim = pd.concat([t for t, _ in sim_tables]).groupby("step").mean(numeric_only=True)
    sim_sat = float(np.nanmean([s for _, s in sim_tables])) if sim_tables else np.nan
    rows = []
    for m in meas.itertuples():
        below = not np.isnan(m.cpu_pct) and m.cpu_pct < 80
        for metric in ("throughput_eps", "cpu_pct", "memory_mb", "p95_ms"):
            mv, sv = getattr(m, metric), sim.loc[m.step, metric] if m.step in sim.index else np.nan
            applies = metric != "p95_ms" or below
            noise = 0.0
            if metric == "throughput_eps" and mv and not np.isnan(mv):
                noise = 2.0 / np.sqrt(max(1.0, mv * m.window_s))  # two sigma of a Poisson count
            rows.append(_row(m.step, int(m.target), metric, mv, sv, applies, noise))
    rows.append(_row(-1, 0, "saturation_eps", meas_sat, sim_sat, True))
    out_df = pd.DataFrame(rows)
    out_df.attrs["simulated_runs"] = [s.run_id for s in sims]
    return out_df


def _row(
    step: int, target: int, metric: str, measured: float, simulated: float, applies: bool, noise: float = 0.0
) -> dict:
    """``noise``: the relative 95 % sampling error of the measured value itself (Poisson counts)."""
    band = BANDS[metric][0]
    err = (simulated - measured) / measured if measured and not np.isnan(measured) else np.nan
    if not applies:
        verdict = "n/a (saturated)"
    elif np.isnan(err):
        verdict = "not measurable"
    elif abs(err) <= band:
        verdict = "within band"
    elif abs(err) <= noise:
        verdict = "within measurement noise"  # the window was too short to resolve the band
    else:
        verdict = "outside band"
    return {
        "step": step,
        "target": target,
        "metric": metric,
        "measured": measured,
        "simulated": simulated,
        "error_pct": 100 * err if not np.isnan(err) else np.nan,
        "band_pct": 100 * band,
        "verdict": verdict,
    }


def bands_text() -> str:
    return "; ".join(f"{k} within {100 * v[0]:.0f} % ({v[1]})" for k, v in BANDS.items())
