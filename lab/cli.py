"""``caplab``: run scenarios, serve, load, calibrate, simulate, report, and list runs."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UsageError, one_line

if TYPE_CHECKING:
    from eventlog import Run
    from model import Calibration

    from .scenario import Scenario


def cmd_serve(args: argparse.Namespace, rest: list[str]) -> int:
    from server.__main__ import main as server_main

    return server_main(rest, prog="caplab serve")


def cmd_load(args: argparse.Namespace, rest: list[str]) -> int:
    from eventlog import benchmark_row, read_run
    from loadgen import read_tokens, run_load
    from loadgen.cluster import ClusterError
    from loadgen.launch import abort_on_signals

    from .executor import cluster_address
    from .loadcli import server_identity, spec_from_args
    from .tables import connection_counts, format_row

    spec = spec_from_args(args)
    cluster = cluster_address(args.cluster)
    try:
        tokens = read_tokens(args.tokens)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--tokens {args.tokens}: {getattr(exc, 'strerror', None) or exc}") from None
    _reachable(spec.url, "--url" if args.url else "SOCKET_URL")
    identity, warning = server_identity(spec.url, os.environ.get("SOCKET_ADMIN_TOKEN"))
    if warning:
        print(f"caplab load: warning: {warning}", file=sys.stderr)
    with abort_on_signals():
        try:
            run_dir = run_load(spec, args.out, tokens, name=args.name, manifest_fields=identity, cluster=cluster)
        except ClusterError as exc:
            raise UsageError(str(exc)) from None
        run = read_run(run_dir)
    print(format_row(benchmark_row(run, run.manifest), connection_counts(run)))
    print(run_dir)
    return 0


def _reachable(url: str, source: str = "--url", timeout_s: float = 5.0) -> None:
    """A UsageError if nothing accepts a TCP connection at ``url``: a wrong port is one line, not a run of
    errors."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme in ("https", "wss") else 80)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=timeout_s).close()
    except OSError as exc:
        why = "connection refused" if isinstance(exc, ConnectionRefusedError) else one_line(exc.strerror or exc)
        raise UsageError(f"{source} {url}: cannot connect: {why}; is the server running? nothing started") from None


def cmd_runs(args: argparse.Namespace, rest: list[str]) -> int:
    from eventlog import ManifestError, read_manifest, run_status

    root = Path(args.out)
    if args.run:
        run_dir = Path(args.run) if Path(args.run).is_dir() else root / args.run
        if not (run_dir / "manifest.json").exists():
            raise UsageError(f"no run at {run_dir}")
        try:
            return _show_run(run_dir)
        except ManifestError as exc:
            raise UsageError(str(exc)) from None
    dirs = sorted(d for d in root.glob("*") if (d / "manifest.json").exists()) if root.is_dir() else []
    if not dirs:
        print(f"no runs under {root}/")
        return 0
    rows = []
    for d in dirs:
        try:
            m = read_manifest(d)
        except ManifestError as exc:
            rows.append((d.name, "?", "damaged", "", one_line(exc)))
            continue
        status, why = run_status(m)
        rows.append((m.run_id, m.source, status, m.profile, why))
    table = [("run id", "source", "status", "profile", "note"), *rows]
    widths = [max(len(r[i]) for r in table) for i in range(4)]  # long run ids widen the column, never break it
    for r in table:
        print(" ".join([*(f"{v:<{w}}" for v, w in zip(r[:4], widths, strict=True)), r[4]]).rstrip())
    return 0


