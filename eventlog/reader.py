"""Read a run: its manifest and every complete part, merged and sorted by time."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .manifest import read_manifest
from .schema import SCHEMA


class TornPartWarning(UserWarning):
    """A part file that could not be read (a writer died while writing it) was skipped."""


@dataclass
class Run:
    path: Path
    manifest: dict
    events: pd.DataFrame

    @property
    def run_id(self) -> str:
        return self.manifest["run_id"]


def read_table(run_dir: Path | str) -> pa.Table:
    """All readable parts as one Arrow table (unsorted); torn parts are skipped with a warning."""
    tables = []
    for part in sorted((Path(run_dir) / "events").glob("part-*.parquet")):
        try:
            tables.append(pq.read_table(part, schema=SCHEMA))
        except (pa.ArrowInvalid, OSError) as exc:
            warnings.warn(f"skipped torn part {part.name}: {exc}", TornPartWarning, stacklevel=2)
    if not tables:
        return SCHEMA.empty_table()
    return pa.concat_tables(tables).unify_dictionaries()


def read_events(run_dir: Path | str) -> pd.DataFrame:
    df = read_table(run_dir).to_pandas()
    for col in ("kind", "name"):
        if not isinstance(df[col].dtype, pd.CategoricalDtype):
            df[col] = df[col].astype("category")
    return df.sort_values("t", kind="stable", ignore_index=True)


def read_run(run_dir: Path | str) -> Run:
    """Manifest and events of a run, whatever its status (running, complete or aborted)."""
    run_dir = Path(run_dir)
    return Run(run_dir, read_manifest(run_dir), read_events(run_dir))
