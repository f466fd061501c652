"""Scan a run's events in Arrow record batches, a few columns at a time: what every projection reads.

Memory grows with the number of load steps, seconds, connections (their connect and disconnect rows)
and sample rows, never with the number of event rows: a run's parts are read row group by row group
(``pyarrow.parquet.ParquetFile.iter_batches``), and a DataFrame or Arrow table in memory is cut into
the same batches, so measured and simulated runs, on disk or in memory, take one code path.

Percentiles stay exact (nearest rank, the same value as ``numpy.percentile(method="inverted_cdf")``
over every sample) in two passes: the first counts each group's samples in ~1.6 % wide buckets of
latency (the bits of the float: monotone, no logarithms), the second keeps only the samples of the
bucket that holds the wanted rank, and picks it there.

Row weights: an event row (not ``sample``) whose ``value`` is a number stands for that many events
(an aggregated log, ``simulate.log: histograms`` or ``sampled``); NaN (every measured row) is one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .reader import Run, read_run
from .schema import KIND_INDEX, KINDS

Source: TypeAlias = pd.DataFrame | pa.Table | Run | str | Path  # what a projection accepts

BATCH_ROWS = 1 << 20
K = len(KINDS)
SAMPLE = KIND_INDEX["sample"]
ACK, PUSH, SEND = KIND_INDEX["ack"], KIND_INDEX["push"], KIND_INDEX["send"]
CONNECT_OK, DISCONNECT, CONNECT_START = KIND_INDEX["connect_ok"], KIND_INDEX["disconnect"], KIND_INDEX["connect_start"]
CONNECT_FAIL = KIND_INDEX["connect_fail"]
ERROR_CODES = np.array([KIND_INDEX[k] for k in ("connect_fail", "timeout", "reject", "error")])

# latency buckets: the float's exponent and top 6 mantissa bits (1/64 of an octave), 1e-7 s .. 1e5 s;
# everything below (zero, negatives) shares the first bucket, everything above (inf) the last
_SHIFT = 46
_LO = int(np.float64(1e-7).view(np.int64)) >> _SHIFT
NB = (int(np.float64(1e5).view(np.int64)) >> _SHIFT) - _LO + 1


def bucket(x: np.ndarray) -> np.ndarray:
    """Monotone bucket of each (non-NaN) float: a <= b implies bucket(a) <= bucket(b)."""
    return np.clip((np.ascontiguousarray(x, np.float64).view(np.int64) >> _SHIFT) - _LO, 0, NB - 1)


def rank(n: float, q: float) -> int:
    """0-based index of the nearest-rank q-th percentile among n samples, as numpy's inverted_cdf."""
    idx = n * np.true_divide(q, 100) - 1
    prev = np.floor(idx)
    return max(int(prev if idx - prev == 0 else prev + 1), 0)


# ---------------------------------------------------------------- batches


@dataclass
class Batch:
    """One batch of rows as numpy columns; ``kind`` as KIND_INDEX codes."""

    t: np.ndarray
    kind: np.ndarray
    cols: dict[str, np.ndarray]
    name_codes: np.ndarray | None = None
    name_dict: list[str] | None = None
    _weights: np.ndarray | None = None

    def names(self, mask: np.ndarray) -> np.ndarray:
        assert self.name_codes is not None and self.name_dict is not None
        lut = np.array([*self.name_dict, ""], dtype=object)
        codes = self.name_codes[mask]
        return lut[np.where(codes < 0, len(self.name_dict), codes)]

    def weights(self) -> np.ndarray:
        """Events each row stands for: ``value`` on aggregated event rows, else 1."""
        if self._weights is None:
            v = self.cols["value"]
            self._weights = np.where(np.isnan(v) | (self.kind == SAMPLE), 1.0, v)
        return self._weights


def _dict_codes(arr: pa.Array) -> tuple[np.ndarray, list[str]]:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if not pa.types.is_dictionary(arr.type):
        arr = pc.dictionary_encode(arr.cast(pa.string()))
    codes = arr.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, [str(s) for s in arr.dictionary.to_pylist()]


