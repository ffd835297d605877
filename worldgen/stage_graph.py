"""`StageGraph`: one transition implemented as a DAG of pipelines and runnables (world.md §3).

A stage graph holds nodes — `Pipeline`s (a `Graph` is wrapped as a one-graph pipeline
whose ports keep the graph's run keys) and runnables (a LangChain `Runnable` or a function
``(inputs: dict) -> dict`` with declared ports) — joined port to port, and a *state
contract*: which blocks it reads and writes, and which node port each one goes to.

It is callable as ``(state: dict) -> dict``, so it is a `Stage` implementation as it is::

    sg = StageGraph("draw")
    sg.add_pipeline(Graph.from_template("text_to_image", checkpoint=folder))
    sg.set_state_contract([2], [3])
    Stage("creator", sg)

**Blocks → port values** (the default converters; a mapping entry may carry its own):

===========  ==============================================================
block1, 5    the text string
block2       the prompt of its first image slot (else of its first slot)
block3       the list of artifact-ref dicts (``items``)
block4       the descriptions' texts joined by newlines
"action"     the action string (a mapping source besides the blocks)
``"blockN.field"``  that field of the block's JSON (``"block2.slots"``)
===========  ==============================================================

An empty (``None``) block gives no value, so the port must be optional.

**Port values → blocks:** block 3 accepts an image tensor ``[B, 3, H, W]`` / ``[3, H, W]``
in [0, 1], a PIL image or a list of them (each stored with
``state["world"].artifacts.put_image`` and becoming an artifact-ref item), a string (stored
with ``put_text``), or refs / a block dict; a stored artifact's ``slot`` is the output port's
name. Blocks 1, 2, 4 and 5 accept a string (their text
form, coerced as `worldgen.state` does), a dict or a block model. Several outputs mapped to
block 3 add up their items; for other blocks the last one wins.

**Default mapping** (no explicit one): the boundary nodes' inputs (nodes with no incoming
edge, in insertion order, each port in spec order) take the input blocks by order, and the
sink nodes' outputs (no outgoing edge) give the output blocks by order. Extra ports stay
unmapped; more blocks than ports is a validation error.

``__call__`` returns only the update of the output blocks (what the world merges), so the
other blocks are untouched; ``run`` returns the whole new state.

**Concurrency:** nodes with no path between them run at the same time (a thread pool;
model calls release the GIL), so a stage of four independent 200 ms model calls takes
about 200 ms (``bench/parallel_stage.py``). Results do not depend on the finishing order.

**Remote** (world.md §3–4, levels.md §9): a pipeline node with an endpoint
(`set_node_endpoint`, or `add_remote` for a node with no local pipeline) or the whole stage
(`set_endpoint`) runs on a LangGraph server through `RemoteGraph`; see `worldgen.remote`
for the wire format and for serving a saved stage or pipeline (``graphs/stage.py``).

**Config keys** besides the structure: ``execution_condition`` (a preset name, a list of
required blocks or ``{requires, produces, always}``), ``trainable_nodes``, ``lr``,
``freeze_others``, and ``endpoint_url`` / ``assistant_id`` / ``api_key_env`` on the stage
or on a node entry — never a key itself.
"""

from __future__ import annotations

import contextvars
import sys
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from langchain_core.runnables import Runnable
from pydantic import Field, model_validator

from worldgen.blocks.ports import PortType
from worldgen.blocks.registry import BlockRegistry
from worldgen.engine.graph import Graph
from worldgen.engine.pipeline import Pipeline
from worldgen.engine.serialization import EdgeConfig, StrictConfig
from worldgen.engine.validation import ValidationIssue, ValidationResult, reachable
from worldgen.remote import RemoteNode, RemoteStage
from worldgen.stage import CANON, Condition, Stage
from worldgen.state import BLOCK_NUMBERS, BLOCK_TYPES, block_key

__all__ = [
    "StageEdge",
    "StageGraph",
    "StageGraphValidationError",
    "creator_stage",
    "stage_from_template",
    "stage_templates",
]

Converter = Callable[[Any], Any]
NodeCallback = Callable[[str, dict[str, Any], "dict[str, Any] | None"], Any]
"""``callback(node_id, node_inputs, node_outputs)``; outputs are None before the node runs."""


class StageGraphValidationError(ValueError):
    """Raised by ``validate(strict=True)`` and by running an invalid stage graph."""

    def __init__(self, stage_id: str, result: ValidationResult) -> None:
        self.result = result
        lines = "\n".join(f"  - {e}" for e in result.errors)
        super().__init__(f"stage {stage_id!r} is invalid ({len(result.errors)} errors):\n{lines}")


@dataclass(frozen=True)
class StageEdge:
    source_node: str
    source_port: str
    target_node: str
    target_port: str


@dataclass(frozen=True)
class _Mapping:
    """One contract entry: a block (or field, or ``"action"``) ↔ a node port."""

    source: str  # "block2", "block2.slots", "action"
    node_id: str
    port: str
    converter: Converter | None = None

    @property
    def block(self) -> int | None:
        head = self.source.split(".", 1)[0]
        if head.startswith("block") and head[5:].isdigit():
            return int(head[5:])
        return None


@dataclass
class _Node:
    kind: str  # "pipeline" | "runnable"
    impl: Any
    inputs: dict[str, PortType]
    outputs: dict[str, PortType]
    optional_inputs: set[str] = field(default_factory=set)
    remote: RemoteNode | None = None  # set: the node runs on another LangGraph server


ConditionSpec = Condition | str | Sequence[int] | Mapping[str, Any]
"""A preset name (a transition: ``"philosopher"``, ``"author"``, ``"world_update"`` …), a
list of required blocks, a `Condition` or its dict (``{requires, produces, always}``)."""


