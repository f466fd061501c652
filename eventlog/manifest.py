"""Run folders and their ``manifest.json``: what ran, where, from which clock, and how it ended."""

from __future__ import annotations

import json
import os
import platform
import secrets
import socket
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .load import SLO, Load
from .schema import SCHEMA_VERSION

STATUSES = ("running", "complete", "aborted")

# Version 1: the manifests written before the contract was typed (no ``manifest_version`` field; the
# load's companies beside it as ``users``). Version 2: written from :class:`Manifest`, the load
# records its companies and users per company. Both are read; a later version is refused.
MANIFEST_VERSION = 2


class ManifestError(ValueError):
    """A run folder whose ``manifest.json`` is missing, unreadable or not a manifest (names the file)."""


class Clock(BaseModel):
    monotonic_t0: float = Field(description="time.monotonic() at the run's t = 0 (machine-wide on Linux)")
    wall_t0: float = Field(description="time.time() at the same moment")


class ProcessRecord(BaseModel):
    pid: int | None = None
    start: int | None = Field(None, description="start time in clock ticks since boot (tells a reused pid apart)")


class Writers(BaseModel):
    host: str | None = None
    boot_id: str | None = None
    processes: list[ProcessRecord] = Field(default_factory=list)


class ClockOffset(BaseModel):
    """One NTP-style estimate of a generator host's clock against the driver's (``loadgen.clock``)."""

    offset_s: float = Field(description="the driver's monotonic clock minus the host's")
    uncertainty_s: float = Field(ge=0, description="the true offset is within this of offset_s (half the RTT)")
    rtt_s: float = Field(ge=0, description="round trip of the sample kept (the shortest)")
    at: float = Field(description="run time (s) of the sample")
    samples: int = Field(0, ge=0, description="round trips that came back")


class GeneratorHost(BaseModel):
    """A generator process on a cluster worker: where it ran and how its clock was aligned to the driver's.

    Its rows are written on the driver's time base from ``clock_start``; ``drift_corrected_s`` is how far
    the ``t`` column was stretched by the end of the run to follow ``clock_end`` (0 when the change was
    within the estimates' uncertainty)."""

    model_config = ConfigDict(extra="allow")

    worker: int = Field(ge=0, description="generator id: the gen<N> of its parts")
    address: str = Field(description="the Dask worker that started it")
    host: str | None = None
    pid: int | None = None
    clock_start: ClockOffset | None = None
    clock_end: ClockOffset | None = None
    drift_corrected_s: float | None = None
    lost: str | None = Field(None, description="why the driver lost it before its end (its later rows are missing)")

    def uncertainty_s(self) -> float | None:
        """The larger of the two estimates' uncertainties (None before any estimate)."""
        known = [c.uncertainty_s for c in (self.clock_start, self.clock_end) if c is not None]
        return max(known) if known else None


class ServerRecord(BaseModel):
    model_config = ConfigDict(extra="allow")

    set: dict[str, Any] = Field(default_factory=dict, description="the scenario's --set values")
    toggles: dict[str, bool] = Field(default_factory=dict)
    settings: dict[str, Any] = Field(default_factory=dict, description="every server setting, secrets left out")


class Users(BaseModel):
    companies: int = Field(ge=1)
    per_company: int = Field(ge=1)


class Manifest(BaseModel):
    """What ran, where, from which clock, and how it ended. Fields not named here (a writer's own
    notes: ``rows``, ``wall_seconds``, ``replication``, ...) are kept as they are."""

    model_config = ConfigDict(extra="allow")

    manifest_version: int = Field(1, ge=1, description="1 for manifests written before the field existed")
    schema_version: int = SCHEMA_VERSION
    run_id: str
    name: str = ""
    source: Literal["measured", "simulated"]
    status: Literal["running", "complete", "aborted"]
    started_at: str | None = None
    ended_at: str | None = None
    clock: Clock | None = None
    scenario: dict[str, Any] = Field(default_factory=dict, description="the scenario file, as validated")
    machine: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str | None] = Field(default_factory=dict)
    writers: Writers | None = None
    load: dict[str, Any] | None = Field(None, description="the load as given to its writer (a Load and more)")
    profile: str = ""
    label: str = ""
    nodes: int = 1
    server: ServerRecord | None = None
    slo: SLO | None = None
    users: Users | None = Field(None, description="version 1: the companies the load was run with")
    seed: int | None = None
    calibration: dict[str, Any] | None = None
    steady_step: int | None = None
    error: str | None = None
    generators: list[GeneratorHost] | None = Field(
        None, description="measured on a cluster: one generator per worker, with its clock offsets"
    )

    @field_validator("load", mode="before")
    @classmethod
    def _load_as_given(cls, value: Any) -> Any:
        return value.model_dump() if isinstance(value, BaseModel) else value

    @classmethod
    def of(cls, manifest: Manifest | Mapping[str, Any]) -> Manifest:
        return manifest if isinstance(manifest, Manifest) else cls.model_validate(dict(manifest))

    def offered_load(self) -> Load:
        """The run's :class:`Load` (version 1 manifests: with the companies recorded beside it)."""
        if self.load is None:
            raise ValueError(f"run {self.run_id} records no load")
        load = dict(self.load)
        if self.users is not None:
            for key, value in (("companies", self.users.companies), ("users_per_company", self.users.per_company)):
                if load.get(key) is None:
                    load[key] = value
        return Load.of(load)

    @property
    def monotonic_t0(self) -> float:
        """The run's t = 0 on the machine-wide monotonic clock (what writers subtract)."""
        if self.clock is None:
            raise ValueError(f"run {self.run_id} records no clock")
        return self.clock.monotonic_t0

    def json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


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