def _record_batches(source: Source, columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
    if isinstance(source, str | Path):
        source = read_run(source)
    if isinstance(source, Run) and source.loaded is not None:
        source = source.loaded
    if isinstance(source, Run):
        for part in source.parts:
            yield from pq.ParquetFile(part).iter_batches(batch_size=BATCH_ROWS, columns=list(columns))
        return
    if isinstance(source, pd.DataFrame):
        frame = source[list(columns)]
        for lo in range(0, len(frame), BATCH_ROWS):
            yield pa.RecordBatch.from_pandas(frame.iloc[lo : lo + BATCH_ROWS], preserve_index=False)
        return
    yield from source.select(list(columns)).to_batches(max_chunksize=BATCH_ROWS)


def batches(source: Source, columns: Sequence[str], names: bool = False) -> Iterator[Batch]:
    """The source's rows in batches of ``t``, ``kind`` (codes) and ``columns`` (numpy)."""
    wanted = ["t", "kind", *(c for c in columns if c not in ("t", "kind", "name"))] + (["name"] if names else [])
    for rb in _record_batches(source, wanted):
        if rb.num_rows == 0:
            continue
        codes, kinds = _dict_codes(rb.column("kind"))
        lut = np.array([KIND_INDEX.get(k, -1) for k in kinds] + [-1], dtype=np.int64)
        kind = lut[np.where(codes < 0, len(kinds), codes)]
        cols = {c: rb.column(c).to_numpy(zero_copy_only=False) for c in wanted if c not in ("t", "kind", "name")}
        b = Batch(rb.column("t").to_numpy(zero_copy_only=False).astype(np.float64, copy=False), kind, cols)
        if names:
            b.name_codes, b.name_dict = _dict_codes(rb.column("name"))
        yield b


def cache(source: Source, key: tuple, compute: Any) -> Any:
    """``compute()`` once per Run object (projections of one run share their scans)."""
    if not isinstance(source, Run):
        return compute()
    store: dict = source.__dict__.setdefault("_scan_cache", {})
    if key not in store:
        store[key] = compute()
    return store[key]


# ---------------------------------------------------------------- pass 1: what is small


@dataclass
class Overview:
    """Everything the projections need that grows with samples and connections, not with events."""

    rows: int
    t_min: float
    t_max: float
    counts: dict[str, float]  # events by kind, weighted (whole run)
    samples: pd.DataFrame  # the sample rows, sorted by t (stable): t, kind, conn, node, name, value
    live_t: np.ndarray  # connect_ok / disconnect rows, sorted by t (stable)
    live_delta: np.ndarray
    connect_ok_n: int
    connect_ok_t_max: float
    connect_start_t_min: float
    connect_fail_by: dict[str, int]  # connect_fail rows by name (the generator's reason)

    def live(self) -> pd.Series:
        return pd.Series(np.cumsum(self.live_delta), index=self.live_t)


def overview(source: Source) -> Overview:
    return cache(source, ("overview",), lambda: _overview(source))


def _overview(source: Source) -> Overview:
    rows = 0
    t_min, t_max = np.inf, -np.inf
    counts = np.zeros(K)
    samples: list[pd.DataFrame] = []
    live_t: list[np.ndarray] = []
    live_d: list[np.ndarray] = []
    ok_n, ok_max, start_min = 0, -np.inf, np.inf
    fails: dict[str, int] = {}
    for b in batches(source, ("conn", "node", "value"), names=True):
        rows += b.t.size
        t_min, t_max = min(t_min, float(b.t.min())), max(t_max, float(b.t.max()))
        known = b.kind >= 0
        counts += np.bincount(b.kind[known], weights=b.weights()[known], minlength=K)
        s = b.kind == SAMPLE
        if s.any():
            samples.append(
                pd.DataFrame(
                    {
                        "t": b.t[s],
                        "conn": b.cols["conn"][s],
                        "node": b.cols["node"][s],
                        "name": b.names(s),
                        "value": b.cols["value"][s],
                    }
                )
            )
        c = (b.kind == CONNECT_OK) | (b.kind == DISCONNECT)
        if c.any():
            live_t.append(b.t[c])
            live_d.append(np.where(b.kind[c] == CONNECT_OK, 1, -1))
        ok = b.kind == CONNECT_OK
        if ok.any():
            ok_n += int(ok.sum())
            ok_max = max(ok_max, float(b.t[ok].max()))
        st = b.kind == CONNECT_START
        if st.any():
            start_min = min(start_min, float(b.t[st].min()))
        f = b.kind == CONNECT_FAIL
        if f.any():
            for name, n in zip(*np.unique(b.names(f).astype(str), return_counts=True), strict=True):
                fails[str(name)] = fails.get(str(name), 0) + int(n)
    frame = (
        pd.concat(samples, ignore_index=True)
        if samples
        else pd.DataFrame({"t": [], "conn": [], "node": [], "name": [], "value": []})
    )
    frame = frame.sort_values("t", kind="stable", ignore_index=True)
    frame.insert(1, "kind", pd.Categorical(["sample"] * len(frame), categories=list(KINDS)))
    frame["name"] = frame["name"].astype("category")
    lt = np.concatenate(live_t) if live_t else np.empty(0)
    ld = np.concatenate(live_d) if live_d else np.empty(0, np.int64)
    order = np.argsort(lt, kind="stable")
    return Overview(
        rows=rows,
        t_min=float(t_min) if rows else float("nan"),
        t_max=float(t_max) if rows else float("nan"),
        counts={k: float(counts[i]) for i, k in enumerate(KINDS)},
        samples=frame,
        live_t=lt[order],
        live_delta=ld[order],
        connect_ok_n=ok_n,
        connect_ok_t_max=ok_max if ok_n else float("nan"),
        connect_start_t_min=start_min if np.isfinite(start_min) else float("nan"),
        connect_fail_by=fails,
    )


# ---------------------------------------------------------------- exact percentiles in two passes


class Quantiles:
    """Exact weighted nearest-rank percentiles of many groups: ``count`` in a first pass, ``wanted``,
    ``keep`` in a second, then ``value``."""

    def __init__(self, groups: int) -> None:
        self.groups = groups
        self.hist = np.zeros(groups * NB)
        self.want: dict[tuple[int, float], tuple[int, float]] = {}  # (group, q) -> (bucket, rank in it)
        self.mask: np.ndarray | None = None
        self.kept: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.kept_rows = 0

    def count(self, g: np.ndarray, bk: np.ndarray, w: np.ndarray) -> None:
        """Count samples of groups ``g`` in their latency buckets ``bk`` (``bucket(x)``), weighted."""
        if g.size:
            self.hist += np.bincount(g * NB + bk, weights=w, minlength=self.groups * NB)

    def total(self, g: int) -> float:
        return float(self.hist[g * NB : (g + 1) * NB].sum())

    def wanted(self, requests: Sequence[tuple[int, float]]) -> None:
        self.mask = np.zeros(self.groups * NB, bool)
        for g, q in requests:
            cum = np.cumsum(self.hist[g * NB : (g + 1) * NB])
            n = float(cum[-1])
            if n <= 0:
                continue
            k = rank(n, q)
            b = int(np.searchsorted(cum, k, side="right"))  # first bucket whose cumulative count > k
            below = float(cum[b - 1]) if b else 0.0
            self.want[(g, q)] = (b, k - below)
            self.mask[g * NB + b] = True

    def keep(self, g: np.ndarray, bk: np.ndarray, x: np.ndarray, w: np.ndarray) -> None:
        """Keep the samples that fall in a wanted bucket of their group."""
        assert self.mask is not None
        if not g.size:
            return
        cell = g * NB + bk
        m = self.mask[cell]
        if m.any():
            self.kept.append(_compress(cell[m], x[m], w[m]))
            self.kept_rows += int(m.sum())
            if len(self.kept) > 64:
                self.kept = [_compress(*map(np.concatenate, zip(*self.kept, strict=True)))]

    def values(self) -> dict[tuple[int, float], float]:
        if self.kept:
            cell, x, w = _compress(*map(np.concatenate, zip(*self.kept, strict=True)))
        else:
            cell, x, w = np.empty(0, np.int64), np.empty(0), np.empty(0)
        out = {}
        for (g, q), (b, k) in self.want.items():
            lo = int(np.searchsorted(cell, g * NB + b, "left"))
            hi = int(np.searchsorted(cell, g * NB + b, "right"))
            cum = np.cumsum(w[lo:hi])
            i = int(np.searchsorted(cum, k, side="right"))
            out[(g, q)] = float(x[lo:hi][min(i, hi - lo - 1)])
        return out


def _compress(cell: np.ndarray, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted by (cell, x), equal values merged with their weights summed."""
    order = np.lexsort((x, cell))
    cell, x, w = cell[order], x[order], w[order]
    if cell.size < 2:
        return cell, x, w
    new = np.flatnonzero(np.r_[True, (cell[1:] != cell[:-1]) | (x[1:] != x[:-1])])
    return cell[new], x[new], np.add.reduceat(w, new)


# ---------------------------------------------------------------- pass 2 and 3: windows and seconds


def assign(edges: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Window of each x among windows ``[edges[2i], edges[2i+1])`` (edges non-decreasing), -1 if none."""
    idx = np.searchsorted(edges, x, side="right")
    return np.where(idx % 2 == 1, idx // 2, -1)


@dataclass
class Digest:
    """Per window: counts by kind (by t), errors (by attempt time), percentiles; per second: counts by kind, p95."""

    window_counts: np.ndarray  # windows x K
    window_errors: np.ndarray  # windows
    pct: dict[tuple[str, int, float], float]  # (group, index, q) -> seconds (NaN: no samples)
    second_counts: np.ndarray | None  # seconds x K
    b_min: int


Q_WINDOW = {"lat": (50, 95, 99), "ack": (95,), "push": (95,), "send": (99,)}


def digest(source: Source, windows: Sequence[tuple[float, float]], bucket_s: float | None = None) -> Digest:
    key = ("digest", tuple(windows), bucket_s)
    return cache(source, key, lambda: _digest(source, windows, bucket_s))


def _digest(source: Source, windows: Sequence[tuple[float, float]], bucket_s: float | None) -> Digest:
    ov = overview(source)
    W = len(windows)
    edges = np.array([e for w in windows for e in w], float)
    sorted_edges = bool(np.all(np.diff(edges) >= 0)) if edges.size else True

    def where(x: np.ndarray) -> np.ndarray:
        if sorted_edges:
            return assign(edges, x)
        out = np.full(x.shape, -1)
        for i, (a, z) in enumerate(windows):
            out[(x >= a) & (x < z)] = i
        return out

    b_min = int(np.floor(ov.t_min / bucket_s)) if bucket_s and ov.rows else 0
    S = int(np.floor(ov.t_max / bucket_s)) - b_min + 1 if bucket_s and ov.rows else 0
    # groups: latency (ack+push) per window, ack, push, send lag per window, send lag whole run, seconds
    G_LAT, G_ACK, G_PUSH, G_SEND, G_ALL, G_SEC = 0, W, 2 * W, 3 * W, 4 * W, 4 * W + 1
    quantiles = Quantiles(4 * W + 1 + S)

    def groups(b: Batch) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(group, row index) of each latency sample of the batch, one array pair per kind of group."""
        lat = b.cols["latency_s"]
        ok = ~np.isnan(lat)
        ap = np.flatnonzero(((b.kind == ACK) | (b.kind == PUSH)) & ok)
        if W and ap.size:
            win = where(b.t[ap] - lat[ap])
            m = win >= 0
            rows, win = ap[m], win[m]
            yield G_LAT + win, rows
            a = b.kind[rows] == ACK
            yield G_ACK + win[a], rows[a]
            yield G_PUSH + win[~a], rows[~a]
        sd = np.flatnonzero((b.kind == SEND) & ok)
        if sd.size:
            yield np.full(sd.size, G_ALL), sd
            if W:
                win = where(b.t[sd])
                m = win >= 0
                yield G_SEND + win[m], sd[m]
        if S and ap.size:
            yield G_SEC + np.floor(b.t[ap] / bucket_s).astype(np.int64) - b_min, ap

    window_counts = np.zeros((W, K))
    window_errors = np.zeros(W)
    second_counts = np.zeros((S, K)) if S else None
    for b in batches(source, ("latency_s", "value")):
        w = b.weights()
        known = b.kind >= 0
        if W:
            win = where(b.t)
            m = (win >= 0) & known
            window_counts += np.bincount(win[m] * K + b.kind[m], weights=w[m], minlength=W * K).reshape(W, K)
            err = np.isin(b.kind, ERROR_CODES)
            if err.any():
                tried = b.t[err] - np.nan_to_num(b.cols["latency_s"][err], nan=0.0)
                ew = where(tried)
                m = ew >= 0
                window_errors += np.bincount(ew[m], weights=w[err][m], minlength=W)
        if second_counts is not None and bucket_s:
            sec = np.floor(b.t / bucket_s).astype(np.int64) - b_min
            per = np.bincount(sec[known] * K + b.kind[known], weights=w[known], minlength=S * K)
            second_counts += per.reshape(S, K)
        bk, lat = None, b.cols["latency_s"]
        for g, rows in groups(b):
            bk = bucket(lat) if bk is None else bk
            quantiles.count(g, bk[rows], w[rows])

    requests = [(G_ALL, 99.0)]
    for i in range(W):
        requests += [(G_LAT + i, float(q)) for q in Q_WINDOW["lat"]]
        requests += [(G_ACK + i, 95.0), (G_PUSH + i, 95.0), (G_SEND + i, 99.0)]
    requests += [(G_SEC + s, 95.0) for s in range(S)]
    quantiles.wanted(requests)
    if quantiles.want:
        for b in batches(source, ("latency_s", "value")):
            bk, lat, w = None, b.cols["latency_s"], b.weights()
            for g, rows in groups(b):
                bk = bucket(lat) if bk is None else bk
                quantiles.keep(g, bk[rows], lat[rows], w[rows])
    values = quantiles.values()
    pct: dict[tuple[str, int, float], float] = {}
    for name, base, n in (("lat", G_LAT, W), ("ack", G_ACK, W), ("push", G_PUSH, W), ("send", G_SEND, W)):
        for i in range(n):
            for q in Q_WINDOW[name]:
                pct[(name, i, float(q))] = values.get((base + i, float(q)), float("nan"))
    pct[("send_all", 0, 99.0)] = values.get((G_ALL, 99.0), float("nan"))
    for s in range(S):
        pct[("second", s, 95.0)] = values.get((G_SEC + s, 95.0), float("nan"))
    return Digest(window_counts, window_errors, pct, second_counts, b_min)


def acks_in_flight(source: Source, t0: float, t1: float, before: float) -> dict[str, float]:
    """Little's law terms on acks in ``[t0, t1]`` and the sends logged before ``before``."""
    overlap = inside_n = inside_lat = 0.0
    sends_before = 0.0
    for b in batches(source, ("latency_s", "value")):
        w = b.weights()
        a = b.kind == ACK
        if a.any():
            done, lat, wa = b.t[a], b.cols["latency_s"][a], w[a]
            sent = done - lat
            overlap += float((np.clip(np.minimum(done, t1) - np.maximum(sent, t0), 0, None) * wa).sum())
            inside = (sent >= t0) & (sent < t1)
            inside_n += float(wa[inside].sum())
            inside_lat += float(((done[inside] - sent[inside]) * wa[inside]).sum())
        s = (b.kind == SEND) & (b.t < before)
        sends_before += float(w[s].sum())
    span = t1 - t0
    mean = inside_lat / inside_n if inside_n else float("nan")
    return {"L": overlap / span, "lambda_W": inside_n / span * mean, "sends_before": sends_before}
