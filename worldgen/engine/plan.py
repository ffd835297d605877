"""Execution plans: strongly connected components in topological order.

A plan is a list of steps: a single node, or a cycle (a strongly connected component, or
a node with a self-loop) that the executor repeats `num_loop_steps` times. Plans are pure
data derived from the graph structure, cached on the graph and rebuilt when its
`_execution_version` changes.

Order inside a cycle (deterministic, independent of dict or set order):
1. nodes listed in ``graph.metadata["loop_order"]`` first, in that order;
2. then by role along the data flow (tokenizer, conditioner, adapter, backbone, guidance,
   solver, codec; non-role nodes after), so a backbone runs before its solver;
3. then nodes fed from outside the cycle (an edge from outside or an exposed input) first;
4. then graph insertion order.
These keys break the cycle once; from there a node runs as soon as all its in-cycle
predecessors have run (Kahn's algorithm), the smallest key first among those ready.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from worldgen.blocks.base import Block
from worldgen.blocks.ports import PortAggregation
from worldgen.blocks.roles import block_role

if TYPE_CHECKING:
    from worldgen.engine.graph import Graph

__all__ = ["ExecutionPlan", "InputWire", "NodeCall", "PlanStep", "build_plan", "strongly_connected_components"]

_ROLE_FLOW = ("tokenizer", "conditioner", "adapter", "backbone", "guidance", "solver", "codec")
_ROLE_RANK = {role: rank for rank, role in enumerate(_ROLE_FLOW)}


@dataclass(frozen=True, slots=True)
class InputWire:
    """Where one input port of a node gets its value from."""

    port: str
    sources: tuple[tuple[str, str], ...]  # (node_id, out_port), edge insertion order
    aggregation: PortAggregation
    optional: bool


@dataclass(frozen=True, slots=True)
class NodeCall:
    """Everything the executor needs to call one node, precomputed."""

    node_id: str
    block: Block
    inputs: tuple[InputWire, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PlanStep:
    kind: str  # "node" | "cycle"
    calls: tuple[NodeCall, ...]

    @property
    def node_ids(self) -> tuple[str, ...]:
        return tuple(c.node_id for c in self.calls)

    @property
    def rep(self) -> str:
        """The representative node id (the first to run)."""
        return self.calls[0].node_id


@dataclass(frozen=True, slots=True)
class ExecutionPlan:
    version: int
    loop_order: tuple[str, ...]  # graph.metadata["loop_order"] when built (it shapes cycles)
    steps: tuple[PlanStep, ...]

    def describe(self) -> list[tuple[str, tuple[str, ...]]]:
        """``[("node", (id,)) | ("cycle", (ids…))]``, for debugging and tests."""
        return [(s.kind, s.node_ids) for s in self.steps]


def strongly_connected_components(
    nodes: Sequence[str], successors: Mapping[str, Iterable[str]]
) -> list[list[str]]:
    """Tarjan's algorithm, iterative (no recursion limit on long chains)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(successors.get(root, ())))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(successors.get(child, ()))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(component)
    return components


def build_plan(graph: Graph) -> ExecutionPlan:
    node_ids = graph.node_ids
    position = {nid: i for i, nid in enumerate(node_ids)}
    successors = {nid: [e.target_node for e in graph.get_edges_out(nid)] for nid in node_ids}
    components = strongly_connected_components(node_ids, successors)

    # Kahn over the condensation; ties broken by insertion order of each component's first node
    comp_of = {nid: ci for ci, comp in enumerate(components) for nid in comp}
    indegree = [0] * len(components)
    comp_succ: list[set[int]] = [set() for _ in components]
    for nid in node_ids:
        for succ in successors[nid]:
            a, b = comp_of[nid], comp_of[succ]
            if a != b and b not in comp_succ[a]:
                comp_succ[a].add(b)
                indegree[b] += 1
    first = [min(position[n] for n in comp) for comp in components]
    ready = [(first[ci], ci) for ci in range(len(components)) if indegree[ci] == 0]
    heapq.heapify(ready)
    seeded = {(e.node_id, e.port_name) for e in graph.exposed_input_ports()}
    tool_only = graph.tool_only_nodes()  # no in-edges, so lone nodes: they run when an agent calls them
    steps: list[PlanStep] = []
    while ready:
        _, ci = heapq.heappop(ready)
        members = components[ci]
        if len(members) == 1 and members[0] not in successors[members[0]]:
            if members[0] not in tool_only:
                steps.append(PlanStep("node", (_node_call(graph, members[0]),)))
        else:
            order = _cycle_order(graph, set(members), position, seeded)
            steps.append(PlanStep("cycle", tuple(_node_call(graph, n) for n in order)))
        for nxt in comp_succ[ci]:
            indegree[nxt] -= 1
            if indegree[nxt] == 0:
                heapq.heappush(ready, (first[nxt], nxt))
    return ExecutionPlan(graph.execution_version, loop_order_of(graph), tuple(steps))


def loop_order_of(graph: Graph) -> tuple[str, ...]:
    return tuple(graph.metadata.get("loop_order", ()))


def _node_call(graph: Graph, node_id: str) -> NodeCall:
    block = graph.get_node(node_id).block
    by_port: dict[str, list[tuple[str, str]]] = {}
    for edge in graph.get_edges_in(node_id):
        by_port.setdefault(edge.target_port, []).append(edge.source)
    wires = tuple(
        InputWire(p.name, tuple(by_port.get(p.name, ())), p.aggregation, p.optional)
        for p in block.get_input_ports()
    )
    return NodeCall(node_id, block, wires, tuple(p.name for p in block.get_output_ports()))


def _cycle_order(
    graph: Graph, members: set[str], position: Mapping[str, int], seeded: set[tuple[str, str]]
) -> list[str]:
    explicit = [n for n in loop_order_of(graph) if n in members]
    explicit_rank = {n: i for i, n in enumerate(explicit)}

    def key(nid: str) -> tuple[int, int, int, int]:
        fed_outside = any(e.source_node not in members for e in graph.get_edges_in(nid)) or any(
            node == nid for node, _ in seeded
        )
        role_rank = _ROLE_RANK.get(block_role(graph.get_node(nid).block) or "", len(_ROLE_RANK))
        return (explicit_rank.get(nid, len(explicit)), role_rank, 0 if fed_outside else 1, position[nid])

    keys = {nid: key(nid) for nid in members}
    pending = {
        nid: {e.source_node for e in graph.get_edges_in(nid) if e.source_node in members and e.source_node != nid}
        for nid in members
    }
    order: list[str] = []
    while pending:
        ready = [n for n, preds in pending.items() if not preds] or list(pending)  # stuck → break cycle
        chosen = min(ready, key=keys.__getitem__)
        order.append(chosen)
        del pending[chosen]
        for preds in pending.values():
            preds.discard(chosen)
    return order
