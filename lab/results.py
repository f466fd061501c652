"""Turn runs into the lab's tables (benchmark rows, steps, before/after, claims) and write them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from eventlog import SLO, Manifest, Run, benchmark_row, check_claims, compare, read_run, step_table
from eventlog.capacity import NodeCapacity, NodesAnswer
from eventlog.checks import SelfCheck, self_checks
from eventlog.projections import BenchmarkRow

from .tables import markdown


@dataclass
class RunSummary:
    """One run as the tables, notebooks and report see it."""

    run: Run
    row: BenchmarkRow
    steps: pd.DataFrame  # step_table: one row per load step, and whether it held
    checks: list[SelfCheck]  # measured runs only

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def manifest(self) -> Manifest:
        return self.run.manifest


Summary = dict[str, RunSummary]  # by label


def summarize(run_dirs: list[Path], steady_step: int | None = None) -> Summary:
    """Benchmark row, step table and self-checks of each run, keyed by its label. The steady step is
    ``steady_step``, else the scenario's ``workload.steady_step``, else the last step."""
    out: Summary = {}
    for d in run_dirs:
        run = read_run(d)
        slo = SLO.from_manifest(run.manifest)
        if steady_step is None:
            steady_step = (run.manifest.scenario.get("workload") or {}).get("steady_step")
        run.manifest.steady_step = steady_step
        label = run.manifest.label or run.manifest.run_id
        out[label] = RunSummary(
            run=run,
            row=benchmark_row(run, run.manifest, slo, steady_step),
            steps=step_table(run, slo),
            checks=self_checks(run, run.manifest) if run.manifest.source == "measured" else [],
        )
    return out


def before_after(summary: Summary, before: str, after: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    b, a = summary[before].row, summary[after].row
    tested = int(summary[after].steps["target"].max()) if len(summary[after].steps) else None
    return compare(b, a), check_claims(b, a, tested_connections=tested)


def write_tables(summary: Summary, out_dir: Path, before: str | None = None) -> dict[str, Path]:
    """rows.csv, steps.csv, checks.json, and for every other label vs ``before``: table and claims files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = list(summary)
    files = {}
    rows = pd.DataFrame([{"label": k, **v.row} for k, v in summary.items()])
    rows.to_csv(out_dir / "rows.csv", index=False)
    files["rows"] = out_dir / "rows.csv"
    steps = pd.concat([v.steps.assign(label=k, run_id=v.run_id) for k, v in summary.items()], ignore_index=True)
    steps.to_csv(out_dir / "steps.csv", index=False)
    files["steps"] = out_dir / "steps.csv"
    (out_dir / "checks.json").write_text(json.dumps({k: v.checks for k, v in summary.items()}, indent=2))
    before = before or labels[0]
    md = []
    for label in labels:
        if label == before:
            continue
        table, claims = before_after(summary, before, label)
        stem = f"{before}-vs-{label}"
        table.to_csv(out_dir / f"{stem}.csv", index=False)
        claims.to_csv(out_dir / f"claims-{stem}.csv", index=False)
        md += [
            f"## {before} vs {label}",
            "",
            f"runs: {summary[before].run_id} -> {summary[label].run_id}",
            "",
            markdown(table.drop(columns=["key"]), "{:.4g}"),
            "",
            "### Seed claims",
            "",
            markdown(
                claims[["claim", "measured_before", "measured_after", "measured_improvement_pct", "verdict", "why"]],
                "{:.4g}",
            ),
            "",
        ]
        files[stem] = out_dir / f"{stem}.csv"
    md += [
        "## Steps",
        "",
        markdown(
            steps[
                [
                    "label",
                    "target",
                    "reached",
                    "sends_per_s",
                    "throughput_eps",
                    "p50_ms",
                    "p95_ms",
                    "p99_ms",
                    "ack_p95_ms",
                    "push_p95_ms",
                    "error_rate",
                    "send_lag_p99_ms",
                    "held",
                ]
            ],
            "{:.4g}",
        ),
        "",
    ]
    (out_dir / "tables.md").write_text("\n".join(md))
    files["markdown"] = out_dir / "tables.md"
    return files


def resolve_run(out_dir: Path, path: str) -> Path:
    """A run path from runs.json: as written, else relative to the output folder (moved datasets)."""
    p = Path(path)
    if (p / "manifest.json").exists():
        return p
    for candidate in (out_dir / p, out_dir / "runs" / p.name):
        if (candidate / "manifest.json").exists():
            return candidate
    raise FileNotFoundError(f"run {path} of {out_dir}/runs.json not found")


def load_outputs(out_dir: Path | str) -> dict:
    """Everything a scenario wrote, for notebooks and the report: summaries recomputed from the logs."""
    out_dir = Path(out_dir)
    record = json.loads((out_dir / "runs.json").read_text())
    measured = [resolve_run(out_dir, p) for p in record.get("measured", [])]

    def csv(name: str) -> pd.DataFrame:
        return pd.read_csv(out_dir / name) if (out_dir / name).exists() else pd.DataFrame()

    summary = summarize(measured, record.get("steady_step")) if measured else {}
    model = json.loads((out_dir / "model.json").read_text()) if (out_dir / "model.json").exists() else {}
    for label, path in (model.get("calibrations") or {}).items():
        p = Path(path)
        model["calibrations"][label] = str(out_dir / p.name if (out_dir / p.name).exists() else p)  # the folder's own
    return {
        "record": record,
        "measured": measured,
        "summary": summary,
        "runs": {k: v.run for k, v in summary.items()},
        "capacity": csv("capacity.csv"),
        "validation": csv("validation.csv"),
        "replay": csv("replay.csv"),
        "replay_steps": csv("replay-steps.csv"),
        "sweep": csv("sweep.csv"),
        "model": model,
    }


def capacity_answers(out: dict) -> dict[str, tuple[NodeCapacity, dict[int, NodesAnswer]]]:
    """Each model's node capacity and the nodes each simulated target needs (eventlog.capacity), from
    load_outputs' model.json: the one answer the report, notebooks and CLI print. A model.json written
    before node limits were recorded takes the limit from the label's calibration file."""
    from model.parameters import Calibration

    answers = {}
    model = out.get("model") or {}
    for label, rec in (model.get("capacity") or {}).items():
        if "node_limit" not in rec and label in (model.get("calibrations") or {}):
            cal = Calibration.load(model["calibrations"][label])
            rec = {**rec, "node_limit": cal.max_connections if cal.conn_limits else None}
        cap = NodeCapacity.from_record(rec)
        targets = [int(n) for n in (rec.get("nodes") or rec.get("nodes_needed_n_plus_1") or {})]
        recs = rec.get("nodes") or {}
        answers[label] = (
            cap,
            {  # checked on the simulated deployment when the record says so, else the ramps scaled
                n: NodesAnswer.from_record(n, recs[str(n)])
                if recs.get(str(n), {}).get("basis") == "deployment"
                else cap.answer(n)
                for n in targets
            },
        )
    return answers
