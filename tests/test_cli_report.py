"""The caplab CLI against real servers with small settings, and the PDF report's numbers."""

from __future__ import annotations

import ast
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pypdf import PdfReader

from eventlog import benchmark_row, read_run
from eventlog.capacity import NodeCapacity, node_capacity_text
from lab.answer import NOT_TESTED
from lab.results import capacity_answers, load_outputs
from lab.servers import ServerProcess, ServerStartError, create_users
from lab.tables import fmt
from model.usl import fit_usl, usl

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
    # what each fit says about itself (ill-conditioned design, loose costs) travels with its answer
    from model.parameters import Calibration

    said = {label: Calibration.load(out / f"calibration-{label}.json").fit_warnings() for label in model["capacity"]}
    assert model.get("fit_warnings", {}) == {label: w for label, w in said.items() if w}
    for cap in model["capacity"].values():
        # the node capacity is what held in every simulated ramp, not one lucky ramp
        each = cap["connections_per_node_each_replication"]
        assert len(each) == 2  # the tiny scenario's replications
        limit = cap["node_limit"]
        assert cap["connections_per_node"] == min(min(each), limit if limit is not None else min(each))
        # every target's answer is the fewest nodes on which every replication of the simulated
        # deployment met the SLO (eventlog.capacity.NodeSearch), never under the node limit
        simulated = set(json.loads((out / "runs.json").read_text())["simulated"])
        capacity_csv = pd.read_csv(out / "capacity.csv")
        for n, answer in cap["nodes"].items():
            tried = {int(k): v for k, v in cap["deployments_tried"][n].items()}
            assert answer["nodes"] is not None, answer
            fewest = answer["nodes"] - answer["spare"]
            assert all(tried[fewest]) and all(all(v) for k, v in tried.items() if k > fewest)
            assert (
                fewest == 1
                or (fewest - 1 in tried and not all(tried[fewest - 1]))
                or (limit is not None and fewest == -(-int(n) // limit))
            ), (n, tried)
            assert answer["best_case"] <= answer["nodes"] <= answer["at_more_load"], answer
            label = cap_label(model, cap)
            row = capacity_csv[(capacity_csv["label"] == label) & (capacity_csv["connections"] == int(n))]
            assert int(row["nodes"].iloc[0]) == fewest  # the row: the load with one node down
        assert set(cap["ramp_runs"]) <= simulated
    csv_runs = {r for ids in pd.read_csv(out / "capacity.csv")["run_ids"] for r in ast.literal_eval(ids)}
    assert csv_runs <= simulated  # every run behind a number is listed


def cap_label(model: dict, cap: dict) -> str:
    return next(label for label, c in model["capacity"].items() if c is cap)


def steady_figures_from_parquet(run_dir: Path) -> dict[str, float]:
    """p95, acked throughput and error rate of the last step, computed from the raw Parquet parts with
    pandas alone (not eventlog's reader or projections): the report's oracle.

    The rules are the README's: the last step counts from max(1 s, 25 % of its hold) after its hold
    starts to the end marker; latencies of acks and pushes are placed by intended send time, p95 is
    nearest rank; acks count by their own time; errors by the time of the attempt they end, over
    connect_start + send + error rows.
    """
    df = pd.concat([pd.read_parquet(p) for p in sorted((run_dir / "events").glob("part-*.parquet"))])
    kind, name = df["kind"].astype(str), df["name"].astype(str)
    start = df["t"][(kind == "sample") & (name == "step")].max()
    hold = df["t"][(kind == "sample") & (name == "hold") & (df["t"] >= start)].min()
    end = df["t"][(kind == "sample") & (name == "end")].max()
    t0, t1 = hold + max(1.0, 0.25 * (end - hold)), end
    lat = df[kind.isin(["ack", "push"])]
    sent = lat["t"] - lat["latency_s"]
    x = np.sort(lat["latency_s"][(sent >= t0) & (sent < t1)].to_numpy())
    p95 = x[math.ceil(round(0.95 * x.size, 9)) - 1]
    in_window = (df["t"] >= t0) & (df["t"] < t1)
    acks = int((in_window & (kind == "ack")).sum())
    err = df[kind.isin(["connect_fail", "timeout", "reject", "error"])]
    tried = err["t"] - err["latency_s"].fillna(0.0)
    errors = int(((tried >= t0) & (tried < t1)).sum())
    attempts = int((in_window & kind.isin(["connect_start", "send", "error"])).sum())
    return {
        "p95_ms": 1000 * p95,
        "throughput_eps": acks / (t1 - t0),
        "error_rate_pct": 100 * errors / attempts if attempts else 0.0,
    }


def test_report_text_holds_the_values_computed_from_the_runs(tiny_outputs):
    out, pdf = tiny_outputs
    text = " ".join(page.extract_text() for page in PdfReader(pdf).pages)
    text = " ".join(text.split())
    record = json.loads((out / "runs.json").read_text())
    assert len(record["measured"]) == 2
    for run_path in record["measured"]:
        run = read_run(run_path)
        row = benchmark_row(run.events, run.manifest)
        assert run.run_id in text
        assert f"{row['max_stable_connections']} connections" in text
        assert fmt(row["peak_memory_mb"]) in text
        for metric, value in steady_figures_from_parquet(Path(run_path)).items():
            assert fmt(value) in text, (run.manifest.label, metric, fmt(value))
            assert row[metric] == pytest.approx(value, rel=1e-9, abs=1e-12), metric
    assert "Seed guide claims" in text
    # every claim with its two-part verdict (bound, improvement), as check_claims wrote it to the claims table
    claims = pd.read_csv(out / "claims-baseline-vs-optimized.csv")
    assert len(claims) == 6
    for c in claims.itertuples():
        # one table row per claim: the claim, the measured values, the verdict
        assert f"{c.claim} {fmt(c.measured_before)} -> {fmt(c.measured_after)} {c.verdict}" in text, c.claim
        assert str(c.verdict).startswith(f"bound {str(c.bound).upper()}, improvement {str(c.improvement).upper()}")


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
    assert run.manifest.status == "complete" and run.manifest.offered_load().steps[0].connections == 10
    assert "conns" in res.stderr  # the live progress line
    assert benchmark_row(run.events, run.manifest)["acks"] > 0


def test_bad_inputs_exit_2_with_a_reason(tmp_path):
    res = caplab("load", "--tokens", "x", env={"SOCKET_URL": "http://127.0.0.1:1", "EVENTS_PER_SECOND": "lots"})
    assert res.returncode == 2 and "EVENTS_PER_SECOND='lots'" in res.stderr
    (tmp_path / "bad.yaml").write_text(TINY.replace("hold_s: 5}", "hold_s: -5}", 1))
    res = caplab("run", str(tmp_path / "bad.yaml"), "--runs", str(tmp_path / "r"))
    assert res.returncode == 2 and "workload.steps.0.hold_s" in res.stderr and "nothing started" in res.stderr
    assert not (tmp_path / "r").exists()
    res = caplab("calibrate", "--live", "http://127.0.0.1:1", "--out", str(tmp_path / "cal.json"))
    assert res.returncode == 2 and "--live needs --profile" in res.stderr and not (tmp_path / "cal.json").exists()


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
    assert read_run(last).manifest.source == "simulated" and "p95_ms" in res.stdout
    res = caplab("runs", "--out", str(tmp_path / "sims"))
    assert res.returncode == 0 and res.stdout.count("simulated") == 2


def test_measured_and_simulated_runs_project_to_the_same_row(tiny_outputs):
    out, _ = tiny_outputs
    outputs = load_outputs(out)
    measured = benchmark_row(*_events_and_manifest(outputs["measured"][0]))
    sim_id = json.loads((out / "runs.json").read_text())["simulated"][0]
    sim_dir = next(p for p in (out.parent.parent / "runs").iterdir() if p.name == Path(sim_id).name)
    run = read_run(sim_dir)
    assert run.manifest.source == "simulated"
    simulated = benchmark_row(run.events, run.manifest)
    assert set(measured) == set(simulated)
    assert simulated["acks"] > 0 and simulated["peak_memory_mb"] > 0 and simulated["mean_cpu_pct"] > 0


def _events_and_manifest(run_dir):
    run = read_run(run_dir)
    return run.events, run.manifest


def test_a_server_that_stalls_at_start_up_is_killed_at_the_deadline_with_its_log(tmp_path):
    """A real ``python -m server`` made to hang before it prints (a sitecustomize on its PYTHONPATH)."""
    (tmp_path / "hang").mkdir()
    (tmp_path / "hang" / "sitecustomize.py").write_text(
        "import sys, time\nprint('stalling before start-up', file=sys.stderr, flush=True)\ntime.sleep(120)\n"
    )
    hang = {"PYTHONPATH": str(tmp_path / "hang")}
    node = ServerProcess("baseline", tmp_path / "db", env=hang, log_path=tmp_path / "s.log")
    started = time.monotonic()
    with pytest.raises(ServerStartError) as exc:
        node.start(timeout=1.5)
    assert time.monotonic() - started < 10  # the deadline, plus the stop's grace
    msg = str(exc.value)
    assert "no listening line within 1.5 s" in msg and "stalling before start-up" in msg and "\n" not in msg
    assert node.proc is not None and node.proc.poll() is not None  # killed, not left behind


def test_reuse_of_a_run_without_a_log_is_one_line(tmp_path):
    bad = tmp_path / "bad"
    (bad / "events").mkdir(parents=True)
    (bad / "manifest.json").write_text(json.dumps({"run_id": "bad", "source": "measured", "status": "complete"}))
    (tmp_path / "tiny.yaml").write_text(TINY)
    res = caplab("run", str(tmp_path / "tiny.yaml"), "--reuse", str(bad), "--reports", str(tmp_path / "reports"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.count("\n") == 1 and "holds no load steps" in res.stderr and "nothing started" in res.stderr
    assert not (tmp_path / "reports").exists()


def test_the_report_says_when_a_calibration_cannot_be_read(tiny_outputs, tmp_path):
    out, _ = tiny_outputs
    copy = tmp_path / "tiny"
    shutil.copytree(out, copy)
    (copy / "calibration-baseline.json").write_text('{"cpu_per_event_s": "fast"}')
    res = caplab("report", str(copy))
    assert res.returncode == 0, res.stderr
    text = " ".join(" ".join(p.extract_text() for p in PdfReader(copy / "report.pdf").pages).split())
    assert "calibration file" in text and "could not be read" in text
    assert "calibration" in res.stderr and "could not be read" in res.stderr


def test_a_live_scrape_records_the_settings_of_the_declared_profile(tmp_path):
    from lab.live import scrape_live
    from model.calibrate import SETTINGS_USED, settings_of

    create_users(tmp_path / "db", 1, 1)
    with ServerProcess("optimized", tmp_path / "db", {"metrics_interval_ms": 200}, log_path=tmp_path / "s.log") as srv:
        run = read_run(scrape_live(srv.url, 1.5, tmp_path / "runs", "optimized", interval_s=0.3))
    assert run.manifest.status == "complete" and run.manifest.profile == "optimized"
    assert run.manifest.server is not None and run.manifest.server.toggles["batching"]
    assert set(SETTINGS_USED) <= set(settings_of(run))
    assert ((run.events["kind"] == "sample") & (run.events["name"] == "events_in")).sum() >= 2


def _page_text(pdf: Path, page: int = 0) -> str:
    return " ".join(PdfReader(pdf).pages[page].extract_text().split())


def test_page_one_answers_with_the_capacity_table_confidence_and_claims(tiny_outputs):
    """Page 1: the capacity table titled, each target's answer in eventlog.capacity's words, the confidence
    line with the held-out band counts of validation.csv, and the seed claims' two-part verdicts."""
    out, pdf = tiny_outputs
    text = _page_text(pdf)
    assert "Question: does the whole flow run end to end on small settings?" in text
    assert "Nodes needed and the simulated figures on them" in text
    assert "Nodes needed: the fewest nodes on which every replication of the simulated deployment" in text
    model = json.loads((out / "model.json").read_text())
    answers = capacity_answers(load_outputs(out))
    targets = set()
    for label, rec in model["capacity"].items():
        cap = NodeCapacity.from_record(rec)
        assert node_capacity_text(cap) in text, label
        for n, answer in rec["nodes"].items():
            assert answers[label][1][int(n)].text() == answer["text"]  # the one answer: model.json and the reader
            assert answer["basis"] == "deployment"  # checked on the simulated deployment, as the what-if does
            assert answer["text"] in text, (label, n)
            targets.add(int(n))
    top = max(targets)
    sentence = " and ".join(f"{c['nodes'][str(top)]['nodes']} nodes ({k})" for k, c in model["capacity"].items())
    assert f"{top} connections need {sentence} with one spare (N+1)" in text  # the one-sentence answer
    # confidence: per profile, the held-out steps within their band (an oracle over validation.csv)
    validation = pd.read_csv(out / "validation.csv")
    assert "Confidence: " in text
    for label, v in validation[validation["held_out"]].groupby("label"):
        assert f"{label} on held-out steps" in text
        for metric, name in (("p95_ms", "p95"), ("cpu_pct", "CPU"), ("memory_mb", "memory")):
            m = v[(v["metric"] == metric) & ~v["verdict"].isin(NOT_TESTED)]
            if len(m):
                held = int(m["verdict"].isin(["within band", "within measurement noise"]).sum())
                assert f"{name} {held} of {len(m)}" in text, (label, metric)
    # 300 connections lie beyond the 30 the tiny ramp measured: flagged, and so is the grade
    reached = int(pd.read_csv(out / "steps.csv")["reached"].max())  # the most connections any measured step held
    assert reached <= 30 < top
    assert f"Outside the validated envelope (measured up to {reached} connections" in text and f"at {top}" in text
    assert "Confidence: HIGH" not in text
    claims = pd.read_csv(out / "claims-baseline-vs-optimized.csv")
    assert "Seed guide claims, baseline -> optimized" in text
    for c in claims.itertuples():
        assert str(c.claim) in text and str(c.verdict) in text, c.claim


def test_a_degenerate_usl_fit_is_reported_as_not_informative(tiny_outputs, tmp_path):
    """A USL fit of an open-loop ramp (R2 0.43, peak 4.7e10 connections, as the reference quickstart's) is
    printed with its reason, never as numbers; a fit that describes its points is printed as numbers."""
    out, _ = tiny_outputs
    copy = tmp_path / "tiny"
    shutil.copytree(out, copy)
    model = json.loads((copy / "model.json").read_text())
    n = np.array([1, 2, 4, 8, 16, 32])
    model["usl"] = {
        "baseline": {
            "lambda": 1.15,
            "sigma": 1.26e-18,
            "kappa": 4.54e-22,
            "r2": 0.4297,
            "peak_load": 46944694334.7,
            "peak_throughput": 2.7e10,
            "n_points": 4,
        },
        "optimized": fit_usl(n, usl(n, 100.0, 0.05, 0.01)),
    }
    (copy / "model.json").write_text(json.dumps(model))
    res = caplab("report", str(copy))
    assert res.returncode == 0, res.stderr
    text = " ".join(" ".join(p.extract_text() for p in PdfReader(copy / "report.pdf").pages).split())
    assert "USL cross-check baseline: not informative: R2 0.43 < 0.9; peak at 4.7e+10" in text
    assert "46944694335" not in text and "sigma 1.3e-18" not in text
    assert "USL cross-check optimized: sigma 0.05, kappa 0.01, peak at 9.75 connections" in text


def test_the_sweep_page_marks_grid_points_over_the_node_limit(tiny_outputs, tmp_path):
    """A sweep's rows over the node connection limit (modelling marks them, not run) read 'not run' on the
    sweep page, and page 1 answers with the sweep's fewest nodes when there is no capacity table."""
    out, _ = tiny_outputs
    copy = tmp_path / "tiny"
    shutil.copytree(out, copy)
    nan = float("nan")
    sweep = pd.DataFrame(
        {
            "nodes": [4, 5],
            "connections": [10000, 10000],
            "p95_ms": [nan, 30.67],
            "p95_ms_ci": [nan, 0.32],
            "mean_cpu_pct": [nan, 255.7],
            "error_rate_pct": [nan, 0.0],
            "meets_slo": [False, True],
            "over_node_limit": [True, False],
        }
    )
    sweep.to_csv(copy / "sweep.csv", index=False)
    (copy / "capacity.csv").unlink()
    model = json.loads((copy / "model.json").read_text())
    model.pop("capacity")
    model["sweep"] = {"rows": 2, "fewest_nodes_meeting_slo": 5, "with_n_plus_1": 6, "node_limit": 2000}
    (copy / "model.json").write_text(json.dumps(model))
    res = caplab("report", str(copy))
    assert res.returncode == 0, res.stderr
    pages = [" ".join(p.extract_text().split()) for p in PdfReader(copy / "report.pdf").pages]
    assert "10 000 connections need 5 nodes within the SLO, 6 with one spare (N+1)" in pages[0]
    sweep_page = next(p for p in pages if "Sweep grid" in p)
    assert "4 10000 not run: over the node limit" in sweep_page
    assert "5 10000 30.7 ± 0.3 51 0 yes" in sweep_page  # CPU per node: 255.7 % over 5 nodes


def test_confidence_grades_follow_the_held_out_bands_and_the_envelope():
    from eventlog.capacity import NodeCapacity as Cap
    from lab.answer import CapacityRow, Envelope, confidence, plus_minus

    def validation(p95_verdict: str) -> pd.DataFrame:
        rows = [
            {"label": "opt", "step": 2, "metric": m, "verdict": v, "held_out": True}
            for m, v in (("p95_ms", p95_verdict), ("cpu_pct", "within band"), ("memory_mb", "within band"))
        ]
        fitted = {"label": "opt", "step": 0, "metric": "p95_ms", "verdict": "outside band", "held_out": False}
        return pd.DataFrame([*rows, fitted])  # a fitted step's miss does not count: only held-out steps do

    cap = Cap((400, 500))
    env = Envelope(connections_per_node=300, events_per_s_per_node=150)

    def row(n: int, extrapolated: bool) -> CapacityRow:
        return CapacityRow("opt", n, cap.answer(n), 1, "1", "1 %", "1 MB", "meets", True, extrapolated, [])

    inside = confidence(validation("within band"), ["opt"], [row(200, False)], env)
    assert inside.grade == "HIGH" and "opt on held-out steps: every band held" in inside.text
    beyond = confidence(validation("within measurement noise"), ["opt"], [row(200, False), row(2000, True)], env)
    assert beyond.grade == "MEDIUM" and "Outside the validated envelope (measured up to 300 connections" in beyond.text
    assert "marked *: opt at 2 000" in beyond.text
    missed = confidence(validation("outside band"), ["opt"], [row(200, False)], env, {"opt": cap})
    assert missed.grade == "LOW" and "missed p95 0 of 1; held CPU 1 of 1, memory 1 of 1" in missed.text
    assert "opt's node capacity (400 per node) is itself an extrapolation" in missed.text
    assert confidence(pd.DataFrame(), ["opt"], [row(200, False)], env).grade == "LOW"  # no validation at all
    # a mean and its CI to the CI's second significant digit, never in exponent form
    assert [plus_minus(*x) for x in ((158.11, 154.05), (5.5568, 0.1026), (35538.0, 3549.1), (102.41, 1e-11))] == [
        "160 ± 150",
        "5.56 ± 0.10",
        "35 500 ± 3 500",
        "102 ± 0",
    ]


def test_latency_page_says_how_each_batching_profile_batches(tmp_path):
    """A profile batching with batch_flush_soon does not sit near its window, and the latency page must not
    say it does; one batching by the window alone does."""
    from lab.report import build_report

    ref = tmp_path / "reference"
    shutil.copytree(Path(__file__).parent.parent / "notebooks" / "data" / "reference", ref)
    manifest = next((ref / "runs").glob("*optimized*")) / "manifest.json"
    assert json.loads(manifest.read_text())["server"]["toggles"]["batching"]

    def latency_text(flush_soon: bool) -> str:
        raw = json.loads(manifest.read_text())
        raw["server"]["toggles"]["batch_flush_soon"] = flush_soon
        manifest.write_text(json.dumps(raw))
        return " ".join(p.extract_text() for p in PdfReader(build_report(ref)).pages).replace("\n", " ")

    text = latency_text(True)
    assert "Batching with batch_flush_soon: optimized (100 ms)" in text
    assert "so their p95 sits near the window" not in text
    text = latency_text(False)
    assert "Batching profiles: optimized (100 ms)" in text and "so their p95 sits near the window" in text


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_notebook_3_on_the_report_folder_prints_page_ones_answers(tiny_outputs, tmp_path):
    """Issue 9: notebook 3 run on a report folder gives the answers its PDF's page 1 gives (one function)."""
    import nbformat
    import papermill

    out, pdf = tiny_outputs
    done = tmp_path / "3.ipynb"
    papermill.execute_notebook(
        Path(__file__).parent.parent / "notebooks" / "3-capacity.ipynb",
        done,
        parameters={"OUTPUTS": str(out)},
        cwd=tmp_path,
        kernel_name="python3",
        progress_bar=False,
    )
    nb = nbformat.read(done, as_version=4)
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    page = _page_text(pdf)
    for rec in json.loads((out / "model.json").read_text())["capacity"].values():
        for n, answer in rec["nodes"].items():
            assert f"{int(n):>6} connections: {answer['text']}" in printed
            assert answer["text"] in page


def test_nothing_on_a_page_is_drawn_below_its_footer(tiny_outputs):
    """Page 1 of a capacity run (two profiles x three targets, confidence, claims) drew the claims table
    over the footer and off the page; a page that cannot hold the claims now continues on the next."""
    from pypdf import PdfReader

    from lab.report import WARMUP_RULE

    _, pdf = tiny_outputs
    sentence = (
        f"Warm-up rule: {WARMUP_RULE}. Percentiles: nearest rank over every sample. Runs are named by the "
        "last 6 characters of their ids; the last page lists the full ids, the next pages the evidence."
    )
    for number, page in enumerate(PdfReader(pdf).pages, start=1):
        spots: list[tuple[float, str]] = []

        def seen(text, cm, tm, *_, spots=spots):
            spots.append((tm[5] * cm[3] + cm[5], text))

        page.extract_text(visitor_text=seen)
        footer = [y for y, t in spots if t.startswith("Warm-up rule")]
        if not footer:
            continue
        ours = [(y, t) for y, t in spots if t.strip() and t.strip() not in sentence]  # not the footer's lines
        assert ours
        lowest_other = min(y for y, _ in ours)
        low = [t for y, t in ours if y <= footer[0] + 6.5]
        # a line of the footer's size (6.5 pt) clear of everything above it: overlapping glyphs sat 3 pt apart
        assert footer[0] + 6.5 < lowest_other, f"page {number}: {low!r} at {lowest_other:.0f} pt, over the footer"


def test_a_tables_measured_height_is_the_height_it_draws():
    from lab.report import _page, _table, _table_height

    fig = _page("t")
    rows = [["a claim", "1 -> 2", "a long verdict " * 12], ["b", "3", "short"]]
    widths = [0.22, 0.15, 0.51]
    end = _table(fig, 0.8, "title", ["claim", "measured", "verdict"], rows, widths, size=7)
    assert 0.8 - end == pytest.approx(_table_height(["claim", "measured", "verdict"], rows, widths, 7))


def test_validation_shows_each_step_against_its_band_with_the_passes_spread(tiny_outputs, tmp_path):
    """Passes of one configuration: the model page states their spread, and a page plots every
    validated step's error against its band with the measured mean's uncertainty."""
    out, _ = tiny_outputs
    copy = tmp_path / "tiny"
    shutil.copytree(out, copy)
    v = pd.read_csv(copy / "validation.csv")
    v = v.assign(passes=3, spread_pct=7.0, noise_pct=17.4)
    cross = v[v["label"] == "optimized"].assign(label="no-batching from optimized", held_out=True)
    pd.concat([v, cross]).to_csv(copy / "validation.csv", index=False)
    res = caplab("report", str(copy))
    assert res.returncode == 0, res.stderr
    pages = [" ".join(p.extract_text().split()) for p in PdfReader(copy / "report.pdf").pages]
    # the model page and its continuation (how much of the table fits depends on the fit's warnings)
    model = " ".join(p for p in pages if p.startswith("Model: validation"))
    assert "spread %" in model and "7 (3 runs)" in model and "no-batching from optimized" in model
    steps = next(p for p in pages if "Validation per step: prediction error, band and noise" in p)
    assert "CPU" in steps and "no-batching from optimized" in steps and "band +-5 %" in steps


def test_the_report_shows_each_profile_replayed_on_its_measured_arrivals(tiny_outputs):
    """Issue 11 (B5): each configuration's first run is replayed through the model with its exact
    arrivals, and the report shows replayed against measured per second."""
    out, pdf = tiny_outputs
    per_s = pd.read_csv(out / "replay.csv")
    assert set(per_s["label"]) == {"baseline", "optimized"}
    sends = per_s.groupby("label")[["sends_measured", "sends_replayed"]].sum()
    assert (sends["sends_measured"] == sends["sends_replayed"]).all() and (sends["sends_measured"] > 0).all()
    model = json.loads((out / "model.json").read_text())
    assert set(model["replays"]) == {"baseline", "optimized"}
    pages = [" ".join(p.extract_text().split()) for p in PdfReader(pdf).pages]
    page = next(p for p in pages if "Trace replay: the model on the measured arrivals, per second" in p)
    assert "baseline: CPU" in page and "optimized: CPU" in page and "replayed as" in page
