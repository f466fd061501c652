"""Scenario files: one schema, validated in one place, errors that name the file, field and line.

Everything a scenario will do is checked here before anything starts: the file itself (UTF-8, size,
nesting, aliases, duplicate keys), the schema, the server settings, the load the generator will be
given, the calibration file, and the size of every simulation the scenario implies.
"""

from __future__ import annotations

import itertools
import logging
import math
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from eventlog.load import SLO, Load, Step
from server.settings import SettingsError, build_settings

# The file itself. The shipped scenarios are under 2 KB and 4 levels deep; these bounds are far above
# any real scenario and keep a broken or hostile file from costing memory or a parser's recursion.
MAX_SCENARIO_BYTES = 64 * 1024
MAX_DEPTH = 16
MAX_VALUES = 10_000  # after expanding YAML aliases: a few lines of aliases can stand for 10^9 values

# The longest run: the load generator's own hard stop (LoadSpec.max_duration_s) bounds a measured
# run, and the same bound applies to every simulated run (ramp plus hold, in simulated seconds).
MAX_RUN_S = 3600.0
# The model keeps per-connection state and writes one or two rows per event. The lab's questions
# stop at 10 000 connections; 10x that is the bound. 20 M events in one replication take about 3 GB
# and a minute on the README's machine (6 M events: 3.5 s, 430 MB of peak RSS for 4 M rows), so a
# bigger one is a typo (simulate.connections: [1000000000000] asked numpy for 931 GiB), not a plan.
MAX_SIM_CONNECTIONS = 100_000
MAX_SIM_EVENTS = 20_000_000
MAX_SWEEP_RUNS = 500  # grid combinations, each simulated `replications` times

# Settings the lab sets on every node itself (and a secret that would be copied into every manifest).
LAB_OWNED_SETTINGS = ("host", "port", "db", "node", "redis_url", "redis_channel", "admin_token")

# The model's node-capacity ramp (lab/modelling.node_capacity): its targets, hold and connect rate,
# defined here so that the scenario check bounds exactly the ramp that will be simulated.
NODE_RAMP_TARGETS = (100, 200, 500, 1000, 1500, 2000, 3000, 4000, 6000, 8000, 10_000, 15_000, 20_000)
NODE_RAMP_HOLD_S = 20.0
NODE_RAMP_CONNECT_RATE = 2000.0


class ScenarioError(ValueError):
    """A scenario that cannot run; the message (one line) names the file, the field path (and line) and why."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


SLOSpec = SLO  # a scenario's slo is the run contract's


class ServerSpec(Strict):
    label: str = Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_.+-]+$")
    profile: Literal["baseline", "optimized"]
    set: dict[str, str | int | float | bool] = Field(default_factory=dict)
    nodes: int = Field(1, ge=1, le=8)

    @field_validator("set")
    @classmethod
    def _settings_apply(cls, value: dict, info: ValidationInfo) -> dict:
        owned = [k for k in value if k in LAB_OWNED_SETTINGS]
        if owned:
            raise ValueError(f"{', '.join(owned)}: set by the lab for every node, not by a scenario")
        try:
            settings = build_settings(info.data.get("profile", "baseline"), value, env={})
        except SettingsError as exc:
            raise ValueError(str(exc)) from None
        # the server hands log_level to logging at start-up; an unknown name would stop it there
        if settings.log_level.upper() not in logging.getLevelNamesMapping():
            names = ", ".join(n.lower() for n in logging.getLevelNamesMapping())
            raise ValueError(f"log_level {settings.log_level!r}: expected one of {names}")
        return value


class StepSpec(Step):
    """A contract :class:`~eventlog.load.Step` within a scenario's bounds."""

    connections: int = Field(ge=1, le=50_000)
    hold_s: float = Field(gt=0, le=3600)


class WorkloadSpec(Load):
    """The run contract's :class:`~eventlog.load.Load` within a scenario's bounds, plus the generator's
    worker count and the step the benchmark row reports."""

    steps: list[StepSpec] = Field(min_length=1)  # type: ignore[assignment]
    payload_bytes: int = Field(64, ge=0, le=100_000)
    workers: int = Field(1, ge=1, le=8)
    steady_step: int | None = Field(None, ge=0, description="step the benchmark row reports (default: last)")

    @model_validator(mode="after")
    def _consistent(self) -> WorkloadSpec:
        if self.steady_step is not None and self.steady_step >= len(self.steps):
            raise ValueError(f"steady_step {self.steady_step} is past the last step (index {len(self.steps) - 1})")
        if self.duration_s > MAX_RUN_S:
            raise ValueError(
                f"the steps take {self.duration_s:.3g} s (connection ramps at connect_rate {self.connect_rate:.3g}/s "
                f"plus holds), over the {MAX_RUN_S:.0f} s a run may last"
            )
        return self


