"""Self-checks of a measured run: does the log agree with itself and with the server's counters?"""

from __future__ import annotations

from typing import TypedDict

import numpy as np
import pandas as pd

from .load import GENERATOR_MAX_SEND_LAG_MS, SLO
from .manifest import Manifest
from .projections import benchmark_row, step_table, steps


def _final_counter(df: pd.DataFrame, name: str) -> tuple[float, float] | None:
    s = df[(df["kind"] == "sample") & (df["name"] == name) & (df["node"] >= 0)]
    if s.empty:
        return None
    per_node = s.groupby("node", observed=True)["value"]
    return float(per_node.first().sum()), float(per_node.last().sum())


def littles_law(df: pd.DataFrame, t0: float, t1: float) -> dict:
    """L (mean acks in flight, integrated from the log) against lambda * W (throughput x mean latency)."""
    acks = df[(df["kind"] == "ack")]
    sent = acks["t"].to_numpy() - acks["latency_s"].to_numpy()
    done = acks["t"].to_numpy()
    # time each request spends in flight inside [t0, t1]
    overlap = np.clip(np.minimum(done, t1) - np.maximum(sent, t0), 0, None)
    span = t1 - t0
    L = overlap.sum() / span
    inside = (sent >= t0) & (sent < t1)
    lam = inside.sum() / span
    W = float(np.mean(done[inside] - sent[inside])) if inside.any() else float("nan")
    return {"L": L, "lambda_W": lam * W}


class SelfCheck(TypedDict):
    check: str
    ok: bool
    detail: str


def self_checks(df: pd.DataFrame, manifest: Manifest | None = None) -> list[SelfCheck]:
    """Named checks with ok/detail; a failed check says the figures of this run need a second look."""
    out: list[SelfCheck] = []
    counts = df["kind"].value_counts()
    sends = int(counts.get("send", 0))
    events_in = _final_counter(df, "events_in")
    if events_in is not None:
        first, last = events_in
        server = last - first
        # the first scrape can follow the first sends; allow what was sent before it
        sample_t = df[(df["kind"] == "sample") & (df["name"] == "events_in")]["t"].min()
        before_first = int(((df["kind"] == "send") & (df["t"] < sample_t)).sum())
        gap = sends - server
        ok = 0 <= gap <= before_first + 0.001 * sends + 5
        detail = f"generator {sends}, server {server:.0f} (+{before_first} before the first scrape)"
        if gap > 0 and not ok:
            detail += f"; {gap:.0f} events were still queued in the server, or lost, when the run ended"
        out.append({"check": "sends recorded = events counted by the server", "ok": bool(ok), "detail": detail})
    st = steps(df)
    slo = SLO.from_manifest(manifest) if manifest is not None else SLO()
    table = step_table(df, slo) if len(st) else None
    held = table[table["held"]] if table is not None else None
    if held is not None and len(held):
        # on the busiest step that held: in overload, latencies as long as the window make the
        # edges dominate and the check says nothing
        best = held.sort_values("throughput_eps").iloc[-1]
        step = st[st["step"] == best["step"]].iloc[0]
        ll = littles_law(df, float(step["window_start"]), float(step["end"]))
        rel = abs(ll["L"] - ll["lambda_W"]) / ll["lambda_W"] if ll["lambda_W"] > 0 else 0.0
        out.append(
            {
                "check": "Little's law on acks (L = lambda W)",
                "ok": bool(rel < 0.1),
                "detail": f"step {int(best['step'])}: L {ll['L']:.3f}, lambda*W {ll['lambda_W']:.3f} "
                f"({100 * rel:.1f} % apart)",
            }
        )
    row = benchmark_row(df, manifest, slo)
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
    return out
