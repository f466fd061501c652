"""``caplab load``: the seed guide's load-test interface (environment variables) plus flags."""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping

from pydantic import ValidationError

from eventlog.load import DEFAULT_MIX
from loadgen import LoadSpec
from loadgen.spec import source_addrs

from .errors import UsageError

# the seed's variables -> (flag dest, converter)
SEED_ENV = {
    "SOCKET_URL": ("url", str),
    "MAX_CONNECTIONS": ("connections", int),
    "EVENTS_PER_SECOND": ("events_per_second", float),
    "TEST_DURATION": ("duration_ms", float),
}


def add_load_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="server base URL (env SOCKET_URL), loopback only")
    p.add_argument("--tokens", required=True, help="JSON lines of `python -m server users` (or one token per line)")
    p.add_argument("--out", default="runs", help="folder for run folders (default: runs/)")
    p.add_argument("--name", default="load", help="run name, part of the run id")
    p.add_argument("--connections", type=int, help="connections to hold (env MAX_CONNECTIONS; default 100)")
    p.add_argument("--events-per-second", type=float, help="total send rate (env EVENTS_PER_SECOND; default 100)")
    p.add_argument("--duration", type=float, help="hold seconds (env TEST_DURATION in ms; default 30)")
    p.add_argument("--steps", help="step ramp instead: CONNS:HOLD_S,... e.g. 200:10,1000:10,2000:10")
    p.add_argument("--connect-rate", type=float, default=200.0, help="new connections per second (default 200)")
    p.add_argument(
        "--mix", default=mix_text(DEFAULT_MIX), help=f"event mix, NAME=WEIGHT,... (default {mix_text(DEFAULT_MIX)})"
    )
    p.add_argument(
        "--arrival",
        choices=["poisson", "fixed"],
        default="poisson",
        help="gaps between a connection's sends: random (poisson, default) or equal (fixed)",
    )
    p.add_argument("--payload-bytes", type=int, default=64, help="bytes of text in each event (default 64)")
    p.add_argument("--rooms", type=int, default=0, help="sub-rooms each connection joins")
    p.add_argument(
        "--chat-to",
        choices=["company", "room"],
        default="company",
        help="chats go to the whole company (default) or to one of the --rooms sub-rooms",
    )
    p.add_argument("--churn", type=float, default=0.0, help="planned reconnects per second")
    p.add_argument("--churn-away", type=float, default=0.0, help="seconds a churned client stays away (default 0)")
    p.add_argument(
        "--recover", action="store_true", help="clients ask for missed-message recovery (optimized profile replays)"
    )
    p.add_argument("--ack-timeout", type=float, default=5.0, help="seconds before an ack counts as an error")
    p.add_argument("--workers", type=int, default=1, help="generator processes")
    p.add_argument(
        "--source-addrs",
        default=None,
        help="comma-separated 127.x source addresses (default: one per 200 connections, 127.0.1.1, 127.0.1.2, ...,"
        " as caplab run does: the optimized server limits connections per IP)",
    )
    p.add_argument("--scrape", default=None, help="comma-separated node URLs to scrape (default: --url)")
    p.add_argument("--no-scrape", action="store_true", help="do not scrape /socket-metrics")
    p.add_argument("--seed", type=int, default=1, help="seed of the generator's random choices (default 1)")


def mix_text(mix: Mapping[str, float]) -> str:
    return ",".join(f"{k}={v:g}" for k, v in mix.items())


def _env(env: Mapping[str, str]) -> dict:
    out = {}
    for var, (dest, conv) in SEED_ENV.items():
        raw = env.get(var)
        if raw in (None, ""):
            continue
        try:
            out[dest] = conv(raw)
        except ValueError:
            raise UsageError(f"{var}={raw!r}: expected {'a whole number' if conv is int else 'a number'}") from None
    return out


