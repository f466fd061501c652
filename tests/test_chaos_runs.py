"""Chaos: kill the generator, the scenario runner or the server mid-run; damage a run on disk.

Real processes on loopback at a light load (20 connections, 20 events/s). Every wait polls with a
deadline; nothing sleeps a fixed time and hopes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from eventlog import read_manifest, read_run
from lab import cli
from lab.servers import ServerProcess, create_users
from loadgen import LoadSpec, run_load

CAPLAB = [sys.executable, "-m", "lab.cli"]
GONE_WITHIN_S = 5.0  # workers and server connections after a kill: they normally go in about one second


def wait_for(what: str, check: Callable[[], object], timeout: float = 20.0, every: float = 0.05) -> object:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def connections(url: str) -> int:
    with urllib.request.urlopen(url + "/socket-metrics", timeout=5) as r:
        return json.load(r)["connections"]["total"]


def events_in(url: str) -> float:
    with urllib.request.urlopen(url + "/socket-metrics", timeout=5) as r:
        return json.load(r)["counters"]["events_in"]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def caplab(*args: str) -> subprocess.CompletedProcess:
    """``caplab ARGS`` in its own process: what a user sees, tracebacks included."""
    return subprocess.run([*CAPLAB, *args], capture_output=True, text=True, timeout=120)


def caplab_here(*args: str) -> subprocess.CompletedProcess:
    """``caplab ARGS`` in this process (seconds faster); an escaping exception fails the test."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(args))
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def one_run(root: Path) -> Path | None:
    dirs = [d for d in root.glob("*") if (d / "manifest.json").exists()] if root.is_dir() else []
    return dirs[0] if len(dirs) == 1 else None


def writer_pids(run_dir: Path) -> list[int]:
    writers = read_manifest(run_dir).writers
    return [p.pid for p in writers.processes if p.pid is not None] if writers else []


def runs_line(root: Path, run_dir: Path) -> str:
    res = caplab_here("runs", "--out", str(root))
    assert res.returncode == 0, res.stderr
    return next(line for line in res.stdout.splitlines() if line.startswith(run_dir.name))


