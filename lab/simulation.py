"""The model's side of a scenario: calibrate, validate on held-out steps, simulate capacity, sweep."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from eventlog import SLO, Run, benchmark_row, read_run, step_table, steps
from model import Calibration, Workload, confidence, replicate
from model.calibrate import calibrate
from model.usl import fit_usl
from model.validate import bands_text, validate

from .runner import log
from .scenario import Scenario

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


def slo_of(sc: Scenario) -> SLO:
    return SLO(p95_s=sc.slo.p95_ms / 1000.0, error_rate=sc.slo.error_rate_pct / 100.0)


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
            "users": None,
            "companies": max(wl.companies, math.ceil(connections / 500)),
        }
    )


def capacity_rows(cal: Calibration, wl: Workload, sc: Scenario, runs_root: Path, label: str) -> pd.DataFrame:
    """Simulated benchmark rows at each of the scenario's connection counts, mean and CI half-width."""
    spec = sc.simulate
    rate = spec.events_per_connection if spec.events_per_connection is not None else wl.base_rate
    rows = []
    for n in spec.connections:
        w = workload_at(wl, n, spec.duration_s, rate)
        dirs = replicate(
            cal,
            w,
            runs_root,
            spec.replications,
            spec.seed,
            nodes=spec.nodes,
            name=f"{sc.name}-{label}-{n}",
            extra={"label": f"{label}@{n}", "slo": sc.slo.model_dump()},
        )
        reps = [benchmark_row(r.events, r.manifest, slo_of(sc)) for r in map(read_run, dirs)]
        row = {
            "label": label,
            "connections": n,
            "events_per_connection": rate,
            "nodes": spec.nodes,
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
    cal: Calibration, wl: Workload, sc: Scenario, runs_root: Path, label: str, rate: float
) -> tuple[int, list[int]]:
    """Connections one node holds within the SLO, from simulated step ramps (the measured ramp's rule).

    One ramp per replication; the answer is the least of them (what held in every replication), since
    one short ramp can pass a step whose p95 sits near the SLO by luck. Returns it and every ramp's.
    """
    top = 2 * max(sc.simulate.connections)
    targets = [
        n
        for n in (100, 200, 500, 1000, 1500, 2000, 3000, 4000, 6000, 8000, 10_000, 15_000, 20_000)
        if n <= max(top, 100)
    ]
    ramp = Workload.model_validate(
        {
            **wl.model_dump(),
            "steps": [{"connections": n, "hold_s": 20.0} for n in targets],
            "events_per_second": rate * targets[-1],
            "users": None,
            "companies": max(wl.companies, targets[-1] // 500),
            "connect_rate": 2000.0,
        }
    )
    cal = cal.model_copy(update={"conn_limits": False})
    dirs = replicate(
        cal,
        ramp,
        runs_root,
        sc.simulate.replications,
        sc.simulate.seed,
        name=f"{sc.name}-{label}-ramp",
        extra={"label": f"{label}-ramp"},
    )
    held = [int(benchmark_row(r.events, r.manifest, slo_of(sc))["max_stable_connections"]) for r in map(read_run, dirs)]
    return min(held), held


def simulate_scenario(sc: Scenario, measured: list[Path], runs_root: Path, out_dir: Path) -> dict:
    record: dict = {"simulated": [], "calibrations": {}, "bands": bands_text()}
    slo = slo_of(sc)
    cals: dict[str, tuple[Calibration, Workload]] = {}
    validations = []
    if sc.kind == "compare":
        for run_dir in measured:
            run = read_run(run_dir)
            label = run.manifest["label"]
            t_end, fit_steps = fit_window(run)
            log(f"calibrating {label} on steps {fit_steps} of {run.run_id} ...")
            try:
                held_cal = calibrate([truncated(run, t_end)])
            except ValueError as exc:
                log(f"  no held-out validation for {label}: {exc}")
                record.setdefault("not_validated", {})[label] = str(exc)
            else:
                v = validate(
                    held_cal, run, runs_root, slo, replications=min(3, sc.simulate.replications), seed=sc.simulate.seed
                )
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
            cals[label] = (cal, Workload.from_manifest(run.manifest))
            st = step_table(run.events, slo)
            try:
                record.setdefault("usl", {})[label] = fit_usl(st["target"].to_numpy(), st["throughput_eps"].to_numpy())
            except (ValueError, RuntimeError) as exc:
                record.setdefault("usl", {})[label] = {"error": str(exc)}
        if validations:
            pd.concat(validations, ignore_index=True).to_csv(out_dir / "validation.csv", index=False)
    else:
        cal = Calibration.load(sc.simulate.calibration)
        wl = Workload(**sc.workload.model_dump(exclude={"workers"}))
        cals[cal.profile or "model"] = (cal, wl)
        record["calibrations"][cal.profile or "model"] = sc.simulate.calibration
    if sc.kind in ("compare", "simulate"):
        tables, capacity = [], {}
        for label, (cal, wl) in cals.items():
            log(f"simulating {label} at {sc.simulate.connections} connections ...")
            t = capacity_rows(cal, wl, sc, runs_root, label)
            tables.append(t)
            record["simulated"] += [r for ids in t["run_ids"] for r in ids]
            rate = float(t["events_per_connection"].iloc[0])
            cap, per_ramp = node_capacity(cal, wl, sc, runs_root, label, rate)
            capacity[label] = {
                "connections_per_node": cap,
                "connections_per_node_each_replication": per_ramp,
                "events_per_connection": rate,
                "nodes_needed_n_plus_1": {
                    str(n): (math.ceil(n / cap) + 1) if cap else None for n in sc.simulate.connections
                },
            }
            log(f"  {label}: one node holds {cap} connections within the SLO (least of the ramps {per_ramp})")
        pd.concat(tables, ignore_index=True).to_csv(out_dir / "capacity.csv", index=False)
        record["capacity"] = capacity
    if sc.kind == "sweep":
        record.update(run_sweep(sc, cals, runs_root, out_dir))
    (out_dir / "model.json").write_text(json.dumps(record, indent=2, default=str))
    return record


def run_sweep(sc: Scenario, cals: dict, runs_root: Path, out_dir: Path) -> dict:
    """Every combination of the grid; returns the rows and the fewest nodes meeting the SLO."""
    import itertools

    _label, (cal, wl) = next(iter(cals.items()))
    grid = sc.sweep.grid
    keys = list(grid)
    rows = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        setting = dict(zip(keys, combo, strict=True))
        c, nodes = cal, int(setting.get("nodes", sc.simulate.nodes))
        if "flush_interval_ms" in setting:
            c = c.model_copy(update={"flush_interval_s": setting["flush_interval_ms"] / 1000.0})
        if "batching" in setting:
            c = c.model_copy(update={"batching": bool(setting["batching"])})
        n = int(setting.get("connections", sc.sweep.target_connections))
        rate = float(setting.get("events_per_connection", wl.base_rate))
        w = workload_at(wl, n, sc.simulate.duration_s, rate)
        c = c.model_copy(update={"conn_limits": False})
        dirs = replicate(
            c,
            w,
            runs_root,
            sc.simulate.replications,
            sc.simulate.seed,
            nodes=nodes,
            name=f"{sc.name}-sweep",
            extra={"label": json.dumps(setting)},
        )
        reps = [benchmark_row(r.events, r.manifest, slo_of(sc)) for r in map(read_run, dirs)]
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
