"""The model: analytic oracles, exact traces, properties, determinism, calibration recovery."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventlog import read_run, steps
from eventlog.checks import littles_law
from eventlog.manifest import ServerRecord
from model import Calibration, Workload, confidence, replicate, simulate
from model.calibrate import calibrate
from model.sim import Simulation
from model.usl import USL_MAX_PEAK_BEYOND, USL_MIN_R2, fit_usl, informative, usl, usl_text
from tests.measured import SERVER_SETTINGS

QUIET = {"heartbeat_s": 1e9, "cpu_per_connect_s": 0.0}  # no pings, free connects: one queue only


def mean_sojourn(run_dir) -> float:
    df = read_run(run_dir).events
    st = steps(df)
    acks = df[df["kind"] == "ack"]
    sent = acks["t"] - acks["latency_s"]
    keep = (sent >= st["window_start"].iloc[-1]) & (sent < st["end"].iloc[-1])
    return float(acks["latency_s"][keep].mean())


def queue_workload(lam: float, hold: float = 400.0, conns: int = 50) -> Workload:
    return Workload(
        steps=[{"connections": conns, "hold_s": hold}],
        events_per_second=lam,
        mix={"echo": 1.0},
        connect_rate=1e6,
        ack_timeout_s=1e9,
    )


@pytest.mark.parametrize(("cv", "name"), [(1.0, "M/M/1"), (0.0, "M/D/1"), (2.0, "M/G/1 (cv 2)")])
def test_single_queue_matches_pollaczek_khinchine(tmp_path, cv, name):
    lam, s = 50.0, 0.010  # rho = 0.5
    cal = Calibration(cpu_per_event_s=s, service_cv=cv, **QUIET)
    runs = replicate(cal, queue_workload(lam), tmp_path, replications=6, seed=11, workers=2)
    mean, half = confidence([mean_sojourn(r) for r in runs], level=0.99)
    rho = lam * s
    es2 = s * s * (1 + cv * cv)
    theory = s + lam * es2 / (2 * (1 - rho))  # P-K mean wait + service
    assert abs(mean - theory) <= half, f"{name}: simulated {mean:.5f} +- {half:.5f}, theory {theory:.5f}"


def test_exact_trace_without_queueing(tmp_path):
    wl = Workload(
        steps=[{"connections": 1, "hold_s": 5}], events_per_second=2, mix={"echo": 1}, arrival="fixed", connect_rate=1e6
    )
    cal = Calibration(cpu_per_event_s=0.1, service_cv=0, **QUIET)
    df = read_run(simulate(cal, wl, tmp_path, seed=3)).events
    sends = df[df["kind"] == "send"]["t"].to_numpy()
    acks = df[df["kind"] == "ack"]["t"].to_numpy()
    assert np.allclose(np.diff(sends), 0.5)  # one connection at 2 events/s, fixed schedule
    assert np.allclose(acks, sends + 0.1)  # period 0.5 > service 0.1: nobody waits


def test_exact_trace_with_a_growing_queue(tmp_path):
    wl = Workload(
        steps=[{"connections": 1, "hold_s": 3}],
        events_per_second=2,
        mix={"echo": 1},
        arrival="fixed",
        connect_rate=1e6,
        ack_timeout_s=1e9,
    )
    cal = Calibration(cpu_per_event_s=0.8, service_cv=0, **QUIET)
    df = read_run(simulate(cal, wl, tmp_path, seed=3)).events
    sends = df[df["kind"] == "send"]["t"].to_numpy()
    acks = np.sort(df[df["kind"] == "ack"]["t"].to_numpy())
    assert np.allclose(acks, sends[0] + 0.8 * np.arange(1, sends.size + 1))  # back to back from the first


def test_same_seed_same_log_and_other_seed_differs():
    cal = Calibration(cpu_per_event_s=0.002, cpu_per_delivery_s=1e-5, memory_per_connection_bytes=2e4)
    wl = Workload(steps=[{"connections": 40, "hold_s": 5}], events_per_second=200, mix={"echo": 0.8, "chat": 0.2})
    a, b, c = (Simulation(cal, wl, s).run() for s in (7, 7, 8))
    assert all(np.array_equal(x, y, equal_nan=True) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lam=st.floats(5, 300),
    s=st.floats(1e-4, 0.02),
    cv=st.floats(0, 2),
    conns=st.integers(1, 60),
    chat=st.floats(0, 0.5),
    batching=st.booleans(),
)
def test_conservation_and_utilisation(lam, s, cv, conns, chat, batching):
    cal = Calibration(
        cpu_per_event_s=s, service_cv=cv, cpu_per_delivery_s=s / 10, batching=batching, cpu_per_packet_s=s / 20, **QUIET
    )
    wl = Workload(
        steps=[{"connections": conns, "hold_s": 8}],
        events_per_second=lam,
        mix={"echo": 1 - chat, "chat": chat},
        connect_rate=1e6,
        ack_timeout_s=1e9,
    )
    sim = Simulation(cal, wl, seed=5)
    _t, kind, *_ = sim.run()
    from eventlog.schema import KIND_INDEX as K

    n_send, n_ack = (kind == K["send"]).sum(), (kind == K["ack"]).sum()
    assert n_send == n_ack == sim.events_in  # every event sent is answered once, none invented
    busy = sum(st.work for st in sim.nodes)
    horizon = max(sim.nodes[0].free_at, wl.duration_s)
    assert busy <= horizon + 1e-9  # one loop cannot work more than wall time


def test_littles_law_on_a_simulated_log(tmp_path):
    cal = Calibration(cpu_per_event_s=0.004, **QUIET)
    df = read_run(simulate(cal, queue_workload(150, hold=120), tmp_path, seed=2)).events
    st = steps(df)
    ll = littles_law(df, st["window_start"].iloc[-1], st["end"].iloc[-1])
    assert ll["L"] == pytest.approx(ll["lambda_W"], rel=0.02)


def test_calibration_recovers_known_parameters(tmp_path):
    truth = Calibration(
        profile="synthetic",
        cpu_per_event_s=0.0004,
        cpu_per_delivery_s=0.00003,
        cpu_per_connect_s=0.002,
        cpu_idle_s_per_s=0.01,
        memory_base_bytes=5e7,
        memory_per_connection_bytes=25_000,
        base_latency_s=0.002,
        heartbeat_s=1e9,
    )
    wl = Workload(
        steps=[{"connections": n, "hold_s": 20} for n in (50, 150, 300)],
        events_per_second=600,
        mix={"echo": 0.9, "chat": 0.1},
        companies=3,
        connect_rate=50,
    )
    run = read_run(simulate(truth, wl, tmp_path, seed=4, extra={"label": "synthetic"}))
    run.manifest.server = ServerRecord(settings=SERVER_SETTINGS)
    fit = calibrate([run])
    assert fit.cpu_per_event_s == pytest.approx(truth.cpu_per_event_s, rel=0.10)
    assert fit.cpu_per_delivery_s == pytest.approx(truth.cpu_per_delivery_s, rel=0.10)
    assert fit.cpu_idle_s_per_s == pytest.approx(truth.cpu_idle_s_per_s, abs=0.01)
    assert fit.memory_per_connection_bytes == pytest.approx(truth.memory_per_connection_bytes, rel=0.01)
    assert fit.memory_base_bytes == pytest.approx(truth.memory_base_bytes, rel=0.01)
    assert fit.base_latency_s == pytest.approx(truth.base_latency_s, abs=0.001)
    assert fit.fit["cpu"]["r2"] > 0.95
    assert fit.machine_cores == os.cpu_count()  # from the manifest: the cores a measurement shared


def test_usl_fit_recovers_its_parameters():
    n = np.array([1, 2, 4, 8, 16, 32, 64])
    fit = fit_usl(n, usl(n, 100.0, 0.05, 0.002))
    assert fit["sigma"] == pytest.approx(0.05, rel=0.01) and fit["kappa"] == pytest.approx(0.002, rel=0.01)
    with pytest.raises(ValueError, match="three"):
        fit_usl([1, 2], [1, 2])


def test_usl_fit_on_an_open_loop_ramp_is_not_informative():
    """Throughput that follows the offered rate (an open-loop ramp below saturation) gives a fit whose
    peak lies far beyond the points: it is shown as a reason, never as numbers."""
    n = np.array([50, 100, 200, 200])
    ramp = fit_usl(n, np.array([25.0, 50.0, 100.0, 400.0]))  # the last step raised the rate, not the connections
    verdict = informative(ramp)
    assert isinstance(verdict, str) and f"< {USL_MIN_R2:g}" in verdict and "the highest load tried (200" in verdict
    assert usl_text(ramp).startswith("not informative: R2 ")
    assert "peak at" not in usl_text(ramp).split(";")[0]
    n = np.array([1, 2, 4, 8, 16, 32, 64])
    good = fit_usl(n, usl(n, 100.0, 0.05, 0.002))
    assert informative(good) is good and usl_text(good).startswith("sigma 0.05, kappa 0.002, peak at 21.8 connections")
    # a good fit whose peak lies beyond 10x the loads tried is not shown either
    far = fit_usl(n, usl(n, 100.0, 0.001, 1e-7))
    assert far["r2"] > USL_MIN_R2 and far["peak_load"] > USL_MAX_PEAK_BEYOND * 64
    assert "x the highest load tried (64" in str(informative(far))
    assert informative({"error": "needs three points"}) == "the fit failed: needs three points"


def test_redis_fanout_is_served_in_fifo_order_across_nodes(tmp_path):
    """At light load a room event reaches the other node's members within service + Redis round trip,
    not a slice later (the artifact a one-pass slice would have)."""
    cal = Calibration(
        cpu_per_event_s=1e-4, cpu_per_delivery_s=1e-5, cpu_per_publish_s=5e-5, redis_rtt_s=5e-4, service_cv=0, **QUIET
    )
    wl = Workload(
        steps=[{"connections": 40, "hold_s": 20}],
        events_per_second=20,
        mix={"chat": 1.0},
        companies=1,
        connect_rate=1e6,
        ack_timeout_s=1e9,
    )
    df = read_run(simulate(cal, wl, tmp_path, seed=1, nodes=2)).events
    push = df[df["kind"] == "push"]["latency_s"]
    assert len(push) == (df["kind"] == "send").sum() * 40  # every member on both nodes got every chat
    assert push.max() < 0.005
