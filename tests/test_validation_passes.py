"""scenarios/validation.yaml: the design and its passes (issue 11)."""

from __future__ import annotations

import itertools
import json

from eventlog import SLO
from eventlog.manifest import ServerRecord
from lab.passes import group_of, validate_passes
from lab.scenario import load_scenario
from model import Calibration, Workload, simulate


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


def test_passes_are_pooled_by_label(tmp_path):
    truth = Calibration(cpu_per_event_s=0.0005, cpu_idle_s_per_s=0.02, cpu_per_connection_s_per_s=2e-5)
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
    dirs = [simulate(truth, wl, tmp_path / "m", seed=k, extra={"label": f"cfg.{k}"}) for k in (1, 2, 3)]
    for d in dirs:  # stand-ins for measured passes, with the server settings a measured run records
        m = json.loads((d / "manifest.json").read_text())
        m["source"], m["server"] = "measured", ServerRecord(settings=SETTINGS).model_dump()
        (d / "manifest.json").write_text(json.dumps(m))
    v = validate_passes(dirs, tmp_path / "sim", tmp_path, SLO(), replications=2)
    assert set(v["label"]) == {"cfg"} and (v["passes"] == 3).all()
    assert (tmp_path / "calibration-cfg.json").exists() and (tmp_path / "validation-passes.csv").exists()
    cpu = v[(v["metric"] == "cpu_pct") & v["held_out"]]
    assert len(cpu) == 2 and (cpu["verdict"] == "within band").all()


SETTINGS = {
    "flush_interval_ms": 100.0,
    "batch_size": 50,
    "heartbeat_s": 25.0,
    "ping_timeout_s": 20.0,
    "max_connections": 2000,
    "max_per_company": 500,
}
