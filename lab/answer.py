"""The report's first page as data: the capacity table, the confidence line and the one-sentence answer.

Nothing here computes capacity: node counts and their texts come from ``eventlog.capacity`` (through
model.json), latency, CPU and memory from the simulated runs' ``capacity.csv``, confidence from
``validation.csv``. The report renders these; a notebook or the CLI can print them.
"""

from __future__ import annotations

import ast
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from eventlog import SLO
from eventlog.capacity import NodeCapacity, NodesAnswer

from .passes import group_of
from .results import Summary, capacity_answers

# How a validation verdict counts: held (the band, or the measured value's own noise), missed, or not tested.
HELD = ("within band", "within measurement noise")
NOT_TESTED = ("n/a (saturated)", "n/a (generator-bound)", "not measurable")
METRIC_NAMES = {
    "p95_ms": "p95",
    "cpu_pct": "CPU",
    "throughput_eps": "throughput",
    "memory_mb": "memory",
    "saturation_eps": "saturation rate",
}
# Metrics the node counts rest on: a node's capacity is where p95 crosses the SLO, driven by CPU.
CRITICAL = ("p95_ms", "cpu_pct")
CONFIDENCE_RULE = (
    "LOW when, on held-out steps, the model missed the p95 or CPU band for a profile (the node counts rest "
    "on both) or a profile has no validation; MEDIUM when every band held but an answer lies outside the "
    "validated envelope; HIGH otherwise"
)


def thousands(n: float) -> str:
    """10000 -> '10 000' (the question's own spelling)."""
    return f"{n:,.0f}".replace(",", " ")


def _fixed(x: float, decimals: int) -> str:
    return f"{round(x, decimals):.{decimals}f}" if decimals > 0 else thousands(round(x, decimals))


def _magnitude(x: float) -> int:
    return math.floor(math.log10(abs(x))) if x else 0


def sig(x: float | None, digits: int = 3) -> str:
    """``x`` to ``digits`` significant digits, never in exponent form: 35538 -> '35 500', 0.10259 -> '0.103'."""
    if x is None or math.isnan(x):
        return "n/a"
    return _fixed(x, digits - 1 - _magnitude(x))


def plus_minus(mean: float | None, half: float | None, unit: str = "") -> str:
    """A mean and its 95 % CI half-width, to the CI's second significant digit (at most the mean's third):
    '160 ± 150', '5.56 ± 0.10', '35 500 ± 3 500'."""
    if mean is None or math.isnan(mean):
        return "n/a"
    if half is None or math.isnan(half) or half <= 0:
        text = sig(mean)
    else:
        decimals = min(1 - _magnitude(half), 2 - _magnitude(mean))
        text = f"{_fixed(mean, decimals)} ± {_fixed(half, decimals)}"
    return f"{text} {unit}".rstrip()


def short_id(run_id: str) -> str:
    """The random tail of a run id (the 'Runs used' page lists the full ids)."""
    return str(run_id).rsplit("-", 1)[-1]


def run_ids(cell: Any) -> list[str]:
    """capacity.csv's run_ids cell: a list, or its text as pandas wrote it."""
    if isinstance(cell, list | tuple):
        return [str(x) for x in cell]
    if isinstance(cell, str) and cell.startswith("["):
        return [str(x) for x in ast.literal_eval(cell)]
    return [] if cell is None or (isinstance(cell, float) and math.isnan(cell)) else [str(cell)]


@dataclass(frozen=True)
class Envelope:
    """What the measured runs covered, per node: predictions beyond it are extrapolations."""

    connections_per_node: float
    events_per_s_per_node: float

    def covers(self, connections_per_node: float, events_per_s_per_node: float) -> bool:
        return (
            connections_per_node <= self.connections_per_node * 1.0001
            and events_per_s_per_node <= self.events_per_s_per_node * 1.0001
        )

    def text(self) -> str:
        return (
            f"measured up to {thousands(self.connections_per_node)} connections and "
            f"{thousands(self.events_per_s_per_node)} events/s per node"
        )


def envelope(summary: Summary) -> Envelope | None:
    """The largest load per node the measured runs tried (every step, every profile)."""
    conns, rates = [], []
    for s in summary.values():
        nodes = max(1, int(s.manifest.nodes or 1))
        if len(s.steps):
            conns.append(float(s.steps["reached"].max()) / nodes)
            rates.append(float(s.steps["sends_per_s"].max()) / nodes)
    return Envelope(max(conns), max(rates)) if conns else None


@dataclass(frozen=True)
class CapacityRow:
    """One profile at one target load: the nodes answer and the simulated figures on those nodes."""

    label: str
    connections: int
    answer: NodesAnswer
    simulated_nodes: int | None  # the nodes the figures were simulated on (the answer less the spare)
    p95: str
    cpu_per_node: str
    memory_per_node: str
    slo: str
    meets_slo: bool | None
    extrapolated: bool
    runs: list[str]


def _row_of(capacity: pd.DataFrame, label: str, n: int) -> Mapping[str, Any] | None:
    if capacity.empty:
        return None
    hit = capacity[(capacity["label"] == label) & (capacity["connections"] == n)]
    return hit.iloc[0].to_dict() if len(hit) else None


