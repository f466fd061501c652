"""Read a run: its manifest and its complete parts. ``read_run`` only checks the parts (their footers
and schemas); the rows are read when asked for: ``Run.events`` merges them into one DataFrame sorted
by time, while the projections scan the parts batch by batch (``eventlog.scan``)."""

from __future__ import annotations

import warnings
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


class Run:
    """A run folder: its manifest, its readable parts, and its events on demand.

    ``events`` is the whole log as one DataFrame, read at first use; pass the ``Run`` itself to the
    projections (``benchmark_row(run, run.manifest)``) to have them scan the parts in bounded memory
    instead. A Run built with ``events`` (a DataFrame, e.g. a cut of another run) is projected from
    those rows."""

    def __init__(
        self, path: Path | str, manifest: Manifest, events: pd.DataFrame | None = None, parts: list[Path] | None = None
    ) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self._events = events
        self.parts = readable_parts(self.path) if parts is None and events is None else (parts or [])

    @property
    def events(self) -> pd.DataFrame:
        if self._events is None:
            self._events = _sorted_frame(_read_parts(self.parts))
        return self._events

    @property
    def loaded(self) -> pd.DataFrame | None:
        """The events if they are in memory (given, or read by ``events``), else None."""
        return self._events

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, run_id={self.run_id!r}, parts={len(self.parts)})"

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


def readable_parts(run_dir: Path | str) -> list[Path]:
    """The run's parts in order, checked by their footer and schema (reads no rows). Torn parts
    (``TornPartWarning``) and parts whose columns are not the schema's (``ForeignPartWarning``) are
    left out with a warning."""
    parts = []
    for part in sorted((Path(run_dir) / "events").glob("part-*.parquet")):
        try:
            mismatch = schema_mismatch(pq.read_schema(part))
        except (pa.ArrowException, OSError) as exc:
            warnings.warn(f"skipped torn part {part.name}: {_one_line(exc)}", TornPartWarning, stacklevel=3)
            continue
        if mismatch is not None:
            warnings.warn(f"skipped part {part.name}: {mismatch}", ForeignPartWarning, stacklevel=3)
            continue
        parts.append(part)
    return parts


def _read_parts(parts: list[Path]) -> pa.Table:
    tables = []
    for part in parts:
        try:
            tables.append(pq.read_table(part, schema=SCHEMA))
        except (pa.ArrowException, OSError) as exc:
            warnings.warn(f"skipped torn part {part.name}: {_one_line(exc)}", TornPartWarning, stacklevel=3)
    if not tables:
        return SCHEMA.empty_table()
    return pa.concat_tables(tables).unify_dictionaries()


def read_table(run_dir: Path | str) -> pa.Table:
    """All readable parts as one Arrow table (unsorted); see ``readable_parts`` for what is skipped."""
    return _read_parts(readable_parts(run_dir))


def read_events(run_dir: Path | str) -> pd.DataFrame:
    return _sorted_frame(read_table(run_dir))


def _sorted_frame(table: pa.Table) -> pd.DataFrame:
    df = table.to_pandas()
    for col in ("kind", "name"):
        if not isinstance(df[col].dtype, pd.CategoricalDtype):
            df[col] = df[col].astype("category")
    return df.sort_values("t", kind="stable", ignore_index=True)


def read_run(run_dir: Path | str) -> Run:
    """A run, whatever its status (running, complete or aborted): its manifest and readable parts,
    the events read when first asked for (``Run.events``)."""
    run_dir = Path(run_dir).resolve()  # the rows are read later, maybe from another working folder
    return Run(run_dir, read_manifest(run_dir))
