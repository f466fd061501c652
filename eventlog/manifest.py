"""Run folders and their ``manifest.json``: what ran, where, from which clock, and how it ended."""

from __future__ import annotations

import json
import os
import platform
import secrets
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
