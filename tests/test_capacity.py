"""The one capacity answer: a node's capacity from replicated ramps, capped by its limit; nodes needed."""

from __future__ import annotations

import pytest

from eventlog.capacity import NodeCapacity, capacity_answer, node_capacity_text


def test_node_never_counts_for_more_than_its_connection_limit():
    # the ramps held 2500-3000 within the SLO, but the optimized node refuses the 2001st connection
    cap = NodeCapacity((2500, 3000, 2500), node_limit=2000)
    assert cap.per_node == 2000
    assert cap.limited_by.startswith("node connection limit 2000")
    assert cap.nodes(10_000) == 6  # 5 + the spare, never 4 + 1 at 2500 per node
    assert "limited by node connection limit 2000" in node_capacity_text(cap)


def test_answer_believes_the_least_ramp_and_shows_the_spread():
    cap = NodeCapacity((1500, 2000, 2000, 1500, 2000))
    a = cap.answer(10_000)
    assert (a.nodes, a.best_case) == (8, 6)  # ceil(10000/1500) + 1, ceil(10000/2000) + 1
    assert (a.at_less_load, a.at_more_load) == (7, 9)  # 8000 and 12000 connections
    assert a.text() == "8 nodes with N+1 (6-8 over 5 ramps; 7 at -20 % load, 9 at +20 %)"


def test_no_answer_when_one_node_holds_nothing():
    a = NodeCapacity((0, 100)).answer(200)
    assert a.nodes is None and a.text().startswith("no answer")


def test_one_ramp_says_it_has_no_spread_and_exact_fits_are_not_rounded_up():
    a = NodeCapacity((2000,)).answer(2000)
    assert a.nodes == 2 and "1 ramp: no spread" in a.text()


def test_record_round_trips_and_keeps_the_old_key():
    cap = NodeCapacity((1000, 1500), node_limit=2000, lower_bound=False)
    rec = capacity_answer(cap, [200, 2000, 10_000])
    assert rec["nodes_needed_n_plus_1"] == {"200": 2, "2000": 3, "10000": 11}
    assert NodeCapacity.from_record(rec) == cap


def test_needs_a_ramp():
    with pytest.raises(ValueError, match="at least one ramp"):
        NodeCapacity(())


def _search_with(truth, reps=3, **kw):
    """Run a NodeSearch against a deployment whose replications meet the SLO from truth[r] nodes up."""
    from eventlog.capacity import NodeSearch

    s = NodeSearch(**kw)
    asked = []
    while (k := s.next()) is not None:
        asked.append(k)
        s.add(k, [k >= t for t in truth[:reps]])
    return s, asked


def test_deployment_search_bisects_down_from_a_pessimistic_ramp():
    # the ramps said 7 nodes; the deployment needs 4 in every replication, 3 in the luckiest
    s, asked = _search_with([4, 3, 4], connections=10_000, start=7)
    assert (s.fewest(), s.fewest_any()) == (4, 3)
    assert asked[0] == 7 and len(asked) <= 4  # log2 of the range, not a walk down


def test_deployment_search_doubles_up_from_an_optimistic_ramp_and_never_goes_under_the_limit():
    s, asked = _search_with([9, 9, 9], connections=10_000, start=2, least=5)
    assert asked[0] == 5  # 10 000 at 2000 per node: never fewer than 5
    assert s.fewest() == 9 and all(k >= 5 for k in asked)


def test_deployment_search_without_an_answer_says_so():
    from eventlog.capacity import MAX_NODES, NodeSearch, deployment_answer

    s, asked = _search_with([10**6] * 3, connections=10**7, start=100)
    assert s.fewest() is None and asked[-1] == MAX_NODES
    done = NodeSearch(1, start=1)
    done.add(1, [True])
    a = deployment_answer(s, done, done, replications=3)
    assert a.nodes is None and a.text().startswith("no answer: no simulated deployment")


def test_deployment_answer_text_and_record_round_trip():
    from eventlog.capacity import NodesAnswer, deployment_answer

    target, _ = _search_with([4, 3, 4], connections=10_000, start=7)
    less, _ = _search_with([3, 3, 3], connections=8000, start=6)
    more, _ = _search_with([5, 5, 4], connections=12_000, start=8)
    a = deployment_answer(target, less, more, replications=3)
    assert a.text() == "5 nodes with N+1 (4-5 over 3 replications; 4 at -20 % load, 6 at +20 %)"
    assert NodesAnswer.from_record(10_000, a.to_record()) == a


def test_a_search_the_node_limit_puts_past_max_nodes_gives_no_answer_and_text_says_no_answer():
    from eventlog.capacity import MAX_NODES, NodeSearch, deployment_answer

    s = NodeSearch(2000 * (MAX_NODES + 1), start=1, least=MAX_NODES + 1)
    assert s.next() is None and s.fewest() is None
    ok = NodeSearch(1, start=1)
    ok.add(1, [True])
    a = deployment_answer(ok, ok, s, replications=1)
    assert a.text().endswith("no answer at +20 %)")
