"""The model's side of a scenario: calibrate, validate on held-out steps, simulate capacity, sweep."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from eventlog import Run, companies_needed, read_run, step_table, steps
from eventlog.capacity import (
    LOAD_SENSITIVITY,
    SPARE_NODES,
    NodeCapacity,
    NodesAnswer,
    NodeSearch,
    capacity_answer,
    deployment_answer,
    node_capacity_text,
)
from model import Calibration, Point, Workload, confidence, replicate_points
from model.calibrate import calibrate
from model.replay import replay_and_compare
from model.usl import fit_usl
from model.validate import bands_text, validate

from .passes import adapted, cross_references, pass_groups
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
    st = steps(run)
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


def simulate_plan(
    cal: Calibration,
    wl: Workload,
    sc: Scenario,
    sim: SimulateSpec,
    runs_root: Path,
    label: str,
    plan: list[tuple[int, int]],
) -> list[tuple[dict[str, Any], list[bool]]]:
    """Each ``(connections, nodes)`` of ``plan`` simulated ``sim.replications`` times, all at once (a
    cluster runs them side by side): its benchmark row (mean and CI half-width, CPU and memory also per
    node) and whether each replication met the SLO."""
    rate = sim.events_per_connection if sim.events_per_connection is not None else wl.base_rate
    points = [
        Point(
            cal.model_copy(update={"conn_limits": False}) if nodes > 1 else cal,
            workload_at(wl, n, sim.duration_s, rate),
            nodes,
            f"{sc.name}-{label}-{n}",
            {"label": f"{label}@{n}", "slo": sc.slo.model_dump(), "log": sim.log},
        )
        for n, nodes in plan
    ]
    simulated = replicate_points(points, runs_root, sim.replications, sim.seed, slo=sc.slo)
    out = []
    for (n, nodes), (dirs, done) in zip(plan, simulated, strict=True):
        reps: list[Mapping[str, Any]] = list(done)
        row: dict[str, Any] = {
            "label": label,
            "connections": n,
            "events_per_connection": rate,
            "nodes": nodes,
            "replications": len(reps),
            "run_ids": [d.name for d in dirs],
        }
        for m in CAPACITY_METRICS:
            mean, half = confidence([r[m] for r in reps])
            row[m], row[m + "_ci"] = mean, half
        for m in ("mean_cpu_pct", "peak_memory_mb"):  # the projections sum over nodes
            row[m + "_per_node"], row[m + "_per_node_ci"] = row[m] / nodes, row[m + "_ci"] / nodes
        each = [meets_slo(r, sc) for r in reps]
        row["meets_slo"] = all(each)  # in every replication: the deployment search's rule
        row["replications_meeting_slo"] = sum(each)
        out.append((row, each))
    return out


def meets_slo(row: Mapping[str, Any], sc: Scenario) -> bool:
    return bool(row["p95_ms"] <= sc.slo.p95_ms and row["error_rate_pct"] <= sc.slo.error_rate_pct)


def capacity_rows(
    cal: Calibration,
    wl: Workload,
    sc: Scenario,
    sim: SimulateSpec,
    runs_root: Path,
    label: str,
    nodes_for: Mapping[int, int] | None = None,
) -> pd.DataFrame:
    """Simulated benchmark rows at each of the scenario's connection counts, mean and CI half-width.

    Each count runs on ``nodes_for[count]`` nodes, else on the scenario's ``simulate.nodes``; CPU and
    memory are also given per node.
    """
    plan = [(n, (nodes_for or {}).get(n) or sim.nodes) for n in sim.connections]
    rows = [row for row, _ in simulate_plan(cal, wl, sc, sim, runs_root, label, plan)]
    for row in rows:
        _log_row(label, row)
    return pd.DataFrame(rows)


def _log_row(label: str, row: Mapping[str, Any]) -> None:
    log(
        f"  simulated {label} at {row['connections']} connections on {row['nodes']} node(s): p95 "
        f"{row['p95_ms']:.1f} +- {row['p95_ms_ci']:.1f} ms, cpu {row['mean_cpu_pct_per_node']:.0f} % per node"
    )


def deployment_answers(
    cal: Calibration,
    wl: Workload,
    sc: Scenario,
    sim: SimulateSpec,
    runs_root: Path,
    label: str,
    cap: NodeCapacity,
) -> tuple[dict[int, NodesAnswer], pd.DataFrame, dict[str, Any]]:
    """For each of the scenario's connection counts, and at -/+20 % of it, the fewest nodes on which
    every replication of the simulated deployment meets the SLO (eventlog.capacity.NodeSearch, started
    from the ramps' estimate), searched side by side, one round of simulations at a time. Returns the
    answers (with the N+1 spare), each count's row on its answer less the spare (the load with one
    node down; on the most nodes tried when there is no answer), and what was tried: per connection
    count, each node count's per-replication verdicts and the runs behind them."""
    limit = node_limit(cal)
    searches: dict[tuple[int, float], NodeSearch] = {}
    for n in sim.connections:
        for f in (1.0, 1 - LOAD_SENSITIVITY, 1 + LOAD_SENSITIVITY):
            c = max(1, round(n * f))
            least = math.ceil(c / limit) if limit else 1
            searches[(n, f)] = NodeSearch(c, start=cap.nodes(c, spare=0) or least, least=least)
    results: dict[tuple[int, int], tuple[dict[str, Any], list[bool]]] = {}
    while True:
        wanted = {(s.connections, k) for s in searches.values() if (k := s.next()) is not None}
        plan = sorted(p for p in wanted if p not in results)
        if not wanted:
            break
        if plan:
            log(f"  {label}: simulating the deployment at " + ", ".join(f"{c} on {k}" for c, k in plan) + " ...")
            results.update(zip(plan, simulate_plan(cal, wl, sc, sim, runs_root, label, plan), strict=True))
        for s in searches.values():
            while (k := s.next()) is not None and (s.connections, k) in results:
                s.add(k, results[(s.connections, k)][1])
    answers, rows = {}, []
    for n in sim.connections:
        target = searches[(n, 1.0)]
        answers[n] = deployment_answer(
            target,
            searches[(n, 1 - LOAD_SENSITIVITY)],
            searches[(n, 1 + LOAD_SENSITIVITY)],
            sim.replications,
        )
        on = target.fewest() or max(target.tried)
        row = results[(target.connections, on)][0]
        _log_row(label, row)
        rows.append(row)
    tried: dict[str, Any] = {"meets_slo": {}, "runs": [r for row, _ in results.values() for r in row["run_ids"]]}
    for (c, k), (_row, meets) in sorted(results.items()):
        tried["meets_slo"].setdefault(str(c), {})[str(k)] = meets
    return answers, pd.DataFrame(rows), tried


