"""What a load run does: one validated object (from flags, the seed's variables, or a scenario)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from eventlog.schedule import schedule_end, step_schedule


class Step(BaseModel):
    model_config = ConfigDict(extra="forbid")

    connections: int = Field(ge=1, description="target live connections in this step")
    hold_s: float = Field(gt=0, description="seconds the step holds after its ramp")
    events_per_second: float | None = Field(
        None, ge=0, description="total send rate in this step; default: the run's per-connection rate"
    )


class LoadSpec(BaseModel):
    """Open-loop workload. Rates are per connection, so load grows with live connections."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="server base URL, http://127.0.0.1:PORT")
    nodes: list[str] = Field(default_factory=list, description="several nodes: connection i goes to nodes[i % n]")
    steps: list[Step] = Field(min_length=1)
    connect_rate: float = Field(200.0, gt=0, description="new connections per second (all workers)")
    events_per_second: float = Field(100.0, ge=0, description="total send rate at the last step's connections")
    mix: dict[Literal["echo", "chat"], float] = Field(default_factory=lambda: {"echo": 0.9, "chat": 0.1})
    arrival: Literal["poisson", "fixed"] = "poisson"
    payload_bytes: int = Field(64, ge=0, le=1_000_000)
    rooms_per_connection: int = Field(0, ge=0, le=50, description="sub-rooms each connection joins")
    chat_to: Literal["company", "room"] = "company"
    churn_per_s: float = Field(0.0, ge=0, description="planned disconnect+reconnects per second")
    ack_timeout_s: float = Field(5.0, gt=0)
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
    def _loopback_only(cls, value):
        for url in [value] if isinstance(value, str) else value:
            host = url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
            if not (host.startswith("127.") or host in ("localhost", "::1")):
                raise ValueError(f"{url!r}: load is only sent to loopback addresses (127.0.0.0/8, localhost, ::1)")
        return value

    @field_validator("source_addrs")
    @classmethod
    def _loopback_sources(cls, value):
        if not value or any(not a.startswith("127.") for a in value):
            raise ValueError("source addresses must be in 127.0.0.0/8")
        return value

    @field_validator("mix")
    @classmethod
    def _mix(cls, value):
        if not value or any(w < 0 for w in value.values()) or sum(value.values()) <= 0:
            raise ValueError("mix weights must be >= 0 with a positive sum, e.g. {echo: 0.9, chat: 0.1}")
        return value

    @model_validator(mode="after")
    def _consistent(self):
        if self.chat_to == "room" and self.rooms_per_connection == 0:
            raise ValueError("chat_to 'room' needs rooms_per_connection >= 1")
        if self.duration_s > self.max_duration_s:
            raise ValueError(f"the steps take {self.duration_s:.0f} s, over max_duration_s={self.max_duration_s:.0f}")
        return self

    @property
    def max_connections(self) -> int:
        return max(s.connections for s in self.steps)

    @property
    def rate_per_connection(self) -> float:
        """Default per-connection rate: the run's events_per_second at the last step's connections."""
        return self.events_per_second / self.steps[-1].connections

    def step_rate(self, step: Step) -> float:
        """Per-connection send rate during ``step``."""
        if step.events_per_second is not None:
            return step.events_per_second / step.connections
        return self.rate_per_connection

    def schedule(self) -> list[tuple[float, float, int]]:
        """(step start, hold start, target) in run seconds (``eventlog.schedule``, shared with the other side)."""
        return step_schedule([(s.connections, s.hold_s) for s in self.steps], self.connect_rate)

    @property
    def duration_s(self) -> float:
        return schedule_end([(s.connections, s.hold_s) for s in self.steps], self.connect_rate)
