"""How many nodes: the one capacity answer every artifact prints (report, notebooks, CLI, README).

A node's capacity is what it held within the SLO on replicated step ramps, never more than its configured
connection limit (``SOCKET_MAX_CONNECTIONS``): a node that refuses the 2001st connection does not count for
2500 however fast it is. The answer for a target load is the nodes that carry it when every replication's
ramp is believed (the least ramp), plus the N+1 spare; the spread is what the most favourable ramp would
need, and the sensitivity is the answer at 20 % less and 20 % more load.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

LOAD_SENSITIVITY = 0.2  # the answer is also given at (1 -/+ this) x the target load
SPARE_NODES = 1  # N+1: one node may fail or be drained


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
    ramps: int
    spare: int

    @property
    def without_spare(self) -> int | None:
        return None if self.nodes is None else self.nodes - self.spare

    def text(self) -> str:
        """'8 nodes with N+1 (7-8 over 5 ramps; 7 at -20 % load, 10 at +20 %)', or why there is no answer."""
        if self.nodes is None:
            return "no answer: one node does not hold the SLO at the lowest step tried"
        spread = (
            f"{self.best_case}-{self.nodes} over {self.ramps} ramps"
            if self.best_case != self.nodes
            else f"the same on all {self.ramps} ramps"
            if self.ramps > 1
            else "1 ramp: no spread"
        )
        pct = round(100 * LOAD_SENSITIVITY)
        spare = f"N+{self.spare}" if self.spare else "no spare"
        return (
            f"{self.nodes} nodes with {spare} ({spread}; {self.at_less_load} at -{pct} % load, "
            f"{self.at_more_load} at +{pct} %)"
        )

    def to_record(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes,
            "best_case": self.best_case,
            "at_less_load": self.at_less_load,
            "at_more_load": self.at_more_load,
            "ramps": self.ramps,
            "spare": self.spare,
            "text": self.text(),
        }


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
