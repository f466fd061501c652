"""Simulations on a Dask cluster give the same runs as the local process pool (issue 15).

A real ``distributed.LocalCluster``: a scheduler and two worker processes over loopback TCP, shut down
after the module. Each comparison runs the same seeds both ways and compares the event logs and the
benchmark rows exactly.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from ast import literal_eval
from io import StringIO
from pathlib import Path

import pandas as pd
import pytest
import yaml

from eventlog import read_run
from lab.errors import UsageError
from lab.executor import cluster_address, runs_root, simulations_on
from lab.scenario import ScenarioError, parse_scenario
from model import Calibration, DaskExecutor, LocalExecutor, Point, Workload, replicate, replicate_points
from model.executor import check_address, probe

ROOT = Path(__file__).resolve().parent.parent
CALIBRATION = ROOT / "notebooks/data/reference/calibration-optimized.json"


@pytest.fixture(scope="module")
def cluster():
    """A scheduler and 2 single-threaded worker processes on loopback; its address."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address="127.0.0.1:0", host="127.0.0.1"
    ) as lc:
        yield lc.scheduler_address


def small_workload(connections: int = 120, seconds: float = 4.0) -> Workload:
    return Workload.model_validate(
        {
            "steps": [{"connections": connections, "hold_s": seconds}],
            "events_per_second": 0.5 * connections,
            "mix": {"echo": 0.9, "chat": 0.1},
            "companies": 4,
        }
    )


def same_row(a: dict, b: dict) -> bool:
    """Every figure equal (NaN equals NaN here); the run ids differ, as every run's does."""
    a, b = ({k: v for k, v in r.items() if k != "run_id"} for r in (a, b))
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_addresses_are_checked_in_one_line():
    assert check_address("tcp://127.0.0.1:8786") == "tcp://127.0.0.1:8786"
    assert check_address(" tls://scheduler.example:8786 ") == "tls://scheduler.example:8786"
    assert check_address("local") == "local"
    for bad, why in [
        ("127.0.0.1:8786", "is not a Dask scheduler address"),
        ("http://host:8786", "is not a Dask scheduler address"),
        ("tcp://host", "has no valid port"),
        ("tcp://host:99999", "has no valid port"),
        ("tcp://:8786", "is not a Dask scheduler address"),
    ]:
        with pytest.raises(ValueError, match=why) as err:
            check_address(bad)
        assert "expected tcp://HOST:PORT" in str(err.value) and "\n" not in str(err.value)


def test_cluster_address_precedence():
    env = {"DASK_SCHEDULER_ADDRESS": "tcp://env:1"}
    assert cluster_address(None, None, {}) is None
    assert cluster_address(None, "tcp://scenario:1", {}) == "tcp://scenario:1"
    assert cluster_address(None, "tcp://scenario:1", env) == "tcp://env:1"
    assert cluster_address("tcp://flag:1", "tcp://scenario:1", env) == "tcp://flag:1"
    assert cluster_address("local", None, env) is None  # the flag forces the local pool
    with pytest.raises(UsageError, match=r"^DASK_SCHEDULER_ADDRESS: 'nonsense' is not a Dask scheduler address"):
        cluster_address(None, None, {"DASK_SCHEDULER_ADDRESS": "nonsense"})


def test_runs_root_takes_paths_and_file_urls_only(tmp_path):
    assert runs_root("runs") == Path("runs")
    assert runs_root(f"file://{tmp_path}") == tmp_path
    for url in ("s3://bucket/runs", "memory://runs"):
        with pytest.raises(UsageError, match="is not supported; mount the shared storage"):
            runs_root(url)


def test_scenario_cluster_is_validated(tmp_path):
    text = (ROOT / "scenarios/what-if.yaml").read_text()
    assert parse_scenario(text + "cluster: tcp://127.0.0.1:8786\n").cluster == "tcp://127.0.0.1:8786"
    with pytest.raises(ScenarioError) as err:
        parse_scenario(text + "cluster: 127.0.0.1:8786\n", "what-if.yaml")
    line = len(text.splitlines()) + 1
    assert str(err.value).startswith(f"what-if.yaml:{line}: cluster: '127.0.0.1:8786' is not a Dask scheduler")


def test_probe_says_what_a_worker_cannot_see(tmp_path):
    (tmp_path / "marker").write_text("x")
    assert probe(str(tmp_path / "marker")) is None
    assert probe(str(tmp_path / "elsewhere")) == f"does not see {tmp_path / 'elsewhere'}"


