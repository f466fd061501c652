"""The model's side of a scenario: calibrate, validate on held-out steps, simulate capacity, sweep."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from eventlog import Run, benchmark_row, companies_needed, read_run, step_table, steps
from model import Calibration, Workload, confidence, replicate
from model.calibrate import calibrate
from model.usl import fit_usl
from model.validate import bands_text, validate

from .progress import log
from .scenario import NODE_RAMP_CONNECT_RATE, NODE_RAMP_HOLD_S, NODE_RAMP_TARGETS, Scenario, SimulateSpec, SweepSpec

CAPACITY_METRICS = (
    "p95_ms",
    "p99_ms",
    "throughput_eps",
    "deliveries_per_s",
    "mean_cpu_pct",
    "peak_memory_mb",
    "error_rate_pct",
    "max_stable_connections",
)


def fit_window(run: Run) -> tuple[float, list[int]]:
    """Fit on the first half of the steps (at least one); the rest are held out for validation."""
    st = steps(run.events)
    k = max(1, len(st) // 2)
    return float(st["end"].iloc[k - 1]), list(range(k))


def truncated(run: Run, t_end: float) -> Run:
    return Run(run.path, run.manifest, run.events[run.events["t"] <= t_end].reset_index(drop=True))


def workload_at(wl: Workload, connections: int, duration_s: float, rate_per_conn: float) -> Workload:
    return Workload.model_validate(
        {
            **wl.model_dump(),
            "steps": [{"connections": connections, "hold_s": duration_s}],
            "events_per_second": rate_per_conn * connections,
            "users_per_company": None,
            "companies": companies_needed(connections, at_least=wl.companies),
        }
    )


def capacity_rows(
    cal: Calibration, wl: Workload, sc: Scenario, sim: SimulateSpec, runs_root: Path, label: str
) -> pd.DataFrame:
    """Simulated benchmark rows at each of the scenario's connection counts, mean and CI half-width."""
    rate = sim.events_per_connection if sim.events_per_connection is not None else wl.base_rate
    rows = []
    for n in sim.connections:
        w = workload_at(wl, n, sim.duration_s, rate)
        dirs = replicate(
            cal,
            w,
            runs_root,
            sim.replications,
            sim.seed,
            nodes=sim.nodes,
            name=f"{sc.name}-{label}-{n}",
            extra={"label": f"{label}@{n}", "slo": sc.slo.model_dump()},
        )
        reps: list[Mapping[str, Any]] = [benchmark_row(r.events, r.manifest, sc.slo) for r in map(read_run, dirs)]
        row = {
            "label": label,
            "connections": n,
            "events_per_connection": rate,
            "nodes": sim.nodes,
            "replications": len(reps),
            "run_ids": [d.name for d in dirs],
        }
        for m in CAPACITY_METRICS:
            mean, half = confidence([r[m] for r in reps])
            row[m], row[m + "_ci"] = mean, half
        rows.append(row)
        log(
            f"  simulated {label} at {n} connections: p95 {row['p95_ms']:.1f} +- {row['p95_ms_ci']:.1f} ms, "
            f"cpu {row['mean_cpu_pct']:.0f} %"
        )
    return pd.DataFrame(rows)


def node_capacity(
    cal: Calibration, wl: Workload, sc: Scenario, sim: SimulateSpec, runs_root: Path, label: str, rate: float
) -> tuple[int, list[int]]:
    """Connections one node holds within the SLO, from simulated step ramps (the measured ramp's rule).

    One ramp per replication; the answer is the least of them (what held in every replication), since
    one short ramp can pass a step whose p95 sits near the SLO by luck. Returns it and every ramp's.
    """
    top = 2 * max(sim.connections)
    targets = [n for n in NODE_RAMP_TARGETS if n <= max(top, 100)]
    ramp = Workload.model_validate(
        {
            **wl.model_dump(),
            "steps": [{"connections": n, "hold_s": NODE_RAMP_HOLD_S} for n in targets],
            "events_per_second": rate * targets[-1],
            "users_per_company": None,
            "companies": companies_needed(targets[-1], at_least=wl.companies),
            "connect_rate": NODE_RAMP_CONNECT_RATE,
        }
    )
    cal = cal.model_copy(update={"conn_limits": False})
    dirs = replicate(
        cal,
        ramp,
        runs_root,
        sim.replications,
        sim.seed,
        name=f"{sc.name}-{label}-ramp",
        extra={"label": f"{label}-ramp"},
    )
    held = [int(benchmark_row(r.events, r.manifest, sc.slo)["max_stable_connections"]) for r in map(read_run, dirs)]
    return min(held), held


