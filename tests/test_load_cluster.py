"""Load from generator processes on Dask workers (a real LocalCluster over loopback), and the clock
offset estimator they use."""

from __future__ import annotations

import os
import random
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from eventlog import read_manifest, read_run
from eventlog.checks import clock_check, self_checks
from eventlog.manifest import Manifest
from eventlog.projections import step_table, steps
from lab.servers import ServerProcess, create_users
from loadgen import LoadSpec, run_load
from loadgen.clock import ClockError, ClockServer, estimate, measure_offset, udp_exchange
from loadgen.cluster import ClusterError, GeneratorLost, generators_on, stretch

# -- the clock offset estimator --------------------------------------------------------------------


def skewed_exchange(offset: float, delays: list[tuple[float, float]]):
    """Round trips to a fake driver whose clock reads ``offset`` more than ours: each has the given
    (outbound, return) delays. Our clock is simulated too, so the test does not depend on timing."""
    now = [1000.0]
    trips = iter(delays)

    def exchange():
        out, back = next(trips)
        t1 = now[0]
        remote = t1 + out + offset
        now[0] = t2 = t1 + out + back
        now[0] += 0.01
        return t1, remote, t2

    return exchange


def test_estimate_keeps_the_shortest_round_trip_and_bounds_the_error():
    offset = 3.25  # the driver's clock is 3.25 s ahead
    rng = random.Random(7)
    delays = [(rng.uniform(0.0001, 0.02), rng.uniform(0.0001, 0.02)) for _ in range(40)]
    delays[17] = (0.00010, 0.00030)  # the quickest: asymmetric, so its midpoint is off by 0.1 ms
    est = estimate(skewed_exchange(offset, delays), samples=40)
    assert est.rtt_s == pytest.approx(0.0004)
    assert est.uncertainty_s == pytest.approx(0.0002)
    assert abs(est.offset_s - offset) <= est.uncertainty_s
    assert est.offset_s == pytest.approx(offset - 0.0001)
    assert est.samples == 40


def test_estimate_skips_lost_round_trips_and_refuses_when_none_come_back():
    inner = skewed_exchange(-2.0, [(0.001, 0.001)] * 5)
    calls = iter([None, inner(), None, inner(), None])
    est = estimate(lambda: next(calls), samples=5)
    assert est.samples == 2 and abs(est.offset_s + 2.0) <= est.uncertainty_s
    with pytest.raises(ClockError, match="none of 3 round trips"):
        estimate(lambda: None, samples=3)


def test_udp_round_trips_find_a_skewed_driver_clock():
    """A real ClockServer over loopback whose clock runs 42.5 s ahead of ours."""
    with ClockServer("127.0.0.1", clock=lambda: time.monotonic() + 42.5) as server:
        est = measure_offset(server.address, samples=30)
    assert abs(est.offset_s - 42.5) <= est.uncertainty_s + 1e-6
    assert est.uncertainty_s < 0.05 and est.samples == 30


def test_a_silent_clock_server_is_a_clock_error():
    with ClockServer("127.0.0.1") as server:
        address = server.address
    exchange, close = udp_exchange(address, timeout_s=0.05)
    try:
        with pytest.raises(ClockError):
            estimate(exchange, samples=3)
    finally:
        close()


def test_stretch_follows_the_drift_only_beyond_its_uncertainty():
    import pyarrow as pa

    t = pa.array([0.0, 50.0, 100.0])
    start = {"offset_s": 0.0, "uncertainty_s": 0.0001, "at": 0.0}
    end = {"offset_s": 0.004, "uncertainty_s": 0.0001, "at": 100.0}  # 4 ms further by t = 100 s
    fixed, drift = stretch(t, start, end)
    assert drift == pytest.approx(0.004)
    assert fixed.to_pylist() == pytest.approx([0.0, 50.002, 100.004])
    same, none = stretch(t, start, {**end, "offset_s": 0.00015})  # within the 0.2 ms the two allow
    assert none == 0.0 and same.to_pylist() == [0.0, 50.0, 100.0]