def _show_run(run_dir: Path) -> int:
    """The manifest (with the status to report), then the benchmark row; a skipped part or a row that
    cannot be computed is one line on stderr each."""
    from eventlog import benchmark_row, read_run, run_status, step_costs

    from .tables import connection_counts, format_row

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = read_run(run_dir)
    for w in caught:
        print(f"caplab runs: warning: {one_line(w.message)}", file=sys.stderr)
    status, why = run_status(run.manifest)
    shown = run.manifest.json_dict()
    if status != run.manifest.status:
        shown.update(status=status, status_recorded=run.manifest.status, status_reason=why)
    print(json.dumps(shown, indent=2, default=str))
    try:
        row = benchmark_row(run, run.manifest)
    except Exception as exc:  # a damaged log: say why, after the manifest
        print(f"caplab runs: error: {run_dir.name}: no benchmark row: {_why_no_row(run, exc)}", file=sys.stderr)
        return 1
    print(format_row(row, connection_counts(run)))
    costs = step_costs(run)
    if len(costs):
        print(
            "per step, from the server's counters (CPU per event falls as more events share a loop wake-up; "
            "cpu_wait_pct: the share of the time the loop waited for a CPU other processes held):"
        )
        print(costs.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    return 0


def _why_no_row(run: Run, exc: Exception) -> str:
    from eventlog import steps

    planned = len((run.manifest.load or {}).get("steps") or [])
    found = len(steps(run))
    if planned and found != planned:
        return f"the log holds {found} of its {planned} step markers (sample rows 'step'); a skipped part held them"
    return f"{type(exc).__name__}: {one_line(exc)}"


def cmd_run(args: argparse.Namespace, rest: list[str]) -> int:
    from loadgen.cluster import ClusterError, generators_on
    from loadgen.launch import abort_on_signals

    from .executor import cluster_address, runs_root
    from .runner import run_scenario

    sc = validated_scenario(args.scenario)
    reuse = [_measured_run(p) for p in args.reuse] if args.reuse else None
    cluster = cluster_address(args.cluster, sc.cluster)
    if args.load_on_cluster and cluster is None:
        raise UsageError(
            "--load-on-cluster: no cluster: pass --cluster, set DASK_SCHEDULER_ADDRESS or give the scenario "
            "'cluster:'; nothing started"
        )
    with abort_on_signals(), generators_on(cluster if args.load_on_cluster else None):
        try:
            out_dir = run_scenario(
                sc, runs_root(args.runs), Path(args.reports), quiet=args.quiet, reuse=reuse, cluster=cluster
            )
        except ClusterError as exc:
            raise UsageError(str(exc)) from None
    print(f"outputs: {out_dir}")
    pdf = out_dir / "report.pdf"
    print(pdf if pdf.exists() else out_dir)
    return 0


def validated_scenario(path: str) -> Scenario:
    """The scenario, or a one-line UsageError: every check runs before anything starts, and an
    error nobody foresaw while validating is one line too, never a traceback."""
    from . import scenario

    try:
        return scenario.load_scenario(path)
    except scenario.ScenarioError as exc:
        raise UsageError(f"scenario {exc}; nothing started") from None
    except Exception as exc:
        raise UsageError(
            f"scenario {path}: could not be validated: {type(exc).__name__}: {one_line(exc)}; nothing started"
        ) from None


def _measured_run(path: str) -> Path:
    """A measured run whose log holds its load steps, or a one-line UsageError."""
    from eventlog import ManifestError, read_manifest, read_run, steps

    try:
        source = read_manifest(path).source
    except ManifestError as exc:
        raise UsageError(f"--reuse {exc}; nothing started") from None
    if source != "measured":
        raise UsageError(f"--reuse takes measured runs; {path} is {source}; nothing started")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a skipped part shows when the run is analysed
        marked = steps(read_run(path))  # scanned from the parts, in bounded memory
    if marked.empty:
        raise UsageError(f"--reuse {path}: its event log holds no load steps (sample rows 'step'); nothing started")
    return Path(path)


def cmd_calibrate(args: argparse.Namespace, rest: list[str]) -> int:
    from eventlog import read_run
    from model.calibrate import calibrate

    if args.prometheus:
        from .prometheus import fetch_run

        if not args.profile:
            raise UsageError("--prometheus needs --profile baseline|optimized: Prometheus does not carry the settings")
        try:
            path = fetch_run(
                args.prometheus, args.selector, Path(args.runs), args.profile, args.seconds, args.end, args.step
            )
        except ValueError as exc:  # PrometheusError too: a bad selector, an unreachable server, no series
            raise UsageError(str(exc)) from None
        runs = [read_run(path)]
        print(f"run from Prometheus range queries: {path}")
    elif args.live:
        from .live import scrape_live

        if not args.profile:
            raise UsageError(
                "--live needs --profile baseline|optimized: /socket-metrics does not show the node's settings"
            )
        runs = [read_run(scrape_live(args.live, args.seconds, Path(args.runs), args.profile))]
    else:
        if not args.run:
            raise UsageError("name measured run folders, or --live URL, or --prometheus URL")
        runs = [_run_folder(r) for r in args.run]
    try:
        cal = calibrate(runs)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    cal.save(args.out)
    fit = cal.fit.get("cpu", {})
    r2 = fit.get("r2")
    if not fit.get("regressors"):
        print(
            "caplab calibrate: warning: nothing the CPU fit uses (events, deliveries, connects, live connections, "
            "wake-ups with events) "
            "moved in these runs: the CPU costs are not measured (fit R2 0); calibrate on runs under load instead",
            file=sys.stderr,
        )
    elif r2 is not None and r2 < 0.5:
        print(
            f"caplab calibrate: warning: CPU fit R2 {r2:.3f} (below 0.5): the costs explain little of the CPU; "
            "simulations from this calibration are rough",
            file=sys.stderr,
        )
    for w in cal.fit_warnings():
        print(f"caplab calibrate: warning: {w}", file=sys.stderr)
    print(
        f"cpu/event {cal.cpu_per_event_s * 1e6:.1f} us, per delivery {cal.cpu_per_delivery_s * 1e6:.2f} us, "
        f"memory {cal.memory_base_bytes / 1e6:.0f} MB + {cal.memory_per_connection_bytes / 1e3:.1f} KB/connection, "
        f"CPU fit R2 {fit.get('r2', float('nan')):.3f} on {fit.get('n_samples', 0)} samples, "
        f"condition number {fit.get('condition_number', float('nan')):.1f}"
    )
    for name, p in (fit.get("params") or {}).items():
        se = p.get("se")
        se_text = f" +- {se * 1e6:.2f}" if se is not None and math.isfinite(se) else " (at its bound: no SE)"
        print(f"  {name:<28} {p['value'] * 1e6:10.2f}{se_text} us (1 SE)")
    print(cal.client_text())
    print(args.out)
    return 0


def _run_folder(path: str) -> Run:
    """A run folder's run, or a one-line UsageError saying why it is not one."""
    from eventlog import ManifestError, read_run

    try:
        return read_run(path)
    except (ManifestError, OSError) as exc:
        raise UsageError(f"{path}: not a run folder (runs/RUN_ID with a manifest.json): {one_line(exc)}") from None


def cmd_simulate(args: argparse.Namespace, rest: list[str]) -> int:
    from pydantic import ValidationError

    from eventlog import benchmark_row, companies_needed, read_run
    from model import Workload, confidence, replicate

    from .executor import cluster_address, runs_root, simulations_on
    from .progress import display
    from .tables import connection_counts

    cal = _calibration(args.calibration)
    if args.replay:
        return _replay(cal, args)
    if args.connections is None or args.rate is None or args.duration is None:
        raise UsageError("--connections, --events-per-connection and --duration are required (or --replay RUN)")
    if args.connections < 1 or args.rate < 0 or args.duration <= 0:
        raise UsageError("--connections >= 1, --events-per-connection >= 0 and --duration > 0 are required")
    if args.replications < 1 or args.nodes < 1:
        raise UsageError("--replications and --nodes must be at least 1")
    try:
        wl = Workload.model_validate(
            {
                "steps": [{"connections": args.connections, "hold_s": args.duration}],
                "events_per_second": args.rate * args.connections,
                "mix": _mix(args.mix),
                "companies": companies_needed(args.connections),
                "connect_rate": args.connect_rate,
            }
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        raise UsageError(f"{'.'.join(str(x) for x in err['loc']) or 'load'}: {err['msg']}") from None
    root = runs_root(args.out)
    with display(), simulations_on(cluster_address(args.cluster), root, "replications"):
        dirs = replicate(
            cal, wl, root, args.replications, args.seed, nodes=args.nodes, name="simulate", extra={"log": args.log}
        )
    runs = [read_run(d) for d in dirs]  # projected from their parts, in bounded memory
    rows: list[dict[str, Any]] = [dict(benchmark_row(r, r.manifest)) for r in runs]
    connects = [connection_counts(r) for r in runs]
    for row, c in zip(rows, connects, strict=True):
        row["connections_refused"] = c["failed"]
    total = f"total of {args.nodes} nodes" if args.nodes > 1 else "one node"
    notes = {
        "mean_cpu_pct": f"% of one core, {total}",
        "peak_memory_mb": total,
        "error_rate_pct": "events of the steady window",
        "error_rate_run_pct": "whole run, refused connections counted",
        "connections_refused": f"of {args.connections} attempted",
    }
    metrics = ["p50_ms", "p95_ms", "p99_ms", "throughput_eps", "mean_cpu_pct", "peak_memory_mb", "error_rate_pct"]
    metrics += ["error_rate_run_pct", "connections_refused"]
    for m in metrics:
        mean, half = confidence([r[m] for r in rows])
        if len(rows) < 2:
            ci = "(1 replication: no spread)"
        else:
            ci = f"+- {half:.2f} (95 % CI, {len(rows)} replications)" if math.isfinite(half) else "+- n/a"
        note = f"; {notes[m]}" if m in notes else ""
        print(f"{m:<20} {mean:10.2f} {ci}{note}")
    refused = [c["failed"] for c in connects]
    if any(refused):
        reasons: dict[str, int] = {}
        for c in connects:
            for k, v in c["failed_by"].items():
                reasons[k] = reasons.get(k, 0) + v
        why = ", ".join(f"{k}: {v / len(rows):g} per replication" for k, v in reasons.items())
        print(
            f"WARNING: connections were refused in {sum(1 for r in refused if r)} of {len(rows)} replications "
            f"({why}; limits of the calibrated node: {cal.max_connections} per node, {cal.max_per_company} per "
            "company): latency, CPU and memory cover only the accepted connections; add --nodes"
        )
    if len(rows) < 2:
        print("(1 replication: no spread; pass --replications 3 or more for a confidence interval)")
    for d in dirs:
        print(d)
    return 0


class _DeprecatedRate(argparse.Action):
    """``--rate``: the old spelling of ``--events-per-connection``, kept working with a warning (``caplab load``'s
    ``--events-per-second`` is a total rate; this one is per connection)."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object, opt: str | None = None
    ) -> None:
        if opt == "--rate":
            print(
                "caplab simulate: warning: --rate is deprecated: it is --events-per-connection (events per second "
                "per connection; caplab load's --events-per-second is the total)",
                file=sys.stderr,
            )
        setattr(namespace, self.dest, values)


def _replay(cal: Calibration, args: argparse.Namespace) -> int:
    """``simulate --replay RUN``: the model driven by a measured run's exact arrivals, compared per second."""
    from model.replay import replay_and_compare

    measured = _run_folder(args.replay)
    if measured.manifest.source != "measured":
        raise UsageError(f"--replay {args.replay}: a {measured.manifest.source} run; replay takes a measured one")
    try:
        run_dir, _per_s, per_step = replay_and_compare(cal, measured.path, args.out, args.seed)
    except ValueError as exc:
        raise UsageError(f"--replay {args.replay}: {exc}") from None
    print(f"replay of {measured.run_id} with {args.calibration} (exact sends, connects and client closes)")
    print(f"{'step':>4} {'conns':>6}  {'metric':<15} {'measured':>10} {'replayed':>10} {'error':>8}")
    for row in per_step.itertuples():
        for metric in ("throughput_eps", "p50_ms", "p95_ms", "cpu_pct"):
            m, r, e = (getattr(row, f"{metric}_{x}") for x in ("measured", "replayed", "error_pct"))
            err = f"{e:+7.1f}%" if math.isfinite(e) else "     n/a"
            print(f"{row.step:>4} {row.target:>6}  {metric:<15} {m:10.2f} {r:10.2f} {err}")
    print(run_dir / "replay-vs-measured.csv")
    print(run_dir)
    return 0


def _calibration(path: str) -> Calibration:
    """The calibration file, or a one-line UsageError naming the file and what is wrong with it."""
    from pydantic import ValidationError

    from model import Calibration

    try:
        return Calibration.load(path)
    except OSError as exc:
        raise UsageError(f"--calibration {path}: cannot read: {exc.strerror or exc}") from None
    except (ValidationError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"--calibration {path}: not a calibration (the JSON `caplab calibrate --out` writes): {_first_error(exc)}"
        ) from None


def _first_error(exc: Exception) -> str:
    """The first of a pydantic ValidationError's errors as `where: what`, else the message on one line."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError) and exc.errors():
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        return f"{where}: {err['msg']}" if where else str(err["msg"])
    return one_line(exc)


def _mix(text: str) -> dict[str, float]:
    out = {}
    for part in filter(None, text.split(",")):
        name, _, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise UsageError(f"--mix {part!r}: expected NAME=NUMBER") from None
    return out


def cmd_report(args: argparse.Namespace, rest: list[str]) -> int:
    from .report import build_report

    out_dir = Path(args.outputs)
    if not (out_dir / "runs.json").exists():
        raise UsageError(f"{out_dir} holds no runs.json: pass a scenario's output folder (reports/NAME)")
    print(build_report(out_dir))
    return 0


CLUSTER_HELP = (
    "run the simulations on the Dask scheduler there (default: DASK_SCHEDULER_ADDRESS, then the scenario's "
    "'cluster:', else the local process pool; 'local' forces the pool); the runs folder must be shared storage "
    "at the same path on every worker"
)


LOAD_CLUSTER_HELP = (
    "run one generator process on each worker of the Dask scheduler there, each with its share of the "
    "connections and rate (default: DASK_SCHEDULER_ADDRESS, else --workers processes here; 'local' forces "
    "this machine); clocks are aligned to this one and the parts collected into one run folder"
)


def build_parser() -> argparse.ArgumentParser:
    from eventlog.load import DEFAULT_MIX

    from .loadcli import add_load_arguments, mix_text

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
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    s = sub.add_parser("serve", help="run one server node (same flags as python -m server)", add_help=False)
    s.set_defaults(func=cmd_serve)
    s = sub.add_parser("load", parents=[common], help="run open-loop load against a server into a new run folder")
    add_load_arguments(s)
    s.add_argument("--cluster", metavar="tcp://HOST:PORT", help=LOAD_CLUSTER_HELP)
    s.set_defaults(func=cmd_load)
    s = sub.add_parser(
        "run", parents=[common], help="run a scenario file end to end (measure/simulate/compare/sweep, report)"
    )
    s.add_argument("scenario", help="scenario YAML, e.g. scenarios/quickstart.yaml")
    s.add_argument("--runs", default="runs", help="folder for run folders (default runs/)")
    s.add_argument("--reports", default="reports", help="folder for outputs and PDFs (default reports/)")
    s.add_argument("--quiet", action="store_true", help="no progress lines")
    s.add_argument("--reuse", nargs="+", metavar="RUN", help="analyse these measured runs instead of measuring")
    s.add_argument("--cluster", metavar="tcp://HOST:PORT", help=CLUSTER_HELP)
    s.add_argument(
        "--load-on-cluster",
        action="store_true",
        help="measure with one load generator on each worker of the cluster too (every worker must reach the "
        "servers the scenario starts on this machine's loopback, so: workers on this machine)",
    )
    s.set_defaults(func=cmd_run)
    s = sub.add_parser("calibrate", parents=[common], help="fit the model from measured runs (or a live server)")
    s.add_argument("run", nargs="*", help="measured run folders of one server configuration")
    s.add_argument("--out", required=True, help="calibration file to write (JSON)")
    s.add_argument("--live", help="instead: scrape this node's /socket-metrics (loopback only)")
    s.add_argument(
        "--seconds", type=float, default=60.0, help="how long to scrape --live; with --prometheus: the range queried"
    )
    s.add_argument(
        "--prometheus",
        metavar="URL",
        help="instead: fit from this Prometheus server's range queries over the node's exported metrics",
    )
    s.add_argument(
        "--selector",
        default='{job="socketio"}',
        help='with --prometheus: label matchers of the node(s), each instance a node (default {job="socketio"})',
    )
    s.add_argument("--step", type=float, default=1.0, help="with --prometheus: query step in seconds (default 1)")
    s.add_argument("--end", type=float, help="with --prometheus: end of the range, epoch seconds (default now)")
    s.add_argument(
        "--profile",
        choices=["baseline", "optimized"],
        help="with --live or --prometheus: the profile the node runs (its settings)",
    )
    s.add_argument("--runs", default="runs", help="with --live: folder for the scraped run (default runs/)")
    s.set_defaults(func=cmd_calibrate)
    s = sub.add_parser(
        "simulate", parents=[common], help="simulate a load with a calibration; prints the run folders last"
    )
    s.add_argument("--calibration", required=True, help="calibration file (JSON) that `caplab calibrate` wrote")
    s.add_argument("--connections", type=int, help="connections held, over all nodes")
    s.add_argument(
        "--events-per-connection",
        "--rate",
        dest="rate",
        type=float,
        action=_DeprecatedRate,
        help="events per second per connection (the total rate is this times --connections; "
        "--rate is the deprecated spelling)",
    )
    s.add_argument("--duration", type=float, help="simulated seconds to hold the connections")
    s.add_argument(
        "--replay",
        metavar="RUN",
        help="instead of a load: drive the model with this measured run's exact sends, connects and client closes, "
        "and write replay-vs-measured.csv (per second) beside the replayed run",
    )
    s.add_argument(
        "--replications",
        type=int,
        default=3,
        help="independent runs with seeds SEED, SEED+1, ... (default 3; their spread is the 95 %% confidence interval)",
    )
    s.add_argument("--seed", type=int, default=1, help="seed of the first replication (default 1)")
    s.add_argument("--nodes", type=int, default=1, help="server nodes sharing the connections (default 1)")
    s.add_argument(
        "--mix", default=mix_text(DEFAULT_MIX), help=f"event mix, NAME=WEIGHT,... (default {mix_text(DEFAULT_MIX)})"
    )
    s.add_argument("--connect-rate", type=float, default=1000.0, help="new connections per second (default 1000)")
    s.add_argument("--out", default="runs", help="folder for the simulated run folders (default runs/)")
    s.add_argument("--cluster", metavar="tcp://HOST:PORT", help=CLUSTER_HELP)
    s.add_argument(
        "--log",
        choices=("full", "sampled", "histograms"),
        default="full",
        help="event rows to log: every one (default), one connection's in 10 ('sampled'), or merged per "
        "0.25 s and ~1.6 %% latency bucket ('histograms': for 100 000 connections; latency within ~1 %%)",
    )
    s.set_defaults(func=cmd_simulate)
    s = sub.add_parser("report", parents=[common], help="rebuild the PDF report of a scenario's output folder")
    s.add_argument("outputs", help="reports/NAME")
    s.set_defaults(func=cmd_report)
    s = sub.add_parser("runs", parents=[common], help="list runs, or show one run's manifest and benchmark row")
    s.add_argument("run", nargs="?", help="run id or folder")
    s.add_argument("--out", default="runs", help="folder holding the run folders (default runs/)")
    s.set_defaults(func=cmd_runs)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:  # before build_parser: a server process must not import the lab's data stack
        return cmd_serve(argparse.Namespace(), argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args, [])
    except KeyboardInterrupt:
        print(f"caplab {args.command}: interrupted; the run folder keeps what was written", file=sys.stderr)
        return 130
    except BaseException as exc:
        run = sys.modules.get("loadgen.launch")  # only loaded by the commands that can raise RunAborted
        if run is not None and isinstance(exc, run.RunAborted):
            where = f": {exc.run_dir}" if getattr(exc, "run_dir", None) else ""
            print(f"caplab {args.command}: {exc}; the run folder keeps what was written{where}", file=sys.stderr)
            return 128 + exc.signum
        if getattr(args, "debug", False) or not isinstance(exc, Exception):
            raise
        if isinstance(exc, BrokenPipeError):  # `caplab runs | head`: the reader left; nothing to say
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 -- Python's flush at exit must not fail again
            return 141
        code, line = _error_line(exc)
        print(f"caplab {args.command}: {line}", file=sys.stderr)
        return code


def _error_line(exc: Exception) -> tuple[int, str]:
    """The one place an error becomes the CLI's one line: (exit code, line). A user's mistake (bad input,
    a missing or unreadable file) exits 2; anything else is a fault of the lab, exit 1, and `--debug`
    shows its traceback."""
    from pydantic import ValidationError

    from eventlog import ManifestError

    if isinstance(exc, UsageError | ManifestError):
        return 2, f"error: {one_line(exc)}"
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return 2, f"error: {where}{exc.strerror}"
    if isinstance(exc, ValidationError):
        return 2, f"error: {exc.title}: {_first_error(exc)}"
    return 1, f"internal error: {type(exc).__name__}: {one_line(exc)} (run again with --debug for the traceback)"


if __name__ == "__main__":
    sys.exit(main())
