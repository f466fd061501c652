"""Read a run: its manifest and every complete part, merged and sorted by time."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .manifest import Manifest, read_manifest, run_status
from .schema import SCHEMA


class SkippedPartWarning(UserWarning):
    """A part file was left out of the run; the message names the file and why."""


class TornPartWarning(SkippedPartWarning):
    """A part file that could not be read (a writer died while writing it, or it was cut) was skipped."""


class ForeignPartWarning(SkippedPartWarning):
    """A part whose columns are not the schema's was skipped (a stray file, another tool or version).

    Skipped rather than refusing the run: every writer writes whole parts of exactly ``SCHEMA``, so a
    part with other columns was not written by this run's writers, and one stray file must not make
    the others unreadable; the warning names the file and the columns so it is never silent.
    """


@dataclass
class Run:
    path: Path
    manifest: Manifest
    events: pd.DataFrame

    @property
    def run_id(self) -> str:
        return self.manifest.run_id

    @property
    def status(self) -> str:
        """The status to report: a 'running' run with no live writer is 'aborted' (``run_status``)."""
        return run_status(self.manifest)[0]


def schema_mismatch(schema: pa.Schema) -> str | None:
    """How a part's schema differs from ``SCHEMA`` (None if it does not)."""
    extra = [n for n in schema.names if n not in SCHEMA.names]
    missing = [n for n in SCHEMA.names if n not in schema.names]
    if extra or missing:
        parts = []
        if extra:
            parts.append(f"column(s) {', '.join(map(repr, extra))} not in the schema")
        if missing:
            parts.append(f"no column(s) {', '.join(map(repr, missing))}")
        return "; ".join(parts)
    wrong = [
        f"{f.name!r} is {f.type}, expected {SCHEMA.field(f.name).type}"
        for f in schema
        if f.type != SCHEMA.field(f.name).type
    ]
    return "; ".join(wrong) or None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def read_table(run_dir: Path | str) -> pa.Table:
    """All readable parts as one Arrow table (unsorted). Torn parts (``TornPartWarning``) and parts
    whose columns are not the schema's (``ForeignPartWarning``) are skipped with a warning."""
    tables = []
    for part in sorted((Path(run_dir) / "events").glob("part-*.parquet")):
        try:
            mismatch = schema_mismatch(pq.read_schema(part))
            if mismatch is None:
                tables.append(pq.read_table(part, schema=SCHEMA))
        except (pa.ArrowException, OSError) as exc:
            warnings.warn(f"skipped torn part {part.name}: {_one_line(exc)}", TornPartWarning, stacklevel=2)
            continue
        if mismatch is not None:
            warnings.warn(f"skipped part {part.name}: {mismatch}", ForeignPartWarning, stacklevel=2)
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
