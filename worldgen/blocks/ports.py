"""Typed ports: the only thing a graph knows about a block.

A port is a named, typed slot on one side of a block. Graph edges join an OUT port to an IN
port; port types are coarse on purpose (the "Lego rule": anything connects to anything the
types allow), and an IN port that accepts several edges says how to merge them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["Port", "PortAggregation", "PortDirection", "PortType", "input_port", "output_port"]


class PortDirection(str, Enum):
    IN = "in"
    OUT = "out"


class PortType(str, Enum):
    """Coarse value kinds; ANY matches everything (see `Port.compatible_with`)."""

    ANY = "any"
    TENSOR = "tensor"
    DICT = "dict"
    IMAGE = "image"
    TEXT = "text"
    AUDIO = "audio"
    VIDEO = "video"


class PortAggregation(str, Enum):
    """How an IN port merges several incoming edges (the executor applies it).

    SINGLE accepts exactly one edge. CONCAT joins tensors on dim 0 (lists are concatenated),
    SUM adds the values, FIRST takes the first edge's value (edge insertion order), DICT maps
    each source node id to its value.
    """

    SINGLE = "single"
    CONCAT = "concat"
    SUM = "sum"
    FIRST = "first"
    DICT = "dict"


@dataclass(frozen=True, slots=True)
class Port:
    """One named slot of a block.

    `optional` on an IN port means the block runs without it (the executor then passes
    `config["defaults"][name]` if set, else leaves the key out); on an OUT port it means the
    block may not produce it on every call.
    """

    name: str
    direction: PortDirection
    dtype: PortType = PortType.ANY
    optional: bool = False
    aggregation: PortAggregation = PortAggregation.SINGLE
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError("Port name must be a non-empty string")
        # accept plain strings ("in", "tensor", ...) for convenience in configs
        object.__setattr__(self, "direction", PortDirection(self.direction))
        object.__setattr__(self, "dtype", PortType(self.dtype))
        object.__setattr__(self, "aggregation", PortAggregation(self.aggregation))
        if self.direction is PortDirection.OUT and self.aggregation is not PortAggregation.SINGLE:
            raise ValueError(
                f"output port {self.name!r}: aggregation must be SINGLE "
                f"(got {self.aggregation.name}); outputs fan out, only inputs aggregate"
            )

    @property
    def is_input(self) -> bool:
        return self.direction is PortDirection.IN

    @property
    def accepts_many(self) -> bool:
        """True when more than one edge may end at this (input) port."""
        return self.aggregation is not PortAggregation.SINGLE

    def compatible_with(self, other: Port) -> bool:
        """Whether an edge may run from this port to `other`.

        Rule: self is OUT, other is IN, and either side is ANY or both types are equal.
        There are no subtypes or implicit casts (an IMAGE is not a TENSOR).
        """
        if self.direction is not PortDirection.OUT or other.direction is not PortDirection.IN:
            return False
        return PortType.ANY in (self.dtype, other.dtype) or self.dtype is other.dtype


def input_port(
    name: str,
    dtype: PortType = PortType.ANY,
    *,
    optional: bool = False,
    aggregation: PortAggregation = PortAggregation.SINGLE,
    description: str = "",
) -> Port:
    """Shorthand for an IN port."""
    return Port(name, PortDirection.IN, dtype, optional, aggregation, description)


def output_port(
    name: str, dtype: PortType = PortType.ANY, *, optional: bool = False, description: str = ""
) -> Port:
    """Shorthand for an OUT port."""
    return Port(name, PortDirection.OUT, dtype, optional, description=description)
