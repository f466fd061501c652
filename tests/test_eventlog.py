"""Event log: round trip, crash safety, and projections on small hand-made logs with exact answers."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from eventlog import (
    SLO,
    EventWriter,
    ForeignPartWarning,
    ManifestError,
    TornPartWarning,
    benchmark_row,
    check_claims,
    compare,
    create_run,
    finish_run,
    percentile,
    read_events,
    read_manifest,
    read_run,
    run_status,
    step_table,
    timeseries,
)
from eventlog.manifest import writers_record
from eventlog.projections import peak_memory_mb, window_stats


def test_round_trip(tmp_path):
    run_dir, manifest = create_run(tmp_path, "measured", "rt", scenario={"x": 1})
    with EventWriter(run_dir, "w0", t0=manifest.monotonic_t0, flush_rows=3) as w:
        w.row("connect_start", 0.0, conn=1)
        w.row("connect_ok", 0.01, conn=1, latency_s=0.01)
        w.row("send", 0.5, conn=1, name="echo", latency_s=0.0001, nbytes=20)
        w.row("ack", 0.52, conn=1, name="echo", latency_s=0.02, nbytes=20)
        w.row("sample", 0.6, node=0, name="rss_bytes", value=5e7)
    finish_run(run_dir)
    run = read_run(run_dir)
    assert run.manifest.status == "complete" and run.manifest.scenario == {"x": 1}
    df = run.events
    assert list(df["kind"]) == ["connect_start", "connect_ok", "send", "ack", "sample"]
    assert list(df["name"]) == ["", "", "echo", "echo", "rss_bytes"]
    assert df["bytes"].tolist() == [0, 0, 20, 20, 0]
    assert math.isnan(df["value"].iloc[0]) and df["value"].iloc[-1] == 5e7
    assert len(list((run_dir / "events").glob("part-*.parquet"))) == 2


def test_a_run_read_by_a_relative_path_keeps_its_rows_after_the_folder_changes(tmp_path, monkeypatch):
    # the rows are read lazily: a notebook that opened runs/ID in one folder reads them from another
    run_dir, manifest = create_run(tmp_path, "measured", "rel")
    with EventWriter(run_dir, "w0", t0=manifest.monotonic_t0) as w:
        w.row("send", 0.5, conn=1, name="echo", latency_s=0.0001, nbytes=20)
    finish_run(run_dir)
    monkeypatch.chdir(tmp_path)
    run = read_run(run_dir.relative_to(tmp_path))
    monkeypatch.chdir(tmp_path.parent)
    assert list(run.events["kind"]) == ["send"]


def test_killed_writer_keeps_every_complete_part(tmp_path):
    run_dir, _manifest = create_run(tmp_path, "measured", "crash")
    code = textwrap.dedent(f"""
        import os, signal
        from eventlog import EventWriter
        w = EventWriter({str(run_dir)!r}, "victim", flush_rows=100)
        for i in range(350):
            w.row("send", float(i), conn=i, name="echo")
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], check=False)
    assert proc.returncode == -signal.SIGKILL
    (run_dir / "events" / "part-other-000000.parquet").write_bytes(b"PAR1 torn half a file")
    with pytest.warns(TornPartWarning, match="part-other-000000"):
        run = read_run(run_dir)
    assert run.manifest.status == "running"  # never finished, still readable
    assert run.events["t"].tolist() == [float(i) for i in range(300)]


def test_percentile_is_nearest_rank():
    values = np.arange(1, 101, dtype=float)  # 1..100
    assert percentile(values, 95) == 95.0
    assert percentile(values, 50) == 50.0
    assert percentile(np.array([5.0]), 99) == 5.0
    assert math.isnan(percentile(np.array([]), 50))


def hand_made_log(tmp_path, fail_second_step=False):
    """Two 10 s steps (10 then 20 connections), one echo per connection per second, known latencies."""
    run_dir, _manifest = create_run(tmp_path, "simulated", "hand")
    w = EventWriter(run_dir, "hand", t0=0.0)
    conn = 0
    for step, (start, target) in enumerate([(0.0, 10), (10.0, 20)]):
        w.row("sample", start, name="step", value=target)
        while conn < target:
            w.row("connect_start", start, conn=conn)
            w.row("connect_ok", start + 0.1, conn=conn, latency_s=0.1)
            conn += 1
        for s in range(10):
            for c in range(target):
                t = start + s + c / 100
                lat = 0.01 * (c + 1) if not (fail_second_step and step == 1) else 0.5
                w.row("send", t, conn=c, name="echo", latency_s=0.0)
                w.row("ack", t + lat, conn=c, name="echo", latency_s=lat)
    w.row("timeout", 19.5, conn=0, name="echo")
    w.row("sample", 20.0, name="end")
    for t in range(21):
        w.row("sample", float(t), node=0, name="cpu_seconds", value=0.5 * t)
        w.row("sample", float(t), node=0, name="rss_bytes", value=1e8 + 1e6 * t)
    w.close()
    finish_run(run_dir)
    return read_run(run_dir)


