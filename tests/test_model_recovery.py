"""The model's reconnects with recovery (load field ``recover``): a reconnect costs its replay."""

from __future__ import annotations

import shutil

import pytest

from eventlog import benchmark_row, read_run
from model import Calibration, Workload, simulate
from model.calibrate import calibrate
from model.sim import SLICE_S

from .test_contract import REFERENCE_RUNS

CPD = 0.0002  # seconds of loop per delivery
CPP = 0.0001  # per packet written to a socket (every delivery without batching, every batch with)
CHAT_RATE = 40 * 0.5 / 2  # chats per second per company


def cal(**kw) -> Calibration:
    base = {
        "cpu_per_event_s": 0.0005,
        "cpu_per_delivery_s": CPD,
        "cpu_per_packet_s": CPP,
        "cpu_per_connect_s": 0.001,
        "heartbeat_s": 1e9,
        "recovery_window_s": 120.0,
        "recovery_max_events": 1000,
    }
    return Calibration(**{**base, **kw})


def workload(recover: bool) -> Workload:
    return Workload(
        steps=[{"connections": 40, "hold_s": 20}],
        events_per_second=40,
        mix={"chat": 0.5, "echo": 0.5},
        companies=2,
        connect_rate=1000,
        churn_per_s=2,
        churn_away_s=2 * SLICE_S,
        recover=recover,
    )


def last_cpu(df) -> float:
    s = df[(df["kind"] == "sample") & (df["name"] == "cpu_seconds")]
    return float(s["value"].iloc[-1])


@pytest.mark.parametrize("batching", [False, True])
def test_a_recovering_reconnect_costs_its_replay(tmp_path, batching):
    c = cal(batching=batching)  # batching: 0.1 s slices; a replayed delivery is a packet of its own either way
    dt, per_replay = (c.flush_interval_s, CPD + CPP) if batching else (SLICE_S, CPD + CPP)
    run = read_run(simulate(c, workload(True), tmp_path, seed=3))
    on, off = run.events, read_run(simulate(c, workload(False), tmp_path, seed=3)).events
    k_on, k_off = on["kind"].astype(str), off["kind"].astype(str)
    reconnects = int((k_on == "connect_ok").sum()) - 40
    assert reconnects == int((k_off == "connect_ok").sum()) - 40 >= 25  # the same churn in both
    replayed = int((k_on == "recovered").sum())
    assert not (k_off == "recovered").any() and not k_on.isin(["recovery_fail"]).any()
    # the replay is the only extra work: exactly its deliveries' cost (the loop is idle at the sample)
    assert last_cpu(on) - last_cpu(off) == pytest.approx(replayed * per_replay, rel=1e-9)
    # and what was replayed is what a client misses of its company's chats: from the start of the
    # slice it left in (half a slice before it left, on average) until it is back
    away = workload(True).churn_away_s + dt / 2
    # while it is away it sends nothing itself, nor do the others away (2 reconnects/s, half in its company)
    live_share = (20 - 1 - 2 * away / 2) / 20
    expected = reconnects * CHAT_RATE * away * live_share
    assert replayed == pytest.approx(expected, rel=0.2)
    rec = on[k_on == "recovered"]
    assert (rec["latency_s"] > 0).all() and (rec["latency_s"] < away + dt).all()
    row = benchmark_row(on, run.manifest)
    assert row["recovered"] == replayed and row["pushes"] == int((k_on == "push").sum())


@pytest.mark.parametrize(
    ("bounds", "reason"),
    [({"recovery_max_events": 2}, "overrun"), ({"recovery_window_s": 0.1}, "too_old")],
)
def test_a_reconnect_past_the_buffer_replays_nothing(tmp_path, bounds, reason):
    df = read_run(simulate(cal(**bounds), workload(True), tmp_path, seed=3)).events
    kinds = df["kind"].astype(str)
    fails = df[kinds == "recovery_fail"]
    assert len(fails) >= 10 and set(fails["name"].astype(str)) == {reason}
    reconnects = int((kinds == "connect_ok").sum()) - 40
    if reason == "too_old":  # only reconnects that missed nothing older than the window are replayed
        assert (df[kinds == "recovered"]["latency_s"] < 0.1 + 0.05).all()
    else:  # only reconnects that missed at most 2 are replayed
        assert int((kinds == "recovered").sum()) <= 2 * (reconnects - len(fails))


def test_a_server_without_recovery_replays_nothing(tmp_path):
    df = read_run(simulate(cal(recovery_max_events=0), workload(True), tmp_path, seed=3)).events
    assert not df["kind"].astype(str).isin(["recovered", "recovery_fail"]).any()


def test_calibration_takes_the_replay_bounds_from_a_recovering_server(tmp_path):
    src = REFERENCE_RUNS[0].parent
    shutil.copytree(src, tmp_path / src.name)
    run = read_run(tmp_path / src.name)
    assert calibrate([run]).recovery_max_events == 0  # recorded before recovery existed: replays nothing
    run.manifest.server.toggles["recovery"] = True
    with pytest.raises(ValueError, match="records no server setting recovery_window_s, recovery_max_events"):
        calibrate([run])
    run.manifest.server.settings |= {"recovery_window_s": 60.0, "recovery_max_events": 500}
    fit = calibrate([run])
    assert (fit.recovery_window_s, fit.recovery_max_events) == (60.0, 500)
