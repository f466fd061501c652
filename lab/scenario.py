"""Scenario files: one schema, validated in one place, errors that name the file, field and line."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from server.settings import SettingsError, build_settings


class ScenarioError(ValueError):
    """A scenario that cannot run; the message names the file, the field path (and line) and why."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SLOSpec(Strict):
    p95_ms: float = Field(120.0, gt=0)
    error_rate_pct: float = Field(0.1, ge=0, le=100)


class ServerSpec(Strict):
    label: str = Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_.+-]+$")
    profile: Literal["baseline", "optimized"]
    set: dict[str, str | int | float | bool] = Field(default_factory=dict)
    nodes: int = Field(1, ge=1, le=8)

    @field_validator("set")
    @classmethod
    def _settings_apply(cls, value: dict, info: ValidationInfo) -> dict:
        try:
            build_settings(info.data.get("profile", "baseline"), value, env={})
        except SettingsError as exc:
            raise ValueError(str(exc)) from None
        return value


class StepSpec(Strict):
    connections: int = Field(ge=1, le=50_000)
    hold_s: float = Field(gt=0, le=3600)
    events_per_second: float | None = Field(None, ge=0, description="this step's total rate (a rate ramp)")


class WorkloadSpec(Strict):
    companies: int = Field(4, ge=1, le=1000)
    steps: list[StepSpec] = Field(min_length=1)
    events_per_second: float = Field(ge=0)
    mix: dict[Literal["echo", "chat"], float] = Field(default_factory=lambda: {"echo": 0.95, "chat": 0.05})
    arrival: Literal["poisson", "fixed"] = "poisson"
    connect_rate: float = Field(200.0, gt=0)
    payload_bytes: int = Field(64, ge=0, le=100_000)
    rooms_per_connection: int = Field(0, ge=0, le=50)
    chat_to: Literal["company", "room"] = "company"
    churn_per_s: float = Field(0.0, ge=0)
    ack_timeout_s: float = Field(5.0, gt=0)
    workers: int = Field(1, ge=1, le=8)
    steady_step: int | None = Field(None, ge=0, description="step the benchmark row reports (default: last)")

    @model_validator(mode="after")
    def _steady(self):
        if self.steady_step is not None and self.steady_step >= len(self.steps):
            raise ValueError(f"steady_step {self.steady_step} is past the last step (index {len(self.steps) - 1})")
        return self

    @property
    def max_connections(self) -> int:
        return max(s.connections for s in self.steps)

    @property
    def users_per_company(self) -> int:
        return math.ceil(self.max_connections / self.companies)


class SimulateSpec(Strict):
    calibration: str | None = Field(None, description="calibration file; omit in 'compare' to fit on its runs")
    connections: list[int] = Field(default_factory=lambda: [200, 2000, 10_000], min_length=1)
    events_per_connection: float | None = Field(None, ge=0, description="default: the workload's rate")
    duration_s: float = Field(60.0, gt=0, le=3600)
    replications: int = Field(5, ge=1, le=100)
    seed: int = 1
    nodes: int = Field(1, ge=1, le=64)


class SweepSpec(Strict):
    grid: dict[str, list[float]] = Field(min_length=1)
    target_connections: int = Field(10_000, ge=1)


class Scenario(Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    question: str = Field(min_length=10)
    kind: Literal["measure", "simulate", "compare", "sweep"]
    slo: SLOSpec = Field(default_factory=SLOSpec)
    servers: list[ServerSpec] = Field(default_factory=list)
    workload: WorkloadSpec | None = None
    simulate: SimulateSpec | None = None
    sweep: SweepSpec | None = None
    validate_on: list[str] = Field(default_factory=list, description="server labels held out of calibration")
    report: bool = True

    @model_validator(mode="after")
    def _kind_needs(self):
        needs = {
            "measure": ("servers", "workload"),
            "compare": ("servers", "workload", "simulate"),
            "simulate": ("simulate",),
            "sweep": ("simulate", "sweep"),
        }[self.kind]
        for field in needs:
            if not getattr(self, field):
                raise ValueError(f"kind '{self.kind}' needs '{field}'")
        labels = [s.label for s in self.servers]
        if len(set(labels)) != len(labels):
            raise ValueError("server labels must be unique")
        for label in self.validate_on:
            if label not in labels:
                raise ValueError(f"validate_on names {label!r}, which is not a server label ({labels})")
        if self.kind == "simulate" and not self.simulate.calibration:
            raise ValueError("kind 'simulate' needs simulate.calibration (a file written by caplab calibrate)")
        if self.kind in ("simulate", "sweep") and self.workload is None:
            raise ValueError(f"kind '{self.kind}' needs 'workload' (the load the model is driven with)")
        return self


def _line_of(node: yaml.Node | None, path: tuple) -> int | None:
    """1-based line of the YAML node at ``path`` (or of its nearest existing parent)."""
    line = node.start_mark.line + 1 if node is not None else None
    for key in path:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if k.value == str(key)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            match = node.value[key]
        else:
            match = None
        if match is None:
            break
        node, line = match, match.start_mark.line + 1
    return line


def parse_scenario(text: str, source: str = "<scenario>") -> Scenario:
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ScenarioError(f"{source}{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: a scenario is a mapping (name, question, kind, ...)")
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        msgs = []
        for err in exc.errors():
            path = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-after")))
            field = ".".join(str(p) for p in path) or "(top level)"
            line = _line_of(root, path)
            msg = err["msg"].removeprefix("Value error, ")
            got = (
                f" (got {err['input']!r})"
                if err["type"] not in ("missing", "value_error") and not isinstance(err.get("input"), dict | list)
                else ""
            )
            msgs.append(f"{source}{f':{line}' if line else ''}: {field}: {msg}{got}")
        raise ScenarioError("\n".join(msgs)) from None


def load_scenario(path: Path | str) -> Scenario:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_scenario(text, str(path))
