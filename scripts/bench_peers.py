#!/usr/bin/env python
"""Peer benchmark: stock python-socketio, the baseline, the optimized profile and Node socket.io 4,
driven by the lab's own generator, side by side; prints one table of figures and ratios.

    flock /tmp/caplab-load.lock .venv/bin/python scripts/bench_peers.py [--quick] [--out DIR]

Each point starts a fresh server pinned to core 0 (``taskset``); this process, which runs the
generator (one worker), pins itself to core 1. The servers are interleaved point by point, so
background load spreads over all of them. Server CPU and RSS come from the process itself
(``psutil``), sampled every 0.2 s, so every server is measured the same way.

Points: echo with ack from 2000 connections at rising rates (capacity: the highest rate whose
ack p95 < 120 ms with errors within the SLO, and CPU per acked event at every rate); a chat to a
room of 2000 at 5 chats/s (delivery p95 and server CPU per delivered recipient); 10 000 idle
connections opened as fast as the server takes them (connect rate and RSS per connection).
A rate at which the generator fell behind (CPU >= 90 % or send lag p99 >= 50 ms) makes the
figure a lower bound (">=").
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from eventlog import SLO, read_run, step_table  # noqa: E402
from eventlog.load import generator_ok  # noqa: E402
from lab.servers import create_users  # noqa: E402
from loadgen import LoadSpec, run_load  # noqa: E402
from loadgen.spec import source_addrs  # noqa: E402

SERVERS = ("node", "stock", "baseline", "optimized")
NODE_DIR = ROOT / "bench" / "node"
# the lab server's protective limits, opened for a benchmark of 10 000 connections from one company
LAB_SETS = {
    "max_connections": 20_000,
    "max_per_company": 20_000,
    "accept_rate": 100_000,
    "connect_rate_per_ip": 10_000,
    "connect_burst_per_ip": 10_000,
    "accept_rate_per_ip": 10_000,
    "accept_burst_per_ip": 10_000,
    "metrics_interval_ms": 1000,
}
P95_LIMIT_MS = 120.0
PROFILE_DIR: Path | None = None  # --py-spy DIR: py-spy records the Python servers' steady part (it costs CPU)


def node_modules() -> Path:
    """``npm ci`` of bench/node into a cache keyed by its lockfile (once); returns node_modules."""
    lock = (NODE_DIR / "package-lock.json").read_bytes()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "caplab" / "bench-node"
    target = cache / hashlib.sha256(lock).hexdigest()[:16]
    if not (target / "node_modules" / "socket.io").is_dir():
        target.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy(NODE_DIR / name, target / name)
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--prefix", str(target)], check=True, capture_output=True
        )
    return target / "node_modules"


def server_cmd(kind: str, db: Path, users_file: Path, sets: dict) -> tuple[list[str], dict]:
    env = dict(os.environ)
    if kind == "node":
        env["NODE_PATH"] = str(node_modules())
        return ["node", str(NODE_DIR / "server.js"), str(users_file)], env
    if kind == "stock":
        return [sys.executable, str(ROOT / "bench" / "stock_server.py"), str(users_file)], env
    cmd = [sys.executable, "-m", "server", "--profile", kind, "--port", "0", "--db", str(db)]
    for k, v in {**LAB_SETS, **sets}.items():
        cmd += ["--set", f"{k}={v}"]
    return cmd, env


@dataclass
class Sampler:
    """Server CPU seconds and RSS every ``period`` s, on the monotonic clock the run log uses."""

    pid: int
    period: float = 0.2
    rows: list[tuple[float, float, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.proc = psutil.Process(self.pid)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def sample(self) -> None:
        with contextlib.suppress(psutil.Error):
            cpu = self.proc.cpu_times()
            self.rows.append((time.monotonic(), cpu.user + cpu.system, self.proc.memory_info().rss))

    def run(self) -> None:
        while not self.stop.wait(self.period):
            self.sample()

    def __enter__(self) -> Sampler:
        self.sample()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.sample()

    def cpu_between(self, t0: float, t1: float) -> float:
        """CPU seconds between two monotonic times (interpolated between samples)."""
        a = np.array(self.rows)
        return float(np.interp(t1, a[:, 0], a[:, 1]) - np.interp(t0, a[:, 0], a[:, 1]))

    def rss_at(self, t: float) -> float:
        a = np.array(self.rows)
        return float(np.interp(t, a[:, 0], a[:, 2]))


@contextlib.contextmanager
def running(kind: str, db: Path, users_file: Path, log: Path, sets: dict | None = None, core: int | None = 0):
    cmd, env = server_cmd(kind, db, users_file, sets or {})
    if core is not None:
        cmd = ["taskset", "-c", str(core), *cmd]
    with open(log, "ab") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        if not line.startswith("listening on "):
            raise RuntimeError(f"{kind} server did not start: {line!r}; see {log}")
        time.sleep(0.3)  # start-up allocations settle before the idle RSS is read
        server = psutil.Process(proc.pid)
        while server.children():  # under taskset (exec) or py-spy (a child): the server itself
            server = server.children()[0]
        yield line.split()[-1], server.pid
    finally:
        if proc.poll() is None:
            for child in psutil.Process(proc.pid).children(recursive=True):  # py-spy writes when its child ends
                child.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


def measure(kind: str, point: str, args: argparse.Namespace, work: Path, users: list[dict], users_file: Path) -> dict:
    """One point against one fresh server; returns its figures."""
    tokens = [u["token"] for u in users]
    sets = dict(args.sets) if kind in ("baseline", "optimized") else {}
    if point == "fanout" and kind == "optimized" and args.batching_off:
        sets["batching"] = "off"
    out = work / f"{point}-{kind}"
    with running(kind, work / "lab.db", users_file, work / f"{kind}.log", sets, args.server_core) as (url, pid):
        rss_idle = psutil.Process(pid).memory_info().rss
        if point == "echo":
            conns = args.echo_connections
            steps = [{"connections": conns, "hold_s": args.settle_s, "events_per_second": 0}]  # connects finish
            steps += [{"connections": conns, "hold_s": args.hold_s, "events_per_second": r} for r in args.echo_rates]
            spec = LoadSpec(
                url=url,
                steps=steps,
                events_per_second=args.echo_rates[0],
                mix={"echo": 1.0},
                connect_rate=args.ramp_connect_rate,
                source_addrs=source_addrs(conns),
                drain_s=0.2,
            )
        elif point == "fanout":
            conns = args.fanout_connections
            spec = LoadSpec(
                url=url,
                steps=[
                    {"connections": conns, "hold_s": args.settle_s, "events_per_second": 0},
                    {"connections": conns, "hold_s": args.fanout_hold_s},
                ],
                events_per_second=args.chats_per_s,
                mix={"chat": 1.0},
                connect_rate=args.ramp_connect_rate,
                companies=1,
                source_addrs=source_addrs(conns),
                drain_s=0.5,
            )
        else:  # idle: connect as fast as the server takes them, then hold
            conns = args.idle_connections
            spec = LoadSpec(
                url=url,
                steps=[{"connections": conns, "hold_s": args.idle_hold_s}],
                events_per_second=0,
                connect_rate=args.offered_connect_rate,
                source_addrs=source_addrs(conns),
                connect_timeout_s=30,
                drain_s=0.0,
            )
        spy = None
        if PROFILE_DIR is not None and kind != "node":  # the steady part (after the settle step); idle: the connects
            duration = args.fanout_hold_s if point == "fanout" else args.hold_s * len(args.echo_rates)
            delay = args.settle_s + conns / spec.connect_rate + 1
            if point == "idle":
                delay, duration = 0.2, max(2.0, 1.5 * conns / spec.connect_rate)
            spy = subprocess.Popen(
                f"sleep {delay:.1f}; exec {Path(sys.executable).parent}/py-spy"
                f" record --nonblocking -r 200 -f raw -p {pid} -d {int(duration - 1)}"
                f" -o {PROFILE_DIR}/{point}-{kind}.txt >/dev/null 2>&1",
                shell=True,
            )
        with Sampler(pid) as sampler:
            run = read_run(run_load(spec, out, tokens[:conns], quiet=True))
        if spy is not None:
            spy.wait(30)
    df, t0 = run.events, run.manifest.monotonic_t0
    res: dict = {"kind": kind, "point": point}
    gen = df[(df["kind"] == "sample") & df["name"].astype(str).str.startswith("gen_cpu")]
    if point == "echo":
        table = step_table(df, SLO())
        rows = []
        from eventlog import steps as run_steps

        st = run_steps(df)
        for r, s in zip(table.itertuples(), st.itertuples(), strict=True):
            if r.step == 0:
                continue  # the settle step: no events
            cpu = sampler.cpu_between(t0 + s.window_start, t0 + s.end)
            acks = r.throughput_eps * (s.end - s.window_start)
            g = gen[(gen["t"] >= s.window_start) & (gen["t"] <= s.end)]["value"].to_numpy()
            gt = gen[(gen["t"] >= s.window_start) & (gen["t"] <= s.end)]["t"].to_numpy()
            gen_pct = 100 * (g[-1] - g[0]) / (gt[-1] - gt[0]) if len(g) >= 2 else float("nan")
            rows.append(
                {
                    "offered": args.echo_rates[r.step - 1],
                    "acked_per_s": r.throughput_eps,
                    "p95_ms": r.p95_ms,
                    "error_rate": r.error_rate,
                    "reached": r.reached,
                    "cpu_pct": 100 * cpu / (s.end - s.window_start),
                    "cpu_us_per_event": 1e6 * cpu / acks if acks else float("nan"),
                    "gen_ok": generator_ok(gen_pct, r.send_lag_p99_ms),
                    "gen_cpu_pct": gen_pct,
                    "send_lag_p99_ms": r.send_lag_p99_ms,
                }
            )
        res["steps"] = rows
    elif point == "fanout":
        from eventlog import steps as run_steps

        s = run_steps(df).iloc[-1]
        w0, w1 = float(s["window_start"]), float(s["end"])
        push = df[df["kind"] == "push"]
        sent_at = push["t"] - push["latency_s"]
        lat = push["latency_s"].to_numpy()[((sent_at >= w0) & (sent_at < w1)).to_numpy()]
        cpu = sampler.cpu_between(t0 + w0, t0 + w1)
        res.update(
            push_p50_ms=1000 * float(np.percentile(lat, 50)) if lat.size else float("nan"),
            push_p95_ms=1000 * float(np.percentile(lat, 95)) if lat.size else float("nan"),
            pushes=int(lat.size),
            expected=round(args.chats_per_s * (w1 - w0) * conns),
            cpu_us_per_recipient=1e6 * cpu / lat.size if lat.size else float("nan"),
            cpu_pct=100 * cpu / (w1 - w0),
        )
    else:
        ok_rows = df[df["kind"] == "connect_ok"]
        oks, connect_lat = ok_rows["t"], ok_rows["latency_s"].to_numpy()
        starts = df[df["kind"] == "connect_start"]["t"]
        live = len(oks)
        hold_end = float(df[(df["kind"] == "sample") & (df["name"] == "end")]["t"].max())
        rss = sampler.rss_at(t0 + hold_end - 0.3)
        res.update(
            connected=live,
            connect_rate=live / float(oks.max() - starts.min()) if live else float("nan"),
            # the server's own cost of a connect (handshake, upgrade, auth, rooms), whatever the generator managed
            cpu_us_per_connect=1e6 * sampler.cpu_between(t0 + float(starts.min()), t0 + float(oks.max())) / live
            if live
            else float("nan"),
            offered_connect_rate=args.offered_connect_rate,
            rss_mb=rss / 1e6,
            rss_kb_per_conn=(rss - rss_idle) / live / 1e3 if live else float("nan"),
            connect_errors=int((df["kind"] == "connect_fail").sum()),
            connect_ms={  # handshake to CONNECT ack, as the generator saw it
                f"p{q}": 1000 * float(np.percentile(connect_lat, q)) if live else float("nan") for q in (50, 95, 99)
            },
        )
    shutil.rmtree(out, ignore_errors=True)
    return res


def summarize(results: list[dict], args: argparse.Namespace) -> dict[str, dict]:
    """Per server: echo capacity (and whether it is a lower bound), CPU per event, fan-out, idle."""
    out: dict[str, dict] = {}
    for r in results:
        s = out.setdefault(r["kind"], {})
        if r["point"] == "echo":
            held = [x for x in r["steps"] if x["p95_ms"] < P95_LIMIT_MS and x["error_rate"] <= SLO().error_rate]
            best = max(held, key=lambda x: x["offered"], default=None)
            s["echo_capacity"] = best["offered"] if best else 0.0
            # a lower bound when the highest rate tried held, or the generator fell behind at the next one
            above = [x for x in r["steps"] if best is None or x["offered"] > best["offered"]]
            s["echo_capacity_lower_bound"] = not above or not above[0]["gen_ok"]
            # CPU per event at a rate every server holds (the lowest), and at the highest it held
            s["cpu_us_per_event"] = r["steps"][0]["cpu_us_per_event"]
            s["cpu_us_per_event_best"] = best["cpu_us_per_event"] if best else float("nan")
            s["echo_steps"] = r["steps"]
        elif r["point"] == "fanout":
            s.update({k: r[k] for k in ("push_p50_ms", "push_p95_ms", "cpu_us_per_recipient", "pushes", "expected")})
        else:
            idle = (
                "connect_rate",
                "cpu_us_per_connect",
                "rss_kb_per_conn",
                "connected",
                "connect_errors",
                "connect_ms",
            )
            s.update({k: r[k] for k in idle})
            # taking connects as fast as they were offered: the server's rate is at least that
            s["connect_rate_lower_bound"] = r["connect_rate"] >= 0.97 * r["offered_connect_rate"]
    return out


def fmt(v: float, digits: int = 1) -> str:
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:,.{digits}f}"


def table(summary: dict[str, dict], args: argparse.Namespace) -> str:
    kinds = [k for k in SERVERS if k in summary]

    def echo_cap(s: dict) -> str:  # n/a when the echo point did not run (--points)
        return (">= " if s.get("echo_capacity_lower_bound") else "") + fmt(s.get("echo_capacity", float("nan")), 0)

    def connect_rate(s: dict) -> str:  # ">=": the offered rate was taken, the server's limit not reached
        return (">= " if s.get("connect_rate_lower_bound") else "") + fmt(s.get("connect_rate", float("nan")), 0)

    metrics = [
        (f"echo capacity, ack p95 < {P95_LIMIT_MS:g} ms (events/s)", "echo_capacity", echo_cap, False),
        (f"server CPU per echo at {args.echo_rates[0]:g}/s (us)", "cpu_us_per_event", None, True),
        ("server CPU per echo at its capacity (us)", "cpu_us_per_event_best", None, True),
        (f"chat to {args.fanout_connections}, delivery p95 (ms)", "push_p95_ms", None, True),
        ("server CPU per delivered recipient (us)", "cpu_us_per_recipient", None, True),
        (f"RSS per idle connection at {args.idle_connections} (KB)", "rss_kb_per_conn", None, True),
        (f"connect rate to {args.idle_connections} (/s)", "connect_rate", connect_rate, False),
        ("server CPU per connect (us)", "cpu_us_per_connect", None, True),
    ]
    head = ["figure", *kinds]
    if "optimized" in summary:
        head += [f"optimized/{k}" for k in ("node", "stock") if k in summary]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, key, render, _lower_better in metrics:
        cells = [label]
        for k in kinds:
            s = summary[k]
            cells.append(render(s) if render else fmt(s.get(key, float("nan")), 1))
        if "optimized" in summary:
            for ref in ("node", "stock"):
                if ref in summary:
                    a, b = summary["optimized"].get(key, np.nan), summary[ref].get(key, np.nan)
                    ratio = a / b if b else float("nan")
                    lb = (key == "echo_capacity" and summary[ref].get("echo_capacity_lower_bound")) or (
                        key == "connect_rate" and summary[ref].get("connect_rate_lower_bound")
                    )
                    cells.append(("<= " if lb else "") + fmt(ratio, 2))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def setting(text: str) -> tuple[str, str]:
    """``--set KEY=VALUE``."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE, e.g. gc_tuning=off")
    return key, value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--servers", default=",".join(SERVERS), help="comma-separated subset of " + ",".join(SERVERS))
    p.add_argument("--echo-rates", default="5000,10000,15000", help="echo events/s, one step each")
    p.add_argument("--echo-connections", type=int, default=2000)
    p.add_argument("--hold-s", type=float, default=6.0, help="seconds per echo step")
    p.add_argument("--fanout-connections", type=int, default=2000)
    p.add_argument("--chats-per-s", type=float, default=5.0)
    p.add_argument("--fanout-hold-s", type=float, default=10.0)
    p.add_argument("--idle-connections", type=int, default=10_000)
    p.add_argument("--idle-hold-s", type=float, default=8.0)
    p.add_argument("--settle-s", type=float, default=3.0, help="idle hold after the connects, before events")
    p.add_argument("--offered-connect-rate", type=float, default=3000.0, help="idle point: offered connects/s")
    p.add_argument("--ramp-connect-rate", type=float, default=500.0, help="echo and fan-out points: connects/s")
    p.add_argument("--points", default="echo,fanout,idle")
    p.add_argument("--batching-off", action="store_true", help="fan-out point: optimized with batching=off")
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        type=setting,
        metavar="KEY=VALUE",
        help="a setting or toggle of the lab's servers (baseline, optimized), e.g. gc_tuning=off; repeatable",
    )
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke run of the whole benchmark)")
    p.add_argument("--server-core", type=int, default=0, help="core the server is pinned to (-1: not pinned)")
    p.add_argument("--json", type=Path, help="also write every figure here")
    p.add_argument("--py-spy", type=Path, metavar="DIR", help="profile the Python servers (py-spy raw stacks here)")
    args = p.parse_args(argv)
    if args.py_spy is not None:
        global PROFILE_DIR
        PROFILE_DIR = args.py_spy.resolve()
        PROFILE_DIR.mkdir(parents=True, exist_ok=True)
    args.echo_rates = [float(x) for x in args.echo_rates.split(",")]
    if args.quick:
        args.echo_rates, args.echo_connections, args.hold_s = [500.0, 1000.0], 200, 4.0
        args.fanout_connections, args.fanout_hold_s, args.idle_connections = 200, 4.0, 500
    kinds = [k.strip() for k in args.servers.split(",") if k.strip()]
    bad = [k for k in kinds if k not in SERVERS]
    if bad:
        p.error(f"unknown server(s) {', '.join(bad)}; expected some of {', '.join(SERVERS)}")
    args.server_core = None if args.server_core < 0 or (os.cpu_count() or 1) < 2 else args.server_core
    if args.server_core is not None:  # the generator gets the other core(s)
        others = set(range(os.cpu_count() or 1)) - {args.server_core}
        os.sched_setaffinity(0, others)
    if "node" in kinds:
        node_modules()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        work = Path(tmp)
        n = max(args.echo_connections, args.fanout_connections, args.idle_connections)
        users = create_users(work / "lab.db", 1, n)
        users_file = work / "users.jsonl"
        users_file.write_text("".join(json.dumps(u) + "\n" for u in users))
        results = []
        for point in args.points.split(","):
            for kind in kinds:  # interleaved: every server meets the same background load
                t = time.monotonic()
                r = measure(kind, point, args, work, users, users_file)
                print(f"# {point:6s} {kind:9s} {time.monotonic() - t:5.1f} s", file=sys.stderr, flush=True)
                results.append(r)
    summary = summarize(results, args)
    load = os.getloadavg()
    print(table(summary, args))
    print()
    for kind in kinds:
        for x in summary[kind].get("echo_steps", []):
            flag = "" if x["gen_ok"] else " (generator behind)"
            print(
                f"echo {kind:9s} {x['reached']:>5} conns offered {x['offered']:>7,.0f}/s "
                f"acked {x['acked_per_s']:>7,.0f}/s "
                f"p95 {x['p95_ms']:7.1f} ms CPU {x['cpu_pct']:5.1f} % {x['cpu_us_per_event']:6.1f} us/event{flag}"
            )
    for kind in kinds:
        s = summary[kind]
        if "push_p95_ms" in s:
            print(
                f"fanout {kind:9s} p50 {s['push_p50_ms']:6.1f} ms p95 {s['push_p95_ms']:6.1f} ms "
                f"deliveries {s['pushes']}/{s['expected']}"
            )
        if "connected" in s:
            lat = " / ".join(f"{v:.1f}" for v in s["connect_ms"].values())
            print(
                f"idle {kind:9s} connected {s['connected']} connect errors {s['connect_errors']}"
                f" connect latency p50/p95/p99 {lat} ms"
            )
    print(f"\nload average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; took {time.monotonic() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "results": results, "loadavg": load}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
