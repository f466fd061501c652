"""The PDF capacity report: every figure a projection of the runs listed in ``runs.json``.

Page 1 is what an SRE forwards: the question, a one-sentence answer, the capacity table (nodes from
``eventlog.capacity``, simulated p95, CPU and memory per node, verdict against the SLO), how far the
model can be trusted (``lab.answer.confidence``) and the seed claims with their two-part verdicts.
The pages after it hold the evidence; the last lists every run a number came from.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.patches import Patch, Rectangle
from matplotlib.textpath import TextToPath
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from eventlog import SLO, WARMUP_RULE, Run, steps, timeseries
from eventlog.capacity import node_capacity_text
from model.parameters import Calibration
from model.usl import usl_text

from .answer import (
    CONFIDENCE_RULE,
    HELD,
    METRIC_NAMES,
    NOT_TESTED,
    CapacityRow,
    page_one,
    run_ids,
    short_id,
    slo_of,
    thousands,
)
from .passes import group_of
from .results import Summary, before_after, load_outputs
from .tables import fmt

A4 = (8.27, 11.69)
LEFT, WIDTH = 0.06, 0.88  # the text column, in figure fractions
LINE_SPACING = 1.25
_TEXT_PATH = TextToPath()


CLAIMS_SIZE = 7.0
FOOTER = (
    f"Warm-up rule: {WARMUP_RULE}. Percentiles: nearest rank over every sample. Runs are named by the "
    "last 6 characters of their ids; the last page lists the full ids, the next pages the evidence."
)
PAGE_BOTTOM = 0.05  # nothing is drawn below this fraction of the page


def _page(title: str) -> Figure:
    fig = plt.figure(figsize=A4)
    fig.text(LEFT, 0.965, title, fontsize=15, weight="bold", va="top")
    return fig


def _line_h(size: float, lines: int = 1) -> float:
    """The height of ``lines`` lines of text at ``size`` points, in figure fractions."""
    return lines * size * LINE_SPACING / 72 / A4[1]


@functools.lru_cache(maxsize=20_000)
def _word_pt(word: str, size: float, bold: bool) -> float:
    """A word's width in points, from the font's own metrics."""
    prop = FontProperties(size=size, weight="bold" if bold else "normal")
    return float(_TEXT_PATH.get_text_width_height_descent(word, prop, ismath=False)[0])


def _wrap(text: str, width: float, size: float, bold: bool = False) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` (figure fraction), measured with the
    font: a cell or a paragraph is wrapped, never cut. A word wider than the line is split by characters."""
    limit = width * A4[0] * 72
    space = _word_pt("a a", size, bold) - 2 * _word_pt("a", size, bold)
    lines: list[str] = []
    for para in str(text).split("\n"):
        indent = para[: len(para) - len(para.lstrip())]
        line, used = indent, _word_pt(indent.replace(" ", "a"), size, bold) if indent else 0.0
        for word in para.split():
            w = _word_pt(word, size, bold)
            while w > limit and len(word) > 1:  # a long run id: split it where it overflows
                cut = max(1, int(len(word) * limit / w))
                if line.strip():
                    lines.append(line)
                    line, used = "", 0.0
                lines.append(word[:cut])
                word = word[cut:]
                w = _word_pt(word, size, bold)
            if line.strip() and used + space + w > limit:
                lines.append(line)
                line, used = "", 0.0
            line, used = (f"{line} {word}", used + space + w) if line.strip() else (line + word, used + w)
        lines.append(line)
    return lines


def _text(fig: Figure, y: float, lines: Sequence[str], size: float = 8.5, **kw: Any) -> float:
    """Lines wrapped to the text column, from ``y`` down; returns the y below them."""
    bold = kw.get("weight") == "bold"
    for line in lines:
        for part in _wrap(line, WIDTH, size, bold):
            fig.text(LEFT, y, part, fontsize=size, va="top", **kw)
            y -= _line_h(size)
    return y


def _text_height(lines: Sequence[str], size: float) -> float:
    """How far down ``_text`` would draw these lines."""
    return sum(_line_h(size) * len(_wrap(line, WIDTH, size, False)) for line in lines)


PAD_X, PAD_Y = 0.004, 0.0025  # a table cell's padding


def _table_rows(
    header: Sequence[str], rows: Sequence[Sequence[str]], widths: Sequence[float], size: float
) -> list[tuple[list[list[str]], float]]:
    """Each row of a table (the header first) as its cells' wrapped lines and the row's height."""
    out = []
    for i, row in enumerate([list(header), *[list(r) for r in rows]]):
        cells = [_wrap(str(c), w - 2 * PAD_X, size, bold=i == 0) for c, w in zip(row, widths, strict=True)]
        out.append((cells, _line_h(size, max(len(c) for c in cells)) + 2 * PAD_Y))
    return out


def _table_height(header: Sequence[str], rows: Sequence[Sequence[str]], widths: Sequence[float], size: float) -> float:
    """How far down ``_table`` would draw this table (title included), without drawing it."""
    return _line_h(size + 2) + 0.004 + sum(h for _, h in _table_rows(header, rows, widths, size)) + 0.008


