"""Graph structure records: a node holds a block, an edge joins two ports, an exposure
names a port that the graph takes or returns."""

from __future__ import annotations

from dataclasses import dataclass

from worldgen.blocks.base import Block

__all__ = ["Edge", "ExposedPort", "Node"]


@dataclass(frozen=True, slots=True)
class Node:
    """A place in a graph ("idea") holding exactly one block ("matter") and no data."""

    node_id: str
    block: Block

    def __post_init__(self) -> None:
        if not isinstance(self.node_id, str) or not self.node_id:
            raise ValueError("Node id must be a non-empty string")
        if not isinstance(self.block, Block):
            raise TypeError(f"node {self.node_id!r}: expected a Block, got {type(self.block).__name__}")


@dataclass(frozen=True, slots=True)
class Edge:
    """`source_node.source_port → target_node.target_port` (an OUT port to an IN port)."""

    source_node: str
    source_port: str
    target_node: str
    target_port: str

    def __post_init__(self) -> None:
        for name in ("source_node", "source_port", "target_node", "target_port"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"Edge.{name} must be a non-empty string, got {value!r}")

    @property
    def source(self) -> tuple[str, str]:
        return (self.source_node, self.source_port)

    @property
    def target(self) -> tuple[str, str]:
        return (self.target_node, self.target_port)

    def __str__(self) -> str:
        return f"{self.source_node}.{self.source_port} -> {self.target_node}.{self.target_port}"


@dataclass(frozen=True, slots=True)
class ExposedPort:
    """A node port offered as a graph input or output, keyed by `name` or ``"node:port"``."""

    node_id: str
    port_name: str
    name: str | None = None

    @property
    def key(self) -> str:
        return self.name or f"{self.node_id}:{self.port_name}"
