"""Run folders and their ``manifest.json``: what ran, where, from which clock, and how it ended."""

from __future__ import annotations

import json
import os
import platform
import secrets
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

from .schema import SCHEMA_VERSION

STATUSES = ("running", "complete", "aborted")


class ManifestError(ValueError):
    """A run folder whose ``manifest.json`` is missing, unreadable or not a manifest (names the file)."""


def machine() -> dict:
    """Cores, memory and CPU model of this machine (recorded in every manifest)."""
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        mem = None
    return {
        "cores": os.cpu_count(),
        "memory_bytes": mem,
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def versions(packages: tuple[str, ...] = ("python-socketio", "python-engineio", "aiohttp", "simpy", "pyarrow")) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("caplab", *packages):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def new_run_id(prefix: str) -> str:
    return f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}-{prefix}-{secrets.token_hex(3)}"


def write_manifest(run_dir: Path, manifest: dict) -> None:
    """Atomic replace, so a reader never sees half a manifest."""
    tmp = run_dir / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    os.replace(tmp, run_dir / "manifest.json")


def read_manifest(run_dir: Path | str) -> dict:
    """The run's manifest; :class:`ManifestError` (one line, naming the file) if it cannot be read."""
    path = Path(run_dir) / "manifest.json"
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not UTF-8 (byte {exc.object[exc.start]:#04x} at offset {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ManifestError(
            f"{path}: not valid JSON at line {exc.lineno} column {exc.colno} ({exc.msg}); truncated or damaged?"
        ) from None
    missing = [k for k in ("run_id", "source", "status") if not isinstance(manifest, dict) or k not in manifest]
    if missing:
        raise ManifestError(f"{path}: not a run manifest (no {', '.join(missing)})")
    return manifest


# -- liveness: is a run that says 'running' still being written? -----------------------------------


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _proc_start(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of a Linux process, None if there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ", which may hold spaces
    return fields[0], int(fields[19])


def process_record(pid: int | None = None) -> dict:
    """How a writer process is recorded: its pid and (on Linux) its start time, which tells a
    process from a later one that reused the pid."""
    pid = os.getpid() if pid is None else pid
    proc = _proc_start(pid)
    return {"pid": pid, "start": proc[1] if proc else None}


def _alive(record: dict) -> bool:
    pid, start = record.get("pid"), record.get("start")
    if not isinstance(pid, int) or pid <= 0:
        return False
    proc = _proc_start(pid)
    if proc is not None:
        state, started = proc
        return state not in ("Z", "X") and (start is None or started == start)
    if Path("/proc/self/stat").exists():
        return False  # Linux, and no such process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def writers_record(pids: list[int] | None = None) -> dict:
    return {
        "host": socket.gethostname(),
        "boot_id": _boot_id(),
        "processes": [process_record(p) for p in (pids or [os.getpid()])],
    }


def add_writers(run_dir: Path | str, pids: list[int]) -> dict:
    """Record more writer processes of a running run (the generator's workers)."""
    manifest = read_manifest(run_dir)
    writers = manifest.setdefault("writers", writers_record())
    writers["processes"] += [process_record(p) for p in pids]
    write_manifest(Path(run_dir), manifest)
    return manifest


def run_status(manifest: dict) -> tuple[str, str]:
    """The status to report and why, applying the liveness rule to runs that say 'running'.

    A run's manifest names its writer processes (host, boot id, pid and start time of each). A
    'running' run recorded on this host is reported 'aborted' when none of them is alive any more
    (gone, a zombie, a pid reused by a later process, or the machine rebooted since): nobody is left
    to finish it. Recorded on another host, or before writers were recorded, it stays 'running'.
    """
    status = manifest.get("status", "?")
    if status != "running":
        return status, ""
    writers = manifest.get("writers")
    if not isinstance(writers, dict) or not writers.get("processes"):
        return status, "no writer processes recorded: liveness unknown"
    if writers.get("host") != socket.gethostname():
        return status, f"written on host {writers.get('host')!r}: liveness not checkable here"
    pids = ", ".join(str(p.get("pid")) for p in writers["processes"])
    if writers.get("boot_id") and _boot_id() and writers["boot_id"] != _boot_id():
        return "aborted", f"recorded 'running'; the machine has rebooted since (writers {pids})"
    if any(_alive(p) for p in writers["processes"]):
        return status, ""
    return "aborted", f"recorded 'running', but no writer process is alive (pids {pids})"


def create_run(
    root: Path | str,
    source: str,
    name: str,
    scenario: dict | None = None,
    **fields: object,
) -> tuple[Path, dict]:
    """Create ``root/<run-id>/`` with a 'running' manifest; returns the folder and the manifest."""
    if source not in ("measured", "simulated"):
        raise ValueError(f"source {source!r}: expected 'measured' or 'simulated'")
    run_id = new_run_id(name)
    run_dir = Path(root) / run_id
    (run_dir / "events").mkdir(parents=True)
    manifest = {
        "run_id": run_id,
        "name": name,
        "source": source,
        "schema_version": SCHEMA_VERSION,
        "status": "running",
        "started_at": datetime.now(UTC).isoformat(),
        "clock": {"monotonic_t0": time.monotonic(), "wall_t0": time.time()},
        "scenario": scenario or {},
        "machine": machine(),
        "versions": versions(),
        "writers": writers_record(),
        **fields,
    }
    write_manifest(run_dir, manifest)
    return run_dir, manifest


def finish_run(run_dir: Path | str, status: str = "complete", **fields: object) -> dict:
    if status not in STATUSES:
        raise ValueError(f"status {status!r}: expected one of {STATUSES}")
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    manifest.update(fields)
    manifest["status"] = status
    manifest["ended_at"] = datetime.now(UTC).isoformat()
    write_manifest(run_dir, manifest)
    return manifest


def update_manifest(run_dir: Path | str, **fields: object) -> dict:
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    manifest.update(fields)
    write_manifest(run_dir, manifest)
    return manifest
