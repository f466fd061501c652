"""``caplab``: run scenarios, serve, load, calibrate, simulate, report, and list runs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


class UsageError(ValueError):
    """Bad command-line or environment input; the message says which and why."""


def cmd_serve(args: argparse.Namespace, rest: list[str]) -> int:
    from server.__main__ import main as server_main

    return server_main(rest)


def cmd_load(args: argparse.Namespace, rest: list[str]) -> int:
    from eventlog import benchmark_row, read_run
    from loadgen import read_tokens, run_load

    from .loadcli import spec_from_args
    from .tables import format_row

    spec = spec_from_args(args)
    tokens = read_tokens(args.tokens)
    run_dir = run_load(spec, args.out, tokens, name=args.name)
    run = read_run(run_dir)
    print(format_row(benchmark_row(run.events, run.manifest)))
    print(run_dir)
    return 0


def cmd_runs(args: argparse.Namespace, rest: list[str]) -> int:
    from eventlog import benchmark_row, read_manifest, read_run

    from .tables import format_row

    root = Path(args.out)
    if args.run:
        run_dir = Path(args.run) if Path(args.run).is_dir() else root / args.run
        if not (run_dir / "manifest.json").exists():
            raise UsageError(f"no run at {run_dir}")
        run = read_run(run_dir)
        print(json.dumps(run.manifest, indent=2, default=str))
        print(format_row(benchmark_row(run.events, run.manifest)))
        return 0
    dirs = sorted(d for d in root.glob("*") if (d / "manifest.json").exists()) if root.is_dir() else []
    if not dirs:
        print(f"no runs under {root}/")
        return 0
    print(f"{'run id':<44} {'source':<10} {'status':<9} profile")
    for d in dirs:
        m = read_manifest(d)
        print(f"{m['run_id']:<44} {m['source']:<10} {m['status']:<9} {m.get('profile', '')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="caplab",
        description="Capacity-planning lab for Socket.IO services. Runs go to runs/ by default.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  caplab serve --profile optimized --port 0 --db lab.db\n"
        "  MAX_CONNECTIONS=1000 EVENTS_PER_SECOND=500 TEST_DURATION=30000 \\\n"
        "    SOCKET_URL=http://127.0.0.1:PORT caplab load --tokens users.jsonl\n"
        "  caplab runs",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    s = sub.add_parser("serve", help="run one server node (same flags as python -m server)", add_help=False)
    s.set_defaults(func=cmd_serve)
    s = sub.add_parser("load", help="run open-loop load against a server into a new run folder")
    from .loadcli import add_load_arguments

    add_load_arguments(s)
    s.set_defaults(func=cmd_load)
    s = sub.add_parser("runs", help="list runs, or show one run's manifest and benchmark row")
    s.add_argument("run", nargs="?", help="run id or folder")
    s.add_argument("--out", default="runs")
    s.set_defaults(func=cmd_runs)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:  # before build_parser: a server process must not import the lab's data stack
        return cmd_serve(argparse.Namespace(), argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args, [])
    except UsageError as exc:
        print(f"caplab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"caplab {args.command}: interrupted; the run folder keeps what was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
