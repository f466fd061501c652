"""Slack alerts from the node's own monitor: ``SLACK_WEBHOOK_URL`` set, transitions are posted.

Every metrics interval ``LabServer.sample`` hands the monitor's readings to :meth:`SlackAlerts.evaluate`.
Each alert has a level (``None`` when fine, ``"warning"`` or ``"critical"``):

- ``memory``: the health status of ``/socket-health`` (degraded -> warning, critical -> critical);
- ``connections``: active connections against ``SOCKET_MAX_CONNECTIONS`` (>= 90 % warning, the seed's
  1800 of 2000; at the limit, where connects are refused, critical);
- ``redis_link``: the Redis pub/sub link down (warning; that also turns health ``degraded``).

A message goes out when an alert's level differs from the last one announced: the seed's payload
(text, one attachment coloured ``danger`` for critical and ``warning`` otherwise, fields Metric and
Value), and ``good`` with "resolved" when an announced alert clears. De-duplication: the same alert
at the same level is posted at most once per cool-down (``alert_cooldown_s``), so a flapping alert
costs at most one firing and one resolved message per cool-down; a suppressed change is announced
once the cool-down allows it if it still holds.

Posting never blocks serving: messages go through a bounded queue to one task that posts with an
aiohttp session, a total timeout per attempt and bounded retries with exponential backoff. Outcomes
are counted in ``socketio_alert_messages_total{result}`` and failed attempts in
``socketio_alert_webhook_errors_total{reason}`` (closed label sets). The webhook URL is a secret:
it is never logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import aiohttp
from prometheus_client import CollectorRegistry, Counter

log = logging.getLogger("server.alerts")

RESULTS = ("sent", "failed", "dropped")
ERRORS = ("timeout", "http_status", "connection")
COLOUR = {"critical": "danger", "warning": "warning", None: "good"}


@dataclass
class Reading:
    """One alert's state at one evaluation."""

    name: str
    level: str | None  # None, "warning" or "critical"
    metric: str  # the Prometheus metric behind it
    value: str  # shown in the message, with its unit
    message: str  # what is wrong (or, when resolved, what it was)


def readings(
    memory_status: str,
    memory_pct: float,
    connections: int,
    max_connections: int,
    redis_link: dict | None,
) -> list[Reading]:
    """The alerts' levels from the monitor's figures (pure: the tests and ``evaluate`` share it)."""
    mem_level = {"healthy": None, "degraded": "warning", "critical": "critical"}[memory_status]
    ratio = connections / max_connections
    conn_level = "critical" if connections >= max_connections else "warning" if ratio >= 0.9 else None
    out = [
        Reading(
            "memory",
            mem_level,
            "socketio_memory_usage_percent",
            f"{memory_pct:.1f} %",
            f"memory {memory_status}: RSS at {memory_pct:.0f} % of SOCKET_MEMORY_THRESHOLD",
        ),
        Reading(
            "connections",
            conn_level,
            "socketio_connections_active",
            f"{connections} of {max_connections} ({100.0 * ratio:.0f} %)",
            f"{connections} active connections, {100.0 * ratio:.0f} % of SOCKET_MAX_CONNECTIONS",
        ),
    ]
    if redis_link is not None:
        down = redis_link.get("up") is False
        out.append(
            Reading(
                "redis_link",
                "warning" if down else None,
                "socketio_redis_up",
                "0" if down else "1",
                "Redis pub/sub link down: events reach this node's clients only",
            )
        )
    return out


def payload(reading: Reading, resolved: bool = False) -> dict:
    """The seed guide's Slack payload for one alert (``resolved``: the all-clear for it)."""
    if resolved:
        text = f"✅ Socket Alert resolved: {reading.name} is back to normal ({reading.value})"
    else:
        text = f"🚨 Socket Alert: {reading.message}"
    return {
        "text": text,
        "attachments": [
            {
                "color": COLOUR[None if resolved else reading.level],
                "fields": [
                    {"title": "Metric", "value": reading.metric, "short": True},
                    {"title": "Value", "value": reading.value, "short": True},
                ],
            }
        ],
    }


class SlackAlerts:
    """Decides what to announce (:meth:`evaluate`, sync) and posts it from one task (:meth:`run`)."""

    def __init__(
        self,
        url: str | None,
        registry: CollectorRegistry,
        cooldown_s: float = 300.0,
        timeout_s: float = 5.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        queue_size: int = 64,
    ) -> None:
        self.url = url
        self.cooldown_s = cooldown_s
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.queue: asyncio.Queue[dict] = asyncio.Queue(queue_size)
        self.announced: dict[str, str | None] = {}  # alert -> level last announced (None: resolved)
        self.last_sent: dict[tuple[str, str | None], float] = {}  # (alert, level) -> monotonic time
        self.messages = Counter(
            "socketio_alert_messages", "Slack alert messages by outcome", ["result"], registry=registry
        )
        self.errors = Counter(
            "socketio_alert_webhook_errors", "Failed Slack webhook attempts by cause", ["reason"], registry=registry
        )
        for result in RESULTS:
            self.messages.labels(result=result)
        for reason in ERRORS:
            self.errors.labels(reason=reason)

    def evaluate(self, current: list[Reading], now: float | None = None) -> list[dict]:
        """Queue a message for every alert whose level differs from the one announced; return them."""
        if self.url is None:
            return []
        now = time.monotonic() if now is None else now
        queued = []
        for r in current:
            announced = self.announced.get(r.name)
            if r.level == announced:
                continue
            if r.level is None:
                body = payload(r, resolved=True)  # only an announced alert is ever resolved
            else:
                sent = self.last_sent.get((r.name, r.level))
                if sent is not None and now - sent < self.cooldown_s:
                    continue  # announced at this level within the cool-down: wait, then tell if it holds
                body = payload(r)
            self.announced[r.name] = r.level
            self.last_sent[(r.name, r.level)] = now
            try:
                self.queue.put_nowait(body)
            except asyncio.QueueFull:
                self.messages.labels(result="dropped").inc()
                continue
            queued.append(body)
        return queued

    async def run(self) -> None:
        """Post queued messages one at a time until cancelled."""
        if self.url is None:
            return
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                body = await self.queue.get()
                await self._post(session, body)

    async def _post(self, session: aiohttp.ClientSession, body: dict) -> None:
        if self.url is None:  # no webhook configured: nothing is queued either
            return
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                async with session.post(self.url, json=body, allow_redirects=False) as resp:
                    await resp.read()
                    if resp.status < 300:
                        self.messages.labels(result="sent").inc()
                        return
                    self.errors.labels(reason="http_status").inc()
                    log.warning("slack webhook answered HTTP %d (attempt %d)", resp.status, attempt + 1)
            except TimeoutError:
                self.errors.labels(reason="timeout").inc()
                log.warning("slack webhook timed out after %.1f s (attempt %d)", self.timeout_s, attempt + 1)
            except aiohttp.ClientError as exc:
                self.errors.labels(reason="connection").inc()
                log.warning("slack webhook failed (attempt %d): %s", attempt + 1, type(exc).__name__)
        self.messages.labels(result="failed").inc()
