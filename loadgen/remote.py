"""One generator process on a Dask worker's host, and what the driver runs on that worker to start,
watch and stop it (with ``Client.run``: out of band, outside the worker's task slots).

The driver starts one generator per worker (:func:`start_generator`). The generator process
(``python -m loadgen.remote DIR``) measures its clock's offset to the driver's (:mod:`loadgen.clock`),
sets its run's t = 0 on its own clock from it, runs a :class:`~loadgen.worker.Worker` with its share
of the load, writing parts to ``DIR/events``, and measures the offset again at the end. The driver
polls every worker about twice a second (:func:`poll_generator`): new parts (as bytes, so no shared
storage is needed), the latest progress line, the clock estimates, and the exit status. A generator
stops by itself when the Dask worker that started it dies, or when nobody polled it for
``HEARTBEAT_TIMEOUT_S`` (the driver is gone); its run is bounded by ``max_duration_s`` anyway.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HEARTBEAT_TIMEOUT_S = 20.0
MAX_POLL_BYTES = 32 * 2**20  # parts shipped per poll; the rest go with the next one

# this worker process's generators: run key -> (process, its folder)
_RUNS: dict[str, tuple[subprocess.Popen, Path]] = {}


def _write_json(path: Path, doc: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _unreachable(urls: list[str], timeout_s: float = 5.0) -> str | None:
    """Why this host cannot open a TCP connection to one of ``urls``, or None."""
    for url in urls:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme in ("https", "wss") else 80)
        try:
            socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=timeout_s).close()
        except OSError as exc:
            return f"cannot connect to {url}: {exc.strerror or exc}"
    return None


# -- run on the Dask worker (Client.run) ------------------------------------------------------------


def start_generator(run_key: str, config: dict, workers: dict[str, int], dask_worker: Any = None) -> dict:
    """Start this worker's generator (worker id ``workers[this worker's address]``); returns where it
    runs, or ``{"error": why}`` when this host cannot reach the server."""
    from .spec import LoadSpec

    wid = workers[dask_worker.address] if dask_worker is not None else 0
    spec = LoadSpec.model_validate_json(config["spec"])
    host = socket.gethostname()
    problem = _unreachable([spec.url, *spec.nodes])
    if problem:
        return {"error": problem, "host": host}
    work = Path(tempfile.mkdtemp(prefix=f"caplab-gen{wid}-"))
    _write_json(work / "config.json", {**config, "worker": wid, "parent_pid": os.getpid()})
    (work / "heartbeat").touch()
    with open(work / "generator.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "loadgen.remote", str(work)], stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
    _RUNS[run_key] = (proc, work)
    return {"worker": wid, "host": host, "boot_id": _boot_id(), "pid": proc.pid, "dir": str(work)}


def collect_parts(work_dir: str, have: list[str] | set[str], max_bytes: int = MAX_POLL_BYTES) -> dict:
    """The finished parts under ``work_dir/events`` not in ``have``: {"parts": {name: bytes}, "more": bool}."""
    have = set(have)
    parts: dict[str, bytes] = {}
    size, more = 0, False
    for path in sorted((Path(work_dir) / "events").glob("part-*.parquet")):
        if path.name in have:
            continue
        if size and size + path.stat().st_size > max_bytes:
            more = True
            break
        data = path.read_bytes()
        parts[path.name] = data
        size += len(data)
    return {"parts": parts, "more": more}


def poll_generator(run_key: str, have: list[str]) -> dict:
    """New parts, progress, clock estimates and exit status of this worker's generator of ``run_key``."""
    entry = _RUNS.get(run_key)
    if entry is None:
        return {"error": "this worker runs no generator of the run (was it restarted?)"}
    proc, work = entry
    (work / "heartbeat").touch()
    code = proc.poll()  # before listing parts: once it has exited, every part is on disk
    out = collect_parts(str(work), have)
    out.update(
        exit=code,
        progress=_read_json(work / "progress.json"),
        clock_start=_read_json(work / "clock-start.json"),
        result=_read_json(work / "result.json") if code is not None else None,
    )
    if code not in (None, 0):
        lines = (work / "generator.log").read_text(errors="replace").strip().splitlines()
        out["log_tail"] = " | ".join(lines[-3:])
    return out


