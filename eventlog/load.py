"""The run contract's load and SLO: defined once, extended (never redefined) by the generator, the model
and the scenario schema.

- :class:`Step` and :class:`Load`: what a run offers (steps, rates, mix, arrival, connect rate, churn,
  companies and users per company) and when each step starts and holds (:meth:`Load.schedule`). The
  generator (``loadgen.LoadSpec``), the model (``model.Workload``) and scenario files
  (``lab.scenario.WorkloadSpec``) add their own fields to it; a measured run's manifest records it,
  so the model can be driven with the load a server was measured under.
- :class:`SLO`: the service-level objective a step must meet to count as held.
- The rules several packages apply: users per company, companies needed for a number of
  connections, and the thresholds past which the load generator itself was the bottleneck.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# The event mix when none is given (scenario files, ``caplab load``, ``caplab simulate``).
DEFAULT_MIX: dict[str, float] = {"echo": 0.95, "chat": 0.05}

# Users the lab seeds per company when a run needs more companies than it names (the server's
# default ``max_per_company``: one company's users can all be connected at once).
USERS_PER_COMPANY = 500

# The load generator was the bottleneck when its CPU or its send lag passed these.
GENERATOR_MAX_CPU_PCT = 90.0
GENERATOR_MAX_SEND_LAG_MS = 50.0


def users_per_company(connections: int, companies: int) -> int:
    """Users seeded per company so that ``connections`` connections each have a user of their own."""
    return math.ceil(connections / companies)


def companies_needed(connections: int, at_least: int = 1) -> int:
    """Companies (of :data:`USERS_PER_COMPANY` users) that ``connections`` connections need, at least ``at_least``."""
    return max(at_least, math.ceil(connections / USERS_PER_COMPANY))


def generator_ok(gen_cpu_pct: float, send_lag_p99_ms: float) -> bool:
    """Was the load generator ahead of its schedule? (NaN, not measured, counts as ahead.)"""
    return not (gen_cpu_pct >= GENERATOR_MAX_CPU_PCT) and not (send_lag_p99_ms >= GENERATOR_MAX_SEND_LAG_MS)


def step_schedule(steps: Iterable[tuple[int, float]], connect_rate: float) -> list[tuple[float, float, int]]:
    """``[(connections, hold_s), ...]`` -> ``[(step start, hold start, target), ...]`` in run seconds.

    A step first ramps up to its connections at ``connect_rate`` per second, then holds. The
    generator and the model must agree on this, or the same projections would cut measured and
    simulated runs into different windows.
    """
    out, t, live = [], 0.0, 0
    for connections, hold_s in steps:
        ramp = max(0, connections - live) / connect_rate
        out.append((t, t + ramp, connections))
        t += ramp + hold_s
        live = connections
    return out


class Step(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    connections: int = Field(ge=1, description="target live connections in this step")
    hold_s: float = Field(gt=0, description="seconds the step holds after its ramp")
    events_per_second: float | None = Field(
        None, ge=0, description="total send rate in this step (a rate ramp); default: the run's per-connection rate"
    )
    chat_share: float | None = Field(
        None, ge=0, le=1, description="share of sends that are chats in this step (the rest echo); default: the mix"
    )
    churn_per_s: float | None = Field(
        None, ge=0, description="planned disconnect+reconnects per second in this step; default: the run's"
    )
    chat_node: int | None = Field(
        None,
        ge=0,
        le=63,
        description="only clients of this node send chats in this step, at the node count times the chat share "
        "(the step's chat rate stays; the others echo): a node that publishes every chat beside one that "
        "publishes none separates Redis publish from receive costs; on one node, every client",
    )


class Load(BaseModel):
    """Open-loop load. Rates are per connection, so load grows with live connections: steps without
    their own rate send ``events_per_second / (last step's connections)`` per connection."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    steps: list[Step] = Field(min_length=1)
    events_per_second: float = Field(ge=0, description="total send rate at the last step's connections")
    mix: dict[Literal["echo", "chat"], float] = Field(default_factory=lambda: dict(DEFAULT_MIX))  # type: ignore[arg-type]
    arrival: Literal["poisson", "fixed"] = "poisson"
    connect_rate: float = Field(200.0, gt=0, description="new connections per second")
    payload_bytes: int = Field(64, ge=0, le=1_000_000)
    rooms_per_connection: int = Field(0, ge=0, le=50, description="sub-rooms each connection joins")
    chat_to: Literal["company", "room"] = "company"
    churn_per_s: float = Field(0.0, ge=0, description="planned disconnect+reconnects per second")
    churn_away_s: float = Field(0.0, ge=0, le=3600, description="seconds a churned client stays away")
    recover: bool = Field(
        False, strict=True, description="clients ask for missed-message recovery: a reconnect replays what they missed"
    )
    ack_timeout_s: float = Field(5.0, gt=0)
    companies: int = Field(4, ge=1, le=1000, description="tenants the users are spread over")
    users_per_company: int | None = Field(
        None, ge=1, description="users seeded per company; default: one user per connection of the largest step"
    )

    @field_validator("mix")
    @classmethod
    def _mix(cls, value: dict[str, float]) -> dict[str, float]:
        if not value or any(w < 0 for w in value.values()) or sum(value.values()) <= 0:
            raise ValueError("mix weights must be >= 0 with a positive sum, e.g. {echo: 0.95, chat: 0.05}")
        return value

    @model_validator(mode="after")
    def _rooms(self) -> Load:
        if self.chat_to == "room" and self.rooms_per_connection == 0:
            raise ValueError("chat_to 'room' needs rooms_per_connection >= 1 (the sub-rooms chats go to)")
        return self

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> Load:
        """The :class:`Load` fields of a wider record (a manifest's ``load``, a subclass's dump)."""
        return cls.model_validate({k: v for k, v in data.items() if k in Load.model_fields})

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
        return s.events_per_second / s.connections if s.events_per_second is not None else self.base_rate

    def step_mix(self, i: int, node: int = 0, nodes: int = 1) -> dict[str, float]:
        """The event mix of step ``i`` (its own chat share, else the run's mix) as the clients of ``node``
        of ``nodes`` send it: with a ``chat_node``, that node's clients send all the step's chats."""
        step = self.steps[i]
        mix = (
            {str(k): v for k, v in self.mix.items()}
            if step.chat_share is None
            else {
                "echo": 1.0 - step.chat_share,
                "chat": step.chat_share,
            }
        )
        if step.chat_node is None or nodes <= 1:
            return mix
        chat = mix.get("chat", 0.0) / sum(mix.values()) * nodes if node == step.chat_node else 0.0
        return {"echo": 1.0 - min(chat, 1.0), "chat": min(chat, 1.0)}

    def chat_node_problem(self, nodes: int) -> str | None:
        """Why this load cannot run on ``nodes`` nodes as written (a step's chat_node), else None."""
        if nodes <= 1:
            return None
        for i, step in enumerate(self.steps):
            if step.chat_node is None:
                continue
            if step.chat_node >= nodes:
                return f"steps[{i}].chat_node {step.chat_node}: there are {nodes} nodes (0 to {nodes - 1})"
            mix = self.step_mix(i)
            if mix.get("chat", 0.0) / sum(mix.values()) * nodes > 1.0:
                return (
                    f"steps[{i}].chat_node: one node's clients cannot send the step's chats on {nodes} nodes "
                    f"(chat share x {nodes} > 1)"
                )
        return None

    def step_churn(self, i: int) -> float:
        """Planned disconnect+reconnects per second in step ``i``."""
        own = self.steps[i].churn_per_s
        return self.churn_per_s if own is None else own

    @property
    def churns(self) -> bool:
        return self.churn_per_s > 0 or any((s.churn_per_s or 0) > 0 for s in self.steps)

    def schedule(self) -> list[tuple[float, float, int]]:
        """(step start, hold start, target) in run seconds."""
        return step_schedule([(s.connections, s.hold_s) for s in self.steps], self.connect_rate)

    @property
    def duration_s(self) -> float:
        """When the last step's hold ends."""
        _start, hold, _ = self.schedule()[-1]
        return hold + self.steps[-1].hold_s

    @property
    def company_users(self) -> int:
        """Users per company: the field, else one user per connection of the largest step."""
        return self.users_per_company or users_per_company(self.max_connections, self.companies)

    def company_of(self, conn: int) -> int:
        """The lab seeds ``company_users`` users per company and hands tokens out in order."""
        return (conn % (self.companies * self.company_users)) // self.company_users


class SLO(BaseModel):
    """A step holds when its p95 latency and error rate are within these (and its connections were live)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    p95_ms: float = Field(120.0, gt=0)
    error_rate_pct: float = Field(0.1, ge=0, le=100)

    @property
    def p95_s(self) -> float:
        return self.p95_ms / 1000.0

    @property
    def error_rate(self) -> float:
        """As a fraction."""
        return self.error_rate_pct / 100.0

    @classmethod
    def from_manifest(cls, manifest: Any) -> SLO:
        """The SLO a run was recorded with (a :class:`~eventlog.manifest.Manifest` or its dict), else the default."""
        slo = manifest.get("slo") if isinstance(manifest, Mapping) else getattr(manifest, "slo", None)
        if isinstance(slo, SLO):
            return slo
        return cls.model_validate(slo) if slo else cls()
