"""Monitoring endpoints: /socket-health, /socket-metrics (JSON or Prometheus), diagnostics, cleanup.

Health and metrics are open to probes and scrapers and carry only aggregates (counts by company id,
closed label sets). Diagnostics (per-connection detail) and cleanup need the admin token.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections import Counter
from typing import TYPE_CHECKING

import psutil
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .metrics import by_label, counter_value, loop_runqueue_wait_s, loop_wakeups

if TYPE_CHECKING:
    from .app import LabServer

_PROCESS = psutil.Process()


def add_routes(app: web.Application, lab: LabServer) -> None:
    app.router.add_get("/socket-health", lambda r: health(r, lab))
    app.router.add_get("/socket-metrics", lambda r: metrics(r, lab))
    app.router.add_get("/socket-diagnostics", lambda r: diagnostics(r, lab))
    app.router.add_post("/socket-cleanup", lambda r: cleanup(r, lab))
    from .dashboard import Dashboard

    Dashboard(lab).add_routes(app)  # /socket-dashboard: a live page of these figures, admin when a token is set


def by_company(lab: LabServer) -> dict[str, int]:
    return {str(c): n for c, n in sorted(lab.limiter.by_company.items())}


def error_count(lab: LabServer) -> int:
    return int(counter_value(lab.metrics.errors))


async def health(request: web.Request, lab: LabServer) -> web.Response:
    """The seed's shape; ``degraded`` also while the Redis pub/sub link is down, with ``reason``."""
    rss = lab.memory.rss()
    status = lab.memory.status(rss)
    reasons = []
    if status != "healthy":
        reasons.append(f"memory {status}: {100.0 * rss / lab.settings.memory_threshold:.0f} % of the threshold")
    body = {
        "status": status,
        "connections": lab.limiter.total,
        "memory": {"used": rss, "threshold": lab.settings.memory_threshold},
        "performance": {"latency": lab.metrics.window.percentiles_ms()["p95"], "errors": error_count(lab)},
    }
    link = lab.sio.manager.link_state()
    if link is not None:
        body["redis"] = link
        if link["up"] is False:
            status = "degraded" if status == "healthy" else status
            reasons.append(
                f"redis pub/sub link down for {link['for_s']:.1f} s ({link['error']}): "
                "events reach this node's clients only"
            )
    body["status"] = status
    if reasons:
        body["reason"] = "; ".join(reasons)
    return web.json_response(body)


def snapshot(lab: LabServer) -> dict:
    """The JSON of /socket-metrics: the seed's shape plus the counters a model needs."""
    m, s = lab.metrics, lab.settings
    rss = lab.memory.rss()
    cpu = _PROCESS.cpu_times()
    batch_sum = sum(x.value for f in m.batch_events.collect() for x in f.samples if x.name.endswith("_sum"))
    return {
        "performance": {
            "latency": m.window.percentiles_ms(),
            "throughput": {"eventsPerSecond": m.events_per_second()},
        },
        "connections": {"total": lab.limiter.total, "byCompany": by_company(lab)},
        "memory": {
            "usage": round(100.0 * rss / s.memory_threshold, 2),
            "trend": lab.memory.trend(),
            "rooms": lab.room_count(),
            "rss": rss,
            "threshold": s.memory_threshold,
            "status": lab.memory.status(rss),
        },
        "counters": {
            "events_in": counter_value(m.events_in),
            "events_out": counter_value(m.events_out),
            "packets_out": counter_value(m.packets_out),
            "handler_seconds": counter_value(m.handler_seconds),
            "cpu_seconds": cpu.user + cpu.system,
            "wakeups": loop_wakeups(),  # read here, in the loop's thread
            "runqueue_wait_s": loop_runqueue_wait_s(),  # so is this: the loop's time waiting for a CPU
            "rss_bytes": rss,
            "loop_lag_s": lab.loop_lag.last,
            "loop_lag_max_s": lab.lag_max_window,
            "gc_collections": lab.gc_monitor.seq,
            "gc_pause_s": lab.gc_monitor.total_pause,
            "db_queries": counter_value(m.db_queries),
            "batches": counter_value(m.batches),
            "batch_events": batch_sum,
            "batches_compressed": counter_value(m.batches_compressed),
            "connects": counter_value(m.connects),
            "disconnects": counter_value(m.disconnects),
            "refusals": by_label(m.refusals),
            "errors": by_label(m.errors),
            "token_cache": by_label(m.token_cache),
            "redis_errors": by_label(m.redis_errors),
            "redis_local_only": counter_value(m.redis_local_only),
            "redis_published": by_label(m.redis_messages).get("publish", 0.0),
            "redis_received": by_label(m.redis_messages).get("receive", 0.0),
            "socket_states": len(lab.sockets),
            "dashboard_clients": sum(x.value for f in m.dashboard_clients.collect() for x in f.samples),
        },
        "redis": lab.sio.manager.link_state(),
        "gc": {"recent": list(lab.gc_monitor.recent)[-128:]},
        "node": {
            "id": s.node,
            "profile": s.profile,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - lab.started, 3),
            "time": time.time(),
        },
    }


