"""Run a load spec into a new run folder, in one process or several worker processes.

Stopping: SIGTERM or SIGINT stops every worker at once (no drain), the rows so far are flushed, and
the run is finished as ``aborted``; the caller gets :class:`RunAborted`. Workers die with their
parent: if it is killed outright (SIGKILL), they abort within about a second, and its manifest,
left ``running``, names every writer process so that readers can see nobody is writing it any more
(``eventlog.run_status``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import math
import multiprocessing as mp
import os
import queue as queue_mod
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO, TypeVar

from eventlog import create_run, finish_run
from eventlog.manifest import add_writers

from .spec import LoadSpec
from .worker import Worker

T = TypeVar("T")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# An aborting worker stops sending, flushes its rows and exits in well under a second; one that has
# not exited this long after being told to is killed (it loses at most its last second of rows).
ABORT_GRACE_S = 3.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class RunAborted(BaseException):  # like KeyboardInterrupt: a request to stop, not an error
    """A stop signal (SIGTERM or SIGINT) ended the run early; the run folder keeps what was written."""

    def __init__(self, signum: int, summaries: list[dict] | None = None) -> None:
        self.signum = signum
        self.summaries = summaries or []
        self.run_dir: Path | None = None  # set once the run folder it ended is known
        super().__init__(f"aborted by {signal.Signals(signum).name}")


class _Stop:
    """Process-wide stop-signal state: the first stop signal wins; later ones are ignored, so that
    the cleanup it started (stopping workers and servers) runs to its end."""

    installed = False
    signum: int | None = None
    raising = False  # raise RunAborted in the main thread (a command's default; off inside run_workers)
    callback: Callable[[int], None] | None = None

    @classmethod
    def handler(cls, signum: int, frame: object) -> None:
        if cls.signum is not None:
            return
        cls.signum = signum
        if cls.callback is not None:
            cls.callback(signum)
        if cls.raising:
            raise RunAborted(signum)


@contextmanager
def abort_on_signals() -> Iterator[None]:
    """For a command's work (``caplab load``, ``caplab run``): SIGTERM and SIGINT raise
    :class:`RunAborted` in the main thread, so ``finally`` blocks stop servers and workers. The
    handlers before it come back on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = (_Stop.installed, _Stop.signum, _Stop.raising, _Stop.callback)
    previous = {sig: signal.signal(sig, _Stop.handler) for sig in STOP_SIGNALS}
    _Stop.installed, _Stop.signum, _Stop.raising, _Stop.callback = True, None, True, None
    try:
        yield
    finally:
        _Stop.installed, _Stop.signum, _Stop.raising, _Stop.callback = saved
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


class _Deferred:
    """While the load runs, a stop signal only sets ``signum`` (and calls ``callback``): the run loop
    then stops the workers and raises. Installs the handlers itself when no command did (library use,
    main thread only), and puts back what was there before."""

    def __init__(self, callback: Callable[[int], None] | None = None) -> None:
        self.callback = callback
        self.previous: dict[int, Any] = {}

    @property
    def signum(self) -> int | None:
        return _Stop.signum

    def __enter__(self) -> _Deferred:
        self.saved = (_Stop.installed, _Stop.raising, _Stop.callback)
        if not _Stop.installed:
            if threading.current_thread() is threading.main_thread():
                self.previous = {sig: signal.signal(sig, _Stop.handler) for sig in STOP_SIGNALS}
            _Stop.installed, _Stop.signum = True, None
        _Stop.raising, _Stop.callback = False, self.callback
        return self

    def __exit__(self, *exc: object) -> None:
        _Stop.installed, _Stop.raising, _Stop.callback = self.saved
        for sig, previous in self.previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)


def read_tokens(path: Path | str) -> list[str]:
    """Tokens from the JSON lines of ``python -m server users`` (or bare tokens, one per line)."""
    tokens = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                tokens.append(json.loads(line)["token"])
            except (json.JSONDecodeError, KeyError):
                raise ValueError(f"{path}:{n}: expected a JSON object with a 'token' field") from None
        else:
            tokens.append(line)
    if not tokens:
        raise ValueError(f"{path}: no tokens")
    return tokens


