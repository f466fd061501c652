"""Plain-text and Markdown rendering of projection results (for the terminal and the README)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from eventlog.scan import Source, overview

ROW_FIELDS = (
    ("connections", "connections", "{:.0f}"),
    ("max_stable_connections", "max stable", "{:.0f}"),
    ("p50_ms", "p50 ms", "{:.1f}"),
    ("p95_ms", "p95 ms", "{:.1f}"),
    ("p99_ms", "p99 ms", "{:.1f}"),
    ("throughput_eps", "acked/s", "{:.0f}"),
    ("deliveries_per_s", "pushed/s", "{:.0f}"),
    ("error_rate_pct", "errors %", "{:.3f}"),
    ("error_rate_run_pct", "errors % (run)", "{:.3f}"),
    ("peak_memory_mb", "peak MB", "{:.0f}"),
    ("mean_cpu_pct", "cpu %", "{:.0f}"),
    ("loop_lag_max_ms", "lag ms", "{:.1f}"),
    ("gen_cpu_pct", "gen cpu %", "{:.0f}"),
    ("send_lag_p99_ms", "send lag p99 ms", "{:.2f}"),
)


def fmt(value: object, pattern: str = "{:.4g}") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return pattern.format(value)
    return str(value)


def connection_counts(events: Source) -> dict[str, Any]:
    """Connections attempted, accepted and not (refused or failed), over the whole run: the generator's
    reason for each failure (``connect_fail`` rows), and the servers' own refusals by reason (the
    scraped ``refusals:<reason>`` counters, their growth during the run, summed over nodes).

    The error rates of a benchmark row count the events of the steady window; connections refused
    while ramping up show only here. ``events``: a Run (scanned in bounded memory) or its rows."""
    ov = overview(events)
    server: dict[str, float] = {}
    samples = ov.samples[ov.samples["node"] >= 0]
    names = samples["name"].astype(str)
    first_scrape = samples.groupby("node")["t"].min() if len(samples) else pd.Series(dtype=float)
    for (node, name), g in samples[names.str.startswith("refusals:")].groupby(["node", names], observed=True):
        g = g.sort_values("t")
        # a reason present at the node's first scrape had counted before the run: count from there
        before = float(g["value"].iloc[0]) if g["t"].iloc[0] <= first_scrape.get(node, -math.inf) else 0.0
        grown = float(g["value"].iloc[-1]) - before
        if grown > 0:
            reason = str(name).split(":", 1)[1]
            server[reason] = server.get(reason, 0.0) + grown
    return {
        "attempted": int(ov.counts["connect_start"]),
        "accepted": int(ov.counts["connect_ok"]),
        "failed": sum(ov.connect_fail_by.values()),
        "failed_by": dict(sorted(ov.connect_fail_by.items(), key=lambda kv: -kv[1])),
        "server_refusals": {k: int(v) for k, v in sorted(server.items(), key=lambda kv: -kv[1])},
    }


def _by_reason(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def format_connections(c: Mapping[str, Any]) -> list[str]:
    """``connection_counts`` as summary lines, with a warning when connections were not accepted
    (refused, failed, or still unanswered when the run ended)."""
    unanswered = max(0, c["attempted"] - c["accepted"] - c["failed"])
    line = f"  {'connects':<16} {c['attempted']} attempted, {c['accepted']} accepted, {c['failed']} refused or failed"
    if c["failed_by"]:
        line += f" ({_by_reason(c['failed_by'])})"
    if unanswered:
        line += f", {unanswered} unanswered when the run ended"
    lines = [line]
    if c["server_refusals"]:
        lines.append(f"  {'server refusals':<16} {_by_reason(c['server_refusals'])}")
    if c["failed"] or unanswered:
        why = [_by_reason(c["server_refusals"] or c["failed_by"])] if c["failed"] else []
        why += [f"{unanswered} unanswered"] if unanswered else []
        hint = ""
        if "limit_ip" in c["server_refusals"]:
            hint = "; more source addresses (--source-addrs) spread clients under the per-IP limit"
        lines.append(
            f"  WARNING: {c['failed'] + unanswered} of {c['attempted']} connections were not accepted "
            f"({'; '.join(why)}): the latency and steady error figures cover only the accepted ones{hint}"
        )
    return lines


def format_row(row: Mapping[str, Any], connects: Mapping[str, Any] | None = None) -> str:
    """A benchmark row as aligned ``name: value`` lines; with ``connects`` (:func:`connection_counts`),
    what happened to the connections too."""
    lines = [f"run {row.get('run_id', '')} ({row.get('source', '')}, {row.get('profile', '') or 'profile n/a'})"]
    for key, label, pattern in ROW_FIELDS:
        value = fmt(row.get(key), pattern)
        if key == "max_stable_connections" and row.get("max_stable_is_lower_bound"):
            value = ">= " + value
        lines.append(f"  {label:<16} {value}")
        if key == "connections" and connects is not None:
            lines.extend(format_connections(connects))
    if row.get("recovered") or row.get("recovery_failures"):  # runs with recover: replays apart from pushes
        lines.append(
            f"  {'recovered':<16} {row.get('recovered', 0)} (rooms not recovered: {row.get('recovery_failures', 0)})"
        )
    if not row.get("generator_ok", True):
        lines.append("  WARNING: the load generator fell behind (CPU >= 90 % or send lag p99 >= 50 ms)")
    return "\n".join(lines)


def markdown(df: pd.DataFrame, floatfmt: str = "{:.4g}") -> str:
    """A DataFrame as a GitHub Markdown table (no extra dependency)."""
    cols = list(df.columns)
    out = ["| " + " | ".join(map(str, cols)) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        out.append("| " + " | ".join(fmt(r[c], floatfmt) for c in cols) + " |")
    return "\n".join(out)
