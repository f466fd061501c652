"""Admission limits (global, company, user, IP), per-connection token buckets and IP bans."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field


class LimitExceeded(Exception):
    """A refused connection; ``code`` names the limit, ``reason`` is what the client is told."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class ConnectionLimiter:
    """Counts live connections by scope and refuses those over a limit."""

    def __init__(self, max_total: int, max_company: int, max_user: int, max_ip: int, pending=None) -> None:
        self.max_total, self.max_company, self.max_user, self.max_ip = max_total, max_company, max_user, max_ip
        self.pending: PendingSessions | None = pending  # sessions awaiting CONNECT count against total and IP
        self.total = 0
        self.by_company: Counter[int] = Counter()
        self.by_user: Counter[int] = Counter()
        self.by_ip: Counter[str] = Counter()

    def check(self, company: int, user: int, ip: str) -> None:
        waiting = self.pending
        if self.total + (len(waiting.deadline) if waiting else 0) >= self.max_total:
            raise LimitExceeded("limit_total", "server connection limit reached")
        if self.by_company[company] >= self.max_company:
            raise LimitExceeded("limit_company", "company connection limit reached")
        if self.by_user[user] >= self.max_user:
            raise LimitExceeded("limit_user", "user connection limit reached")
        if self.by_ip[ip] + (waiting.by_ip[ip] if waiting else 0) >= self.max_ip:
            raise LimitExceeded("limit_ip", "ip connection limit reached")

    def add(self, company: int, user: int, ip: str) -> None:
        self.total += 1
        self.by_company[company] += 1
        self.by_user[user] += 1
        self.by_ip[ip] += 1

    def remove(self, company: int, user: int, ip: str) -> None:
        self.total -= 1
        _decrement(self.by_company, company)
        _decrement(self.by_user, user)
        _decrement(self.by_ip, ip)

    def state(self) -> dict:
        return {
            "total": self.total,
            "limits": {
                "total": self.max_total,
                "company": self.max_company,
                "user": self.max_user,
                "ip": self.max_ip,
            },
            "by_ip": dict(self.by_ip.most_common(10)),
        }


def _decrement(counter: Counter, key: object) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]


@dataclass(slots=True)
class TokenBucket:
    """Classic token bucket; ``take`` is O(1) and needs no timer."""

    rate: float
    burst: float
    tokens: float = -1.0
    stamp: float = field(default_factory=time.monotonic)
    strikes: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.burst

    def take(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def level(self, now: float) -> float:
        """Tokens it would hold now, before the burst cap (nothing is changed)."""
        return self.tokens + (now - self.stamp) * self.rate

    def ready(self, now: float) -> bool:
        """Would ``take`` succeed now? (Nothing is consumed.)"""
        return self.level(now) >= 1.0

    def strike(self, window_s: float, now: float | None = None) -> int:
        """Record a rejected event; return the rejections within the window."""
        now = time.monotonic() if now is None else now
        self.strikes.append(now)
        cutoff = now - window_s
        if self.strikes[0] < cutoff:
            self.strikes = [s for s in self.strikes if s >= cutoff]
        return len(self.strikes)


class BanList:
    """IPs refused until a deadline (after a flooding disconnect)."""

    def __init__(self) -> None:
        self.until: dict[str, float] = {}

    def ban(self, ip: str, seconds: float) -> None:
        if seconds > 0:
            self.until[ip] = time.monotonic() + seconds

    def banned(self, ip: str) -> bool:
        deadline = self.until.get(ip)
        if deadline is None:
            return False
        if deadline <= time.monotonic():
            del self.until[ip]
            return False
        return True

    def sweep(self) -> int:
        now = time.monotonic()
        dead = [ip for ip, d in self.until.items() if d <= now]
        for ip in dead:
            del self.until[ip]
        return len(dead)


def forget_refilled(buckets: dict[str, TokenBucket], now: float) -> int:
    """Drop the buckets that have refilled to their burst: a fresh one would be the same."""
    full = [key for key, b in buckets.items() if b.level(now) >= b.burst]
    for key in full:
        del buckets[key]
    return len(full)


class ConnectRate:
    """Admission of new Engine.IO sessions: a token bucket per IP and one for the whole node."""

    def __init__(self, per_ip: float, burst_per_ip: float, total: float) -> None:
        self.per_ip, self.burst_per_ip = per_ip, burst_per_ip
        self.total = TokenBucket(total, max(1.0, total))
        self.buckets: dict[str, TokenBucket] = {}

    def admit(self, ip: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        bucket = self.buckets.get(ip)
        if bucket is None:
            if len(self.buckets) >= 100_000:
                self.sweep(now)
            bucket = self.buckets[ip] = TokenBucket(self.per_ip, self.burst_per_ip, stamp=now)
        if not bucket.take(now):
            raise LimitExceeded("connect_rate_ip", f"over {self.per_ip:g} new connections/s from this address")
        if not self.total.take(now):
            raise LimitExceeded("accept_budget", "server is accepting too many connections; retry with backoff")

    def refusal(self, ip: str, now: float) -> str | None:
        """The reason ``admit(ip)`` would refuse now, or None; nothing is consumed."""
        bucket = self.buckets.get(ip)
        if bucket is not None and not bucket.ready(now):
            return "connect_rate_ip"
        if not self.total.ready(now):
            return "accept_budget"
        return None

    def sweep(self, now: float | None = None) -> int:
        """Forget buckets that have refilled (an idle IP needs no state)."""
        return forget_refilled(self.buckets, time.monotonic() if now is None else now)


class PendingSessions:
    """Engine.IO sessions that have not completed the Socket.IO CONNECT yet, with their deadlines."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.deadline: dict[str, float] = {}  # eio sid -> monotonic deadline
        self.ip: dict[str, str] = {}
        self.by_ip: Counter[str] = Counter()
        self.attempted: set[str] = set()

    def add(self, eio_sid: str, ip: str) -> None:
        self.restore(eio_sid, time.monotonic() + self.timeout_s, ip, False)

    def restore(self, eio_sid: str, deadline: float, ip: str, attempted: bool = True) -> None:
        self.deadline[eio_sid] = deadline
        self.ip[eio_sid] = ip
        self.by_ip[ip] += 1
        if attempted:
            self.attempted.add(eio_sid)

    def take(self, eio_sid: str) -> tuple[float, str, bool] | None:
        """Remove a session; return (deadline, ip, whether it had tried a CONNECT before) or None."""
        deadline = self.deadline.pop(eio_sid, None)
        if deadline is None:
            return None
        attempted = eio_sid in self.attempted
        self.attempted.discard(eio_sid)
        ip = self.ip.pop(eio_sid)
        self.by_ip[ip] -= 1
        if self.by_ip[ip] <= 0:
            del self.by_ip[ip]
        return deadline, ip, attempted

    def done(self, eio_sid: str) -> None:
        self.take(eio_sid)

    def expired(self, now: float | None = None) -> list[str]:
        now = time.monotonic() if now is None else now
        return [sid for sid, d in self.deadline.items() if d <= now]
