"""The model's log in bounded memory: parts flushed as it goes, and the aggregated logging modes.

Stated errors against ``log: full`` on the same seed (the simulation is the same; only what is
logged differs):

- ``histograms``: sends, acks, pushes and errors exact; latency percentiles within 2 % (a merged
  row sits at the mean of its ~1.6 % latency bucket); rates within 0.5 % (a merged row's time is
  the mean of its 0.25 s slice of send times, so a window's edge can move a row across it).
- ``sampled``: the event rows of one connection in 10, each weighing 10: counts within 3 %,
  latency percentiles within 15 % at 1 000 connections (a sample's error; it shrinks with more
  connections).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from eventlog import read_events, read_run
from eventlog.projections import benchmark_row
from lab.cli import main
from model import Calibration, Workload, simulate
from model.sim import Simulation

CAL = Path(__file__).parent.parent / "notebooks/data/reference/calibration-baseline.json"
PERCENTILES = ("p50_ms", "p95_ms", "p99_ms", "ack_p95_ms", "push_p95_ms")
RATES = ("throughput_eps", "deliveries_per_s")
COUNTS = ("sends", "acks", "pushes", "errors")


def calibration() -> Calibration:
    return Calibration.model_validate_json(CAL.read_text())


def workload(connections: int = 1000, hold_s: float = 40.0) -> Workload:
    return Workload(
        steps=[{"connections": connections, "hold_s": hold_s}],
        events_per_second=float(connections),
        mix={"echo": 0.99, "chat": 0.01},
    )


def test_flushed_parts_hold_the_same_rows(tmp_path):
    """A simulation that hands its rows to a sink every 1000 rows logs what one holding them all does."""
    cal, wl = calibration(), workload(300, 10.0)
    whole = Simulation(cal, wl, seed=2, nodes=2).run()
    parts: list[list[np.ndarray]] = []
    sim = Simulation(cal, wl, seed=2, nodes=2, sink=parts.append)
    sim.rows.flush_rows = 1000
    parts.append(sim.run())
    assert len(parts) > 5
    for whole_col, part_cols in zip(whole, zip(*parts, strict=True), strict=True):
        np.testing.assert_array_equal(whole_col, np.concatenate(part_cols))


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("modes")
    cal, wl = calibration(), workload()
    found = {}
    for log in ("full", "sampled", "histograms"):
        run = read_run(simulate(cal, wl, out, seed=3, nodes=2, extra={"log": log}))
        assert run.manifest.model_dump()["log"] == log
        found[log] = {**benchmark_row(run, run.manifest), "rows": len(read_events(run.path))}
    return found


def close(a: float, b: float, rel: float) -> bool:
    return math.isclose(a, b, rel_tol=rel) or (math.isnan(a) and math.isnan(b))


def test_histograms_give_the_benchmark_row_within_the_stated_error(rows):
    full, hist = rows["full"], rows["histograms"]
    assert hist["rows"] < full["rows"] / 4
    assert {k: hist[k] for k in COUNTS} == {k: full[k] for k in COUNTS}
    for k in PERCENTILES:
        assert close(hist[k], full[k], 0.02), (k, hist[k], full[k])
    for k in RATES:
        assert close(hist[k], full[k], 0.005), (k, hist[k], full[k])
    assert hist["mean_cpu_pct"] == full["mean_cpu_pct"]  # samples are logged whole
    assert hist["max_stable_connections"] == full["max_stable_connections"]


def test_sampled_gives_the_benchmark_row_within_the_stated_error(rows):
    full, sampled = rows["full"], rows["sampled"]
    assert sampled["rows"] < full["rows"] / 4
    for k in COUNTS[:3]:
        assert close(sampled[k], full[k], 0.03), (k, sampled[k], full[k])
    for k in PERCENTILES:
        assert close(sampled[k], full[k], 0.15), (k, sampled[k], full[k])


def test_cli_log_option(tmp_path, capsys):
    args = ["simulate", "--calibration", str(CAL), "--connections", "200", "--events-per-connection", "1"]
    args += ["--duration", "10", "--replications", "1", "--out", str(tmp_path), "--log", "histograms"]
    assert main(args) == 0
    (run_dir,) = [p for p in tmp_path.iterdir() if (p / "manifest.json").exists()]
    assert read_run(run_dir).manifest.model_dump()["log"] == "histograms"
    assert "p95_ms" in capsys.readouterr().out


def test_an_unknown_log_mode_is_one_clear_error():
    with pytest.raises(ValueError, match="log 'everything': one of full, sampled, histograms"):
        Simulation(calibration(), workload(10, 1.0), log="everything")
