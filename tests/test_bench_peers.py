"""The peer benchmark (scripts/bench_peers.py) runs end to end: opt-in, ``pytest -m benchmark -s``.

Small sizes (``--quick``): what is checked is that every server -- Node socket.io 4 (npm, cached),
stock python-socketio, the baseline and the optimized profile -- served the same generator, and that
the table of figures and ratios came out whole. The full-size figures are the script's own output
(README, "Peer benchmark")."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.benchmark
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(900)
@pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None, reason="needs node and npm")
def test_peer_benchmark_quick(tmp_path):
    out = tmp_path / "peers.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_peers.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(proc.stdout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("| figure | node | stock | baseline | optimized | optimized/node | optimized/stock |")
    summary = json.loads(out.read_text())["summary"]
    assert set(summary) == {"node", "stock", "baseline", "optimized"}
    for kind, s in summary.items():
        assert s["connected"] > 0, kind  # every server took the idle connections
        assert s["pushes"] > 0, kind  # and delivered chats to the room
        assert any(x["acked_per_s"] > 0 for x in s["echo_steps"]), kind  # and acked echoes


@pytest.mark.timeout(600)
@pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None, reason="needs node and npm")
def test_one_point_alone_still_prints_its_table(tmp_path):
    """``--points fanout`` crashed while printing: the echo capacity cell read figures no point made."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_peers.py"), "--quick", "--points", "fanout"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in proc.stdout.splitlines() if line.startswith("| ")}
    assert rows["echo capacity, ack p95 < 120 ms (events/s)"].count("n/a") >= 4
    assert "n/a" not in rows["server CPU per delivered recipient (us)"]
