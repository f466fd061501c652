"""Validation: predict measured runs the calibration was not fitted on, metric by metric, per step.

The acceptance bands are fixed here, before any fit, and printed with every result.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from eventlog import GENERATOR_MAX_SEND_LAG_MS, SLO, Run, max_stable_throughput, read_run, step_table, steps

from .parameters import Calibration
from .replications import replicate
from .workload import Workload

BANDS = {  # metric -> (allowed relative error, where it applies)
    "throughput_eps": (0.05, "every step"),
    "cpu_pct": (0.05, "every step"),
    "memory_mb": (0.10, "every step"),
    "p95_ms": (0.15, "steps below saturation (measured CPU < 80 %) where the generator kept its schedule"),
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
    cal: Calibration,
    measured: Run | list[Run],
    out: Path | str,
    slo: SLO | None = None,
    replications: int = 3,
    seed: int = 1,
) -> pd.DataFrame:
    """Simulate the measured workload; one row per (step, metric) with errors and verdicts.

    ``measured`` may be several passes of the same load (measured apart, interleaved with other
    runs): the prediction is then judged against their mean, and each row states the run-to-run
    spread (``spread_pct``: standard deviation over the mean) and the measured mean's own 95 %
    uncertainty (``noise_pct``) next to the band, so a band narrower than the noise shows as such.
    A miss within that uncertainty is "within measurement noise". Throughput is judged only where it
    says something about the server: at or past saturation (measured CPU >= 80 %, or under 95 % of
    the sends got through); below it an open-loop generator sets it, and it is "not measurable". p95
    is not judged where the measuring generator fell behind its schedule in any pass (send lag p99 at
    or over ``GENERATOR_MAX_SEND_LAG_MS``, the lab's generator check): those latencies hold its delay."""
    slo = slo or SLO()
    passes = measured if isinstance(measured, list) else [measured]
    if not passes:
        raise ValueError("no measured runs to validate against")
    first = passes[0]
    wl = Workload.from_manifest(first.manifest)
    for p in passes[1:]:
        if Workload.from_manifest(p.manifest).steps != wl.steps:
            raise ValueError(f"run {p.run_id} offered other steps than {first.run_id}: not passes of one load")
    sims = [
        read_run(p)
        for p in replicate(
            cal.model_copy(update={"measured_client": True}),  # the measurement's own client is predicted too
            wl,
            out,
            replications,
            seed,
            nodes=first.manifest.nodes,
            name=f"validate-{first.manifest.label or 'run'}",
            extra={"validates": [p.run_id for p in passes]},
        )
    ]
    meas_tables = [step_metrics(p, slo) for p in passes]
    sim_tables = [step_metrics(s, slo) for s in sims]
    meas_all = pd.concat([t for t, _ in meas_tables])
    sim_all = pd.concat([t for t, _ in sim_tables])
    rows = []
    for step, g in meas_all.groupby("step"):
        sg = sim_all[sim_all["step"] == step]
        cpu = float(g["cpu_pct"].mean())
        below = not np.isnan(cpu) and cpu < 80
        sends = g["sends_per_s"].mean() if "sends_per_s" in g else np.nan
        saturated = (not np.isnan(cpu) and cpu >= 80) or bool(g["throughput_eps"].mean() < 0.95 * sends)
        lag = g["send_lag_p99_ms"] if "send_lag_p99_ms" in g else pd.Series(dtype=float)
        lagged = bool((lag >= GENERATOR_MAX_SEND_LAG_MS).any())  # in any pass: the mean holds that pass
        for metric in ("throughput_eps", "cpu_pct", "memory_mb", "p95_ms"):
            values = g[metric].to_numpy(float)
            noise = _noise(values)
            if metric == "throughput_eps" and len(values) == 1 and values[0] and not np.isnan(values[0]):
                noise = 2.0 / np.sqrt(max(1.0, values[0] * float(g["window_s"].iloc[0])))  # Poisson, 2 sigma
            applies, why = True, ""
            if metric == "p95_ms" and not below:
                applies, why = False, "n/a (saturated)"
            elif metric == "p95_ms" and lagged:
                applies, why = False, "n/a (generator-bound)"  # the lab's own check: latencies hold its delay
            if metric == "throughput_eps" and not saturated:
                applies, why = False, "not measurable"  # open loop below saturation: the generator sets it
            simulated = sg[metric].to_numpy(float)
            rows.append(_row(int(step), int(g["target"].iloc[0]), metric, values, simulated, applies, noise, why))
    meas_sat = np.array([s for _, s in meas_tables], float)
    sim_sat = np.array([s for _, s in sim_tables], float)
    rows.append(_row(-1, 0, "saturation_eps", meas_sat, sim_sat, True, _noise(meas_sat)))
    out_df = pd.DataFrame(rows)
    out_df.attrs["simulated_runs"] = [s.run_id for s in sims]
    return out_df


def _noise(values: np.ndarray) -> float:
    """Relative half-width of the 95 % Student-t interval of the mean of ``values`` (0: one value)."""
    from scipy import stats

    v = values[~np.isnan(values)]
    if v.size < 2 or not v.mean():
        return 0.0
    return float(stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size) / abs(v.mean()))


def _row(
    step: int,
    target: int,
    metric: str,
    measured: np.ndarray | float,
    simulated: np.ndarray | float,
    applies: bool,
    noise: float = 0.0,
    why: str = "",
) -> dict:
    """``measured``: the passes' values; ``simulated``: the replications'; ``noise``: the measured mean's
    relative 95 % uncertainty (the passes' spread, or a Poisson count's for one pass)."""
    m = np.atleast_1d(np.asarray(measured, float))
    sv = np.atleast_1d(np.asarray(simulated, float))
    m, sv = m[~np.isnan(m)], sv[~np.isnan(sv)]
    mean = float(m.mean()) if m.size else np.nan
    sim = float(sv.mean()) if sv.size else np.nan
    band = BANDS[metric][0]
    err = (sim - mean) / mean if mean and not np.isnan(mean) else np.nan
    if not applies:
        verdict = why or "n/a (saturated)"
    elif np.isnan(err):
        verdict = "not measurable"
    elif abs(err) <= band:
        verdict = "within band"
    elif abs(err) <= noise:
        verdict = "within measurement noise"  # the measurement cannot resolve the band here
    else:
        verdict = "outside band"
    return {
        "step": step,
        "target": target,
        "metric": metric,
        "measured": mean,
        "simulated": sim,
        "error_pct": 100 * err if not np.isnan(err) else np.nan,
        "band_pct": 100 * band,
        "verdict": verdict,
        "passes": int(m.size),
        "measured_sd": float(m.std(ddof=1)) if m.size > 1 else np.nan,
        "spread_pct": 100 * float(m.std(ddof=1)) / abs(mean) if m.size > 1 and mean else np.nan,
        "noise_pct": 100 * noise,
        "band_resolvable": bool(noise < band),
        "simulated_ci_pct": 100 * _noise(sv) if mean else np.nan,
    }


def bands_text() -> str:
    return "; ".join(f"{k} within {100 * v[0]:.0f} % ({v[1]})" for k, v in BANDS.items())