def test_steps_and_row_on_hand_made_log(tmp_path):
    run = hand_made_log(tmp_path)
    table = step_table(run.events, SLO(p95_ms=500, error_rate_pct=1))
    assert table["target"].tolist() == [10, 20] and table["reached"].tolist() == [10, 20]
    # step 1 counts from t = 10 + 2.5: sends at seconds 3..9 -> 7 s x 20 connections
    # latencies 10..200 ms, each connection's latency fixed: p95 of 1..20 (x10 ms) is 190 ms
    assert table["p95_ms"].iloc[1] == pytest.approx(190.0)
    assert table["p50_ms"].iloc[1] == pytest.approx(100.0)
    assert table["throughput_eps"].iloc[1] == pytest.approx(140 / 7.5)  # 7 whole seconds of sends in 7.5 s
    assert table["error_rate"].iloc[1] == pytest.approx(1 / 140)  # one timeout over 140 sends
    assert table["held"].tolist() == [True, True]
    row = benchmark_row(run.events, run.manifest, SLO(p95_ms=500, error_rate_pct=1))
    assert row["max_stable_connections"] == 20 and row["max_stable_is_lower_bound"]
    assert row["peak_memory_mb"] == pytest.approx(120.0)
    assert row["mean_cpu_pct"] == pytest.approx(50.0)
    assert row["error_rate_pct"] == pytest.approx(100 / 140)  # the steady (last) step's window
    assert row["error_rate_run_pct"] == pytest.approx(100 * 1 / (20 + 300))  # 20 connects + 300 sends
    assert benchmark_row(run.events, run.manifest, SLO(p95_ms=500), steady_step=0)["connections"] == 10
    ts = timeseries(run.events)
    assert ts["acks_per_s"].loc[15] == 20 and ts["connections"].loc[15] == 20


def test_failed_step_caps_max_stable(tmp_path):
    run = hand_made_log(tmp_path, fail_second_step=True)
    row = benchmark_row(run.events, run.manifest, SLO(p95_ms=300, error_rate_pct=1))
    assert row["max_stable_connections"] == 10 and not row["max_stable_is_lower_bound"]


def test_compare_and_claims():
    before = {
        "max_stable_connections": 200,
        "p95_ms": 800.0,
        "peak_memory_mb": 800.0,
        "mean_cpu_pct": 75.0,
        "error_rate_pct": 5.0,
        "max_stable_throughput_eps": 50.0,
    }
    after = {
        "max_stable_connections": 2000,
        "p95_ms": 200.0,
        "peak_memory_mb": 300.0,
        "mean_cpu_pct": float("nan"),
        "error_rate_pct": 0.05,
        "max_stable_throughput_eps": 1500.0,
        "max_stable_is_lower_bound": False,
    }
    table = compare(before, after).set_index("key")
    assert table.loc["p95_ms", "improvement_pct"] == pytest.approx(75.0)
    assert table.loc["max_stable_connections", "improvement_pct"] == pytest.approx(900.0)
    verdicts = check_claims(before, after).set_index("key")["bound"].to_dict()
    assert verdicts == {
        "max_stable_connections": "held",
        "p95_ms": "not held",
        "peak_memory_mb": "held",
        "mean_cpu_pct": "not measurable here",
        "error_rate_pct": "held",
        "max_stable_throughput_eps": "held",
    }
    capped = check_claims(
        before, {**after, "max_stable_connections": 1000, "max_stable_is_lower_bound": True}, tested_connections=1000
    ).set_index("key")
    assert capped.loc["max_stable_connections", "bound"] == "not measurable here"


def test_peak_memory_counts_each_node_once():
    """The scraper's last sample, taken at stop, often lands in the same second as the one before;
    the peak is the highest total over nodes, never one node counted twice."""
    t = np.append(np.arange(20) + 0.2, 19.7)  # once a second, then the final scrape 0.5 s later
    one = pd.DataFrame({"t": t, "node": 0, "value": 1e8 + 1e6 * np.append(np.arange(20), 20)})
    assert peak_memory_mb(one) == pytest.approx(120.0)
    # two nodes sampled at different instants: their values at the same time add up
    other = pd.DataFrame({"t": t + 0.5, "node": 1, "value": 5e7})
    assert peak_memory_mb(pd.concat([one, other])) == pytest.approx(170.0)
    assert np.isnan(peak_memory_mb(one.iloc[:0]))