Models = dict[str, tuple[Calibration, Workload]]  # label -> calibration and the load it was measured under


def calibrate_measured(
    sc: Scenario, sim: SimulateSpec, measured: list[Path], runs_root: Path, out_dir: Path, record: dict
) -> Models:
    """'compare': per measured run, fit on its first half and validate on the held-out steps, then fit
    on all of it for extrapolation; writes validation.csv and the calibration files."""
    models: Models = {}
    validations = []
    for run_dir in measured:
        run = read_run(run_dir)
        label = run.manifest.label or run.run_id
        t_end, fit_steps = fit_window(run)
        log(f"calibrating {label} on steps {fit_steps} of {run.run_id} ...")
        try:
            held_cal = calibrate([truncated(run, t_end)])
        except ValueError as exc:
            log(f"  no held-out validation for {label}: {exc}")
            record.setdefault("not_validated", {})[label] = str(exc)
        else:
            v = validate(held_cal, run, runs_root, sc.slo, replications=min(3, sim.replications), seed=sim.seed)
            v.insert(0, "label", label)
            v["held_out"] = ~v["step"].isin(fit_steps)
            validations.append(v)
            record["simulated"] += v.attrs.get("simulated_runs", [])
        try:
            cal = calibrate([run])  # all steps, for extrapolation
        except ValueError as exc:
            log(f"  cannot calibrate {label}: {exc}; no simulation for it")
            record.setdefault("not_calibrated", {})[label] = str(exc)
            continue
        path = cal.save(out_dir / f"calibration-{label}.json")
        record["calibrations"][label] = str(path)
        models[label] = (cal, Workload.from_manifest(run.manifest))
        st = step_table(run.events, sc.slo)
        try:
            record.setdefault("usl", {})[label] = fit_usl(st["target"].to_numpy(), st["throughput_eps"].to_numpy())
        except (ValueError, RuntimeError) as exc:
            record.setdefault("usl", {})[label] = {"error": str(exc)}
    if validations:
        pd.concat(validations, ignore_index=True).to_csv(out_dir / "validation.csv", index=False)
    return models


def given_model(sc: Scenario, sim: SimulateSpec, record: dict) -> tuple[str, Calibration, Workload]:
    """'simulate' and 'sweep': the scenario's calibration file, driven with its workload."""
    if sim.calibration is None or sc.workload is None:
        raise ValueError(f"kind '{sc.kind}' needs simulate.calibration and workload")  # the schema checks both
    cal = Calibration.load(sim.calibration)
    label = cal.profile or "model"
    record["calibrations"][label] = sim.calibration
    return label, cal, Workload.model_validate(sc.workload.model_dump())


def simulate_capacity(
    sc: Scenario, sim: SimulateSpec, models: Models, runs_root: Path, out_dir: Path, record: dict
) -> None:
    """'compare' and 'simulate': each model at the scenario's connection counts, and one node's capacity."""
    tables, capacity = [], {}
    for label, (cal, wl) in models.items():
        log(f"simulating {label} at {sim.connections} connections ...")
        t = capacity_rows(cal, wl, sc, sim, runs_root, label)
        tables.append(t)
        record["simulated"] += [r for ids in t["run_ids"] for r in ids]
        rate = float(t["events_per_connection"].iloc[0])
        cap, per_ramp = node_capacity(cal, wl, sc, sim, runs_root, label, rate)
        capacity[label] = {
            "connections_per_node": cap,
            "connections_per_node_each_replication": per_ramp,
            "events_per_connection": rate,
            "nodes_needed_n_plus_1": {str(n): (math.ceil(n / cap) + 1) if cap else None for n in sim.connections},
        }
        log(f"  {label}: one node holds {cap} connections within the SLO (least of the ramps {per_ramp})")
    if tables:
        pd.concat(tables, ignore_index=True).to_csv(out_dir / "capacity.csv", index=False)
    record["capacity"] = capacity