def test_the_self_check_flags_an_offset_uncertainty_over_1_ms():
    def manifest(uncertainty_s):
        clock = {"offset_s": 0.01, "uncertainty_s": uncertainty_s, "rtt_s": 2 * uncertainty_s, "at": 0.0}
        gens = [
            {"worker": 0, "address": "tcp://a:1", "host": "a", "clock_start": clock, "clock_end": clock},
            {"worker": 1, "address": "tcp://b:1", "host": "b", "clock_start": {**clock, "uncertainty_s": 0.0001}},
        ]
        return Manifest.model_validate({"run_id": "r", "source": "measured", "status": "complete", "generators": gens})

    ok = clock_check(manifest(0.0004))
    assert ok["ok"] and "gen0 (a) +10.000 ms +- 0.400" in ok["detail"]
    bad = clock_check(manifest(0.0015))
    assert not bad["ok"] and "+- 1.500" in bad["detail"] and "over 1 ms" in bad["detail"]
    lost = manifest(0.0004)
    assert lost.generators is not None
    lost.generators[1].clock_start = None
    assert not clock_check(lost)["ok"]


# -- generators on a LocalCluster ----------------------------------------------------------------------


@pytest.fixture
def cluster():
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0"
    ) as local:
        yield local


@pytest.fixture
def server(tmp_path):
    users = create_users(tmp_path / "lab.db", 4, 50)
    srv = ServerProcess(
        "optimized", tmp_path / "lab.db", {"metrics_interval_ms": 500}, log_path=tmp_path / "server.log"
    ).start()
    yield srv, [u["token"] for u in users]
    assert srv.stop() == 0


def spec_for(url: str, hold_s: float) -> LoadSpec:
    return LoadSpec(
        url=url,
        steps=[{"connections": 40, "hold_s": 2.0}, {"connections": 100, "hold_s": hold_s}],
        events_per_second=100,
        connect_rate=200,
        mix={"echo": 0.8, "chat": 0.2},
        rooms_per_connection=1,
        scrape=[url],
        scrape_interval_s=0.5,
    )


def test_two_workers_share_the_load_and_match_the_server(cluster, server, tmp_path):
    srv, tokens = server
    run = read_run(
        run_load(spec_for(srv.url, 3.0), tmp_path / "runs", tokens, quiet=True, cluster=cluster.scheduler_address)
    )
    df, m = run.events, run.manifest
    assert m.status == "complete"
    assert m.load is not None and m.load["workers"] == 2
    assert m.generators is not None and [g.worker for g in m.generators] == [0, 1]
    for g in m.generators:
        assert g.clock_start is not None and g.clock_end is not None and g.lost is None
        # one machine: the same clock, found within the estimate's uncertainty, and that under 1 ms
        assert abs(g.clock_start.offset_s) <= g.clock_start.uncertainty_s + 1e-6 < 0.001
    parts = sorted(p.name for p in (run.path / "events").iterdir())
    assert any(p.startswith("part-gen0-") for p in parts) and any(p.startswith("part-gen1-") for p in parts)
    counts = df["kind"].value_counts()
    fails = {k: n for k, n in df[df["kind"] == "connect_fail"]["name"].value_counts().items() if n}
    assert counts["connect_ok"] == 100 and not fails, fails
    assert counts["send"] == counts["ack"] > 200
    # each generator opened its share: even and odd connection ids
    opened = df[df["kind"] == "connect_ok"]["conn"]
    assert sorted(opened) == list(range(100))
    final = df[(df["kind"] == "sample") & (df["node"] == 0)].groupby("name", observed=True)["value"].last()
    assert final["events_in"] == counts["send"]  # the server counted every send, from both hosts
    assert final["events_out"] == counts["push"]
    assert final["connects"] == 100
    checks = {c["check"]: c for c in self_checks(df, m)}
    assert checks["generator clocks aligned (offset uncertainty <= 1 ms)"]["ok"]
    # the steps line up: both generators' rows fall in the windows gen0 marked
    st = steps(df)
    assert list(st["target"]) == [40, 100]
    table = step_table(df)
    assert list(table["reached"]) == [40, 100]  # connections of both generators, counted in each step
    # both generators' acks are counted in the steps' throughput: about the offered 40 and 100 events/s
    assert table["throughput_eps"].iloc[0] > 0
    assert table["throughput_eps"].iloc[-1] == pytest.approx(100, rel=0.3)
    last = st.iloc[-1]
    inside = df[(df["kind"] == "send") & (df["t"] >= last["window_start"]) & (df["t"] < last["end"])]
    assert set(inside["conn"] % 2) == {0, 1}
    sends = df[df["kind"] == "send"]
    assert sends["t"].min() >= 0 and sends["t"].max() <= float(last["end"]) + 1.0


