"""Load from several hosts: one generator process per Dask worker, collected into one run folder.

The driver (the process that runs ``caplab load`` or ``caplab run``) connects to the scheduler, gives
each worker its share of the load exactly as local worker processes share it (generator ``i`` of
``n`` opens connections ``i, i + n, ...`` and a ``1/n`` share of the connect and churn rates), and
serves its clock over UDP so that every generator can measure its offset (:mod:`loadgen.clock`).
Parts come back over the Dask connection while the run goes on and land in the run folder as the
local generator's would; the manifest records every generator's host and clock offsets, start and
end (``Manifest.generators``). A generator that is lost mid-run (its worker died) leaves the other
generators' rows and its own up to its last poll; the run is then finished ``aborted``, naming it.

Run one Dask worker per generator host (``dask worker tcp://SCHEDULER:8786 --nworkers 1``): each
worker starts one generator.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from eventlog.manifest import update_manifest

from . import remote
from .clock import ClockServer, local_address_towards
from .launch import ABORT_GRACE_S, ProgressLine, RunAborted, _Deferred
from .spec import LoadSpec

POLL_S = 0.5
CONNECT_TIMEOUT_S = 10.0
START_ALLOWANCE_S = 30.0  # beyond the load's duration: the last acks, drain, the final polls
READY_TIMEOUT_S = 120.0  # for every generator to start (imports on a busy host take seconds) and measure its clock
MAX_GENERATORS = 16  # LoadSpec.workers' bound

_current: ContextVar[str | None] = ContextVar("caplab_load_cluster", default=None)


class ClusterError(ValueError):
    """The cluster cannot run the load (no scheduler there, no workers, a host that cannot reach the
    server); nothing was started."""


class GeneratorLost(RuntimeError):
    """A generator stopped before the end of the run; the run folder keeps the rest, marked aborted."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.run_dir: Path | None = None


@contextlib.contextmanager
def generators_on(address: str | None) -> Iterator[None]:
    """Every ``run_load`` in the block (without its own ``cluster``) runs its generators on the Dask
    cluster at ``address`` (None: on this machine, as always)."""
    token = _current.set(address)
    try:
        yield
    finally:
        _current.reset(token)


def current_cluster() -> str | None:
    return _current.get()


@dataclass
class Generator:
    wid: int
    address: str
    host: str | None = None
    pid: int | None = None
    dir: str | None = None
    boot_id: str | None = None
    clock_start: dict | None = None
    clock_end: dict | None = None
    summary: dict | None = None
    lost: str | None = None
    lost_at: float | None = None
    drift_s: float | None = None
    progress_t: float | None = None
    parts: list[str] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.summary is None and self.lost is None

    def record(self) -> dict:
        return {
            "worker": self.wid,
            "address": self.address,
            "host": self.host,
            "pid": self.pid,
            "clock_start": self.clock_start,
            "clock_end": self.clock_end if self.clock_end and "error" not in self.clock_end else None,
            "drift_corrected_s": self.drift_s,
            "lost": self.lost,
        }


def stretch(t: Any, start: dict, end: dict) -> tuple[Any, float]:
    """The ``t`` column corrected for the drift between the two clock estimates: rows were written
    with the start offset; the offset moved by ``end - start`` until the end estimate, linearly in
    between (and after). Returns (t, the correction at the end estimate); no change when the drift is
    within the two estimates' uncertainties."""
    drift = float(end["offset_s"]) - float(start["offset_s"])
    span = float(end["at"]) - float(start["at"])
    if abs(drift) <= float(start["uncertainty_s"]) + float(end["uncertainty_s"]) or span <= 0:
        return t, 0.0
    return pc.add(t, pc.multiply(pc.subtract(t, float(start["at"])), drift / span)), drift


