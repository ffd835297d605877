"""Merging several edge values into one input port (`PortAggregation`)."""

from __future__ import annotations

import functools
import operator
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any

from worldgen.blocks.ports import PortAggregation

__all__ = ["aggregate"]

Source = tuple[str, str]  # (node_id, port_name)


def aggregate(mode: PortAggregation, values: Sequence[tuple[Source, Any]]) -> Any:
    """Merge ``[(source, value)]`` (edge insertion order) per `mode`; never mutates values.

    CONCAT: tensors → ``torch.cat(dim=0)``; lists/tuples → one list; otherwise a list of
    the values. SUM: ``v1 + v2 + …``. FIRST: the first value. DICT: ``{source_node: value}``,
    keyed ``"node:port"`` for a node that feeds the port through several of its ports.
    """
    if mode is PortAggregation.FIRST or (mode is PortAggregation.SINGLE and len(values) == 1):
        return values[0][1]
    if mode is PortAggregation.SUM:
        return functools.reduce(operator.add, (v for _, v in values))
    if mode is PortAggregation.CONCAT:
        return _concat([v for _, v in values])
    if mode is PortAggregation.DICT:
        repeated = Counter(node for (node, _), _ in values)
        return {(node if repeated[node] == 1 else f"{node}:{port}"): v for (node, port), v in values}
    raise ValueError(f"cannot aggregate {len(values)} values with {mode.name}")


def _concat(items: list[Any]) -> Any:
    torch = sys.modules.get("torch")  # no torch imported → no tensor can be here
    if torch is not None and all(isinstance(v, torch.Tensor) for v in items):
        return torch.cat(items, dim=0)
    if all(isinstance(v, (list, tuple)) for v in items):
        return [x for v in items for x in v]
    return list(items)
