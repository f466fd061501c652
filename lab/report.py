"""The PDF capacity report: every figure a projection of the runs listed in ``runs.json``."""

from __future__ import annotations

import json
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from eventlog import SLO, WARMUP_RULE, Run, timeseries
from model.parameters import Calibration

from .results import Summary, before_after, load_outputs
from .tables import fmt

A4 = (8.27, 11.69)


def _page(title: str) -> plt.Figure:
    fig = plt.figure(figsize=A4)
    fig.text(0.06, 0.965, title, fontsize=15, weight="bold", va="top")
    return fig


def _text(fig: Figure, y: float, lines: list[str], size: float = 9.0, width: int = 100) -> float:
    for line in lines:
        for part in textwrap.wrap(line, width) or [""]:
            fig.text(0.06, y, part, fontsize=size, va="top", family="DejaVu Sans")
            y -= 0.0165 * size / 9
    return y


def _table(
    fig: Figure, rect: tuple[float, float, float, float] | list[float], df: pd.DataFrame, size: float = 7.0
) -> None:
    ax = fig.add_axes((rect[0], rect[1], rect[2], rect[3]))
    ax.axis("off")
    if df.empty:
        return
    cells = [[fmt(v) for v in row] for row in df.itertuples(index=False)]
    t = ax.table(cellText=cells, colLabels=list(df.columns), loc="upper left", cellLoc="left")
    t.auto_set_font_size(False)
    t.set_fontsize(size)
    t.scale(1, 1.25)


def build_report(out_dir: Path | str, pdf_path: Path | str | None = None) -> Path:
    """Write ``<out_dir>/report.pdf`` (or ``pdf_path``) from the scenario outputs in ``out_dir``."""
    out_dir = Path(out_dir)
    out = load_outputs(out_dir)
    record, model, summary = out["record"], out["model"], out["summary"]
    labels = list(summary)
    capacity, validation = out["capacity"], out["validation"]
    pdf_path = Path(pdf_path) if pdf_path else out_dir / "report.pdf"
    with PdfPages(pdf_path) as pdf:
        summary_page(pdf, record, model, summary, labels)
        if len(labels) >= 2:
            before_after_page(pdf, summary, labels)
        if summary or not capacity.empty:
            latency_page(pdf, summary, capacity)
        if summary:
            resources_page(pdf, [s.run for s in summary.values()])
        if len(labels) > 2:
            ablation_page(pdf, summary, labels)
        if model:
            model_page(pdf, model, validation)
        manifests_page(pdf, summary, record)
    return pdf_path


def summary_page(pdf: PdfPages, record: dict, model: dict, summary: Summary, labels: list[str]) -> None:
    fig = _page(f"Capacity report: {record['scenario']}")
    first = next(iter(summary.values()), None)
    manifest = first.manifest if first else None
    scen = manifest.scenario if manifest else {}
    slo = SLO.from_manifest(manifest) if manifest else SLO()
    m = manifest.machine if manifest else {}
    lines = [
        f"Question: {scen.get('question', '(see scenario file)')}",
        f"SLO: p95 <= {slo.p95_ms:g} ms, errors <= {slo.error_rate_pct:g} %. Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        f"Machine: {m.get('cores', '?')} cores, {fmt((m.get('memory_bytes') or 0) / 2**30, '{:.0f}')} GiB, "
        f"{m.get('cpu_model', '?')}.",
        "",
        "Measured capacity of one node (step ramp; the last step of the leading run that held the SLO):",
    ]
    for label, s in summary.items():
        row = s.row
        bound = ">= " if row["max_stable_is_lower_bound"] else ""
        lines.append(
            f"  - {label} [{s.run_id}]: {bound}{row['max_stable_connections']} connections, "
            f"max {fmt(row['max_stable_throughput_eps'], '{:.0f}')} acked events/s within the SLO"
        )
    for label, cap in (model.get("capacity") or {}).items():
        nodes = ", ".join(f"{n}: {k}" for n, k in cap["nodes_needed_n_plus_1"].items())
        lines += [
            "",
            f"Simulated ({label}, calibrated model): one node holds {cap['connections_per_node']} connections "
            f"at {cap['events_per_connection']:.2f} events/s each (least of its simulated ramps: "
            f"{cap.get('connections_per_node_each_replication', [cap['connections_per_node']])}); "
            f"nodes needed with N+1 headroom -> {nodes}.",
        ]
    if len(labels) >= 2:
        _, claims = before_after(summary, labels[0], labels[-1])
        lines += ["", *claim_lines(claims, labels[0], labels[-1])]
    lines += [
        "",
        f"Warm-up rule: {WARMUP_RULE}. Percentiles: nearest rank over every sample.",
        "Every number names its run id; the run folders hold the manifests and event logs.",
    ]
    _text(fig, 0.92, lines)
    pdf.savefig(fig)
    plt.close(fig)


