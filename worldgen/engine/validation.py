"""Static checks of a graph, reporting every problem at once (levels.md §3 "Validation")."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from worldgen.engine.graph import Graph

__all__ = ["GraphValidationError", "ValidationIssue", "ValidationResult", "reachable", "validate_graph"]


@dataclass(frozen=True, slots=True)
class ValidationIssue:
    message: str
    node_id: str | None = None
    port_name: str | None = None

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class ValidationResult:
    errors: list[ValidationIssue] = field(default_factory=list)
    warnings: list[ValidationIssue] = field(default_factory=list)

    @property
    def is_valid(self) -> bool:
        return not self.errors


class GraphValidationError(ValueError):
    """Raised by ``validate(strict=True)``; lists every error."""

    def __init__(self, graph_id: str, result: ValidationResult) -> None:
        self.result = result
        lines = "\n".join(f"  - {e}" for e in result.errors)
        super().__init__(f"graph {graph_id!r} is invalid ({len(result.errors)} errors):\n{lines}")


def validate_graph(graph: Graph) -> ValidationResult:
    """Errors: a required input that nothing feeds (no edge, no exposed input, no default);
    a required loop input whose every edge comes from a node running later in the loop
    (or itself), with no seed or default, so iteration 1 has no value.
    Warnings: auto-connect ambiguities; nodes no exposed input reaches; nodes that lead to
    no exposed output. Nodes an agent calls as tools (`Graph.tool_only_nodes`) run only
    then, so they are not checked as static nodes; an agent tool naming no node is an error."""
    tool_only = graph.tool_only_nodes()
    node_set = set(graph.node_ids)
    errors = [
        ValidationIssue(f"node {nid!r}: agent tool 'node:{ref}' is not a node of this graph", nid)
        for nid in graph.node_ids for ref in getattr(graph.get_node(nid).block, "tool_nodes", ()) if ref not in node_set
    ]
    warnings = [ValidationIssue(str(a), a.target_node, a.target_port) for a in graph.auto_connect_ambiguities
                if a.target_node not in tool_only]
    seeded = {(e.node_id, e.port_name) for e in graph.exposed_input_ports()}
    loop_position: dict[str, tuple[int, int]] = {}
    for step_index, step in enumerate(graph.plan().steps):
        if step.kind == "cycle":
            loop_position.update({nid: (step_index, i) for i, nid in enumerate(step.node_ids)})

    for node_id in graph.node_ids:
        if node_id in tool_only:
            continue
        block = graph.get_node(node_id).block
        defaults = block.config.get("defaults") or {}
        edges_in = graph.get_edges_in(node_id)
        for port in block.get_input_ports():
            if port.optional or port.name in defaults or (node_id, port.name) in seeded:
                continue
            sources = [e.source_node for e in edges_in if e.target_port == port.name]
            if not sources:
                errors.append(ValidationIssue(
                    f"node {node_id!r} port {port.name!r}: required input has no edge, "
                    f"is not exposed and has no default", node_id, port.name))
            elif node_id in loop_position and all(_runs_later(loop_position, node_id, s) for s in sources):
                errors.append(ValidationIssue(
                    f"node {node_id!r} port {port.name!r}: required loop input has no seed from "
                    f"outside the loop (expose it or set a default) so iteration 1 has no value",
                    node_id, port.name))

    warnings += [w for w in _reachability_warnings(graph) if w.node_id not in tool_only]
    return ValidationResult(errors, warnings)


def _runs_later(position: dict[str, tuple[int, int]], node_id: str, source: str) -> bool:
    return source in position and position[source][0] == position[node_id][0] and (
        position[source][1] >= position[node_id][1]
    )


def _reachability_warnings(graph: Graph) -> list[ValidationIssue]:
    node_ids = graph.node_ids
    starts = {e.node_id for e in graph.exposed_input_ports()}
    starts |= {n for n in node_ids if not graph.get_node(n).block.get_input_ports()}
    ends = {e.node_id for e in graph.exposed_outputs().values()}
    forward = reachable(starts, lambda n: (e.target_node for e in graph.get_edges_out(n)))
    backward = reachable(ends, lambda n: (e.source_node for e in graph.get_edges_in(n)))
    warnings = []
    for n in node_ids:
        if n not in forward:
            warnings.append(ValidationIssue(f"node {n!r} is unreachable from the graph inputs", n))
        if n not in backward:
            warnings.append(ValidationIssue(f"node {n!r} leads to no exposed output", n))
    return warnings


def reachable(starts: set[str], step: Callable[[str], Iterable[str]]) -> set[str]:
    """Every node reached from ``starts`` by following ``step`` (breadth first)."""
    seen = set(starts)
    queue = deque(starts)
    while queue:
        for nxt in step(queue.popleft()):
            if nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return seen
