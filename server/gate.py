"""Refusal at accept: a connect storm is turned away when the kernel hands over the TCP connection,
before aiohttp reads a byte.

A storm from one address used to cost the node an HTTP parse, routing and a JSON 429 for every
refused attempt (about 150 us of Python each; 3000 attempts/s took half a core). ``AcceptGate``
wraps aiohttp's protocol factory and, in ``connection_made``, closes a connection at once when

- its address is over its TCP connection rate (``accept_rate_per_ip``), or
- a new session from it would be refused anyway (its session rate or the node's accept budget is
  spent: ``ConnectRate.refusal``), except for a few connections per second per address
  (``EXPLAIN_RATE``) that go on to get the 429 with its reason, so a client still learns why.

It counts TCP connections, not sessions: a client that starts on long-polling and upgrades uses two
per session, so the default TCP rate is twice the session rate. While an address is over its
session rate, its other new TCP connections (a long-polling request of an existing session on a
fresh connection) are refused too: the limit is per address, and that address is storming.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import cast

from .limits import TokenBucket, forget_refilled

MAX_TRACKED_IPS = 100_000  # above this, buckets that have refilled are forgotten
EXPLAIN_RATE, EXPLAIN_BURST = 5.0, 10.0  # refused connections per second per address that still get a 429


class AcceptGate:
    """``loop.create_server(AcceptGate(runner.server, ...), ...)`` in place of ``runner.server``.

    ``session_refusal(ip, now)``: the reason a new session from ``ip`` would be refused, or None.
    ``on_refuse(reason)``: called for every connection closed here.
    """

    def __init__(
        self,
        factory: Callable[[], asyncio.BaseProtocol],
        rate: float,
        burst: float,
        session_refusal: Callable[[str, float], str | None],
        on_refuse: Callable[[str], None],
    ) -> None:
        self.factory = factory
        self.rate, self.burst = rate, burst
        self.session_refusal = session_refusal
        self.on_refuse = on_refuse
        self.tcp: dict[str, TokenBucket] = {}
        self.explain: dict[str, TokenBucket] = {}

    def __call__(self) -> asyncio.Protocol:
        return _Gate(self)

    def refusal(self, ip: str, now: float | None = None) -> str | None:
        """Why a new TCP connection from ``ip`` is closed at accept, or None to let it through."""
        now = time.monotonic() if now is None else now
        if len(self.tcp) >= MAX_TRACKED_IPS:
            self.sweep(now)
        bucket = self.tcp.get(ip)
        if bucket is None:
            bucket = self.tcp[ip] = TokenBucket(self.rate, self.burst, stamp=now)
        if not bucket.take(now):
            return "accept_rate_ip"
        reason = self.session_refusal(ip, now)
        if reason is None:
            return None
        explain = self.explain.get(ip)
        if explain is None:
            explain = self.explain[ip] = TokenBucket(EXPLAIN_RATE, EXPLAIN_BURST, stamp=now)
        return None if explain.take(now) else reason

    def sweep(self, now: float | None = None) -> int:
        """Forget addresses whose buckets have refilled: an idle address needs no state."""
        now = time.monotonic() if now is None else now
        return forget_refilled(self.tcp, now) + forget_refilled(self.explain, now)


class _Gate(asyncio.Protocol):
    """Lives for one ``connection_made``: hands an admitted transport to aiohttp, closes a refused one."""

    __slots__ = ("gate",)

    def __init__(self, gate: AcceptGate) -> None:
        self.gate = gate

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        gate = self.gate
        reason = gate.refusal(peer[0]) if peer else None
        if reason is not None:
            gate.on_refuse(reason)
            cast(asyncio.Transport, transport).abort()
            return
        handler = gate.factory()
        transport.set_protocol(handler)  # from here on the transport talks to aiohttp alone
        handler.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        pass  # a refused connection: nothing was set up
