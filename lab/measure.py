"""Measure one server variant under a workload: fresh database, seeded users, nodes, load, log."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

from eventlog import update_manifest
from loadgen import LoadSpec, run_load
from loadgen.spec import source_addrs
from server.settings import build_settings

from .scenario import Scenario, ServerSpec, WorkloadSpec
from .servers import ServerProcess, create_users

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def load_spec(workload: WorkloadSpec, urls: list[str], seed: int = 1) -> LoadSpec:
    """The scenario's load (every :class:`~eventlog.load.Load` field, and its workers) sent to ``urls``."""
    return LoadSpec.model_validate(
        {
            **workload.model_dump(exclude={"steady_step"}),
            "users_per_company": workload.company_users,
            "source_addrs": source_addrs(workload.max_connections),
            "url": urls[0],
            "nodes": urls if len(urls) > 1 else [],
            "scrape": urls,
            "scrape_interval_s": 1.0,
            "seed": seed,
        }
    )


def stop_nodes(nodes: list[ServerProcess]) -> list[int | None]:
    """Stop every node, even if a stop signal interrupts one stop: the others are stopped before it
    is raised again. Returns the exit codes."""
    codes: list[int | None] = []
    interrupted: BaseException | None = None
    for node in nodes:
        try:
            codes.append(node.stop())
        except BaseException as exc:  # RunAborted or KeyboardInterrupt while waiting for this node
            interrupted = interrupted or exc
            codes.append(None)
    if interrupted is not None:
        raise interrupted
    return codes


def measure(
    server: ServerSpec, workload: WorkloadSpec, out: Path | str, scenario: Scenario | None = None, quiet: bool = False
) -> Path:
    """One measured run of ``server`` under ``workload``; returns the run folder."""
    work = Path(tempfile.mkdtemp(prefix=f"caplab-{server.label}-"))
    try:
        db = work / "lab.db"
        users = create_users(db, workload.companies, workload.company_users)
        sets: dict[str, object] = {"metrics_interval_ms": 1000, **server.set}
        env: dict[str, str] = {}
        if server.nodes > 1:
            env["REDIS_URL"] = REDIS_URL
            sets["redis_channel"] = f"caplab-{uuid.uuid4().hex[:12]}"
        settings = build_settings(server.profile, sets, env=env)
        nodes = [
            ServerProcess(server.profile, db, sets, env, node=i, log_path=work / f"server-{i}.log")
            for i in range(server.nodes)
        ]
        try:
            urls = [n.start().url for n in nodes]
            spec = load_spec(workload, urls)
            name = f"{scenario.name}-{server.label}" if scenario else server.label
            run_dir = run_load(
                spec,
                out,
                [u["token"] for u in users],
                name=name,
                quiet=quiet,
                scenario=scenario.model_dump() if scenario else None,
                manifest_fields={
                    "profile": server.profile,
                    "label": server.label,
                    "nodes": server.nodes,
                    "server": {
                        "set": server.set,
                        "toggles": settings.toggles.model_dump(),
                        "settings": settings.public(),
                    },
                    "slo": scenario.slo.model_dump() if scenario else None,
                },
            )
        finally:
            codes = stop_nodes(nodes)
        for i, _ in enumerate(nodes):
            log = work / f"server-{i}.log"
            if log.exists() and log.stat().st_size:
                shutil.copy(log, run_dir / f"server-{i}.log")
        update_manifest(run_dir, server_exit_codes=codes)
        return run_dir
    finally:
        shutil.rmtree(work, ignore_errors=True)
