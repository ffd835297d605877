"""A stage graph as config (world.md §3): the config models, `to_config` / `from_config`,
and `save` (config + one saved pipeline per node + shared weights once).

A stage of pipelines serializes; runnables (code) and converters do not.

**Config keys** besides the structure: ``execution_condition`` (a preset name, a list of
required blocks or ``{requires, produces, always}``), ``trainable_nodes``, ``lr``,
``freeze_others``, and ``endpoint_url`` / ``assistant_id`` / ``api_key_env`` on the stage
or on a node entry — never a key itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, model_validator

from worldgen.blocks.registry import BlockRegistry
from worldgen.engine.graph import Graph
from worldgen.engine.serialization import (
    CONFIG_FILES,
    SCHEMA_VERSION,
    ConfigError,
    EdgeConfig,
    StrictConfig,
    _jsonable,
    _validate,
    check_block_ids,
    pipeline_from_config,
    read_versioned_config,
    save_pipelines,
    write_config_file,
)
from worldgen.stage_graph.mapping import _Mapping

if TYPE_CHECKING:
    from worldgen.stage_graph.graph import StageGraph

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


def stage_graph_to_config(sg: StageGraph) -> dict[str, Any]:
    """`StageGraph.to_config`: refuses runnables and converters, and blocks whose `block_id`
    is reused for different blocks."""
    _check_serializable(sg)
    check_block_ids(_labelled_graphs(sg))
    return _config_dict(sg, {
        nid: {"pipeline_config": node.impl.to_config()} if node.kind == "pipeline" else {}
        for nid, node in sg._nodes.items()
    })


def stage_graph_from_config(
    cls: type[StageGraph],
    config: Mapping[str, Any] | str | PathLike[str],
    *,
    registry: BlockRegistry | None = None,
    validate: bool = False,
    base_dir: str | PathLike[str] | None = None,
) -> StageGraph:
    """`StageGraph.from_config`, building a `cls`."""
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


def save_stage_graph(sg: StageGraph, directory: str | PathLike[str]) -> Path:
    """`StageGraph.save`; returns the config path."""
    _check_serializable(sg)
    root = Path(directory)
    local = {nid: node.impl for nid, node in sg._nodes.items() if node.kind == "pipeline"}
    refs = save_pipelines(local, root)
    meta = {
        "schema_version": SCHEMA_VERSION, "stage_id": sg.stage_id, "role": getattr(sg, "role", None),
        "node_ids": sg.node_ids, "node_dirs": refs,
    }
    (root / STAGE_META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    entries = {nid: {"ref": refs[nid]} if nid in refs else {} for nid in sg._nodes}
    return write_config_file(_config_dict(sg, entries), root / CONFIG_FILES[0])


def _check_serializable(sg: StageGraph) -> None:
    for nid, node in sg._nodes.items():
        if node.kind == "runnable":
            raise ConfigError(
                f"stage {sg.stage_id!r}: node {nid!r} is a runnable ({type(node.impl).__name__}); "
                "runnables hold code and cannot be serialized, only pipeline nodes can"
            )
    for what, mappings in (("mapping_input", sg._mapping_input), ("mapping_output", sg._mapping_output)):
        for i, m in enumerate(mappings or ()):
            if m.converter is not None:
                raise ConfigError(
                    f"stage {sg.stage_id!r}: {what}[{i}] ({m.source!r} ↔ {m.node_id}.{m.port}) has a "
                    "converter; converters are code and cannot be serialized"
                )


def _labelled_graphs(sg: StageGraph) -> list[tuple[str, Graph]]:
    return [
        (f"{nid}/{pid}", node.impl.get_graph(pid))
        for nid, node in sg._nodes.items() if node.kind == "pipeline" for pid in node.impl.graph_ids
    ]


def _config_dict(sg: StageGraph, pipelines: dict[str, dict[str, Any]]) -> dict[str, Any]:
    def mapping(entries: list[_Mapping] | None) -> list[list[str]] | None:
        return None if entries is None else [[m.source, m.node_id, m.port] for m in entries]

    config: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "stage_id": sg.stage_id}
    role = getattr(sg, "role", None)
    if role is not None:
        config["role"] = role
    config["metadata"] = _jsonable(sg.metadata, f"stage {sg.stage_id!r} metadata")
    nodes: dict[str, dict[str, Any]] = {}
    for nid, entry in pipelines.items():
        node = sg._nodes[nid]
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
    config["edges"] = [asdict(e) for e in sg._edges]
    contract: dict[str, Any] = {"input_blocks": list(sg.input_blocks), "output_blocks": list(sg.output_blocks)}
    for key, entries in (("mapping_input", sg._mapping_input), ("mapping_output", sg._mapping_output)):
        if entries is not None:
            contract[key] = mapping(entries)
    config["state_contract"] = contract
    if sg._condition_spec is not None:
        config["execution_condition"] = sg._condition_spec
    if sg.trainable_nodes is not None:
        config["trainable_nodes"] = list(sg.trainable_nodes)
    if sg.lr is not None:
        config["lr"] = sg.lr
    if sg.freeze_others:
        config["freeze_others"] = True
    if sg.remote is not None:
        config.update(sg.remote.to_config())
    return config