class ProgressLine:
    """Prints one line a second or so: connections, rates, p95, errors, generator CPU."""

    def __init__(self, workers: int, stream: TextIO = sys.stderr, every_s: float = 2.0) -> None:
        self.latest: dict[int, dict] = {}
        self.workers = workers
        self.stream = stream
        self.every_s = every_s
        self.last_print = 0.0

    def __call__(self, p: dict) -> None:
        wid = p["worker"]
        prev = self.latest.get(wid)
        p["cpu_pct"] = 100 * (p["cpu_s"] - prev["cpu_s"]) / max(p["t"] - prev["t"], 1e-9) if prev else math.nan
        self.latest[wid] = p
        if time.monotonic() - self.last_print < self.every_s or len(self.latest) < self.workers:
            return
        self.last_print = time.monotonic()
        ps = list(self.latest.values())
        p95 = max((x["p95_ms"] for x in ps if not math.isnan(x["p95_ms"])), default=math.nan)
        print(
            f"[{max(x['t'] for x in ps):7.1f}s] conns {sum(x['connections'] for x in ps)}/"
            f"{sum(x['target'] for x in ps)}  sent {sum(x['send_per_s'] for x in ps):.0f}/s  "
            f"acked {sum(x['ack_per_s'] for x in ps):.0f}/s  pushed {sum(x['push_per_s'] for x in ps):.0f}/s  "
            f"p95 {p95:.1f} ms  errors {sum(x['errors'] for x in ps)}  "
            f"gen-cpu {sum(x['cpu_pct'] for x in ps if not math.isnan(x['cpu_pct'])):.0f}%",
            file=self.stream,
            flush=True,
        )


def run_fast(coro: Coroutine[Any, Any, T]) -> T:
    """Run the generator on uvloop with the collector tuned: its pauses would show up as send lag.

    Objects alive at start-up are frozen out of the collector's scans and gen-0 runs 70x less
    often; the generator allocates few reference cycles, so this costs little memory.
    """
    import gc

    import uvloop

    gc.collect()
    gc.freeze()
    old = gc.get_threshold()
    gc.set_threshold(50_000, 50, 100)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    finally:
        gc.set_threshold(*old)
        gc.unfreeze()


