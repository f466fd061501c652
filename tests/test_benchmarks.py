"""Speed and memory targets (opt-in: ``pytest -m benchmark -s``). Each prints what it measured."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from eventlog import SLO, EventWriter, benchmark_row, read_events, read_run, step_table, steps
from eventlog.schema import KIND_INDEX
from lab.measure import source_addrs
from lab.servers import ServerProcess, create_users
from loadgen import LoadSpec, run_load
from model import Calibration, Workload, simulate

pytestmark = pytest.mark.benchmark


def report(name: str, **figures) -> None:
    print(f"\nBENCH {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()), flush=True)


def test_eventlog_10_million_rows(tmp_path):
    n = 10_000_000
    rng = np.random.default_rng(1)
    cols = [
        np.sort(rng.uniform(0, 600, n)),
        rng.integers(0, len(KIND_INDEX), n, dtype=np.int8),
        rng.integers(0, 10_000, n, dtype=np.int32),
        np.zeros(n, np.int16),
        rng.integers(0, 3, n, dtype=np.int32),
        rng.exponential(0.01, n),
        np.full(n, 64, np.int32),
        np.full(n, np.nan),
    ]
    t = time.perf_counter()
    EventWriter(tmp_path, "bench", t0=0.0).columns(*cols, names=["echo", "chat", "join"])
    write_s = time.perf_counter() - t
    t = time.perf_counter()
    df = read_events(tmp_path)
    read_s = time.perf_counter() - t
    report("eventlog", rows=n, write_s=round(write_s, 2), read_s=round(read_s, 2))
    assert len(df) == n
    assert write_s < 10 and read_s < 10


def test_eventlog_row_appends(tmp_path):
    """The generator's path: one row at a time."""
    w = EventWriter(tmp_path, "rows", t0=0.0)
    n = 1_000_000
    t = time.perf_counter()
    for i in range(n):
        w.row("ack", i * 1e-4, conn=i % 1000, name="echo", latency_s=0.01, nbytes=64)
    w.close()
    per_row_us = (time.perf_counter() - t) / n * 1e6
    report("eventlog rows", rows=n, per_row_us=round(per_row_us, 2))
    assert per_row_us < 5


@pytest.mark.parametrize(("conns", "seconds", "limit_s"), [(200, 300, 0.5), (2000, 300, 3.0), (10_000, 600, 20.0)])
def test_model_speed(tmp_path, conns, seconds, limit_s):
    cal = Calibration(
        cpu_per_event_s=5e-5, memory_per_connection_bytes=2e4, heartbeat_s=25, cpu_per_connection_s_per_s=1e-5
    )
    wl = Workload(
        steps=[{"connections": conns, "hold_s": seconds}],
        events_per_second=conns * 1.0,
        mix={"echo": 1.0},
        connect_rate=1e6,
    )
    simulate(cal, wl, tmp_path / "warm", seed=1)  # imports and caches out of the timing
    t = time.perf_counter()
    run_dir = simulate(cal, wl, tmp_path, seed=2)
    took = time.perf_counter() - t
    rows = read_run(run_dir).manifest.rows
    report(
        "model",
        connections=conns,
        simulated_s=seconds,
        events=int(conns * seconds),
        rows=rows,
        wall_s=round(took, 2),
        limit_s=limit_s,
    )
    assert took < limit_s


MAX_RUNQUEUE_WAIT = 0.25  # s waited for a CPU per CPU s run, above which the machine, not the generator, is measured


def sched_ns(pid: int) -> tuple[int, int]:
    """Nanoseconds a process has run on a CPU and waited on a run queue for one, summed over its
    threads (Linux schedstat)."""
    run = wait = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            r, w, _ = (task / "schedstat").read_text().split()
        except (OSError, ValueError):
            continue
        run, wait = run + int(r), wait + int(w)
    return run, wait


