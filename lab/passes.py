"""Validation over repeated passes (issue 11): the runs of one configuration measured several times.

A scenario lists each pass as a server of its own, labelled ``NAME.K`` (``scenarios/validation.yaml``
interleaves them, so slow drifts of the machine spread over every configuration). Here the passes
of ``NAME`` are pooled: one calibration fitted on the design half of every pass, then the held-out
steps validated against the passes' mean with their spread (``model.validate``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from eventlog import SLO, Run, read_run
from model.calibrate import calibrate
from model.validate import validate


def group_of(label: str) -> str:
    """``optimized.2`` -> ``optimized``; a label without a pass number is its own group."""
    head, _, tail = label.rpartition(".")
    return head if head and tail.isdigit() else label


def pass_groups(runs: list[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(group_of(run.manifest.label or run.run_id), []).append(run)
    return groups


def validate_passes(
    measured: list[Path], runs_root: Path, out_dir: Path, slo: SLO, replications: int = 3, seed: int = 1
) -> pd.DataFrame:
    """Per configuration: fit on the first half of the steps of all its passes, validate every step
    against the passes' mean; writes ``validation-passes.csv`` and ``calibration-NAME.json``."""
    from .modelling import fit_window, truncated

    tables = []
    for name, runs in pass_groups([read_run(p) for p in measured]).items():
        t_end, fit_steps = fit_window(runs[0])
        cal = calibrate([truncated(r, t_end) for r in runs])
        cal.save(out_dir / f"calibration-{name}.json")
        v = validate(cal, runs, runs_root, slo, replications=replications, seed=seed)
        v.insert(0, "label", name)
        v["held_out"] = ~v["step"].isin(fit_steps)
        v["fit_warnings"] = "; ".join(cal.fit_warnings())
        tables.append(v)
    out = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    out.to_csv(out_dir / "validation-passes.csv", index=False)
    return out
