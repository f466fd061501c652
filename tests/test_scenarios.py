"""Scenario files: every shipped one validates; broken ones say which field, where and why."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.scenario import ScenarioError, load_scenario, parse_scenario

SHIPPED = sorted(Path(__file__).parent.parent.joinpath("scenarios").glob("*.yaml"))
GOOD = """\
name: t
question: does this validate at all?
kind: measure
servers:
  - {label: a, profile: baseline}
workload:
  steps: [{connections: 10, hold_s: 1}]
  events_per_second: 5
"""


def test_ships_the_five_examples():
    assert {p.stem for p in SHIPPED} >= {"quickstart", "before-after", "capacity", "ablation", "what-if"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_scenarios_validate(path):
    sc = load_scenario(path)
    assert sc.name == path.stem and len(sc.question) > 20


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.replace("kind: measure", "kind: measur"), r"<t>:3: kind: Input should be 'measure'"),
        (lambda s: s.replace("question: does this validate at all?\n", ""), r"question: Field required"),
        (
            lambda s: s.replace("{connections: 10, hold_s: 1}", "{connections: -1, hold_s: 1}"),
            r"<t>:7: workload\.steps\.0\.connections: Input should be greater than or equal to 1 \(got -1\)",
        ),
        (
            lambda s: s.replace("profile: baseline}", "profile: baseline, set: {batching: maybe}}"),
            r"servers\.0\.set: toggle batching='maybe': expected on/off",
        ),
        (
            lambda s: s.replace("profile: baseline}", "profile: baseline, set: {warp: 9}}"),
            r"servers\.0\.set: unknown setting 'warp'",
        ),
        (lambda s: s + "colour: blue\n", r"colour: Extra inputs are not permitted"),
        (lambda s: s.replace("kind: measure", "kind: compare"), r"kind 'compare' needs 'simulate'"),
        (lambda s: s + "validate_on: [zz]\n", r"validate_on names 'zz'"),
        (lambda s: s.replace("events_per_second: 5", "events_per_second: [5"), r"<t>:9: not valid YAML"),
        (lambda s: "- just\n- a list\n", r"a scenario is a mapping"),
    ],
)
def test_broken_scenarios_name_the_field(edit, message):
    with pytest.raises(ScenarioError, match=message):
        parse_scenario(edit(GOOD), "<t>")


def test_missing_file(tmp_path):
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "nope.yaml")


def test_good_scenario_parses():
    sc = parse_scenario(GOOD, "<t>")
    assert sc.workload.company_users == 3 and sc.slo.p95_ms == 120
