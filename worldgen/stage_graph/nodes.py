"""A stage graph's nodes and edges: what a node holds, and where its ports come from.

A pipeline node's ports are its run keys (`pipeline_ports`); a runnable's or a remote node's
are declared (`_ports`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from worldgen.blocks.ports import PortType
from worldgen.engine.graph import Graph
from worldgen.engine.graph_block import GraphBlock
from worldgen.engine.pipeline import Pipeline
from worldgen.remote import RemoteNode

NodeCallback = Callable[[str, dict[str, Any], "dict[str, Any] | None"], Any]
"""``callback(node_id, node_inputs, node_outputs)``; outputs are None before the node runs."""


@dataclass(frozen=True)
class StageEdge:
    source_node: str
    source_port: str
    target_node: str
    target_port: str


@dataclass
class _Node:
    """A node as the stage graph holds it: its implementation and its declared ports."""

    kind: str  # "pipeline" | "runnable"
    impl: Any
    inputs: dict[str, PortType]
    outputs: dict[str, PortType]
    optional_inputs: set[str] = field(default_factory=set)
    remote: RemoteNode | None = None  # set: the node runs on another LangGraph server


def as_pipeline(pipeline_or_graph: Pipeline | Graph, what: str = "a pipeline node") -> Pipeline:
    """A pipeline as it is; a graph as a one-graph pipeline whose run keys are the graph's."""
    if isinstance(pipeline_or_graph, Pipeline):
        return pipeline_or_graph
    if not isinstance(pipeline_or_graph, Graph):
        raise TypeError(f"{what} takes a Pipeline or a Graph, got {type(pipeline_or_graph).__name__}")
    graph = pipeline_or_graph
    pipeline = Pipeline(graph.graph_id)
    pipeline.add_graph(graph, graph.graph_id)
    for key in graph.exposed_inputs():
        pipeline.expose_input(graph.graph_id, key, key)
    for key in graph.exposed_outputs():
        pipeline.expose_output(graph.graph_id, key, key)
    return pipeline


def pipeline_ports(pipeline: Pipeline) -> tuple[dict[str, PortType], dict[str, PortType], set[str]]:
    """``(inputs, outputs, optional inputs)`` by run key: the ports a `GraphBlock` of the
    pipeline's graph declares (an input is optional when every port it seeds can do without)."""
    block = GraphBlock(pipeline._graph)
    ins = block.get_input_ports()
    return ({p.name: p.dtype for p in ins}, {p.name: p.dtype for p in block.get_output_ports()},
            {p.name for p in ins if p.optional})


def _ports(spec: Sequence[Any] | Mapping[str, Any]) -> dict[str, PortType]:
    items = spec.items() if isinstance(spec, Mapping) else (
        (s, PortType.ANY) if isinstance(s, str) else tuple(s) for s in spec
    )
    ports: dict[str, PortType] = {}
    for name, dtype in items:
        if name in ports:
            raise ValueError(f"port {name!r} is declared twice")
        ports[name] = PortType(dtype)
    return ports