def _per_node(row: Mapping[str, Any], metric: str) -> tuple[float, float]:
    if metric + "_per_node" in row:
        return float(row[metric + "_per_node"]), float(row.get(metric + "_per_node_ci", math.nan))
    nodes = float(row.get("nodes") or 1)  # capacity.csv before per-node columns: totals over the nodes
    return float(row[metric]) / nodes, float(row.get(metric + "_ci", math.nan)) / nodes


def slo_verdict(row: Mapping[str, Any], slo: SLO) -> tuple[str, bool]:
    p95, err = float(row["p95_ms"]), float(row["error_rate_pct"])
    meets = bool(row["meets_slo"]) if "meets_slo" in row else (p95 <= slo.p95_ms and err <= slo.error_rate_pct)
    if meets:
        upper = p95 + float(row.get("p95_ms_ci") or 0.0)
        if upper > slo.p95_ms:  # the mean meets it, the replications do not all agree
            return f"meets; CI reaches {sig(upper)} > {slo.p95_ms:g} ms", True
        return "meets", True
    why = []
    if not p95 <= slo.p95_ms:
        why.append(f"p95 {sig(p95)} > {slo.p95_ms:g} ms")
    if not err <= slo.error_rate_pct:
        why.append(f"errors {sig(err, 2)} > {slo.error_rate_pct:g} %")
    if not why:  # the means meet it, not every replication does (the capacity answer's rule)
        why.append(
            f"met in {int(row.get('replications_meeting_slo', 0))} of {int(row.get('replications', 0))} replications"
        )
    return "MISSES (" + ", ".join(why) + ")", False


