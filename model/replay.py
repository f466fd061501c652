"""Trace replay: drive the model with the exact arrivals of a measured run, and compare second by second.

The model then meets the same sends (time, client, echo or chat), the same connection attempts and
the same client closes as the server did, so what differs between the two logs is the model's
mechanisms and costs, not the workload generator's randomness. ``compare_per_second`` puts the
two runs side by side per second of the run; ``compare_per_step`` per counted step window.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from eventlog import EventWriter, Run, create_run, finish_run, read_run, steps

from .parameters import Calibration
from .sim import NAMES, Simulation
from .workload import Workload

MARKERS = ("step", "step_eps", "hold", "end")


@dataclass
class Trace:
    """A measured run's arrivals, sorted by time."""

    send_t: np.ndarray  # when each send left the generator (the server met it then)
    send_lag: np.ndarray  # how long after it fell due (its row's time is when it fell due)
    send_conn: np.ndarray
    send_chat: np.ndarray
    connect_t: np.ndarray
    connect_conn: np.ndarray
    close_t: np.ndarray
    close_conn: np.ndarray
    markers: list[tuple[float, str, float]]

    def __post_init__(self) -> None:
        # the earliest due time of the sends from each one on (by sent time): what due_floor answers
        self._floor = np.minimum.accumulate((self.send_t - self.send_lag)[::-1])[::-1]

    def due_floor(self, t: float) -> float:
        """The earliest time a send the generator sent at ``t`` or later fell due (inf: none left)."""
        i = int(np.searchsorted(self.send_t, t))
        return float(self._floor[i]) if i < self._floor.size else float("inf")

    @property
    def max_conn(self) -> int:
        ids = np.concatenate([self.send_conn, self.connect_conn, [0]])
        return int(ids.max())

    @classmethod
    def from_run(cls, run: Run) -> Trace:
        df = run.events
        kind, name = df["kind"].astype(str), df["name"].astype(str)
        sends = df[kind == "send"]
        # the time each send left the generator (its intended time plus the lag the row records): the
        # server met the sends in the bursts they went out in, and its wake-ups follow them
        lag = sends["latency_s"].fillna(0.0).clip(lower=0.0)
        sends = sends.assign(t=sends["t"] + lag, lag=lag).sort_values("t", kind="stable")
        if sends.empty:
            raise ValueError(f"run {run.run_id} holds no send rows: nothing to replay")
        marks = df[(kind == "sample") & (df["node"] < 0) & name.isin(MARKERS)].sort_values("t", kind="stable")
        if not (marks["name"].astype(str) == "end").any():
            raise ValueError(f"run {run.run_id} has no 'end' marker: it did not finish, so it cannot be replayed")
        connects = df[kind == "connect_start"].sort_values("t", kind="stable")
        end = float(marks[marks["name"].astype(str) == "end"]["t"].iloc[0])
        # the clients' own closes while the load ran (churn): not the drops (an 'error' row 'dropped: ...' at
        # the same time) and not the planned closes after 'end'
        drops = df[(kind == "error") & name.str.startswith("dropped")]
        dropped = set(zip(drops["conn"].tolist(), drops["t"].round(9).tolist(), strict=True))
        closes = df[(kind == "disconnect") & (df["t"] < end)]
        keys = zip(closes["conn"].tolist(), closes["t"].round(9).tolist(), strict=True)
        own = [key not in dropped for key in keys]
        closes = closes[np.asarray(own, bool)].sort_values("t", kind="stable")
        return cls(
            send_t=sends["t"].to_numpy(float),
            send_lag=sends["lag"].to_numpy(float),
            send_conn=sends["conn"].to_numpy(np.int64),
            send_chat=(sends["name"].astype(str) == "chat").to_numpy(),
            connect_t=connects["t"].to_numpy(float),
            connect_conn=connects["conn"].to_numpy(np.int64),
            close_t=closes["t"].to_numpy(float),
            close_conn=closes["conn"].to_numpy(np.int64),
            markers=[
                (float(t), str(n), float(v)) for t, n, v in zip(marks["t"], marks["name"], marks["value"], strict=True)
            ],
        )


def replay(cal: Calibration, measured: Run, out: Path | str, seed: int = 1, nodes: int | None = None) -> Path:
    """Simulate ``measured``'s exact arrivals with ``cal``; one run folder (source 'simulated'). The
    measuring client's loop is part of what was measured, so it is simulated too."""
    cal = cal.model_copy(update={"measured_client": True})
    trace = Trace.from_run(measured)
    wl = Workload.from_manifest(measured.manifest)
    nodes = nodes or measured.manifest.nodes or 1
    run_dir, _ = create_run(
        out,
        "simulated",
        f"replay-{measured.manifest.label or measured.manifest.name or 'run'}",
        seed=seed,
        nodes=nodes,
        profile=cal.profile,
        load=wl.model_dump(),
        calibration=cal.model_dump(),
        replays=measured.run_id,
        label=f"replay of {measured.manifest.label or measured.run_id}",
    )
    started = time.perf_counter()
    try:
        cols = Simulation(cal, wl, seed, nodes, trace=trace).run()
        t, kind, conn, node, name, latency, nbytes, value = cols
        EventWriter(run_dir, "model", t0=0.0).columns(t, kind, conn, node, name, latency, nbytes, value, names=NAMES)
    except BaseException as exc:
        finish_run(run_dir, "aborted", error=f"{type(exc).__name__}: {exc}")
        raise
    finish_run(run_dir, "complete", wall_seconds=round(time.perf_counter() - started, 3), rows=int(cols[0].size))
    return run_dir


