"""Trace replay (issue 11, B5): the model driven by a measured run's exact arrivals, compared per second."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from eventlog import read_run
from model import Calibration, Workload, simulate
from model.replay import Trace, compare_per_second, replay, replay_and_compare

from .test_cli_errors import ROOT, caplab, one_line_error
from .test_contract import REFERENCE, REFERENCE_RUNS


def reference(profile: str):
    run = next(p.parent for p in REFERENCE_RUNS if profile in p.parent.name)
    return run, Calibration.load(REFERENCE / f"calibration-{profile}.json")


@pytest.mark.parametrize("profile", ["baseline", "optimized"])
def test_a_replay_meets_exactly_the_measured_sends_and_connects(tmp_path, profile):
    run_dir, cal = reference(profile)
    out, per_s, per_step = replay_and_compare(cal, run_dir, tmp_path)
    measured, replayed = read_run(run_dir).events, read_run(out).events
    for kind in ("send", "connect_start"):
        m = measured[measured["kind"] == kind].sort_values("t")
        r = replayed[replayed["kind"] == kind].sort_values("t")
        assert np.allclose(m["t"], r["t"]) and (m["conn"].to_numpy() == r["conn"].to_numpy()).all(), kind
    # each send reaches the model's loop when the generator sent it: the lag its measured row records
    m_lag = measured[measured["kind"] == "send"].sort_values("t", kind="stable")["latency_s"].fillna(0.0)
    r_lag = replayed[replayed["kind"] == "send"].sort_values("t", kind="stable")["latency_s"]
    assert np.allclose(m_lag.clip(lower=0).to_numpy(), r_lag.to_numpy()) and m_lag.max() > 0
    sends = measured[measured["kind"] == "send"]
    chats_m = sends[sends["name"] == "chat"].sort_values("t")["t"].to_numpy()
    chats_r = replayed[(replayed["kind"] == "send") & (replayed["name"] == "chat")].sort_values("t")["t"].to_numpy()
    assert np.allclose(chats_m, chats_r)  # the same events are chats
    assert (per_s["sends_measured"] == per_s["sends_replayed"]).all()
    assert len(per_s) == int(Trace.from_run(read_run(run_dir)).markers[-1][0])  # one row per second to the end
    assert (per_step["throughput_eps_error_pct"].abs() < 1e-9).all()  # nothing timed out on either side
    written = pd.read_csv(out / "replay-vs-measured.csv")
    assert list(written.columns) == list(per_s.columns) and len(written) == len(per_s)
    assert (out / "replay-vs-measured-steps.csv").exists()
    assert read_run(out).manifest.model_dump().get("replays") == read_run(run_dir).run_id


def test_replaying_the_models_own_run_reproduces_it(tmp_path):
    """Deterministic services, no pings: a run the model made, replayed with the same calibration, gives
    the same acks (the replay changes where arrivals come from, nothing else)."""
    cal = Calibration(cpu_per_event_s=0.004, cpu_per_delivery_s=1e-4, service_cv=0.0, heartbeat_s=1e9)
    wl = Workload(
        steps=[{"connections": 20, "hold_s": 5}, {"connections": 40, "hold_s": 5}],
        events_per_second=150,
        mix={"echo": 0.9, "chat": 0.1},
        companies=2,
        connect_rate=100,
    )
    original = read_run(simulate(cal, wl, tmp_path, seed=3))
    again = read_run(replay(cal, original, tmp_path, seed=99))
    a, b = (r.events[r.events["kind"] == "ack"].sort_values(["t", "conn"]) for r in (original, again))
    assert len(a) == len(b) > 500
    assert np.allclose(a["latency_s"], b["latency_s"]) and np.allclose(a["t"], b["t"])
    per_s = compare_per_second(original, again)
    assert np.allclose(per_s["cpu_pct_measured"], per_s["cpu_pct_replayed"])


def test_caplab_simulate_replay_prints_the_comparison_and_refuses_a_simulated_run(tmp_path):
    run_dir, _ = reference("optimized")
    cal = str(REFERENCE / "calibration-optimized.json")
    res = caplab("simulate", "--calibration", cal, "--replay", str(run_dir), "--out", str(tmp_path), cwd=ROOT)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[-2].endswith("replay-vs-measured.csv") and "p95_ms" in res.stdout
    simulated = lines[-1]
    res = caplab("simulate", "--calibration", cal, "--replay", simulated, "--out", str(tmp_path), cwd=ROOT)
    one_line_error(res, "simulate", "--replay", "simulated run")
    res = caplab("simulate", "--calibration", cal, "--out", str(tmp_path), cwd=ROOT)
    one_line_error(res, "simulate", "--connections", "--replay")
