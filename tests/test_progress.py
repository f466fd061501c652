"""Progress of long steps (issue 9, item 7): on a terminal a rich display follows the steps and the
k/N of each batch of simulations; in a pipe the ``[caplab]`` lines are all there is, as before."""

from __future__ import annotations

import io
import json
import os
import pty
import subprocess
import sys
import time

from rich.console import Console

from lab import progress
from lab.executor import ProgressLines


def test_display_follows_steps_and_batches_on_a_terminal():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    with progress.display(console):
        assert progress._live is not None and progress._task is not None
        task = progress._live.tasks[0]
        progress.log("simulating baseline at 2000 connections ...")
        assert task.description == "simulating baseline at 2000 connections ..." and task.total is None
        lines = ProgressLines("replications", every_s=0.0)  # the executor's own batch lines
        lines(0, 4, "this process")
        assert task.total == 4 and task.completed == 0
        lines(3, 4, "this process")
        assert task.completed == 3
        progress.log("  baseline at 2000 connections: p95 12 ms")  # a detail: the step stays
        assert task.description == "4 replications on this process ..." and task.total == 4
        with progress.display(console):  # nested: the same display
            assert progress._live.tasks[0] is task
    assert progress._live is None
    text = out.getvalue()
    assert "[caplab] simulating baseline at 2000 connections ..." in text
    assert "[caplab]   3/4 replications done" in text


def test_no_display_without_a_terminal(capsys):
    with progress.display(Console(file=io.StringIO())):  # not a terminal
        assert progress._live is None
        progress.log("measuring optimized ...")
    assert capsys.readouterr().err == "[caplab] measuring optimized ...\n"


def test_simulate_on_a_terminal_shows_a_progress_display(tmp_path):
    """caplab simulate with its stderr on a pseudo-terminal: the display draws (spinner, k/N, time)
    and the lines are still there; the stdout table is unchanged."""
    (tmp_path / "cal.json").write_text(
        json.dumps({"cpu_per_event_s": 1e-4, "memory_base_bytes": 50e6, "memory_per_connection_bytes": 2e4})
    )
    leader, follower = pty.openpty()
    args = ["simulate", "--calibration", "cal.json", "--connections", "10", "--duration", "2"]
    args += ["--events-per-connection", "1", "--replications", "2", "--out", "sims"]
    env = {**os.environ, "COLUMNS": "120", "TERM": "xterm"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lab.cli", *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=follower, env=env
    )
    os.close(follower)
    err = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        err += chunk
    out = proc.communicate(timeout=60)[0].decode()
    os.close(leader)
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    text = err.decode(errors="replace")
    assert "[caplab]   2/2 replications done" in text, text[-2000:]
    assert "\x1b[" in text and "0:00:0" in text, text[-2000:]  # the live display: cursor control, elapsed time
    assert "p95_ms" in out and "\x1b[" not in out
