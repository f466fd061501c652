"""Broken scenario files: every one is a one-line error before anything starts.

The shipped scenarios are mutated (bytes, encodings, nesting, and field by field); ``caplab run``
must exit 2 with exactly one line on stderr that names the file, no traceback, and no run or report
folder. A Hypothesis test then tries random edits of random fields.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventlog import create_run
from lab import cli
from lab.servers import ServerProcess

ROOT = Path(__file__).parent.parent
SHIPPED = sorted(ROOT.joinpath("scenarios").glob("*.yaml"))
DATA = {p.stem: yaml.safe_load(p.read_text()) for p in SHIPPED}


class Started(BaseException):
    """The runner was reached: validation let the file through. (A BaseException: the CLI turns any
    Exception into its one-line "internal error", and this tripwire must get past that.)"""


def _refuse_to_start(*_a, **_k):
    raise Started


def run_cli(path: Path, work: Path) -> tuple[int, str]:
    """``caplab run PATH`` in this process, with the runner and servers replaced by tripwires."""
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        mp.setattr("lab.runner.run_scenario", _refuse_to_start)
        mp.setattr(ServerProcess, "start", _refuse_to_start)
        mp.chdir(ROOT)  # the shipped what-if names its calibration relative to the repository
        try:
            code = cli.main(["run", str(path), "--runs", str(work / "runs"), "--reports", str(work / "reports")])
        except Started:
            code = 0
    return code, err.getvalue()


def assert_one_line_error(path: Path, work: Path, code: int, err: str) -> None:
    assert code == 2, f"accepted: {path.read_bytes()[:300]!r}"
    assert "Traceback" not in err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith(f"caplab run: error: scenario {path}"), err
    assert not (work / "runs").exists() and not (work / "reports").exists()


# -- mutations -------------------------------------------------------------------------------------
# name -> (section the edit needs, or None for any file; edit). A raw edit gets the file's text and
# returns bytes; a field edit changes the parsed data in place (the file is dumped again).

Edit = Callable[[str, dict, Path], "bytes | None"]


def raw(fn: Callable[[str], bytes]) -> tuple[None, Edit]:
    return None, lambda text, data, tmp: fn(text)


def field(section: str | None, fn: Callable[[dict, Path], None]) -> tuple[str | None, Edit]:
    def edit(text: str, data: dict, tmp: Path) -> bytes:
        data = copy.deepcopy(data)
        fn(data, tmp)
        return yaml.safe_dump(data, sort_keys=False).encode()

    return section, edit


def _bomb(text: str) -> bytes:
    lines = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    return (text + "\n".join(lines) + "\nvalidate_on: *a8\n").encode()  # 10^9 labels, a few lines


def _deep_block(text: str) -> bytes:
    return (text + "extra:\n" + "".join("  " * i + f"k{i}:\n" for i in range(60)) + "  " * 60 + "v: 1\n").encode()


def _cal(content: bytes | None) -> Callable[[dict, Path], None]:
    def edit(d: dict, tmp: Path) -> None:
        path = tmp / "cal.json"
        if content is None:
            path.mkdir(exist_ok=True)  # a folder, not a file
        elif content != b"missing":
            path.write_bytes(content)
        d["simulate"]["calibration"] = str(path)

    return edit


def _set(section: str, key: str, value) -> Callable[[dict, Path], None]:
    def edit(d: dict, tmp: Path) -> None:
        d[section][key] = value

    return edit


def _server_set(**values) -> Callable[[dict, Path], None]:
    def edit(d: dict, tmp: Path) -> None:
        d["servers"][0]["set"] = {**d["servers"][0].get("set", {}), **values}

    return edit


def _step(**values) -> Callable[[dict, Path], None]:
    def edit(d: dict, tmp: Path) -> None:
        d["workload"]["steps"][0].update(values)

    return edit


def _grid(key: str, value) -> Callable[[dict, Path], None]:
    def edit(d: dict, tmp: Path) -> None:
        d["sweep"]["grid"][key] = value

    return edit


MUTATIONS: dict[str, tuple[str | None, Edit]] = {
    # bytes and encodings
    "latin-1 byte": raw(lambda t: b"# caf\xe9\n" + t.encode()),
    "utf-16": raw(lambda t: t.encode("utf-16")),
    "utf-16-le, no BOM": raw(lambda t: t.encode("utf-16-le")),
    "utf-32": raw(lambda t: t.encode("utf-32")),
    "NUL byte": raw(lambda t: t.replace("question", "ques\0tion", 1).encode()),
    "empty file": raw(lambda t: b""),
    "cut in half": raw(lambda t: t[: len(t) // 2].encode()),
    "a list, not a mapping": raw(lambda t: b"- just\n- a list\n"),
    "tab indentation": raw(lambda t: t.replace("\n  ", "\n\t", 1).encode()),
    "duplicate key": raw(lambda t: (t + "kind: measure\n").encode()),
    "unclosed bracket": raw(lambda t: (t + "extra: [1, 2\n").encode()),
    "deep flow nesting": raw(lambda t: (t + "extra: " + "[" * 5000 + "]" * 5000 + "\n").encode()),
    "deep block nesting": raw(_deep_block),
    "alias bomb": raw(_bomb),
    "over 64 KiB": raw(lambda t: (t + "# " + "x" * 70_000 + "\n").encode()),
    # top level
    "unknown field": field(None, lambda d, tmp: d.update(colour="blue")),
    "kind unknown": field(None, lambda d, tmp: d.update(kind="measur")),
    "name with spaces": field(None, lambda d, tmp: d.update(name="my scenario")),
    "question a number": field(None, lambda d, tmp: d.update(question=5)),
    "slo p95 negative": field(None, lambda d, tmp: d.update(slo={"p95_ms": -1})),
    "slo p95 nan": field(None, lambda d, tmp: d.update(slo={"p95_ms": math.nan})),
    "validate_on unknown label": field(None, lambda d, tmp: d.update(validate_on=["nobody"])),
    "workload null": field(None, lambda d, tmp: d.update(workload=None)),
    # workload
    "mix {}": field("workload", _set("workload", "mix", {})),
    "mix all zero": field("workload", _set("workload", "mix", {"echo": 0, "chat": 0})),
    "mix negative": field("workload", _set("workload", "mix", {"echo": -1, "chat": 2})),
    "mix nan": field("workload", _set("workload", "mix", {"echo": math.nan})),
    "mix infinite": field("workload", _set("workload", "mix", {"echo": math.inf, "chat": 1})),
    "mix unknown event": field("workload", _set("workload", "mix", {"shout": 1})),
    "chat_to room without rooms": field("workload", _set("workload", "chat_to", "room")),
    "connect_rate 1e-300": field("workload", _set("workload", "connect_rate", 1e-300)),
    "connect_rate 0": field("workload", _set("workload", "connect_rate", 0)),
    "three hour-long steps": field("workload", _set("workload", "steps", [{"connections": 10, "hold_s": 3600}] * 3)),
    "steps []": field("workload", _set("workload", "steps", [])),
    "steps a string": field("workload", _set("workload", "steps", "many")),
    "connections 1e12": field("workload", _step(connections=10**12)),
    "connections 0": field("workload", _step(connections=0)),
    "hold_s negative": field("workload", _step(hold_s=-5)),
    "step rate negative": field("workload", _step(events_per_second=-1)),
    "events_per_second negative": field("workload", _set("workload", "events_per_second", -1)),
    "events_per_second infinite": field("workload", _set("workload", "events_per_second", math.inf)),
    "workers 0": field("workload", _set("workload", "workers", 0)),
    "workers 99": field("workload", _set("workload", "workers", 99)),
    "companies 0": field("workload", _set("workload", "companies", 0)),
    "payload 10 MB": field("workload", _set("workload", "payload_bytes", 10_000_000)),
    "rooms 51": field("workload", _set("workload", "rooms_per_connection", 51)),
    "steady_step past the end": field("workload", _set("workload", "steady_step", 99)),
    "arrival bursty": field("workload", _set("workload", "arrival", "bursty")),
    # servers
    "set log_level loud": field("servers", _server_set(log_level="loud")),
    "set host 0.0.0.0": field("servers", _server_set(host="0.0.0.0")),
    "set port 80": field("servers", _server_set(port=80)),
    "set db": field("servers", _server_set(db="/tmp/other.db")),
    "set unknown setting": field("servers", _server_set(warp=9)),
    "set toggle maybe": field("servers", _server_set(batching="maybe")),
    "set batch_size -1": field("servers", _server_set(batch_size=-1)),
    "set a list": field("servers", lambda d, tmp: d["servers"][0].update(set=[1, 2])),
    "nodes 0": field("servers", lambda d, tmp: d["servers"][0].update(nodes=0)),
    "chat_node past the nodes": field(
        "servers", lambda d, tmp: (d["servers"][0].update(nodes=2), d["workload"]["steps"][0].update(chat_node=2))
    ),
    "profile turbo": field("servers", lambda d, tmp: d["servers"][0].update(profile="turbo")),
    "duplicate label": field("servers", lambda d, tmp: d["servers"].append(dict(d["servers"][0]))),
    "servers []": field("servers", lambda d, tmp: d.update(servers=[])),
    # simulate
    "simulate connections 1e12": field("simulate", _set("simulate", "connections", [10**12])),
    "simulate connections []": field("simulate", _set("simulate", "connections", [])),
    "simulate connections 0": field("simulate", _set("simulate", "connections", [0])),
    "simulate 1e9 events per connection": field("simulate", _set("simulate", "events_per_connection", 1e9)),
    "simulate duration 1e9 s": field("simulate", _set("simulate", "duration_s", 1e9)),
    "simulate replications 0": field("simulate", _set("simulate", "replications", 0)),
    "simulate nodes 0": field("simulate", _set("simulate", "nodes", 0)),
    "calibration missing": field("simulate", _cal(b"missing")),
    "calibration not JSON": field("simulate", _cal(b"not json {")),
    "calibration truncated": field("simulate", _cal(b'{"profile": "optimized", "cpu_per_')),
    "calibration not UTF-8": field("simulate", _cal(b'{"profile": "caf\xe9"}')),
    "calibration wrong fields": field("simulate", _cal(json.dumps({"colour": 1}).encode())),
    "calibration a folder": field("simulate", _cal(None)),
    # sweep
    "sweep nodes [0]": field("sweep", _grid("nodes", [0])),
    "sweep nodes [2.5]": field("sweep", _grid("nodes", [2.5])),
    "sweep unknown key": field("sweep", _grid("warp_factor", [1, 2])),
    "sweep empty values": field("sweep", _grid("nodes", [])),
    "sweep batching 2": field("sweep", _grid("batching", [2])),
    "sweep flush window negative": field("sweep", _grid("flush_interval_ms", [-5])),
    "sweep connections 1e12": field("sweep", _grid("connections", [10**12])),
    "sweep grid {}": field("sweep", lambda d, tmp: d["sweep"].update(grid={})),
    "sweep target 0": field("sweep", lambda d, tmp: d["sweep"].update(target_connections=0)),
    "sweep without a calibration": field("sweep", lambda d, tmp: d["simulate"].pop("calibration")),
}

CASES = [
    pytest.param(stem, name, id=f"{stem}: {name}")
    for stem, data in DATA.items()
    for name, (section, _edit) in MUTATIONS.items()
    if section is None or data.get(section)
]


def test_every_shipped_scenario_gets_every_applicable_mutation():
    assert len(SHIPPED) == 8 and len(CASES) >= 300  # validation, wakeups and contention (issue 11): the last three


@pytest.mark.parametrize(("stem", "name"), CASES)
def test_mutated_scenario_is_a_one_line_error(stem, name, tmp_path):
    path = tmp_path / f"{stem}.yaml"
    path.write_bytes(MUTATIONS[name][1](_text(stem), DATA[stem], tmp_path))
    assert_one_line_error(path, tmp_path, *run_cli(path, tmp_path))


def _text(stem: str) -> str:
    return next(p for p in SHIPPED if p.stem == stem).read_text()


def test_shipped_scenarios_pass_the_same_gate(tmp_path):
    for path in SHIPPED:
        code, err = run_cli(path, tmp_path)
        assert code == 0 and err == "", (path, err)


def test_unexpected_error_during_validation_is_one_line(tmp_path, monkeypatch):
    def boom(path):
        raise RuntimeError("something nobody foresaw\nwith a second line")

    monkeypatch.setattr("lab.scenario.load_scenario", boom)
    path = SHIPPED[0]
    code, err = run_cli(path, tmp_path)
    assert code == 2 and err.count("\n") == 1 and "RuntimeError: something nobody foresaw with a second line" in err


def test_reuse_of_a_missing_or_simulated_run_is_refused_before_anything(tmp_path):
    folders = ("--runs", str(tmp_path / "runs"), "--reports", str(tmp_path / "reports"))
    simulated, _ = create_run(tmp_path / "sims", "simulated", "sim")
    for reuse in (tmp_path / "nope", simulated):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = cli.main(["run", str(SHIPPED[0]), "--reuse", str(reuse), *folders])
        assert code == 2 and err.getvalue().count("\n") == 1 and str(reuse) in err.getvalue()
        assert not (tmp_path / "reports").exists()


@pytest.mark.parametrize("name", ["latin-1 byte", "deep flow nesting", "connect_rate 1e-300"])
def test_real_command_prints_one_line(name, tmp_path):
    """The same through ``caplab run`` in its own process (no tripwires: nothing may start)."""
    stem = "quickstart"
    path = tmp_path / f"{stem}.yaml"
    path.write_bytes(MUTATIONS[name][1](_text(stem), DATA[stem], tmp_path))
    folders = ("--runs", str(tmp_path / "runs"), "--reports", str(tmp_path / "reports"))
    res = subprocess.run(
        [sys.executable, "-m", "lab.cli", "run", str(path), *folders],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert_one_line_error(path, tmp_path, res.returncode, res.stderr)


# -- random edits ----------------------------------------------------------------------------------

JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**13), 10**13),
    st.floats(),
    st.text(max_size=12),
    st.just({}),
    st.just([]),
    st.lists(st.one_of(st.integers(-3, 10**13), st.floats()), max_size=3),
    st.dictionaries(st.sampled_from(["echo", "chat", "nodes", "connections", "log_level"]), st.integers(-2, 99)),
)


@st.composite
def mutated(draw) -> tuple[str, str]:
    stem = draw(st.sampled_from(sorted(DATA)))
    data = copy.deepcopy(DATA[stem])
    node = data
    while True:
        keys = sorted(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = draw(st.sampled_from(keys))
        child = node[key]
        if isinstance(child, dict | list) and child and draw(st.booleans()):
            node = child
            continue
        if isinstance(node, dict) and draw(st.integers(0, 4)) == 0:
            del node[key]
        else:
            node[key] = draw(JUNK)
        break
    return stem, yaml.safe_dump(data)


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_random_edits_are_refused_in_one_line_or_accepted(case):
    stem, text = case
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path = work / f"{stem}.yaml"
        path.write_text(text)
        code, err = run_cli(path, work)
        if code == 0:  # a harmless edit: the runner was reached, nothing else was printed
            assert err == ""
        else:
            assert_one_line_error(path, work, code, err)
