"""Reconnect delays: exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And Jitter")."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delay before attempt ``k`` (0-based): uniform in ``[0, min(cap_s, base_s * 2**k)]``.

    Full jitter spreads a crowd of clients that lost the same server over the whole interval, so
    they do not come back in waves.
    """

    base_s: float = 0.5
    cap_s: float = 10.0
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        if not 0 < self.base_s <= self.cap_s:
            raise ValueError(f"backoff needs 0 < base_s <= cap_s, got base_s={self.base_s}, cap_s={self.cap_s}")

    def ceiling(self, attempt: int) -> float:
        return min(self.cap_s, self.base_s * 2 ** min(attempt, 62))

    def delay(self, attempt: int) -> float:
        return self.rng.uniform(0.0, self.ceiling(attempt))