class StageGraph:
    """A DAG of pipelines and runnables that realises one transition (see module doc)."""

    def __init__(self, stage_id: str = "stage", *, description: str = "") -> None:
        self.stage_id = stage_id
        self.metadata: dict[str, Any] = {"description": description}
        self._nodes: dict[str, _Node] = {}
        self._edges: list[StageEdge] = []
        self.input_blocks: tuple[int, ...] = ()
        self.output_blocks: tuple[int, ...] = ()
        self._mapping_input: list[_Mapping] | None = None
        self._mapping_output: list[_Mapping] | None = None
        self.execution_condition: Condition | None = None
        self._condition_spec: Any = None  # the form it was given in, written back to the config
        self.trainable_nodes: list[str] | None = None  # None: every local node
        self.lr: float | None = None
        self.freeze_others: bool = False
        self.remote: RemoteStage | None = None
        self.max_concurrency: int | None = None  # threads for independent nodes; None: one per node

    def __repr__(self) -> str:
        return f"StageGraph({self.stage_id!r}, nodes={self.node_ids}, reads={self.input_blocks}, writes={self.output_blocks})"

    # ------------------------------------------------------------- access
    @property
    def node_ids(self) -> list[str]:
        return list(self._nodes)

    @property
    def edges(self) -> list[StageEdge]:
        return list(self._edges)

    def get_node(self, node_id: str) -> Any:
        """The pipeline or runnable of a node."""
        return self._node(node_id).impl

    def get_input_spec(self, node_id: str) -> dict[str, str]:
        """``{port: dtype}`` of a node's inputs."""
        return {p: t.value for p, t in self._node(node_id).inputs.items()}

    def get_output_spec(self, node_id: str) -> dict[str, str]:
        return {p: t.value for p, t in self._node(node_id).outputs.items()}

    def in_edges(self, node_id: str) -> list[StageEdge]:
        return [e for e in self._edges if e.target_node == node_id]

    def out_edges(self, node_id: str) -> list[StageEdge]:
        return [e for e in self._edges if e.source_node == node_id]

    def get_state_input_spec(self) -> list[int]:
        return list(self.input_blocks)

    def get_state_output_spec(self) -> list[int]:
        return list(self.output_blocks)

    # ----------------------------------------------------------- building
    def add_pipeline(
        self,
        pipeline_or_graph: Pipeline | Graph,
        node_id: str | None = None,
        *,
        endpoint_url: str | None = None,
        assistant_id: str | None = None,
    ) -> str:
        """Add a pipeline (or a graph, wrapped as a one-graph pipeline keeping its run keys).

        Its ports are the pipeline's run keys. The id defaults to ``pipeline_id`` (or
        ``graph_id``), else ``"pipeline_<n>"``; a duplicate id is an error. With
        `endpoint_url` the node runs remotely (see `set_node_endpoint`)."""
        if isinstance(pipeline_or_graph, Graph):
            graph = pipeline_or_graph
            pipeline = Pipeline(graph.graph_id)
            pipeline.add_graph(graph, graph.graph_id)
            for key in graph.exposed_inputs():
                pipeline.expose_input(graph.graph_id, key, key)
            for key in graph.exposed_outputs():
                pipeline.expose_output(graph.graph_id, key, key)
        elif isinstance(pipeline_or_graph, Pipeline):
            pipeline = pipeline_or_graph
        else:
            raise TypeError(f"add_pipeline takes a Pipeline or a Graph, got {type(pipeline_or_graph).__name__}")
        nid = node_id or pipeline.pipeline_id or f"pipeline_{len(self._nodes)}"
        self._check_new_id(nid)
        inputs, optional = {}, set()
        for entry in pipeline.get_input_spec(include_dtype=True):
            key = _run_key(entry)
            inputs[key] = PortType(entry.get("dtype", "any"))
            if _pipeline_input_optional(pipeline, entry):
                optional.add(key)
        outputs = {_run_key(e): PortType(e.get("dtype", "any")) for e in pipeline.get_output_spec(include_dtype=True)}
        self._nodes[nid] = _Node("pipeline", pipeline, inputs, outputs, optional)
        if endpoint_url is not None:
            self.set_node_endpoint(nid, endpoint_url, assistant_id)
        return nid

    def add_remote(
        self,
        node_id: str,
        endpoint_url: str,
        assistant_id: str,
        inputs: Sequence[str | tuple[str, str | PortType]] | Mapping[str, str | PortType] = (),
        outputs: Sequence[str | tuple[str, str | PortType]] | Mapping[str, str | PortType] = (),
        *,
        optional_inputs: Iterable[str] = (),
        api_key_env: str | None = None,
        sync_client: Any = None,
    ) -> str:
        """Add a node that exists only as a remote descriptor: a pipeline served elsewhere
        (`worldgen.remote.serve_pipeline`) with these declared ports; no local weights."""
        self._check_new_id(node_id)
        ins, outs = _ports(inputs), _ports(outputs)
        optional = set(optional_inputs)
        if optional - set(ins):
            raise ValueError(f"node {node_id!r}: optional inputs {sorted(optional - set(ins))} are not among its inputs {list(ins)}")
        remote = RemoteNode(endpoint_url, assistant_id, sync_client=sync_client,
                            **({"api_key_env": api_key_env} if api_key_env else {}))
        self._nodes[node_id] = _Node("remote", None, ins, outs, optional, remote)
        return node_id

    def set_node_endpoint(
        self,
        node_id: str,
        endpoint_url: str | None,
        assistant_id: str | None = None,
        *,
        api_key_env: str | None = None,
        sync_client: Any = None,
    ) -> None:
        """Run a pipeline node on a LangGraph server serving it (hybrid local/remote stages).

        `assistant_id` defaults to the node id; ``None`` as the URL makes the node local again.
        The local pipeline stays for its ports and config; its weights are not used."""
        node = self._node(node_id)
        if endpoint_url is None:
            if node.kind == "remote":
                raise ValueError(f"node {node_id!r} has no local pipeline to fall back on")
            node.remote = None
            return
        node.remote = RemoteNode(endpoint_url, assistant_id or node_id, sync_client=sync_client,
                                 **({"api_key_env": api_key_env} if api_key_env else {}))

    def set_endpoint(
        self,
        endpoint_url: str | None,
        assistant_id: str | None = None,
        *,
        api_key_env: str | None = None,
        sync_client: Any = None,
    ) -> None:
        """Run the whole stage on a LangGraph server serving it (`worldgen.remote.serve_stage`):
        the blocks it reads (and the action) go out, the blocks it writes come back.
        `assistant_id` defaults to the stage id; ``None`` as the URL makes it local again."""
        self.remote = None if endpoint_url is None else RemoteStage(
            endpoint_url, assistant_id or self.stage_id, sync_client=sync_client,
            **({"api_key_env": api_key_env} if api_key_env else {}))

    def set_execution_condition(self, condition: ConditionSpec | None) -> Condition | None:
        """When the stage runs (world.md §3), as data so it serializes: a preset name (the
        transition whose canon condition to use), a list of required blocks, a `Condition`
        or its dict. ``None`` means the role's canon condition. A ``(state) -> bool``
        callable is refused: the world compiles conditions into its edges as data."""
        self.execution_condition = _condition(condition, self.stage_id)
        self._condition_spec = _condition_spec(condition)
        return self.execution_condition

    SetExecutionCondition = set_execution_condition

    def set_training(
        self, trainable_nodes: Iterable[str] | None = None, *, lr: float | None = None, freeze_others: bool = False
    ) -> None:
        """Which nodes train (``None``: every local one), their learning rate, and whether
        the other nodes' parameters are frozen (``requires_grad=False``; a parameter shared
        with a trainable node stays trainable)."""
        nodes = None if trainable_nodes is None else list(trainable_nodes)
        for nid in nodes or ():
            if self._node(nid).kind == "remote":
                raise ValueError(f"node {nid!r} is remote: only local parameters can be trained")
        if lr is not None and not lr > 0:
            raise ValueError(f"stage {self.stage_id!r}: lr must be positive, got {lr!r}")
        self.trainable_nodes, self.lr, self.freeze_others = nodes, lr, bool(freeze_others)
        if self.freeze_others:
            keep = {id(p) for p in self.trainable_parameters()}
            for nid in self._nodes:
                if nid not in self._trainable_ids():
                    for p in self._local_parameters(nid):
                        if id(p) not in keep:
                            p.requires_grad_(False)

    def trainable_parameters(self) -> Iterable[Any]:
        """Parameters of the trainable local nodes, each once (pipelines may share blocks);
        remote nodes have none here."""
        seen: set[int] = set()
        for nid in self._trainable_ids():
            for param in self._local_parameters(nid):
                if id(param) not in seen:
                    seen.add(id(param))
                    yield param

    def param_groups(self) -> list[dict[str, Any]]:
        """``[{"params": [...], "lr": lr}]`` for a torch optimizer (no ``lr`` key when unset)."""
        group: dict[str, Any] = {"params": list(self.trainable_parameters())}
        if self.lr is not None:
            group["lr"] = self.lr
        return [group]

    def _trainable_ids(self) -> list[str]:
        ids = self.node_ids if self.trainable_nodes is None else self.trainable_nodes
        return [n for n in ids if self._nodes[n].kind == "pipeline" and self._nodes[n].remote is None]

    def _local_parameters(self, nid: str) -> Iterable[Any]:
        node = self._nodes[nid]
        return node.impl.trainable_parameters() if node.kind == "pipeline" else ()

    def add_runnable(
        self,
        runnable_or_fn: Runnable | Callable[[dict[str, Any]], Any],
        node_id: str,
        inputs: Sequence[str | tuple[str, str | PortType]] | Mapping[str, str | PortType] = (),
        outputs: Sequence[str | tuple[str, str | PortType]] | Mapping[str, str | PortType] = (),
        *,
        optional_inputs: Iterable[str] = (),
    ) -> str:
        """Add a Runnable or a function ``(inputs: dict) -> dict`` with declared ports.

        Ports are names (type ``any``), ``(name, type)`` pairs or a ``{name: type}`` dict. A
        function with one output port may return the bare value."""
        if not (isinstance(runnable_or_fn, Runnable) or callable(runnable_or_fn)):
            raise TypeError(f"node {node_id!r}: expected a Runnable or a function, got {type(runnable_or_fn).__name__}")
        self._check_new_id(node_id)
        ins, outs = _ports(inputs), _ports(outputs)
        optional = set(optional_inputs)
        unknown = optional - set(ins)
        if unknown:
            raise ValueError(f"node {node_id!r}: optional inputs {sorted(unknown)} are not among its inputs {list(ins)}")
        self._nodes[node_id] = _Node("runnable", runnable_or_fn, ins, outs, optional)
        return node_id

    def add_edge(
        self, source: str | StageEdge, source_port: str | None = None, target: str | None = None, target_port: str | None = None
    ) -> StageEdge:
        """Join ``source.source_port`` to ``target.target_port``: both nodes must exist,
        the ports must be an output / an input of them, and their types must match
        (``any`` matches everything). Re-adding an edge is a no-op; an input takes one edge."""
        edge = source if isinstance(source, StageEdge) else StageEdge(source, source_port, target, target_port)  # type: ignore[arg-type]
        src, dst = self._node(edge.source_node), self._node(edge.target_node)
        if edge.source_port not in src.outputs:
            raise ValueError(f"node {edge.source_node!r} has no output {edge.source_port!r} (outputs: {list(src.outputs)})")
        if edge.target_port not in dst.inputs:
            raise ValueError(f"node {edge.target_node!r} has no input {edge.target_port!r} (inputs: {list(dst.inputs)})")
        a, b = src.outputs[edge.source_port], dst.inputs[edge.target_port]
        if PortType.ANY not in (a, b) and a is not b:
            raise TypeError(
                f"type mismatch: {edge.source_node}.{edge.source_port} is {a.value}, "
                f"{edge.target_node}.{edge.target_port} is {b.value}"
            )
        if edge in self._edges:
            return edge
        if any(e.target_node == edge.target_node and e.target_port == edge.target_port for e in self._edges):
            raise ValueError(f"input {edge.target_node}.{edge.target_port} already has an edge")
        self._edges.append(edge)
        return edge

    def set_state_contract(
        self,
        input_blocks: Iterable[int | str],
        output_blocks: Iterable[int | str],
        mapping_input: Iterable[Sequence[Any]] | None = None,
        mapping_output: Iterable[Sequence[Any]] | None = None,
    ) -> None:
        """What the stage reads and writes, and optionally where each block goes.

        Mapping entries are ``(block_or_field, node_id, port)`` or with a fourth item, a
        converter: for inputs it gets the raw block JSON (or field) and returns the port
        value; for outputs it gets the port value and returns what is then converted to the
        block. Blocks are numbers or ``"blockN"``. Checked by `validate`."""
        self.input_blocks = tuple(_block_number(b) for b in input_blocks)
        self.output_blocks = tuple(_block_number(b) for b in output_blocks)
        self._mapping_input = None if mapping_input is None else [_mapping(m) for m in mapping_input]
        self._mapping_output = None if mapping_output is None else [_mapping(m) for m in mapping_output]

    # AddPipeline / AddEdge / SetStateContract aliases (the TODOs' spelling)
    AddPipeline = add_pipeline
    AddRunnable = add_runnable
    AddEdge = add_edge
    SetStateContract = set_state_contract

    def as_stage(self, role: str, *, condition: Condition | None = None, name: str | None = None) -> Stage:
        """This graph as the `Stage` of transition `role`, reading and writing its contract,
        run when `condition` (else its `execution_condition`, else the role's canon) holds."""
        stage = Stage(role, self, reads=self.input_blocks, writes=self.output_blocks,
                      condition=condition or self.execution_condition, name=name or self.stage_id)
        stage.stage_graph = self  # type: ignore[attr-defined]
        return stage

    # ----------------------------------------------------------- mappings
    def resolved_mapping_input(self) -> list[_Mapping]:
        """The input mapping in force: the explicit one, else the default (module doc)."""
        if self._mapping_input is not None:
            return list(self._mapping_input)
        boundary = [n for n in self._nodes if not self.in_edges(n)]
        ports = [(n, p) for n in boundary for p in self._nodes[n].inputs]
        return [_Mapping(block_key(b), n, p) for b, (n, p) in zip(self.input_blocks, ports)]

    def resolved_mapping_output(self) -> list[_Mapping]:
        if self._mapping_output is not None:
            return list(self._mapping_output)
        sinks = [n for n in self._nodes if not self.out_edges(n)]
        ports = [(n, p) for n in sinks for p in self._nodes[n].outputs]
        return [_Mapping(block_key(b), n, p) for b, (n, p) in zip(self.output_blocks, ports)]

    # --------------------------------------------------------- validation
    def topological_order(self) -> tuple[list[str], list[str]]:
        """``(order, cyclic)``: the nodes in a topological order, and those left in cycles."""
        indegree = {n: 0 for n in self._nodes}
        for e in self._edges:
            indegree[e.target_node] += 1
        queue = deque(n for n in self._nodes if indegree[n] == 0)
        order: list[str] = []
        while queue:
            n = queue.popleft()
            order.append(n)
            for e in self.out_edges(n):
                indegree[e.target_node] -= 1
                if indegree[e.target_node] == 0:
                    queue.append(e.target_node)
        return order, [n for n in self._nodes if n not in order]

    def validate(self, strict: bool = True, validate_pipelines: bool = True) -> ValidationResult:
        """Errors: a cycle (a warning with ``strict=False``), contract blocks outside
        block1 … block5, mapping entries naming unknown nodes/ports or blocks outside the
        contract, more blocks than the default mapping has ports, required inputs nothing
        feeds, and (with `validate_pipelines`) each pipeline's errors prefixed by node id.
        Warnings: unreachable nodes, nodes leading to no output. `strict` raises
        `StageGraphValidationError` on errors."""
        errors: list[ValidationIssue] = []
        warnings: list[ValidationIssue] = []
        if not self._nodes and self.remote is None:
            errors.append(ValidationIssue(f"stage {self.stage_id!r} has no node"))
        _, cyclic = self.topological_order()
        if cyclic:
            issue = ValidationIssue(f"nodes {cyclic} form a cycle; a stage must be a DAG", cyclic[0])
            (errors if strict else warnings).append(issue)

        for what, blocks in (("input", self.input_blocks), ("output", self.output_blocks)):
            for n in blocks:
                if n not in BLOCK_NUMBERS:
                    errors.append(ValidationIssue(
                        f"state contract {what} uses block{n}, but the state has block1 … block5"))

        m_in, m_out = self.resolved_mapping_input(), self.resolved_mapping_output()
        if self._mapping_input is None and len(m_in) < len(self.input_blocks):
            errors.append(ValidationIssue(
                f"input blocks {list(self.input_blocks)} outnumber the boundary nodes' inputs; give mapping_input"))
        if self._mapping_output is None and len(m_out) < len(self.output_blocks):
            errors.append(ValidationIssue(
                f"output blocks {list(self.output_blocks)} outnumber the sink nodes' outputs; give mapping_output"))
        errors += self._mapping_errors(m_in, "input", self.input_blocks)
        errors += self._mapping_errors(m_out, "output", self.output_blocks)

        fed = {(e.target_node, e.target_port) for e in self._edges} | {(m.node_id, m.port) for m in m_in}
        for nid, node in self._nodes.items():
            for port in node.inputs:
                if (nid, port) not in fed and port not in node.optional_inputs:
                    errors.append(ValidationIssue(
                        f"node {nid!r} input {port!r} is required but no edge or block mapping feeds it", nid, port))

        starts = {m.node_id for m in m_in if m.node_id in self._nodes}
        starts |= {n for n, node in self._nodes.items() if not node.inputs}
        ends = {m.node_id for m in m_out if m.node_id in self._nodes}
        forward = reachable(starts, lambda n: (e.target_node for e in self.out_edges(n)))
        backward = reachable(ends, lambda n: (e.source_node for e in self.in_edges(n)))
        for n in self._nodes:
            if n not in forward:
                warnings.append(ValidationIssue(f"node {n!r} is unreachable from the stage's input blocks", n))
            if n not in backward:
                warnings.append(ValidationIssue(f"node {n!r} leads to no output block", n))

        if validate_pipelines:
            for nid, node in self._nodes.items():
                if node.kind == "pipeline":
                    inner = node.impl.validate(strict=False)
                    errors += [ValidationIssue(f"node {nid!r}: {i.message}", nid, i.port_name) for i in inner.errors]
                    warnings += [ValidationIssue(f"node {nid!r}: {i.message}", nid, i.port_name) for i in inner.warnings]

        result = ValidationResult(errors, warnings)
        if strict and errors:
            raise StageGraphValidationError(self.stage_id, result)
        return result

    # ------------------------------------------------------------ running
    def run(
        self,
        state: Mapping[str, Any],
        *,
        action: str | None = None,
        callbacks: NodeCallback | Iterable[NodeCallback] | None = None,
        **pipeline_kwargs: Any,
    ) -> dict[str, Any]:
        """Run on a state and return the whole new state (input merged with the update)."""
        return {**state, **self.update(state, action=action, callbacks=callbacks, **pipeline_kwargs)}

    def __call__(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """The `Stage` implementation: the update of the output blocks only."""
        return self.update(state)

    def update(
        self,
        state: Mapping[str, Any],
        *,
        action: str | None = None,
        callbacks: NodeCallback | Iterable[NodeCallback] | None = None,
        **pipeline_kwargs: Any,
    ) -> dict[str, Any]:
        """Map blocks → inputs, run the nodes in dependency order with a buffer keyed by
        ``(node_id, port)``, and map outputs → blocks. `pipeline_kwargs` (``training``,
        ``device``, ``num_loop_steps``…) go to every ``pipeline.run``.

        Nodes with no path between them run concurrently (`_run_nodes`); the result does
        not depend on which finishes first. A stage with an endpoint runs remotely."""
        if self.remote is not None:
            if state.get("action") is None and action is not None:
                state = {**state, "action": action}
            return self.remote.invoke(state, self.input_blocks, self.output_blocks, stage_id=self.stage_id)
        order, cyclic = self.topological_order()
        if cyclic:
            raise StageGraphValidationError(
                self.stage_id, ValidationResult([ValidationIssue(f"nodes {cyclic} form a cycle; a stage must be a DAG")]))
        cbs = [] if callbacks is None else [callbacks] if callable(callbacks) else list(callbacks)
        if action is not None or "action" not in state:
            state = {**state, "action": action if action is not None else state.get("action")}

        buffer: dict[tuple[str, str], Any] = {}
        for m in self.resolved_mapping_input():
            value = _block_to_port(state, m)
            if value is not None:
                buffer[(m.node_id, m.port)] = value
        self._run_nodes(order, buffer, cbs, pipeline_kwargs)

        update: dict[str, Any] = {}
        for m in self.resolved_mapping_output():
            if (m.node_id, m.port) not in buffer:
                raise RuntimeError(f"stage {self.stage_id!r}: node {m.node_id!r} gave no output {m.port!r}")
            value = buffer[(m.node_id, m.port)]
            if m.converter is not None:
                value = m.converter(value)
            n = m.block
            block = _port_to_block(n, value, state, slot=m.port)  # type: ignore[arg-type]
            if n == 3 and update.get("block3"):
                block = {"items": [*update["block3"]["items"], *block["items"]]}
            update[block_key(n)] = block  # type: ignore[arg-type]
        return update

    # ------------------------------------------------------- serialization
    # world.md §3: a stage of pipelines serializes; runnables (code) and converters do not.
    def to_config(self) -> dict[str, Any]:
        """``{schema_version, stage_id, role?, metadata, pipelines: {node_id: {pipeline_config,
        endpoint_url?, assistant_id?}}, edges, state_contract, execution_condition?,
        trainable_nodes?, lr?, freeze_others?, endpoint_url?, assistant_id?}``; raises
        `ConfigError` naming a runnable node or a mapping entry with a converter. `role` is
        the ``role`` attribute, when set."""
        from worldgen.engine.serialization import check_block_ids

        self._check_serializable()
        check_block_ids(self._labelled_graphs())
        return self._config_dict({
            nid: {"pipeline_config": node.impl.to_config()} if node.kind == "pipeline" else {}
            for nid, node in self._nodes.items()
        })

    @classmethod
    def from_config(
        cls,
        config: Mapping[str, Any] | str | PathLike[str],
        *,
        registry: BlockRegistry | None = None,
        validate: bool = False,
        base_dir: str | PathLike[str] | None = None,
    ) -> StageGraph:
        """A stage graph from a config dict, a YAML/JSON file or a saved stage's folder.

        A pipeline entry is ``{pipeline_config: {...}}``, ``{ref: file or saved folder}`` or
        a bare pipeline config. Blocks with one `block_id` are one object stage-wide."""
        from worldgen.engine.serialization import (
            ConfigError,
            _validate,
            pipeline_from_config,
            read_versioned_config,
        )

        raw, base = read_versioned_config(config, base_dir, "stage config")
        where = "stage config" + (f" {str(config)!r}" if isinstance(config, (str, PathLike)) else "")
        parsed = _validate(_StageConfig, raw, where)
        stage = cls(parsed.stage_id)
        stage.metadata = dict(parsed.metadata) or {"description": ""}
        if parsed.role is not None:
            stage.role = parsed.role  # type: ignore[attr-defined]
        shared: dict[str, Any] = {}
        for nid, entry in parsed.pipelines.items():
            if entry.pipeline_config is None and entry.ref is None:  # a remote-only node
                stage.add_remote(nid, entry.endpoint_url, entry.assistant_id or nid, entry.inputs or {},  # type: ignore[arg-type]
                                 entry.outputs or {}, optional_inputs=entry.optional_inputs,
                                 api_key_env=entry.api_key_env)
                continue
            source = base / entry.ref if entry.ref is not None else (entry.pipeline_config or {})
            try:
                pipeline = pipeline_from_config(
                    source, registry=registry, base_dir=None if entry.ref is not None else base,
                    shared_blocks=shared, label=f"{nid}/",
                )
            except ConfigError as exc:
                raise ConfigError(f"{where}: pipelines.{nid}: {exc}") from None
            stage.add_pipeline(pipeline, nid)
            if entry.endpoint_url is not None:
                stage.set_node_endpoint(nid, entry.endpoint_url, entry.assistant_id, api_key_env=entry.api_key_env)
        for i, edge in enumerate(parsed.edges):
            try:
                stage.add_edge(edge.source_node, edge.source_port, edge.target_node, edge.target_port)
            except (ValueError, TypeError) as exc:
                exc.add_note(f"(while building stage config key 'edges.{i}')")
                raise
        contract = parsed.state_contract
        stage.set_state_contract(
            contract.input_blocks, contract.output_blocks, contract.mapping_input, contract.mapping_output
        )
        try:
            stage.set_execution_condition(parsed.execution_condition)
            unknown = [n for n in parsed.trainable_nodes or () if n not in stage.node_ids]
            if unknown:
                raise ValueError(f"trainable_nodes names unknown nodes {unknown} (nodes: {stage.node_ids})")
            if parsed.trainable_nodes is not None or parsed.lr is not None or parsed.freeze_others:
                stage.set_training(parsed.trainable_nodes, lr=parsed.lr, freeze_others=parsed.freeze_others)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if parsed.endpoint_url is not None:
            stage.set_endpoint(parsed.endpoint_url, parsed.assistant_id, api_key_env=parsed.api_key_env)
        if validate:
            stage.validate(strict=True)
        return stage

    def save_config(self, path: str | PathLike[str]) -> Path:
        """Write `to_config()` as JSON (``.json``) or YAML; returns the path."""
        from worldgen.engine.serialization import write_config_file

        return write_config_file(self.to_config(), path)

    def save(self, directory: str | PathLike[str]) -> Path:
        """``config.yaml`` + ``checkpoints/<node_id>/`` (a saved pipeline each) + ``shared/``
        (weights of blocks used by several graphs, once) + ``stage_meta.json``."""
        import json

        from worldgen.engine.serialization import (
            CONFIG_FILES,
            SCHEMA_VERSION,
            save_pipelines,
            write_config_file,
        )

        self._check_serializable()
        root = Path(directory)
        local = {nid: node.impl for nid, node in self._nodes.items() if node.kind == "pipeline"}
        refs = save_pipelines(local, root)
        meta = {
            "schema_version": SCHEMA_VERSION, "stage_id": self.stage_id, "role": getattr(self, "role", None),
            "node_ids": self.node_ids, "node_dirs": refs,
        }
        (root / STAGE_META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        entries = {nid: {"ref": refs[nid]} if nid in refs else {} for nid in self._nodes}
        return write_config_file(self._config_dict(entries), root / CONFIG_FILES[0])

    @classmethod
    def load(
        cls, directory: str | PathLike[str], *, registry: BlockRegistry | None = None, validate: bool = False
    ) -> StageGraph:
        """A stage graph written by `save`, weights restored, shared blocks shared again."""
        return cls.from_config(Path(directory), registry=registry, validate=validate)

    def _check_serializable(self) -> None:
        from worldgen.engine.serialization import ConfigError

        for nid, node in self._nodes.items():
            if node.kind == "runnable":
                raise ConfigError(
                    f"stage {self.stage_id!r}: node {nid!r} is a runnable ({type(node.impl).__name__}); "
                    "runnables hold code and cannot be serialized, only pipeline nodes can"
                )
        for what, mappings in (("mapping_input", self._mapping_input), ("mapping_output", self._mapping_output)):
            for i, m in enumerate(mappings or ()):
                if m.converter is not None:
                    raise ConfigError(
                        f"stage {self.stage_id!r}: {what}[{i}] ({m.source!r} ↔ {m.node_id}.{m.port}) has a "
                        "converter; converters are code and cannot be serialized"
                    )

    def _labelled_graphs(self) -> list[tuple[str, Graph]]:
        return [
            (f"{nid}/{pid}", node.impl.get_graph(pid))
            for nid, node in self._nodes.items() if node.kind == "pipeline" for pid in node.impl.graph_ids
        ]

    def _config_dict(self, pipelines: dict[str, dict[str, Any]]) -> dict[str, Any]:
        from worldgen.engine.serialization import SCHEMA_VERSION, _jsonable

        def mapping(entries: list[_Mapping] | None) -> list[list[str]] | None:
            return None if entries is None else [[m.source, m.node_id, m.port] for m in entries]

        config: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "stage_id": self.stage_id}
        role = getattr(self, "role", None)
        if role is not None:
            config["role"] = role
        config["metadata"] = _jsonable(self.metadata, f"stage {self.stage_id!r} metadata")
        nodes: dict[str, dict[str, Any]] = {}
        for nid, entry in pipelines.items():
            node = self._nodes[nid]
            entry = dict(entry)
            if node.remote is not None:  # the descriptor: URL, assistant id, key env name, never a key
                entry.update(node.remote.to_config())
            if node.kind == "remote":
                entry["inputs"] = {p: t.value for p, t in node.inputs.items()}
                entry["outputs"] = {p: t.value for p, t in node.outputs.items()}
                if node.optional_inputs:
                    entry["optional_inputs"] = sorted(node.optional_inputs)
            nodes[nid] = entry
        config["pipelines"] = nodes
        config["edges"] = [asdict(e) for e in self._edges]
        contract: dict[str, Any] = {"input_blocks": list(self.input_blocks), "output_blocks": list(self.output_blocks)}
        for key, entries in (("mapping_input", self._mapping_input), ("mapping_output", self._mapping_output)):
            if entries is not None:
                contract[key] = mapping(entries)
        config["state_contract"] = contract
        if self._condition_spec is not None:
            config["execution_condition"] = self._condition_spec
        if self.trainable_nodes is not None:
            config["trainable_nodes"] = list(self.trainable_nodes)
        if self.lr is not None:
            config["lr"] = self.lr
        if self.freeze_others:
            config["freeze_others"] = True
        if self.remote is not None:
            config.update(self.remote.to_config())
        return config

    # ------------------------------------------------------------ private
    def _run_nodes(
        self, order: list[str], buffer: dict[tuple[str, str], Any], cbs: list[NodeCallback], kwargs: dict[str, Any]
    ) -> None:
        """Run each node once its predecessors are done. Several ready nodes run at once in
        a thread pool: model calls (torch kernels, HTTP to a remote node or an API) release
        the GIL, so independent pipelines overlap. A lone ready node runs in this thread.

        Not a LangGraph `StateGraph`: the buffer carries tensors and images, which must stay
        out of LangGraph channels (inside a world run they would join its checkpoints and
        streams); the world's own graph is where LangGraph takes over. Callbacks fire from
        this thread: "before" when a node starts, "after" as it finishes (ties in
        topological order). Each worker runs in a copy of this context (run options, the
        LangGraph runtime) with this thread's grad mode."""
        rank = {n: i for i, n in enumerate(order)}
        waiting = {n: {e.source_node for e in self.in_edges(n)} for n in order}
        ready = [n for n in order if not waiting[n]]
        running: dict[Future[dict[str, Any]], str] = {}
        pool: ThreadPoolExecutor | None = None
        grad = _grad_enabled()

        def start(nid: str) -> tuple[_Node, dict[str, Any]]:
            node = self._nodes[nid]
            for e in self.in_edges(nid):
                if (e.source_node, e.source_port) in buffer:
                    buffer[(nid, e.target_port)] = buffer[(e.source_node, e.source_port)]
            inputs = {p: buffer[(nid, p)] for p in node.inputs if (nid, p) in buffer}
            for cb in cbs:
                cb(nid, inputs, None)
            return node, inputs

        def finish(nid: str, inputs: dict[str, Any], outputs: dict[str, Any]) -> None:
            for cb in cbs:
                cb(nid, inputs, outputs)
            for port, value in outputs.items():
                buffer[(nid, port)] = value
            for e in self.out_edges(nid):
                pending = waiting[e.target_node]
                if nid in pending:
                    pending.discard(nid)
                    if not pending:
                        ready.append(e.target_node)

        started_inputs: dict[str, dict[str, Any]] = {}
        try:
            while ready or running:
                ready.sort(key=rank.__getitem__)
                if len(ready) == 1 and not running:  # a chain: no thread needed
                    nid = ready.pop()
                    node, inputs = start(nid)
                    finish(nid, inputs, self._run_node(nid, node, inputs, kwargs))
                    continue
                while ready:
                    nid = ready.pop(0)
                    node, inputs = start(nid)
                    started_inputs[nid] = inputs
                    if pool is None:
                        pool = ThreadPoolExecutor(self.max_concurrency or max(2, len(order)),
                                                  thread_name_prefix=f"stage-{self.stage_id}")
                    ctx = contextvars.copy_context()
                    running[pool.submit(ctx.run, self._run_node_in_worker, nid, node, inputs, kwargs, grad)] = nid
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in sorted(done, key=lambda f: rank[running[f]]):
                    nid = running.pop(future)
                    finish(nid, started_inputs.pop(nid), future.result())
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def _run_node_in_worker(
        self, nid: str, node: _Node, inputs: dict[str, Any], kwargs: dict[str, Any], grad: bool | None
    ) -> dict[str, Any]:
        if grad is None:
            return self._run_node(nid, node, inputs, kwargs)
        import torch

        with torch.set_grad_enabled(grad):  # grad mode is per thread
            return self._run_node(nid, node, inputs, kwargs)

    def _run_node(self, nid: str, node: _Node, inputs: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        if node.remote is not None:
            return node.remote.invoke(inputs, node.inputs, node.outputs, node_id=nid)
        if node.kind == "pipeline":
            return dict(node.impl.run(inputs, **kwargs))
        out = node.impl.invoke(inputs) if isinstance(node.impl, Runnable) else node.impl(inputs)
        if not isinstance(out, Mapping):
            if len(node.outputs) != 1:
                raise TypeError(f"node {nid!r} returned {type(out).__name__}, not a dict of its outputs {list(node.outputs)}")
            out = {next(iter(node.outputs)): out}
        missing = [p for p in node.outputs if p not in out]
        if missing:
            raise RuntimeError(f"node {nid!r} gave no output {missing}")
        return {p: out[p] for p in node.outputs}

    def _node(self, node_id: str) -> _Node:
        if node_id not in self._nodes:
            raise ValueError(f"stage {self.stage_id!r} has no node {node_id!r} (nodes: {self.node_ids})")
        return self._nodes[node_id]

    def _check_new_id(self, node_id: str) -> None:
        if not node_id:
            raise ValueError("a stage node needs a non-empty id")
        if node_id in self._nodes:
            raise ValueError(f"stage {self.stage_id!r} already has a node {node_id!r}")

    def _mapping_errors(self, mappings: list[_Mapping], what: str, blocks: tuple[int, ...]) -> list[ValidationIssue]:
        errors = []
        for m in mappings:
            n = m.block
            if n is None and not (what == "input" and m.source == "action"):
                errors.append(ValidationIssue(f"mapping_{what} source {m.source!r} is not a block (block1 … block5)"))
            elif n is not None and n not in BLOCK_NUMBERS:
                errors.append(ValidationIssue(f"mapping_{what} uses block{n}, but the state has block1 … block5"))
            elif n is not None and n not in blocks:
                errors.append(ValidationIssue(f"mapping_{what} uses block{n}, which is not among the contract's {what} blocks {list(blocks)}"))
            if what == "output" and "." in m.source:
                errors.append(ValidationIssue(f"mapping_output must name a whole block, got {m.source!r}"))
            if m.node_id not in self._nodes:
                errors.append(ValidationIssue(f"mapping_{what} names an unknown node {m.node_id!r}", m.node_id))
                continue
            ports = self._nodes[m.node_id].inputs if what == "input" else self._nodes[m.node_id].outputs
            if m.port not in ports:
                errors.append(ValidationIssue(
                    f"mapping_{what}: node {m.node_id!r} has no {what} {m.port!r} ({what}s: {list(ports)})", m.node_id, m.port))
            elif what == "input" and m.converter is None and n in (1, 2, 4, 5) and "." not in m.source \
                    and ports[m.port] not in (PortType.ANY, PortType.TEXT):
                errors.append(ValidationIssue(
                    f"mapping_input: block{n} gives text but {m.node_id}.{m.port} is {ports[m.port].value}; add a converter",
                    m.node_id, m.port))
        return errors


# ------------------------------------------------------------------ conversions
def _block_to_port(state: Mapping[str, Any], m: _Mapping) -> Any:
    if m.source == "action":
        raw = state.get("action")
        return m.converter(raw) if m.converter else raw
    head, _, fieldname = m.source.partition(".")
    raw = state.get(head)
    if hasattr(raw, "model_dump"):
        raw = raw.model_dump(mode="json")
    if isinstance(raw, str) and m.block in BLOCK_TYPES:
        raw = BLOCK_TYPES[m.block].model_validate(raw).model_dump(mode="json")  # type: ignore[index]
    if fieldname:
        raw = None if raw is None else raw.get(fieldname)
    if m.converter is not None:
        return m.converter(raw)
    if raw is None or fieldname:
        return raw
    n = m.block
    if n in (1, 5):
        return raw.get("text")
    if n == 2:
        slots = raw.get("slots") or []
        image = [s for s in slots if s.get("kind") == "image"]
        return (image or slots)[0]["prompt"] if slots else None
    if n == 3:
        return list(raw.get("items") or [])
    if n == 4:
        return "\n".join(d.get("text", "") for d in raw.get("items") or [])
    return raw


def _port_to_block(n: int, value: Any, state: Mapping[str, Any], *, slot: str = "") -> dict[str, Any]:
    if n == 3:
        return {"items": _artifact_items(value, state, slot)}
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    return BLOCK_TYPES[n].model_validate(value).model_dump(mode="json")


def _artifact_items(value: Any, state: Mapping[str, Any], slot: str) -> list[dict[str, Any]]:
    from PIL import Image

    if isinstance(value, Mapping) and "items" in value:
        return [dict(i) if isinstance(i, Mapping) else i.model_dump(mode="json") for i in value["items"]]
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    items: list[dict[str, Any]] = []
    for v in values:
        if hasattr(v, "model_dump"):  # an ArtifactRef
            items.append(v.model_dump(mode="json"))
        elif isinstance(v, Mapping):
            items.append(dict(v))
        elif isinstance(v, str):
            items.append(_store(state).put_text(v, slot=slot).model_dump(mode="json"))
        elif isinstance(v, Image.Image):
            items.append(_store(state).put_image(v, slot=slot).model_dump(mode="json"))
        elif _is_tensor(v):
            from worldgen.blocks.diffusion import to_pil

            tensor = v if v.dim() == 4 else v.unsqueeze(0)
            items += [_store(state).put_image(img, slot=slot).model_dump(mode="json") for img in to_pil(tensor.clamp(0, 1))]
        else:
            raise TypeError(f"block3 takes images, tensors, text or artifact refs, got {type(v).__name__}")
    return items


def _store(state: Mapping[str, Any]) -> Any:
    world = state.get("world")
    store = getattr(world, "artifacts", None)
    if store is None:
        raise RuntimeError("writing block3 needs state['world'].artifacts (an ArtifactStore)")
    return store


def _is_tensor(value: Any) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return isinstance(value, torch.Tensor)


# ---------------------------------------------------------------------- helpers
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


def _block_number(block: int | str) -> int:
    if isinstance(block, int):
        return block
    text = str(block)
    if text.startswith("block") and text[5:].isdigit():
        return int(text[5:])
    raise ValueError(f"{block!r} is not a block (a number or 'blockN')")


def _grad_enabled() -> bool | None:
    torch = sys.modules.get("torch")
    return None if torch is None else torch.is_grad_enabled()


def _condition(spec: Any, stage_id: str) -> Condition | None:
    if spec is None or isinstance(spec, Condition):
        return spec
    if isinstance(spec, str):
        if spec not in CANON:
            raise ValueError(f"stage {stage_id!r}: unknown execution_condition preset {spec!r}; "
                             f"presets: {', '.join(CANON)}")
        return CANON[spec].condition
    if isinstance(spec, Mapping):
        return Condition.model_validate(dict(spec))
    if callable(spec):
        raise TypeError(f"stage {stage_id!r}: execution_condition must be data (a preset name, a list of "
                        "blocks or a Condition), not a callable: the world compiles it into its edges")
    if isinstance(spec, Iterable):
        return Condition(requires=tuple(_block_number(b) for b in spec))
    raise TypeError(f"stage {stage_id!r}: execution_condition {spec!r} is not a preset, a list of blocks or a Condition")


def _condition_spec(spec: Any) -> Any:
    """The config form of a condition: as given (a preset name, a list of blocks, a dict)."""
    if spec is None or isinstance(spec, str):
        return spec
    if isinstance(spec, Condition):
        return spec.model_dump(exclude_defaults=True, mode="json")
    if isinstance(spec, Mapping):
        return Condition.model_validate(dict(spec)).model_dump(exclude_defaults=True, mode="json")
    return [_block_number(b) for b in spec]


def _mapping(entry: Sequence[Any]) -> _Mapping:
    if len(entry) not in (3, 4):
        raise ValueError(f"a mapping entry is (block_or_field, node_id, port[, converter]), got {entry!r}")
    source = entry[0]
    source = block_key(source) if isinstance(source, int) else str(source)
    converter = entry[3] if len(entry) == 4 else None
    if converter is not None and not callable(converter):
        raise TypeError(f"mapping converter must be callable, got {type(converter).__name__}")
    return _Mapping(source, str(entry[1]), str(entry[2]), converter)


# ---------------------------------------------------------------------- templates
class _SlotCreator:
    """Runs the stage graph once per image slot of block 2 and gathers the refs in block 3."""

    def __init__(self, stage_graph: StageGraph, seed: int | None, generator: str) -> None:
        self.stage_graph = stage_graph
        self.seed = seed
        self.generator = generator

    def __call__(self, state: dict[str, Any]) -> dict[str, Any]:
        from worldgen.agents.creator import slot_seed
        from worldgen.state import GenerationConfig

        config = GenerationConfig.model_validate(state.get("block2") or {})
        items: list[dict[str, Any]] = []
        for slot in config.slots:
            if slot.kind != "image":
                raise ValueError(f"slot {slot.name!r} has kind {slot.kind!r}; this creator stage renders image slots")
            params = dict(slot.params)
            seed = int(params["seed"]) if "seed" in params else (
                self.seed if self.seed is not None else slot_seed(slot.prompt, params))
            one = {"slots": [{**slot.model_dump(mode="json"), "params": {**params, "seed": seed}}]}
            update = self.stage_graph({**state, "block2": one})
            for item in update["block3"]["items"]:
                meta = {**item.get("meta", {}), "generator": self.generator, "seed": seed, "prompt": slot.prompt}
                items.append({**item, "slot": slot.name, "meta": meta})
        return {"block3": {"items": items}}


def _slot_seed(block2: Mapping[str, Any] | None) -> int | None:
    slots = (block2 or {}).get("slots") or []
    return int(slots[0]["params"]["seed"]) if slots and "seed" in slots[0].get("params", {}) else None


def creator_stage(checkpoint: Any, *, seed: int | None = None, node_id: str = "text_to_image", **params: Any) -> Stage:
    """The canon Creator as a stage graph: each image slot of block 2 → ``text_to_image``
    graph (``prompt``, ``seed``) → image → an artifact ref in block 3.

    `params` go to the ``text_to_image`` template (``num_inference_steps``, ``height``,
    ``width``, ``guidance_scale``, ``solver``…); the image size is fixed by them (a slot's
    ``width``/``height`` are ignored). The seed is the slot's ``params["seed"]``, else
    `seed`, else derived from the prompt as the Creator agent does. Text slots are an
    error. The returned stage has ``stage.stage_graph`` (to validate or inspect it)."""
    graph = Graph.from_template("text_to_image", checkpoint=checkpoint, graph_id=node_id, **params)
    sg = StageGraph("creator_stage", description="image slots of block 2 rendered by text_to_image")
    sg.add_pipeline(graph, node_id)
    sg.set_state_contract(
        [2], [3],
        mapping_input=[("block2", node_id, "prompt"), ("block2", node_id, "seed", _slot_seed)],
        mapping_output=[("block3", node_id, "image")],
    )
    sg.validate(strict=True)
    stage = Stage("creator", _SlotCreator(sg, seed, f"stage_graph:text_to_image:{checkpoint}"), reads=(2,), writes=(3,),
                  name="creator_stage")
    stage.stage_graph = sg  # type: ignore[attr-defined]
    return stage


_STAGE_TEMPLATES: dict[str, Callable[..., Stage]] = {"creator_stage": creator_stage}


def stage_templates() -> list[str]:
    return sorted(_STAGE_TEMPLATES)


def stage_from_template(name: str, **params: Any) -> Stage:
    """A registered stage template (``"creator_stage"``) built with `params`."""
    if name not in _STAGE_TEMPLATES:
        raise ValueError(f"unknown stage template {name!r}: available: {', '.join(stage_templates())}")
    return _STAGE_TEMPLATES[name](**params)


# ------------------------------------------------------------------ serialization models
STAGE_META_FILE = "stage_meta.json"


_REMOTE_KEYS = {"endpoint_url", "assistant_id", "api_key_env"}


class _StagePipelineConfig(StrictConfig):
    """A pipeline node: nested or ``ref``; with ``endpoint_url`` it runs remotely. A node with
    an endpoint and no pipeline is remote-only and declares its ``inputs``/``outputs``."""

    pipeline_config: dict[str, Any] | None = None
    ref: str | None = Field(None, min_length=1)
    endpoint_url: str | None = Field(None, min_length=1)
    assistant_id: str | None = Field(None, min_length=1)
    api_key_env: str | None = Field(None, min_length=1)
    inputs: dict[str, str] | None = None
    outputs: dict[str, str] | None = None
    optional_inputs: list[str] = []

    @model_validator(mode="before")
    @classmethod
    def _bare(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and not ({"pipeline_config", "ref", "inputs", "outputs", "optional_inputs"} | _REMOTE_KEYS) & set(data):
            return {"pipeline_config": dict(data)}
        return data

    @model_validator(mode="after")
    def _one_form(self) -> _StagePipelineConfig:
        if self.pipeline_config is not None and self.ref is not None:
            raise ValueError("a stage pipeline needs exactly one of 'pipeline_config' or 'ref'")
        if self.pipeline_config is None and self.ref is None:
            if self.endpoint_url is None:
                raise ValueError("a stage pipeline needs exactly one of 'pipeline_config' or 'ref' "
                                 "(or 'endpoint_url' with 'inputs'/'outputs' for a remote-only node)")
        elif self.inputs is not None or self.outputs is not None:
            raise ValueError("'inputs'/'outputs' are for remote-only nodes; a pipeline node takes its pipeline's ports")
        return self


class _StateContractConfig(StrictConfig):
    input_blocks: list[int | str] = []
    output_blocks: list[int | str] = []
    mapping_input: list[tuple[str, str, str]] | None = None
    mapping_output: list[tuple[str, str, str]] | None = None


class _StageConfig(StrictConfig):
    schema_version: str
    stage_id: str = Field(min_length=1)
    role: str | None = None
    metadata: dict[str, Any] = {}
    pipelines: dict[str, _StagePipelineConfig] = {}
    edges: list[EdgeConfig] = []
    state_contract: _StateContractConfig = _StateContractConfig()
    execution_condition: str | list[int | str] | dict[str, Any] | None = None
    trainable_nodes: list[str] | None = None
    lr: float | None = None
    freeze_others: bool = False
    endpoint_url: str | None = Field(None, min_length=1)
    assistant_id: str | None = Field(None, min_length=1)
    api_key_env: str | None = Field(None, min_length=1)
