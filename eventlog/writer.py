"""Append rows to a run in Parquet parts; each part is written whole, then renamed into place."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .schema import KIND_INDEX, KINDS, SCHEMA

Column = np.ndarray | list[Any]  # one column of rows, as numpy array or list

NAN = math.nan
_KIND_DICT = pa.array(KINDS, pa.string())


class EventWriter:
    """One writer's rows. Several writers (processes) may write the same run at once.

    A crash loses at most the rows not yet flushed; a part on disk is always complete
    (written to a temporary name, then renamed).
    """

    def __init__(
        self,
        run_dir: Path | str,
        writer: str,
        t0: float | None = None,
        flush_rows: int = 500_000,
        flush_s: float = 1.0,
        background: bool = False,
    ) -> None:
        """``background``: build and write parts on a thread (an event loop's caller must not stall
        on compression and file I/O); parts keep their order and are still renamed into place whole."""
        self.dir = Path(run_dir) / "events"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.writer = writer
        self.t0 = time.monotonic() if t0 is None else t0
        self.flush_rows = flush_rows
        self.flush_s = flush_s
        self.seq = 0
        self.rows = 0
        self.last_flush = time.monotonic()
        self.names: dict[str, int] = {}
        self.pool = ThreadPoolExecutor(1, thread_name_prefix=f"eventlog-{writer}") if background else None
        self.pending: list[Future] = []
        self._clear()

    def _clear(self) -> None:
        self.t: list[float] = []
        self.kind: list[int] = []
        self.conn: list[int] = []
        self.node: list[int] = []
        self.name: list[int] = []
        self.latency: list[float] = []
        self.nbytes: list[int] = []
        self.value: list[float] = []

    def now(self) -> float:
        return time.monotonic() - self.t0

    def row(
        self,
        kind: str,
        t: float,
        conn: int = -1,
        node: int = -1,
        name: str = "",
        latency_s: float = NAN,
        nbytes: int = 0,
        value: float = NAN,
    ) -> None:
        idx = self.names.get(name)
        if idx is None:
            idx = self.names[name] = len(self.names)
        self.t.append(t)
        self.kind.append(KIND_INDEX[kind])
        self.conn.append(conn)
        self.node.append(node)
        self.name.append(idx)
        self.latency.append(latency_s)
        self.nbytes.append(nbytes)
        self.value.append(value)
        if len(self.t) >= self.flush_rows:
            self.flush()

    def columns(
        self,
        t: Column,
        kind: Column,
        conn: Column,
        node: Column,
        name: Column,
        latency_s: Column,
        nbytes: Column,
        value: Column,
        names: list[str],
    ) -> None:
        """Append whole columns at once (numpy arrays; ``kind`` as KIND_INDEX codes, ``name`` as codes
        into ``names``). The fast path for simulated runs."""
        self.flush()
        self._write_table(self._table((t, kind, conn, node, name, latency_s, nbytes, value), names))

    def maybe_flush(self) -> None:
        if self.t and time.monotonic() - self.last_flush >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        if not self.t:
            self.last_flush = time.monotonic()
            return
        names: list[str | None] = [None] * len(self.names)
        for n, i in self.names.items():
            names[i] = n
        cols = (self.t, self.kind, self.conn, self.node, self.name, self.latency, self.nbytes, self.value)
        self._clear()
        if self.pool is None:
            self._write_table(self._table(cols, names))
            return
        seq, self.seq = self.seq, self.seq + 1
        self.rows += len(cols[0])
        self.last_flush = time.monotonic()
        self.pending = [f for f in self.pending if not f.done() or f.result() is not None]
        self.pending.append(self.pool.submit(self._write_part, self._table, cols, names, seq))

    def _table(self, cols: Sequence[Column], names: Sequence[str | None]) -> pa.Table:
        """The columns in schema order (t, kind, conn, node, name, latency_s, bytes, value) as a table."""
        t, kind, conn, node, name, latency_s, nbytes, value = cols
        kind_arr = pa.DictionaryArray.from_arrays(pa.array(np.asarray(kind, np.int8)), _KIND_DICT)
        name_arr = pa.DictionaryArray.from_arrays(pa.array(np.asarray(name, np.int32)), pa.array(names, pa.string()))
        return pa.Table.from_arrays(
            [
                pa.array(np.asarray(t, np.float64)),
                kind_arr,
                pa.array(np.asarray(conn, np.int32)),
                pa.array(np.asarray(node, np.int16)),
                name_arr,
                pa.array(np.asarray(latency_s, np.float64)),
                pa.array(np.asarray(nbytes, np.int32)),
                pa.array(np.asarray(value, np.float64)),
            ],
            schema=SCHEMA,
        )

    def _write_part(self, build: Callable[..., pa.Table], cols: tuple, names: Sequence[str | None], seq: int) -> None:
        table = build(cols, names)
        path = self.dir / f"part-{self.writer}-{seq:06d}.parquet"
        tmp = path.with_suffix(".tmp")
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)

    def _write_table(self, table: pa.Table) -> None:
        self._write_part(lambda *_: table, (), [], self.seq)
        self.seq += 1
        self.rows += table.num_rows
        self.last_flush = time.monotonic()

    def close(self) -> None:
        """Flush, and with a background writer wait for every part (raising a write's error)."""
        self.flush()
        if self.pool is not None:
            for f in self.pending:
                f.result()
            self.pool.shutdown(wait=True)
            self.pending = []

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