SimConnections = Annotated[int, Field(ge=1, le=MAX_SIM_CONNECTIONS)]


class SimulateSpec(Strict):
    calibration: str | None = Field(None, description="calibration file; omit in 'compare' to fit on its runs")
    connections: list[SimConnections] = Field(default_factory=lambda: [200, 2000, 10_000], min_length=1)
    events_per_connection: float | None = Field(None, ge=0, description="default: the workload's rate")
    duration_s: float = Field(60.0, gt=0, le=3600)
    replications: int = Field(5, ge=1, le=100)
    seed: int = 1
    nodes: int = Field(1, ge=1, le=64)
    log: Literal["full", "sampled", "histograms"] = Field(
        "full",
        description="event rows the model logs: every one, one connection's in 10, or merged into weighted "
        "histogram rows (for 100 000 connections; see model.sim.Rows)",
    )


# sweep key -> (kind, low, high): what lab/modelling.run_sweep understands, and its sane range
SWEEP_KEYS: dict[str, tuple[str, float, float]] = {
    "nodes": ("int", 1, 64),
    "connections": ("int", 1, MAX_SIM_CONNECTIONS),
    "flush_interval_ms": ("float", 1e-3, 60_000),
    "events_per_connection": ("float", 0, 1000),
    "batching": ("bool", 0, 1),
    "max_connections": ("int", 1, 1_000_000),  # SOCKET_MAX_CONNECTIONS per node: a changed setting
}


class SweepSpec(Strict):
    grid: dict[str, list[float]] = Field(min_length=1)
    target_connections: int = Field(10_000, ge=1, le=MAX_SIM_CONNECTIONS)

    @field_validator("grid")
    @classmethod
    def _grid(cls, grid: dict[str, list[float]]) -> dict[str, list[float]]:
        for key, values in grid.items():
            if key not in SWEEP_KEYS:
                raise ValueError(f"unknown sweep key {key!r}; known: {', '.join(SWEEP_KEYS)}")
            kind, low, high = SWEEP_KEYS[key]
            if not values:
                raise ValueError(f"{key}: give at least one value")
            for v in values:
                if not low <= v <= high or (kind != "float" and v != int(v)):
                    what = {"int": "whole numbers", "bool": "0/1 (false/true)", "float": "numbers"}[kind]
                    raise ValueError(f"{key}: {v:g} is out of range; expected {what} from {low:g} to {high:g}")
        runs = math.prod(len(v) for v in grid.values())
        if runs > MAX_SWEEP_RUNS:
            raise ValueError(f"the grid has {runs} combinations; at most {MAX_SWEEP_RUNS}")
        return grid


