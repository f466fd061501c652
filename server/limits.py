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

    def __init__(self, max_total: int, max_company: int, max_user: int, max_ip: int) -> None:
        self.max_total, self.max_company, self.max_user, self.max_ip = max_total, max_company, max_user, max_ip
        self.total = 0
        self.by_company: Counter[int] = Counter()
        self.by_user: Counter[int] = Counter()
        self.by_ip: Counter[str] = Counter()

    def check(self, company: int, user: int, ip: str) -> None:
        if self.total >= self.max_total:
            raise LimitExceeded("limit_total", "server connection limit reached")
        if self.by_company[company] >= self.max_company:
            raise LimitExceeded("limit_company", "company connection limit reached")
        if self.by_user[user] >= self.max_user:
            raise LimitExceeded("limit_user", "user connection limit reached")
        if self.by_ip[ip] >= self.max_ip:
            raise LimitExceeded("limit_ip", "ip connection limit reached")

    def add(self, company: int, user: int, ip: str) -> None:
        self.total += 1
        self.by_company[company] += 1
        self.by_user[user] += 1
        self.by_ip[ip] += 1

    def remove(self, company: int, user: int, ip: str) -> None:
        self.total -= 1
        for counter, key in ((self.by_company, company), (self.by_user, user), (self.by_ip, ip)):
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]

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
