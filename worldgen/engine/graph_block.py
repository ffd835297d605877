"""`GraphBlock`: a whole `Graph` seen as one block, so graphs can be nodes of a graph.

This is what lets a `Pipeline` (a graph of graphs) run on the same dataflow executor as a
graph: the block's ports are the graph's exposed inputs and outputs (named by their run
keys), and `forward` runs the graph. Options meant for the inner runs (e.g.
`num_loop_steps`) cannot travel through `forward(inputs)`, so the caller sets them for the
duration of a run with `graph_run_options`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from worldgen.blocks.base import Block
from worldgen.blocks.ports import Port, PortDirection, input_port, output_port

if TYPE_CHECKING:
    from worldgen.engine.graph import Graph

__all__ = ["GraphBlock", "graph_run_options"]

_RUN_OPTIONS: ContextVar[Mapping[str, Any]] = ContextVar("graph_run_options", default={})


@contextmanager
def graph_run_options(**options: Any) -> Iterator[None]:
    """Pass `options` (keyword arguments of `Graph.run`) to every `GraphBlock` run inside."""
    token = _RUN_OPTIONS.set(options)
    try:
        yield
    finally:
        _RUN_OPTIONS.reset(token)


class GraphBlock(Block):
    """Runs `graph` as one block; its blocks are this block's sub-blocks (state, training).

    Ports are read from the graph's exposures when the block is made: an input port keeps
    the type and aggregation of the node port it stands for and is optional when that port
    is optional or has a default. Expose ports before wrapping a graph.
    """

    block_type = "graph"

    def __init__(self, graph: Graph, block_id: str | None = None) -> None:
        super().__init__(block_id or graph.graph_id)
        self.graph = graph

    def __repr__(self) -> str:
        return f"GraphBlock({self.graph!r})"

    def declare_ports(self) -> list[Port]:
        ports = []
        for key, exposed in self.graph.exposed_inputs().items():
            block = self.graph.get_node(exposed.node_id).block
            inner = block.get_port(exposed.port_name, PortDirection.IN)
            optional = not self.graph.is_input_required(key)  # every port it seeds can do without
            ports.append(input_port(key, inner.dtype, optional=optional, aggregation=inner.aggregation))
        for key, exposed in self.graph.exposed_outputs().items():
            inner = self.graph.get_node(exposed.node_id).block.get_port(exposed.port_name, PortDirection.OUT)
            ports.append(output_port(key, inner.dtype, optional=inner.optional))
        return ports

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return self.graph.run(dict(inputs), training=self.training, **_RUN_OPTIONS.get())

    def get_sub_blocks(self) -> dict[str, Block]:
        """Each distinct block once, under the first node holding it."""
        subs: dict[str, Block] = {}
        seen: set[int] = set()
        for node_id in self.graph.node_ids:
            block = self.graph.get_node(node_id).block
            if id(block) not in seen:
                seen.add(id(block))
                subs[node_id] = block
        return subs