def test_a_worker_killed_mid_run_leaves_the_rest_readable_and_aborted(cluster, server, tmp_path):
    from distributed import Client

    srv, tokens = server
    with Client(cluster.scheduler_address, set_as_default=False) as client:
        pids = client.run(os.getpid)
    victim_addr = sorted(pids)[1]  # the generator of worker id 1

    def kill_later():
        """Once generator 1's first parts reached the run folder (it is sending), kill its worker."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list((tmp_path / "runs").glob("*/events/part-gen1-000001.parquet")):
            time.sleep(0.1)
        time.sleep(1.0)
        os.kill(pids[victim_addr], signal.SIGKILL)

    killer = threading.Thread(target=kill_later, daemon=True)
    killer.start()
    with pytest.raises(GeneratorLost, match=r"generator 1 .* lost at") as lost:
        run_load(spec_for(srv.url, 6.0), tmp_path / "runs", tokens, quiet=True, cluster=cluster.scheduler_address)
    killer.join()
    run_dir = lost.value.run_dir
    assert run_dir is not None
    m = read_manifest(run_dir)
    assert m.status == "aborted" and "generator 1" in (m.error or "")
    assert m.generators is not None and m.generators[1].lost and not m.generators[0].lost
    run = read_run(run_dir)
    df = run.events
    sends = df[df["kind"] == "send"]
    odd, even = sends[sends["conn"] % 2 == 1], sends[sends["conn"] % 2 == 0]
    end = float(steps(df).iloc[-1]["end"])
    assert even["t"].max() > end - 1.0  # generator 0 ran to the end
    assert len(odd) > 0 and odd["t"].max() < end - 1.0  # generator 1's rows stop where it was killed


def test_cluster_problems_are_one_line_before_any_run_folder(cluster, tmp_path):
    spec = spec_for("http://127.0.0.1:9", 1.0)  # nothing listens on the discard port
    with pytest.raises(ClusterError, match=r"cannot connect to http://127\.0\.0\.1:9"):
        run_load(spec, tmp_path / "runs", ["t"], quiet=True, cluster=cluster.scheduler_address)
    with pytest.raises(ClusterError, match="cannot reach the Dask scheduler"), generators_on("tcp://127.0.0.1:9"):
        run_load(spec, tmp_path / "runs", ["t"], quiet=True)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_caplab_load_on_a_cluster_from_the_environment(cluster, server, tmp_path):
    """`caplab load` as a user runs it: DASK_SCHEDULER_ADDRESS places the generators, a scheduler that
    does not answer is one line (exit 2) and nothing is started."""
    import json
    import subprocess
    import sys

    srv, tokens = server
    (tmp_path / "tokens").write_text("\n".join(tokens[:100]))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    args = [sys.executable, "-m", "lab.cli", "load", "--url", srv.url, "--tokens", str(tmp_path / "tokens")]
    args += ["--out", str(tmp_path / "runs"), "--connections", "20", "--duration", "2", "--events-per-second", "20"]
    env = {**os.environ, "DASK_SCHEDULER_ADDRESS": cluster.scheduler_address}
    bad = subprocess.run([*args, "--cluster", f"tcp://127.0.0.1:{closed}"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr[-2000:]
    assert bad.stderr.splitlines()[-1].startswith("caplab load: error: cluster tcp://127.0.0.1:")
    assert "cannot reach the Dask scheduler" in bad.stderr and not (tmp_path / "runs").exists()
    ok = subprocess.run(args, capture_output=True, text=True, env=env, timeout=240)
    assert ok.returncode == 0, ok.stderr[-2000:]
    run_dir = Path(ok.stdout.strip().splitlines()[-1])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete" and len(manifest["generators"]) == 2
    assert {p.name.split("-")[1] for p in (run_dir / "events").iterdir()} == {"gen0", "gen1"}


def test_load_on_cluster_needs_a_cluster(tmp_path):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
    res = subprocess.run(
        [sys.executable, "-m", "lab.cli", "run", "scenarios/before-after.yaml", "--load-on-cluster"],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        timeout=120,
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert res.stderr.strip() == (
        "caplab run: error: --load-on-cluster: no cluster: pass --cluster, set DASK_SCHEDULER_ADDRESS or give "
        "the scenario 'cluster:'; nothing started"
    )
