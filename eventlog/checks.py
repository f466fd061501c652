"""Self-checks of a measured run: does the log agree with itself and with the server's counters?"""

from __future__ import annotations

from typing import TypedDict

import numpy as np
import pandas as pd

from .load import GENERATOR_MAX_SEND_LAG_MS, SLO
from .manifest import Manifest
from .projections import benchmark_row, step_table, steps
from .scan import Source, acks_in_flight, overview


def _final_counter(df: pd.DataFrame, name: str) -> tuple[float, float] | None:
    s = df[(df["kind"] == "sample") & (df["name"] == name) & (df["node"] >= 0)]
    if s.empty:
        return None
    per_node = s.groupby("node", observed=True)["value"]
    return float(per_node.first().sum()), float(per_node.last().sum())


def littles_law(events: Source, t0: float, t1: float) -> dict:
    """L (mean acks in flight, integrated from the log) against lambda * W (throughput x mean latency)."""
    terms = acks_in_flight(events, t0, t1, before=-np.inf)
    return {"L": terms["L"], "lambda_W": terms["lambda_W"]}


class SelfCheck(TypedDict):
    check: str
    ok: bool
    detail: str


def self_checks(events: Source, manifest: Manifest | None = None) -> list[SelfCheck]:
    """Named checks with ok/detail; a failed check says the figures of this run need a second look.
    ``events`` as for :func:`~eventlog.projections.benchmark_row` (a Run is scanned in bounded memory)."""
    out: list[SelfCheck] = []
    ov = overview(events)
    df = ov.samples
    sends = int(ov.counts.get("send", 0))
    events_in = _final_counter(df, "events_in")
    st = steps(events)
    slo = SLO.from_manifest(manifest) if manifest is not None else SLO()
    table = step_table(events, slo) if len(st) else None
    held = table[table["held"]] if table is not None else None
    window = None
    if held is not None and len(held):
        # on the busiest step that held: in overload, latencies as long as the window make the
        # edges dominate and the check says nothing
        best = held.sort_values("throughput_eps").iloc[-1]
        step = st[st["step"] == best["step"]].iloc[0]
        window = (float(step["window_start"]), float(step["end"]))
    # the first scrape can follow the first sends; allow what was sent before it
    sample_t = float(df[(df["kind"] == "sample") & (df["name"] == "events_in")]["t"].min())
    terms = acks_in_flight(events, *(window or (0.0, 1.0)), before=sample_t if events_in is not None else -np.inf)
    if events_in is not None:
        first, last = events_in
        server = last - first
        before_first = int(terms["sends_before"])
        gap = sends - server
        ok = 0 <= gap <= before_first + 0.001 * sends + 5
        detail = f"generator {sends}, server {server:.0f} (+{before_first} before the first scrape)"
        if gap > 0 and not ok:
            detail += f"; {gap:.0f} events were still queued in the server, or lost, when the run ended"
        out.append({"check": "sends recorded = events counted by the server", "ok": bool(ok), "detail": detail})
    if held is not None and len(held):
        ll = terms
        rel = abs(ll["L"] - ll["lambda_W"]) / ll["lambda_W"] if ll["lambda_W"] > 0 else 0.0
        out.append(
            {
                "check": "Little's law on acks (L = lambda W)",
                "ok": bool(rel < 0.1),
                "detail": f"step {int(best['step'])}: L {ll['L']:.3f}, lambda*W {ll['lambda_W']:.3f} "
                f"({100 * rel:.1f} % apart)",
            }
        )
    row = benchmark_row(events, manifest, slo)
    lagging = table[table["send_lag_p99_ms"] >= GENERATOR_MAX_SEND_LAG_MS]["step"].tolist() if table is not None else []
    detail = f"generator CPU {row['gen_cpu_pct']:.0f} %, send lag p99 {row['send_lag_p99_ms']:.2f} ms"
    if lagging:
        detail += (
            f"; send lag p99 over {GENERATOR_MAX_SEND_LAG_MS:g} ms in steps {lagging}: "
            "their latencies include the generator's delay"
        )
    out.append(
        {"check": "generator was not the bottleneck", "ok": bool(row["generator_ok"]) and not lagging, "detail": detail}
    )
    if manifest is not None and manifest.generators:
        out.append(clock_check(manifest))
    return out


# Generators on several hosts: each one's rows are put on the driver's clock by an estimated offset.
# Beyond this uncertainty, latencies between hosts (pushes) and step windows are off by as much.
MAX_CLOCK_UNCERTAINTY_MS = 1.0


def clock_check(manifest: Manifest) -> SelfCheck:
    """Generators on a cluster: was every host's clock offset known within ``MAX_CLOCK_UNCERTAINTY_MS``?"""
    worst, parts, unknown = 0.0, [], []
    for g in manifest.generators or []:
        u, c = g.uncertainty_s(), g.clock_start or g.clock_end
        if u is None or c is None:
            unknown.append(f"gen{g.worker}")
            continue
        worst = max(worst, u)
        drift = f", drift {1e3 * g.drift_corrected_s:+.3f} ms corrected" if g.drift_corrected_s else ""
        parts.append(f"gen{g.worker} ({g.host}) {1e3 * c.offset_s:+.3f} ms +- {1e3 * u:.3f}{drift}")
    detail = "; ".join(parts + ([f"no clock estimate for {', '.join(unknown)}"] if unknown else []))
    over = worst * 1e3 > MAX_CLOCK_UNCERTAINTY_MS
    if over:
        detail += f"; over {MAX_CLOCK_UNCERTAINTY_MS:g} ms: latencies across hosts and step windows are that uncertain"
    return {
        "check": f"generator clocks aligned (offset uncertainty <= {MAX_CLOCK_UNCERTAINTY_MS:g} ms)",
        "ok": not unknown and not over,
        "detail": detail,
    }
