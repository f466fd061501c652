"""Plain-text and Markdown rendering of projection results (for the terminal and the README)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

ROW_FIELDS = (
    ("connections", "connections", "{:.0f}"),
    ("max_stable_connections", "max stable", "{:.0f}"),
    ("p50_ms", "p50 ms", "{:.1f}"),
    ("p95_ms", "p95 ms", "{:.1f}"),
    ("p99_ms", "p99 ms", "{:.1f}"),
    ("throughput_eps", "acked/s", "{:.0f}"),
    ("deliveries_per_s", "pushed/s", "{:.0f}"),
    ("error_rate_pct", "errors %", "{:.3f}"),
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


def format_row(row: Mapping[str, Any]) -> str:
    """A benchmark row as aligned ``name: value`` lines."""
    lines = [f"run {row.get('run_id', '')} ({row.get('source', '')}, {row.get('profile', '') or 'profile n/a'})"]
    for key, label, pattern in ROW_FIELDS:
        value = fmt(row.get(key), pattern)
        if key == "max_stable_connections" and row.get("max_stable_is_lower_bound"):
            value = ">= " + value
        lines.append(f"  {label:<16} {value}")
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
