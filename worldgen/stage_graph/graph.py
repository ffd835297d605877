"""`StageGraph`: the builder and runner of one stage — nodes, edges, the state contract,
the execution condition, training and remote settings, validation and running.

``__call__`` returns only the update of the output blocks (what the world merges), so the
other blocks are untouched; ``run`` returns the whole new state.

**Remote** (world.md §3–4, levels.md §9): a pipeline node with an endpoint
(`set_node_endpoint`, or `add_remote` for a node with no local pipeline) or the whole stage
(`set_endpoint`) runs on a LangGraph server through `RemoteGraph`; see `worldgen.remote`
for the wire format and for serving a saved stage or pipeline (``graphs/stage.py``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

from langchain_core.runnables import Runnable

from worldgen.blocks.ports import PortType
from worldgen.blocks.registry import BlockRegistry
from worldgen.engine.graph import Graph
from worldgen.engine.pipeline import Pipeline
from worldgen.engine.serialization import write_config_file
from worldgen.engine.validation import ValidationIssue, ValidationResult, reachable
from worldgen.remote import RemoteNode, RemoteStage
from worldgen.stage import CANON, Condition, Stage
from worldgen.stage_graph.config import save_stage_graph, stage_graph_from_config, stage_graph_to_config
from worldgen.stage_graph.execution import _run_nodes
from worldgen.stage_graph.mapping import (
    _block_number,
    _block_to_port,
    _Mapping,
    _mapping,
    _mapping_errors,
    _port_to_block,
)
from worldgen.stage_graph.nodes import NodeCallback, StageEdge, _Node, _ports, as_pipeline, pipeline_ports
from worldgen.state import BLOCK_NUMBERS, block_key


class StageGraphValidationError(ValueError):
    """Raised by ``validate(strict=True)`` and by running an invalid stage graph."""

    def __init__(self, stage_id: str, result: ValidationResult) -> None:
        self.result = result
        lines = "\n".join(f"  - {e}" for e in result.errors)
        super().__init__(f"stage {stage_id!r} is invalid ({len(result.errors)} errors):\n{lines}")


ConditionSpec = Condition | str | Sequence[int] | Mapping[str, Any]
"""A preset name (a transition: ``"philosopher"``, ``"author"``, ``"world_update"`` …), a
list of required blocks, a `Condition` or its dict (``{requires, produces, always}``)."""


class StageGraph:
    """A DAG of pipelines and runnables that realises one transition (see the package doc)."""

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

    def get_node_endpoint(self, node_id: str) -> Any:
        """The remote descriptor a node runs on (`set_node_endpoint`, `add_remote`), or None."""
        return self._node(node_id).remote

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
        pipeline = as_pipeline(pipeline_or_graph, "add_pipeline")
        nid = node_id or pipeline.pipeline_id or f"pipeline_{len(self._nodes)}"
        self._check_new_id(nid)
        inputs, outputs, optional = pipeline_ports(pipeline)
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
        remote = RemoteNode(endpoint_url, assistant_id, api_key_env=api_key_env, sync_client=sync_client)
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
        node.remote = RemoteNode(endpoint_url, assistant_id or node_id, api_key_env=api_key_env,
                                 sync_client=sync_client)

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
            endpoint_url, assistant_id or self.stage_id, api_key_env=api_key_env, sync_client=sync_client)

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
        if self.remote is not None:  # the whole stage runs (and trains) where it is served
            return []
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
        """The input mapping in force: the explicit one, else the default (`worldgen.stage_graph.mapping`)."""
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
        errors += _mapping_errors(m_in, "input", self.input_blocks, self._nodes)
        errors += _mapping_errors(m_out, "output", self.output_blocks, self._nodes)

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

        Nodes with no path between them run concurrently (`worldgen.stage_graph.execution`);
        the result does not depend on which finishes first. A stage with an endpoint runs
        remotely."""
        if action is not None:  # the argument wins over the state's action, here or remote
            state = {**state, "action": action}
        if self.remote is not None:
            return self.remote.invoke(state, self.input_blocks, self.output_blocks, stage_id=self.stage_id)
        order, cyclic = self.topological_order()
        if cyclic:
            raise StageGraphValidationError(
                self.stage_id, ValidationResult([ValidationIssue(f"nodes {cyclic} form a cycle; a stage must be a DAG")]))
        cbs = [] if callbacks is None else [callbacks] if callable(callbacks) else list(callbacks)

        buffer: dict[tuple[str, str], Any] = {}
        for m in self.resolved_mapping_input():
            value = _block_to_port(state, m)
            if value is not None:
                buffer[(m.node_id, m.port)] = value
        _run_nodes(self, order, buffer, cbs, pipeline_kwargs)

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
    # in `worldgen.stage_graph.config` (world.md §3): pipelines serialize, runnables and
    # converters (code) do not
    def to_config(self) -> dict[str, Any]:
        """``{schema_version, stage_id, role?, metadata, pipelines: {node_id: {pipeline_config,
        endpoint_url?, assistant_id?}}, edges, state_contract, execution_condition?,
        trainable_nodes?, lr?, freeze_others?, endpoint_url?, assistant_id?}``; raises
        `ConfigError` naming a runnable node or a mapping entry with a converter. `role` is
        the ``role`` attribute, when set."""
        return stage_graph_to_config(self)

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
        return stage_graph_from_config(cls, config, registry=registry, validate=validate, base_dir=base_dir)

    def save_config(self, path: str | PathLike[str]) -> Path:
        """Write `to_config()` as JSON (``.json``) or YAML; returns the path."""
        return write_config_file(self.to_config(), path)

    def save(self, directory: str | PathLike[str]) -> Path:
        """``config.yaml`` + ``checkpoints/<node_id>/`` (a saved pipeline each) + ``shared/``
        (weights of blocks used by several graphs, once) + ``stage_meta.json``."""
        return save_stage_graph(self, directory)

    @classmethod
    def load(
        cls, directory: str | PathLike[str], *, registry: BlockRegistry | None = None, validate: bool = False
    ) -> StageGraph:
        """A stage graph written by `save`, weights restored, shared blocks shared again."""
        return cls.from_config(Path(directory), registry=registry, validate=validate)

    # ------------------------------------------------------------ private
    def _node(self, node_id: str) -> _Node:
        if node_id not in self._nodes:
            raise ValueError(f"stage {self.stage_id!r} has no node {node_id!r} (nodes: {self.node_ids})")
        return self._nodes[node_id]

    def _check_new_id(self, node_id: str) -> None:
        if not node_id:
            raise ValueError("a stage node needs a non-empty id")
        if node_id in self._nodes:
            raise ValueError(f"stage {self.stage_id!r} already has a node {node_id!r}")


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
