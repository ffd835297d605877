"""`Pipeline`: graphs joined port to port, a DAG (levels.md §4).

A pipeline is a graph of graphs and runs on the same dataflow executor: each graph sits in
a node of a private `Graph` as a `GraphBlock`, whose ports are the graph's exposed inputs
and outputs. This module only adds what a pipeline means on top: graphs instead of
blocks, errors that speak of graphs, and no cycles between graphs (loops live inside
graphs). A pipeline is a LangChain `Runnable` (``invoke``) and, through `as_tool`, a tool.

A graph node may run remotely (`set_endpoint`, levels.md §9): it then holds a remote
descriptor beside its graph (kept for its ports and config) and calls a LangGraph server
serving that graph (`worldgen.remote.serve_pipeline`); the descriptor is saved in the
config's ``metadata.endpoints`` (URL and assistant id, never a key).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from os import PathLike
from pathlib import Path
from typing import Any

from langchain_core.runnables import Runnable, RunnableConfig
from pydantic import BaseModel

from worldgen.blocks.ports import PortDirection
from worldgen.blocks.registry import BlockRegistry
from worldgen.engine.context import enter_call_context, exit_call_context
from worldgen.engine.executor import Callback
from worldgen.engine.graph import Graph
from worldgen.engine.graph_block import GraphBlock, graph_run_options
from worldgen.engine.nodes import Edge
from worldgen.engine.validation import GraphValidationError, ValidationIssue, ValidationResult

__all__ = ["Pipeline", "PipelineEdge", "PipelineValidationError"]

PipelineEdge = Edge
"""``source graph.port → target graph.port``; ports are the graphs' run keys."""

GraphSource = Graph | Mapping[str, Any] | str | PathLike[str]
"""A graph, a graph config, or the path of a graph config file or saved graph."""


class PipelineValidationError(GraphValidationError):
    """Raised by ``validate(strict=True)`` and by running a pipeline that is not a DAG."""

    def __init__(self, pipeline_id: str, result: ValidationResult) -> None:
        self.result = result
        lines = "\n".join(f"  - {e}" for e in result.errors)
        ValueError.__init__(self, f"pipeline {pipeline_id!r} is invalid ({len(result.errors)} errors):\n{lines}")


