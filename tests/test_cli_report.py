"""The caplab CLI against real servers with small settings, and the PDF report's numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pypdf import PdfReader

from eventlog import benchmark_row, read_run
from lab.results import load_outputs
from lab.servers import ServerProcess, create_users
from lab.tables import fmt

TINY = """\
name: tiny
question: does the whole flow run end to end on small settings?
kind: compare
servers:
  - {label: baseline, profile: baseline}
  - {label: optimized, profile: optimized}
workload:
  companies: 2
  steps:
    - {connections: 10, hold_s: 5}
    - {connections: 20, hold_s: 5}
    - {connections: 30, hold_s: 5}
    - {connections: 30, hold_s: 3, events_per_second: 90}
  events_per_second: 30
  mix: {echo: 0.9, chat: 0.1}
  connect_rate: 50
simulate:
  connections: [30, 300]
  duration_s: 5
  replications: 2
"""


def caplab(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lab.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def tiny_outputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny")
    (tmp / "tiny.yaml").write_text(TINY)
    res = caplab(
        "run", str(tmp / "tiny.yaml"), "--runs", str(tmp / "runs"), "--reports", str(tmp / "reports"), "--quiet"
    )
    assert res.returncode == 0, res.stderr[-3000:]
    pdf = Path(res.stdout.strip().splitlines()[-1])
    assert pdf.name == "report.pdf" and pdf.exists()
    return tmp / "reports" / "tiny", pdf


def test_run_writes_tables_calibrations_and_capacity(tiny_outputs):
    out, _ = tiny_outputs
    for name in (
        "rows.csv",
        "steps.csv",
        "baseline-vs-optimized.csv",
        "claims-baseline-vs-optimized.csv",
        "validation.csv",
        "capacity.csv",
        "calibration-baseline.json",
        "calibration-optimized.json",
        "model.json",
        "runs.json",
        "tables.md",
    ):
        assert (out / name).exists(), name
    model = json.loads((out / "model.json").read_text())
    assert set(model["capacity"]) == {"baseline", "optimized"}
    for cap in model["capacity"].values():
        # the node capacity is what held in every simulated ramp, not one lucky ramp
        each = cap["connections_per_node_each_replication"]
        assert len(each) == 2  # the tiny scenario's replications
        assert cap["connections_per_node"] == min(each)


def test_report_text_holds_the_values_computed_from_the_runs(tiny_outputs):
    out, pdf = tiny_outputs
    text = " ".join(page.extract_text() for page in PdfReader(pdf).pages)
    text = " ".join(text.split())
    summary = load_outputs(out)["summary"]
    for label, s in summary.items():
        row = s["row"]
        assert s["run_id"] in text
        assert f"{row['max_stable_connections']} connections" in text
        assert fmt(row["p95_ms"]) in text, (label, fmt(row["p95_ms"]))
        assert fmt(row["peak_memory_mb"]) in text
    assert "Seed guide claims" in text and "NOT HELD" in text


def test_load_command_with_seed_variables(tmp_path):
    users = create_users(tmp_path / "db", 1, 10)
    (tmp_path / "users.jsonl").write_text("\n".join(json.dumps(u) for u in users))
    with ServerProcess("optimized", tmp_path / "db", log_path=tmp_path / "s.log") as srv:
        res = caplab(
            "load",
            "--tokens",
            str(tmp_path / "users.jsonl"),
            "--out",
            str(tmp_path / "runs"),
            env={"MAX_CONNECTIONS": "10", "EVENTS_PER_SECOND": "20", "TEST_DURATION": "2000", "SOCKET_URL": srv.url},
        )
    assert res.returncode == 0, res.stderr
    run_dir = Path(res.stdout.strip().splitlines()[-1])
    run = read_run(run_dir)
    assert run.manifest["status"] == "complete" and run.manifest["load"]["steps"][0]["connections"] == 10
    assert "conns" in res.stderr  # the live progress line
    assert benchmark_row(run.events, run.manifest)["acks"] > 0


def test_bad_inputs_exit_2_with_a_reason(tmp_path):
    res = caplab("load", "--tokens", "x", env={"SOCKET_URL": "http://127.0.0.1:1", "EVENTS_PER_SECOND": "lots"})
    assert res.returncode == 2 and "EVENTS_PER_SECOND='lots'" in res.stderr
    (tmp_path / "bad.yaml").write_text(TINY.replace("hold_s: 5}", "hold_s: -5}", 1))
    res = caplab("run", str(tmp_path / "bad.yaml"), "--runs", str(tmp_path / "r"))
    assert res.returncode == 2 and "workload.steps.0.hold_s" in res.stderr and "nothing started" in res.stderr
    assert not (tmp_path / "r").exists()


def test_calibrate_simulate_runs_commands(tiny_outputs, tmp_path):
    out, _ = tiny_outputs
    measured = [str(p) for p in load_outputs(out)["measured"]]
    res = caplab("calibrate", measured[-1], "--out", str(tmp_path / "cal.json"))
    assert res.returncode == 0, res.stderr
    res = caplab(
        "simulate",
        "--calibration",
        str(tmp_path / "cal.json"),
        "--connections",
        "50",
        "--rate",
        "1",
        "--duration",
        "5",
        "--replications",
        "2",
        "--out",
        str(tmp_path / "sims"),
    )
    assert res.returncode == 0, res.stderr
    last = Path(res.stdout.strip().splitlines()[-1])
    assert read_run(last).manifest["source"] == "simulated" and "p95_ms" in res.stdout
    res = caplab("runs", "--out", str(tmp_path / "sims"))
    assert res.returncode == 0 and res.stdout.count("simulated") == 2


def test_measured_and_simulated_runs_project_to_the_same_row(tiny_outputs):
    out, _ = tiny_outputs
    outputs = load_outputs(out)
    measured = benchmark_row(*_events_and_manifest(outputs["measured"][0]))
    sim_id = json.loads((out / "runs.json").read_text())["simulated"][0]
    sim_dir = next(p for p in (out.parent.parent / "runs").iterdir() if p.name == Path(sim_id).name)
    run = read_run(sim_dir)
    assert run.manifest["source"] == "simulated"
    simulated = benchmark_row(run.events, run.manifest)
    assert set(measured) == set(simulated)
    assert simulated["acks"] > 0 and simulated["peak_memory_mb"] > 0 and simulated["mean_cpu_pct"] > 0


def _events_and_manifest(run_dir):
    run = read_run(run_dir)
    return run.events, run.manifest