def claim_lines(claims: pd.DataFrame, before: str, after: str, why: bool = False) -> list[str]:
    """The seed claims as lines, each with its two-part verdict (bound, improvement) from check_claims."""
    lines = [
        f"Seed guide claims ({before} -> {after}), judged at this scenario's load. A claim has two parts: "
        "the bound (the after value within the claimed after value) and the improvement (the measured change "
        "in the claimed direction, at least the claimed size).",
    ]
    for c in claims.itertuples():
        lines.append(
            f"  - {c.claim}: measured {fmt(c.measured_before)} -> {fmt(c.measured_after)}: {c.verdict}"
            + (f" ({c.why})" if why else "")
        )
    return lines


def before_after_page(pdf: PdfPages, summary: Summary, labels: list[str]) -> None:
    fig = _page(f"Before and after: {labels[0]} vs {labels[-1]}")
    table, claims = before_after(summary, labels[0], labels[-1])
    _text(fig, 0.93, [f"runs: {summary[labels[0]].run_id} -> {summary[labels[-1]].run_id}"])
    _table(
        fig, [0.06, 0.55, 0.88, 0.35], table.drop(columns=["key"]).rename(columns={"improvement_pct": "improvement %"})
    )
    _text(fig, 0.5, claim_lines(claims, labels[0], labels[-1], why=True), size=8, width=110)
    pdf.savefig(fig)
    plt.close(fig)


def latency_page(pdf: PdfPages, summary: Summary, capacity: pd.DataFrame) -> None:
    fig = _page("Latency against connections and against event rate")
    ax1 = fig.add_axes((0.1, 0.55, 0.82, 0.35))
    ax2 = fig.add_axes((0.1, 0.1, 0.82, 0.35))
    for label, s in summary.items():
        st = s.steps
        ax1.plot(st["target"], st["p95_ms"], "o", label=f"{label} measured p95 [{s.run_id[-6:]}]")
        ax2.plot(st["sends_per_s"], st["p95_ms"], "o-", label=f"{label} measured")
    for label, g in capacity.groupby("label") if not capacity.empty else []:
        g = g.sort_values("connections")
        ax1.plot(g["connections"], g["p95_ms"], "-", label=f"{label} simulated p95")
        ax1.fill_between(
            g["connections"], g["p95_ms"] - g["p95_ms_ci"].fillna(0), g["p95_ms"] + g["p95_ms_ci"].fillna(0), alpha=0.25
        )
    for ax, xl in ((ax1, "connections"), (ax2, "offered events/s")):
        ax.set_xlabel(xl)
        ax.set_ylabel("p95 latency (ms)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    pdf.savefig(fig)
    plt.close(fig)


def resources_page(pdf: PdfPages, runs: list[Run]) -> None:
    fig = _page("CPU, memory and event-loop lag (measured, per second)")
    axes = [fig.add_axes((0.1, y, 0.82, 0.24)) for y in (0.64, 0.36, 0.08)]
    for run in runs:
        ts = timeseries(run.events)
        label = f"{run.manifest.label} [{run.run_id[-6:]}]"
        for ax, col in zip(axes, ("cpu_pct", "rss_mb", "loop_lag_ms"), strict=True):
            if col in ts:
                ax.plot(ts.index, ts[col], label=label, lw=1)
    for ax, yl in zip(axes, ("server CPU % of one core", "RSS (MB)", "loop lag max (ms)"), strict=True):
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[-1].set_xlabel("seconds since run start")
    pdf.savefig(fig)
    plt.close(fig)


def ablation_page(pdf: PdfPages, summary: Summary, labels: list[str]) -> None:
    fig = _page(f"Ablation: each variant against {labels[0]}")
    rows = pd.DataFrame(
        [
            {
                "label": k,
                **{
                    m: v.row[m]
                    for m in ("p95_ms", "mean_cpu_pct", "max_stable_throughput_eps", "peak_memory_mb", "error_rate_pct")
                },
                "run": v.run_id,
            }
            for k, v in summary.items()
        ]
    )
    _table(fig, [0.06, 0.62, 0.88, 0.3], rows)
    ax = fig.add_axes((0.1, 0.1, 0.82, 0.45))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, rows["mean_cpu_pct"], 0.4, label="CPU % (last step)")
    ax.bar(x + 0.2, rows["p95_ms"].clip(upper=5000), 0.4, label="p95 ms (clipped at 5 s)")
    ax.set_xticks(x, rows["label"], rotation=30, fontsize=7)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    pdf.savefig(fig)
    plt.close(fig)