def test_replications_on_the_cluster_equal_the_local_ones(cluster, tmp_path):
    cal = Calibration.load(CALIBRATION)
    points = [Point(cal, small_workload(), 1, "a"), Point(cal, small_workload(200, 3.0), 2, "b")]
    seen: list[tuple[int, int, str]] = []
    local = replicate_points(points, tmp_path / "local", 2, seed=7, rows=True, executor=LocalExecutor(2))
    with DaskExecutor(cluster, progress=lambda *a: seen.append(a)) as dask:
        remote = replicate_points(points, tmp_path / "dask", 2, seed=7, rows=True, executor=dask)
        worker_pids = set(dask.run_on_workers(os.getpid).values())
    assert [len(r.dirs) for r in remote] == [2, 2] and [len(r.rows) for r in remote] == [2, 2]
    for lo, re in zip(local, remote, strict=True):
        for a, b in zip(lo.rows, re.rows, strict=True):
            assert same_row(dict(a), dict(b))
        for da, db in zip(lo.dirs, re.dirs, strict=True):
            ra, rb = read_run(da), read_run(db)
            pd.testing.assert_frame_equal(ra.events, rb.events, check_exact=True)
            assert (ra.manifest.seed, ra.manifest.nodes) == (rb.manifest.seed, rb.manifest.nodes)
            assert rb.manifest.writers.processes[0].pid in worker_pids  # written on a worker
    # the seeds matter: another seed is another log, so the equality above is not vacuous
    assert not read_run(local[0].dirs[0]).events.equals(read_run(local[0].dirs[1]).events)
    # progress: submitted (0 done), then each of the 4 tasks, with where they ran
    assert [s[:2] for s in seen] == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]
    assert f"the Dask cluster at {cluster} (2 workers; dashboard http://127.0.0.1:" in seen[0][2]


def test_a_failing_task_fails_the_batch_with_its_own_error(cluster, tmp_path):
    (tmp_path / "blocked").write_text("a file where the runs folder should be")
    cal = Calibration.load(CALIBRATION)
    with DaskExecutor(cluster) as dask, pytest.raises(NotADirectoryError):
        replicate(cal, small_workload(), tmp_path / "blocked", 2, executor=dask)


def test_installed_executor_is_used_and_a_dead_scheduler_is_one_line(cluster, tmp_path, monkeypatch, capsys):
    cal = Calibration.load(CALIBRATION)
    with simulations_on(cluster, tmp_path / "runs") as ex:
        assert isinstance(ex, DaskExecutor)
        dirs = replicate(cal, small_workload(), tmp_path / "runs", 1)
    assert dirs[0].is_absolute() and read_run(dirs[0]).manifest.status == "complete"
    err = capsys.readouterr().err
    assert f"simulations run on the Dask cluster at {cluster}" in err and "1/1 simulations done" in err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"tcp://127.0.0.1:{s.getsockname()[1]}"  # bound, never listening: nothing answers
        monkeypatch.setattr("model.executor.CONNECT_TIMEOUT_S", 1.0)
        expected = rf"^cluster {dead}: cannot reach the Dask scheduler: .*; nothing started$"
        with pytest.raises(UsageError, match=expected), simulations_on(dead, tmp_path / "runs"):
            pass


def caplab(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "lab.cli", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=120
    )


def test_caplab_simulate_on_the_cluster_prints_the_same_figures(cluster, tmp_path):
    args = ["simulate", "--calibration", str(CALIBRATION), "--connections", "150", "--rate", "0.5"]
    args += ["--duration", "4", "--replications", "2", "--seed", "3"]
    env = {"DASK_SCHEDULER_ADDRESS": cluster}
    local = caplab(*args, "--out", str(tmp_path / "local"), "--cluster", "local", cwd=tmp_path, env=env)
    remote = caplab(*args, "--out", "dask", cwd=tmp_path, env=env)
    assert local.returncode == 0 and remote.returncode == 0, local.stderr + remote.stderr
    figures = [line for line in local.stdout.splitlines() if not line.startswith("/")]
    assert figures and figures == [line for line in remote.stdout.splitlines() if not line.startswith("/")]
    assert f"on the Dask cluster at {cluster}" in remote.stderr and "2/2 replications done" in remote.stderr
    assert "Dask" not in local.stderr and "2 replications on the local process pool" in local.stderr
    local_runs = [read_run(p) for p in local.stdout.splitlines() if p.startswith("/")]
    remote_dirs = [Path(p) for p in remote.stdout.splitlines() if p.startswith("/")]
    assert all(p.is_relative_to(tmp_path / "dask") for p in remote_dirs)  # the relative --out, made absolute
    by_seed = {read_run(p).manifest.seed: read_run(p).events for p in remote_dirs}
    assert len(local_runs) == len(by_seed) == 2
    for run in local_runs:
        pd.testing.assert_frame_equal(run.events, by_seed[run.manifest.seed], check_exact=True)


