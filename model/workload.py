"""The load the model is driven with: the same fields as the load generator's spec.

The model never imports ``loadgen``; it reads the ``load`` dict a measured run's manifest holds, or
the lab passes the same fields from a scenario.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from eventlog.schedule import schedule_end, step_schedule


class StepW(BaseModel):
    model_config = ConfigDict(extra="ignore")

    connections: int = Field(ge=1)
    hold_s: float = Field(gt=0)
    events_per_second: float | None = Field(None, ge=0)


class Workload(BaseModel):
    model_config = ConfigDict(extra="ignore")

    steps: list[StepW] = Field(min_length=1)
    events_per_second: float = Field(ge=0)
    mix: dict[str, float] = Field(default_factory=lambda: {"echo": 0.9, "chat": 0.1})
    arrival: str = "poisson"
    connect_rate: float = Field(200.0, gt=0)
    payload_bytes: int = 64
    chat_to: str = "company"
    rooms_per_connection: int = 0
    churn_per_s: float = 0.0
    ack_timeout_s: float = 5.0
    companies: int = Field(4, ge=1)
    users: int | None = Field(None, description="distinct users; default connections (one per user)")

    @property
    def max_connections(self) -> int:
        return max(s.connections for s in self.steps)

    @property
    def base_rate(self) -> float:
        """Per-connection rate of steps without their own rate: events_per_second at the last step."""
        return self.events_per_second / self.steps[-1].connections

    def step_rate(self, i: int) -> float:
        """Per-connection send rate in step ``i``."""
        s = self.steps[i]
        if s.events_per_second is not None:
            return s.events_per_second / s.connections
        return self.events_per_second / self.steps[-1].connections

    def schedule(self) -> list[tuple[float, float, int]]:
        """(step start, hold start, target) in run seconds (``eventlog.schedule``, shared with the other side)."""
        return step_schedule([(s.connections, s.hold_s) for s in self.steps], self.connect_rate)

    @property
    def duration_s(self) -> float:
        return schedule_end([(s.connections, s.hold_s) for s in self.steps], self.connect_rate)

    def company_of(self, conn: int) -> int:
        """The lab seeds ceil(N / companies) users per company and hands tokens out in order."""
        n_users = self.users or self.max_connections
        per_company = -(-n_users // self.companies)
        return (conn % n_users) // per_company

    @classmethod
    def from_manifest(cls, manifest: dict) -> Workload:
        load = dict(manifest["load"])
        users = manifest.get("users") or {}
        if users:
            load["companies"] = users.get("companies", 4)
            load["users"] = users.get("companies", 4) * users.get("per_company", 1)
        return cls(**load)