def _per_second(run: Run, horizon: int) -> pd.DataFrame:
    df = run.events
    kind = df["kind"].astype(str)
    sec = pd.RangeIndex(horizon, name="second")
    out = pd.DataFrame(index=sec)
    sends = df[kind == "send"]
    out["sends"] = np.bincount(sends["t"].astype(int).clip(0, horizon - 1), minlength=horizon)
    acks = df[kind == "ack"]
    sent = (acks["t"] - acks["latency_s"]).astype(int).clip(0, horizon - 1)  # by the second it was sent
    out["acks"] = np.bincount(sent, minlength=horizon)
    lat = acks["latency_s"].groupby(sent.to_numpy())
    out["p50_ms"] = lat.median().reindex(sec) * 1000
    out["p95_ms"] = lat.quantile(0.95).reindex(sec) * 1000
    push = df[kind == "push"]
    out["pushes"] = np.bincount(push["t"].astype(int).clip(0, horizon - 1), minlength=horizon)
    s = df[(kind == "sample") & (df["node"] >= 0)]
    cpu = np.zeros(horizon)
    conns = np.zeros(horizon)
    grid = np.arange(horizon + 1, dtype=float)
    for _, g in s[s["name"].astype(str) == "cpu_seconds"].groupby("node"):
        c = np.interp(grid, g["t"].to_numpy(), g["value"].to_numpy(), left=np.nan, right=np.nan)
        cpu += np.nan_to_num(np.diff(c) * 100)
    for _, g in s[s["name"].astype(str) == "connections"].groupby("node"):
        conns += np.nan_to_num(np.interp(grid[1:], g["t"].to_numpy(), g["value"].to_numpy(), left=np.nan))
    out["cpu_pct"] = cpu
    out["connections"] = conns
    return out


def compare_per_second(measured: Run, replayed: Run) -> pd.DataFrame:
    """One row per second of the run: each figure measured and replayed side by side."""
    horizon = int(np.ceil(max(measured.events["t"].max(), replayed.events["t"].max()))) + 1
    m, r = _per_second(measured, horizon), _per_second(replayed, horizon)
    out = pd.DataFrame(index=m.index)
    for col in m.columns:
        out[f"{col}_measured"], out[f"{col}_replayed"] = m[col], r[col]
    end = next(t for t, n, _ in Trace.from_run(measured).markers if n == "end")
    return out.iloc[: int(end)].reset_index()


def compare_per_step(measured: Run, replayed: Run) -> pd.DataFrame:
    """Per counted step window: throughput, p50/p95 and CPU measured and replayed, with the error."""
    per_s = compare_per_second(measured, replayed)
    rows = []
    for st in steps(measured.events).itertuples():
        w = per_s[(per_s["second"] >= np.ceil(st.window_start)) & (per_s["second"] < np.floor(st.end))]
        acks = {}
        for run, key in ((measured, "measured"), (replayed, "replayed")):
            df = run.events
            a = df[df["kind"].astype(str) == "ack"]
            sent = a["t"] - a["latency_s"]
            acks[key] = a["latency_s"][(sent >= st.window_start) & (sent < st.end)] * 1000
        row: dict = {"step": st.step, "target": int(st.target)}
        for metric, m, r in (
            ("throughput_eps", w["acks_measured"].mean(), w["acks_replayed"].mean()),
            ("p50_ms", acks["measured"].median(), acks["replayed"].median()),
            ("p95_ms", acks["measured"].quantile(0.95), acks["replayed"].quantile(0.95)),
            ("cpu_pct", w["cpu_pct_measured"].mean(), w["cpu_pct_replayed"].mean()),
        ):
            row[f"{metric}_measured"], row[f"{metric}_replayed"] = m, r
            row[f"{metric}_error_pct"] = 100 * (r - m) / m if m else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def replay_and_compare(
    cal: Calibration, measured_dir: Path | str, out: Path | str, seed: int = 1
) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """Replay a measured run, write ``replay-vs-measured.csv`` (per second) and
    ``replay-vs-measured-steps.csv`` into the replayed run's folder; returns it and both tables."""
    measured = read_run(measured_dir)
    run_dir = replay(cal, measured, out, seed)
    replayed = read_run(run_dir)
    per_s, per_step = compare_per_second(measured, replayed), compare_per_step(measured, replayed)
    per_s.to_csv(run_dir / "replay-vs-measured.csv", index=False)
    per_step.to_csv(run_dir / "replay-vs-measured-steps.csv", index=False)
    return run_dir, per_s, per_step