def versions(
    packages: tuple[str, ...] = ("python-socketio", "python-engineio", "aiohttp", "simpy", "pyarrow"),
) -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in ("caplab", *packages):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def new_run_id(prefix: str) -> str:
    return f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}-{prefix}-{secrets.token_hex(3)}"


def write_manifest(run_dir: Path, manifest: Manifest) -> None:
    """Atomic replace, so a reader never sees half a manifest."""
    tmp = run_dir / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest.json_dict(), indent=2, sort_keys=True, default=str))
    os.replace(tmp, run_dir / "manifest.json")


def read_manifest(run_dir: Path | str) -> Manifest:
    """The run's manifest; :class:`ManifestError` (one line, naming the file) if it cannot be read, is
    not a manifest, or was written by a later version of the lab."""
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
    version = manifest.get("manifest_version", 1)
    if isinstance(version, int) and version > MANIFEST_VERSION:
        raise ManifestError(
            f"{path}: manifest version {version} is newer than this caplab reads (up to {MANIFEST_VERSION}); "
            "upgrade caplab to read it"
        )
    try:
        return Manifest.model_validate(manifest)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ManifestError(f"{path}: not a valid run manifest: {where}: {err['msg']}{more}") from None


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


def process_record(pid: int | None = None) -> ProcessRecord:
    """How a writer process is recorded: its pid and (on Linux) its start time, which tells a
    process from a later one that reused the pid."""
    pid = os.getpid() if pid is None else pid
    proc = _proc_start(pid)
    return ProcessRecord(pid=pid, start=proc[1] if proc else None)


def _alive(record: ProcessRecord) -> bool:
    pid, start = record.pid, record.start
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


def writers_record(pids: list[int] | None = None) -> Writers:
    return Writers(
        host=socket.gethostname(),
        boot_id=_boot_id(),
        processes=[process_record(p) for p in (pids or [os.getpid()])],
    )


def add_writers(run_dir: Path | str, pids: list[int]) -> Manifest:
    """Record more writer processes of a running run (the generator's workers)."""
    manifest = read_manifest(run_dir)
    if manifest.writers is None:
        manifest.writers = writers_record()
    manifest.writers.processes += [process_record(p) for p in pids]
    write_manifest(Path(run_dir), manifest)
    return manifest


def run_status(manifest: Manifest | Mapping[str, Any]) -> tuple[str, str]:
    """The status to report and why, applying the liveness rule to runs that say 'running'.

    A run's manifest names its writer processes (host, boot id, pid and start time of each). A
    'running' run recorded on this host is reported 'aborted' when none of them is alive any more
    (gone, a zombie, a pid reused by a later process, or the machine rebooted since): nobody is left
    to finish it. Recorded on another host, or before writers were recorded, it stays 'running'.
    """
    m = Manifest.of(manifest)
    status = m.status
    if status != "running":
        return status, ""
    writers = m.writers
    if writers is None or not writers.processes:
        return status, "no writer processes recorded: liveness unknown"
    if writers.host != socket.gethostname():
        return status, f"written on host {writers.host!r}: liveness not checkable here"
    pids = ", ".join(str(p.pid) for p in writers.processes)
    if writers.boot_id and _boot_id() and writers.boot_id != _boot_id():
        return "aborted", f"recorded 'running'; the machine has rebooted since (writers {pids})"
    if any(_alive(p) for p in writers.processes):
        return status, ""
    return "aborted", f"recorded 'running', but no writer process is alive (pids {pids})"


def create_run(
    root: Path | str,
    source: str,
    name: str,
    scenario: dict | None = None,
    **fields: Any,
) -> tuple[Path, Manifest]:
    """Create ``root/<run-id>/`` with a 'running' manifest; returns the folder and the manifest."""
    if source not in ("measured", "simulated"):
        raise ValueError(f"source {source!r}: expected 'measured' or 'simulated'")
    run_id = new_run_id(name)
    run_dir = Path(root) / run_id
    (run_dir / "events").mkdir(parents=True)
    manifest = Manifest.model_validate(
        {
            "manifest_version": MANIFEST_VERSION,
            "run_id": run_id,
            "name": name,
            "source": source,
            "schema_version": SCHEMA_VERSION,
            "status": "running",
            "started_at": datetime.now(UTC).isoformat(),
            "clock": Clock(monotonic_t0=time.monotonic(), wall_t0=time.time()),
            "scenario": scenario or {},
            "machine": machine(),
            "versions": versions(),
            "writers": writers_record(),
            **fields,
        }
    )
    write_manifest(run_dir, manifest)
    return run_dir, manifest


def finish_run(run_dir: Path | str, status: str = "complete", **fields: Any) -> Manifest:
    if status not in STATUSES:
        raise ValueError(f"status {status!r}: expected one of {STATUSES}")
    return update_manifest(run_dir, **fields, status=status, ended_at=datetime.now(UTC).isoformat())


def update_manifest(run_dir: Path | str, **fields: Any) -> Manifest:
    """Set fields of a run's manifest (validated as the manifest's own)."""
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    updated = Manifest.model_validate({**manifest.json_dict(), **fields})
    write_manifest(run_dir, updated)
    return updated
