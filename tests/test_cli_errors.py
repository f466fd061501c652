"""Ordinary mistakes on the caplab command line: one line on stderr, exit 2, no traceback unless --debug.

Each case runs `python -m lab.cli` in its own process, as a user runs it, and fails on the tracebacks
(or the exit 0 of a wrong port) that these mistakes gave before.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def caplab(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lab.cli", *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def one_line_error(res: subprocess.CompletedProcess, command: str, *words: str) -> str:
    """The single stderr line of a user error: `caplab COMMAND: error: ...` naming each of ``words``."""
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"caplab {command}: error: "), lines[0]
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released; nothing else here binds it meanwhile)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SIMULATE = ["--connections", "10", "--events-per-connection", "1", "--duration", "1"]


def test_simulate_with_a_missing_calibration(tmp_path):
    res = caplab("simulate", "--calibration", "missing.json", *SIMULATE, cwd=tmp_path)
    one_line_error(res, "simulate", "--calibration missing.json", "No such file or directory")
    assert not (tmp_path / "runs").exists()


def test_simulate_with_a_scenario_instead_of_a_calibration(tmp_path):
    scenario = str(ROOT / "scenarios" / "quickstart.yaml")
    res = caplab("simulate", "--calibration", scenario, *SIMULATE, cwd=tmp_path)
    one_line_error(res, "simulate", "quickstart.yaml", "not a calibration", "caplab calibrate")


def test_simulate_with_a_calibration_of_the_wrong_shape(tmp_path):
    (tmp_path / "cal.json").write_text(json.dumps({"cpu_per_event_s": "fast"}))
    res = caplab("simulate", "--calibration", "cal.json", *SIMULATE, cwd=tmp_path)
    one_line_error(res, "simulate", "cal.json", "not a calibration", "cpu_per_event_s")


def test_calibrate_a_folder_without_a_manifest(tmp_path):
    (tmp_path / "notarun").mkdir()
    res = caplab("calibrate", "notarun", "--out", "cal.json", cwd=tmp_path)
    one_line_error(res, "calibrate", "notarun", "not a run folder", "manifest.json")
    assert not (tmp_path / "cal.json").exists()


@pytest.mark.parametrize(
    ("content", "words"),
    [(None, ["--tokens nonexistent", "No such file or directory"]), ('{"x": 1}\n', ["--tokens", "token"])],
    ids=["missing", "no-token-field"],
)
def test_load_with_bad_tokens(tmp_path, content, words):
    name = "nonexistent"
    if content is not None:
        name = "bad.jsonl"
        (tmp_path / name).write_text(content)
    res = caplab("load", "--url", f"http://127.0.0.1:{closed_port()}", "--tokens", name, cwd=tmp_path)
    one_line_error(res, "load", *words)
    assert not (tmp_path / "runs").exists()


def test_load_against_a_wrong_port_is_refused_before_any_run(tmp_path):
    (tmp_path / "tokens.txt").write_text("tok\n")
    url = f"http://127.0.0.1:{closed_port()}"
    args = ["load", "--url", url, "--tokens", "tokens.txt", "--connections", "3", "--duration", "1"]
    res = caplab(*args, cwd=tmp_path)
    one_line_error(res, "load", url, "connection refused", "nothing started")
    assert not (tmp_path / "runs").exists()  # no run of 100 % errors left behind
    env = {**os.environ, "SOCKET_URL": url}  # the seed's variable: the same line, naming it
    res = subprocess.run(
        [sys.executable, "-m", "lab.cli", "load", "--tokens", "tokens.txt"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    one_line_error(res, "load", f"SOCKET_URL {url}", "connection refused", "nothing started")


def test_run_reuse_of_a_missing_run(tmp_path):
    scenario = str(ROOT / "scenarios" / "quickstart.yaml")
    res = caplab("run", scenario, "--reuse", "BAD", "--reports", "reports", "--runs", "runs", cwd=tmp_path)
    one_line_error(res, "run", "--reuse", "BAD", "nothing started")
    assert not (tmp_path / "reports").exists() and not (tmp_path / "runs").exists()


def test_debug_shows_the_traceback(tmp_path):
    for args in (["--debug", "simulate"], ["simulate", "--debug"]):  # before or after the command
        res = caplab(*args, "--calibration", "missing.json", *SIMULATE, cwd=tmp_path)
        assert res.returncode != 0 and "Traceback" in res.stderr, res.stderr
        assert (
            res.stderr.strip()
            .splitlines()[-1]
            .endswith("--calibration missing.json: cannot read: No such file or directory")
        )


CAL = {"cpu_per_event_s": 1e-4, "memory_base_bytes": 50e6, "memory_per_connection_bytes": 20e3}


def test_simulate_with_one_replication_prints_no_nan_and_says_what_cpu_and_memory_cover(tmp_path):
    (tmp_path / "cal.json").write_text(json.dumps(CAL))
    args = ["simulate", "--calibration", "cal.json", "--connections", "20", "--duration", "3", "--out", "sims"]
    res = caplab(*args, "--events-per-connection", "1", "--nodes", "2", "--replications", "1", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "nan" not in res.stdout and "+-" not in res.stdout and "(1 replication: no spread)" in res.stdout
    assert "mean_cpu_pct" in res.stdout and "total of 2 nodes" in res.stdout
    assert "deprecated" not in res.stderr
    res = caplab(*args, "--rate", "1", cwd=tmp_path)  # the default: 3 replications; the old name still works
    assert res.returncode == 0, res.stderr
    assert "nan" not in res.stdout and "(95 % CI, 3 replications)" in res.stdout and "one node" in res.stdout
    assert res.stderr.startswith("caplab simulate: warning: --rate is deprecated: it is --events-per-connection")
    res = caplab(*args, "--events-per-connection", "1", "--replications", "0", cwd=tmp_path)
    one_line_error(res, "simulate", "--replications")


def test_simulate_says_when_connections_are_refused(tmp_path):
    """Over the calibrated node's limit the model refuses connections; the summary used to print
    error_rate_pct 0.00 and nothing else."""
    (tmp_path / "cal.json").write_text(json.dumps({**CAL, "conn_limits": True, "max_connections": 30}))
    args = ["simulate", "--calibration", "cal.json", "--connections", "40", "--duration", "3", "--out", "sims"]
    res = caplab(*args, "--events-per-connection", "1", "--replications", "2", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    lines = {line.split()[0]: line for line in res.stdout.splitlines() if line.strip()}
    assert lines["connections_refused"].split()[1] == "10.00", res.stdout
    assert float(lines["error_rate_run_pct"].split()[1]) > 0, res.stdout
    assert "WARNING: connections were refused in 2 of 2 replications" in res.stdout
    assert "server connection limit reached: 10 per replication" in res.stdout
    assert "30 per node" in res.stdout


def test_serve_help_names_caplab_serve():
    for args, usage in (
        (["serve", "--help"], "usage: caplab serve "),
        (["serve", "users", "--help"], "usage: caplab serve users "),
    ):
        res = caplab(*args, cwd=ROOT)
        assert res.returncode == 0 and res.stdout.startswith(usage), res.stdout
        assert "python -m server" not in res.stdout


def test_every_option_of_every_command_says_what_it_is():
    from lab.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    missing = [
        f"{name} {a.option_strings or a.dest}"
        for name, sub in commands.items()
        if name != "serve"  # python -m server's own help
        for a in sub._actions
        if not a.help
    ]
    assert not missing, missing


def test_runs_columns_hold_long_run_ids(tmp_path):
    from eventlog import create_run, finish_run

    for name in ("short", "a-scenario-name-much-longer-than-the-old-forty-four-character-column"):
        run_dir, _ = create_run(tmp_path / "runs", "simulated", name, profile="optimized")
        finish_run(run_dir, "complete")
    res = caplab("runs", "--out", "runs", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 3 and all(len(line.split()) == 4 for line in lines[1:]), lines
    starts = {line.index("simulated") for line in lines[1:]} | {lines[0].index("source")}
    assert len(starts) == 1, lines  # one column, whatever the id's length


def test_calibrate_live_on_an_idle_server_warns(start_server, tmp_path):
    server, _ = start_server("optimized", companies=0, env={"REDIS_URL": ""})
    args = ["calibrate", "--live", server.url, "--profile", "optimized", "--seconds", "4", "--out", "cal.json"]
    res = caplab(*args, "--runs", "runs", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "cal.json").exists()
    warning = [line for line in res.stderr.splitlines() if line.startswith("caplab calibrate: warning:")]
    assert len(warning) == 1 and "CPU costs are not measured" in warning[0], res.stderr
