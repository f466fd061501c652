"""Event-log schema 2 (``recovered``, ``recovery_fail``): a run written before it still reads, and the
projections count the new kinds apart from pushes and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from eventlog import SCHEMA, benchmark_row, create_run, finish_run, read_run, step_table
from eventlog.schema import SCHEMA_VERSION
from lab.tables import format_row
from model.workload import Workload

ROOT = Path(__file__).parent.parent
V1_KINDS = [
    "connect_start",
    "connect_ok",
    "connect_fail",
    "disconnect",
    "send",
    "ack",
    "push",
    "timeout",
    "reject",
    "error",
    "sample",
]


def write_part(run_dir, rows: list[tuple], kinds: list[str], version: int) -> None:
    """rows: (t, kind, conn, name, latency_s, value); the kind dictionary and metadata as ``version`` wrote them."""
    names = sorted({r[3] for r in rows})
    schema = SCHEMA.with_metadata({b"caplab.schema_version": str(version).encode()})
    table = pa.Table.from_arrays(
        [
            pa.array([r[0] for r in rows], pa.float64()),
            pa.DictionaryArray.from_arrays(pa.array([kinds.index(r[1]) for r in rows], pa.int8()), pa.array(kinds)),
            pa.array([r[2] for r in rows], pa.int32()),
            pa.array([-1] * len(rows), pa.int16()),
            pa.DictionaryArray.from_arrays(pa.array([names.index(r[3]) for r in rows], pa.int32()), pa.array(names)),
            pa.array([r[4] for r in rows], pa.float64()),
            pa.array([0] * len(rows), pa.int32()),
            pa.array([r[5] for r in rows], pa.float64()),
        ],
        schema=schema,
    )
    pq.write_table(table, run_dir / "events" / "part-gen0-000000.parquet")


def rows_of_a_run(extra: list[tuple] = ()) -> list[tuple]:
    nan = float("nan")
    rows = [(0.0, "sample", -1, "step", nan, 2.0), (0.0, "connect_start", 0, "", nan, nan)]
    rows += [(0.01, "connect_ok", 0, "", 0.01, nan), (0.01, "sample", -1, "hold", nan, 2.0)]
    for i in range(40):
        t = 1.0 + i * 0.1
        rows += [(t, "send", 0, "chat", 0.0, nan), (t + 0.01, "ack", 0, "chat", 0.01, nan)]
        rows += [(t + 0.02, "push", 1, "chat", 0.02, nan)]
    rows += [*extra, (5.5, "sample", -1, "end", nan, 0.0)]
    return sorted(rows, key=lambda r: r[0])


def test_a_version_1_run_still_reads(tmp_path):
    """Before schema 2: no recovered kinds in the parts, no recover/churn_away_s in the load."""
    load = {"steps": [{"connections": 2, "hold_s": 5}], "events_per_second": 10, "churn_per_s": 0.0}
    run_dir, _ = create_run(tmp_path, "measured", "old", load=load, schema_version=1)
    write_part(run_dir, rows_of_a_run(), V1_KINDS, version=1)
    finish_run(run_dir, "complete")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["schema_version"] == 1 and "recover" not in manifest["load"]
    run = read_run(run_dir)
    row = benchmark_row(run.events, run.manifest)
    assert (row["pushes"], row["acks"], row["recovered"], row["recovery_failures"]) == (40, 40, 0, 0)
    assert step_table(run.events)["recovered"].tolist() == [0]
    assert "recovered" not in format_row(row)  # the terminal row reads as before
    wl = Workload.from_manifest(run.manifest)
    assert wl.recover is False and wl.churn_away_s == 0.0


def test_recovered_rows_are_counted_apart_from_pushes_and_errors(tmp_path):
    extra = [(2.0 + i * 0.1, "recovered", 1, "chat", 0.5, float("nan")) for i in range(10)]
    extra += [(2.5, "recovery_fail", 1, "overrun", float("nan"), float("nan"))]
    run_dir, _ = create_run(tmp_path, "measured", "new", load={"steps": [{"connections": 2, "hold_s": 5}]})
    write_part(run_dir, rows_of_a_run(extra), [*V1_KINDS, "recovered", "recovery_fail"], version=SCHEMA_VERSION)
    finish_run(run_dir, "complete")
    run = read_run(run_dir)
    row = benchmark_row(run.events, run.manifest)
    assert (row["pushes"], row["recovered"], row["recovery_failures"], row["errors"]) == (40, 10, 1, 0)
    assert "  recovered        10 (rooms not recovered: 1)" in format_row(row).splitlines()
    assert row["push_p95_ms"] == pytest.approx(20.0)  # the 0.5 s replays stay out of push latency
    steps = step_table(run.events)
    assert steps["recovered"].tolist() == [10] and steps["recovery_failures"].tolist() == [1]
    assert steps["error_rate"].tolist() == [0.0]


# -- where a user sets it: caplab load flags and scenario files ------------------------------------


def test_caplab_load_flags_set_recover_and_time_away():
    from lab.cli import build_parser
    from lab.errors import UsageError
    from lab.loadcli import spec_from_args

    parse = build_parser().parse_args
    base = ["load", "--tokens", "t.jsonl", "--url", "http://127.0.0.1:1"]
    spec = spec_from_args(parse([*base, "--churn", "2", "--churn-away", "0.5", "--recover"]), env={})
    assert (spec.recover, spec.churn_away_s, spec.churn_per_s) == (True, 0.5, 2.0)
    spec = spec_from_args(parse(base), env={})
    assert (spec.recover, spec.churn_away_s) == (False, 0.0)  # off unless asked: old command lines unchanged
    with pytest.raises(UsageError, match=r"^churn_away_s: Input should be greater than or equal to 0$"):
        spec_from_args(parse([*base, "--churn-away", "-1"]), env={})


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("recover", "maybe", "workload.recover: Input should be a valid boolean (got 'maybe')"),
        ("recover", 1, "workload.recover: Input should be a valid boolean (got 1)"),
        ("churn_away_s", -0.5, "workload.churn_away_s: Input should be greater than or equal to 0 (got -0.5)"),
    ],
)
def test_a_bad_recover_field_in_a_scenario_is_a_one_line_error(tmp_path, field, value, message):
    from lab.scenario import ScenarioError, load_scenario

    data = yaml.safe_load((ROOT / "scenarios" / "quickstart.yaml").read_text())
    data["workload"] |= {"churn_per_s": 2, field: value}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{path}:") and text.endswith(message), text


def test_a_scenario_workload_with_recover_validates(tmp_path):
    from lab.measure import load_spec
    from lab.scenario import load_scenario

    data = yaml.safe_load((ROOT / "scenarios" / "quickstart.yaml").read_text())
    data["workload"] |= {"churn_per_s": 2, "churn_away_s": 1.5, "recover": True}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    wl = load_scenario(path).workload
    assert (wl.recover, wl.churn_away_s) == (True, 1.5)
    spec = load_spec(wl, ["http://127.0.0.1:1"])  # what caplab run measures with
    assert (spec.recover, spec.churn_away_s) == (True, 1.5)
