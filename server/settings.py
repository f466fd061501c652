"""Server settings: one typed object built from defaults, a profile, the environment and flags.

Precedence, lowest first: field defaults < profile preset < environment < ``--set`` flags.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

Profile = Literal["baseline", "optimized"]


class Toggles(BaseModel):
    """Every optimization of the seed guide as an independent switch."""

    model_config = ConfigDict(extra="forbid")

    token_cache: bool = False  # cache validated tokens instead of one DB query per connect
    conn_limits: bool = False  # global / company / user / IP connection limits + memory guard
    rate_limit: bool = False  # per-connection token bucket, flood disconnect, IP ban
    batching: bool = False  # per-client batches of pushed events within a flush window
    fast_fanout: bool = False  # encode once, enqueue per recipient, no task per recipient
    inline_handlers: bool = False  # run handlers in the reader task, not one task per packet
    cleanup: bool = False  # drop per-socket state on disconnect + periodic sweep
    gc_tuning: bool = False  # gc.freeze() after start-up and higher gen0 threshold
    uvloop: bool = False  # uvloop event loop instead of asyncio's default
    lean_transport: bool = False  # one plain await per websocket message (no task + wait_for each)
    recovery: bool = False  # per-room sequences + replay buffer: reconnecting clients get what they missed
    fast_json: bool = False  # orjson through python-socketio's json hook, as strict as the stdlib guard
    direct_write: bool = False  # a websocket frame straight to the transport when it takes bytes (no queue, no task)
    batch_flush_soon: bool = False  # batching: flush at the end of the loop iteration, not the tick; busy clients wait
    lean_metrics: bool = False  # per-event metrics in plain numbers, folded into Prometheus when read
    room_index: bool = False  # each socket's rooms indexed: a disconnect visits its own rooms, not every room


PROFILES: dict[str, dict[str, bool]] = {
    "baseline": {},
    "optimized": {name: True for name in Toggles.model_fields},
}


class Settings(BaseModel):
    """Everything the server reads, with the seed guide's defaults."""

    model_config = ConfigDict(extra="forbid")

    profile: Profile = "baseline"
    toggles: Toggles = Field(default_factory=Toggles)
    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535)
    db: str = "caplab.db"
    node: int = Field(0, ge=0)

    # the seed's environment variables
    monitoring: bool = True  # SOCKET_MONITORING
    max_connections: int = Field(2000, ge=1)  # SOCKET_MAX_CONNECTIONS
    memory_threshold: int = Field(500_000_000, ge=1)  # SOCKET_MEMORY_THRESHOLD, bytes
    debug: bool = False  # DEBUG_SOCKET
    log_level: str = "warning"  # LOG_LEVEL
    metrics_interval_ms: int = Field(5000, ge=100)  # SOCKET_METRICS_INTERVAL
    redis_url: str | None = None  # REDIS_URL
    admin_token: str | None = None  # SOCKET_ADMIN_TOKEN
    redis_channel: str | None = None  # pub/sub channel + Redis key prefix; None: derived, see redis_namespace
    deployment: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")  # SOCKET_DEPLOYMENT
    slack_webhook_url: str | None = None  # SLACK_WEBHOOK_URL: post health alerts there (server/alerts.py)
    alert_cooldown_s: float = Field(300.0, ge=0)  # one message per alert and level per cool-down
    alert_timeout_s: float = Field(5.0, gt=0)  # per webhook attempt
    alert_retries: int = Field(3, ge=0, le=10)  # attempts after the first, with exponential backoff

    # the seed's tuning values
    max_per_company: int = Field(500, ge=1)
    max_per_user: int = Field(3, ge=1)
    max_per_ip: int = Field(1000, ge=1)
    max_rooms_per_socket: int = Field(50, ge=1)
    heartbeat_s: float = Field(25.0, gt=0)
    ping_timeout_s: float = Field(20.0, gt=0)
    cleanup_interval_s: float = Field(300.0, gt=0)
    batch_size: int = Field(50, ge=1)
    batch_max_bytes: int = Field(64_000, ge=1024)  # entry text per batch; well under max_outbound_bytes (batching)
    flush_interval_ms: float = Field(100.0, gt=0)
    compression_threshold: int = Field(1024, ge=0)

    # limits the seed names without numbers: ours, stated here
    max_payload_bytes: int = Field(1_000_000, ge=64)  # Engine.IO maxPayload
    event_rate: float = Field(50.0, gt=0)  # tokens per second per connection
    event_burst: float = Field(100.0, ge=1)
    flood_strikes: int = Field(200, ge=1)  # rejected events within flood_window_s -> disconnect
    flood_window_s: float = Field(10.0, gt=0)
    ban_s: float = Field(30.0, ge=0)
    token_cache_ttl_s: float = Field(300.0, gt=0)
    # per-client resource bounds (ours; the seed promises "DoS protection" without numbers)
    max_attachments: int = Field(10, ge=0)  # binary attachments one packet may announce (rate_limit)
    max_outbound_bytes: int = Field(1_000_000, ge=1024)  # queued for one client; Centrifugo's default (conn_limits)
    max_outbound_messages: int = Field(5000, ge=10)  # queued packets for one client (conn_limits)
    connect_timeout_s: float = Field(10.0, gt=0)  # Engine.IO session -> Socket.IO CONNECT deadline (conn_limits)
    connect_rate_per_ip: float = Field(250.0, gt=0)  # new sessions per second per IP, token bucket (conn_limits)
    connect_burst_per_ip: float = Field(500.0, ge=1)
    accept_rate: float = Field(2000.0, gt=0)  # new sessions per second for the whole node (conn_limits)
    # TCP connections per second per IP, refused at accept before any HTTP parsing (conn_limits; server/gate.py);
    # twice the session rate: a session that starts on long-polling and upgrades uses two connections
    accept_rate_per_ip: float = Field(500.0, gt=0)
    accept_burst_per_ip: float = Field(1000.0, ge=1)
    # missed-message recovery (recovery): how long and how much each node keeps for replay
    recovery_window_s: float = Field(120.0, gt=0)  # socket.io's connectionStateRecovery default (2 min)
    recovery_max_events: int = Field(1000, ge=1)  # per room
    recovery_max_bytes: int = Field(64_000_000, ge=1024)  # per node, all rooms
    degraded_ratio: float = Field(0.75, gt=0, le=1)
    critical_ratio: float = Field(0.90, gt=0, le=1)

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("expected debug, info, warning, error or critical")
        return value.lower()

    @field_validator("slack_webhook_url")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("expected an http(s):// URL")  # the value is a secret: never echoed
        return value

    def public(self) -> dict:
        """Settings in effect, without secrets (for /socket-diagnostics)."""
        data = self.model_dump()
        data["admin_token"] = "set" if self.admin_token else None
        if self.redis_url:
            data["redis_url"] = "set"
        if self.slack_webhook_url:
            data["slack_webhook_url"] = "set"
        return data

    def model_post_init(self, context: object, /) -> None:
        if self.redis_channel is None:
            self.redis_channel = redis_namespace(self.redis_url, self.deployment)