class ClusterLoad:
    """Generators on the Dask cluster at ``address``. Entering connects and checks (a
    :class:`ClusterError` before any run folder exists); :meth:`run` has the signature of
    ``launch.run_workers``."""

    def __init__(
        self, address: str, spec: LoadSpec, tokens: list[str], connect_timeout_s: float = CONNECT_TIMEOUT_S
    ) -> None:
        self.address = address
        self.connect_timeout_s = connect_timeout_s
        self.base_spec = spec
        self.spec = spec
        self.tokens = tokens
        self.client: Any = None
        self.clock: ClockServer | None = None
        self.key = ""
        self.workers: list[str] = []
        self.gens: dict[str, Generator] = {}

    def __enter__(self) -> ClusterLoad:
        from distributed import Client

        try:
            self.client = Client(self.address, timeout=self.connect_timeout_s, set_as_default=False)
        except OSError as exc:
            why = " ".join(str(exc).split())
            raise ClusterError(
                f"cluster {self.address}: cannot reach the Dask scheduler: {why}; nothing started"
            ) from None
        try:
            self._prepare()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _prepare(self) -> None:
        """Start a generator on every worker and wait until each has measured its clock."""
        self.workers = sorted(self.client.scheduler_info(n_workers=-1)["workers"])
        if not self.workers:
            raise ClusterError(f"cluster {self.address}: the scheduler has no workers; nothing started")
        if len(self.workers) > MAX_GENERATORS:
            raise ClusterError(
                f"cluster {self.address}: {len(self.workers)} workers, over the {MAX_GENERATORS} generators a run "
                "can have; start one Dask worker per generator host; nothing started"
            )
        self.spec = self.base_spec.model_copy(update={"workers": len(self.workers)})
        self.key = f"{uuid.uuid4().hex[:12]}"
        self.gens = {addr: Generator(wid, addr) for wid, addr in enumerate(self.workers)}
        clock_host = local_address_towards(urlsplit(self.address).hostname or "127.0.0.1")
        self.clock = ClockServer(clock_host).__enter__()
        config = {"spec": self.spec.model_dump_json(), "clock_server": list(self.clock.address), "tokens": self.tokens}
        wids = {addr: g.wid for addr, g in self.gens.items()}
        started = self.client.run(remote.start_generator, self.key, config, wids, workers=self.workers)
        problems = []
        for addr, g in self.gens.items():
            info = started.get(addr) or {"error": "did not answer"}
            g.host = info.get("host")
            if "error" in info:
                problems.append(f"worker {addr} ({g.host}) {info['error']}")
            else:
                g.pid, g.dir, g.boot_id = info["pid"], info["dir"], info.get("boot_id")
        if problems:
            raise ClusterError("; ".join(problems) + "; nothing sent")
        deadline = time.monotonic() + READY_TIMEOUT_S
        waiting = list(self.gens)
        while waiting:
            answers = self.client.run(remote.ready_generator, self.key, workers=waiting, on_error="return")
            for addr in list(waiting):
                answer = answers.get(addr)
                if not isinstance(answer, dict) or "error" in answer or answer.get("exit") is not None:
                    why = answer.get("log_tail") or answer.get("error") if isinstance(answer, dict) else repr(answer)
                    raise ClusterError(f"generator on worker {addr} ({self.gens[addr].host}) did not start: {why}")
                if answer["ready"]:
                    waiting.remove(addr)
            if waiting and time.monotonic() > deadline:
                raise ClusterError(
                    f"generators on {', '.join(waiting)} not ready after {READY_TIMEOUT_S:.0f} s; nothing sent"
                )
            time.sleep(0.05 if waiting else 0)

    def __exit__(self, *exc: object) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                alive = sorted(self._alive() & set(self.gens))
                self.client.run(remote.end_generator, self.key, workers=alive, on_error="return")
            self.client.close()
            self.client = None
        if self.clock is not None:
            self.clock.__exit__()
            self.clock = None

    def _alive(self) -> set[str]:
        return set(self.client.scheduler_info(n_workers=-1)["workers"])

    def run(self, spec: LoadSpec, run_dir: Path, t0: float, tokens: list[str], quiet: bool = False) -> list[dict]:
        """Start the load at the run's ``t0`` (the driver's clock), collect it into ``run_dir``."""
        key, gens = self.key, self.gens
        progress = ProgressLine(len(gens)) if not quiet else (lambda p: None)
        stop: int | None = None
        try:
            self.client.run(remote.go_generator, key, t0, workers=list(gens))
            update_manifest(run_dir, generators=[g.record() for g in gens.values()])
            stop = self._watch(key, gens, run_dir, spec, t0, progress)
        finally:
            self._end(key, gens, run_dir)
        summaries = [g.summary for g in gens.values() if g.summary is not None]
        if stop is not None or any(s.get("aborted") for s in summaries):
            raise RunAborted(stop or signal.SIGTERM, summaries)
        lost = [g for g in gens.values() if g.lost]
        if lost:
            raise GeneratorLost(
                "; ".join(
                    f"generator {g.wid} on {g.host or g.address} lost at t={g.lost_at:.1f} s: {g.lost}" for g in lost
                )
                + f" ({len(gens) - len(lost)} of {len(gens)} generators ran to the end; the log so far is kept)"
            )
        return summaries

    def _watch(
        self, key: str, gens: dict[str, Generator], run_dir: Path, spec: LoadSpec, t0: float, progress: Any
    ) -> int | None:
        """Poll until every generator ended or was lost; returns the stop signal, if one came."""
        deadline = time.monotonic() + spec.duration_s + spec.ack_timeout_s + START_ALLOWANCE_S
        stopping_since: float | None = None
        with _Deferred() as stop:
            while any(g.running for g in gens.values()):
                now = time.monotonic()
                if stop.signum is not None and stopping_since is None:
                    stopping_since = now
                    running = [a for a, g in gens.items() if g.running]
                    self.client.run(remote.stop_generator, key, workers=running, on_error="return")
                grace = stopping_since is not None and now > stopping_since + ABORT_GRACE_S + 2
                if now > deadline or grace:
                    for g in gens.values():
                        if g.running:
                            g.lost, g.lost_at = "did not finish in time", now - t0
                    break
                self._poll(key, gens, run_dir, t0, progress)
                time.sleep(POLL_S)
        return stop.signum

    def _poll(self, key: str, gens: dict[str, Generator], run_dir: Path, t0: float, progress: Any) -> None:
        alive = self._alive()
        for addr, g in gens.items():
            if g.running and addr not in alive:
                g.lost, g.lost_at = "its Dask worker left the cluster", time.monotonic() - t0
        running = [a for a, g in gens.items() if g.running]
        if not running:
            return
        have = sorted({p for g in gens.values() for p in g.parts})
        answers = self.client.run(remote.poll_generator, key, have, workers=running, on_error="return")
        for addr in running:
            g, answer = gens[addr], answers.get(addr)
            if not isinstance(answer, dict) or "error" in answer:
                why = answer.get("error") if isinstance(answer, dict) else f"no answer ({answer!r})"
                g.lost, g.lost_at = str(why), time.monotonic() - t0
                continue
            self._store(g, answer["parts"], run_dir)
            if answer.get("clock_start") and g.clock_start is None:
                g.clock_start = answer["clock_start"]
            p = answer.get("progress")
            if p and p.get("t") != g.progress_t:  # a new line, not the one read at the last poll
                g.progress_t = p.get("t")
                progress(p)
            if answer["exit"] is None or answer.get("more"):
                continue
            result = answer.get("result")
            if answer["exit"] != 0 or not result:
                g.lost = f"generator exited with code {answer['exit']}: {answer.get('log_tail', '')}"
                g.lost_at = time.monotonic() - t0
            else:
                g.summary, g.clock_end = result["summary"], result.get("clock_end")

    def _store(self, g: Generator, parts: dict[str, bytes], run_dir: Path) -> None:
        events = run_dir / "events"
        for name, data in parts.items():
            tmp = events / f"{name}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, events / name)
            g.parts.append(name)

    def _salvage(self, key: str, gens: dict[str, Generator], run_dir: Path) -> None:
        """A lost generator's last parts, read by another worker on the same host (a restarted worker)."""
        try:
            info = self.client.scheduler_info(n_workers=-1)["workers"]
        except OSError:
            return
        for g in gens.values():
            if not g.lost or g.dir is None:
                continue
            same_host = [a for a, w in info.items() if w.get("host") == urlsplit(g.address).hostname and a != g.address]
            if not same_host:
                continue
            have = sorted(g.parts)
            try:
                got = self.client.run(remote.collect_parts, g.dir, have, 2**40, workers=same_host[:1])
                self._store(g, next(iter(got.values()))["parts"], run_dir)
                self.client.run(remote.remove_dir, g.dir, workers=same_host[:1])
            except (OSError, StopIteration, KeyError):
                continue

    def _end(self, key: str, gens: dict[str, Generator], run_dir: Path) -> None:
        """Stop what still runs, salvage, correct drift, record every generator in the manifest."""
        with contextlib.suppress(Exception):
            alive = sorted(self._alive() & set(gens))
            self.client.run(remote.end_generator, key, workers=alive, on_error="return")
        with contextlib.suppress(Exception):
            self._salvage(key, gens, run_dir)
        for g in gens.values():
            end = g.clock_end
            if g.clock_start is None or end is None or "error" in end:
                continue
            g.drift_s = 0.0
            for name in g.parts:
                path = run_dir / "events" / name
                table = pq.read_table(path)
                t, g.drift_s = stretch(table.column("t"), g.clock_start, end)
                if g.drift_s == 0.0:
                    break
                table = table.set_column(0, "t", pa.chunked_array(t))
                tmp = path.with_suffix(".tmp")
                pq.write_table(table, tmp, compression="zstd")
                os.replace(tmp, path)
        if any(g.pid is not None for g in gens.values()):
            update_manifest(run_dir, generators=[g.record() for g in gens.values()])


__all__ = ["ClusterError", "ClusterLoad", "GeneratorLost", "current_cluster", "generators_on"]
