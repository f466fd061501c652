"""``caplab run SCENARIO``: the one-way flow scenario -> runs -> tables -> report."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .executor import simulations_on
from .measure import measure
from .progress import display, log
from .results import summarize, write_tables
from .scenario import Scenario


def run_scenario(
    sc: Scenario,
    runs_root: Path = Path("runs"),
    reports_root: Path = Path("reports"),
    quiet: bool = False,
    reuse: list[Path] | None = None,
    cluster: str | None = None,
) -> Path:
    """Run every part of the scenario; returns the scenario's output folder under ``reports_root``.
    Its simulations run on the Dask scheduler at ``cluster`` (checked before anything starts), else on
    the local process pool; either way each writes its run folder under ``runs_root``."""
    with simulations_on(cluster, runs_root) if sc.kind in SIMULATING else contextlib.nullcontext():
        return _run(sc, runs_root, reports_root, quiet, reuse)


SIMULATING = ("simulate", "compare", "sweep")  # the kinds with a model side


def _run(sc: Scenario, runs_root: Path, reports_root: Path, quiet: bool, reuse: list[Path] | None) -> Path:
    out_dir = reports_root / sc.name
    out_dir.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "scenario": sc.name,
        "question": sc.question,  # the report's page 1 asks it, also when no run was measured
        "started_at": datetime.now(UTC).isoformat(),
        "measured": [],
        "simulated": [],
        "steady_step": sc.workload.steady_step if sc.workload else None,
    }
    measured: list[Path] = []
    if reuse:  # analyse measured runs again without measuring
        from eventlog import read_manifest

        measured = list(reuse)
        for p in measured:
            if read_manifest(p).source != "measured":
                raise ValueError(f"--reuse takes measured runs; {p} is {read_manifest(p).source}")
        record["measured"] = [str(p) for p in measured]
    elif sc.kind in ("measure", "compare") and sc.workload is not None:
        for server in sc.servers:
            log(f"measuring {server.label} ({server.profile}, {server.nodes} node(s)) ...")
            run_dir = measure(server, sc.workload, runs_root, sc, quiet=quiet)
            log(f"  -> {run_dir}")
            measured.append(run_dir)
        record["measured"] = [str(p) for p in measured]
    if sc.kind in SIMULATING:
        from .modelling import simulate_scenario

        with display() if not quiet else contextlib.nullcontext():  # measuring prints the generator's own line
            record.update(simulate_scenario(sc, measured, runs_root, out_dir))
    if measured:
        summary = summarize(measured, record["steady_step"])
        write_tables(summary, out_dir)
        for label, s in summary.items():
            for c in s.checks:
                log(f"  check {label}: {'ok ' if c['ok'] else 'FAIL'} {c['check']}: {c['detail']}")
    (out_dir / "runs.json").write_text(json.dumps(record, indent=2))
    if sc.report:
        from .report import build_report

        with display() if not quiet else contextlib.nullcontext():
            log("writing the report ...")
            pdf = build_report(out_dir)
        log(f"report: {pdf}")
    return out_dir