def _table(
    fig: Figure,
    y: float,
    title: str,
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    widths: Sequence[float],
    size: float = 7.0,
    colors: Sequence[str | None] | None = None,
) -> float:
    """A titled table whose cells wrap (at spaces) to their column's width, so no cell is cut; returns
    the y below it. ``widths`` are figure fractions; ``colors`` give each row's first-cell text colour."""
    fig.text(LEFT, y, title, fontsize=size + 2, weight="bold", va="top")
    y -= _line_h(size + 2) + 0.004
    ax = fig.add_axes((0, 0, 1, 1), zorder=-1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    for i, (cells, h) in enumerate(_table_rows(header, rows, widths, size)):
        x = LEFT
        shade = "#dde3ea" if i == 0 else "#f4f6f8" if i % 2 == 0 else "white"
        for j, (lines, w) in enumerate(zip(cells, widths, strict=True)):
            ax.add_patch(Rectangle((x, y - h), w, h, facecolor=shade, edgecolor="#9aa5b1", lw=0.4))
            color = (colors[i - 1] if colors and i > 0 and j == 0 else None) or "black"
            fig.text(
                x + PAD_X,
                y - PAD_Y,
                "\n".join(lines),
                fontsize=size,
                va="top",
                linespacing=LINE_SPACING,
                weight="bold" if i == 0 else "normal",
                color=color,
            )
            x += w
        y -= h
    return y - 0.008


def profile_colors(labels: Sequence[str]) -> dict[str, str]:
    """One colour per profile, the same for its measured and simulated figures on every page."""
    palette = [plt.get_cmap("tab10")(i) for i in range(10)]
    return {label: matplotlib.colors.to_hex(palette[i % len(palette)]) for i, label in enumerate(labels)}


def build_report(out_dir: Path | str, pdf_path: Path | str | None = None) -> Path:
    """Write ``<out_dir>/report.pdf`` (or ``pdf_path``) from the scenario outputs in ``out_dir``."""
    out_dir = Path(out_dir)
    out = load_outputs(out_dir)
    model, summary = out["model"], out["summary"]
    labels = list(summary)
    capacity, validation = out["capacity"], out["validation"]
    everyone = list(
        dict.fromkeys(
            [*labels, *(model.get("capacity") or {}), *(model.get("calibrations") or {}), *_labels(validation)]
        )
    )
    colors = profile_colors(everyone)
    pdf_path = Path(pdf_path) if pdf_path else out_dir / "report.pdf"
    with PdfPages(pdf_path) as pdf:
        summary_page(pdf, out, colors)
        if len(labels) >= 2:
            before_after_page(pdf, summary, labels)
        if summary or not capacity.empty:
            latency_page(pdf, summary, capacity, colors)
        if summary:
            resources_page(pdf, summary, colors)
        if len(labels) > 2:
            ablation_page(pdf, summary, labels, colors)
        if not out["sweep"].empty:
            sweep_page(pdf, out["sweep"], model.get("sweep") or {}, _slo(summary))
        if model:
            model_page(pdf, model, validation, summary)
        if not validation.empty:
            validation_page(pdf, validation, colors)
        if not out["replay"].empty:
            replay_page(pdf, out["replay"], out["replay_steps"], model.get("replays") or {}, colors)
        manifests_page(pdf, out)
    return pdf_path


def _labels(validation: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(validation["label"])) if "label" in validation else []


def _slo(summary: Summary) -> SLO:
    return slo_of(summary)


def summary_page(pdf: PdfPages, out: Mapping[str, Any], colors: Mapping[str, str]) -> None:
    record, model, summary = out["record"], out["model"], out["summary"]
    labels = list(summary)
    fig = _page(f"Capacity report: {record['scenario']}")
    first = next(iter(summary.values()), None)
    manifest = first.manifest if first else None
    p1 = page_one(out)
    slo, rows, caps, conf = p1.slo, p1.rows, p1.capacities, p1.confidence
    y = _text(fig, 0.925, [f"Question: {p1.question}"], size=9.5)
    y = _text(fig, y - 0.004, [p1.sentence], size=11, weight="bold")
    m = manifest.machine if manifest else {}
    machine = (
        f" Measured on: {m.get('cores', '?')} cores, {fmt((m.get('memory_bytes') or 0) / 2**30, '{:.0f}')} GiB, "
        f"{m.get('cpu_model', '?')}."
        if manifest
        else " No measured run in this folder: model only."
    )
    y = _text(
        fig,
        y - 0.004,
        [
            f"SLO: p95 <= {slo.p95_ms:g} ms, errors <= {slo.error_rate_pct:g} %.{machine} "
            f"Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC."
        ],
        size=7.5,
    )
    if rows and conf is not None:
        y = capacity_section(fig, y - 0.01, rows, caps, model, colors)
        head = f"Confidence: {conf.grade}."
        y = _text(fig, y - 0.004, [head], size=9, weight="bold")
        y = _text(fig, y, [conf.text.removeprefix(head).strip()], size=8)
        y = _text(fig, y, [f"(Grades: {CONFIDENCE_RULE}.)"], size=6.5, color="#555555")
    y = _text(fig, y - 0.006, measured_lines(summary), size=8)
    if len(labels) >= 2:
        before, after = compared(labels)
        _, claims = before_after(summary, before, after)
        _title, header, rows_, widths = claims_table(summary, before, after, claims)
        # the claims, a possible note and the footer must fit above the margin, else they go on a page of
        # their own (a long page 1 drew the claims over the footer and off the page)
        note = claims_note(summary, before, after, claims)
        need = _table_height(header, rows_, widths, CLAIMS_SIZE) + _text_height([note] if note else [], 7.5)
        if y - 0.01 - need - 0.006 - _text_height([FOOTER], 6.5) < PAGE_BOTTOM:
            page_footer(fig, y)
            pdf.savefig(fig)
            plt.close(fig)
            fig = _page(f"Capacity report: {record['scenario']} (continued)")
            y = 0.93
        y = claims_section(fig, y - 0.01, summary, before, after, claims)
    page_footer(fig, y)
    pdf.savefig(fig)
    plt.close(fig)


def page_footer(fig: Figure, y: float) -> None:
    _text(
        fig,
        max(y - 0.006, PAGE_BOTTOM),
        [FOOTER],
        size=6.5,
        color="#555555",
    )


def capacity_section(
    fig: Figure,
    y: float,
    rows: list[CapacityRow],
    caps: Mapping[str, Any],
    model: Mapping[str, Any],
    colors: Mapping[str, str],
) -> float:
    header = [
        "profile",
        "connections",
        "nodes needed (eventlog.capacity)",
        "on nodes",
        "p95 ms (± 95 % CI)",
        "CPU per node",
        "memory per node",
        "vs SLO",
        "runs",
    ]
    cells = [
        [
            r.label,
            thousands(r.connections) + (" *" if r.extrapolated else ""),
            r.answer.text(),
            f"{r.simulated_nodes} node{'s' if r.simulated_nodes != 1 else ''}" if r.simulated_nodes else "n/a",
            r.p95,
            r.cpu_per_node,
            r.memory_per_node,
            r.slo,
            " ".join(short_id(x) for x in r.runs),
        ]
        for r in rows
    ]
    widths = [0.075, 0.09, 0.225, 0.06, 0.1, 0.075, 0.075, 0.1, 0.08]
    y = _table(
        fig,
        y,
        "Nodes needed and the simulated figures on them (per profile and target load)",
        header,
        cells,
        widths,
        size=7,
        colors=[colors.get(r.label) for r in rows],
    )
    rates = {label: c.get("events_per_connection") for label, c in (model.get("capacity") or {}).items()}
    notes = []
    for label, cap in caps.items():
        ramps = [short_id(x) for x in (model.get("capacity") or {}).get(label, {}).get("ramp_runs", [])]
        notes.append(
            f"{label}: {node_capacity_text(cap)}, at {fmt(rates.get(label), '{:.3g}')} events/s per connection"
            + (f"; simulated ramps {', '.join(ramps)}." if ramps else ".")
        )
    searched = any(r.answer.basis == "deployment" for r in rows)
    if searched:
        notes.append(
            "Nodes needed: the fewest nodes on which every replication of the simulated deployment (nodes "
            "joined by Redis, each holding its share of every company) meets the SLO, searched from the "
            "one-node ramps' estimate and never under the node limit; the same question the what-if sweep asks."
        )
    notes.append(
        "Figures are simulated 'on nodes': the answer's nodes less the spare (the load with one node down), "
        "mean of the replications with the 95 % CI; CPU in % of one core. * beyond the measured envelope."
    )
    return _text(fig, y, notes, size=7)


def measured_lines(summary: Summary) -> list[str]:
    """One line per measured run; with passes (``NAME.K``), one per configuration with each pass's
    figures side by side, so twelve runs do not push page 1 off the page."""
    groups: dict[str, list[str]] = {}
    for label in summary:
        groups.setdefault(group_of(label), []).append(label)
    if len(groups) < len(summary):
        return [_passes_line(name, [summary[label] for label in members]) for name, members in groups.items()]
    lines = []
    for label, s in summary.items():
        row = s.row
        bound = ">= " if row["max_stable_is_lower_bound"] else ""
        nodes = s.manifest.nodes or 1
        lines.append(
            f"Measured {label} [{s.run_id}] on {nodes} node{'s' if nodes != 1 else ''}: held the SLO up to "
            f"{bound}{row['max_stable_connections']} connections, "
            f"{fmt(row['max_stable_throughput_eps'], '{:.0f}')} acked events/s; last step p95 {fmt(row['p95_ms'])} ms, "
            f"errors {fmt(row['error_rate_pct'])} %, peak memory {fmt(row['peak_memory_mb'])} MB."
        )
    return lines


def _passes_line(name: str, passes: list) -> str:
    def each(key: str, form: str = "{:.3g}") -> str:
        return " / ".join(fmt(s.row[key], form) for s in passes)

    held = " / ".join(
        f"{'>= ' if s.row['max_stable_is_lower_bound'] else ''}{s.row['max_stable_connections']}" for s in passes
    )
    nodes = passes[0].manifest.nodes or 1
    return (
        f"Measured {name}, {len(passes)} passes [{', '.join(short_id(s.run_id) for s in passes)}] on {nodes} "
        f"node{'s' if nodes != 1 else ''}: held the SLO up to {held} connections, {each('max_stable_throughput_eps', '{:.0f}')} "
        f"acked events/s; last step p95 {each('p95_ms')} ms, errors {each('error_rate_pct')} %, peak memory "
        f"{each('peak_memory_mb', '{:.0f}')} MB."
    )


def batching_note(summary: Summary, before: str, after: str) -> str | None:
    """Why p95 moves when the 'after' profile batches pushes, from the runs' own settings and figures."""
    a, b = summary[after], summary[before]
    server = a.manifest.server
    if server is None or not server.toggles.get("batching"):
        return None
    window = float(server.settings.get("flush_interval_ms", math.nan))
    ra, rb = a.row, b.row
    return (
        f"Batching and p95: {after} batches pushed events in a {window:g} ms flush window (flush_interval_ms), "
        f"so a push waits 0-{window:g} ms for its window by design: its push p95 is {fmt(ra['push_p95_ms'])} ms, "
        f"while acks, never batched, have p95 {fmt(ra['ack_p95_ms'])} ms ({before}: pushes "
        f"{fmt(rb['push_p95_ms'])}, acks {fmt(rb['ack_p95_ms'])} ms). The p95 claim is judged over acks and pushes "
        "together; batching buys fewer frames and less CPU per delivery at high fan-out, not latency."
    )


def claims_table(
    summary: Summary, before: str, after: str, claims: pd.DataFrame
) -> tuple[str, list[str], list[list[str]], list[float]]:
    """Title, header, rows and column widths of page 1's claims table."""
    rows = [
        [str(c.claim), f"{fmt(c.measured_before)} -> {fmt(c.measured_after)}", str(c.verdict)]
        for c in claims.itertuples()
    ]
    title = (
        f"Seed guide claims, {before} -> {after} [{short_id(summary[before].run_id)} -> "
        f"{short_id(summary[after].run_id)}], judged at this scenario's load"
    )
    header = ["claim", "measured", "verdict: the bound (after within the claim), the improvement (vs the claimed size)"]
    return title, header, rows, [0.22, 0.15, 0.51]


def claims_note(summary: Summary, before: str, after: str, claims: pd.DataFrame) -> str | None:
    """The batching note under the claims, when the p95 claim is not both held and reproduced."""
    note = batching_note(summary, before, after)
    p95 = claims[claims["key"] == "p95_ms"]
    if note and len(p95) and (p95["bound"].iloc[0] != "held" or p95["improvement"].iloc[0] != "reproduced"):
        return note
    return None


def claims_section(fig: Figure, y: float, summary: Summary, before: str, after: str, claims: pd.DataFrame) -> float:
    title, header, rows, widths = claims_table(summary, before, after, claims)
    y = _table(fig, y, title, header, rows, widths, size=CLAIMS_SIZE)
    note = claims_note(summary, before, after, claims)
    return _text(fig, y, [note], size=7.5) if note else y


def compared(labels: list[str]) -> tuple[str, str]:
    """The two runs the claims compare: the first and the last, or with passes (``NAME.K``) the first
    pass of the first two configurations (the last pass of the last one compares nothing in particular)."""
    firsts = list(pass_firsts(labels).values())
    if len(firsts) < len(labels) and len(firsts) >= 2:
        return firsts[0], firsts[1]
    return labels[0], labels[-1]


def pass_firsts(labels: list[str]) -> dict[str, str]:
    """Configuration -> its first run's label."""
    out: dict[str, str] = {}
    for label in labels:
        out.setdefault(group_of(label), label)
    return out


def before_after_page(pdf: PdfPages, summary: Summary, labels: list[str]) -> None:
    before, after = compared(labels)
    fig = _page(f"Before and after: {before} vs {after}")
    table, claims = before_after(summary, before, after)
    y = _text(fig, 0.93, [f"Runs: {before} {summary[before].run_id} -> {after} {summary[after].run_id}"], size=8)
    cells = [
        [
            str(r.metric),
            fmt(r.before),
            fmt(r.after),
            fmt(r.improvement_pct, "{:.0f}" if abs(float(r.improvement_pct)) >= 10 else "{:.1f}"),
        ]
        for r in table.drop(columns=["key"]).itertuples()
    ]
    y = _table(
        fig,
        y - 0.005,
        "Benchmark rows at the steady step (improvement: positive is better)",
        ["metric", before, after, "improvement %"],
        cells,
        [0.34, 0.18, 0.18, 0.18],
        size=7.5,
    )
    rows = [
        [str(c.claim), f"{fmt(c.measured_before)} -> {fmt(c.measured_after)}", str(c.verdict), str(c.why)]
        for c in claims.itertuples()
    ]
    y = _table(
        fig,
        y - 0.01,
        "Seed guide claims with their reasons",
        ["claim", "measured", "verdict", "why"],
        rows,
        [0.17, 0.12, 0.3, 0.29],
        size=7,
    )
    note = batching_note(summary, before, after)
    _text(fig, y, [note] if note else [], size=8)
    pdf.savefig(fig)
    plt.close(fig)


def _log_connections(ax: Axes) -> None:
    """Log x-axis with plain numbers (50, 200, 2 000, 10 000), so the measured points are not crammed at 0
    (connections, or an event rate)."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: thousands(v)))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _log_ms(ax: Axes) -> None:
    """Log y-axis in ms with plain labels at 1, 2, 5 x powers of ten."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _slo_line(ax: Axes, slo: SLO) -> None:
    ax.axhline(slo.p95_ms, color="crimson", ls="--", lw=1.2, label=f"SLO p95 {slo.p95_ms:g} ms")


def latency_page(pdf: PdfPages, summary: Summary, capacity: pd.DataFrame, colors: Mapping[str, str]) -> None:
    fig = _page("Latency against connections and against event rate")
    slo = _slo(summary)
    ax1 = fig.add_axes((0.1, 0.58, 0.82, 0.3))
    ax2 = fig.add_axes((0.1, 0.16, 0.82, 0.27))
    for label, s in summary.items():
        st = s.steps
        c = colors.get(label)
        ax1.plot(st["target"], st["p95_ms"], "o", color=c, ms=6, label=f"{label} measured [{short_id(s.run_id)}]")
        ax2.plot(st["sends_per_s"], st["p95_ms"], "o-", color=c, label=f"{label} measured [{short_id(s.run_id)}]")
    for label, g in capacity.groupby("label") if not capacity.empty else []:
        g = g.sort_values("connections")
        c = colors.get(str(label))
        ci = g["p95_ms_ci"].fillna(0)
        nodes = "/".join(str(int(n)) for n in g["nodes"]) if "nodes" in g else "1"
        ax1.plot(g["connections"], g["p95_ms"], "s-", color=c, label=f"{label} simulated p95 on {nodes} nodes")
        ax1.fill_between(
            g["connections"],
            (g["p95_ms"] - ci).clip(lower=1e-3),
            g["p95_ms"] + ci,
            color=c,
            alpha=0.2,
            label=f"{label} simulated: 95 % CI over replications",
        )
    batching: list[str] = []
    soon: list[str] = []
    for label, s in summary.items():
        toggles = s.manifest.server.toggles if s.manifest.server is not None else {}
        if toggles.get("batching"):
            window = (
                float(s.manifest.server.settings.get("flush_interval_ms", math.nan)) if s.manifest.server else math.nan
            )
            (soon if toggles.get("batch_flush_soon") else batching).append(f"{label} ({window:g} ms)")
    lines = []
    if batching:
        lines.append(
            f"Batching profiles: {', '.join(batching)}: a pushed event waits 0 to one flush window for its "
            "batch, so their p95 sits near the window at any load; acks are never batched."
        )
    if soon:
        lines.append(
            f"Batching with batch_flush_soon: {', '.join(soon)}: a batch leaves at the end of the loop turn that "
            "queued it unless its client is still writing, so an idle client never waits for the window (its bound)."
        )
    if lines:
        _text(
            fig,
            0.935,
            lines,
            size=7.5,
        )
    ax1.set_title("p95 against connections (log axes)", fontsize=10)
    ax2.set_title("p95 against offered event rate, measured steps", fontsize=10)
    _log_connections(ax1)
    ax1.set_xlabel("connections (total over the nodes)")
    _log_connections(ax2)
    ax2.set_xlabel("offered events/s")
    for ax in (ax1, ax2):
        _slo_line(ax, slo)
        _log_ms(ax)
        ax.set_ylabel("p95 latency (ms)")
        ax.grid(alpha=0.3, which="both")
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    pdf.savefig(fig)
    plt.close(fig)


def resources_page(pdf: PdfPages, summary: Summary, colors: Mapping[str, str]) -> None:
    fig = _page("CPU, memory and event-loop lag over each measured run")
    axes = [fig.add_axes((0.1, y, 0.82, 0.23)) for y in (0.64, 0.37, 0.1)]
    for label, s in summary.items():
        run: Run = s.run
        ts = timeseries(run)
        c = colors.get(label)
        for ax, col in zip(axes, ("cpu_pct", "rss_mb", "loop_lag_ms"), strict=True):
            if col in ts:
                ax.plot(ts.index, ts[col], color=c, label=f"{label} [{short_id(run.run_id)}]", lw=1)
        marks = steps(run)  # the log's own clock, as the series
        for ax in axes:
            for t in marks["start"]:
                ax.axvline(t, color=c, ls=":", lw=0.9)
        if label == next(iter(summary)) and len(marks):
            rates = dict(zip(s.steps["step"], s.steps["sends_per_s"], strict=False)) if len(s.steps) else {}
            top = axes[0].secondary_xaxis("top")
            top.set_xticks(
                list(marks["start"]),
                [
                    f"{k}: {t} conns\n{rates.get(k, math.nan):.0f} ev/s"
                    for k, t in zip(marks["step"], marks["target"], strict=True)
                ],
                fontsize=6.5,
                ha="left",
            )
    several = any((s.manifest.nodes or 1) > 1 for s in summary.values())
    names = ("server CPU % of one core", "RSS (MB)", "loop lag max (ms)")
    if several:  # eventlog.timeseries sums each series over the nodes
        names = ("server CPU %, sum over nodes", "RSS (MB), sum over nodes", "loop lag max (ms), sum over nodes")
    for ax, yl in zip(axes, names, strict=True):
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=7, loc="upper left")
    axes[0].set_title(
        f"dotted lines: load step starts ({next(iter(summary))}: step, connections, offered events/s); "
        "one colour per profile",
        fontsize=8.5,
        pad=22,
    )
    axes[-1].set_xlabel("seconds since run start")
    pdf.savefig(fig)
    plt.close(fig)


