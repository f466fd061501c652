"""scenarios/validation.yaml: the design and its passes (issue 11)."""

from __future__ import annotations

import itertools
import json
from types import SimpleNamespace

import pandas as pd

from eventlog import SLO, read_run
from eventlog.manifest import ServerRecord
from lab.modelling import calibrate_measured
from lab.passes import adapted, cross_references, group_of, pass_groups
from lab.scenario import SimulateSpec, load_scenario
from model import Calibration, Workload, simulate
from tests.measured import SERVER_SETTINGS as SETTINGS


def test_the_validation_scenario_designs_its_steps_and_repeats_each_configuration():
    sc = load_scenario("scenarios/validation.yaml")
    assert sc.kind == "compare" and sc.workload is not None
    groups: dict[str, int] = {}
    for s in sc.servers:
        groups[group_of(s.label)] = groups.get(group_of(s.label), 0) + 1
    assert groups == {"baseline": 3, "optimized": 3, "no-batching": 3, "two-nodes": 3}
    assert [group_of(s.label) for s in sc.servers[:4]] == [group_of(s.label) for s in sc.servers[4:8]]  # interleaved
    steps = sc.workload.steps
    design = steps[: len(steps) // 2]
    assert any(s.events_per_second == 0 for s in design)  # an idle step
    assert any(s.chat_share for s in design) and any(s.churn_per_s for s in design)
    pairs = list(itertools.pairwise(design))
    assert any(a.connections != b.connections and a.events_per_second == b.events_per_second for a, b in pairs)
    assert any(a.connections == b.connections and a.events_per_second != b.events_per_second for a, b in pairs)
    assert [s.connections for s in steps] == sorted(s.connections for s in steps)  # never falls


def _stand_in(d, toggles=None):
    """A simulated run made to look measured: source and the server record a measured run has."""
    m = json.loads((d / "manifest.json").read_text())
    m["source"], m["server"] = "measured", ServerRecord(settings=SETTINGS, toggles=toggles or {}).model_dump()
    (d / "manifest.json").write_text(json.dumps(m))
    return d


def _compare(tmp_path, dirs):
    sim = SimulateSpec(connections=[100], replications=2)  # calibrate_measured reads the SLO and this only
    sc = SimpleNamespace(slo=SLO(), simulate=sim)
    record: dict = {"simulated": [], "calibrations": {}}
    models = calibrate_measured(sc, sim, dirs, tmp_path / "sim", tmp_path, record)
    return models, record, pd.read_csv(tmp_path / "validation.csv")


def test_passes_are_pooled_by_label_and_a_node_count_is_predicted_from_one_node(tmp_path):
    wl = Workload(
        steps=[
            {"connections": 20, "hold_s": 10, "events_per_second": 50},
            {"connections": 60, "hold_s": 10, "events_per_second": 50},
            {"connections": 60, "hold_s": 10, "events_per_second": 300},
            {"connections": 80, "hold_s": 10, "events_per_second": 200},
        ],
        events_per_second=200,
        mix={"echo": 1.0},
        connect_rate=1000,
    )
    one = [simulate(TRUTH, wl, tmp_path / "m", seed=k, extra={"label": f"cfg.{k}"}) for k in (1, 2, 3)]
    two = [simulate(TRUTH, wl, tmp_path / "m", seed=k, nodes=2, extra={"label": f"two.{k}"}) for k in (4, 5)]
    models, record, v = _compare(tmp_path, [_stand_in(d) for d in one + two])
    assert set(models) == {"cfg", "two"}  # one calibration per configuration, not per pass
    assert (tmp_path / "calibration-cfg.json").exists() and not (tmp_path / "calibration-cfg.1.json").exists()
    assert set(v["label"]) == {"cfg", "two", "two from cfg"}
    assert (v[v["label"] == "cfg"]["passes"] == 3).all() and (v[v["label"] == "two"]["passes"] == 2).all()
    assert v[v["label"] == "cfg"]["spread_pct"].notna().any()  # the passes' spread is stated
    cpu = v[(v["metric"] == "cpu_pct") & v["held_out"] & (v["label"] == "cfg")]
    assert len(cpu) == 2 and (cpu["verdict"] == "within band").all()
    # two nodes, never fitted on: every step held out, CPU from the one-node calibration within its band
    cross = v[v["label"] == "two from cfg"]
    assert cross["held_out"].all() and len(cross[cross["metric"] == "cpu_pct"]) == 4
    assert (cross[cross["metric"] == "cpu_pct"]["verdict"] == "within band").all()
    assert record["cross_configuration"] == {"two from cfg": {"configuration": "two", "calibration": "cfg"}}


def test_cross_references_take_only_what_the_model_represents(tmp_path):
    def run(label, toggles, nodes=1):
        changed = {k: v for k, v in toggles.items() if v != on[k]}  # the scenario's set: what it changed
        return SimpleNamespace(
            run_id=label,
            manifest=SimpleNamespace(
                label=label, profile="optimized", nodes=nodes, server=ServerRecord(toggles=toggles, set=changed)
            ),
        )

    on = {"batching": True, "fast_json": True}
    groups = pass_groups(
        [
            run("nb.1", {**on, "batching": False}),  # batching: modelled
            run("two.1", on, nodes=2),  # nodes: modelled
            run("nojson.1", {**on, "fast_json": False}),  # inside the fitted costs only: not predicted
            run("opt.1", on),  # listed last: the reference is found whatever the order
        ]
    )
    # the profile as shipped is the reference: nb is not one (its batching was set off), so opt is not
    # predicted from it
    assert cross_references(groups) == {"nb": "opt", "two": "opt"}
    cal = adapted(TRUTH.model_copy(update={"batching": True, "toggles": on}), groups["nb"][0])
    assert cal.batching is False and cal.toggles["fast_json"] is True


TRUTH = Calibration(cpu_per_event_s=0.0005, cpu_idle_s_per_s=0.02, cpu_per_connection_s_per_s=2e-5)


def test_an_idle_design_step_holds_the_slo(tmp_path):
    """A step that sends nothing has no latency to miss the SLO by: the idle step that opens a
    calibration design counted as failed, so every run of it 'held the SLO up to 0 connections'."""
    from eventlog import max_stable, step_table

    wl = Workload(
        steps=[
            {"connections": 20, "hold_s": 5, "events_per_second": 0},
            {"connections": 40, "hold_s": 5, "events_per_second": 50},
        ],
        events_per_second=50,
        mix={"echo": 1.0},
        connect_rate=1000,
    )
    table = step_table(read_run(simulate(TRUTH, wl, tmp_path, seed=1)), SLO())
    assert table["held"].tolist() == [True, True]
    assert max_stable(table) == (40, True)