def test_errors_count_in_the_window_of_their_attempt(tmp_path):
    """A timeout is detected seconds after its send: it belongs to the send's window, so a window
    after an overload never shows more errors than attempts (the capacity model read 108-128 %)."""
    w = EventWriter(tmp_path, "gen0", t0=0.0)
    for i in range(10):
        w.row("send", 5.0 + i / 100, conn=i, name="echo", latency_s=0.0)
        w.row("timeout", 10.5 + i / 100, conn=i, name="echo", latency_s=5.5)
    w.row("error", 7.0, conn=0, name="dropped: ping timeout")  # a failure with no attempt row of its own
    for i in range(2):
        w.row("send", 12.0 + i, conn=i, name="echo", latency_s=0.0)
        w.row("ack", 12.01 + i, conn=i, name="echo", latency_s=0.01)
    w.close()
    df = read_events(tmp_path)
    assert window_stats(df, 0, 10)["error_rate"] == 1.0
    assert window_stats(df, 10, 20)["error_rate"] == 0.0


def _good_part(tmp_path):
    run_dir, manifest = create_run(tmp_path, "measured", "parts")
    with EventWriter(run_dir, "gen0", t0=manifest.monotonic_t0) as w:
        for i in range(5):
            w.row("send", float(i), conn=i, name="echo")
    return run_dir, pq.read_table(next((run_dir / "events").glob("part-gen0-*.parquet")))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.append_column("colour", pa.array(["red"] * len(t))), r"column\(s\) 'colour' not in the schema"),
        (lambda t: t.drop_columns(["bytes"]), r"no column\(s\) 'bytes'"),
        (lambda t: t.set_column(2, "conn", pa.array([str(x) for x in t["conn"].to_pylist()])), r"'conn' is string"),
    ],
    ids=["extra column", "missing column", "wrong type"],
)
def test_a_part_with_other_columns_is_skipped_and_named(tmp_path, change, message):
    """Skipped, not read in silently (pyarrow would drop an extra column, fill a missing one with
    nulls and cast a wrong type) and not the whole run refused (one stray file must not hide the rest)."""
    run_dir, table = _good_part(tmp_path)
    pq.write_table(change(table), run_dir / "events" / "part-stray-000000.parquet")
    with pytest.warns(ForeignPartWarning, match=rf"part-stray-000000\.parquet: .*{message}"):
        df = read_events(run_dir)
    assert len(df) == 5


def test_truncated_manifest_is_one_clear_error(tmp_path):
    run_dir, _ = create_run(tmp_path, "measured", "m")
    text = (run_dir / "manifest.json").read_text()
    for damaged in (text[:40], "", "[]", '{"run_id": "x"}'):
        (run_dir / "manifest.json").write_text(damaged)
        with pytest.raises(ManifestError, match=r"manifest\.json: ") as err:
            read_manifest(run_dir)
        assert "\n" not in str(err.value)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process start times and states from /proc")
def test_running_run_without_a_live_writer_is_reported_aborted(tmp_path):
    run_dir, manifest = create_run(tmp_path, "measured", "live")
    assert manifest.writers is not None and manifest.writers.processes[0].pid == os.getpid()
    manifest = manifest.json_dict()  # run_status takes a manifest or its dict
    assert run_status(manifest) == ("running", "")  # this process writes it
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead = {**manifest, "writers": {**manifest["writers"], "processes": [{"pid": child.pid, "start": None}]}}
    status, why = run_status(dead)
    assert status == "aborted" and str(child.pid) in why
    reused = {**manifest, "writers": {**manifest["writers"], "processes": [{"pid": os.getpid(), "start": 1}]}}
    assert run_status(reused)[0] == "aborted"  # a pid now held by a later process
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while not Path(f"/proc/{zombie.pid}/stat").read_text().split(") ")[1].startswith("Z"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    as_zombie = {**manifest, "writers": writers_record([zombie.pid])}
    assert run_status(as_zombie)[0] == "aborted"  # exited, not yet reaped
    zombie.wait()
    elsewhere = {**manifest, "writers": {**manifest["writers"], "host": "another-host", "processes": [{"pid": 1}]}}
    assert run_status(elsewhere)[0] == "running"  # cannot tell from here
    assert run_status({**manifest, "status": "complete"}) == ("complete", "")
    finish_run(run_dir, "complete")
    assert read_run(run_dir).status == "complete"