def _pairs(text: str, what: str) -> dict[str, float]:
    out = {}
    for part in filter(None, (x.strip() for x in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise UsageError(f"{what} {part!r}: expected NAME=NUMBER") from None
        if not sep:
            raise UsageError(f"{what} {part!r}: expected NAME=NUMBER")
    return out


def _steps(text: str) -> list[dict]:
    steps = []
    for part in filter(None, (x.strip() for x in text.split(","))):
        conns, _sep, hold = part.partition(":")
        try:
            steps.append({"connections": int(conns), "hold_s": float(hold)})
        except ValueError:
            raise UsageError(f"--steps {part!r}: expected CONNECTIONS:HOLD_SECONDS, e.g. 200:10") from None
    return steps


def spec_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> LoadSpec:
    """Flags win over the seed's environment variables; defaults fill the rest."""
    e = _env(os.environ if env is None else env)
    url = args.url or e.get("url")
    if not url:
        raise UsageError("no server URL: pass --url or set SOCKET_URL")
    if args.steps:
        steps = _steps(args.steps)
    else:
        conns = args.connections or e.get("connections") or 100
        duration = args.duration if args.duration is not None else e.get("duration_ms", 30_000) / 1000.0
        steps = [{"connections": conns, "hold_s": duration}]
    fields = {
        "url": url,
        "steps": steps,
        "events_per_second": args.events_per_second
        if args.events_per_second is not None
        else e.get("events_per_second", 100.0),
        "connect_rate": args.connect_rate,
        "mix": _pairs(args.mix, "--mix"),
        "arrival": args.arrival,
        "payload_bytes": args.payload_bytes,
        "rooms_per_connection": args.rooms,
        "chat_to": args.chat_to,
        "churn_per_s": args.churn,
        "churn_away_s": args.churn_away,
        "recover": args.recover,
        "ack_timeout_s": args.ack_timeout,
        "workers": args.workers,
        "source_addrs": [a.strip() for a in args.source_addrs.split(",") if a.strip()]
        if args.source_addrs is not None
        else source_addrs(max(int(s["connections"]) for s in steps)),
        "scrape": [] if args.no_scrape else [u.strip() for u in (args.scrape or url).split(",") if u.strip()],
        "seed": args.seed,
    }
    try:
        return LoadSpec(**fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "load settings"
        raise UsageError(f"{where}: {err['msg']}") from None


def server_identity(url: str, admin_token: str | None, timeout_s: float = 5.0) -> tuple[dict, str | None]:
    """Manifest fields naming the configuration the node at ``url`` runs, read from the node itself,
    and a warning when part of it could not be read.

    The profile comes from ``/socket-metrics`` (open to scrapers); the toggles and every setting from
    ``/socket-diagnostics``, which needs the admin token (``SOCKET_ADMIN_TOKEN``). Toggles that
    differ from the profile's preset are recorded as ``set``, as ``caplab run`` records its ``--set``.
    """
    from server.settings import PROFILES

    base = url.rstrip("/")
    fields: dict = {}
    try:
        profile = _get_json(base + "/socket-metrics", None, timeout_s).get("node", {}).get("profile")
    except (OSError, ValueError) as exc:
        return fields, f"{base}/socket-metrics: {_why(exc)}: the run records no profile"
    if isinstance(profile, str) and profile:
        fields.update(profile=profile, label=profile)
    if not admin_token:
        return fields, (
            "SOCKET_ADMIN_TOKEN is not set: the run records the profile but not the toggles and settings "
            "(/socket-diagnostics needs the server's admin token), so caplab calibrate will refuse it"
        )
    try:
        diag = _get_json(base + "/socket-diagnostics", admin_token, timeout_s)
    except (OSError, ValueError) as exc:
        return fields, (
            f"{base}/socket-diagnostics: {_why(exc)}: the run records the profile but not the toggles and "
            "settings, so caplab calibrate will refuse it"
        )
    settings = diag.get("settings") or {}
    toggles = settings.get("toggles") or {}
    preset = PROFILES.get(str(settings.get("profile")), {})
    changed = {k: v for k, v in toggles.items() if bool(preset.get(k, False)) != bool(v)}
    fields.update(
        profile=settings.get("profile", fields.get("profile")),
        server={"set": changed, "toggles": toggles, "settings": settings},
    )
    if changed:
        fields["label"] = f"{fields['profile']} " + ",".join(f"{k}={'on' if v else 'off'}" for k, v in changed.items())
    return fields, None


def _get_json(url: str, token: str | None, timeout_s: float) -> dict:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        doc = json.loads(resp.read())
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    return doc


def _why(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}" + (" (wrong admin token)" if exc.code in (401, 403) else "")
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return " ".join(str(exc).split()) or type(exc).__name__
