"""Where simulations run: one interface, a local process pool by default, a Dask cluster when one is named.

Every simulation (replications, capacity ramps, sweep points) is a task ``fn(task) -> small result``:
the task writes its own run folder under a runs root every worker can reach and returns only its path
and summary, never the events. :class:`LocalExecutor` is the process pool the model always used;
:class:`DaskExecutor` submits the same tasks to a ``distributed`` scheduler. Results depend only on
the tasks (each carries its seed), so both give the same runs.

``replicate`` takes an executor, or uses the one installed with :func:`using` (the lab installs one
for a whole ``caplab run``), or a new :class:`LocalExecutor`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextvars import ContextVar
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")
R = TypeVar("R")

# (tasks done, tasks in all, where they run): called with 0 done when a batch is submitted, then as tasks finish
Progress = Callable[[int, int, str], None]

# Schemes a distributed scheduler listens on over a network (inproc:// and ucx:// are not for the lab).
SCHEMES = ("tcp", "tls", "ws", "wss")
ADDRESS_FORM = "tcp://HOST:PORT"
LOCAL = "local"  # as an address: the local process pool, even where a cluster is configured
CONNECT_TIMEOUT_S = 10.0


class Executor(Protocol):
    """Runs ``fn`` on every task and returns the results in the tasks' order."""

    @property
    def where(self) -> str:
        """Where the tasks run, for progress lines (``local process pool (2 workers)``, a cluster and its
        dashboard)."""
        ...

    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> list[R]: ...


def check_address(text: str) -> str:
    """``text`` if it is a Dask scheduler address (``tcp://HOST:PORT``, also tls/ws/wss) or ``local``;
    else a one-line ValueError saying what is expected."""
    text = text.strip()
    if text == LOCAL:
        return text
    expected = f"expected {ADDRESS_FORM} (a Dask scheduler; tls://, ws://, wss:// also work) or '{LOCAL}'"
    parts = urlsplit(text)
    if parts.scheme not in SCHEMES or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise ValueError(f"{text!r} is not a Dask scheduler address: {expected}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None or not 0 < port < 65536:
        raise ValueError(f"{text!r} has no valid port: {expected}")
    return text


class LocalExecutor:
    """The default, as the model always ran: a process pool of ``workers`` processes (default: one per
    task, at most one per core); one task, or one worker, runs in this process."""

    def __init__(self, workers: int | None = None, progress: Progress | None = None) -> None:
        self.workers = workers
        self.progress = progress

    @property
    def where(self) -> str:
        n = self.workers or os.cpu_count() or 1
        return f"the local process pool (up to {n} worker{'s' * (n != 1)})"

    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> list[R]:
        workers = self.workers or min(len(tasks), os.cpu_count() or 1)
        inline = workers <= 1 or len(tasks) <= 1
        where = "this process" if inline else f"the local process pool ({workers} worker{'s' * (workers != 1)})"
        self._done(0, len(tasks), where)
        if inline:
            results = []
            for task in tasks:
                results.append(fn(task))
                self._done(len(results), len(tasks), where)
            return results
        with ProcessPoolExecutor(workers) as pool:
            futures = {pool.submit(fn, task): i for i, task in enumerate(tasks)}
            out: dict[int, R] = {}
            for f in as_completed(futures):
                out[futures[f]] = f.result()
                self._done(len(out), len(tasks), where)
        return [out[i] for i in range(len(tasks))]

    def _done(self, done: int, total: int, where: str) -> None:
        if self.progress is not None and total:
            self.progress(done, total, where)


class DaskExecutor:
    """Tasks on a ``distributed`` cluster. Use as a context manager (or call :meth:`close`): it opens one
    client to the scheduler at ``address`` and closes it after. The workers import this package, so they
    need the same caplab and dependencies installed, and they write run folders to the path the tasks
    name, so that path must be the same shared storage on every worker and on this machine. A task whose
    worker dies is run again elsewhere by the scheduler; the lost attempt's folder stays, marked running."""

    def __init__(self, address: str, progress: Progress | None = None, connect_timeout_s: float | None = None) -> None:
        self.address = check_address(address)
        if self.address == LOCAL:
            raise ValueError(f"{LOCAL!r} is the local process pool; use LocalExecutor")
        self.progress = progress
        self.connect_timeout_s = connect_timeout_s or CONNECT_TIMEOUT_S
        self._client: Any = None

    @property
    def client(self) -> Any:
        """The ``distributed.Client``, connected on first use (an OSError if the scheduler does not answer)."""
        if self._client is None:
            from distributed import Client

            self._client = Client(self.address, timeout=self.connect_timeout_s, set_as_default=False)
        return self._client

    @property
    def dashboard(self) -> str | None:
        """The scheduler's dashboard link, or None when it serves none (its live pages need bokeh>=3.1
        installed where the scheduler runs; without it the link shows Dask's note saying so)."""
        info = self.client.scheduler_info()
        return str(self.client.dashboard_link) if "dashboard" in info.get("services", {}) else None

    @property
    def where(self) -> str:
        workers = len(self.client.scheduler_info().get("workers", {}))
        board = self.dashboard
        shown = f"dashboard {board}" if board else "the scheduler serves no dashboard"
        return f"the Dask cluster at {self.address} ({workers} worker{'s' * (workers != 1)}; {shown})"

    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> list[R]:
        from distributed import as_completed as completed

        if not tasks:
            return []
        # pure=False: each task writes a new run folder, so two equal tasks are two runs, not one cached
        where = self.where if self.progress is not None else ""
        futures = self.client.map(fn, list(tasks), pure=False)
        try:
            if self.progress is not None:
                self.progress(0, len(tasks), where)
            for done, future in enumerate(completed(futures, loop=self.client.loop), 1):
                if future.status == "error":
                    future.result()  # raises the task's own exception here
                if self.progress is not None:
                    self.progress(done, len(tasks), where)
            return list(self.client.gather(futures))
        finally:
            self.client.cancel(futures)  # on an error, stop the rest; after success, forget the results

    def run_on_workers(self, fn: Callable[..., R], *args: Any) -> dict[str, R]:
        """``fn(*args)`` once on every worker: {worker address: result}."""
        return dict(self.client.run(fn, *args))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_current: ContextVar[Executor | None] = ContextVar("caplab_executor", default=None)


@contextlib.contextmanager
def using(executor: Executor) -> Iterator[Executor]:
    """Install ``executor`` for every simulation started inside the block (``replicate`` without one)."""
    token = _current.set(executor)
    try:
        yield executor
    finally:
        _current.reset(token)


def current(workers: int | None = None) -> Executor:
    """The installed executor, else a local process pool of ``workers``."""
    return _current.get() or LocalExecutor(workers)


def probe(path: str) -> str | None:
    """Run on a worker: None if the file at ``path`` (written by the driver) is visible here and its
    folder writable, else why not."""
    if not os.path.exists(path):
        return f"does not see {path}"
    if not os.access(os.path.dirname(path), os.W_OK):
        return f"cannot write to {os.path.dirname(path)}"
    return None
