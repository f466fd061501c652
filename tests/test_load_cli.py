"""``caplab load`` against a real server: what it says about refused connections, where its clients
come from, and which server configuration the run records (issue 9, item 6).

Each case runs ``python -m lab.cli load`` in its own process against a real optimized node over
loopback. The per-IP limit is lowered (``max_per_ip``) so that a small run shows what the README's
2000-connection example showed: half the connections refused as ``limit_ip`` while the summary said
``errors % 0.000``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from eventlog import read_manifest
from lab.loadcli import add_load_arguments, spec_from_args

ROOT = Path(__file__).resolve().parents[1]
ADMIN = "test-admin-token"


def caplab_load(url: str, tokens: Path, *args: str, cwd: Path, admin: str | None = ADMIN):
    env = {k: v for k, v in os.environ.items() if k not in ("SOCKET_ADMIN_TOKEN", "SOCKET_URL")}
    if admin is not None:
        env["SOCKET_ADMIN_TOKEN"] = admin
    cmd = [sys.executable, "-m", "lab.cli", "load", "--url", url, "--tokens", str(tokens), "--out", "runs", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, cwd=cwd, env=env)


def write_tokens(path: Path, users: list[dict]) -> Path:
    path.write_text("".join(json.dumps(u) + "\n" for u in users))
    return path


def connects(out: str) -> dict[str, int]:
    """The numbers of the summary's `connects` line."""
    line = next(x for x in out.splitlines() if x.strip().startswith("connects "))
    m = re.search(r"(\d+) attempted, (\d+) accepted, (\d+) refused or failed", line)
    assert m, line
    unanswered = re.search(r"(\d+) unanswered when the run ended", line)
    return {
        "attempted": int(m[1]),
        "accepted": int(m[2]),
        "failed": int(m[3]),
        "unanswered": int(unanswered[1]) if unanswered else 0,
    }


def run_dir_of(res: subprocess.CompletedProcess, cwd: Path) -> Path:
    return cwd / res.stdout.strip().splitlines()[-1]


def test_load_counts_refused_connections_by_reason_and_spreads_sources(start_server, tmp_path):
    server, users = start_server(
        "optimized",
        companies=1,
        users=100,
        sets={"max_per_ip": 110, "batching": False},
        env={"SOCKET_ADMIN_TOKEN": ADMIN},
    )
    tokens = write_tokens(tmp_path / "users.jsonl", users)
    # 201 connections: two source addresses by default (101 + 100), one over the limit of 110 otherwise;
    # held 3 s: on a busy machine the ramp alone took 2-3 s, and a connection still unanswered at the
    # end is neither accepted nor refused
    common = ["--connections", "201", "--duration", "3", "--events-per-second", "30", "--connect-rate", "400"]

    # default source addresses: 200 connections per loopback address at most, as `caplab run` does
    res = caplab_load(server.url, tokens, *common, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    c = connects(res.stdout)
    # none refused; on a busy machine a few may still be connecting when the 1 s hold ends
    assert c["attempted"] == 201 and c["failed"] == 0 and c["accepted"] + c["unanswered"] == 201, res.stdout
    assert c["accepted"] > 110 and "server refusals" not in res.stdout, res.stdout  # more than one address holds
    m = read_manifest(run_dir_of(res, tmp_path))
    assert len(m.load["source_addrs"]) == 2
    # the profile and toggles come from the server itself, so a calibration knows what ran
    assert "(measured, optimized)" in res.stdout
    assert m.profile == "optimized"
    assert m.server is not None and m.server.toggles["batching"] is False and m.server.toggles["conn_limits"]
    assert m.server.settings["max_per_ip"] == 110

    # every client from one address: 91 refused by the per-IP limit, and the summary says so
    res = caplab_load(server.url, tokens, *common, "--source-addrs", "127.0.0.1", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    c = connects(out)
    assert c["attempted"] == 201 and c["accepted"] <= 110 and c["failed"] >= 50, out
    # each refusal named twice: by the generator (the server's answer: HTTP 401 to the Engine.IO
    # handshake, or a CONNECT_ERROR naming the limit) and by the server (its reason, scraped)
    line = next(x for x in out.splitlines() if x.strip().startswith("connects "))
    reasons = re.findall(r"(refused: [^,()]+) (\d+)(?=[,)])", line.split("refused or failed", 1)[1])
    assert reasons and sum(int(n) for _, n in reasons) == c["failed"], line
    assert {r for r, _ in reasons} <= {"refused: HTTP 401", "refused: ip connection limit reached"}, line
    assert f"server refusals  limit_ip {c['failed']}" in out, out
    assert f"WARNING: {201 - c['accepted']} of 201 connections were not accepted" in out, out
    assert "errors % (run)" in out


def test_load_without_the_admin_token_records_the_profile_and_says_what_it_lacks(start_server, tmp_path):
    server, users = start_server("optimized", companies=1, users=5, env={"SOCKET_ADMIN_TOKEN": ADMIN})
    tokens = write_tokens(tmp_path / "users.jsonl", users)
    res = caplab_load(server.url, tokens, "--connections", "5", "--duration", "1", cwd=tmp_path, admin=None)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "(measured, optimized)" in res.stdout
    warning = [line for line in res.stderr.splitlines() if "SOCKET_ADMIN_TOKEN" in line]
    assert len(warning) == 1 and warning[0].startswith("caplab load: warning: "), res.stderr
    m = read_manifest(run_dir_of(res, tmp_path))
    assert m.profile == "optimized" and (m.server is None or not m.server.settings)


def test_readme_step_ramp_spreads_sources_under_the_per_ip_limit():
    """The README's --steps 200:10,1000:10,2000:10 from one address is cut at 1000 by the optimized
    server's per-IP limit; by default the generator now uses one loopback address per 200."""
    import argparse

    p = argparse.ArgumentParser()
    add_load_arguments(p)
    args = p.parse_args(["--url", "http://127.0.0.1:1", "--tokens", "x", "--steps", "200:10,1000:10,2000:10"])
    spec = spec_from_args(args, env={})
    assert len(spec.source_addrs) == 10 and len(set(spec.source_addrs)) == 10
    assert all(a.startswith("127.") and a != "127.0.0.1" for a in spec.source_addrs)
    args = p.parse_args(["--url", "http://127.0.0.1:1", "--tokens", "x", "--source-addrs", "127.0.0.1"])
    assert spec_from_args(args, env={}).source_addrs == ["127.0.0.1"]
