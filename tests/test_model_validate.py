"""Noise-aware validation (issue 11): several measured passes, judged by their mean with its spread."""

from __future__ import annotations

import numpy as np
import pytest

from eventlog import read_run
from model import Calibration, Workload, simulate
from model.validate import _row, validate

TRUTH = Calibration(cpu_per_event_s=0.0008, cpu_idle_s_per_s=0.02, memory_base_bytes=5e7, heartbeat_s=1e9)


def passes(tmp_path, seeds=(11, 12, 13)) -> list:
    wl = Workload(
        steps=[{"connections": 20, "hold_s": 15}, {"connections": 20, "hold_s": 15, "events_per_second": 1500}],
        events_per_second=300,
        mix={"echo": 1.0},
        connect_rate=1000,
    )
    runs = [read_run(simulate(TRUTH, wl, tmp_path / "measured", seed=s, extra={"label": "m"})) for s in seeds]
    for r in runs:  # stand-ins for measured passes: the validation reads them as measured runs
        r.manifest.source = "measured"
    return runs


def test_validation_judges_the_mean_of_the_passes_and_states_their_spread(tmp_path):
    v = validate(TRUTH, passes(tmp_path), tmp_path / "sim", replications=3, seed=1)
    cpu = v[v["metric"] == "cpu_pct"]
    assert (cpu["passes"] == 3).all() and cpu["spread_pct"].notna().all() and (cpu["noise_pct"] > 0).all()
    assert (cpu["verdict"] == "within band").all()  # the same model, other seeds
    tp = v[v["metric"] == "throughput_eps"].set_index("step")
    # 300 events/s at 0.8 ms: 24 % busy, open loop: throughput is the offered rate, nothing to judge
    assert tp.loc[0, "verdict"] == "not measurable"
    # 1500 events/s at 0.8 ms is past saturation: throughput says what the loop can do, and is judged
    assert tp.loc[1, "verdict"] in ("within band", "within measurement noise")
    assert v[v["metric"] == "p95_ms"].set_index("step").loc[1, "verdict"] == "n/a (saturated)"
    sat = v[v["metric"] == "saturation_eps"].iloc[0]
    assert sat["passes"] == 3 and np.isfinite(sat["simulated_ci_pct"])


def test_a_miss_inside_the_measured_noise_is_said_to_be_so_and_the_band_unresolvable():
    row = _row(0, 100, "cpu_pct", np.array([100.0, 140.0, 60.0]), np.array([125.0]), True, noise=0.99)
    assert row["verdict"] == "within measurement noise" and not row["band_resolvable"]
    assert row["measured"] == pytest.approx(100.0) and row["spread_pct"] == pytest.approx(40.0)
    row = _row(0, 100, "cpu_pct", np.array([100.0, 101.0, 99.0]), np.array([125.0]), True, noise=0.025)
    assert row["verdict"] == "outside band" and row["band_resolvable"]


def test_passes_of_different_loads_are_refused(tmp_path):
    a = passes(tmp_path, seeds=(1,))[0]
    wl = Workload(steps=[{"connections": 5, "hold_s": 5}], events_per_second=10, mix={"echo": 1.0})
    b = read_run(simulate(TRUTH, wl, tmp_path / "other", seed=2))
    with pytest.raises(ValueError, match="not passes of one load"):
        validate(TRUTH, [a, b], tmp_path / "sim", replications=1)


def test_p95_is_not_judged_where_the_generator_fell_behind_its_schedule(tmp_path):
    """Where the measuring generator's send lag p99 reached the lab's limit (its own check's 50 ms),
    the step's latencies hold the generator's delay: p95 there says nothing about the server."""
    runs = passes(tmp_path, seeds=(11, 12))
    first = runs[0].events
    sends = (first["kind"] == "send") & (first["t"] < 10)  # the first step of one pass: sent 0.2 s late
    first.loc[sends, "latency_s"] = 0.2
    v = validate(TRUTH, runs, tmp_path / "sim", replications=2, seed=1).set_index(["metric", "step"])
    assert v.loc[("p95_ms", 0), "verdict"] == "n/a (generator-bound)"
    assert v.loc[("cpu_pct", 0), "verdict"] == "within band"  # the server's figures still count


def test_validation_simulates_the_measuring_clients_loop(tmp_path):
    """A measured run's latencies hold the generator's own reading; validation predicts them with it
    (a capacity answer does not). 1 ms per message at 300 acks/s keeps the client 60 % busy."""
    runs = passes(tmp_path, seeds=(11,))
    slow = TRUTH.model_copy(update={"client_cpu_per_message_s": 1e-3})
    p95 = [
        validate(cal, runs, tmp_path / name, replications=1, seed=1).set_index(["metric", "step"]).loc[("p95_ms", 0)]
        for cal, name in ((TRUTH, "plain"), (slow, "client"))
    ]
    assert p95[1]["simulated"] > p95[0]["simulated"] + 1.0
