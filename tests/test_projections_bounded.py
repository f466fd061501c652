"""The bounded-memory projections (eventlog.scan) give the numbers the whole-DataFrame ones gave.

The oracle is tests/legacy_projections.py, the projections as they were before they scanned parts
(the whole run read into pandas). Percentiles, counts and step windows must agree exactly; sums
whose float order changed (Little's law terms) within 1e-9 relative. Each comparison runs with the
default batch size and with batches of 1000 rows, so a run spans many batches and parts.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import eventlog.scan
from eventlog import read_events, read_run
from eventlog.checks import littles_law, self_checks
from eventlog.projections import benchmark_row, step_table, steps, timeseries, window_stats
from model import Calibration, Workload, simulate
from tests import legacy_projections as legacy

REFERENCE = sorted((Path(__file__).parent.parent / "notebooks/data/reference/runs").glob("*/manifest.json"))


def same(a: object, b: object, rel: float = 0.0) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, float | int | np.number) and isinstance(b, float | int | np.number) and rel:
        return math.isclose(float(a), float(b), rel_tol=rel, abs_tol=1e-12)
    return a == b


def assert_same_row(new: dict, old: dict) -> None:
    assert new.keys() == old.keys()
    differ = {k: (new[k], old[k]) for k in old if not same(new[k], old[k])}
    assert not differ, differ


@pytest.fixture(params=[None, 1000], ids=["default batches", "1000-row batches"])
def batch_rows(request, monkeypatch):
    if request.param:
        monkeypatch.setattr(eventlog.scan, "BATCH_ROWS", request.param)
    return request.param


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> Path:
    """A small simulated ramp: two steps, chat fan-out over two nodes, churn (disconnects mid-run)."""
    cal = Calibration.model_validate_json(
        (Path(__file__).parent.parent / "notebooks/data/reference/calibration-baseline.json").read_text()
    )
    wl = Workload(
        steps=[{"connections": 150, "hold_s": 12}, {"connections": 300, "hold_s": 12}],
        events_per_second=300,
        mix={"echo": 0.9, "chat": 0.1},
        churn_per_s=2.0,
    )
    return simulate(cal, wl, tmp_path_factory.mktemp("sim"), seed=5, nodes=2)


def compare_all(run_dir: Path) -> None:
    run = read_run(run_dir)
    df = read_events(run_dir)
    m = run.manifest
    assert_same_row(dict(benchmark_row(run, m)), dict(legacy.benchmark_row(df, m)))
    pd.testing.assert_frame_equal(
        step_table(run, legacy.SLO.from_manifest(m)), legacy.step_table(df, legacy.SLO.from_manifest(m))
    )
    pd.testing.assert_frame_equal(steps(run), legacy.steps(df))
    pd.testing.assert_frame_equal(timeseries(run), legacy.timeseries(df), check_dtype=False)
    pd.testing.assert_frame_equal(timeseries(run, 5.0), legacy.timeseries(df, 5.0), check_dtype=False)
    st = legacy.steps(df)
    for t0, t1 in zip(st["window_start"], st["end"], strict=True):
        assert_same_row(window_stats(run, t0, t1), legacy.window_stats(df, t0, t1))
        new, old = littles_law(run, t0, t1), legacy.littles_law(df, t0, t1)
        assert all(same(new[k], old[k], rel=1e-9) for k in old), (new, old)
    # a DataFrame in memory takes the same path as the parts on disk
    assert_same_row(dict(benchmark_row(df, m)), dict(legacy.benchmark_row(df, m)))
    new_checks, old_checks = self_checks(run, m), legacy.self_checks(df, m)
    assert new_checks == old_checks


@pytest.mark.parametrize("manifest", REFERENCE, ids=[p.parent.name for p in REFERENCE])
def test_reference_runs_project_as_before(manifest, batch_rows):
    compare_all(manifest.parent)


def test_a_simulated_run_projects_as_before(simulated, batch_rows):
    compare_all(simulated)


def test_a_run_is_read_lazily_and_scanned_once_per_projection(simulated):
    run = read_run(simulated)
    benchmark_row(run, run.manifest)
    assert run.loaded is None  # projected from its parts: the rows were never gathered in memory
    assert run.events is run.events  # read once when asked for
