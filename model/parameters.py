"""Calibration: the model's parameters with units, where each came from, and how well it fitted."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class GcModel(BaseModel):
    """Collector pauses. Counted once: the model adds pause jobs only when the CPU fit had the
    collector's time taken out (``cpu_excluded``); otherwise the collector is inside the fitted costs."""

    model_config = ConfigDict(extra="forbid")

    collections_per_event: float = Field(0.0, ge=0, description="collections per inbound event")
    dist: str = Field(
        "expon", description="scipy.stats distribution of pause seconds, or 'empirical' (params: quantiles 0..1)"
    )
    params: list[float] = Field(default_factory=lambda: [0.0, 0.001])
    ks_pvalue: float | None = None
    n_pauses: int = 0
    mean_pause_s: float = 0.0
    cpu_excluded: bool = Field(False, description="the CPU fit excluded collector time: pauses are jobs of their own")
    candidates: dict[str, float] = Field(default_factory=dict, description="KS p-value of each parametric fit tried")


CLIENT_OWN = ("send", "ack")  # the measuring generator's own sends, and the acks that answer them: one cost
CLIENT_PUSHES = ("push", "recovered")  # the room events it reads: a cost of their own


def writes_inline(toggles: dict) -> bool:
    """The fast fan-out without batching, with ``direct_write`` (and ``lean_transport``): the server writes
    each recipient's frame straight to its transport from the fan-out's loop, inside the handler, so a
    fan-out's first push leaves at once and its ack after the last write (model.sim, and calibration
    fits no share of work before the first write)."""
    fast = toggles.get("fast_fanout") or toggles.get("recovery")
    return bool(fast and not toggles.get("batching") and toggles.get("direct_write") and toggles.get("lean_transport"))


class Calibration(BaseModel):
    """Per-node parameters. Times in seconds of one event loop, memory in bytes."""

    model_config = ConfigDict(extra="forbid")

    profile: str = ""
    toggles: dict[str, bool] = Field(default_factory=dict)
    # CPU (seconds of event-loop time)
    cpu_idle_s_per_s: float = Field(0.0, ge=0, description="background CPU per second, not on the loop")
    cpu_per_event_s: float = Field(gt=0, description="handler + ack per inbound event")
    cpu_per_delivery_s: float = Field(0.0, ge=0, description="per recipient of a room event")
    cpu_per_packet_s: float = Field(
        0.0, ge=0, description="per packet written to a socket: a batch with batching, every delivery without"
    )
    cpu_per_connect_s: float = Field(0.0, ge=0, description="per accepted connection, auth included")
    cpu_per_connection_s_per_s: float = Field(0.0, ge=0, description="heartbeats and upkeep per live connection")
    cpu_per_wakeup_s: float = Field(
        0.0,
        ge=0,
        description="per wake-up of the event loop from idle (a job that finds the loop idle pays it): what "
        "makes the CPU per event fall with load, as more events share a wake-up",
    )
    cpu_per_publish_s: float = Field(0.0, ge=0, description="per room event published to Redis, on its node")
    cpu_per_receive_s: float = Field(0.0, ge=0, description="per room event heard from Redis, on every node")
    enqueue_share: float = Field(
        0.0,
        ge=0,
        le=1,
        description="room emit without window batching: share of each recipient's write cost spent before the "
        "first write (stock: a send task per recipient; fast: building what each socket is sent), fitted from "
        "each fan-out's first push against its sender's ack",
    )
    service_cv: float = Field(1.0, ge=0, description="coefficient of variation of service times (gamma)")
    base_latency_s: float = Field(0.0, ge=0, description="client + kernel time outside the server loop")
    client_cpu_per_message_s: float = Field(
        0.0, ge=0, description="the measuring load generator's CPU per send and per ack it reads (its own counter)"
    )
    client_cpu_per_push_s: float | None = Field(
        None,
        ge=0,
        description="the measuring generator's CPU per push it reads (fitted apart from sends when the push rate "
        "moved apart from the send rate); None: as client_cpu_per_message_s (calibrations before it was fitted)",
    )
    client_upkeep_share: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="share of the measuring generator's loop its own upkeep takes (timers, its timeout sweep, "
        "samplers: the intercept of its CPU fit, per worker); a message it sends or reads waits for that too, "
        "its time stretched by 1 / (1 - share). Used with measured_client",
    )
    client_tick_s: float = Field(
        0.0,
        ge=0,
        description="the measuring generator's effective send tick: sends due within one go out together at "
        "its end (fitted from the sends' bursts); the server wakes once per burst. Used with measured_client",
    )
    measured_client: bool = Field(
        False,
        description="simulate the measuring generator's loop as a queue (when predicting a measured run); "
        "production clients are many machines, so capacity answers leave it out",
    )
    machine_cores: int | None = Field(
        None,
        ge=1,
        description="cores of the machine the calibration runs were measured on, where the nodes, the generator "
        "and Redis shared them. Used with measured_client: when the nodes and the generator outnumber the "
        "cores, each node's loop waits for a CPU while the others hold every core (model.sim.contention); "
        "None or a capacity answer: a core per node",
    )
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

    def fit_warnings(self) -> list[str]:
        """What the fit says about itself that a reader must see: an ill-conditioned design, costs
        whose standard error exceeds them, regressors that could not be separated."""
        return list(self.fit.get("cpu", {}).get("warnings", []))

    def client_text(self) -> str:
        """The measuring generator's fitted costs, as the report and ``caplab calibrate`` print them."""
        if not self.client_cpu_per_message_s and not self.client_cpu_per_push_s:
            return "measuring client: not fitted"
        push = self.client_cpu_per_push_s
        push_text = "the same per push" if push is None else f"{push * 1e6:.3g} us per push"
        return (
            f"measuring client {self.client_cpu_per_message_s * 1e6:.3g} us per send or ack, {push_text}, "
            f"its upkeep {100 * self.client_upkeep_share:.3g} % of its loop"
            + (f"; measured on {self.machine_cores} cores shared with the nodes" if self.machine_cores else "")
        )

    def redis_text(self) -> str:
        """The fitted Redis costs with their standard errors (several nodes), else ""."""
        params = self.fit.get("cpu", {}).get("params", {})
        if "cpu_per_publish_s" not in params and "cpu_per_receive_s" not in params:
            return ""

        def us(x: float) -> str:
            return f"{x * 1e6:.0f}" if x * 1e6 >= 10 else f"{x * 1e6:.2g}"

        def cost(field: str) -> str:
            p = params.get(field, {"value": getattr(self, field), "se": float("nan")})
            se = p["se"] if p["se"] is not None else float("nan")
            return us(p["value"]) + (f" +- {us(se)}" if se == se else "") + " us"

        return f"Redis per publish {cost('cpu_per_publish_s')}, per receive {cost('cpu_per_receive_s')}"

    def save(self, path: Path | str) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.model_dump(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path | str) -> Calibration:
        return cls.model_validate_json(Path(path).read_text())