def model_page(pdf: PdfPages, model: dict, validation: pd.DataFrame) -> None:
    fig = _page("Model: validation against fixed bands, calibration, assumptions")
    lines = [f"Bands (fixed before fitting): {model.get('bands', '')}"]
    for label, path in (model.get("calibrations") or {}).items():
        try:
            cal = Calibration.load(path)
        except (OSError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
            why = getattr(exc, "strerror", None) or " ".join(str(exc).split())[:200]
            lines.append(f"{label}: calibration file {path} could not be read ({why}); its figures are missing here")
            print(f"caplab report: warning: calibration {path} of {label} could not be read: {why}", file=sys.stderr)
            continue
        lines.append(
            f"{label}: cpu/event {cal.cpu_per_event_s * 1e6:.1f} us, per delivery {cal.cpu_per_delivery_s * 1e6:.2f} us, "
            f"per packet {cal.cpu_per_packet_s * 1e6:.2f} us, per connect {cal.cpu_per_connect_s * 1e3:.2f} ms, "
            f"memory {cal.memory_base_bytes / 1e6:.0f} MB + {cal.memory_per_connection_bytes / 1e3:.1f} KB/conn, "
            f"GC {cal.gc.collections_per_event:.2e}/event ({cal.gc.dist}, KS p {fmt(cal.gc.ks_pvalue)}), "
            f"CPU fit R2 {fmt(cal.fit.get('cpu', {}).get('r2'))}; runs {', '.join(cal.source_runs)}"
        )
        lines += [f"  assumption: {a}" for a in cal.assumptions]
    for label, u in (model.get("usl") or {}).items():
        if "sigma" in u:
            lines.append(
                f"USL cross-check {label}: sigma {u['sigma']:.3g}, kappa {u['kappa']:.3g}, "
                f"peak at {u['peak_load']:.0f} connections, R2 {u['r2']:.3f}"
            )
    y = _text(fig, 0.93, lines, size=7.5, width=125)
    if not validation.empty:
        v = validation[validation["verdict"] != "n/a (saturated)"]
        summary = (
            v.groupby(["label", "metric"])
            .agg(
                n=("verdict", "size"),
                within=("verdict", lambda s: int((s == "within band").sum())),
                median_abs_error_pct=("error_pct", lambda e: float(np.nanmedian(np.abs(e)))),
            )
            .reset_index()
        )
        _text(fig, y - 0.01, ["Validation (held-out steps included; per label and metric):"], size=8)
        _table(fig, [0.06, 0.05, 0.88, max(0.1, y - 0.1)], summary, size=7)
    pdf.savefig(fig)
    plt.close(fig)


def manifests_page(pdf: PdfPages, summary: Summary, record: dict) -> None:
    fig = _page("Runs used")
    lines = []
    for _label, s in summary.items():
        m = s.manifest
        lines.append(
            f"{m.run_id}: {m.source}, {m.status}, profile {m.profile}, nodes {m.nodes}, "
            f"toggles {json.dumps(m.server.toggles if m.server else {})}, started {m.started_at}"
        )
        for c in s.checks:
            lines.append(f"    check: {'ok' if c['ok'] else 'FAILED'}: {c['check']}: {c['detail']}")
    sims = record.get("simulated", [])
    if sims:
        lines.append(
            f"Simulated runs ({len(sims)}): {', '.join(Path(s).name for s in sims[:40])}"
            + (" ..." if len(sims) > 40 else "")
        )
    _text(fig, 0.93, lines, size=7, width=130)
    pdf.savefig(fig)
    plt.close(fig)