def ready_generator(run_key: str) -> dict:
    """Whether the generator is ready to start (its clock measured): {"ready": bool, "exit": code}."""
    entry = _RUNS.get(run_key)
    if entry is None:
        return {"error": "this worker runs no generator of the run (was it restarted?)"}
    proc, work = entry
    (work / "heartbeat").touch()
    out: dict = {"ready": (work / "ready.json").exists(), "exit": proc.poll()}
    if out["exit"] is not None:
        lines = (work / "generator.log").read_text(errors="replace").strip().splitlines()
        out["log_tail"] = " | ".join(lines[-3:])
    return out


def go_generator(run_key: str, t0: float) -> bool:
    """Start the generator's load: the run's t = 0 is ``t0`` on the driver's monotonic clock."""
    entry = _RUNS.get(run_key)
    if entry is None:
        return False
    _write_json(entry[1] / "go.json", {"t0": t0})
    return True


def stop_generator(run_key: str, signum: int = signal.SIGTERM) -> bool:
    """Tell the generator to abort (it stops sending, flushes its rows, measures its clock, exits)."""
    entry = _RUNS.get(run_key)
    if entry is None or entry[0].poll() is not None:
        return False
    entry[0].send_signal(signum)
    return True


def end_generator(run_key: str, wait_s: float = 5.0) -> int | None:
    """Forget the run here: kill the generator if it still runs, and remove its folder."""
    entry = _RUNS.pop(run_key, None)
    if entry is None:
        return None
    proc, work = entry
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(wait_s)
    shutil.rmtree(work, ignore_errors=True)
    return proc.returncode


def remove_dir(work_dir: str) -> None:
    """Remove a lost generator's folder (from another worker on its host)."""
    if Path(work_dir).name.startswith("caplab-gen"):
        shutil.rmtree(work_dir, ignore_errors=True)


# -- the generator process ----------------------------------------------------------------------------


def _watch_heartbeat(path: Path, on_stale: Any) -> None:
    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                age = time.time() - path.stat().st_mtime
            except OSError:
                age = float("inf")
            if age > HEARTBEAT_TIMEOUT_S:
                on_stale()
                return

    threading.Thread(target=watch, name="heartbeat-watch", daemon=True).start()


def main(work_dir: str) -> int:
    from .clock import ClockError, measure_offset
    from .launch import STOP_SIGNALS, die_with_parent, run_fast
    from .spec import LoadSpec
    from .worker import Worker

    work = Path(work_dir)
    config = json.loads((work / "config.json").read_text())
    (work / "config.json").unlink()  # it holds the tokens; nothing reads it again
    spec = LoadSpec.model_validate_json(config["spec"])
    server = (config["clock_server"][0], int(config["clock_server"][1]))
    stale = threading.Event()
    _watch_heartbeat(work / "heartbeat", stale.set)
    start = measure_offset(server)
    _write_json(work / "ready.json", start.as_dict())
    while not (work / "go.json").exists():  # the driver creates the run once every generator is ready
        if stale.is_set():
            return 1
        time.sleep(0.005)
    t0_driver = float(_read_json(work / "go.json")["t0"])
    # the run's t = 0 on this host's clock: the driver's t0 less (driver clock - this clock)
    t0 = t0_driver - start.offset_s
    _write_json(work / "clock-start.json", {**start.as_dict(), "at": start.at - t0})

    def progress(p: dict) -> None:
        _write_json(work / "progress.json", p)

    worker = Worker(spec, work, t0, int(config["worker"]), config["tokens"], progress=progress)
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda signum, _frame: worker.request_abort(signal.Signals(signum).name))
    die_with_parent(int(config["parent_pid"]), lambda: worker.request_abort("its Dask worker died"))
    if stale.is_set():
        worker.request_abort("the driver stopped polling")
    _watch_heartbeat(work / "heartbeat", lambda: worker.request_abort("the driver stopped polling"))
    summary = run_fast(worker.run())
    try:
        end = measure_offset(server)
        clock_end: dict | None = {**end.as_dict(), "at": end.at - t0}
    except (ClockError, OSError) as exc:
        clock_end = {"error": str(exc)}
    _write_json(work / "result.json", {"summary": summary, "clock_end": clock_end})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