def ablation_page(pdf: PdfPages, summary: Summary, labels: list[str], colors: Mapping[str, str]) -> None:
    fig = _page(f"Ablation: each variant against {labels[0]}")
    metrics = ("p95_ms", "mean_cpu_pct", "max_stable_throughput_eps", "peak_memory_mb", "error_rate_pct")
    rows = pd.DataFrame([{**v.row, "label": k, "run": v.run_id} for k, v in summary.items()])[
        ["label", *metrics, "run"]
    ]
    cells = [
        [
            str(r.label),
            fmt(r.p95_ms, "{:.3g}"),
            fmt(r.mean_cpu_pct, "{:.2g}"),
            fmt(r.max_stable_throughput_eps, "{:.0f}"),
            fmt(r.peak_memory_mb, "{:.0f}"),
            fmt(r.error_rate_pct, "{:.2g}"),
            str(r.run),
        ]
        for r in rows.itertuples()
    ]
    y = _table(
        fig,
        0.93,
        "Steady-step figures per variant",
        ["variant", "p95 ms", "CPU %", "max stable events/s", "peak MB", "errors %", "run"],
        cells,
        [0.14, 0.08, 0.07, 0.12, 0.08, 0.08, 0.31],
        size=7,
        colors=[colors.get(str(r)) for r in rows["label"]],
    )
    names = ["\n".join(_wrap(str(r), 0.2, 8)) for r in rows["label"]]
    bar_colors = [colors.get(str(r)) or "grey" for r in rows["label"]]
    h = min(0.3, (y - 0.14) / 2 - 0.05)
    y_cpu = y - 0.05 - h
    ax_cpu = fig.add_axes((0.3, y_cpu, 0.62, h))
    ax_p95 = fig.add_axes((0.3, y_cpu - 0.07 - h, 0.62, h))
    pos = np.arange(len(rows))[::-1]
    ax_cpu.barh(pos, rows["mean_cpu_pct"], color=bar_colors)
    ax_cpu.set_xlabel("server CPU % of one core, steady step")
    ax_p95.barh(pos, rows["p95_ms"], color=bar_colors)
    _slo_line_x(ax_p95, _slo(summary))
    scale = "ms"
    if rows["p95_ms"].max() > 10 * _slo(summary).p95_ms:  # one saturated variant would flatten the others
        ax_p95.set_xscale("log")
        ax_p95.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax_p95.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax_p95.xaxis.set_minor_formatter(NullFormatter())
        scale = "ms, log axis: bars start at its left edge"
    ax_p95.set_xlabel(f"p95 latency ({scale}), steady step")
    ax_p95.legend(fontsize=7, loc="lower right")
    for ax, title in ((ax_cpu, "CPU per variant"), (ax_p95, "p95 per variant")):
        ax.set_yticks(pos, names, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, axis="x")
        ax.tick_params(axis="x", labelsize=8)
    pdf.savefig(fig)
    plt.close(fig)