def redis_namespace(redis_url: str | None, deployment: str | None) -> str:
    """The default pub/sub channel and key prefix: ``caplab:<deployment>``, else ``caplab:db<N>``.

    Redis pub/sub ignores the db number, so deployments sharing one Redis on different dbs would
    hear each other on a fixed channel; N is the Redis URL's db (``?db=N`` or ``/N``, default 0),
    so nodes started with the same REDIS_URL alone still share one channel.
    """
    if deployment:
        return f"caplab:{deployment}"
    from urllib.parse import parse_qs, urlparse

    db = "0"
    if redis_url:
        url = urlparse(redis_url)
        path_db = "" if url.scheme == "unix" else url.path.lstrip("/").split("/")[0]
        db = parse_qs(url.query).get("db", [path_db])[0] or "0"
    return f"caplab:db{int(db) if db.isdigit() else db}"


ENV_VARS: dict[str, str] = {
    "SOCKET_MONITORING": "monitoring",
    "SOCKET_MAX_CONNECTIONS": "max_connections",
    "SOCKET_MEMORY_THRESHOLD": "memory_threshold",
    "DEBUG_SOCKET": "debug",
    "LOG_LEVEL": "log_level",
    "SOCKET_METRICS_INTERVAL": "metrics_interval_ms",
    "REDIS_URL": "redis_url",
    "SOCKET_ADMIN_TOKEN": "admin_token",
    "SOCKET_DEPLOYMENT": "deployment",
    "SLACK_WEBHOOK_URL": "slack_webhook_url",
}

SECRETS = ("admin_token", "redis_url", "slack_webhook_url")  # never echoed in an error

_OFF = {"off", "false", "0", "no"}
_ON = {"on", "true", "1", "yes"}


class SettingsError(ValueError):
    """A setting that cannot be applied, with the name and the reason."""


def _coerce(value: str) -> object:
    low = value.strip().lower()
    if low in _ON:
        return True
    if low in _OFF:
        return False
    return value


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """Turn ``["batching=off", "batch_size=20"]`` into a dict, refusing malformed pairs."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise SettingsError(f"--set {pair!r}: expected NAME=VALUE")
        out[name.strip()] = value
    return out


def build_settings(
    profile: str = "baseline",
    overrides: Mapping[str, object] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Build settings: profile preset, then environment, then overrides (toggle or setting names)."""
    if profile not in PROFILES:
        raise SettingsError(f"profile {profile!r}: expected one of {sorted(PROFILES)}")
    env = os.environ if env is None else env
    toggles: dict[str, object] = dict(PROFILES[profile])
    fields: dict[str, object] = {"profile": profile}
    for var, name in ENV_VARS.items():
        if env.get(var) not in (None, ""):
            fields[name] = _coerce(env[var]) if name in ("monitoring", "debug") else env[var]
    for name, value in (overrides or {}).items():
        value = _coerce(value) if isinstance(value, str) else value
        if name in Toggles.model_fields:
            if not isinstance(value, bool):
                raise SettingsError(f"toggle {name}={value!r}: expected on/off (true/false)")
            toggles[name] = value
        elif name in Settings.model_fields and name not in ("toggles", "profile"):
            fields[name] = value
        else:
            known = sorted({*Toggles.model_fields, *Settings.model_fields} - {"toggles", "profile"})
            raise SettingsError(f"unknown setting {name!r}; known: {', '.join(known)}")
    try:
        return Settings(toggles=Toggles(**toggles), **fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        got = "<hidden>" if where in SECRETS else repr(err.get("input"))
        raise SettingsError(f"setting {where}: {err['msg']} (got {got})") from None