class Pipeline(Runnable[dict[str, Any], dict[str, Any]]):
    """A DAG of graphs; run keys are exposed names, else ``"graph_id:port"``."""

    def __init__(self, pipeline_id: str | None = None) -> None:
        self._graph = Graph(pipeline_id, graph_kind="pipeline")
        self.pipeline_id = self.name = self._graph.graph_id  # name: the LangChain run name
        self._frozen: set[str] = set()
        self._metadata: dict[str, Any] = {}

    @property
    def metadata(self) -> dict[str, Any]:
        """Free-form, serialized with the config; ``endpoints`` holds the remote descriptors."""
        return self._metadata

    @metadata.setter
    def metadata(self, value: Mapping[str, Any]) -> None:
        self._metadata = dict(value)
        endpoints = self._metadata.get("endpoints") or {}
        if not isinstance(endpoints, Mapping):
            raise TypeError(f"pipeline {self.pipeline_id!r}: metadata.endpoints must map graph ids to descriptors")
        for pid in self.graph_ids:
            self._graph_block(pid).remote = None
        for pid, descriptor in endpoints.items():
            if not isinstance(descriptor, Mapping) or not descriptor.get("endpoint_url"):
                raise ValueError(f"pipeline {self.pipeline_id!r}: metadata.endpoints.{pid} needs an endpoint_url")
            self.set_endpoint(pid, descriptor["endpoint_url"], descriptor.get("assistant_id"),
                              api_key_env=descriptor.get("api_key_env"))

    def __repr__(self) -> str:
        return f"Pipeline({self.pipeline_id!r}, graphs={self.graph_ids})"

    # -------------------------------------------------------------- access
    @property
    def graph_ids(self) -> list[str]:
        return self._graph.node_ids

    def __contains__(self, pipeline_node_id: object) -> bool:
        return pipeline_node_id in self._graph

    def get_graph(self, pipeline_node_id: str) -> Graph:
        return self._graph_block(pipeline_node_id).graph

    def get_edges(self) -> list[PipelineEdge]:
        return self._graph.get_edges()

    def get_edges_in(self, pipeline_node_id: str) -> list[PipelineEdge]:
        return self._graph.get_edges_in(pipeline_node_id)

    def get_edges_out(self, pipeline_node_id: str) -> list[PipelineEdge]:
        return self._graph.get_edges_out(pipeline_node_id)

    # ------------------------------------------------------------ building
    def add_graph(
        self,
        graph_or_config: GraphSource,
        pipeline_node_id: str | None = None,
        *,
        registry: BlockRegistry | None = None,
    ) -> str:
        """Add a graph, or build one from a graph config (dict or YAML/JSON path) with
        `Graph.from_config`; returns its id, by default its `graph_id`. Its exposed ports
        become its ports here, so expose them before adding it."""
        graph = (
            graph_or_config if isinstance(graph_or_config, Graph)
            else Graph.from_config(graph_or_config, registry=registry)
        )
        pid = pipeline_node_id or graph.graph_id
        if pid in self._graph:
            raise ValueError(f"pipeline {self.pipeline_id!r} already has a graph {pid!r}")
        self._graph.add_node(pid, _GraphNode(graph, pid), auto_connect=False)
        return pid

    def set_endpoint(
        self,
        pipeline_node_id: str,
        endpoint_url: str | None,
        assistant_id: str | None = None,
        *,
        api_key_env: str | None = None,
        sync_client: Any = None,
    ) -> None:
        """Run one graph on a LangGraph server serving it (assistant id: default the graph's
        node id); ``None`` makes it local again. Its ports stay those of the local graph."""
        from worldgen.remote import RemoteNode

        block = self._graph_block(pipeline_node_id)
        endpoints = dict(self._metadata.get("endpoints") or {})
        if endpoint_url is None:
            block.remote = None
            endpoints.pop(pipeline_node_id, None)
        else:
            block.remote = RemoteNode(endpoint_url, assistant_id or pipeline_node_id, api_key_env=api_key_env,
                                      sync_client=sync_client)
            endpoints[pipeline_node_id] = block.remote.to_config()
        if endpoints:
            self._metadata["endpoints"] = endpoints
        else:
            self._metadata.pop("endpoints", None)

    def get_endpoint(self, pipeline_node_id: str) -> Any:
        """The node's remote descriptor (`worldgen.remote.RemoteNode`), or None when local."""
        return self._graph_block(pipeline_node_id).remote

    def add_edge(
        self,
        source: PipelineEdge | str,
        source_port: str | None = None,
        target: str | None = None,
        target_port: str | None = None,
    ) -> PipelineEdge:
        """Join ``source.source_port`` (an output key of its graph) to ``target.target_port``.

        Port types must be compatible; re-adding an edge is a no-op; a second edge into one
        input needs an aggregating port.
        """
        edge = source if isinstance(source, Edge) else Edge(source, source_port, target, target_port)  # type: ignore[arg-type]
        self._check_port(edge.source_node, edge.source_port, PortDirection.OUT)
        self._check_port(edge.target_node, edge.target_port, PortDirection.IN)
        return self._graph.add_edge(edge)

    def expose_input(self, pipeline_node_id: str, port_name: str, name: str | None = None) -> str:
        """Offer a graph input as a pipeline input; returns its run key."""
        self._check_port(pipeline_node_id, port_name, PortDirection.IN)
        return self._graph.expose_input(pipeline_node_id, port_name, name)

    def expose_output(self, pipeline_node_id: str, port_name: str, name: str | None = None) -> str:
        """Offer a graph output as a pipeline output; returns its run key."""
        self._check_port(pipeline_node_id, port_name, PortDirection.OUT)
        return self._graph.expose_output(pipeline_node_id, port_name, name)

    def infer_exposed_ports(self) -> None:
        """Expose every graph input without an edge and every graph output without one."""
        self._graph.infer_exposed_ports()

    def get_input_spec(self, include_dtype: bool = False) -> list[dict[str, Any]]:
        """``[{pipeline_node_id, port_name, name?, dtype?}]``."""
        return [_pipeline_entry(e) for e in self._graph.get_input_spec(include_dtype)]

    def get_output_spec(self, include_dtype: bool = False) -> list[dict[str, Any]]:
        return [_pipeline_entry(e) for e in self._graph.get_output_spec(include_dtype)]

    @classmethod
    def from_template(cls, name: str, **params: Any) -> Pipeline:
        """A registered pipeline template (``"generate_and_reconstruct"``, …)."""
        from worldgen.engine.templates import pipeline_from_template

        return pipeline_from_template(name, **params)

    # ---------------------------------------------------------- validation
    def validate(self, strict: bool = True, validate_graphs: bool = False) -> ValidationResult:
        """Errors: cycles between graphs, graph inputs nothing feeds (and, with
        `validate_graphs`, each graph's own errors, prefixed by its id). Warnings: graphs
        unreachable from the inputs or leading to no output. `strict` raises on errors."""
        inner = self._graph.validate(strict=False)
        errors = self._cycle_errors() + list(inner.errors)
        warnings = list(inner.warnings)
        if validate_graphs:
            for pid in self.graph_ids:
                result = self.get_graph(pid).validate(strict=False)
                errors += [_prefixed(pid, i) for i in result.errors]
                warnings += [_prefixed(pid, i) for i in result.warnings]
        result = ValidationResult(errors, warnings)
        if strict and errors:
            raise PipelineValidationError(self.pipeline_id, result)
        return result

    # ------------------------------------------------------------- running
    def run(
        self,
        inputs: Mapping[Any, Any] | None = None,
        *,
        training: bool = False,
        device: Any = None,
        callbacks: Callback | Iterable[Callback] | None = None,
        dry_run: bool = False,
        **graph_run_kwargs: Any,
    ) -> dict[str, Any]:
        """Run the graphs in topological order; returns the exposed outputs by run key.

        Callbacks fire before/after each graph (``node_id`` = its pipeline id).
        `graph_run_kwargs` (e.g. ``num_loop_steps``) go to every ``graph.run``. `dry_run`
        checks the order and that every required input has a value, running no graph.
        """
        errors = self._cycle_errors()
        if errors:
            raise PipelineValidationError(self.pipeline_id, ValidationResult(errors))
        token = enter_call_context(pipeline_id=self.pipeline_id)
        try:
            with graph_run_options(**graph_run_kwargs):
                return self._graph.run(inputs, training=training, device=device, callbacks=callbacks, dry_run=dry_run)
        finally:
            exit_call_context(token)

    def invoke(self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any) -> dict[str, Any]:
        """`run` under LangChain callbacks; `kwargs` go to `run`."""
        # tool arguments arrive under the schema's field names; the inner graph maps them back
        to_run_keys = self._graph._from_schema_keys
        return self._call_with_config(lambda inputs: self.run(to_run_keys(inputs), **kwargs), input, config)

    def get_input_schema(self, config: RunnableConfig | None = None) -> type[BaseModel]:
        """A pydantic model of the exposed inputs (what `as_tool` uses for tool arguments)."""
        return self._graph.get_input_schema(config)

    def get_output_schema(self, config: RunnableConfig | None = None) -> type[BaseModel]:
        return self._graph.get_output_schema(config)

    # ------------------------------------------------------- serialization
    # in `worldgen.engine.serialization` (levels.md §8), imported late like Graph's
    def to_config(self) -> dict[str, Any]:
        """``{schema_version, pipeline_id, metadata, graphs: {pid: {graph_config, trainable}},
        edges, exposed_inputs, exposed_outputs}`` (plain data, no weights)."""
        from worldgen.engine.serialization import pipeline_to_config

        return pipeline_to_config(self)

    @classmethod
    def from_config(
        cls,
        config: Mapping[str, Any] | BaseModel | str | PathLike[str],
        *,
        registry: BlockRegistry | None = None,
        validate: bool = False,
        base_dir: str | PathLike[str] | None = None,
    ) -> Pipeline:
        """A pipeline from a config dict, a YAML/JSON file or a saved pipeline's folder; a
        graph entry may be nested or ``{ref: file or saved graph folder}``."""
        from worldgen.engine.serialization import pipeline_from_config

        return pipeline_from_config(config, registry=registry, validate=validate, base_dir=base_dir)

    def save_config(self, path: str | PathLike[str]) -> Path:
        """Write `to_config()` as JSON (``.json``) or YAML; returns the path."""
        from worldgen.engine.serialization import write_config_file

        return write_config_file(self.to_config(), path)

    def save(self, directory: str | PathLike[str]) -> Path:
        """``config.yaml``, ``checkpoints/<pid>/`` (a saved graph each), ``shared/`` (weights of
        blocks used by several graphs, once) and ``pipeline_meta.json``; returns the config path."""
        from worldgen.engine.serialization import save_pipeline

        return save_pipeline(self, directory)

    @classmethod
    def load(
        cls, directory: str | PathLike[str], *, registry: BlockRegistry | None = None, validate: bool = False
    ) -> Pipeline:
        """A pipeline written by `save` (or `save_checkpoint`), weights restored and shared
        blocks shared again."""
        from worldgen.engine.serialization import PIPELINE_META_FILE

        meta = Path(directory) / PIPELINE_META_FILE
        if meta.is_file() and "checkpoint_format" in json.loads(meta.read_text(encoding="utf-8")):
            pipeline = cls.load_from_checkpoint(checkpoint_dir=directory, registry=registry)
            if validate:
                pipeline.validate(strict=True)
            return pipeline
        return cls.from_config(Path(directory), registry=registry, validate=validate)

    # ---------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, dict[str, dict[str, Any]]]:
        """``{pid: graph.state_dict()}`` (a pipeline has no state of its own)."""
        return {pid: self.get_graph(pid).state_dict() for pid in self.graph_ids}

    def load_state_dict(self, state: Mapping[str, Mapping[str, Mapping[str, Any]]], strict: bool = True) -> None:
        """Load ``{pid: graph state}``; a block shared by several graphs is loaded once;
        `strict` raises on an unknown graph or node."""
        from worldgen.engine.checkpoint import pipeline_load_state

        pipeline_load_state(self, state, strict=strict)

    def save_checkpoint(self, path: str | PathLike[str], format: str = "dir", backend: str = "json") -> Path:
        """``path/<pid>/config.json`` + ``path/<pid>/checkpoint.<ext>`` per graph (a shared
        block written once), ``path/config.json`` and ``path/pipeline_meta.json``. Only
        ``format="dir"``; backends as `Graph.save_checkpoint`."""
        from worldgen.engine.checkpoint import save_pipeline_checkpoint

        return save_pipeline_checkpoint(self, path, format=format, backend=backend)

    def load_checkpoint(
        self, checkpoint_dir: str | PathLike[str], *, backend: str | None = None, strict: bool = True
    ) -> Pipeline:
        """Load a `save_checkpoint` directory's weights into this pipeline's graphs."""
        from worldgen.engine.checkpoint import load_pipeline_checkpoint

        return load_pipeline_checkpoint(self, checkpoint_dir, backend=backend, strict=strict)

    @classmethod
    def load_from_checkpoint(
        cls,
        config_path: str | PathLike[str] | None = None,
        *,
        config: Mapping[str, Any] | None = None,
        checkpoint_dir: str | PathLike[str],
        registry: BlockRegistry | None = None,
        backend: str | None = None,
        strict: bool = True,
    ) -> Pipeline:
        """Build from `config_path`/`config` (default: ``checkpoint_dir/config.json``), then
        load the weights of `checkpoint_dir` (`save_checkpoint`'s layout)."""
        if config_path is not None and config is not None:
            raise ValueError("pass config_path= or config=, not both")
        source = config if config is not None else config_path
        if source is None:
            source = Path(checkpoint_dir) / "config.json"
        pipeline = cls.from_config(source, registry=registry)
        return pipeline.load_checkpoint(checkpoint_dir, backend=backend, strict=strict)

    # ------------------------------------------------------------ training
    def set_trainable(self, pipeline_node_id: str, trainable: bool = True) -> None:
        """Include or leave out one graph's parameters; shared blocks stay listed while any
        trainable graph uses them (the blocks themselves are not frozen)."""
        self._graph_block(pipeline_node_id)
        (self._frozen.discard if trainable else self._frozen.add)(pipeline_node_id)

    def is_trainable(self, pipeline_node_id: str) -> bool:
        return pipeline_node_id not in self._frozen

    @property
    def trainable_nodes(self) -> list[str]:
        """Ids of the graphs whose parameters `trainable_parameters` lists."""
        return [pid for pid in self.graph_ids if pid not in self._frozen]

    def freeze_others(self, *pipeline_node_ids: str) -> None:
        """Train only the named graphs: every other graph is set not trainable."""
        for pid in pipeline_node_ids:
            self._graph_block(pid)
        for pid in self.graph_ids:
            self.set_trainable(pid, pid in pipeline_node_ids)

    def trainable_parameters(self) -> Iterator[Any]:
        """Parameters of the trainable local graphs, each once (graphs may share blocks);
        a remote graph trains where it is served, not here."""
        seen: set[int] = set()
        for pid in self.graph_ids:
            if pid in self._frozen or self._graph_block(pid).remote is not None:
                continue
            for param in self.get_graph(pid).trainable_parameters():
                if id(param) not in seen:
                    seen.add(id(param))
                    yield param

    def train(self, mode: bool = True) -> Pipeline:
        self._graph.train(mode)
        return self

    def eval(self) -> Pipeline:
        return self.train(False)

    def to(self, device: Any) -> Pipeline:
        self._graph.to(device)
        return self

    # ------------------------------------------------------------- private
    def _graph_block(self, pid: str) -> _GraphNode:
        if pid not in self._graph:
            raise KeyError(self._unknown_graph(pid))
        block = self._graph.get_node(pid).block
        assert isinstance(block, _GraphNode)
        return block

    def _check_port(self, pid: str, port_name: str, direction: PortDirection) -> None:
        """Errors that name the graph and the port (the inner graph would say "node")."""
        if pid not in self._graph:
            raise ValueError(self._unknown_graph(pid))
        block = self._graph_block(pid)
        if not block.has_port(port_name, direction):
            ports = block.get_input_ports() if direction is PortDirection.IN else block.get_output_ports()
            raise ValueError(
                f"graph {pid!r} has no exposed {direction.value}put {port_name!r} "
                f"({direction.value}puts: {[p.name for p in ports]})"
            )

    def _unknown_graph(self, pid: str) -> str:
        return f"pipeline {self.pipeline_id!r} has no graph {pid!r} (graphs: {self.graph_ids})"

    def _cycle_errors(self) -> list[ValidationIssue]:
        return [
            ValidationIssue(
                f"graphs {list(step.node_ids)} form a cycle; a pipeline must be a DAG (loops belong inside graphs)",
                step.rep,
            )
            for step in self._graph.plan().steps
            if step.kind == "cycle"
        ]


class _GraphNode(GraphBlock):
    """A pipeline's graph node: runs its graph here or, with a remote descriptor, on the
    LangGraph server serving it (port values in the wire format of their types)."""

    block_type = "graph"

    def __init__(self, graph: Graph, block_id: str | None = None) -> None:
        super().__init__(graph, block_id)
        self.remote: Any = None  # worldgen.remote.RemoteNode

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        if self.remote is None:
            return super().forward(inputs)
        ins = {p.name: p.dtype for p in self.get_input_ports()}
        outs = {p.name: p.dtype for p in self.get_output_ports()}
        return self.remote.invoke(dict(inputs), ins, outs, node_id=self.block_id)


def _pipeline_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    rest = {k: v for k, v in entry.items() if k != "node_id"}
    return {"pipeline_node_id": entry["node_id"], **rest}


def _prefixed(pid: str, issue: ValidationIssue) -> ValidationIssue:
    return ValidationIssue(f"graph {pid!r}: {issue.message}", issue.node_id, issue.port_name)
