"""The seed guide's claims, kept as data, and their check against measured (or simulated) rows."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from .projections import improvement


@dataclass(frozen=True)
class Claim:
    key: str  # benchmark-row field
    label: str
    before: float  # the seed's "before"
    after: float  # the seed's "after" (a bound)
    after_op: str  # how a measured "after" meets it: ">=" or "<="
    claimed_improvement_pct: float


SEED_CLAIMS: tuple[Claim, ...] = (
    Claim("max_stable_connections", "Max connections 200 -> 2000+", 200, 2000, ">=", 900.0),
    Claim("p95_ms", "P95 latency 800 -> <120 ms", 800, 120, "<=", 85.0),
    Claim("peak_memory_mb", "Memory 800 -> 300 MB", 800, 300, "<=", 62.0),
    Claim("mean_cpu_pct", "CPU 75 -> 35 %", 75, 35, "<=", 53.0),
    Claim("error_rate_pct", "Error rate 5 -> <0.1 %", 5, 0.1, "<=", 98.0),
    Claim("max_stable_throughput_eps", "Throughput 50 -> 1500 events/s", 50, 1500, ">=", 2900.0),
)
LOWER_IS_BETTER = {"max_stable_connections": False, "max_stable_throughput_eps": False}


def _nan(x: object) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def check_claims(
    before: Mapping[str, Any], after: Mapping[str, Any], tested_connections: int | None = None
) -> pd.DataFrame:
    """One row per claim: measured values, measured improvement and a verdict.

    Verdicts: 'held', 'not held', or 'not measurable here' (a value is missing, or a capacity claim
    exceeds the largest load the run tried while every tried step held).
    """
    rows = []
    for c in SEED_CLAIMS:
        b, a = before.get(c.key, math.nan), after.get(c.key, math.nan)
        b, a = (math.nan if b is None else float(b)), (math.nan if a is None else float(a))
        lower = LOWER_IS_BETTER.get(c.key, True)
        measured_imp = improvement(b, a, lower) if not (_nan(b) or _nan(a)) else float("nan")
        if _nan(a):
            verdict, why = "not measurable here", "no measured value"
        elif c.after_op == ">=" and a >= c.after:
            verdict, why = "held", f"{a:.4g} >= {c.after:g}"
        elif c.after_op == "<=" and a <= c.after:
            verdict, why = "held", f"{a:.4g} <= {c.after:g}"
        elif (
            c.key == "max_stable_connections"
            and after.get("max_stable_is_lower_bound")
            and tested_connections is not None
            and tested_connections < c.after
        ):
            verdict, why = "not measurable here", f"every tried step held; largest tried {tested_connections}"
        else:
            verdict, why = "not held", f"{a:.4g} vs claimed {c.after_op} {c.after:g}"
        rows.append(
            {
                "claim": c.label,
                "key": c.key,
                "claimed_before": c.before,
                "claimed_after": c.after,
                "measured_before": b,
                "measured_after": a,
                "claimed_improvement_pct": c.claimed_improvement_pct,
                "measured_improvement_pct": measured_imp,
                "verdict": verdict,
                "why": why,
            }
        )
    return pd.DataFrame(rows)