def die_with_parent(parent_pid: int, on_orphan: Callable[[], None]) -> None:
    """Make this worker process stop when its parent dies, however it dies.

    On Linux the kernel sends SIGTERM at the parent's death (``prctl(PR_SET_PDEATHSIG)``), which the
    worker handles as an abort; everywhere, a thread sees the parent pid change within 0.2 s and
    aborts too (this also covers a parent that died before the prctl call). A worker that has not
    exited ``ABORT_GRACE_S`` after that is ended with ``os._exit``.
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watching thread still works

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.2)
        on_orphan()
        time.sleep(ABORT_GRACE_S)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _worker_entry(
    spec_json: str, run_dir: str, t0: float, wid: int, tokens: list[str], queue: Any, parent_pid: int
) -> None:
    spec = LoadSpec.model_validate_json(spec_json)
    worker = Worker(spec, run_dir, t0, wid, tokens, progress=queue.put)
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda signum, _frame: worker.request_abort(signal.Signals(signum).name))
    die_with_parent(parent_pid, lambda: worker.request_abort("parent died"))
    summary = run_fast(worker.run())
    queue.put({"done": wid, "summary": summary})
    if os.getppid() != parent_pid:
        queue.cancel_join_thread()  # nobody reads the queue any more: do not wait to flush it at exit


def _reap(procs: list, wait_s: float) -> None:
    """Wait up to ``wait_s`` for the workers to exit, then SIGTERM (they abort) and finally SIGKILL."""
    procs = [p for p in procs if p.pid is not None]  # started
    end = time.monotonic() + wait_s
    for p in procs:
        p.join(max(0.0, end - time.monotonic()))
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.terminate()
    end = time.monotonic() + ABORT_GRACE_S
    for p in alive:
        p.join(max(0.0, end - time.monotonic()))
    for p in alive:
        if p.is_alive():
            p.kill()
            p.join(5)


def run_workers(spec: LoadSpec, run_dir: Path, t0: float, tokens: list[str], quiet: bool = False) -> list[dict]:
    """Run every worker to the end; returns their summaries. Raises :class:`RunAborted` on SIGTERM or
    SIGINT (after the workers stopped and flushed their rows)."""
    progress = ProgressLine(spec.workers) if not quiet else (lambda p: None)
    if spec.workers == 1:
        worker = Worker(spec, run_dir, t0, 0, tokens, progress=progress)
        with _Deferred(lambda signum: worker.request_abort(signal.Signals(signum).name)) as stop:
            summary = run_fast(worker.run())
        if summary["aborted"]:
            raise RunAborted(stop.signum or signal.SIGTERM, [summary])
        return [summary]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker_entry,
            args=(spec.model_dump_json(), str(run_dir), t0, w, tokens, queue, os.getpid()),
            name=f"caplab-load-worker-{w}",
        )
        for w in range(spec.workers)
    ]
    summaries: list[dict] = []
    finished = False
    with _Deferred() as stop:
        try:
            for p in procs:
                p.start()
            add_writers(run_dir, [p.pid for p in procs if p.pid is not None])
            deadline = time.monotonic() + spec.duration_s + spec.ack_timeout_s + 60
            stopping_since = None
            while len(summaries) < len(procs):
                now = time.monotonic()
                if stop.signum is not None and stopping_since is None:
                    stopping_since = now
                    for p in procs:
                        if p.is_alive():
                            p.terminate()  # SIGTERM: each worker aborts, flushes and reports
                if now > deadline or (stopping_since is not None and now > stopping_since + ABORT_GRACE_S):
                    break
                try:
                    msg = queue.get(timeout=0.1)
                except queue_mod.Empty:
                    if all(not p.is_alive() for p in procs):
                        break
                    continue
                if "done" in msg:
                    summaries.append(msg["summary"])
                else:
                    progress(msg)
            finished = stop.signum is None
        finally:
            _reap(procs, 10.0 if finished else 0.0)
    if stop.signum is not None or any(s["aborted"] for s in summaries):
        raise RunAborted(stop.signum or signal.SIGTERM, summaries)
    if len(summaries) < len(procs):
        raise RuntimeError(f"{len(procs) - len(summaries)} load worker(s) died; the log so far is kept")
    return summaries


def run_load(
    spec: LoadSpec,
    out: Path | str,
    tokens: list[str],
    name: str = "load",
    manifest_fields: dict | None = None,
    quiet: bool = False,
    scenario: dict | None = None,
    cluster: str | None = None,
) -> Path:
    """Create a run folder, run the load into it, and finish its manifest (complete or aborted).

    ``cluster`` (or, when None, the address ``loadgen.cluster.generators_on`` installed): a Dask
    scheduler address; one generator runs on each of its workers (``loadgen.cluster``) instead of
    ``spec.workers`` processes here. Its problems are a ``ClusterError`` before the run folder exists."""
    from .cluster import ClusterLoad, current_cluster

    address = cluster or current_cluster()
    with ClusterLoad(address, spec, tokens) if address else contextlib.nullcontext() as on_cluster:
        runner = run_workers
        if on_cluster is not None:
            spec, runner = on_cluster.spec, on_cluster.run
        run_dir, manifest = create_run(
            out, "measured", name, scenario=scenario or {}, load=spec.model_dump(), **(manifest_fields or {})
        )
        t0 = manifest.monotonic_t0
        try:
            summaries = runner(spec, run_dir, t0, tokens, quiet=quiet)
        except RunAborted as exc:
            finish_run(run_dir, "aborted", error=str(exc), generator={"workers": exc.summaries})
            exc.run_dir = run_dir
            raise
        except BaseException as exc:
            finish_run(run_dir, "aborted", error=f"{type(exc).__name__}: {exc}")
            if hasattr(exc, "run_dir"):
                exc.run_dir = run_dir
            raise
    finish_run(run_dir, "complete", generator={"workers": summaries})
    return run_dir