class Procs:
    """Processes a test started or found; whatever is still alive at the end is killed, by pid."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self.groups: list[int] = []  # sessions started with start_new_session: whatever they spawned

    def cleanup(self) -> None:
        for pid in self.pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        for pgid in self.groups:  # a test that failed early never learnt its children's pids
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)


@pytest.fixture
def procs():
    p = Procs()
    yield p
    p.cleanup()


def write_tokens(path: Path, users: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(u) for u in users))
    return path


# -- the generator killed --------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_killed_generator_takes_its_workers_with_it(start_server, tmp_path, procs, sig):
    """``caplab load --workers 2`` killed mid-run: workers gone, server connections 0, run aborted."""
    server, users = start_server("optimized", companies=2, users=10)
    tokens = write_tokens(tmp_path / "users.jsonl", users)
    runs = tmp_path / "runs"
    load = ("--connections", "20", "--events-per-second", "20", "--duration", "60", "--connect-rate", "100")
    # a new session: the signal goes to the caplab process alone, as from `kill PID`
    proc = subprocess.Popen(
        [*CAPLAB, "load", "--url", server.url, "--tokens", str(tokens), "--out", str(runs), "--workers", "2", *load],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    procs.pids.append(proc.pid)
    procs.groups.append(proc.pid)
    try:
        run_dir = wait_for("the run folder", lambda: one_run(runs))
        wait_for("the manifest to name parent and 2 workers", lambda: len(writer_pids(run_dir)) == 3)
        pids = writer_pids(run_dir)
        procs.pids += pids
        assert pids[0] == proc.pid and set(pids[1:]) <= {c.pid for c in psutil.Process(proc.pid).children()}
        wait_for("20 live connections", lambda: connections(server.url) == 20)
        wait_for("a part on disk", lambda: list((run_dir / "events").glob("part-gen*.parquet")))
        proc.send_signal(sig)
        wait_for("the workers to exit", lambda: not any(alive(p) for p in pids[1:]), GONE_WITHIN_S)
        wait_for("the server to see 0 connections", lambda: connections(server.url) == 0, GONE_WITHIN_S)
        _out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    manifest = read_manifest(run_dir)
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
        assert manifest.status == "running"  # nobody was left to write it ...
    else:
        assert proc.returncode == 128 + sig
        assert manifest.status == "aborted" and sig.name in (manifest.error or "")
        assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("caplab load: aborted by")
    assert runs_line(runs, run_dir).split()[2] == "aborted"  # ... but `caplab runs` sees no live writer
    run = read_run(run_dir)  # no TornPartWarning: filterwarnings=error
    kinds = run.events["kind"].value_counts()
    assert kinds["connect_ok"] == 20 and kinds["send"] > 0 and kinds["ack"] > 0


def test_sigterm_stops_the_scenario_runner_its_server_and_workers(tmp_path, procs):
    """``caplab run`` (a measure scenario) on SIGTERM: server and generator stop, the run is aborted."""
    (tmp_path / "s.yaml").write_text(
        "name: chaos\nquestion: does SIGTERM stop everything it started?\nkind: measure\nreport: false\n"
        "servers: [{label: a, profile: optimized}]\n"
        "workload: {companies: 2, steps: [{connections: 20, hold_s: 60}], events_per_second: 20, workers: 2,"
        " connect_rate: 100}\n"
    )
    runs = tmp_path / "runs"
    proc = subprocess.Popen(
        [*CAPLAB, "run", str(tmp_path / "s.yaml"), "--runs", str(runs), "--reports", str(tmp_path / "reports")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    procs.pids.append(proc.pid)
    procs.groups.append(proc.pid)
    try:
        run_dir = wait_for("the run folder", lambda: one_run(runs), timeout=30)
        wait_for("the manifest to name parent and 2 workers", lambda: len(writer_pids(run_dir)) == 3)
        workers = writer_pids(run_dir)[1:]
        url = (read_manifest(run_dir).load or {})["url"]
        servers = [c.pid for c in psutil.Process(proc.pid).children() if c.cmdline()[1:3] == ["-m", "server"]]
        procs.pids += workers + servers
        assert len(servers) == 1
        wait_for("20 live connections", lambda: connections(url) == 20)
        # the generator records a send before it writes the frame: an event the server has seen
        # is a send row the abort must keep (CI once signalled between connects and first send)
        wait_for("the server to receive events", lambda: events_in(url) >= 5)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
        wait_for("the workers to exit", lambda: not any(alive(p) for p in workers), GONE_WITHIN_S)
        wait_for("the server to exit", lambda: not alive(servers[0]), GONE_WITHIN_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("caplab run: aborted by SIGTERM")
    assert read_manifest(run_dir).status == "aborted"
    assert (read_run(run_dir).events["kind"] == "send").sum() > 0
    assert not (tmp_path / "reports" / "chaos" / "runs.json").exists()


# -- the server killed -----------------------------------------------------------------------------


def test_killed_server_the_generator_finishes_and_records_the_failures(tmp_path):
    """The server SIGKILLed in the first step: every live connection is recorded as dropped, the
    second step's connects fail, the scraper's failures are rows, and the run ends on schedule as
    ``complete``: the recording covers the whole schedule; the dead server is the result (its
    errors are in the log and the projections), not a broken recording, which ``aborted`` means."""
    users = create_users(tmp_path / "lab.db", 2, 10)
    server = ServerProcess("optimized", tmp_path / "lab.db", log_path=tmp_path / "server.log").start()
    try:
        spec = LoadSpec(
            url=server.url,
            steps=[{"connections": 10, "hold_s": 2.5}, {"connections": 20, "hold_s": 1}],
            events_per_second=20,
            connect_rate=100,
            scrape=[server.url],
            scrape_interval_s=0.5,
            ack_timeout_s=1,
        )

        def kill_when_connected() -> None:
            wait_for("10 live connections", lambda: connections(server.url) == 10)
            server.proc.kill()

        killer = threading.Thread(target=kill_when_connected)
        killer.start()
        started = time.monotonic()
        run_dir = run_load(spec, tmp_path / "runs", [u["token"] for u in users], quiet=True)
        killer.join(10)
        assert time.monotonic() - started < spec.duration_s + 10
        assert server.proc.wait(5) == -signal.SIGKILL
    finally:
        server.stop()
    run = read_run(run_dir)
    assert run.manifest.status == "complete"
    df = run.events
    names = df["name"].astype(str)
    assert (df["kind"] == "connect_ok").sum() == 10
    assert ((df["kind"] == "error") & names.str.startswith("dropped")).sum() == 10
    assert (df["kind"] == "connect_fail").sum() == 10
    assert ((df["kind"] == "error") & (names == "scrape_failed")).sum() >= 1


# -- a damaged run on disk -------------------------------------------------------------------------


def _make_run(root: Path) -> Path:
    db = root / "lab.db"
    users = create_users(db, 2, 10)
    with ServerProcess("optimized", db, {"metrics_interval_ms": 500}, log_path=root / "server.log") as srv:
        spec = LoadSpec(
            url=srv.url,
            steps=[{"connections": 10, "hold_s": 1.5}, {"connections": 20, "hold_s": 1.5}],
            events_per_second=20,
            connect_rate=100,
            scrape=[srv.url],
            scrape_interval_s=0.5,
            workers=2,
        )
        return run_load(spec, root / "runs", [u["token"] for u in users], quiet=True)


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    return _make_run(tmp_path_factory.mktemp("real"))


@pytest.fixture
def damaged(real_run, tmp_path):
    """A copy of the real run, to damage."""
    dst = tmp_path / "runs" / real_run.name
    shutil.copytree(real_run, dst)
    return dst


def _truncate(path: Path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep])


def _stderr_lines(res: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in res.stderr, res.stderr
    return res.stderr.strip().splitlines()


def test_torn_part_is_skipped_with_a_warning(damaged):
    part = sorted((damaged / "events").glob("part-gen1-*.parquet"))[-1]
    _truncate(part, part.stat().st_size // 2)
    res = caplab_here("runs", str(damaged))
    lines = _stderr_lines(res)
    assert res.returncode == 0 and len(lines) == 1
    assert lines[0].startswith("caplab runs: warning: skipped torn part") and part.name in lines[0]
    assert "max stable" in res.stdout or "p95" in res.stdout


def _holds_step_markers(part: Path) -> bool:
    import pyarrow.parquet as pq

    df = pq.read_table(part, columns=["kind", "name"]).to_pandas()
    return bool(((df["kind"] == "sample") & (df["name"] == "step")).any())


def test_unreadable_parts_with_the_step_markers_give_one_line_per_problem(damaged):
    """Worker 0 writes the step markers (into its first part, or its first two when the second step
    starts after the first flush): without them there is no benchmark row, said plainly."""
    parts = [p for p in sorted((damaged / "events").glob("part-gen0-*.parquet")) if _holds_step_markers(p)]
    assert parts
    for part in parts:
        _truncate(part, 100)
    res = caplab_here("runs", str(damaged))
    lines = _stderr_lines(res)
    assert res.returncode == 1 and len(lines) == len(parts) + 1, res.stderr
    for part, line in zip(parts, lines, strict=False):
        assert part.name in line and "torn" in line
    assert lines[-1].startswith(f"caplab runs: error: {damaged.name}: no benchmark row") and "step" in lines[-1]
    assert json.loads(res.stdout)["run_id"] == damaged.name  # the manifest is still shown


@pytest.mark.parametrize("keep", [0, 1, 40, -2])
def test_truncated_manifest_is_a_one_line_error(damaged, keep):
    manifest = damaged / "manifest.json"
    _truncate(manifest, keep if keep >= 0 else manifest.stat().st_size + keep)
    res = (caplab if keep == 40 else caplab_here)("runs", str(damaged))  # once as its own process
    lines = _stderr_lines(res)
    assert res.returncode == 2 and len(lines) == 1
    assert lines[0].startswith("caplab runs: error:") and "manifest.json" in lines[0]
    listing = caplab_here("runs", "--out", str(damaged.parent))
    assert listing.returncode == 0 and "Traceback" not in listing.stderr
    assert damaged.name in listing.stdout and "damaged" in listing.stdout


def test_stray_part_with_an_extra_column_is_skipped_and_named(damaged):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = sorted((damaged / "events").glob("part-gen1-*.parquet"))[0]
    table = pq.read_table(src)
    pq.write_table(table.append_column("colour", pa.array(["red"] * len(table))), src.parent / "part-x-000000.parquet")
    res = caplab_here("runs", str(damaged))
    lines = _stderr_lines(res)
    assert res.returncode == 0 and len(lines) == 1
    assert "part-x-000000.parquet" in lines[0] and "'colour'" in lines[0]


def test_a_runs_page_shows_each_steps_cpu_per_event_and_loop_wake_ups(real_run):
    """Issue 11: `caplab runs RUN` ends with the per-step costs from the server's counters, wake-ups
    and the loop's wait for a CPU included (this run's 1.5 s steps are too short for a rate: eventlog's
    tests check the figures)."""
    res = caplab_here("runs", str(real_run))
    assert res.returncode == 0, res.stderr
    _head, sep, table = res.stdout.partition("per step, from the server's counters")
    assert sep and "wakeups_per_event" in table and "cpu_us_per_event" in table and "cpu_wait_pct" in table
    events = read_run(real_run).events
    for name in ("wakeups", "runqueue_wait_s"):  # scraped counters: never falling
        assert (events[events["name"].astype(str) == name]["value"].diff().dropna() >= 0).all(), name
    assert events[events["name"].astype(str) == "wakeups"]["value"].max() > 0  # the server counted some
