"""How many nodes: the one capacity answer every artifact prints (report, notebooks, CLI, README).

A node's capacity is what it held within the SLO on replicated step ramps, never more than its configured
connection limit (``SOCKET_MAX_CONNECTIONS``): a node that refuses the 2001st connection does not count for
2500 however fast it is. The answer for a target load is the nodes that carry it when every replication's
ramp is believed (the least ramp), plus the N+1 spare; the spread is what the most favourable ramp would
need, and the sensitivity is the answer at 20 % less and 20 % more load.

When the model can simulate the deployment itself (several nodes joined by Redis, each holding its share
of every company), :class:`NodeSearch` checks that estimate: the answer becomes the fewest nodes on which
every replication of the simulated deployment meets the SLO, the same question the what-if sweep asks.
A one-node ramp puts a company's whole room on one node, so its fan-out comes in bigger bursts than on a
deployment; its capacity is where the search starts, not the answer.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

LOAD_SENSITIVITY = 0.2  # the answer is also given at (1 -/+ this) x the target load
SPARE_NODES = 1  # N+1: one node may fail or be drained
MAX_NODES = 256  # a deployment search gives up past this many nodes (no answer)


@dataclass(frozen=True)
class NodeCapacity:
    """Connections one node holds: each replication's ramp (SLO only) and the node's configured limit."""

    per_ramp: tuple[int, ...]
    node_limit: int | None = None  # None: the node enforces no connection limit
    lower_bound: bool = False  # every ramp held its highest step: the node may hold more

    def __post_init__(self) -> None:
        if not self.per_ramp:
            raise ValueError("node capacity needs at least one ramp")

    def _capped(self, n: int) -> int:
        return min(n, self.node_limit) if self.node_limit is not None else n

    @property
    def slo_connections(self) -> int:
        """What held the SLO in every replication (the least ramp), before the node's limit."""
        return min(self.per_ramp)

    @property
    def per_node(self) -> int:
        """Connections one node counts for: the least ramp, capped by the node's limit."""
        return self._capped(self.slo_connections)

    @property
    def best_per_node(self) -> int:
        """The most favourable ramp, capped by the node's limit (the spread's other end)."""
        return self._capped(max(self.per_ramp))

    @property
    def limited_by(self) -> str:
        if self.node_limit is not None and self.node_limit < self.slo_connections:
            return f"node connection limit {self.node_limit} (SOCKET_MAX_CONNECTIONS)"
        return "SLO"

    def nodes(self, connections: float, spare: int = SPARE_NODES) -> int | None:
        """Nodes for ``connections`` with ``spare`` nodes over; None when one node holds nothing in the SLO."""
        return _nodes(connections, self.per_node, spare)

    def answer(self, connections: int, spare: int = SPARE_NODES) -> NodesAnswer:
        return NodesAnswer(
            connections=connections,
            nodes=self.nodes(connections, spare),
            best_case=_nodes(connections, self.best_per_node, spare),
            at_less_load=self.nodes(connections * (1 - LOAD_SENSITIVITY), spare),
            at_more_load=self.nodes(connections * (1 + LOAD_SENSITIVITY), spare),
            ramps=len(self.per_ramp),
            spare=spare,
        )

    def to_record(self) -> dict[str, Any]:
        return {
            "connections_per_node": self.per_node,
            "connections_per_node_each_replication": list(self.per_ramp),
            "slo_connections_per_node": self.slo_connections,
            "node_limit": self.node_limit,
            "limited_by": self.limited_by,
            "lower_bound": self.lower_bound,
        }

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> NodeCapacity:
        ramps = rec.get("connections_per_node_each_replication") or [rec["connections_per_node"]]
        return cls(tuple(int(n) for n in ramps), rec.get("node_limit"), bool(rec.get("lower_bound", False)))


def _nodes(connections: float, per_node: int, spare: int) -> int | None:
    if per_node <= 0:
        return None
    return max(1, math.ceil(connections / per_node - 1e-9)) + spare


