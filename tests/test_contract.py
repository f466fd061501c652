"""The run contract (eventlog.load, eventlog.manifest): one definition of the load, the SLO and the
manifest, read back from the runs this lab committed before the contract was typed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from eventlog import (
    DEFAULT_MIX,
    MANIFEST_VERSION,
    SLO,
    Load,
    Manifest,
    ManifestError,
    companies_needed,
    create_run,
    generator_ok,
    read_manifest,
    read_run,
    update_manifest,
)
from lab.scenario import WorkloadSpec
from loadgen import LoadSpec
from model import Workload
from model.calibrate import calibrate

REFERENCE = Path(__file__).resolve().parent.parent / "notebooks" / "data" / "reference"
REFERENCE_RUNS = sorted((REFERENCE / "runs").glob("*/manifest.json"))
STEPS = [{"connections": 10, "hold_s": 1}]


def test_the_committed_version_1_manifests_are_read_with_their_load_and_slo():
    assert REFERENCE_RUNS, "the reference dataset holds measured runs"
    for path in REFERENCE_RUNS:
        raw = json.loads(path.read_text())
        assert "manifest_version" not in raw  # written before the contract was typed
        m = read_manifest(path.parent)
        assert m.manifest_version == 1 and m.source == "measured" and m.status == "complete"
        load = m.offered_load()  # version 1 kept the companies beside the load, as "users"
        assert (load.companies, load.users_per_company) == (raw["users"]["companies"], raw["users"]["per_company"])
        assert [s.connections for s in load.steps] == [s["connections"] for s in raw["load"]["steps"]]
        assert load.mix == raw["load"]["mix"]
        assert SLO.from_manifest(m) == SLO(**raw["slo"])
        assert m.server is not None and m.server.settings["batch_size"] == raw["server"]["settings"]["batch_size"]
        assert m.generator == raw["generator"]  # fields the model does not name are kept
        assert Workload.from_manifest(m).company_users == raw["users"]["per_company"]


def test_a_version_1_run_calibrates_and_rewrites_as_the_current_version(tmp_path):
    src = REFERENCE_RUNS[0].parent
    shutil.copytree(src, tmp_path / src.name)
    run = read_run(tmp_path / src.name)
    cal = calibrate([run])
    assert cal.batch_size == run.manifest.server.settings["batch_size"]  # from the run, not assumed
    update_manifest(run.path, note="x")
    again = read_manifest(run.path)
    assert again.note == "x" and again.offered_load() == run.manifest.offered_load()


def test_a_run_without_the_settings_the_model_needs_is_refused_by_name(tmp_path):
    src = REFERENCE_RUNS[0].parent
    shutil.copytree(src, tmp_path / src.name)
    run = read_run(tmp_path / src.name)
    del run.manifest.server.settings["ping_timeout_s"]
    with pytest.raises(ValueError, match="records no server setting ping_timeout_s"):
        calibrate([run])


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"manifest_version": MANIFEST_VERSION + 1}, "newer than this caplab reads"),
        ({"status": "paused"}, "not a valid run manifest: status"),
        ({"slo": {"p95_ms": -1}}, "not a valid run manifest: slo.p95_ms"),
        ({"clock": "soon"}, "not a valid run manifest: clock"),
    ],
)
def test_a_manifest_that_cannot_be_read_is_one_line_naming_the_file(tmp_path, change, expected):
    run_dir, manifest = create_run(tmp_path, "measured", "x")
    (run_dir / "manifest.json").write_text(json.dumps({**manifest.json_dict(), **change}))
    with pytest.raises(ManifestError, match=expected) as exc:
        read_manifest(run_dir)
    assert str(run_dir / "manifest.json") in str(exc.value) and "\n" not in str(exc.value)


def test_create_run_writes_the_current_version_and_typed_fields(tmp_path):
    run_dir, m = create_run(tmp_path, "simulated", "x", slo={"p95_ms": 80}, load=Load(steps=STEPS, events_per_second=5))
    assert isinstance(m, Manifest) and m.manifest_version == MANIFEST_VERSION
    back = read_manifest(run_dir)
    assert back.slo == SLO(p95_ms=80) and back.offered_load().events_per_second == 5
    with pytest.raises(ValueError, match="source"):
        create_run(tmp_path, "guessed", "x")


def test_one_load_definition_with_one_default_mix():
    generator = LoadSpec(url="http://127.0.0.1:1", steps=STEPS)
    model = Workload(steps=STEPS, events_per_second=100)
    scenario = WorkloadSpec(steps=STEPS, events_per_second=100)
    for load in (generator, model, scenario):
        assert isinstance(load, Load)
        assert load.mix == DEFAULT_MIX and load.connect_rate == 200 and load.companies == 4
    assert Load.of(generator.model_dump()) == Load.of(scenario.model_dump())


def test_users_and_companies_are_rounded_up():
    load = Load(steps=[{"connections": 10, "hold_s": 1}], events_per_second=1, companies=4)
    assert load.company_users == 3  # ceil(10 / 4): every connection has a user of its own
    assert [load.company_of(c) for c in range(10)] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
    assert companies_needed(1001) == 3 and companies_needed(1000) == 2 and companies_needed(1, at_least=4) == 4


def test_slo_and_generator_health_have_one_definition():
    assert SLO.from_manifest({}) == SLO() == SLO(p95_ms=120, error_rate_pct=0.1)
    assert SLO(p95_ms=250).p95_s == 0.25 and SLO(error_rate_pct=1).error_rate == 0.01
    assert generator_ok(float("nan"), float("nan")) and generator_ok(89.9, 49.9)
    assert not generator_ok(90, 1) and not generator_ok(1, 50)


def _gen_cpu_log(tmp_path: Path, name: str, new_names: bool) -> float:
    """Two workers, each at 40 % of a core for 10 s, written either way; returns the row's gen CPU %."""
    from eventlog import EventWriter, benchmark_row
    from eventlog.schema import gen_cpu_name

    run_dir, m = create_run(tmp_path / name, "measured", name)
    with EventWriter(run_dir, "w", t0=m.monotonic_t0) as w:
        w.row("sample", 0.0, name="step", value=1.0)
        for worker in (0, 1):
            for t in (0.0, 10.0):
                if new_names:
                    w.row("sample", t, name=gen_cpu_name(worker), value=0.4 * t)
                else:  # schema 1: the worker id in the conn column
                    w.row("sample", t, conn=worker, name="gen_cpu_seconds", value=0.4 * t)
        w.row("sample", 10.0, name="end", value=0.0)
    run = read_run(run_dir)
    return benchmark_row(run.events, run.manifest)["gen_cpu_pct"]


def test_generator_cpu_is_one_series_per_worker_in_old_and_new_runs(tmp_path):
    assert _gen_cpu_log(tmp_path, "old", new_names=False) == pytest.approx(80.0)
    assert _gen_cpu_log(tmp_path, "new", new_names=True) == pytest.approx(80.0)
