"""The what-if sweep gives the capacity answer's node count: a node never counts for more than its limit."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pandas as pd

from eventlog.capacity import NodeCapacity
from lab.runner import run_scenario
from lab.scenario import parse_scenario
from model.parameters import Calibration

REF = Path(__file__).parent.parent / "notebooks" / "data" / "reference" / "calibration-optimized.json"

SWEEP = f"""\
name: tiny-what-if
question: how many optimized nodes carry 5000 connections at 0.2 events/s each within the SLO?
kind: sweep
slo: {{p95_ms: 120, error_rate_pct: 0.1}}
workload:
  companies: 10
  steps: [{{connections: 5000, hold_s: 3}}]
  events_per_second: 1000
  mix: {{echo: 0.99, chat: 0.01}}
  connect_rate: 5000
simulate: {{calibration: {REF}, duration_s: 3, replications: 1, seed: 1}}
sweep:
  grid: {{nodes: [2, 3, 4]}}
  target_connections: 5000
report: false
"""


def test_sweep_skips_node_counts_over_the_limit_and_agrees_with_the_capacity_answer(tmp_path):
    cal = Calibration.load(REF)
    assert cal.conn_limits and cal.max_connections == 2000  # the reference optimized node refuses the 2001st
    out = run_scenario(parse_scenario(SWEEP, "<tiny>"), tmp_path / "runs", tmp_path / "reports", quiet=True)
    rows = pd.read_csv(out / "sweep.csv").set_index("nodes")
    # 5000 connections on 2 nodes is 2500 each: the model is not asked, the row does not meet the SLO
    assert bool(rows.loc[2, "over_node_limit"]) and not bool(rows.loc[2, "meets_slo"])
    assert pd.isna(rows.loc[2, "p95_ms"])
    assert not rows.loc[3, "over_node_limit"] and rows.loc[3, "meets_slo"], rows
    sweep = json.loads((out / "model.json").read_text())["sweep"]
    assert sweep["node_limit"] == 2000
    record = json.loads((out / "runs.json").read_text())
    assert record["question"].startswith("how many optimized nodes")
    # every simulated point names its runs, and the record lists them
    ran = rows[~rows["over_node_limit"].astype(bool)]
    # a point meets the SLO when every replication does (the capacity answer's rule), not on average
    assert (ran["meets_slo"].astype(bool) == (ran["replications_meeting_slo"] == 1)).all()
    ids = [i for cell in ran["run_ids"] for i in ast.literal_eval(cell)]  # pandas wrote the list as text
    assert ids and sorted(ids) == sorted(record["simulated"])
    assert all((tmp_path / "runs" / i / "manifest.json").exists() for i in ids)
    # the same answer eventlog.capacity gives a node limited by its 2000 connections
    assert sweep["with_n_plus_1"] == NodeCapacity((10_000,), node_limit=2000).nodes(5000) == 4


def test_raising_the_limit_is_a_changed_setting(tmp_path):
    text = SWEEP.replace("grid: {nodes: [2, 3, 4]}", "grid: {nodes: [2], max_connections: [3000]}")
    out = run_scenario(parse_scenario(text, "<tiny>"), tmp_path / "runs", tmp_path / "reports", quiet=True)
    rows = pd.read_csv(out / "sweep.csv")
    assert not rows["over_node_limit"].iloc[0]  # 2500 per node is within the raised limit
    assert json.loads((out / "model.json").read_text())["sweep"]["changed_settings"] == ["max_connections"]


def test_scenario_log_mode_reaches_every_simulation(tmp_path):
    text = SWEEP.replace("replications: 1, seed: 1}", "replications: 1, seed: 1, log: histograms}")
    text = text.replace("grid: {nodes: [2, 3, 4]}", "grid: {nodes: [3]}")
    out = run_scenario(parse_scenario(text, "<tiny>"), tmp_path / "runs", tmp_path / "reports", quiet=True)
    (run_id,) = json.loads((out / "runs.json").read_text())["simulated"]
    manifest = json.loads((tmp_path / "runs" / run_id / "manifest.json").read_text())
    assert manifest["log"] == "histograms"


def test_the_sweep_report_is_written_for_a_grid_of_nodes_alone_and_shows_no_run_ids(tmp_path):
    """A what-if over nodes only (the commonest question) used to fail writing its PDF: the chart took
    the rows' run ids for a grid setting ('could not convert string to float')."""
    from pypdf import PdfReader

    text = SWEEP.replace("grid: {nodes: [2, 3, 4]}", "grid: {nodes: [3, 4]}").replace("report: false\n", "")
    out = run_scenario(parse_scenario(text, "<tiny>"), tmp_path / "runs", tmp_path / "reports", quiet=True)
    pages = [" ".join(p.extract_text().split()) for p in PdfReader(out / "report.pdf").pages]
    (sweep,) = [p for p in pages if "Sweep grid" in p]
    assert "nodes connections p95 ms" in sweep and "run_ids" not in sweep and "sweep-" not in sweep


def test_the_capacity_answer_and_the_what_if_agree_on_the_same_calibration(tmp_path):
    """Issue 9: page 1's nodes-needed (the deployment search of a 'simulate' scenario) and the what-if
    sweep ask the same question of the same calibration, so they give the same node count."""
    sim = (
        SWEEP.replace("kind: sweep", "kind: simulate")
        .replace("replications: 1, seed: 1}", "replications: 1, seed: 1, connections: [5000]}")
        .split("sweep:\n")[0]
        + "report: false\n"
    )
    out = run_scenario(parse_scenario(sim, "<tiny>"), tmp_path / "runs", tmp_path / "reports", quiet=True)
    (answer,) = json.loads((out / "model.json").read_text())["capacity"].values()
    assert answer["nodes"]["5000"]["basis"] == "deployment"
    out = run_scenario(parse_scenario(SWEEP, "<tiny>"), tmp_path / "runs", tmp_path / "reports", quiet=True)
    sweep = json.loads((out / "model.json").read_text())["sweep"]
    assert answer["nodes"]["5000"]["nodes"] == sweep["with_n_plus_1"] == 4