def _slo_line_x(ax: Axes, slo: SLO) -> None:
    ax.axvline(slo.p95_ms, color="crimson", ls="--", lw=1.2, label=f"SLO p95 {slo.p95_ms:g} ms")


def sweep_page(pdf: PdfPages, sweep: pd.DataFrame, record: Mapping[str, Any], slo: SLO) -> None:
    fig = _page("What-if sweep")
    keys = [
        c for c in sweep.columns if not c.endswith("_ci") and c not in SWEEP_FIGURES and c not in ("meets_slo", "over")
    ]
    keys = [k for k in keys if k not in ("over_node_limit", "run_ids", "replications_meeting_slo")]  # the grid alone
    lines = [
        f"Fewest nodes meeting the SLO: {record.get('fewest_nodes_meeting_slo', 'n/a')}, with N+1: "
        f"{record.get('with_n_plus_1', 'n/a')}. Node connection limit: {record.get('node_limit', 'none')}."
    ]
    if record.get("changed_settings"):
        lines.append(f"Settings changed from the calibrated server: {', '.join(record['changed_settings'])}.")
    y = _text(fig, 0.93, lines, size=8.5)
    cells = []
    for r in sweep.to_dict("records"):
        over = bool(r.get("over_node_limit"))
        nodes = float(r.get("nodes") or 1)
        cells.append(
            [
                *(fmt(r.get(k), "{:g}") for k in keys),
                "not run: over the node limit" if over else _pm(r, "p95_ms"),
                "" if over else fmt(r["mean_cpu_pct"] / nodes, "{:.2g}"),
                "" if over else fmt(r.get("error_rate_pct"), "{:.2g}"),
                "n/a (not run)" if over else "yes" if r.get("meets_slo") else "no",
            ]
        )
    w = 0.88 - 0.5
    y = _table(
        fig,
        y - 0.005,
        f"Sweep grid (SLO p95 <= {slo.p95_ms:g} ms)",
        [*keys, "p95 ms (± 95 % CI)", "CPU % per node", "errors %", "meets SLO"],
        cells[:45],
        [w / max(1, len(keys))] * len(keys) + [0.2, 0.1, 0.1, 0.1],
        size=6.5,
    )
    if "nodes" in sweep and sweep["p95_ms"].notna().any() and y > 0.35:
        height = min(0.4, y - 0.15)
        sweep_chart(fig.add_axes((0.1, y - 0.06 - height, 0.82, height)), sweep, keys, slo)
    pdf.savefig(fig)
    plt.close(fig)


