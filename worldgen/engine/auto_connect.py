"""Wiring role nodes by rule (`worldgen.blocks.rules.ROLE_RULES`).

Auto edges are always recomputed for the whole graph from its current nodes and explicit
edges, never accumulated node by node, so the result does not depend on insertion order.

Policy, per target input port:
- an explicit edge into a single-edge port wins: no auto edge goes there;
- candidates are rule edges whose ports exist and whose types are compatible;
- among several candidates only those with the highest rule priority stay (the more
  specific source: adapter over conditioner, guidance over backbone);
- an aggregating port takes every remaining candidate;
- a single-edge port with one candidate gets it; with several it is *ambiguous*:
  `AmbiguityPolicy.NONE` (default) adds no edge and records an `Ambiguity` that
  `Graph.validate()` reports as a warning naming every candidate; `AmbiguityPolicy.FIRST`
  takes the candidate with the smallest source node id. To pick one explicitly, add that
  edge yourself (explicit edges win).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from worldgen.blocks.base import Block
from worldgen.blocks.ports import PortDirection
from worldgen.blocks.rules import ROLE_RULES, RoleRule
from worldgen.engine.nodes import Edge

if TYPE_CHECKING:
    from worldgen.engine.graph import Graph

__all__ = ["Ambiguity", "AmbiguityPolicy", "AutoConnectResult", "auto_connect", "plan_auto_edges"]


class AmbiguityPolicy(str, Enum):
    NONE = "none"
    FIRST = "first"


@dataclass(frozen=True, slots=True)
class Ambiguity:
    """Several equally good sources for one single-edge input; no edge was added."""

    target_node: str
    target_port: str
    sources: tuple[tuple[str, str], ...]

    def __str__(self) -> str:
        names = ", ".join(f"{n}.{p}" for n, p in self.sources)
        return (
            f"node {self.target_node!r} port {self.target_port!r}: auto-connect found several "
            f"sources ({names}); no edge added, add one explicitly"
        )


@dataclass(frozen=True, slots=True)
class AutoConnectResult:
    edges: tuple[Edge, ...]
    ambiguities: tuple[Ambiguity, ...]


def plan_auto_edges(
    role_nodes: Mapping[str, tuple[str, Block]],
    explicit_edges: Iterable[Edge],
    policy: AmbiguityPolicy = AmbiguityPolicy.NONE,
    rules: Iterable[RoleRule] = ROLE_RULES,
) -> AutoConnectResult:
    """The auto edges for ``{node_id: (role, block)}`` given the explicit edges (pure)."""
    explicit = set(explicit_edges)
    explicit_targets = {e.target for e in explicit}
    by_pair: dict[tuple[str, str], list[RoleRule]] = {}
    for rule in rules:
        by_pair.setdefault((rule.src_role, rule.dst_role), []).append(rule)

    candidates: dict[tuple[str, str], list[tuple[int, str, str]]] = {}
    for src_id, (src_role, src_block) in role_nodes.items():
        for dst_id, (dst_role, dst_block) in role_nodes.items():
            if src_id == dst_id:
                continue
            for rule in by_pair.get((src_role, dst_role), ()):
                if not (src_block.has_port(rule.src_port, PortDirection.OUT)
                        and dst_block.has_port(rule.dst_port, PortDirection.IN)):
                    continue
                src_port = src_block.get_port(rule.src_port, PortDirection.OUT)
                if src_port.compatible_with(dst_block.get_port(rule.dst_port, PortDirection.IN)):
                    candidates.setdefault((dst_id, rule.dst_port), []).append((rule.priority, src_id, rule.src_port))

    edges: list[Edge] = []
    ambiguities: list[Ambiguity] = []
    for (dst_id, dst_port), found in sorted(candidates.items()):
        port = role_nodes[dst_id][1].get_port(dst_port, PortDirection.IN)
        fresh = [(p, s, sp) for p, s, sp in found if Edge(s, sp, dst_id, dst_port) not in explicit]
        if not fresh or (not port.accepts_many and (dst_id, dst_port) in explicit_targets):
            continue
        best = max(p for p, _, _ in fresh)
        sources = sorted((s, sp) for p, s, sp in fresh if p == best)
        if len(sources) > 1 and not port.accepts_many:
            if policy is AmbiguityPolicy.NONE:
                ambiguities.append(Ambiguity(dst_id, dst_port, tuple(sources)))
                continue
            sources = sources[:1]
        edges += [Edge(s, sp, dst_id, dst_port) for s, sp in sources]
    return AutoConnectResult(tuple(edges), tuple(ambiguities))


def auto_connect(graph: Graph, policy: AmbiguityPolicy | str | None = None) -> AutoConnectResult:
    """Recompute the auto edges of `graph` (same as ``graph.auto_connect(policy)``)."""
    return graph.auto_connect(policy)
