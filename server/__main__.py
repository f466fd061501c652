"""``python -m server``: run a node, or create users.

python -m server --profile optimized --host 127.0.0.1 --port 0 --db lab.db [--set batching=off]
python -m server users --db lab.db --companies 4 --users 50
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import signal
import sys
from collections.abc import Callable

from .settings import PROFILES, SettingsError, build_settings, parse_overrides


def _serve_parser(prog: str = "python -m server") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Run one node of the reference server.")
    p.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="baseline",
        help="baseline: every toggle off (default); optimized: all on",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--db", default="caplab.db", help="SQLite file (created and migrated if needed)")
    p.add_argument("--node", type=int, default=0, help="node id reported in metrics")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a toggle or setting, e.g. batching=off, batch_size=20 (repeatable)",
    )
    return p


def _users_parser(prog: str = "python -m server users") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Create companies and users.")
    p.add_argument("--db", required=True, help="SQLite file (created and migrated if needed)")
    p.add_argument("--companies", type=int, required=True, help="companies to create")
    p.add_argument("--users", type=int, required=True, help="users per company")
    p.add_argument("--ttl", type=float, default=30 * 86400, help="token lifetime in seconds")
    return p


def users_main(argv: list[str], prog: str = "python -m server users") -> int:
    args = _users_parser(prog).parse_args(argv)
    if args.companies < 1 or args.users < 1:
        print("error: --companies and --users must be at least 1", file=sys.stderr)
        return 2
    from .db import Database

    db = Database(args.db)
    for rec in db.create_users(args.companies, args.users, args.ttl):
        sys.stdout.write(json.dumps(rec) + "\n")
    db.close()
    return 0


async def serve(settings) -> None:
    from aiohttp import web

    from .app import LabServer
    from .gate import AcceptGate

    lab = LabServer(settings)
    # a stuck websocket handler holds aiohttp's shutdown for up to shutdown_timeout (60 s by default);
    # lab runs close their clients first, so anything still open after 3 s is cut
    runner = web.AppRunner(lab.app, handle_signals=False, access_log=None, shutdown_timeout=3.0)
    await runner.setup()
    loop = asyncio.get_running_loop()
    server = runner.server
    assert server is not None  # set by setup()
    factory: Callable[[], asyncio.BaseProtocol] = server
    if settings.toggles.conn_limits:  # a per-IP accept rate before aiohttp reads a byte
        refusals = lab.metrics.refusals
        factory = AcceptGate(
            server,
            settings.accept_rate_per_ip,
            settings.accept_burst_per_ip,
            lab.connect_rate.refusal,
            lambda reason: refusals.labels(reason=reason).inc(),
        )
    listener = await loop.create_server(factory, settings.host, settings.port, backlog=4096, reuse_address=True)
    port = listener.sockets[0].getsockname()[1]
    # every handler is in place before anyone is told the port: a signal right after it is no race
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1`: every thread's stack to stderr
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"listening on http://{settings.host}:{port}", flush=True)
    await stop.wait()
    listener.close()  # no new connections; the runner then closes the open ones
    await runner.cleanup()


def main(argv: list[str] | None = None, prog: str = "python -m server") -> int:
    """``prog`` names the command in usage and errors (``caplab serve`` runs this too)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["users"]:
        return users_main(argv[1:], f"{prog} users")
    args = _serve_parser(prog).parse_args(argv)
    try:
        overrides = parse_overrides(args.set)
        settings = build_settings(
            args.profile, {**overrides, "host": args.host, "port": args.port, "db": args.db, "node": args.node}
        )
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from .logs import install

    install(settings.log_level)  # one line per record, capped per kind: bad input cannot flood the log
    loop_factory = None
    if settings.toggles.uvloop:
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
