"""Memory of simulating and projecting big runs (issue 15): benchmarks, run with ``-m benchmark -s``.

Each figure is measured in a fresh process (its peak RSS is ``ru_maxrss``), so the simulation, the
bounded-memory projections and the old whole-DataFrame reader (tests/legacy_projections.py, for the
ratio) do not share a heap. Run each under ``flock /tmp/caplab-load.lock`` on a shared machine.

- 10 000 connections x 600 s at 1 event/s each, 1 % chat, 10 nodes (``log: full``): simulate and
  project under 2 GiB each, and both together under 30 s (wall clock: a busy machine can miss it);
- 100 000 connections x 600 s at 0.5 events/s each (``log: histograms``), 50 nodes: simulate and
  project in bounded memory (under 2 GiB);
- a synthesized 100 M-row log (written with EventWriter, 5 M rows a part) projected under 2 GiB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.benchmark, pytest.mark.timeout(3600)]

ROOT = Path(__file__).parent.parent
GIB = 1024.0
FIGURES = Path(os.environ.get("CAPLAB_BENCH_FIGURES", "/tmp/caplab-bench-memory.json"))

PRELUDE = """
import json, resource, time, sys
sys.path.insert(0, {root!r})
started = time.perf_counter()
out = {{}}
"""
EPILOGUE = """
out["seconds"] = round(time.perf_counter() - started, 1)
usage = resource.getrusage(resource.RUSAGE_SELF)
out["cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 1)  # what an idle machine would take, about
out["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)
print("FIGURE " + json.dumps(out))
"""

SIMULATE = """
from pathlib import Path
from model import Calibration, Workload, simulate
cal = Calibration.model_validate_json(Path({cal!r}).read_text())
wl = Workload(steps=[{{"connections": {conns}, "hold_s": {hold}}}], events_per_second={conns} * {rate},
              mix={{"echo": 0.99, "chat": 0.01}}, companies={companies}, connect_rate=1000)
d = simulate(cal, wl, {out!r}, seed=1, nodes={nodes}, name="bench", extra={{"log": {log!r}}})
out["run"] = str(d)
"""
PROJECT_NEW = """
from eventlog import read_run, benchmark_row, step_table, timeseries
run = read_run({run!r})
row = benchmark_row(run, run.manifest)
step_table(run); timeseries(run)
out["rows"] = int(run.manifest.model_dump().get("rows") or 0)
out["row"] = {{k: row[k] for k in ("p95_ms", "throughput_eps", "acks", "pushes")}}
"""
PROJECT_OLD = """
from eventlog import read_events, read_manifest
from tests import legacy_projections as legacy
df = read_events({run!r}); m = read_manifest({run!r})
row = legacy.benchmark_row(df, m)
legacy.step_table(df); legacy.timeseries(df)
out["row"] = {{k: row[k] for k in ("p95_ms", "throughput_eps", "acks", "pushes")}}
"""


def measure(code: str, timeout: float = 1800) -> dict:
    script = PRELUDE.format(root=str(ROOT)) + code + EPILOGUE
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    (line,) = [ln for ln in res.stdout.splitlines() if ln.startswith("FIGURE ")]
    return json.loads(line[len("FIGURE ") :])


def record(name: str, figures: dict) -> None:
    load = os.getloadavg()
    figures["load_average"] = [round(x, 2) for x in load]
    known = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    known[name] = figures
    FIGURES.write_text(json.dumps(known, indent=2))
    print(f"\n{name}: {json.dumps(figures)}")


def simulate_and_project(
    tmp_path: Path, conns: int, rate: float, nodes: int, log: str, old: bool, hold: float = 600.0
) -> dict:
    from eventlog import companies_needed

    cal = str(ROOT / "notebooks/data/reference/calibration-baseline.json")
    sim = measure(
        SIMULATE.format(
            cal=cal,
            conns=conns,
            hold=hold,
            rate=rate,
            companies=companies_needed(conns),
            out=str(tmp_path),
            nodes=nodes,
            log=log,
        )
    )
    new = measure(PROJECT_NEW.format(run=sim["run"]))
    figures = {"simulate": sim, "project": new}
    if old:
        figures["project_old_reader"] = measure(PROJECT_OLD.format(run=sim["run"]))
        figures["rss_ratio_old_to_new"] = round(figures["project_old_reader"]["peak_rss_mb"] / new["peak_rss_mb"], 1)
        assert figures["project_old_reader"]["row"] == new["row"]
    return figures


def test_10k_connections_600s_full_log(tmp_path):
    figures = simulate_and_project(tmp_path, 10_000, 1.0, 10, "full", old=True)
    record("10k x 600 s, 1 % chat, log full", figures)
    assert figures["simulate"]["peak_rss_mb"] < 2 * GIB
    assert figures["project"]["peak_rss_mb"] < 2 * GIB
    assert figures["simulate"]["seconds"] + figures["project"]["seconds"] < 30  # simulated and projected


def test_100k_connections_600s_histograms(tmp_path):
    """CAPLAB_BENCH_100K_HOLD_S shortens the hold (the simulation's CPU time grows with it, its memory
    does not: the figure says which hold ran)."""
    hold = float(os.environ.get("CAPLAB_BENCH_100K_HOLD_S", "600"))
    figures = simulate_and_project(tmp_path, 100_000, 0.5, 50, "histograms", old=False, hold=hold)
    record(f"100k x {hold:g} s at 0.5 events/s, log histograms", figures)
    assert figures["simulate"]["peak_rss_mb"] < 2 * GIB
    assert figures["project"]["peak_rss_mb"] < 2 * GIB


SYNTHESIZE = """
import numpy as np
from eventlog import EventWriter, create_run, finish_run
from eventlog.schema import KIND_INDEX as K
run_dir, _ = create_run({out!r}, "simulated", "synthetic-100m")
w = EventWriter(run_dir, "synth", t0=0.0)
rng = np.random.default_rng(1)
names = ["", "echo", "step", "hold", "end"]
conns, span, chunk, total = 20_000, 1000.0, 5_000_000, {rows}
# markers: one step of {{conns}} connections, held from 10 s, ending at the span
w.columns(np.array([0.0, 10.0, span]), np.array([K["sample"]] * 3), np.full(3, -1), np.full(3, -1),
          np.array([2, 3, 4]), np.full(3, np.nan), np.zeros(3), np.array([conns, conns, 0.0]), names)
t = np.sort(rng.uniform(0, 10, conns))
for kind in ("connect_start", "connect_ok"):
    w.columns(t, np.full(conns, K[kind]), np.arange(conns), np.full(conns, -1), np.zeros(conns, int),
              np.full(conns, np.nan), np.zeros(conns), np.full(conns, np.nan), names)
written = 3 + 2 * conns
while written < total:
    half = (min(chunk, total - written) + 1) // 2
    n = 2 * half
    sent = rng.uniform(10, span, half)
    lat = rng.lognormal(-5, 0.5, half)
    tt = np.concatenate([sent, sent + lat])
    kind = np.concatenate([np.full(half, K["send"]), np.full(n - half, K["ack"])])
    lats = np.concatenate([np.zeros(half), lat])
    w.columns(tt, kind, rng.integers(0, conns, n), np.full(n, -1), np.ones(n, int), lats, np.full(n, 20),
              np.full(n, np.nan), names)
    written += n
w.close()
finish_run(run_dir, "complete", rows=written)
out["run"] = str(run_dir)
out["rows"] = written
"""


def test_100m_rows_projected_under_2_gib(tmp_path):
    made = measure(SYNTHESIZE.format(out=str(tmp_path), rows=100_000_000), timeout=3600)
    new = measure(PROJECT_NEW.format(run=made["run"]), timeout=3600)
    figures = {"synthesize": made, "project": new}
    record("100 M rows, synthesized", figures)
    assert new["peak_rss_mb"] < 2 * GIB