def node_capacity(
    cal: Calibration, wl: Workload, sc: Scenario, sim: SimulateSpec, runs_root: Path, label: str, rate: float
) -> tuple[NodeCapacity, list[str]]:
    """Connections one node holds within the SLO, from simulated step ramps (the measured ramp's rule),
    capped by the node's connection limit when the calibrated server enforces one.

    One ramp per replication, simulated without the limit so the SLO's own bound shows; the answer
    (eventlog.capacity) believes the least of them, since one short ramp can pass a step whose p95 sits
    near the SLO by luck. Returns it and the ramp runs' ids.
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
    ((dirs, rows),) = replicate_points(
        [
            Point(
                cal.model_copy(update={"conn_limits": False}),
                ramp,
                1,
                f"{sc.name}-{label}-ramp",
                {"label": f"{label}-ramp", "log": sim.log},
            )
        ],
        runs_root,
        sim.replications,
        sim.seed,
        slo=sc.slo,
    )
    cap = NodeCapacity(
        tuple(int(r["max_stable_connections"]) for r in rows),
        node_limit=node_limit(cal),
        lower_bound=all(bool(r["max_stable_is_lower_bound"]) for r in rows),
    )
    return cap, [d.name for d in dirs]


def node_limit(cal: Calibration) -> int | None:
    """The calibrated node's SOCKET_MAX_CONNECTIONS, or None when its server enforces no limit."""
    return cal.max_connections if cal.conn_limits else None


Models = dict[str, tuple[Calibration, Workload]]  # label -> calibration and the load it was measured under


