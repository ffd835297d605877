"""`Graph`: blocks joined port to port — the first executable level (one graph = one task).

Building (`add_node`, `add_edge`, `expose_*`) checks everything it can at once and names
the node and port in every error; running is delegated to the shared dataflow executor
(`worldgen.engine.executor`). A graph is a LangChain `Runnable` (``invoke``) and, through
`as_tool`, a tool whose arguments are its exposed inputs.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.runnables import Runnable, RunnableConfig
from pydantic import BaseModel, ConfigDict, Field, create_model

from worldgen.blocks.base import Block
from worldgen.blocks.ports import Port, PortDirection, PortType
from worldgen.blocks.registry import BlockRegistry, global_registry
from worldgen.blocks.roles import block_role
from worldgen.engine.auto_connect import Ambiguity, AmbiguityPolicy, AutoConnectResult, plan_auto_edges
from worldgen.engine.context import enter_call_context, exit_call_context
from worldgen.engine.executor import Callback, run_graph
from worldgen.engine.nodes import Edge, ExposedPort, Node
from worldgen.engine.plan import ExecutionPlan, build_plan, loop_order_of
from worldgen.engine.validation import GraphValidationError, ValidationResult, validate_graph

if TYPE_CHECKING:
    from worldgen.engine.serialization import ConfigSource

__all__ = ["BlockSpec", "Graph"]

BlockSpec = Block | str | Mapping[str, Any]
"""A block instance, a registered block type name, or a block config for `BlockRegistry.build`."""

_graph_ids = itertools.count(1)
_SCHEMA_TYPES: dict[PortType, Any] = {PortType.TEXT: str, PortType.DICT: dict[str, Any]}


class Graph(Runnable[dict[str, Any], dict[str, Any]]):
    """A directed graph of blocks; loops (cycles) are allowed and run `num_loop_steps` times.

    Every structural change bumps `execution_version`, which invalidates the cached plan.
    """

    def __init__(
        self,
        graph_id: str | None = None,
        *,
        graph_kind: str = "generic",
        metadata: Mapping[str, Any] | None = None,
        ambiguity_policy: AmbiguityPolicy | str = AmbiguityPolicy.NONE,
    ) -> None:
        self.graph_id = graph_id or f"graph_{next(_graph_ids)}"
        self.name = self.graph_id  # LangChain run name
        self.graph_kind = graph_kind
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.ambiguity_policy = AmbiguityPolicy(ambiguity_policy)
        self._nodes: dict[str, Node] = {}
        self._edges: dict[Edge, None] = {}  # an insertion-ordered set
        self._in: dict[str, list[Edge]] = {}
        self._out: dict[str, list[Edge]] = {}
        self._auto_edges: set[Edge] = set()
        self._ambiguities: tuple[Ambiguity, ...] = ()
        self._auto_roles: dict[str, str] = {}  # nodes taking part in auto-connect → role
        self._exposed_in: dict[str, ExposedPort] = {}
        self._fan_out: dict[str, list[ExposedPort]] = {}  # run key → more ports it seeds
        self._exposed_out: dict[str, ExposedPort] = {}
        self._frozen_nodes: set[str] = set()  # nodes left out of trainable_parameters
        self._execution_version = 0
        self._plan: ExecutionPlan | None = None
        self._schemas: tuple[int, type[BaseModel], dict[str, str]] | None = None

    def __repr__(self) -> str:
        return f"Graph({self.graph_id!r}, nodes={len(self._nodes)}, edges={len(self._edges)})"

    # -------------------------------------------------------------- access
    @property
    def node_ids(self) -> list[str]:
        return list(self._nodes)

    @property
    def execution_version(self) -> int:
        return self._execution_version

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._nodes

    def get_node(self, node_id: str) -> Node:
        try:
            return self._nodes[node_id]
        except KeyError:
            raise KeyError(f"graph {self.graph_id!r} has no node {node_id!r} (nodes: {self.node_ids})") from None

    def get_edges(self) -> list[Edge]:
        return list(self._edges)

    def get_edges_in(self, node_id: str) -> list[Edge]:
        return self._in.get(node_id, [])

    def get_edges_out(self, node_id: str) -> list[Edge]:
        return self._out.get(node_id, [])

    def is_auto_edge(self, edge: Edge) -> bool:
        return edge in self._auto_edges

    def blocks(self) -> Iterator[Block]:
        """Each distinct block once (a block may sit in several nodes)."""
        yield from {id(n.block): n.block for n in self._nodes.values()}.values()

    # ------------------------------------------------------------ building
    def add_node(
        self,
        node: Node | str | None,
        block: BlockSpec | None = None,
        *,
        config: Mapping[str, Any] | None = None,
        registry: BlockRegistry | None = None,
        auto_connect: bool = True,
    ) -> str:
        """Add a node; returns its id.

        Forms: ``add_node(Node(...))``; ``add_node(id, block)``; ``add_node(id, "role/impl",
        config={...})``; ``add_node(id, {"type": ..., ...})``. An id of None is generated as
        ``<type with / → _>_<n>``. With `auto_connect`, a role node is wired by role rules
        (see `worldgen.engine.auto_connect`).
        """
        if isinstance(node, Node):
            if block is not None or config is not None:
                raise ValueError(f"add_node(Node({node.node_id!r}, ...)) takes no block or config")
            node_id, instance = node.node_id, node.block
        else:
            if block is None:
                raise ValueError("add_node needs a block, a block type or a block config")
            instance = self._make_block(block, config, registry, node)
            node_id = node if node is not None else self._fresh_id(instance.block_type)
            node = Node(node_id, instance)
        if node_id in self._nodes:
            raise ValueError(f"graph {self.graph_id!r} already has a node {node_id!r}")
        instance.get_input_ports()  # declare ports now, so a broken block fails here
        self._nodes[node_id] = node
        self._in[node_id], self._out[node_id] = [], []
        self._touch()
        if callable(attach := getattr(instance, "attach_to_graph", None)):
            attach(self, node_id)  # an agent resolves its "node:<id>" tools in this graph
        role = block_role(instance)
        if auto_connect and role is not None:
            self._auto_roles[node_id] = role
            self.auto_connect()
        return node_id

    def remove_node(self, node_id: str) -> None:
        self.get_node(node_id)
        for edge in self._in[node_id] + self._out[node_id]:
            if edge in self._edges:
                self._delete_edge(edge)
        del self._nodes[node_id], self._in[node_id], self._out[node_id]
        self._frozen_nodes.discard(node_id)
        for exposed in (self._exposed_in, self._exposed_out):
            for key in [k for k, e in exposed.items() if e.node_id == node_id]:
                del exposed[key]
        for key in list(self._fan_out):  # a fanned-out key keeps its other ports
            more = [e for e in self._fan_out.pop(key) if e.node_id != node_id]
            if more and key not in self._exposed_in:
                self._exposed_in[key] = more.pop(0)
            if more:
                self._fan_out[key] = more
        self._touch()
        if self._auto_roles.pop(node_id, None) is not None or self._auto_roles:
            self.auto_connect()

    def add_edge(
        self,
        source: Edge | str,
        source_port: str | None = None,
        target: str | None = None,
        target_port: str | None = None,
    ) -> Edge:
        """Add ``source.source_port → target.target_port`` (or an `Edge`); returns the edge.

        Re-adding an existing edge is a no-op (an auto edge becomes explicit). An explicit
        edge into a single-edge port replaces an auto edge there; a second explicit one raises.
        """
        edge = source if isinstance(source, Edge) else Edge(source, source_port, target, target_port)  # type: ignore[arg-type]
        if edge in self._edges:
            self._auto_edges.discard(edge)
            return edge
        dst = self._check_edge(edge)
        if not dst.accepts_many:
            for existing in [e for e in self._in[edge.target_node] if e.target_port == edge.target_port]:
                if existing not in self._auto_edges:
                    raise ValueError(
                        f"node {edge.target_node!r} port {edge.target_port!r} already has an edge "
                        f"({existing}) and takes only one (aggregation SINGLE); cannot add {edge}"
                    )
                self._delete_edge(existing)
        self._insert_edge(edge)
        self._touch()
        return edge

    def remove_edge(self, edge: Edge) -> None:
        if edge not in self._edges:
            raise KeyError(f"graph {self.graph_id!r} has no edge {edge}")
        was_auto = edge in self._auto_edges
        self._delete_edge(edge)
        self._touch()
        if not was_auto and self._auto_roles:
            self.auto_connect()  # an auto edge may now fit where the explicit one was

    def auto_connect(self, policy: AmbiguityPolicy | str | None = None) -> AutoConnectResult:
        """Recompute every auto edge from the current role nodes and explicit edges."""
        for edge in list(self._auto_edges):
            self._delete_edge(edge)
        role_nodes = {nid: (role, self._nodes[nid].block) for nid, role in self._auto_roles.items()}
        result = plan_auto_edges(
            role_nodes, self._edges, AmbiguityPolicy(policy or self.ambiguity_policy)
        )
        for edge in result.edges:
            self._insert_edge(edge, auto=True)
        self._ambiguities = result.ambiguities
        self._touch()
        return result

    @property
    def auto_node_ids(self) -> list[str]:
        """Nodes wired by role rules (added with ``auto_connect=True``)."""
        return list(self._auto_roles)

    @property
    def auto_connect_ambiguities(self) -> tuple[Ambiguity, ...]:
        return self._ambiguities

    def expose_input(self, node_id: str, port_name: str, name: str | None = None, *, fan_out: bool = False) -> str:
        """Offer an input port as a graph input; returns its run key (`name` or ``"node:port"``).

        A port inside a loop may be exposed: the value seeds iteration 1, later iterations
        take the edge value. With `fan_out`, `name` may already be exposed: the one run input
        then seeds this port too (e.g. one initial ``latent`` for two loop ports); port types
        must be compatible. Without it, reusing a name is an error (likely a typo).
        """
        if not fan_out or name is None or name not in self._exposed_in:
            return self._expose(self._exposed_in, PortDirection.IN, node_id, port_name, name)
        port = self._port(node_id, port_name, PortDirection.IN)
        exposed = ExposedPort(node_id, port_name, name)
        if exposed == self._exposed_in[name] or exposed in self._fan_out.get(name, ()):
            return name
        first = self._exposed_in[name]
        first_type = self._nodes[first.node_id].block.get_port(first.port_name, PortDirection.IN).dtype
        if PortType.ANY not in (first_type, port.dtype) and first_type is not port.dtype:
            raise ValueError(
                f"graph {self.graph_id!r}: input {name!r} feeds {first.node_id}.{first.port_name} "
                f"({first_type.value}); cannot also feed {node_id}.{port_name} ({port.dtype.value})"
            )
        self._fan_out.setdefault(name, []).append(exposed)
        self._touch()
        return name

    def expose_output(self, node_id: str, port_name: str, name: str | None = None) -> str:
        """Offer an output port as a graph output; returns its run key."""
        return self._expose(self._exposed_out, PortDirection.OUT, node_id, port_name, name)

    def infer_exposed_ports(self) -> None:
        """Replace all exposures with every edge-less port: inputs without in-edges, outputs
        without out-edges (unnamed, so keyed ``"node:port"``)."""
        self._exposed_in.clear()
        self._fan_out.clear()
        self._exposed_out.clear()
        for node_id, node in self._nodes.items():
            fed = {e.target_port for e in self._in[node_id]}
            used = {e.source_port for e in self._out[node_id]}
            for port in node.block.get_input_ports():
                if port.name not in fed:
                    self._exposed_in[f"{node_id}:{port.name}"] = ExposedPort(node_id, port.name)
            for port in node.block.get_output_ports():
                if port.name not in used:
                    self._exposed_out[f"{node_id}:{port.name}"] = ExposedPort(node_id, port.name)
        self._touch()

    def exposed_inputs(self) -> dict[str, ExposedPort]:
        """Run key → exposed input (the first port of a fanned-out key; see
        `exposed_input_ports`)."""
        return dict(self._exposed_in)

    def exposed_input_ports(self) -> list[ExposedPort]:
        """Every exposed input port, fan-out targets included (each right after its key's
        first port): what run inputs seed."""
        if not self._fan_out:
            return list(self._exposed_in.values())
        return [p for key, first in self._exposed_in.items() for p in (first, *self._fan_out.get(key, ()))]

    def fan_out_ports(self, key: str) -> list[ExposedPort]:
        """The ports run input `key` seeds beyond its first (empty unless fanned out)."""
        return list(self._fan_out.get(key, ()))

    def exposed_outputs(self) -> dict[str, ExposedPort]:
        """Run key → exposed output."""
        return dict(self._exposed_out)

    def get_input_spec(self, include_dtype: bool = False) -> list[dict[str, Any]]:
        """``[{node_id, port_name, name?, dtype?}]``; the run key is `name`, else ``"node:port"``."""
        return self._spec(self._exposed_in, PortDirection.IN, include_dtype)

    def get_output_spec(self, include_dtype: bool = False) -> list[dict[str, Any]]:
        return self._spec(self._exposed_out, PortDirection.OUT, include_dtype)

    # ------------------------------------------------------------- running
    @classmethod
    def from_template(cls, name: str, **params: Any) -> Graph:
        """A registered graph template (``"text_to_image"``, …) built with ``params``."""
        from worldgen.engine.templates import graph_from_template

        return graph_from_template(name, **params)

    def plan(self) -> ExecutionPlan:
        """The execution plan, rebuilt only after a structural change (or a new
        ``metadata["loop_order"]``)."""
        plan = self._plan
        if plan is None or plan.version != self._execution_version or plan.loop_order != loop_order_of(self):
            self._plan = build_plan(self)
        return self._plan

    def tool_only_nodes(self) -> set[str]:
        """Nodes an agent node calls as tools (``"node:<id>"``) that nothing else feeds: they
        run only when the agent calls them, so the static run and validation leave them out."""
        refs = {ref for node in self._nodes.values() for ref in getattr(node.block, "tool_nodes", ())}
        seeded = {e.node_id for e in self.exposed_input_ports()}
        return {n for n in refs if n in self._nodes and not self._in[n] and n not in seeded}

    def run(
        self,
        inputs: Mapping[Any, Any] | None = None,
        *,
        num_loop_steps: int | None = None,
        training: bool = False,
        device: Any = None,
        callbacks: Callback | Iterable[Callback] | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Run once; inputs keyed by run key (or ``(node_id, port)``). See `run_graph`.

        ``graph_id`` is in the call context while it runs (`worldgen.engine.context`)."""
        token = enter_call_context(graph_id=self.graph_id)
        try:
            return run_graph(
                self, inputs or {}, num_loop_steps=num_loop_steps, training=training, device=device,
                callbacks=callbacks, dry_run=dry_run,
            )
        finally:
            exit_call_context(token)

    def validate(self, strict: bool = True) -> ValidationResult:
        """Check the graph; with `strict`, raise `GraphValidationError` listing every error."""
        result = validate_graph(self)
        if strict and result.errors:
            raise GraphValidationError(self.graph_id, result)
        return result

    # ------------------------------------------------------- serialization
    # all in `worldgen.engine.serialization`, imported late: it is not needed to build or run
    def to_config(self) -> dict[str, Any]:
        """This graph as a config dict (explicit edges only; auto edges are recomputed)."""
        from worldgen.engine.serialization import graph_to_config

        return graph_to_config(self)

    @classmethod
    def from_config(
        cls,
        config: ConfigSource,
        *,
        registry: BlockRegistry | None = None,
        validate: bool = False,
        base_dir: str | PathLike[str] | None = None,
    ) -> Graph:
        """A graph from a config dict, a YAML/JSON file, or a saved graph's folder."""
        from worldgen.engine.serialization import graph_from_config

        return graph_from_config(config, registry=registry, validate=validate, base_dir=base_dir)

    def save_config(self, path: str | PathLike[str]) -> Path:
        """Write `to_config()` as JSON (``.json``) or YAML; returns the path."""
        from worldgen.engine.serialization import write_config_file

        return write_config_file(self.to_config(), path)

    def save(self, directory: str | PathLike[str], *, format: str = "weights", backend: str | None = None) -> Path:
        """Save config and weights; returns the config path.

        ``format="weights"`` (default): ``config.yaml`` + ``weights/<node>.safetensors|json``,
        each block once. ``format="checkpoint"``: ``config.json`` + one ``checkpoint.<ext>``
        keyed ``"<node_id>.<key>"`` (`backend`, default ``"json"``; see `save_checkpoint`)."""
        from worldgen.engine.checkpoint import save_graph_with_checkpoint
        from worldgen.engine.serialization import save_graph

        if format == "weights":
            if backend not in (None, "safetensors"):
                raise NotImplementedError(f"save(format='weights') writes safetensors (+ JSON for non-tensor "
                                          f"state), not backend {backend!r}; use format='checkpoint' for it")
            return save_graph(self, directory)
        if format != "checkpoint":
            raise NotImplementedError(f"save format {format!r} is not supported (supported: ['weights', 'checkpoint'])")
        return save_graph_with_checkpoint(self, directory, backend=backend or "json")

    @classmethod
    def load(
        cls, directory: str | PathLike[str], *, registry: BlockRegistry | None = None, validate: bool = False
    ) -> Graph:
        """A graph written by `save` (either format: ``config.yaml``/``config.json``, weights
        from ``weights/`` or ``checkpoint.<ext>``), never unpickling anything but tensors."""
        from worldgen.engine.serialization import load_graph

        return load_graph(directory, registry=registry, validate=validate)

    # ---------------------------------------------------------- checkpoints
    # weights only, keyed by node (levels.md §8): `worldgen.engine.checkpoint`
    def state_dict(self) -> dict[str, dict[str, Any]]:
        """``{node_id: block state}``; a block (or pooled module) shared by several nodes
        appears once, under its first node."""
        from worldgen.engine.checkpoint import graph_state_dict

        return graph_state_dict(self)

    def load_state_dict(self, state: Mapping[str, Mapping[str, Any]], strict: bool = True) -> None:
        """Load ``{node_id: block state}``, each shared block once; `strict` raises on an
        unknown node, a stateful node left out, and unknown or missing block keys."""
        from worldgen.engine.checkpoint import load_graph_state

        load_graph_state(self, state, strict=strict)

    def save_checkpoint(
        self, path: str | PathLike[str], format: str = "single", backend: str = "json"
    ) -> Path:
        """Write the weights: ``single`` = one file keyed ``"<node_id>.<key>"``; ``dir`` =
        ``path/<node_id>.<ext>`` + ``graph_meta.json``. Backends ``json`` (tensors as nested
        lists with dtype), ``safetensors``, ``torch``; others raise `NotImplementedError`."""
        from worldgen.engine.checkpoint import save_graph_checkpoint

        return save_graph_checkpoint(self, path, format=format, backend=backend)

    def load_checkpoint(
        self, checkpoint_path: str | PathLike[str] | None = None, *, checkpoint_dir: str | PathLike[str] | None = None,
        backend: str | None = None, strict: bool = True,
    ) -> Graph:
        """Load a `save_checkpoint` file (`checkpoint_path`) or directory into this graph."""
        from worldgen.engine.checkpoint import load_graph_checkpoint

        return load_graph_checkpoint(self, checkpoint_path, directory=checkpoint_dir, backend=backend, strict=strict)

    @classmethod
    def load_from_checkpoint(
        cls,
        config_path: str | PathLike[str] | None = None,
        *,
        config: ConfigSource | None = None,
        checkpoint_path: str | PathLike[str] | None = None,
        checkpoint_dir: str | PathLike[str] | None = None,
        checkpoint: Mapping[str, Mapping[str, Any]] | None = None,
        registry: BlockRegistry | None = None,
        backend: str | None = None,
        strict: bool = True,
    ) -> Graph:
        """Build from `config_path` or `config`, then load weights from one of
        `checkpoint_path` (single file), `checkpoint_dir` or `checkpoint` (``{node_id: state}``)."""
        if (config_path is None) == (config is None):
            raise ValueError("load_from_checkpoint needs exactly one of config_path= or config=")
        sources = [s for s in (checkpoint_path, checkpoint_dir, checkpoint) if s is not None]
        if len(sources) != 1:
            raise ValueError("load_from_checkpoint needs exactly one of checkpoint_path=, checkpoint_dir=, checkpoint=")
        graph = cls.from_config(config_path if config is None else config, registry=registry)  # type: ignore[arg-type]
        if checkpoint is not None:
            graph.load_state_dict(checkpoint, strict=strict)
            return graph
        return graph.load_checkpoint(checkpoint_path, checkpoint_dir=checkpoint_dir, backend=backend, strict=strict)

    # ------------------------------------------------------------ training
    def set_trainable(self, node_id: str, trainable: bool = True) -> None:
        """Include or leave out one node's block in `trainable_parameters` (levels.md §7).

        A block shared by several nodes stays listed while any of them is trainable, so
        freezing one use site does not freeze the block (``block.freeze()`` does that)."""
        self.get_node(node_id)
        (self._frozen_nodes.discard if trainable else self._frozen_nodes.add)(node_id)

    def is_trainable(self, node_id: str) -> bool:
        self.get_node(node_id)
        return node_id not in self._frozen_nodes

    @property
    def trainable_nodes(self) -> list[str]:
        return [n for n in self._nodes if n not in self._frozen_nodes]

    def trainable_parameters(self) -> Iterator[Any]:
        """Parameters of the blocks of trainable nodes, each once (shared blocks and shared
        tensors included; gradients of a shared block add up over its uses)."""
        seen: set[int] = set()
        blocks = {id(n.block): n.block for nid, n in self._nodes.items() if nid not in self._frozen_nodes}
        for block in blocks.values():
            for param in block.trainable_parameters():
                if id(param) not in seen:
                    seen.add(id(param))
                    yield param

    def train(self, mode: bool = True) -> Graph:
        for block in self.blocks():
            block.train(mode)
        return self

    def eval(self) -> Graph:
        return self.train(False)

    def to(self, device: Any) -> Graph:
        for block in self.blocks():
            block.to(device)
        return self

    # ----------------------------------------------------------- LangChain
    def invoke(self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any) -> dict[str, Any]:
        """`run` under LangChain callbacks; `kwargs` go to `run` (e.g. num_loop_steps)."""
        return self._call_with_config(lambda inputs: self.run(self._from_schema_keys(inputs), **kwargs), input, config)

    def get_input_schema(self, config: RunnableConfig | None = None) -> type[BaseModel]:
        """A pydantic model of the exposed inputs (what `as_tool` uses for tool arguments)."""
        return self._schema()[1]

    def get_output_schema(self, config: RunnableConfig | None = None) -> type[BaseModel]:
        fields = {key: (Any, None) for key in self._exposed_out}
        return create_model(f"{self.graph_id}_output", __config__=_FIELD_CONFIG, **_safe_fields(fields)[0])

    # ------------------------------------------------------------- private
    def _touch(self) -> None:
        self._execution_version += 1

    def _make_block(
        self, block: BlockSpec, config: Mapping[str, Any] | None, registry: BlockRegistry | None, node_id: str | None
    ) -> Block:
        if isinstance(block, Block):
            if config is not None:
                raise ValueError("config= is only for a block type name or config, not a block instance")
            return block
        if isinstance(block, str):
            spec = {**(config or {}), "block_type": block}
        elif isinstance(block, Mapping):
            spec = {**block, **(config or {})}
        else:
            raise TypeError(f"expected a Block, a block type or a block config, got {type(block).__name__}")
        # only a block built here may load a model: a missing one then names this node,
        # unless an outer builder (Graph.from_config) already named it
        from worldgen.local_models.pool import current_requester, requesting

        asker = current_requester() or (f"node {node_id!r} of graph {self.graph_id!r}" if node_id else None)
        with requesting(asker):
            return (registry or global_registry()).build(spec)

    def _fresh_id(self, block_type: str) -> str:
        stem = block_type.replace("/", "_")
        return next(f"{stem}_{n}" for n in itertools.count(1) if f"{stem}_{n}" not in self._nodes)

    def _port(self, node_id: str, port_name: str, direction: PortDirection) -> Port:
        if node_id not in self._nodes:
            raise ValueError(f"graph {self.graph_id!r} has no node {node_id!r} (nodes: {self.node_ids})")
        block = self._nodes[node_id].block
        if block.has_port(port_name, direction):
            return block.get_port(port_name, direction)
        wrong = PortDirection.OUT if direction is PortDirection.IN else PortDirection.IN
        if block.has_port(port_name, wrong):
            raise ValueError(
                f"node {node_id!r} port {port_name!r} is an {wrong.value}put port; an {direction.value}put "
                f"port is needed here"
            )
        names = [p.name for p in (block.get_input_ports() if direction is PortDirection.IN else block.get_output_ports())]
        raise ValueError(f"node {node_id!r} ({block.block_type}) has no {direction.value}put port {port_name!r} "
                         f"({direction.value}puts: {names})")

    def _check_edge(self, edge: Edge) -> Port:
        src = self._port(edge.source_node, edge.source_port, PortDirection.OUT)
        dst = self._port(edge.target_node, edge.target_port, PortDirection.IN)
        if not src.compatible_with(dst):
            raise ValueError(
                f"edge {edge}: incompatible port types {src.dtype.value} -> {dst.dtype.value} "
                f"(types must be equal or one of them ANY)"
            )
        return dst

    def _insert_edge(self, edge: Edge, auto: bool = False) -> None:
        self._edges[edge] = None
        self._in[edge.target_node].append(edge)
        self._out[edge.source_node].append(edge)
        if auto:
            self._auto_edges.add(edge)

    def _delete_edge(self, edge: Edge) -> None:
        del self._edges[edge]
        self._in[edge.target_node].remove(edge)
        self._out[edge.source_node].remove(edge)
        self._auto_edges.discard(edge)

    def _expose(
        self, table: dict[str, ExposedPort], direction: PortDirection, node_id: str, port_name: str, name: str | None
    ) -> str:
        self._port(node_id, port_name, direction)
        exposed = ExposedPort(node_id, port_name, name)
        if table.get(exposed.key, exposed) != exposed:
            hint = "; pass fan_out=True to seed both ports" if direction is PortDirection.IN and name else ""
            raise ValueError(f"graph {self.graph_id!r}: {direction.value}put key {exposed.key!r} is already "
                             f"exposed ({table[exposed.key]}){hint}")
        table[exposed.key] = exposed
        self._touch()
        return exposed.key

    def _spec(self, table: dict[str, ExposedPort], direction: PortDirection, include_dtype: bool) -> list[dict[str, Any]]:
        spec = []
        for exposed in table.values():
            entry: dict[str, Any] = {"node_id": exposed.node_id, "port_name": exposed.port_name}
            if exposed.name:
                entry["name"] = exposed.name
            if include_dtype:
                entry["dtype"] = self._nodes[exposed.node_id].block.get_port(exposed.port_name, direction).dtype.value
            spec.append(entry)
        return spec

    def _schema(self) -> tuple[int, type[BaseModel], dict[str, str]]:
        if self._schemas is None or self._schemas[0] != self._execution_version:
            fields: dict[str, tuple[Any, Any]] = {}
            for key, exposed in self._exposed_in.items():
                block = self._nodes[exposed.node_id].block
                port = block.get_port(exposed.port_name, PortDirection.IN)
                required = self.is_input_required(key)
                description = f"{exposed.node_id}.{port.name} ({port.dtype.value})"
                py_type = _SCHEMA_TYPES.get(port.dtype, Any)
                fields[key] = (py_type, Field(... if required else None, description=description))
            safe, renamed = _safe_fields(fields)
            model = create_model(f"{self.graph_id}_input", __config__=_FIELD_CONFIG, **safe)
            self._schemas = (self._execution_version, model, renamed)
        return self._schemas

    def is_input_required(self, key: str) -> bool:
        """A run input is required when some port it seeds is required and has no default."""
        for exposed in (self._exposed_in[key], *self._fan_out.get(key, ())):
            block = self._nodes[exposed.node_id].block
            port = block.get_port(exposed.port_name, PortDirection.IN)
            if not port.optional and port.name not in (block.config.get("defaults") or {}):
                return True
        return False

    def _from_schema_keys(self, inputs: Mapping[Any, Any]) -> dict[Any, Any]:
        """Map tool-argument names (``node__port``) back to run keys (``node:port``)."""
        renamed = self._schema()[2]
        return {renamed.get(k, k) if isinstance(k, str) else k: v for k, v in inputs.items()}


_FIELD_CONFIG = ConfigDict(protected_namespaces=(), arbitrary_types_allowed=True)


def _safe_fields(fields: dict[str, tuple[Any, Any]]) -> tuple[dict[str, tuple[Any, Any]], dict[str, str]]:
    """Pydantic field names must be identifiers: ``"node:port"`` becomes ``"node__port"``."""
    safe: dict[str, tuple[Any, Any]] = {}
    renamed: dict[str, str] = {}
    for key, value in fields.items():
        name = key if key.isidentifier() and not key.startswith("_") else "".join(
            c if c.isalnum() or c == "_" else "__" for c in key).lstrip("_") or "input"
        safe[name] = value
        if name != key:
            renamed[name] = key
    return safe, renamed
