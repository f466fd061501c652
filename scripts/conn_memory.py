#!/usr/bin/env python
"""Where the bytes of one idle connection go: the server runs in this process under ``tracemalloc``,
the lab's generator opens N idle connections from a child process, and the growth is split by the
library file that allocated it and by object type (``gc`` objects, ``sys.getsizeof``).

    .venv/bin/python scripts/conn_memory.py --profile optimized --connections 2000 [--set NAME=VALUE ...]

Prints two tables (bytes per connection): allocations grouped by component (aiohttp, engine.io,
python-socketio, asyncio, the lab server, other) and the object types that grew the most.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import sys
import tempfile
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab.servers import create_users  # noqa: E402
from server.settings import build_settings, parse_overrides  # noqa: E402

COMPONENTS = (
    ("aiohttp", "/aiohttp/"),
    ("engine.io", "/engineio/"),
    ("python-socketio", "/socketio/"),
    ("bidict (socketio rooms)", "/bidict/"),
    ("asyncio", "/asyncio/"),
    ("uvloop", "uvloop"),
    ("lab server", "/server/"),
)
GENERATOR = """
import json, sys
from loadgen import LoadSpec, run_load
from loadgen.spec import source_addrs
url, n, hold, out, tokens = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], json.loads(sys.argv[5])
spec = LoadSpec(url=url, steps=[{"connections": n, "hold_s": hold}], events_per_second=0,
                connect_rate=float(sys.argv[6]), source_addrs=source_addrs(n), connect_timeout_s=30, drain_s=0)
run_load(spec, out, tokens, quiet=True)
"""


def component(filename: str) -> str:
    for name, part in COMPONENTS:
        if part in filename:
            return name
    return "other"


def type_census() -> collections.Counter:
    sizes: collections.Counter = collections.Counter()
    for obj in gc.get_objects():
        sizes[type(obj).__name__] += sys.getsizeof(obj)
    return sizes


async def main(args: argparse.Namespace) -> None:
    from aiohttp import web

    from server.app import LabServer

    work = Path(tempfile.mkdtemp(prefix="conn-memory-"))
    users = create_users(work / "lab.db", 1, args.connections)
    sets = {
        "max_connections": 20_000,
        "max_per_company": 20_000,
        "accept_rate": 100_000,
        "connect_rate_per_ip": 10_000,
        "connect_burst_per_ip": 10_000,
        **parse_overrides(args.set),
        "db": str(work / "lab.db"),
    }
    settings = build_settings(args.profile, sets)
    lab = LabServer(settings)
    runner = web.AppRunner(lab.app, handle_signals=False, access_log=None, shutdown_timeout=3.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    tracemalloc.start(1)
    gc.collect()
    types_before = type_census()  # first: a snapshot holds a tuple per trace
    before = tracemalloc.take_snapshot()
    hold = 8.0 + args.connections / args.connect_rate
    gen = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        GENERATOR,
        url,
        str(args.connections),
        str(hold),
        str(work / "runs"),
        json.dumps([u["token"] for u in users]),
        str(args.connect_rate),
        cwd=ROOT,
    )
    for _ in range(int(hold * 10)):  # until every connection is up (or the hold ends)
        await asyncio.sleep(0.1)
        if len(lab.sockets) >= args.connections:
            break
    await asyncio.sleep(1.0)
    n = sum(1 for st in lab.sockets.values() if st.connected)
    if n == 0:
        raise SystemExit(f"no connection came up; generator log under {work / 'runs'}")
    gc.collect()
    types_after = type_census()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    await gen.wait()
    await runner.cleanup()

    by_comp: collections.Counter = collections.Counter()
    for stat in after.compare_to(before, "filename"):
        by_comp[component(stat.traceback[0].filename)] += stat.size_diff
    total = sum(by_comp.values())
    print(
        f"{args.profile} {' '.join(args.set)}: {n} idle connections, growth {total / max(n, 1):,.0f} B per connection"
    )
    print("\n| allocated in | bytes per connection | share |\n|---|---|---|")
    for name, size in by_comp.most_common():
        print(f"| {name} | {size / n:,.0f} | {100 * size / total:.0f} % |")
    grew = types_after.copy()
    grew.subtract(types_before)
    print("\n| object type (gc-tracked, getsizeof) | bytes per connection |\n|---|---|")
    for name, size in grew.most_common(args.top):
        print(f"| {name} | {size / n:,.0f} |")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profile", default="optimized")
    p.add_argument("--connections", type=int, default=2000)
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--connect-rate", type=float, default=100.0, help="slow: tracemalloc slows the server")
    args = p.parse_args()
    if build_settings(args.profile, parse_overrides(args.set)).toggles.uvloop:
        import uvloop

        uvloop.run(main(args))
    else:
        asyncio.run(main(args))
