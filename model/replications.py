"""Simulated runs in the event-log format, replications in parallel, confidence intervals."""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from eventlog import EventWriter, create_run, finish_run

from .parameters import Calibration
from .sim import NAMES, Simulation
from .workload import Workload


def simulate(
    cal: Calibration,
    wl: Workload,
    out: Path | str,
    seed: int = 1,
    nodes: int = 1,
    name: str = "sim",
    extra: dict | None = None,
) -> Path:
    """One replication written as a run folder (source 'simulated'); returns its path."""
    run_dir, _ = create_run(
        out,
        "simulated",
        name,
        scenario=(extra or {}).get("scenario", {}),
        seed=seed,
        nodes=nodes,
        profile=cal.profile,
        load=wl.model_dump(),
        calibration=cal.model_dump(),
        **{k: v for k, v in (extra or {}).items() if k != "scenario"},
    )
    started = time.perf_counter()
    try:
        cols = Simulation(cal, wl, seed, nodes).run()
        t, kind, conn, node, name_, latency, nbytes, value = cols
        EventWriter(run_dir, "model", t0=0.0).columns(t, kind, conn, node, name_, latency, nbytes, value, names=NAMES)
    except BaseException as exc:
        finish_run(run_dir, "aborted", error=f"{type(exc).__name__}: {exc}")
        raise
    finish_run(run_dir, "complete", wall_seconds=round(time.perf_counter() - started, 3), rows=int(cols[0].size))
    return run_dir


def _one(args: tuple) -> str:
    cal_json, wl_json, out, seed, nodes, name, extra = args
    return str(
        simulate(
            Calibration.model_validate_json(cal_json),
            Workload.model_validate_json(wl_json),
            out,
            seed,
            nodes,
            name,
            extra,
        )
    )


def replicate(
    cal: Calibration,
    wl: Workload,
    out: Path | str,
    replications: int = 5,
    seed: int = 1,
    nodes: int = 1,
    name: str = "sim",
    extra: dict | None = None,
    workers: int | None = None,
) -> list[Path]:
    """``replications`` runs with seeds seed, seed+1, ... on a process pool (common random numbers:
    two scenarios simulated with the same seeds share their random streams)."""
    jobs = [
        (
            cal.model_dump_json(),
            wl.model_dump_json(),
            str(out),
            seed + r,
            nodes,
            name,
            {**(extra or {}), "replication": r},
        )
        for r in range(replications)
    ]
    workers = workers or min(replications, os.cpu_count() or 1)
    if workers <= 1 or replications == 1:
        return [Path(_one(j)) for j in jobs]
    with ProcessPoolExecutor(workers) as pool:
        return [Path(p) for p in pool.map(_one, jobs)]


def confidence(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the Student-t confidence interval (NaN half-width for one value)."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], float)
    if x.size == 0:
        return float("nan"), float("nan")
    if x.size == 1:
        return float(x[0]), float("nan")
    from scipy import stats

    half = stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean()), float(half)
