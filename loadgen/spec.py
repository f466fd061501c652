"""What a load run does: one validated object (from flags, the seed's variables, or a scenario)."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from eventlog.load import Load, Step

__all__ = ["CONNECTIONS_PER_SOURCE_ADDR", "LoadSpec", "Step", "source_addrs"]

CONNECTIONS_PER_SOURCE_ADDR = 200


def source_addrs(connections: int) -> list[str]:
    """Loopback source addresses so that no address carries more than 200 connections: real clients
    come from many IPs, and the optimized profile limits connections per IP (``caplab run`` and
    ``caplab load`` both send from these)."""
    k = max(1, -(-connections // CONNECTIONS_PER_SOURCE_ADDR))
    return [f"127.0.{1 + i // 250}.{1 + i % 250}" for i in range(k)]


class LoadSpec(Load):
    """The run contract's :class:`~eventlog.load.Load` plus where and how the generator sends it."""

    url: str = Field(description="server base URL, http://127.0.0.1:PORT")
    nodes: list[str] = Field(default_factory=list, description="several nodes: connection i goes to nodes[i % n]")
    events_per_second: float = Field(100.0, ge=0, description="total send rate at the last step's connections")
    connect_timeout_s: float = Field(10.0, gt=0)
    drain_s: float = Field(0.5, ge=0, description="after the last ack, wait this long for pushes in flight")
    workers: int = Field(1, ge=1, le=16)
    source_addrs: list[str] = Field(default_factory=lambda: ["127.0.0.1"])
    scrape: list[str] = Field(default_factory=list, description="node URLs whose /socket-metrics is scraped")
    scrape_interval_s: float = Field(1.0, gt=0)
    seed: int = 1
    max_duration_s: float = Field(3600.0, gt=0, description="hard stop for the whole run")

    @field_validator("url", "scrape", "nodes")
    @classmethod
    def _loopback_only(cls, value: str | list[str]) -> str | list[str]:
        for url in [value] if isinstance(value, str) else value:
            host = url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
            if not (host.startswith("127.") or host in ("localhost", "::1")):
                raise ValueError(f"{url!r}: load is only sent to loopback addresses (127.0.0.0/8, localhost, ::1)")
        return value

    @field_validator("source_addrs")
    @classmethod
    def _loopback_sources(cls, value: list[str]) -> list[str]:
        if not value or any(not a.startswith("127.") for a in value):
            raise ValueError("source addresses must be in 127.0.0.0/8")
        return value

    @model_validator(mode="after")
    def _within_max_duration(self) -> LoadSpec:
        if self.duration_s > self.max_duration_s:
            raise ValueError(f"the steps take {self.duration_s:.0f} s, over max_duration_s={self.max_duration_s:.0f}")
        problem = self.chat_node_problem(len(self.nodes))
        if problem:
            raise ValueError(problem)
        return self
