"""Chaos: a damaged run on disk (torn parts, a stray part, a truncated manifest).

Real runs from the load generator on loopback at a light load, then damaged the ways disks and
people damage them: every problem is one line, never a traceback.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lab import cli
from lab.servers import ServerProcess, create_users
from loadgen import LoadSpec, run_load

CAPLAB = [sys.executable, "-m", "lab.cli"]


def caplab(*args: str) -> subprocess.CompletedProcess:
    """``caplab ARGS`` in its own process: what a user sees, tracebacks included."""
    return subprocess.run([*CAPLAB, *args], capture_output=True, text=True, timeout=120)


def caplab_here(*args: str) -> subprocess.CompletedProcess:
    """``caplab ARGS`` in this process (seconds faster); an escaping exception fails the test."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(args))
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


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


def test_unreadable_first_part_gives_one_line_per_problem(damaged):
    """The first part holds the step markers: without them there is no benchmark row, said plainly."""
    part = sorted((damaged / "events").glob("part-gen0-*.parquet"))[0]
    _truncate(part, 100)
    res = caplab_here("runs", str(damaged))
    lines = _stderr_lines(res)
    assert res.returncode == 1 and len(lines) == 2, res.stderr
    assert part.name in lines[0] and "torn" in lines[0]
    assert lines[1].startswith(f"caplab runs: error: {damaged.name}: no benchmark row") and "step" in lines[1]
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