class Scenario(Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$", max_length=80)
    question: str = Field(min_length=10)
    kind: Literal["measure", "simulate", "compare", "sweep"]
    slo: SLOSpec = Field(default_factory=SLOSpec)
    servers: list[ServerSpec] = Field(default_factory=list)
    workload: WorkloadSpec | None = None
    simulate: SimulateSpec | None = None
    sweep: SweepSpec | None = None
    validate_on: list[str] = Field(default_factory=list, description="server labels held out of calibration")
    report: bool = True
    cluster: str | None = Field(
        None, description="Dask scheduler tcp://HOST:PORT for simulations (DASK_SCHEDULER_ADDRESS, --cluster win)"
    )

    @field_validator("cluster")
    @classmethod
    def _cluster(cls, value: str | None) -> str | None:
        from model.executor import check_address

        return None if value is None else check_address(value)

    @model_validator(mode="after")
    def _kind_needs(self) -> Scenario:
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
        if self.kind in ("simulate", "sweep") and self.simulate is not None and not self.simulate.calibration:
            raise ValueError(f"kind '{self.kind}' needs simulate.calibration (a file written by caplab calibrate)")
        if self.kind in ("simulate", "sweep") and self.workload is None:
            raise ValueError(f"kind '{self.kind}' needs 'workload' (the load the model is driven with)")
        if self.kind == "sweep" and self.simulate is not None:
            ignored = sorted({"connections", "events_per_connection"} & self.simulate.model_fields_set)
            if ignored:
                raise ValueError(
                    f"a sweep ignores simulate.{' and simulate.'.join(ignored)}: give them in sweep.grid "
                    "(or sweep.target_connections)"
                )
        return self


# -- what the scenario will do: checked before anything starts -------------------------------------

Problem = tuple[tuple, str]  # (field path, why)


def _calibration_problem(path: str) -> str | None:
    from model.parameters import Calibration

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return f"cannot read {path!r}: {exc.strerror or exc}"
    try:
        Calibration.model_validate_json(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        why = f"{where}: {err['msg']}" if where else err["msg"]
        return f"{path!r} is not a calibration file (caplab calibrate writes them): {why}"
    return None


def _simulated_runs(sc: Scenario) -> list[tuple[tuple, str, float, float]]:
    """Every simulated replication the scenario implies: (field path to blame, what, events, simulated
    seconds), as lab/modelling.py builds them."""
    wl, sim = sc.workload, sc.simulate
    if wl is None or sim is None:
        return []
    out = []
    rate = sim.events_per_connection if sim.events_per_connection is not None else wl.base_rate
    rate_field = ("simulate", "events_per_connection") if sim.events_per_connection is not None else ("workload",)
    if sc.kind in ("compare", "simulate"):
        for n in sim.connections:
            what = f"simulating {n} connections at {rate:.3g} events/s each for {sim.duration_s:g} s"
            path = rate_field if sim.events_per_connection is not None else ("simulate", "connections")
            out.append((path, what, n * rate * sim.duration_s, n / wl.connect_rate + sim.duration_s))
        top = max(2 * max(sim.connections), 100)
        targets = [n for n in NODE_RAMP_TARGETS if n <= top]
        events = rate * NODE_RAMP_HOLD_S * sum(targets)
        what = f"the node-capacity ramp to {targets[-1]} connections at {rate:.3g} events/s each"
        out.append((rate_field, what, events, len(targets) * NODE_RAMP_HOLD_S + targets[-1] / NODE_RAMP_CONNECT_RATE))
    if sc.kind == "compare":  # held-out validation simulates the measured steps
        events = sum(
            (s.events_per_second if s.events_per_second is not None else wl.base_rate * s.connections) * s.hold_s
            for s in wl.steps
        )
        out.append((("workload",), "simulating the measured steps", events, wl.duration_s))
    if sc.kind == "sweep" and sc.sweep is not None:
        grid = sc.sweep.grid
        for combo in itertools.product(*grid.values()):
            setting = dict(zip(grid, combo, strict=True))
            m = float(setting.get("connections", sc.sweep.target_connections))
            r = setting.get("events_per_connection", wl.base_rate)
            what = f"the sweep point {setting} ({m:g} connections at {r:.3g} events/s each for {sim.duration_s:g} s)"
            out.append((("sweep", "grid"), what, m * r * sim.duration_s, m / wl.connect_rate + sim.duration_s))
    return out


def runnable_problems(sc: Scenario) -> list[Problem]:
    """What would stop the scenario after it started: the generator's load spec, the model's workload,
    the calibration file, and the size of every simulation."""
    problems: list[Problem] = []
    if sc.workload is not None and sc.kind in ("measure", "compare"):
        from .measure import load_spec

        for i, server in enumerate(sc.servers):
            try:
                load_spec(sc.workload, [f"http://127.0.0.1:{9 + k}" for k in range(server.nodes)])
            except ValidationError as exc:
                err = exc.errors()[0]
                loc = tuple(err["loc"])
                path = ("workload", *loc) if loc and loc[0] in WorkloadSpec.model_fields else ("servers", i)
                problems.append((path, f"the load generator refuses it: {err['msg'].removeprefix('Value error, ')}"))
                break
    if sc.workload is not None and sc.kind in ("simulate", "sweep"):
        from model.workload import Workload

        try:
            Workload.model_validate(sc.workload.model_dump())
        except ValidationError as exc:
            problems.append((("workload",), f"the model refuses it: {exc.errors()[0]['msg']}"))
    if sc.simulate is not None and sc.simulate.calibration:
        why = _calibration_problem(sc.simulate.calibration)
        if why:
            problems.append((("simulate", "calibration"), why))
    for path, what, events, seconds in _simulated_runs(sc):
        if not events <= MAX_SIM_EVENTS:
            problems.append(
                (
                    path,
                    f"{what} is {events:.3g} events in one replication; the model takes at most {MAX_SIM_EVENTS:.0e}",
                )
            )
            break
        if not seconds <= MAX_RUN_S:
            problems.append((path, f"{what} lasts {seconds:.3g} simulated s (ramp and hold); at most {MAX_RUN_S:.0f}"))
            break
    return problems


# -- parsing ---------------------------------------------------------------------------------------


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


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _decode(data: bytes, source: str) -> str:
    if data[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\0" in data[:4]:
        raise ScenarioError(f"{source}: UTF-16 or UTF-32 text, not UTF-8; save the file as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ScenarioError(
            f"{source}:{line}: not UTF-8: byte {data[exc.start]:#04x} at offset {exc.start}; save the file as UTF-8"
        ) from None


def _check_depth(text: str, source: str) -> None:
    """Refuse deep nesting from the token stream (iterative: a parser's recursion never sees it)."""
    opens = (
        yaml.BlockMappingStartToken,
        yaml.BlockSequenceStartToken,
        yaml.FlowMappingStartToken,
        yaml.FlowSequenceStartToken,
    )
    closes = (yaml.BlockEndToken, yaml.FlowMappingEndToken, yaml.FlowSequenceEndToken)
    depth = 0
    try:
        for tok in yaml.scan(text, Loader=yaml.SafeLoader):
            if isinstance(tok, opens):
                depth += 1
                if depth > MAX_DEPTH:
                    raise ScenarioError(
                        f"{source}:{tok.start_mark.line + 1}: nested more than {MAX_DEPTH} levels deep "
                        "(the shipped scenarios use 4)"
                    )
            elif isinstance(tok, closes):
                depth -= 1
    except yaml.YAMLError:
        return  # the parser reports it, with its line


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_graph(root: yaml.Node, source: str) -> None:
    """Values after expanding aliases (an alias bomb is a few lines), recursive aliases, duplicate keys."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if done:
            on_path.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in _children(node))
            if sizes[id(node)] > MAX_VALUES:
                raise ScenarioError(
                    f"{source}:{node.start_mark.line + 1}: over {MAX_VALUES} values once YAML aliases are expanded"
                )
            continue
        if id(node) in sizes:
            continue
        if id(node) in on_path:
            raise ScenarioError(f"{source}:{node.start_mark.line + 1}: a YAML alias refers to itself")
        on_path.add(id(node))
        stack.append((node, True))
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key, _value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.value in seen:
                        raise ScenarioError(
                            f"{source}:{key.start_mark.line + 1}: {key.value}: duplicate key "
                            f"(also on line {seen[key.value]})"
                        )
                    seen[key.value] = key.start_mark.line + 1
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)


def _yaml_error(exc: yaml.YAMLError, text: str, source: str) -> ScenarioError:
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow
        line = text[: exc.position].count("\n") + 1
        what = f"character {chr(exc.character)!r}: {exc.reason}" if isinstance(exc.character, int) else exc.reason
        return ScenarioError(f"{source}:{line}: not valid YAML: {_one_line(what)}")
    mark = getattr(exc, "problem_mark", None)
    where = f":{mark.line + 1}" if mark else ""
    return ScenarioError(f"{source}{where}: not valid YAML: {_one_line(getattr(exc, 'problem', None) or exc)}")


def _format(source: str, root: yaml.Node | None, path: tuple, msg: str, got: str = "") -> str:
    field = ".".join(str(p) for p in path) or "(top level)"
    line = _line_of(root, path)
    return f"{source}{f':{line}' if line else ''}: {field}: {_one_line(msg)}{got}"


def parse_scenario(text: str, source: str = "<scenario>") -> Scenario:
    """Parse and check a scenario; :class:`ScenarioError` (one line, every problem) if it cannot run."""
    _check_depth(text, source)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is not None:
            _check_graph(root, source)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, text, source) from None
    except RecursionError:
        raise ScenarioError(f"{source}: nested too deeply to parse") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: a scenario is a mapping (name, question, kind, ...)")
    try:
        sc = Scenario.model_validate(data)
    except ValidationError as exc:
        msgs = []
        for err in exc.errors():
            path = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-after")))
            msg = err["msg"].removeprefix("Value error, ")
            got = ""
            if err["type"] not in ("missing", "value_error") and not isinstance(err.get("input"), dict | list):
                shown = repr(err["input"])
                got = f" (got {shown if len(shown) <= 60 else shown[:57] + '...'})"
            msgs.append(_format(source, root, path, msg, got))
        raise ScenarioError(_joined(msgs)) from None
    problems = runnable_problems(sc)
    if problems:
        raise ScenarioError(_joined([_format(source, root, path, msg) for path, msg in problems]))
    return sc


def _joined(msgs: list[str], most: int = 5) -> str:
    more = f"; and {len(msgs) - most} more" if len(msgs) > most else ""
    return "; ".join(msgs[:most]) + more


def load_scenario(path: Path | str) -> Scenario:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SCENARIO_BYTES + 1)
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_SCENARIO_BYTES:
        raise ScenarioError(f"{path}: over {MAX_SCENARIO_BYTES // 1024} KiB; a scenario is a short YAML file")
    return parse_scenario(_decode(data, str(path)), str(path))
