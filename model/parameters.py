"""Calibration: the model's parameters with units, where each came from, and how well it fitted."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class GcModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    collections_per_event: float = Field(0.0, ge=0, description="collections per inbound event")
    dist: str = Field("expon", description="scipy.stats distribution of pause seconds")
    params: list[float] = Field(default_factory=lambda: [0.0, 0.001])
    ks_pvalue: float | None = None
    n_pauses: int = 0
    mean_pause_s: float = 0.0


class Calibration(BaseModel):
    """Per-node parameters. Times in seconds of one event loop, memory in bytes."""

    model_config = ConfigDict(extra="forbid")

    profile: str = ""
    toggles: dict[str, bool] = Field(default_factory=dict)
    # CPU (seconds of event-loop time)
    cpu_idle_s_per_s: float = Field(0.0, ge=0, description="background CPU per second, not on the loop")
    cpu_per_event_s: float = Field(gt=0, description="handler + ack per inbound event")
    cpu_per_delivery_s: float = Field(0.0, ge=0, description="per recipient of a room event")
    cpu_per_packet_s: float = Field(0.0, ge=0, description="per outbound batch packet (batching only)")
    cpu_per_connect_s: float = Field(0.0, ge=0, description="per accepted connection, auth included")
    cpu_per_connection_s_per_s: float = Field(0.0, ge=0, description="heartbeats and upkeep per live connection")
    cpu_per_publish_s: float = Field(0.0, ge=0, description="per Redis-published room event, on every node")
    service_cv: float = Field(1.0, ge=0, description="coefficient of variation of service times (gamma)")
    base_latency_s: float = Field(0.0, ge=0, description="client + kernel time outside the server loop")
    redis_rtt_s: float = Field(0.0005, ge=0)
    # memory
    memory_base_bytes: float = Field(0.0, ge=0)
    memory_per_connection_bytes: float = Field(0.0, ge=0)
    memory_leak_per_closed_bytes: float = Field(0.0, ge=0)
    gc: GcModel = Field(default_factory=GcModel)
    # server settings that shape behaviour
    batching: bool = False
    flush_interval_s: float = 0.1
    batch_size: int = 50
    heartbeat_s: float = 25.0
    ping_timeout_s: float = 20.0
    conn_limits: bool = False
    max_connections: int = 2000
    max_per_company: int = 500
    # missed-message recovery (server toggle recovery): what a reconnect can replay
    recovery_window_s: float = Field(0.0, ge=0, description="replay window; 0: the server replays nothing")
    recovery_max_events: int = Field(0, ge=0, description="deliveries kept per room; 0: the server replays nothing")
    # provenance
    source_runs: list[str] = Field(default_factory=list)
    fit: dict = Field(default_factory=dict)
    assumptions: list[str] = Field(default_factory=list)

    def save(self, path: Path | str) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.model_dump(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path | str) -> Calibration:
        return cls.model_validate_json(Path(path).read_text())
