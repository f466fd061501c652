"""Simulated runs in the event-log format, replications on an executor (model/executor.py), confidence intervals."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from eventlog import SLO, EventWriter, benchmark_row, create_run, finish_run, read_run
from eventlog.projections import BenchmarkRow

from .executor import Executor, LocalExecutor, current
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
    """One replication written as a run folder (source 'simulated'); returns its path. ``extra`` goes
    into the manifest; its ``log`` (``full``, ``sampled``, ``histograms``: see ``model.sim.Rows``)
    says how the event rows are logged."""
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
    writer = EventWriter(run_dir, "model", t0=0.0)

    def write(cols: list[np.ndarray]) -> None:
        t, kind, conn, node, name_, latency, nbytes, value = cols
        if t.size:
            writer.columns(t, kind, conn, node, name_, latency, nbytes, value, names=NAMES)

    try:
        # parts are written as the simulation goes (every ~2 M rows), so it never holds the whole log
        write(Simulation(cal, wl, seed, nodes, sink=write, log=(extra or {}).get("log", "full")).run())
    except BaseException as exc:
        finish_run(run_dir, "aborted", error=f"{type(exc).__name__}: {exc}")
        raise
    finish_run(run_dir, "complete", wall_seconds=round(time.perf_counter() - started, 3), rows=writer.rows)
    return run_dir


class Point(NamedTuple):
    """One point to replicate: a calibration driven by a workload on ``nodes`` nodes."""

    cal: Calibration
    wl: Workload
    nodes: int = 1
    name: str = "sim"
    extra: dict | None = None


class Replicas(NamedTuple):
    """A point's replications: their run folders and, when an SLO was given, their benchmark rows
    (computed where each ran, so only the row travels back)."""

    dirs: list[Path]
    rows: list[BenchmarkRow]


class Task(NamedTuple):
    """One replication as it travels to a worker: plain data, no open files or frames."""

    cal_json: str
    wl_json: str
    out: str
    seed: int
    nodes: int
    name: str
    extra: dict
    row: bool  # compute the run's benchmark row where it ran
    slo: dict | None  # for the row; None: the manifest's SLO


def _one(task: Task) -> tuple[str, BenchmarkRow | None]:
    """One replication, run wherever the executor puts it: its run folder and, if asked, its row."""
    run_dir = simulate(
        Calibration.model_validate_json(task.cal_json),
        Workload.model_validate_json(task.wl_json),
        task.out,
        task.seed,
        task.nodes,
        task.name,
        task.extra,
    )
    if not task.row:
        return str(run_dir), None
    run = read_run(run_dir)
    slo = SLO.model_validate(task.slo) if task.slo is not None else None
    return str(run_dir), benchmark_row(run, run.manifest, slo)  # scanned from its parts, in bounded memory


def replicate_points(
    points: Sequence[Point],
    out: Path | str,
    replications: int = 5,
    seed: int = 1,
    *,
    rows: bool = False,
    slo: SLO | None = None,
    executor: Executor | None = None,
    workers: int | None = None,
) -> list[Replicas]:
    """Every point ``replications`` times (seeds seed, seed+1, ... for each: common random numbers),
    all submitted at once to ``executor`` (default: the installed one, else a local process pool of
    ``workers``). With ``rows`` (or an ``slo``), each task also returns its run's benchmark row, so
    the caller need not read the runs back. ``out`` must be the same storage for every worker."""
    run_on = executor or current(workers)
    if not isinstance(run_on, LocalExecutor):  # a relative path means nothing on another host
        out = Path(out).absolute()
    tasks = [
        Task(
            p.cal.model_dump_json(),
            p.wl.model_dump_json(),
            str(out),
            seed + r,
            p.nodes,
            p.name,
            {**(p.extra or {}), "replication": r},
            rows or slo is not None,
            slo.model_dump() if slo is not None else None,
        )
        for p in points
        for r in range(replications)
    ]
    done = run_on.map(_one, tasks)
    groups = [done[i * replications : (i + 1) * replications] for i in range(len(points))]
    return [Replicas([Path(d) for d, _ in g], [row for _, row in g if row is not None]) for g in groups]


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
    *,
    executor: Executor | None = None,
) -> list[Path]:
    """``replications`` runs with seeds seed, seed+1, ... (common random numbers: two scenarios
    simulated with the same seeds share their random streams), on ``executor`` (default: the installed
    one, else a local process pool of ``workers``)."""
    (reps,) = replicate_points(
        [Point(cal, wl, nodes, name, extra)], out, replications, seed, executor=executor, workers=workers
    )
    return reps.dirs


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
