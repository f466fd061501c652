"""Claim verdicts state both parts: the bound (after within the claimed after) and the improvement."""

import math

import pytest

from eventlog import SEED_CLAIMS, check_claims
from eventlog.claims import judge_claim

CLAIMS = {c.key: c for c in SEED_CLAIMS}


def test_p95_bound_held_but_got_worse():
    """Issue 9: 39.66 -> 104.6 ms was printed as HELD; the optimized p95 is 2.6x worse."""
    v = judge_claim(CLAIMS["p95_ms"], {"p95_ms": 39.66}, {"p95_ms": 104.6})
    assert (v.bound, v.improvement, v.direction) == ("held", "not reproduced", "worse")
    assert v.measured_improvement_pct == pytest.approx(-163.74, abs=0.01)
    assert v.text == "bound HELD, improvement NOT REPRODUCED (worse): -164 % vs claimed 85 %"


def test_memory_bound_held_but_went_up():
    """Issue 9: 72.52 -> 74.44 MB was printed as HELD; memory went up."""
    v = judge_claim(CLAIMS["peak_memory_mb"], {"peak_memory_mb": 72.52}, {"peak_memory_mb": 74.44})
    assert (v.bound, v.improvement, v.direction) == ("held", "not reproduced", "worse")
    assert v.text == "bound HELD, improvement NOT REPRODUCED (worse): -2.6 % vs claimed 62 %"


def test_real_win_and_smaller_win():
    v = judge_claim(CLAIMS["p95_ms"], {"p95_ms": 800.0}, {"p95_ms": 100.0})
    assert (v.bound, v.improvement, v.direction) == ("held", "reproduced", "better")
    assert v.text == "bound HELD, improvement REPRODUCED: 88 % vs claimed 85 %"
    v = judge_claim(CLAIMS["p95_ms"], {"p95_ms": 227.0}, {"p95_ms": 118.0})
    assert (v.bound, v.improvement) == ("held", "partly reproduced")
    assert v.text == "bound HELD, improvement PARTLY REPRODUCED: 48 % vs claimed 85 %"


def test_bound_missed_although_improved():
    v = judge_claim(CLAIMS["mean_cpu_pct"], {"mean_cpu_pct": 90.0}, {"mean_cpu_pct": 40.0})
    assert (v.bound, v.improvement, v.direction) == ("not held", "reproduced", "better")
    assert v.bound_why == "after 40 vs claimed <= 35"
    assert v.text == "bound NOT HELD, improvement REPRODUCED: 56 % vs claimed 53 %"
    # higher-is-better claims: the direction is an increase
    v = judge_claim(
        CLAIMS["max_stable_throughput_eps"], {"max_stable_throughput_eps": 501.0}, {"max_stable_throughput_eps": 999.0}
    )
    assert v.text == "bound NOT HELD, improvement PARTLY REPRODUCED: 99 % vs claimed 2900 %"


def test_capacity_not_measurable_at_this_load():
    """Every step tried held, and the largest tried is below the claim: neither part can be judged."""
    before = {"max_stable_connections": 200, "max_stable_is_lower_bound": False}
    after = {"max_stable_connections": 1000, "max_stable_is_lower_bound": True}
    v = judge_claim(CLAIMS["max_stable_connections"], before, after, tested_connections=1000)
    assert (v.bound, v.improvement) == ("not measurable here", "not measurable here")
    assert v.improvement_is_lower_bound
    assert v.bound_why == "every tried step held, up to 1000; the claim needs >= 2000"
    assert v.text == (
        "bound NOT MEASURABLE HERE, improvement NOT MEASURABLE HERE: after is a lower bound; at least 400 %; "
        "claimed 900 %"
    )
    # the same for throughput: a load that never offered 1500 events/s did not test that claim
    v = judge_claim(
        CLAIMS["max_stable_throughput_eps"],
        {"max_stable_throughput_eps": 400.3, "max_stable_is_lower_bound": True},
        {"max_stable_throughput_eps": 399.0, "max_stable_is_lower_bound": True},
    )
    assert (v.bound, v.improvement) == ("not measurable here", "not measurable here")
    assert v.bound_why == "every tried step held, up to 399; the claim needs >= 1500"
    # a lower bound that already beats the claim settles both parts
    after = {"max_stable_connections": 2000, "max_stable_is_lower_bound": True}
    v = judge_claim(CLAIMS["max_stable_connections"], before, after, tested_connections=2000)
    assert v.text == "bound HELD, improvement REPRODUCED: >= 900 % vs claimed 900 %"
    # a baseline that held every step it tried: its true capacity may be higher, so a gain is open
    both = {"max_stable_connections": 1000, "max_stable_is_lower_bound": True}
    v = judge_claim(CLAIMS["max_stable_connections"], both, {"max_stable_connections": 2000}, tested_connections=2000)
    assert (v.bound, v.improvement) == ("held", "not measurable here")
    assert v.improvement_why == "before is a lower bound; at most 100 %"


def test_missing_and_zero_values():
    v = judge_claim(CLAIMS["mean_cpu_pct"], {"mean_cpu_pct": 75.0}, {})
    assert (v.bound, v.improvement, v.direction) == ("not measurable here", "not measurable here", "n/a")
    assert math.isnan(v.measured_improvement_pct)
    assert v.text == "bound NOT MEASURABLE HERE, improvement NOT MEASURABLE HERE: no measured after value; claimed 53 %"
    # 0 -> 0 errors: the bound holds, a relative improvement from 0 has no meaning
    v = judge_claim(CLAIMS["error_rate_pct"], {"error_rate_pct": 0.0}, {"error_rate_pct": 0.0})
    assert (v.bound, v.improvement) == ("held", "not measurable here")
    assert v.text == "bound HELD, improvement NOT MEASURABLE HERE: measured before is 0; claimed 98 %"


def test_check_claims_rows_carry_both_parts():
    before = {"p95_ms": 39.66, "peak_memory_mb": 72.52}
    after = {"p95_ms": 104.6, "peak_memory_mb": 74.44}
    rows = check_claims(before, after).set_index("key")
    assert list(rows.index) == [c.key for c in SEED_CLAIMS]
    assert rows.loc["p95_ms", "verdict"] == "bound HELD, improvement NOT REPRODUCED (worse): -164 % vs claimed 85 %"
    assert rows.loc["p95_ms", "why"] == "after 104.6 <= 120; -164 % (worse) vs claimed 85 %"
    assert rows.loc["peak_memory_mb", ["bound", "improvement", "direction"]].tolist() == [
        "held",
        "not reproduced",
        "worse",
    ]
    assert rows.loc["mean_cpu_pct", "bound"] == "not measurable here"
