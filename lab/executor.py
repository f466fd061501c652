"""Where a command's simulations run, and their progress lines.

The cluster comes from, lowest precedence first: none (the local process pool, as always) < the
scenario's ``cluster:`` < the ``DASK_SCHEDULER_ADDRESS`` environment variable < ``--cluster``.
``--cluster local`` (or the value ``local`` anywhere) chooses the local pool over a configured cluster.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

from model.executor import LOCAL, DaskExecutor, Executor, LocalExecutor, check_address, probe, using

from .errors import UsageError, one_line
from .progress import log

ENV_ADDRESS = "DASK_SCHEDULER_ADDRESS"
PROGRESS_EVERY_S = 5.0  # between 'k/n done' lines; the first and last are always shown


def cluster_address(flag: str | None, scenario: str | None = None, env: Mapping[str, str] | None = None) -> str | None:
    """The scheduler address to use, or None for the local process pool (precedence in the module doc);
    a UsageError naming the source of a malformed address."""
    env = os.environ if env is None else env
    for source, value in (("--cluster", flag), (ENV_ADDRESS, env.get(ENV_ADDRESS)), ("scenario cluster", scenario)):
        if value:
            try:
                address = check_address(value)
            except ValueError as exc:
                raise UsageError(f"{source}: {exc}; nothing started") from None
            return None if address == LOCAL else address
    return None


def runs_root(text: str | Path) -> Path:
    """The runs root as a local path: a path, or a ``file://`` URL (fsspec's local protocol). Other URLs
    (s3://, gs://, memory://) are refused in one line: run folders are written with ordinary files, so
    shared storage must be mounted (NFS, a cluster file system) at the same path on every worker."""
    text = str(text)
    if "://" not in text:
        return Path(text)
    from fsspec.core import split_protocol

    protocol, path = split_protocol(text)
    if protocol not in ("file", "local"):
        raise UsageError(
            f"runs root {text}: {protocol}:// is not supported; mount the shared storage on every worker and "
            "give its path (or a file:// URL); nothing started"
        )
    return Path(path)


class ProgressLines:
    """'N simulations on WHERE ...' when a batch starts, then 'k/N done' lines (first, last, and one
    every ``every_s`` between) on the lab's progress log."""

    def __init__(self, what: str = "simulations", every_s: float = PROGRESS_EVERY_S) -> None:
        self.what, self.every_s, self._last = what, every_s, 0.0

    def __call__(self, done: int, total: int, where: str) -> None:
        now = time.monotonic()
        if done == 0:
            log(f"  {total} {self.what} on {where} ...")
        elif done in (1, total) or now - self._last >= self.every_s:
            log(f"  {done}/{total} {self.what} done")
        else:
            return
        self._last = now


@contextlib.contextmanager
def simulations_on(address: str | None, root: Path, what: str = "simulations") -> Iterator[Executor]:
    """Install the executor for every simulation started in the block: the local process pool when
    ``address`` is None, else the Dask cluster there, after checking that every worker sees ``root``.
    An unreachable scheduler or unshared storage is a UsageError before any simulation starts."""
    progress = ProgressLines(what)
    if address is None:
        with using(LocalExecutor(progress=progress)) as local:
            yield local
        return
    with DaskExecutor(address, progress) as dask:
        try:
            where = dask.where
        except OSError as exc:
            raise UsageError(
                f"cluster {address}: cannot reach the Dask scheduler: {one_line(exc)}; nothing started"
            ) from None
        check_shared(dask, root)
        log(f"simulations run on {where}; run folders go to {root.absolute()}")
        with using(dask):
            yield dask


def check_shared(dask: DaskExecutor, root: Path) -> None:
    """A UsageError unless every worker sees a file this process writes under ``root`` and can write there."""
    root = root.absolute()
    root.mkdir(parents=True, exist_ok=True)
    marker = root / f".caplab-probe-{uuid.uuid4().hex}"
    marker.write_text("written by the driver; every worker must see it\n")
    try:
        seen = dask.run_on_workers(probe, str(marker))
    finally:
        marker.unlink()
    if not seen:
        raise UsageError(f"cluster {dask.address}: the scheduler has no workers; nothing started")
    problems = {w: why for w, why in seen.items() if why}
    if problems:
        shown = "; ".join(f"worker {w} {why}" for w, why in sorted(problems.items())[:3])
        raise UsageError(
            f"runs root {root} is not shared with the cluster: {shown}; mount it at the same path on every "
            "worker (or pass --runs/--out on shared storage); nothing started"
        )
