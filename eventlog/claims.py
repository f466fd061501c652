"""The seed guide's claims, kept as data, and their check against measured (or simulated) rows.

A claim has two parts, judged separately by :func:`judge_claim` (the one place verdicts are made):

- the bound: the measured "after" is within the claimed "after" (e.g. p95 <= 120 ms);
- the improvement: the measured change from "before" to "after", in the claimed direction and at
  least the claimed size (e.g. p95 down by 85 %).

A bound can hold while the improvement is not reproduced (the "after" was already inside the bound
before, or got worse and stayed inside it); the verdict text states both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

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
# fields whose measured value is only a lower bound when every step tried held (flagged in the row):
# the load never went high enough to find the limit
LOWER_BOUND_FLAG = {
    "max_stable_connections": "max_stable_is_lower_bound",
    "max_stable_throughput_eps": "max_stable_is_lower_bound",
}

Bound = Literal["held", "not held", "not measurable here"]
Improvement = Literal["reproduced", "partly reproduced", "not reproduced", "not measurable here"]
Direction = Literal["better", "worse", "unchanged", "n/a"]


def _nan(x: object) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _float(x: object) -> float:
    return math.nan if x is None else float(x)  # type: ignore[arg-type]


def _pct(x: float) -> str:
    """An improvement in percent, to meaningful digits: 163.7 -> '164', 2.647 -> '2.6'."""
    return f"{x:.0f}" if abs(x) >= 10 else f"{x:.1f}"


@dataclass(frozen=True)
class ClaimVerdict:
    """The two-part verdict on one claim; ``text`` is what every table, report and notebook prints."""

    claim: Claim
    measured_before: float
    measured_after: float
    bound: Bound
    bound_why: str
    improvement: Improvement
    direction: Direction
    measured_improvement_pct: float  # nan when a value is missing
    improvement_is_lower_bound: bool  # the true improvement is at least the measured one
    improvement_why: str

    @property
    def text(self) -> str:
        imp = self.improvement.upper()
        if self.improvement == "not reproduced" and self.direction in ("worse", "unchanged"):
            imp += f" ({self.direction})"
        if self.improvement == "not measurable here":
            detail = f"{self.improvement_why}; claimed {_pct(self.claim.claimed_improvement_pct)} %"
        else:
            at_least = ">= " if self.improvement_is_lower_bound else ""
            detail = (
                f"{at_least}{_pct(self.measured_improvement_pct)} % vs claimed "
                f"{_pct(self.claim.claimed_improvement_pct)} %"
            )
        return f"bound {self.bound.upper()}, improvement {imp}: {detail}"


def judge_claim(
    claim: Claim,
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    tested_connections: int | None = None,
) -> ClaimVerdict:
    """Judge one claim on two benchmark rows (``before`` and ``after`` profiles at the same load).

    Bound: 'held', 'not held', or 'not measurable here' (no measured "after", or a capacity claim
    above the largest load the run tried while every tried step held).
    Improvement: 'reproduced' (the claimed direction, at least the claimed size), 'partly reproduced'
    (the claimed direction, smaller), 'not reproduced' (no change or the other way), or 'not measurable
    here' (a value is missing, or a capacity that is only a lower bound leaves the answer open).
    """
    b, a = _float(before.get(claim.key, math.nan)), _float(after.get(claim.key, math.nan))
    flag = LOWER_BOUND_FLAG.get(claim.key)
    b_lb = bool(flag and before.get(flag)) and not _nan(b)
    a_lb = bool(flag and after.get(flag)) and not _nan(a)
    at_least = ">= " if a_lb else ""

    if _nan(a):
        bound: Bound = "not measurable here"
        bound_why = "no measured after value"
    elif (claim.after_op == ">=" and a >= claim.after) or (claim.after_op == "<=" and a <= claim.after):
        bound, bound_why = "held", f"after {at_least}{a:.4g} {claim.after_op} {claim.after:g}"
    elif a_lb:
        # every step tried held, and the load tried stayed below the claim: it was not tested
        bound = "not measurable here"
        tried = tested_connections if claim.key == "max_stable_connections" and tested_connections else a
        bound_why = f"every tried step held, up to {tried:.4g}; the claim needs {claim.after_op} {claim.after:g}"
    else:
        bound, bound_why = "not held", f"after {at_least}{a:.4g} vs claimed {claim.after_op} {claim.after:g}"

    lower = LOWER_IS_BETTER.get(claim.key, True)
    imp = improvement(b, a, lower) if not (_nan(b) or _nan(a)) else math.nan
    direction: Direction = "n/a" if _nan(imp) else "better" if imp > 0 else "worse" if imp < 0 else "unchanged"
    claimed = claim.claimed_improvement_pct
    imp_lb = a_lb and not b_lb
    improvement_state: Improvement
    if _nan(imp):
        improvement_state = "not measurable here"
        if _nan(b) and _nan(a):
            imp_why = "no measured values"
        elif _nan(b):
            imp_why = "no measured before value"
        elif _nan(a):
            imp_why = "no measured after value"
        else:
            imp_why = "measured before is 0"
    elif a_lb and b_lb:
        improvement_state = "not measurable here"
        imp_why = "before and after are both lower bounds (every tried step held)"
    elif imp_lb and imp < claimed:
        # the true capacity after is at least the measured one: the improvement could still be larger
        improvement_state = "not measurable here"
        imp_why = f"after is a lower bound; at least {_pct(imp)} %"
    elif b_lb and imp > 0:
        # the true capacity before is at least the measured one: the improvement could be smaller
        improvement_state = "not measurable here"
        imp_why = f"before is a lower bound; at most {_pct(imp)} %"
    elif imp >= claimed:
        improvement_state, imp_why = "reproduced", f"{_pct(imp)} % >= claimed {_pct(claimed)} %"
    elif imp > 0:
        improvement_state, imp_why = "partly reproduced", f"{_pct(imp)} % < claimed {_pct(claimed)} %"
    else:
        improvement_state, imp_why = "not reproduced", f"{_pct(imp)} % ({direction}) vs claimed {_pct(claimed)} %"
    return ClaimVerdict(
        claim=claim,
        measured_before=b,
        measured_after=a,
        bound=bound,
        bound_why=bound_why,
        improvement=improvement_state,
        direction=direction,
        measured_improvement_pct=imp,
        improvement_is_lower_bound=imp_lb,
        improvement_why=imp_why,
    )


def check_claims(
    before: Mapping[str, Any], after: Mapping[str, Any], tested_connections: int | None = None
) -> pd.DataFrame:
    """One row per seed claim, from :func:`judge_claim`: measured values, both parts of the verdict,
    and ``verdict`` (the text every artifact prints, e.g. "bound HELD, improvement NOT REPRODUCED
    (worse): -164 % vs claimed 85 %") with ``why`` (the bound's and the improvement's reasons)."""
    rows = []
    for c in SEED_CLAIMS:
        v = judge_claim(c, before, after, tested_connections)
        rows.append(
            {
                "claim": c.label,
                "key": c.key,
                "claimed_before": c.before,
                "claimed_after": c.after,
                "measured_before": v.measured_before,
                "measured_after": v.measured_after,
                "claimed_improvement_pct": c.claimed_improvement_pct,
                "measured_improvement_pct": v.measured_improvement_pct,
                "bound": v.bound,
                "improvement": v.improvement,
                "direction": v.direction,
                "verdict": v.text,
                "why": f"{v.bound_why}; {v.improvement_why}",
            }
        )
    return pd.DataFrame(rows)