SWEEP_FIGURES = ("p95_ms", "error_rate_pct", "mean_cpu_pct", "throughput_eps")


def sweep_chart(ax: Axes, sweep: pd.DataFrame, keys: list[str], slo: SLO) -> None:
    """p95 (with its 95 % CI) against nodes, one line per setting of the other grid keys."""
    others = [k for k in keys if k not in ("nodes", "connections")]
    groups = sweep.groupby(others, dropna=False) if others else [((), sweep)]
    for i, (key, g) in enumerate(groups):
        g = g.sort_values("nodes")
        ok = g[g["p95_ms"].notna()]
        values = key if isinstance(key, tuple) else (key,)
        name = ", ".join(f"{k}={float(v):g}" for k, v in zip(others, values, strict=True)) or "p95"
        color = plt.get_cmap("Set2")(i % 8)
        ax.errorbar(
            ok["nodes"],
            ok["p95_ms"],
            yerr=ok.get("p95_ms_ci"),
            fmt="o-",
            color=color,
            capsize=3,
            label=f"{name} (95 % CI bars)",
        )
    over = sweep[sweep.get("over_node_limit", pd.Series(False, index=sweep.index)).fillna(False).astype(bool)]
    for n in sorted(set(over["nodes"])):
        ax.axvspan(n - 0.3, n + 0.3, color="#cccccc", alpha=0.5)
    _slo_line(ax, slo)
    ax.set_xlabel("nodes")
    ax.set_ylabel("p95 latency (ms)")
    ax.set_xticks(sorted(set(sweep["nodes"])))
    ax.set_title("Simulated p95 against nodes", fontsize=10)
    ax.grid(alpha=0.3)
    handles, names = ax.get_legend_handles_labels()
    if len(over):
        handles.append(Patch(color="#cccccc", alpha=0.5))
        names.append("over the node connection limit: not run")
    ax.legend(handles, names, fontsize=7)