async def metrics(request: web.Request, lab: LabServer) -> web.Response:
    fmt = request.query.get("format", "json")
    if fmt == "prometheus":
        lab.memory.sample()
        lab.metrics.set_companies(lab.limiter.by_company)
        return web.Response(body=generate_latest(lab.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
    if fmt != "json":
        return web.json_response({"error": f"format {fmt!r}: expected json or prometheus"}, status=400)
    return web.json_response(snapshot(lab))


async def diagnostics(request: web.Request, lab: LabServer) -> web.Response:
    """Per-connection detail (user ids, IPs, socket ids, rooms): admin only."""
    refused = admin_refusal(request, lab)
    if refused is not None:
        return refused
    busiest = sorted((st for st in lab.sockets.values() if st.connected), key=lambda st: -st.events)[:10]
    users_by_company: Counter[int] = Counter()
    rooms_by_company: Counter[int] = Counter()
    for st in lab.sockets.values():
        if st.connected:
            users_by_company[st.company] += 1
            rooms_by_company[st.company] += len(st.rooms)
    return web.json_response(
        {
            "companies": {
                str(c): {"connections": n, "sub_room_memberships": rooms_by_company[c]}
                for c, n in sorted(users_by_company.items())
            },
            "busiest_connections": [
                {
                    "sid": st.sid,
                    "company": st.company,
                    "user": st.user,
                    "ip": st.ip,
                    "events": st.events,
                    "rejected": st.rejected,
                    "rooms": sorted(st.rooms),
                }
                for st in busiest
            ],
            "limits": {
                **lab.limiter.state(),
                "enforced": lab.settings.toggles.conn_limits,
                "rate_limit": lab.settings.toggles.rate_limit,
                "banned_ips": len(lab.bans.until),
                "memory_status": lab.memory_status,
            },
            "token_cache": {"entries": len(lab.auth.cache), "hits": lab.auth.hits, "misses": lab.auth.misses},
            "gc": {"tuning": lab.gc_tuning, "collections": lab.gc_monitor.seq},
            "socket_states": {"kept": len(lab.sockets), "connected": lab.limiter.total},
            "settings": lab.settings.public(),
        }
    )


async def cleanup(request: web.Request, lab: LabServer) -> web.Response:
    refused = admin_refusal(request, lab)
    if refused is not None:
        return refused
    return web.json_response({"freed": lab.cleanup(collect=True)})


def bearer_token(request: web.Request) -> tuple[str | None, str]:
    """``(token, "")`` for exactly one ``Authorization: Bearer <token>`` header, else ``(None, why)``.

    The scheme is case-insensitive (RFC 9110). aiohttp hands undecodable header bytes over as
    lone surrogates: such a header is refused here, never encoded later (that was an HTTP 500).
    """
    values = request.headers.getall("Authorization", [])
    if not values:
        return None, "admin token required: send the header Authorization: Bearer <SOCKET_ADMIN_TOKEN>"
    if len(values) > 1:
        return None, "send one Authorization header, not several"
    try:
        values[0].encode("utf-8")
    except UnicodeEncodeError:
        return None, "the Authorization header is not valid UTF-8"
    parts = values[0].split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return None, "the Authorization header must be exactly: Bearer <token>"
    return parts[1], ""


def admin_refusal(request: web.Request, lab: LabServer) -> web.Response | None:
    """None for the admin token; else 401 (no, empty or malformed credentials) or 403 (wrong token)."""
    given, why = bearer_token(request)
    if given is None:
        return web.json_response({"error": why}, status=401, headers={"WWW-Authenticate": 'Bearer realm="admin"'})
    expected = lab.settings.admin_token
    if not expected:
        return web.json_response({"error": "admin endpoints are off: SOCKET_ADMIN_TOKEN is not set"}, status=403)
    # digests of equal length, compared in constant time: neither content nor length leaks
    digest = hashlib.sha256(given.encode()).digest()
    if not hmac.compare_digest(digest, hashlib.sha256(expected.encode()).digest()):
        return web.json_response({"error": "wrong admin token"}, status=403)
    return None