def calibrate_measured(
    sc: Scenario, sim: SimulateSpec, measured: list[Path], runs_root: Path, out_dir: Path, record: dict
) -> Models:
    """'compare': per configuration (a run, or the passes ``NAME.K`` of one: ``lab.passes``), fit on
    the first half of the steps and validate every step against the measured mean and spread, then
    fit on all of it for extrapolation; a configuration that differs from another only in what the
    model represents is also predicted from the other's calibration. Writes validation.csv and the
    calibration files."""
    models: Models = {}
    validations = []
    replays: list[tuple[pd.DataFrame, pd.DataFrame]] = []
    groups = pass_groups([read_run(p) for p in measured])
    reps = min(3, sim.replications)
    for label, runs in groups.items():
        t_end, fit_steps = fit_window(runs[0])
        log(f"calibrating {label} on steps {fit_steps} of {', '.join(r.run_id for r in runs)} ...")
        try:
            held_cal = calibrate([truncated(run, t_end) for run in runs])
        except ValueError as exc:
            log(f"  no held-out validation for {label}: {exc}")
            record.setdefault("not_validated", {})[label] = str(exc)
        else:
            v = validate(held_cal, runs, runs_root, sc.slo, replications=reps, seed=sim.seed)
            v.insert(0, "label", label)
            v["held_out"] = ~v["step"].isin(fit_steps)
            validations.append(v)
            record["simulated"] += v.attrs.get("simulated_runs", [])
        try:
            cal = calibrate(runs)  # all steps, for extrapolation
        except ValueError as exc:
            log(f"  cannot calibrate {label}: {exc}; no simulation for it")
            record.setdefault("not_calibrated", {})[label] = str(exc)
            continue
        path = cal.save(out_dir / f"calibration-{label}.json")
        record["calibrations"][label] = str(path)
        if warnings := cal.fit_warnings():  # an ill-conditioned or loose fit is said where its answer is used
            record.setdefault("fit_warnings", {})[label] = warnings
            for w in warnings:
                log(f"  fit warning ({label}): {w}")
        models[label] = (cal, Workload.from_manifest(runs[0].manifest))
        st = pd.concat([step_table(run, sc.slo) for run in runs], ignore_index=True)
        try:
            record.setdefault("usl", {})[label] = fit_usl(st["target"].to_numpy(), st["throughput_eps"].to_numpy())
        except (ValueError, RuntimeError) as exc:
            record.setdefault("usl", {})[label] = {"error": str(exc)}
    for label, (cal, _wl) in models.items():  # the model on the measured arrivals, no generation noise
        first = groups[label][0]
        log(f"replaying {label}'s measured arrivals ({first.run_id}) ...")
        try:
            run_dir, per_s, per_step = replay_and_compare(cal, first.path, runs_root, sim.seed)
        except ValueError as exc:  # a run without a trace to replay
            log(f"  no replay of {label}: {exc}")
            continue
        per_s.insert(0, "label", label)
        per_step.insert(0, "label", label)
        replays.append((per_s, per_step))
        record["simulated"].append(run_dir.name)
        record.setdefault("replays", {})[label] = {"measured": first.run_id, "replayed": run_dir.name}
    if replays:
        pd.concat([a for a, _ in replays], ignore_index=True).to_csv(out_dir / "replay.csv", index=False)
        pd.concat([b for _, b in replays], ignore_index=True).to_csv(out_dir / "replay-steps.csv", index=False)
    for label, ref in cross_references(groups).items():
        if ref not in models:
            continue
        name = f"{label} from {ref}"
        log(f"predicting {label} from the calibration of {ref} (never fitted on {label}) ...")
        v = validate(adapted(models[ref][0], groups[label][0]), groups[label], runs_root, sc.slo, reps, sim.seed)
        v.insert(0, "label", name)
        v["held_out"] = True
        validations.append(v)
        record["simulated"] += v.attrs.get("simulated_runs", [])
        record.setdefault("cross_configuration", {})[name] = {"configuration": label, "calibration": ref}
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
    """'compare' and 'simulate': one node's capacity from replicated ramps, then the nodes each of the
    scenario's connection counts needs, checked on the simulated deployment (eventlog.capacity), and
    each count's row on those nodes less the spare."""
    tables, capacity = [], {}
    for label, (cal, wl) in models.items():
        rate = sim.events_per_connection if sim.events_per_connection is not None else wl.base_rate
        log(f"simulating {label}: one node's capacity from {sim.replications} ramps ...")
        cap, ramp_runs = node_capacity(cal, wl, sc, sim, runs_root, label, rate)
        log(f"  {label}: {node_capacity_text(cap)}")
        answer = capacity_answer(cap, sim.connections)
        if "nodes" in sim.model_fields_set:  # the scenario pins the node count: simulate on it, no search
            log(f"simulating {label} at {sim.connections} connections on {sim.nodes} node(s) ...")
            t = capacity_rows(cal, wl, sc, sim, runs_root, label)
            runs = [r for ids in t["run_ids"] for r in ids]
        else:  # the ramps' estimate checked on the simulated deployment (the what-if's question)
            log(f"simulating {label}: the fewest nodes that carry {sim.connections} connections ...")
            found, t, tried = deployment_answers(cal, wl, sc, sim, runs_root, label, cap)
            answer["nodes"] = {str(n): a.to_record() for n, a in found.items()}
            answer["nodes_needed_n_plus_1"] = {str(n): a.nodes for n, a in found.items()}
            answer["deployments_tried"] = tried["meets_slo"]
            runs = tried["runs"]
        tables.append(t)
        record["simulated"] += ramp_runs + runs
        capacity[label] = {**answer, "events_per_connection": rate, "ramp_runs": ramp_runs}
        for n, a in answer["nodes"].items():
            log(f"  {label} at {n} connections: {a['text']}")
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
    rows, pending, points = [], [], []
    for combo in itertools.product(*(grid[k] for k in keys)):
        setting = dict(zip(keys, combo, strict=True))
        c, nodes = cal, int(setting.get("nodes", sim.nodes))
        if "flush_interval_ms" in setting:
            c = c.model_copy(update={"flush_interval_s": setting["flush_interval_ms"] / 1000.0})
        if "batching" in setting:
            c = c.model_copy(update={"batching": bool(setting["batching"])})
        if "max_connections" in setting:  # a changed setting: the what-if raises (or lowers) the node's limit
            c = c.model_copy(update={"max_connections": int(setting["max_connections"]), "conn_limits": True})
        n = int(setting.get("connections", sweep.target_connections))
        rate = float(setting.get("events_per_connection", wl.base_rate))
        row: dict[str, Any] = {**setting, "connections": n, "nodes": nodes}
        limit = node_limit(c)
        if limit is not None and n > limit * nodes:
            # the model would refuse them too; a node never counts for more than its SOCKET_MAX_CONNECTIONS
            row.update({m: float("nan") for m in ("p95_ms", "error_rate_pct", "mean_cpu_pct", "throughput_eps")})
            row.update(meets_slo=False, over_node_limit=True)
            rows.append(row)
            log(f"  sweep {setting_text(setting)}: {n} connections exceed {nodes} x the node limit {limit}: not run")
            continue
        w = workload_at(wl, n, sim.duration_s, rate)
        points.append(
            Point(
                c.model_copy(update={"conn_limits": False}),  # the limit is checked above, per node
                w,
                nodes,
                f"{sc.name}-sweep",
                {"label": setting_text(setting), "log": sim.log},
            )
        )
        pending.append((row, setting, nodes))
        rows.append(row)
    # every point's replications at once (a cluster runs them side by side); each returns its row
    simulated = replicate_points(points, runs_root, sim.replications, sim.seed, slo=sc.slo)
    for (row, setting, nodes), (dirs, done) in zip(pending, simulated, strict=True):
        reps: list[Mapping[str, Any]] = list(done)
        row["run_ids"] = [Path(d).name for d in dirs]  # the report names the runs behind each point
        for m in ("p95_ms", "error_rate_pct", "mean_cpu_pct", "throughput_eps"):
            row[m], row[m + "_ci"] = confidence([r[m] for r in reps])
        # the capacity answer's rule (eventlog.capacity.NodeSearch): every replication meets the SLO
        met = sum(meets_slo(r, sc) for r in reps)
        row["replications_meeting_slo"] = met
        row["meets_slo"] = met == len(reps)
        row["over_node_limit"] = False
        log(
            f"  sweep {setting_text(setting)}: p95 {row['p95_ms']:.1f} ms, cpu {row['mean_cpu_pct'] / nodes:.0f} % "
            f"per node ({'meets' if row['meets_slo'] else 'misses'} the SLO: met in {met} of {len(reps)} replications)"
        )
    df = pd.DataFrame(rows)
    df.to_csv(out_dir / "sweep.csv", index=False)
    ok = df[df["meets_slo"]]
    fewest = int(ok["nodes"].min()) if len(ok) and "nodes" in ok else None
    return {
        "sweep": {
            "rows": len(df),
            "fewest_nodes_meeting_slo": fewest,
            "with_n_plus_1": fewest + SPARE_NODES if fewest else None,
            "node_limit": node_limit(cal),
            "changed_settings": [k for k in keys if k in CHANGED_SETTINGS],
        },
        "simulated": [r for row in rows for r in row.get("run_ids", [])],
    }


CHANGED_SETTINGS = ("max_connections", "flush_interval_ms", "batching")  # differ from the calibrated server


def setting_text(setting: Mapping[str, Any]) -> str:
    """'nodes=4 flush_interval_ms=25' for a sweep's grid point (integers without '.0')."""
    return " ".join(f"{k}={float(v):g}" for k, v in setting.items())