def reduced_what_if(tmp_path: Path) -> Path:
    """scenarios/what-if.yaml with tiny durations and a smaller grid, no PDF."""
    sc = yaml.safe_load((ROOT / "scenarios/what-if.yaml").read_text())
    sc["workload"].update(steps=[{"connections": 300, "hold_s": 4}], events_per_second=150)
    sc["simulate"].update(calibration=str(CALIBRATION), duration_s=4)
    sc["sweep"].update(grid={"nodes": [1, 2], "flush_interval_ms": [25, 100]}, target_connections=300)
    sc["report"] = False
    path = tmp_path / "what-if-small.yaml"
    path.write_text(yaml.safe_dump(sc))
    return path


def test_caplab_run_what_if_on_the_cluster_gives_the_local_sweep(cluster, tmp_path):
    scenario = reduced_what_if(tmp_path)
    local = caplab("run", str(scenario), "--runs", "local-runs", "--reports", "local", cwd=tmp_path)
    remote = caplab(
        "run", str(scenario), "--runs", "dask-runs", "--reports", "dask", "--cluster", cluster, cwd=tmp_path
    )
    assert local.returncode == 0 and remote.returncode == 0, local.stderr[-2000:] + remote.stderr[-2000:]
    a, b = (pd.read_csv(tmp_path / side / "what-if/sweep.csv") for side in ("local", "dask"))
    assert len(a) == 4  # the 4 grid points; every figure equal, only the run ids differ
    pd.testing.assert_frame_equal(a.drop(columns="run_ids"), b.drop(columns="run_ids"), check_exact=True)
    for ids_a, ids_b in zip(a["run_ids"], b["run_ids"], strict=True):  # and the runs behind them, row for row
        for run_a, run_b in zip(literal_eval(ids_a), literal_eval(ids_b), strict=True):
            ea, eb = read_run(tmp_path / "local-runs" / run_a).events, read_run(tmp_path / "dask-runs" / run_b).events
            pd.testing.assert_frame_equal(ea, eb, check_exact=True)
    ma = json.loads((tmp_path / "local/what-if/model.json").read_text())
    mb = json.loads((tmp_path / "dask/what-if/model.json").read_text())
    assert ma["sweep"] == mb["sweep"]
    assert f"on the Dask cluster at {cluster} (2 workers; dashboard http://" in remote.stderr
    assert "/8 simulations done" in remote.stderr and "8/8 simulations done" in remote.stderr
    assert "on the local process pool" in local.stderr and "Dask" not in local.stderr
    assert len(list((tmp_path / "dask-runs").iterdir())) == len(list((tmp_path / "local-runs").iterdir())) == 8


def test_capacity_ramps_and_rows_on_the_cluster_equal_the_local_ones(cluster, tmp_path):
    """The 'simulate' kind: the node-capacity ramps and the rows at each connection count."""
    from lab.modelling import simulate_scenario
    from model import using

    simulate = {"calibration": str(CALIBRATION), "connections": [40, 60], "duration_s": 3, "replications": 2}
    workload = {"steps": [{"connections": 60, "hold_s": 3}], "events_per_second": 30, "companies": 2}
    question = "how many connections does one node hold?"
    sc = parse_scenario(
        yaml.safe_dump(
            {"name": "tiny", "question": question, "kind": "simulate", "workload": workload, "simulate": simulate}
        )
    )
    outputs = {}
    for name, executor in (("local", LocalExecutor(1)), ("dask", DaskExecutor(cluster))):
        (tmp_path / name).mkdir()
        with using(executor):
            record = simulate_scenario(sc, [], tmp_path / f"{name}-runs", tmp_path / name)
        if isinstance(executor, DaskExecutor):
            executor.close()
        outputs[name] = record, (tmp_path / name / "capacity.csv").read_text()
        # 2 ramps, then each deployment tried (the counts and -/+20 % of them, on 1 node) x 2 replications
        tried = {
            (c, k) for rec in record["capacity"].values() for c, ks in rec["deployments_tried"].items() for k in ks
        }
        assert tried == {("32", "1"), ("40", "1"), ("48", "1"), ("60", "1"), ("72", "1")}
        assert len(list((tmp_path / f"{name}-runs").iterdir())) == 2 + 2 * len(tried) == len(record["simulated"])
    (local, local_csv), (dask, dask_csv) = outputs["local"], outputs["dask"]
    table_a, table_b = (pd.read_csv(StringIO(t)).drop(columns="run_ids") for t in (local_csv, dask_csv))
    pd.testing.assert_frame_equal(table_a, table_b, check_exact=True)  # run ids aside: every run has its own
    assert len(table_a) == 2 and local["capacity"].keys() == dask["capacity"].keys()
    for label in local["capacity"]:
        a, b = ({k: v for k, v in r["capacity"][label].items() if k != "ramp_runs"} for r in (local, dask))
        assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