@dataclass(frozen=True)
class NodesAnswer:
    """Nodes needed for one target load, with the spread over ramps and the answer at -/+20 % load."""

    connections: int
    nodes: int | None  # with the spare
    best_case: int | None  # what the most favourable ramp would need
    at_less_load: int | None
    at_more_load: int | None
    ramps: int  # replications behind the spread
    spare: int
    basis: str = "ramps"  # "ramps": one node's ramps scaled; "deployment": the deployment simulated

    @property
    def without_spare(self) -> int | None:
        return None if self.nodes is None else self.nodes - self.spare

    def text(self) -> str:
        """'8 nodes with N+1 (7-8 over 5 ramps; 7 at -20 % load, 10 at +20 %)', or why there is no answer."""
        if self.nodes is None:
            if self.basis == "deployment":
                return f"no answer: no simulated deployment of up to {MAX_NODES} nodes meets the SLO"
            return "no answer: one node does not hold the SLO at the lowest step tried"
        what = "ramps" if self.basis == "ramps" else "replications"
        spread = (
            f"{self.best_case}-{self.nodes} over {self.ramps} {what}"
            if self.best_case != self.nodes
            else f"the same on all {self.ramps} {what}"
            if self.ramps > 1
            else f"1 {what[:-1]}: no spread"
        )
        pct = round(100 * LOAD_SENSITIVITY)
        spare = f"N+{self.spare}" if self.spare else "no spare"
        less, more = (n if n is not None else "no answer" for n in (self.at_less_load, self.at_more_load))
        return f"{self.nodes} nodes with {spare} ({spread}; {less} at -{pct} % load, {more} at +{pct} %)"

    def to_record(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes,
            "best_case": self.best_case,
            "at_less_load": self.at_less_load,
            "at_more_load": self.at_more_load,
            "ramps": self.ramps,
            "spare": self.spare,
            "basis": self.basis,
            "text": self.text(),
        }

    @classmethod
    def from_record(cls, connections: int, rec: Mapping[str, Any]) -> NodesAnswer:
        keys = ("nodes", "best_case", "at_less_load", "at_more_load", "ramps", "spare", "basis")
        return cls(connections, **{k: rec[k] for k in keys})


@dataclass
class NodeSearch:
    """The fewest nodes on which every replication of a simulated deployment of ``connections`` meets the
    SLO, found by bisection (more nodes are assumed never to do worse) between the fewest the node limit
    allows and a count that meets it (found by doubling from ``start``, the ramps' estimate).

    The caller simulates what :meth:`next` asks for and records each replication's verdict with
    :meth:`add`, until :meth:`next` returns None."""

    connections: int
    start: int
    least: int = 1  # the fewest nodes the node limit allows
    tried: dict[int, tuple[bool, ...]] = field(default_factory=dict)

    def add(self, nodes: int, meets: Sequence[bool]) -> None:
        self.tried[nodes] = tuple(bool(m) for m in meets)

    def _good(self) -> list[int]:
        return sorted(n for n, m in self.tried.items() if all(m))

    def next(self) -> int | None:
        """The node count to simulate next, or None when the search is over."""
        if self.least > MAX_NODES:  # the node limit alone needs more nodes than the search tries
            return None
        if not self.tried:
            return min(max(self.start, self.least, 1), MAX_NODES)
        good = self._good()
        if not good:
            top = max(self.tried)
            return min(2 * top, MAX_NODES) if top < MAX_NODES else None
        hi = good[0]
        lo = max((n for n in self.tried if n < hi), default=self.least - 1)
        return (lo + hi) // 2 if hi - lo > 1 else None

    def fewest(self) -> int | None:
        """Fewest nodes every replication met the SLO on (and on every larger count tried)."""
        return self._fewest(all)

    def fewest_any(self) -> int | None:
        """The same for the most favourable replication: the spread's other end."""
        reps = max((len(m) for m in self.tried.values()), default=0)
        each = [self._fewest(functools.partial(_met, r)) for r in range(reps)]
        found = [n for n in each if n is not None]
        return min(found) if found else None

    def _fewest(self, ok: Callable[[tuple[bool, ...]], bool]) -> int | None:
        best = None
        for n in sorted(self.tried, reverse=True):
            if not ok(self.tried[n]):
                break
            best = n
        return best


def _met(replication: int, meets: tuple[bool, ...]) -> bool:
    return replication < len(meets) and meets[replication]


def deployment_answer(
    target: NodeSearch, less: NodeSearch, more: NodeSearch, replications: int, spare: int = SPARE_NODES
) -> NodesAnswer:
    """The answer from finished deployment searches at the target load and at -/+20 % of it."""

    def plus(n: int | None) -> int | None:
        return None if n is None else n + spare

    return NodesAnswer(
        connections=target.connections,
        nodes=plus(target.fewest()),
        best_case=plus(target.fewest_any()),
        at_less_load=plus(less.fewest()),
        at_more_load=plus(more.fewest()),
        ramps=replications,
        spare=spare,
        basis="deployment",
    )


def capacity_answer(cap: NodeCapacity, targets: Sequence[int], spare: int = SPARE_NODES) -> dict[str, Any]:
    """The record model.json keeps under capacity[label]: the node's capacity and each target's answer."""
    answers = {str(n): cap.answer(n, spare) for n in targets}
    return {
        **cap.to_record(),
        "nodes": {n: a.to_record() for n, a in answers.items()},
        "nodes_needed_n_plus_1": {n: a.nodes for n, a in answers.items()},
    }


def node_capacity_text(cap: NodeCapacity) -> str:
    """'one node: 1500 connections (SLO ramps 1500-2000 over 5 ramps; limited by SLO)'."""
    lo, hi, k = min(cap.per_ramp), max(cap.per_ramp), len(cap.per_ramp)
    ramps = f"{lo}-{hi} over {k} ramps" if lo != hi else f"{lo} on all {k} ramps" if k > 1 else f"{lo} on 1 ramp"
    more = " or more: every ramp held its top step" if cap.lower_bound else ""
    return f"one node: {cap.per_node} connections{more} (SLO ramps {ramps}; limited by {cap.limited_by})"