def simulate_scenario(sc: Scenario, measured: list[Path], runs_root: Path, out_dir: Path) -> dict:
    """The model's part of a 'compare', 'simulate' or 'sweep' scenario; writes model.json and returns it."""
    if sc.simulate is None:
        raise ValueError(f"kind '{sc.kind}' needs 'simulate'")  # the schema checks it
    sim = sc.simulate
    record: dict = {"simulated": [], "calibrations": {}, "bands": bands_text()}
    if sc.kind == "compare":
        simulate_capacity(
            sc, sim, calibrate_measured(sc, sim, measured, runs_root, out_dir, record), runs_root, out_dir, record
        )
    elif sc.kind == "simulate":
        label, cal, wl = given_model(sc, sim, record)
        simulate_capacity(sc, sim, {label: (cal, wl)}, runs_root, out_dir, record)
    elif sc.kind == "sweep" and sc.sweep is not None:
        _label, cal, wl = given_model(sc, sim, record)
        record.update(run_sweep(sc, sim, sc.sweep, cal, wl, runs_root, out_dir))
    (out_dir / "model.json").write_text(json.dumps(record, indent=2, default=str))
    return record


def run_sweep(
    sc: Scenario, sim: SimulateSpec, sweep: SweepSpec, cal: Calibration, wl: Workload, runs_root: Path, out_dir: Path
) -> dict:
    """Every combination of the grid (keys: ``SWEEP_KEYS``) with the scenario's one calibration;
    returns the rows and the fewest nodes meeting the SLO."""
    import itertools

    grid = sweep.grid
    keys = list(grid)
    rows = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        setting = dict(zip(keys, combo, strict=True))
        c, nodes = cal, int(setting.get("nodes", sim.nodes))
        if "flush_interval_ms" in setting:
            c = c.model_copy(update={"flush_interval_s": setting["flush_interval_ms"] / 1000.0})
        if "batching" in setting:
            c = c.model_copy(update={"batching": bool(setting["batching"])})
        n = int(setting.get("connections", sweep.target_connections))
        rate = float(setting.get("events_per_connection", wl.base_rate))
        w = workload_at(wl, n, sim.duration_s, rate)
        c = c.model_copy(update={"conn_limits": False})
        dirs = replicate(
            c,
            w,
            runs_root,
            sim.replications,
            sim.seed,
            nodes=nodes,
            name=f"{sc.name}-sweep",
            extra={"label": json.dumps(setting)},
        )
        reps: list[Mapping[str, Any]] = [benchmark_row(r.events, r.manifest, sc.slo) for r in map(read_run, dirs)]
        row = {**setting, "connections": n, "nodes": nodes}
        for m in ("p95_ms", "error_rate_pct", "mean_cpu_pct", "throughput_eps"):
            row[m], row[m + "_ci"] = confidence([r[m] for r in reps])
        row["meets_slo"] = bool(row["p95_ms"] <= sc.slo.p95_ms and row["error_rate_pct"] <= sc.slo.error_rate_pct)
        rows.append(row)
        log(
            f"  sweep {setting}: p95 {row['p95_ms']:.1f} ms, cpu {row['mean_cpu_pct']:.0f} % "
            f"({'meets' if row['meets_slo'] else 'misses'} the SLO)"
        )
    df = pd.DataFrame(rows)
    df.to_csv(out_dir / "sweep.csv", index=False)
    ok = df[df["meets_slo"]]
    fewest = int(ok["nodes"].min()) if len(ok) and "nodes" in ok else None
    return {
        "sweep": {"rows": len(df), "fewest_nodes_meeting_slo": fewest, "with_n_plus_1": fewest + 1 if fewest else None}
    }
