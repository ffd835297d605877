"""A stage graph's nodes and edges: what a node holds, and where its ports come from.

A pipeline node's ports are its run keys (`_run_key`); a runnable's or a remote node's are
declared (`_ports`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from worldgen.blocks.ports import PortType
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


def _run_key(entry: Mapping[str, Any]) -> str:
    return entry.get("name") or f"{entry['pipeline_node_id']}:{entry['port_name']}"


def _pipeline_input_optional(pipeline: Pipeline, entry: Mapping[str, Any]) -> bool:
    """Whether a pipeline input may be left out (its graph port is optional or has a default)."""
    try:
        block = pipeline._graph.get_node(entry["pipeline_node_id"]).block
        port = next(p for p in block.get_input_ports() if p.name == entry["port_name"])
        return bool(port.optional)
    except Exception:  # noqa: BLE001 - unknown: treat as required
        return False


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