def node_answers(out: Mapping[str, Any]) -> dict[str, tuple[NodeCapacity, dict[int, NodesAnswer]]]:
    """lab.results.capacity_answers, or none (with a warning) when an old model.json's calibration is unreadable."""
    try:
        return capacity_answers(dict(out))
    except (OSError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        why = " ".join(str(exc).split())[:200]
        print(f"caplab report: warning: no node counts: a calibration could not be read: {why}", file=sys.stderr)
        return {}


def capacity_table(out: Mapping[str, Any], slo: SLO) -> list[CapacityRow]:
    """Profile x target rows: eventlog.capacity's answer, and capacity.csv's simulated p95, CPU and memory."""
    answers = node_answers(out)
    capacity: pd.DataFrame = out.get("capacity", pd.DataFrame())
    env = envelope(out.get("summary") or {})
    rows = []
    for label, (_cap, by_target) in answers.items():
        for n, answer in sorted(by_target.items()):
            r = _row_of(capacity, label, n)
            if r is None:
                rows.append(CapacityRow(label, n, answer, None, "n/a", "n/a", "n/a", "not simulated", None, True, []))
                continue
            nodes = int(r.get("nodes") or 1)
            cpu = _per_node(r, "mean_cpu_pct")
            mem = _per_node(r, "peak_memory_mb")
            verdict, meets = slo_verdict(r, slo)
            rate = float(r.get("events_per_connection") or 0.0)
            extrapolated = env is None or not env.covers(n / nodes, n * rate / nodes)
            rows.append(
                CapacityRow(
                    label=label,
                    connections=n,
                    answer=answer,
                    simulated_nodes=nodes,
                    p95=plus_minus(float(r["p95_ms"]), float(r.get("p95_ms_ci", math.nan))),
                    cpu_per_node=plus_minus(*cpu, unit="%"),
                    memory_per_node=plus_minus(*mem, unit="MB"),
                    slo=verdict,
                    meets_slo=meets,
                    extrapolated=extrapolated,
                    runs=run_ids(r.get("run_ids")),
                )
            )
    return rows


@dataclass(frozen=True)
class BandCount:
    metric: str
    held: int
    tested: int

    def text(self) -> str:
        return f"{METRIC_NAMES.get(self.metric, self.metric)} {self.held} of {self.tested}"


def band_counts(validation: pd.DataFrame, label: str) -> tuple[list[BandCount], bool]:
    """Per metric: held-out (step, metric) cells within their band, of those the band applies to.
    Returns the counts and whether the table marks held-out steps (older tables do not: all steps count)."""
    v = validation[validation["label"] == label] if "label" in validation else validation
    marked = "held_out" in v
    if marked:
        v = v[v["held_out"].astype(bool)]
    counts = []
    for metric in METRIC_NAMES:
        m = v[(v["metric"] == metric) & ~v["verdict"].isin(NOT_TESTED)]
        if len(m):
            counts.append(BandCount(metric, int(m["verdict"].isin(HELD).sum()), len(m)))
    return counts, marked


@dataclass(frozen=True)
class Confidence:
    grade: str  # HIGH | MEDIUM | LOW
    text: str  # the line the report prints, starting 'Confidence: <grade>'


def confidence(
    validation: pd.DataFrame,
    labels: list[str],
    rows: list[CapacityRow],
    env: Envelope | None,
    caps: Mapping[str, NodeCapacity] | None = None,
) -> Confidence:
    """Which validation bands held on held-out steps, per profile, and which answers lie beyond what
    was measured; graded by ``CONFIDENCE_RULE``."""
    parts, low = [], False
    for label in labels:
        counts, marked = band_counts(validation, label) if not validation.empty else ([], False)
        if not counts:
            parts.append(f"{label}: not validated (no held-out steps)")
            low = True
            continue
        missed = [c for c in counts if c.held < c.tested]
        held = [c for c in counts if c.held == c.tested]
        low = low or any(c.metric in CRITICAL for c in missed)
        where = "held-out steps" if marked else "all steps (no held-out marking)"
        text = f"{label} on {where}: "
        text += "missed " + ", ".join(c.text() for c in missed) if missed else "every band held"
        if missed and held:
            text += "; held " + ", ".join(c.text() for c in held)
        parts.append(text)
    beyond = sorted({(r.label, r.connections) for r in rows if r.extrapolated})
    outside = ""
    if rows:
        if env is None:
            outside = "No measured run: every answer is the model's alone."
        elif beyond:
            which = ", ".join(f"{label} at {thousands(n)}" for label, n in beyond)
            outside = f"Outside the validated envelope ({env.text()}), marked *: {which}."
        for label, cap in (caps or {}).items():
            if env is not None and cap.per_node > env.connections_per_node:
                outside += f" {label}'s node capacity ({thousands(cap.per_node)} per node) is itself an extrapolation."
    grade = "LOW" if low else "MEDIUM" if beyond or (rows and env is None) else "HIGH"
    line = f"Confidence: {grade}. " + "; ".join(parts) + ". " + outside
    return Confidence(grade, line.strip())


def answer_sentence(
    rows: list[CapacityRow],
    summary: Summary,
    grade: str | None,
    sweep: Mapping[str, Any] | None = None,
    sweep_rows: pd.DataFrame | None = None,
) -> str:
    """One sentence: the nodes the largest target needs, per profile; else a sweep's fewest nodes meeting
    the SLO; else what one node held when measured."""
    if rows:
        top = max(r.connections for r in rows)
        at = [r for r in rows if r.connections == top]
        each = [f"{r.answer.nodes} nodes ({r.label})" if r.answer.nodes else f"no answer ({r.label})" for r in at]
        listed = ", ".join(each[:-1]) + f" and {each[-1]}" if len(each) > 1 else each[0]
        end = f"; confidence {grade}." if grade else "."
        return f"{thousands(top)} connections need {listed} with one spare (N+1), by the calibrated model{end}"
    if sweep and sweep_rows is not None and not sweep_rows.empty:
        fewest = sweep.get("fewest_nodes_meeting_slo")
        target = thousands(float(sweep_rows["connections"].max())) if "connections" in sweep_rows else "the target"
        changed = sweep.get("changed_settings") or []
        if fewest is None:
            return f"No grid point of the sweep carries {target} connections within the SLO, by the calibrated model."
        return (
            f"{target} connections need {fewest} nodes within the SLO, {sweep.get('with_n_plus_1')} with one "
            f"spare (N+1), by the calibrated model's sweep"
            + (f" (settings changed from the calibrated server: {', '.join(changed)})." if changed else ".")
        )
    if summary:
        held = ", ".join(
            f"{label} {'>= ' if s.row['max_stable_is_lower_bound'] else ''}"
            f"{thousands(s.row['max_stable_connections'])} [{short_id(s.run_id)}]"
            for label, s in summary.items()
        )
        return f"Measured, the most connections held within the SLO: {held}."
    return "No measured or simulated capacity in this output folder."


def slo_of(summary: Summary) -> SLO:
    """The SLO the measured runs were judged by (the first run's), else the default."""
    first = next(iter(summary.values()), None)
    return SLO.from_manifest(first.manifest) if first else SLO()


@dataclass(frozen=True)
class PageOne:
    """What the report's first page says, for a notebook or the CLI to print the same."""

    question: str
    sentence: str
    rows: list[CapacityRow]
    capacities: dict[str, NodeCapacity]
    confidence: Confidence | None  # None when nothing was simulated
    slo: SLO


def page_one(out: Mapping[str, Any]) -> PageOne:
    """The question, the one-sentence answer, the capacity table and the confidence, from load_outputs(out_dir)."""
    record, model, summary = out["record"], out.get("model") or {}, out.get("summary") or {}
    slo = slo_of(summary)
    rows = capacity_table(out, slo)
    caps = {label: cap for label, (cap, _) in node_answers(out).items()}
    conf = None
    if rows:
        labels = list(dict.fromkeys([*caps, *(group_of(label) for label in summary)]))  # passes: one configuration
        conf = confidence(out.get("validation", pd.DataFrame()), labels, rows, envelope(summary), caps)
    first = next(iter(summary.values()), None)
    scen = first.manifest.scenario if first else {}
    question = record.get("question") or scen.get("question") or "(see the scenario file)"
    sentence = answer_sentence(
        rows, summary, conf.grade if conf else None, model.get("sweep"), out.get("sweep", pd.DataFrame())
    )
    return PageOne(" ".join(str(question).split()), sentence, rows, caps, conf, slo)