def start(cmd: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("listening on "), line
    return proc, line.split()[-1]


@pytest.mark.parametrize(("conns", "eps"), [(10_000, 10_000), (2000, 5000)])
def test_generator_ceiling(tmp_path, conns, eps):
    """Against a trivial ack server: the generator holds 10 000 connections and 10 000 events/s with
    at most one core and 1 GiB, and at 5000 events/s its send lag is the machine's, not its own.

    The send lag (actual - intended send time) of a generator that keeps up is the time the OS takes
    to wake its loop: on a quiet machine p99 < 5 ms, on a busy one (other processes on both cores) it
    was 18 ms, a failure of a fixed 5 ms bound that said nothing about the generator. So a probe
    process on the same loop (uvloop) measures how late an idle loop wakes during the same seconds,
    and the bound is relative: the steady send-lag p99 within 3x the probe's p99 (or under 5 ms
    outright). A generator that falls behind (CPU-bound, its sends queue) lags by tens to hundreds of
    ms while the probe stays at the machine's noise: that still fails.

    When the machine cannot give the generator the CPU it needs, nothing here measures the generator:
    the test says so and skips, with the figures, instead of failing on the machine's account. The
    measure is the generator's own run-queue wait (/proc schedstat) per CPU second it ran, over the
    window: near 0 on a quiet machine; at 0.71 (load average 3.3 on 2 cores) it needed 57 % of a
    core, acked 4854 of 5000/s and its send-lag p99 was 192 ms while an idle loop woke within 4 ms
    (CFS favours a sleeper; a process that needs the CPU queues), so above 0.25 the figure is the
    machine's.

    The generator runs as `caplab load` in its own process, as users run it: inside the test process
    it would share a heap (and collector pauses) with whatever ran before."""
    proc, url = start([sys.executable, str(Path(__file__).parent / "fakes" / "ackserver.py")])
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("t\n")
    cmd = [
        str(Path(sys.executable).parent / "caplab"),
        "load",
        f"--url={url}",
        f"--tokens={tokens}",
        f"--out={tmp_path / 'runs'}",
        f"--steps={conns}:15",
        f"--events-per-second={eps}",
        "--mix=echo=1",
        "--connect-rate=2000",
        f"--source-addrs={','.join(source_addrs(conns))}",
        "--no-scrape",
    ]
    probe = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "fakes" / "lagprobe.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        gen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        peak, child = 0, psutil.Process(gen.pid)
        sched: list[tuple[float, int, int]] = []  # (monotonic, run ns, run-queue wait ns) of the generator
        while gen.poll() is None:
            try:
                peak = max(peak, child.memory_info().rss)
                sched.append((time.monotonic(), *sched_ns(gen.pid)))
            except (psutil.NoSuchProcess, FileNotFoundError):
                break
            time.sleep(0.5)
        out = gen.communicate(timeout=120)[0]
        probe_out = probe.communicate(input="", timeout=30)[0]  # stdin closed: the probe prints and ends
    finally:
        if probe.poll() is None:
            probe.kill()
            probe.communicate()
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()
    assert gen.returncode == 0, out[-2000:]
    run = read_run(out.strip().splitlines()[-1])
    row = benchmark_row(run.events, run.manifest)
    st = steps(run.events)
    # the counted window (after the connect ramp and the warm-up cut): the ramp itself is CPU-bound
    w0, w1 = float(st["window_start"].iloc[0]), float(st["end"].iloc[0])
    sends = run.events[(run.events["kind"] == "send") & (run.events["t"] >= w0)]
    send_lag_steady_ms = 1000 * float(np.percentile(sends["latency_s"], 99))
    # the probe's wake-ups in the same window (one clock: CLOCK_MONOTONIC, the run's t0 subtracted)
    samples = np.array(json.loads(probe_out)["samples"]).reshape(-1, 2)
    t_run = samples[:, 0] - run.manifest.monotonic_t0
    late = samples[(t_run >= w0) & (t_run < w1), 1]
    machine_p99_ms = 1000 * float(np.percentile(late, 99)) if len(late) else float("nan")
    # how long the generator waited for a CPU per CPU second it got, over the same window
    in_window = [x for x in sched if w0 <= x[0] - run.manifest.monotonic_t0 <= w1]
    waited = float("nan")
    if len(in_window) >= 2 and in_window[-1][1] > in_window[0][1]:
        waited = (in_window[-1][2] - in_window[0][2]) / (in_window[-1][1] - in_window[0][1])
    report(
        "generator",
        connections=conns,
        offered_eps=eps,
        acked_eps=round(row["throughput_eps"]),
        gen_cpu_pct=round(row["gen_cpu_pct"]),
        send_lag_p99_ms=round(row["send_lag_p99_ms"], 2),
        send_lag_p99_steady_ms=round(send_lag_steady_ms, 2),
        machine_wake_p99_ms=round(machine_p99_ms, 2),
        lag_vs_machine=round(send_lag_steady_ms / machine_p99_ms, 2),
        runqueue_wait_per_cpu_s=round(waited, 2),
        load_avg_1m=round(os.getloadavg()[0], 1),
        peak_rss_mb=round(peak / 1e6),
        errors_pct=row["error_rate_pct"],
    )
    if waited >= MAX_RUNQUEUE_WAIT:
        pytest.skip(
            f"the machine is too busy to judge the generator: it waited {waited:.1f} s for a CPU per CPU second "
            f"it ran (load average {os.getloadavg()[0]:.1f}); its send-lag p99 {send_lag_steady_ms:.0f} ms and "
            f"{row['throughput_eps']:.0f} acked/s of {eps} are the machine's figures"
        )
    assert row["throughput_eps"] >= 0.97 * eps
    assert row["gen_cpu_pct"] <= 100 and peak < 2**30
    if eps <= 5000:
        assert len(late) > 100, "the lag probe saw too little of the counted window"
        assert send_lag_steady_ms < max(5.0, 3 * machine_p99_ms), (send_lag_steady_ms, machine_p99_ms)


def fanout_cost(n: int, fast: bool) -> float:
    """Seconds per recipient of one room emit: python-socketio's manager vs ours, same fake transport."""
    import socketio

    from server.fanout import LabManager

    class Sock:
        closed = False

        def __init__(self):
            self.queue = asyncio.Queue()

    async def go() -> float:
        mgr = LabManager() if fast else socketio.AsyncManager()
        if fast:
            mgr.fast_fanout = True
        socks = {f"e{i}": Sock() for i in range(n)}

        class Eio:
            sockets = socks

        class Srv:
            eio = Eio()
            packet_class = socketio.packet.Packet

            async def _send_eio_packet(self, eio_sid, pkt):  # the stock path's per-recipient send
                await socks[eio_sid].queue.put(pkt)

        mgr.set_server(Srv())
        mgr.initialize()
        for i in range(n):
            mgr.basic_enter_room(f"s{i}", "/", "room", eio_sid=f"e{i}")
        t = time.perf_counter()
        for _ in range(20):
            await mgr.emit("chat", {"x": 1}, "/", room="room")
        return (time.perf_counter() - t) / (20 * n)

    return asyncio.run(go())


def test_fanout_costs_less_per_recipient_than_stock_emit():
    stock, ours = fanout_cost(2000, fast=False), fanout_cost(2000, fast=True)
    report(
        "fan-out per recipient",
        stock_us=round(stock * 1e6, 2),
        fast_us=round(ours * 1e6, 2),
        ratio=round(stock / ours, 1),
    )
    assert ours < stock


@pytest.mark.parametrize("profile", ["baseline", "optimized"])
def test_server_echo_and_broadcast(tmp_path, profile):
    """The issue's server targets: 2000 connections echoing at rising rates; a chat to a room of 2000.

    Asserted: every step reached its 2000 connections and the chats were delivered. A generator that
    fell behind (its figures would be the generator's), and for the optimized profile a missed target
    (7500 echo events/s within 120 ms, chat delivery p95 within 150 ms), are reported as an expected
    failure with the figures: the lab reports what the server reaches on this machine. The baseline
    has no targets; its figures are printed."""
    users = create_users(tmp_path / "db", 1, 2000)
    sets = {"metrics_interval_ms": 1000, "max_per_company": 20_000, "max_connections": 20_000}
    tokens = [u["token"] for u in users]
    with ServerProcess(profile, tmp_path / "db", sets, log_path=tmp_path / "s.log") as srv:

        def measure(name: str, load_steps: list[dict], events_per_second: float, mix: dict):
            spec = LoadSpec(
                url=srv.url,
                steps=load_steps,
                events_per_second=events_per_second,
                mix=mix,
                connect_rate=500,
                scrape=[srv.url],
                source_addrs=source_addrs(2000),
            )
            return read_run(run_load(spec, tmp_path / name, tokens, quiet=True))

        rates = [{"connections": 2000, "hold_s": 8, "events_per_second": r} for r in (1000, 2500, 5000, 7500)]
        echo = measure("echo", rates, 1000, {"echo": 1.0})
        chat = measure("chat", [{"connections": 2000, "hold_s": 15}], 1.0, {"chat": 1.0})

    table = step_table(echo.events, SLO())
    # the highest offered rate whose step held p95 < 120 ms with errors within the SLO (the target is a
    # rate the server handles; its acked count is that rate up to Poisson noise: 7499/s at 7500/s)
    held = (table["p95_ms"] < 120) & (table["error_rate"] <= SLO().error_rate)
    best = max((r["events_per_second"] for r, ok in zip(rates, held, strict=True) if ok), default=0.0)
    row = benchmark_row(chat.events, chat.manifest)
    for r in table.itertuples():
        report(
            f"server echo {profile}",
            offered=round(r.sends_per_s),
            acked=round(r.throughput_eps),
            p95_ms=round(r.p95_ms, 1),
            errors=round(r.error_rate, 4),
        )
    report(
        f"server {profile}",
        echo_eps_within_120ms=best,
        target_optimized=7500,
        chat_2000_push_p95_ms=round(row["push_p95_ms"], 1),
        target_push_p95_ms=150,
    )
    assert (table["reached"] >= 2000).all(), table[["target", "reached"]]
    assert row["pushes"] > 0 and row["connections"] == 2000
    echo_row = benchmark_row(echo.events, echo.manifest)
    missed = [
        f"the generator was the bottleneck in {name} (CPU {r['gen_cpu_pct']:.0f} %, send lag p99 "
        f"{r['send_lag_p99_ms']:.0f} ms): these figures are the generator's"
        for name, r in (("echo", echo_row), ("chat", row))
        if not r["generator_ok"]
    ]
    if profile == "optimized":
        if not best >= 7500:
            missed.append(f"echo within 120 ms up to {best:.0f}/s offered (target 7500)")
        if not row["push_p95_ms"] <= 150:
            missed.append(f"chat push p95 {row['push_p95_ms']:.0f} ms (target 150)")
    if missed:
        pytest.xfail("; ".join(missed))


@pytest.mark.parametrize("profile", ["baseline", "optimized"])
def test_idle_connections_memory(tmp_path, profile):
    users = create_users(tmp_path / "db", 20, 500)
    sets = {"metrics_interval_ms": 1000, "max_connections": 20_000}
    with ServerProcess(profile, tmp_path / "db", sets, log_path=tmp_path / "s.log") as srv:
        idle = psutil.Process(srv.pid).memory_info().rss
        spec = LoadSpec(
            url=srv.url,
            steps=[{"connections": 10_000, "hold_s": 10}],
            events_per_second=0,
            connect_rate=1000,
            scrape=[srv.url],
            source_addrs=source_addrs(10_000),
        )
        run = read_run(run_load(spec, tmp_path / "idle", [u["token"] for u in users], quiet=True))
    df = run.events
    rss = df[(df["kind"] == "sample") & (df["name"] == "rss_bytes")]["value"].max()
    live = int((df["kind"] == "connect_ok").sum())
    per_conn_kb = (rss - idle) / live / 1e3 if live else float("nan")
    report(
        f"idle {profile}",
        connections=live,
        rss_mb=round(rss / 1e6),
        per_connection_kb=round(per_conn_kb, 1),
        target_kb=25,
        errors=int((df["kind"] == "error").sum()),
    )
    assert live == 10_000