def _pm(r: Mapping[str, Any], m: str) -> str:
    from .answer import plus_minus

    return plus_minus(float(r[m]), float(r.get(m + "_ci", math.nan)))


def model_page(pdf: PdfPages, model: dict, validation: pd.DataFrame, summary: Summary) -> None:
    fig = _page("Model: validation against fixed bands, calibration, assumptions")
    lines = [f"Bands (fixed before fitting): {model.get('bands', '')}."]
    for label, path in (model.get("calibrations") or {}).items():
        try:
            cal = Calibration.load(path)
        except (OSError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
            why = getattr(exc, "strerror", None) or " ".join(str(exc).split())[:200]
            lines.append(f"{label}: calibration file {path} could not be read ({why}); its figures are missing here")
            print(f"caplab report: warning: calibration {path} of {label} could not be read: {why}", file=sys.stderr)
            continue
        redis = cal.redis_text()
        lines.append(
            f"{label}: CPU per event {cal.cpu_per_event_s * 1e6:.3g} us, per delivery {cal.cpu_per_delivery_s * 1e6:.3g} us, "
            f"per packet {cal.cpu_per_packet_s * 1e6:.3g} us, per loop wake-up {cal.cpu_per_wakeup_s * 1e6:.3g} us, "
            f"per connect {cal.cpu_per_connect_s * 1e3:.3g} ms; "
            + (f"{redis}; " if redis else "")
            + f"{cal.client_text()}; "
            f"memory {cal.memory_base_bytes / 1e6:.0f} MB + {cal.memory_per_connection_bytes / 1e3:.3g} KB per connection; "
            f"GC {cal.gc.collections_per_event:.2g} per event ({cal.gc.dist}, KS p {fmt(cal.gc.ks_pvalue, '{:.2g}')}); "
            f"CPU fit R2 {fmt(cal.fit.get('cpu', {}).get('r2'), '{:.2f}')}; runs {', '.join(cal.source_runs)}"
        )
        lines += [f"    assumption: {a}" for a in cal.assumptions]
        lines += [f"    fit warning: {w}" for w in cal.fit_warnings()]
    firsts = pass_firsts(list(summary))  # a configuration of passes: its first run's steps
    for label, u in (model.get("usl") or {}).items():
        run = summary.get(firsts.get(label, label))
        tried = float(run.steps["target"].max()) if run is not None and len(run.steps) else None
        lines.append(f"USL cross-check {label}: {usl_text(u, tried)}")
    y = _text(fig, 0.93, lines, size=7.5)
    if not validation.empty:
        v = validation.assign(held_out=validation["held_out"].astype(bool) if "held_out" in validation else False)
        rows = []
        for (label, metric, held_out), g in v.groupby(["label", "metric", "held_out"], sort=False):
            band = float(g["band_pct"].iloc[0]) if "band_pct" in g else math.nan
            tested = g[~g["verdict"].isin(NOT_TESTED)]
            within = int(tested["verdict"].isin(HELD).sum())
            untested = len(g) - len(tested)
            rows.append(
                [
                    str(label),
                    METRIC_NAMES.get(str(metric), str(metric)),
                    "held out" if held_out else "fitted on",
                    f"{within} of {len(tested)}" + (f" ({untested} not testable)" if untested else ""),
                    fmt(band, "{:.0f}"),
                    fmt(_median_abs(g["error_pct"]), "{:.2g}"),
                    spread_text(g),
                ]
            )
        measured_ids = ", ".join(f"{k} {s.run_id}" for k, s in summary.items())
        y = _text(
            fig,
            y - 0.01,
            [
                f"Each configuration (measured: {measured_ids}) simulated by the model fitted on the first half of "
                "its steps, over all its passes (runs labelled NAME.1, NAME.2, ...): steps 'fitted on' were seen by "
                "the fit, 'held out' were not; 'X from Y' is configuration X predicted from Y's calibration, never "
                "fitted on X. Each prediction is judged against the passes' mean; 'spread' is the passes' median "
                "standard deviation over their mean. 'Within band' counts a miss inside the measured mean's own 95 % "
                "uncertainty as held; steps where a band does not apply (saturated; p95 where the generator fell behind "
                "its schedule; an open-loop throughput the generator sets) are not testable."
            ],
            size=7.5,
        )
        header = ["configuration", "metric", "steps", "within band", "band %", "median |error| %", "spread %"]
        widths = [0.2, 0.15, 0.1, 0.15, 0.07, 0.12, 0.13]
        if y - 0.004 - _table_height(header, rows, widths, 7) < PAGE_BOTTOM:  # many configurations: a page of its own
            pdf.savefig(fig)
            plt.close(fig)
            fig = _page("Model: validation against fixed bands (continued)")
            y = 0.93
        _table(
            fig,
            y - 0.004,
            "Validation per profile and metric: steps within the band fixed before fitting",
            header,
            rows,
            widths,
            size=7,
        )
    pdf.savefig(fig)
    plt.close(fig)


def spread_text(g: pd.DataFrame) -> str:
    """The passes' median spread in % over the rows ``g``, or '1 run' when there was one pass."""
    if "passes" not in g or g["passes"].max() < 2 or not g["spread_pct"].notna().any():
        return "1 run"
    return f"{float(np.nanmedian(g['spread_pct'])):.2g} ({int(g['passes'].max())} runs)"


VALIDATION_METRICS = ("cpu_pct", "p95_ms", "memory_mb", "throughput_eps")
EDGE = 150.0  # % error drawn at most; larger ones sit on the edge


def validation_page(pdf: PdfPages, validation: pd.DataFrame, colors: Mapping[str, str]) -> None:
    """Every validated step against its band: the prediction's error per step and metric, the band
    shaded, and the measured mean's own 95 % uncertainty as the error bar (the passes' spread)."""
    fig = _page("Validation per step: prediction error, band and noise")
    v = validation[validation["metric"].isin(VALIDATION_METRICS)]
    v = v.assign(**{c: v.get(c, d) for c, d in (("noise_pct", 0.0), ("held_out", True))})  # older files
    labels = list(dict.fromkeys(v["label"]))
    axes = fig.subplots(2, 2, gridspec_kw={"left": 0.09, "right": 0.97, "top": 0.86, "bottom": 0.2, "hspace": 0.35})
    for ax, metric in zip(axes.flat, VALIDATION_METRICS, strict=True):
        m = v[v["metric"] == metric]
        band = float(np.nan_to_num(m["band_pct"].iloc[0])) if len(m) and "band_pct" in m else 0.0
        ax.axhspan(-band, band, color="0.85", zorder=0, label=f"band +-{band:.0f} %")
        ax.axhline(0, color="0.5", lw=0.6)
        for i, label in enumerate(labels):
            g = m[m["label"] == label]
            tested = ~g["verdict"].isin(NOT_TESTED)
            x = g["step"].to_numpy(float) + (i - (len(labels) - 1) / 2) * 0.8 / max(1, len(labels))
            err = np.nan_to_num(g["noise_pct"].to_numpy(float))
            color = colors.get(label) or colors.get(label.split(" from ")[0], "k")
            for sel, face in (
                (tested & g["held_out"].astype(bool), color),
                (tested & ~g["held_out"].astype(bool), "w"),
            ):
                ax.errorbar(
                    x[sel],
                    np.clip(g["error_pct"].to_numpy(float)[sel], -EDGE, EDGE),
                    yerr=err[sel],
                    fmt="o",
                    ms=3.5,
                    mfc=face,
                    mec=color,
                    ecolor=color,
                    elinewidth=0.8,
                    capsize=1.5,
                    lw=0,
                    label=label if face is color else None,
                )
        if (~m["verdict"].isin(NOT_TESTED)).sum() == 0:
            ax.text(
                0.5,
                0.5,
                "no step where this band applies",
                ha="center",
                va="center",
                fontsize=7,
                transform=ax.transAxes,
            )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{METRIC_NAMES.get(metric, metric)}: prediction error %", fontsize=8)
        ax.set_xlabel("step", fontsize=7)
        ax.tick_params(labelsize=7)
        finite = np.abs(m["error_pct"].to_numpy(float))
        finite = finite[np.isfinite(finite)]
        lim = max(3 * band, float(finite.max()) * 1.1 if finite.size else 0.0, 1.0)
        ax.set_ylim(-min(lim, EDGE) * 1.05, min(lim, EDGE) * 1.05)
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.legend(
        handles,
        names,
        loc="lower center",
        ncol=min(4, len(names)),
        fontsize=7,
        frameon=False,
        bbox_to_anchor=(0.5, 0.09),
    )
    _text(
        fig,
        0.075,
        [
            "Filled: held-out steps; hollow: steps the fit saw. Error bars: the measured mean's 95 % uncertainty "
            "(from the passes' spread; a single run's throughput: its Poisson count). Steps where the band does not "
            "apply (p95 saturated or generator-bound, throughput below saturation) are left out; errors beyond +-150 % "
            "sit on the edge. "
            "The rows are reports/NAME/validation.csv."
        ],
        size=7,
    )
    pdf.savefig(fig)
    plt.close(fig)


REPLAY_ROWS = 4  # configurations on the replay page


def _median_abs(x: pd.Series) -> float:
    v = np.abs(x.to_numpy(float))
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else math.nan


def replay_page(
    pdf: PdfPages, per_s: pd.DataFrame, per_step: pd.DataFrame, runs: Mapping[str, Any], colors: Mapping[str, str]
) -> None:
    """Trace replay (issue 11): each configuration's first measured run replayed through the model with
    its exact arrivals, per second: CPU and ack p95, measured (solid) and replayed (dashed)."""
    fig = _page("Trace replay: the model on the measured arrivals, per second")
    labels = list(dict.fromkeys(per_s["label"]))[:REPLAY_ROWS]
    axes = fig.subplots(
        len(labels),
        2,
        squeeze=False,
        gridspec_kw={"left": 0.1, "right": 0.97, "top": 0.88, "bottom": 0.22, "hspace": 0.6},
    )
    for (ax_cpu, ax_p95), label in zip(axes, labels, strict=False):
        g = per_s[per_s["label"] == label]
        c = colors.get(label, "k")
        for ax, col, unit in ((ax_cpu, "cpu_pct", "CPU %"), (ax_p95, "p95_ms", "ack p95 ms")):
            ax.plot(g["second"], g[f"{col}_measured"], "-", color=c, lw=1.0, label="measured")
            ax.plot(g["second"], g[f"{col}_replayed"], "--", color="k", lw=0.8, label="replayed")
            ax.set_title(f"{label}: {unit}", fontsize=7.5)
            ax.tick_params(labelsize=6.5)
        _log_ms(ax_p95)
        ax_cpu.legend(fontsize=6, frameon=False, loc="upper left")
    axes[-1][0].set_xlabel("second of the run", fontsize=7)
    axes[-1][1].set_xlabel("second of the run", fontsize=7)
    lines = [
        "Each configuration's first measured run driven through the model with its own sends, connection attempts "
        "and closes (caplab simulate --replay), so the model's mechanisms are judged without workload-generation "
        "noise. Median |error| over the steps' counted windows:"
    ]
    for label in labels:
        st = per_step[per_step["label"] == label] if "label" in per_step else per_step.iloc[0:0]
        err = {m: _median_abs(st[f"{m}_error_pct"]) if len(st) else math.nan for m in ("cpu_pct", "p50_ms", "p95_ms")}
        which = runs.get(label, {})
        lines.append(
            f"{label}: CPU {fmt(err['cpu_pct'], '{:.0f}')} %, ack p50 {fmt(err['p50_ms'], '{:.0f}')} %, ack p95 "
            f"{fmt(err['p95_ms'], '{:.0f}')} % [{short_id(which.get('measured', '?'))} replayed as "
            f"{short_id(which.get('replayed', '?'))}]"
        )
    _text(fig, 0.17, lines, size=7)
    pdf.savefig(fig)
    plt.close(fig)


def manifests_page(pdf: PdfPages, out: Mapping[str, Any]) -> None:
    """Every run a number came from: measured runs with their checks, then the simulated ones by purpose."""
    summary, record, model = out["summary"], out["record"], out["model"]
    lines: list[tuple[str, bool]] = []  # (text, is a heading)
    if summary:
        lines.append(("Measured runs", True))
    for _label, s in summary.items():
        m = s.manifest
        toggles = m.server.toggles if m.server else {}
        on = ", ".join(k for k, v in toggles.items() if v) or "none"
        lines.append(
            (
                f"{m.run_id}: {m.source}, {m.status}, label {m.label}, profile {m.profile}, nodes {m.nodes}, "
                f"started {m.started_at}; toggles on: {on}",
                False,
            )
        )
        for c in s.checks:
            lines.append((f"    check {'ok' if c['ok'] else 'FAILED'}: {c['check']}: {c['detail']}", False))
    listed: set[str] = set()
    caps = model.get("capacity") or {}
    if any(c.get("ramp_runs") for c in caps.values()):
        lines.append(("Simulated ramps behind the node counts (one node, one ramp per replication)", True))
    for label, cap in caps.items():
        ramps = [str(x) for x in cap.get("ramp_runs", [])]
        if ramps:
            lines.append((f"{label}: {', '.join(ramps)}", False))
            listed.update(ramps)
    capacity = out["capacity"]
    if not capacity.empty:
        lines.append(("Simulated runs behind the capacity table (per profile and target)", True))
    for r in capacity.to_dict("records") if not capacity.empty else []:
        ids = run_ids(r.get("run_ids"))
        lines.append((f"{r['label']} at {thousands(r['connections'])} connections: {', '.join(ids)}", False))
        listed.update(ids)
    rest = [Path(s).name for s in record.get("simulated", []) if Path(s).name not in listed]
    if rest:
        lines.append((f"Other simulated runs (validation, sweep): {len(rest)}", True))
        lines.append((", ".join(rest), False))
    if not out["sweep"].empty and "run_ids" not in out["sweep"]:
        lines.append(("This folder's sweep.csv names no runs: its rows cannot be traced to run folders.", True))
    fig = _page("Runs used")
    y = 0.93
    for text, heading in lines:
        if y < 0.05:
            pdf.savefig(fig)
            plt.close(fig)
            fig = _page("Runs used (continued)")
            y = 0.93
        y = _text(fig, y - 0.006, [text], size=8.5, weight="bold") if heading else _text(fig, y, [text], size=6.8)
    pdf.savefig(fig)
    plt.close(fig)
