"""The in-process dataflow executor shared by Graph (and, later, Pipeline).

Values stay in memory (a buffer keyed by ``(node_id, out_port)``); nothing here touches
LangGraph state, so tensors never get checkpointed.

A node's input port takes its value from, in order: its in-edges (aggregated when the port
aggregates; only sources that have already run count), the value seeded for that exact
``(node, port)`` from the run inputs, ``block.config["defaults"][port]``. Otherwise an
optional port is left out and a required one raises `MissingInputError`. That order is
what makes an exposed input on a loop port seed iteration 1 only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from worldgen.blocks.ports import PortAggregation, PortDirection
from worldgen.blocks.roles import block_role
from worldgen.engine.aggregation import aggregate
from worldgen.engine.context import enter_node, exit_node, set_node
from worldgen.engine.plan import NodeCall, PlanStep

if TYPE_CHECKING:
    from worldgen.engine.graph import Graph

__all__ = ["BEFORE", "AFTER", "LOOP_START", "LOOP_END", "Callback", "MissingInputError", "run_graph"]

BEFORE, AFTER, LOOP_START, LOOP_END = "before", "after", "loop_start", "loop_end"

Callback = Callable[..., None]
"""``hook(node_id, phase, **kw)``; kw: buffer, inputs, outputs, iteration, num_steps
(loop phases get node_ids, the cycle's nodes, and node_id is the cycle's first node)."""

_SOLVER_STEP_KEYS = ("num_loop_steps", "num_steps", "num_inference_steps")
_Key = tuple[str, str]


class MissingInputError(ValueError):
    """A required input port had no edge value, no seed and no default when its node ran."""


def run_graph(
    graph: Graph,
    inputs: Mapping[Any, Any],
    *,
    num_loop_steps: int | None = None,
    training: bool = False,
    device: Any = None,
    callbacks: Callback | Iterable[Callback] | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Run `graph` once and return its exposed outputs keyed by run key.

    Loops run `num_loop_steps` times, else ``graph.metadata["num_loop_steps"]``, else the
    loop's solver ``config`` (num_loop_steps / num_steps / num_inference_steps), else once.
    `dry_run` skips every `forward` and writes None to every output port.
    """
    plan = graph.plan()
    seeds = _seeds(graph, inputs)
    hooks = tuple(_as_hooks(callbacks))
    for block in {id(c.block): c.block for s in plan.steps for c in s.calls}.values():
        block.train(training)
        if device is not None:
            block.to(device)
    buffer: dict[_Key, Any] = {}
    token = enter_node()  # each call sets node_id (set_node); one reset per run, not per node
    try:
        for step in plan.steps:
            if step.kind == "node":
                _call(step.calls[0], buffer, seeds, hooks, dry_run, None, None)
                continue
            steps = _loop_steps(graph, step, num_loop_steps)
            for i in range(steps):
                _emit(hooks, step.rep, LOOP_START, buffer=buffer, iteration=i, num_steps=steps, node_ids=step.node_ids)
                for call in step.calls:
                    _call(call, buffer, seeds, hooks, dry_run, i, steps)
                _emit(hooks, step.rep, LOOP_END, buffer=buffer, iteration=i, num_steps=steps, node_ids=step.node_ids)
    finally:
        exit_node(token)
    return _collect(graph, buffer)


def _call(
    call: NodeCall,
    buffer: dict[_Key, Any],
    seeds: Mapping[_Key, Any],
    hooks: tuple[Callback, ...],
    dry_run: bool,
    iteration: int | None,
    num_steps: int | None,
) -> None:
    node_id, block = call.node_id, call.block
    values: dict[str, Any] = {}
    for wire in call.inputs:
        if wire.sources:
            if wire.aggregation is PortAggregation.SINGLE:
                source = wire.sources[0]
                if source in buffer:
                    values[wire.port] = buffer[source]
                    continue
            else:
                present = [(s, buffer[s]) for s in wire.sources if s in buffer]
                if present:
                    values[wire.port] = aggregate(wire.aggregation, present)
                    continue
        if (node_id, wire.port) in seeds:
            values[wire.port] = seeds[(node_id, wire.port)]
            continue
        defaults = block.config.get("defaults") or {}
        if wire.port in defaults:
            values[wire.port] = defaults[wire.port]
        elif not wire.optional:
            raise MissingInputError(
                f"node {node_id!r}: required input port {wire.port!r} has no value "
                f"(no edge value yet, no seed in the run inputs, no config default)"
            )
    set_node(node_id)  # lets a shared block act per use site (worldgen.engine.context)
    if hooks:
        _emit(hooks, node_id, BEFORE, buffer=buffer, inputs=values, iteration=iteration, num_steps=num_steps)
    if dry_run:
        outputs: Mapping[str, Any] = dict.fromkeys(call.outputs)
    else:
        outputs = block.forward(values)
        if not isinstance(outputs, Mapping):
            raise TypeError(f"node {node_id!r}: forward() returned {type(outputs).__name__}, expected a dict")
    for port, value in outputs.items():
        buffer[(node_id, port)] = value
    if hooks:
        _emit(hooks, node_id, AFTER, buffer=buffer, inputs=values, outputs=outputs, iteration=iteration,
              num_steps=num_steps)


def _seeds(graph: Graph, inputs: Mapping[Any, Any]) -> dict[_Key, Any]:
    exposed = graph.exposed_inputs()
    seeds: dict[_Key, Any] = {}
    unknown: list[Any] = []
    for key, value in inputs.items():
        if isinstance(key, tuple) and len(key) == 2:
            node_id, port = key
            if node_id not in graph or not graph.get_node(node_id).block.has_port(port, PortDirection.IN):
                raise ValueError(f"run input {key!r}: node {node_id!r} has no input port {port!r}")
            seeds[(node_id, port)] = value
        elif key in exposed:
            for port in (exposed[key], *graph.fan_out_ports(key)):  # a fanned-out key seeds several
                seeds[(port.node_id, port.port_name)] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"graph {graph.graph_id!r}: unknown run inputs {unknown}; expected exposed inputs "
            f"{sorted(exposed)} or (node_id, port) tuples"
        )
    return seeds


def _loop_steps(graph: Graph, step: PlanStep, requested: int | None) -> int:
    steps = requested if requested is not None else graph.metadata.get("num_loop_steps")
    if steps is None:
        for call in step.calls:
            found = [call.block.config[k] for k in _SOLVER_STEP_KEYS if k in call.block.config]
            if found and block_role(call.block) == "solver":
                steps = found[0]
                break
    steps = 1 if steps is None else steps
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"loop {list(step.node_ids)}: num_loop_steps must be an int >= 1, got {steps!r}")
    return steps


def _collect(graph: Graph, buffer: Mapping[_Key, Any]) -> dict[str, Any]:
    outputs: dict[str, Any] = {}
    for key, exposed in graph.exposed_outputs().items():
        source = (exposed.node_id, exposed.port_name)
        if source in buffer:
            outputs[key] = buffer[source]
        elif not graph.get_node(exposed.node_id).block.get_port(exposed.port_name, PortDirection.OUT).optional:
            raise ValueError(f"output {key!r}: node {exposed.node_id!r} did not produce port {exposed.port_name!r}")
    return outputs


def _as_hooks(callbacks: Callback | Iterable[Callback] | None) -> Iterable[Callback]:
    if callbacks is None:
        return ()
    return (callbacks,) if callable(callbacks) else callbacks


def _emit(hooks: tuple[Callback, ...], node_id: str, phase: str, **kw: Any) -> None:
    for hook in hooks:  # errors propagate: a failing callback must not pass silently
        hook(node_id, phase, **kw)
