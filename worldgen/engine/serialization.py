"""Graph and block configs (YAML/JSON) and saved graphs (config + safetensors weights).

A config describes structure only: blocks by registered type and config, the explicit
edges (auto edges are recomputed from the role nodes), exposures and metadata. Blocks are
rebuilt through the registry, so a config never holds code. A *saved* graph adds each
block's `state_dict()` in ``weights/``, written once per block object, so a block shared by
two nodes is one file and one object again after loading. Distinct blocks whose whole state
is one module shared through the model pool (two nodes on one checkpoint ref) are written
once too, and that file is loaded once (into the module they share again after loading).
Weights load from safetensors (or JSON for non-tensor state) only: nothing here unpickles.

Layout of `save_graph(graph, d)`::

    d/config.yaml                     GraphConfig; nodes carry ``weights: weights/<file>``
    d/weights/<first node id>.safetensors   tensors (+ non-tensor state as JSON metadata)
    d/weights/<first node id>.json          blocks whose state has no tensors

Node-keyed checkpoints (``Graph.save_checkpoint``, ``Graph.save(d, format="checkpoint")``,
json/safetensors/torch backends) live in `worldgen.engine.checkpoint`.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticSerializationError, to_jsonable_python

from worldgen.blocks.base import Block
from worldgen.blocks.registry import BlockRegistry, global_registry
from worldgen.engine.auto_connect import AmbiguityPolicy
from worldgen.local_models.pool import requesting

if TYPE_CHECKING:
    from worldgen.engine.graph import Graph

__all__ = [
    "CONFIG_FILES",
    "PLUGIN_PACKAGES",
    "SCHEMA_VERSION",
    "SUPPORTED_SCHEMA_VERSIONS",
    "BlockConfig",
    "ConfigError",
    "EdgeConfig",
    "ExposedPortConfig",
    "GraphConfig",
    "NodeConfig",
    "block_from_config",
    "block_to_config",
    "graph_config_json_schema",
    "graph_from_config",
    "graph_to_config",
    "load_block_state",
    "load_graph",
    "read_config_file",
    "save_block_state",
    "save_graph",
    "write_config_file",
    # pipelines (additive)
    "CHECKPOINTS_DIR",
    "PIPELINE_META_FILE",
    "SHARED_WEIGHTS_DIR",
    "PipelineConfig",
    "PipelineExposedPortConfig",
    "PipelineGraphConfig",
    "check_block_ids",
    "pipeline_from_config",
    "pipeline_to_config",
    "read_versioned_config",
    "save_pipeline",
    "save_pipelines",
    "weights_owner",
    "check_schema_version",
    "read_safetensors",
    "write_safetensors",
]

SCHEMA_VERSION = "1.0"
SUPPORTED_SCHEMA_VERSIONS: tuple[str, ...] = (SCHEMA_VERSION,)
#: What `load_graph` looks for in a saved directory, in order (`save_graph` writes the first).
CONFIG_FILES: tuple[str, ...] = ("config.yaml", "config.yml", "config.json")
#: Packages whose import registers block types; imported when a config names an unknown type.
#: Third-party packages add theirs with an entry point in the ``worldgen.blocks`` group.
PLUGIN_PACKAGES: tuple[str, ...] = ("worldgen.blocks.diffusion", "worldgen.blocks.api", "worldgen.agents.agent")
PLUGIN_ENTRY_POINTS = "worldgen.blocks"

_WEIGHTS_DIR = "weights"
_STATE_KEY = "worldgen.state"  # safetensors metadata entry holding the non-tensor state (JSON)

ConfigSource = Mapping[str, Any] | BaseModel | str | PathLike[str]
"""A config dict or model, or the path of a YAML/JSON config file (or of a saved graph's folder)."""


class ConfigError(ValueError):
    """A config that cannot be read: wrong schema version, malformed keys, unreadable files."""


# ----------------------------------------------------------------- config models
class StrictConfig(BaseModel):
    """Base of every config model (graph, pipeline, stage)."""

    # unknown keys are errors: a misspelt key silently ignored is a wrong graph
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class BlockConfig(StrictConfig):
    """One block: registered type, constructor config, and its id (kept so sharing survives)."""

    block_type: str = Field(min_length=1)
    block_id: str | None = None
    config: dict[str, Any] = {}


class NodeConfig(BlockConfig):
    """A node: a block entry, or ``{ref: file}`` naming a YAML/JSON file holding one.

    Nodes with the same `block_id` hold one shared block object.
    """

    block_type: str | None = Field(None, min_length=1)  # type: ignore[assignment]
    ref: str | None = Field(None, min_length=1)
    """A file holding this node's entry, relative to the config file."""
    trainable: bool = True
    """False: the block is frozen (`Block.freeze`)."""
    auto_connect: bool = False
    """The node is wired by role rules; its auto edges are recomputed, never stored."""
    weights: str | None = None
    """The block's saved state (``.safetensors`` or ``.json``), relative to the config file."""

    @model_validator(mode="after")
    def _one_form(self) -> NodeConfig:
        if self.ref is not None:
            extra = sorted(self.model_fields_set - {"ref"})
            if extra:
                raise ValueError(f"a {{ref: file}} node takes no other keys (got {extra})")
        elif self.block_type is None:
            raise ValueError("a node needs 'block_type' (or 'ref' naming a node file)")
        return self


class EdgeConfig(StrictConfig):
    source_node: str = Field(min_length=1)
    source_port: str = Field(min_length=1)
    target_node: str = Field(min_length=1)
    target_port: str = Field(min_length=1)


class ExposedPortConfig(StrictConfig):
    """One exposed port. Input entries repeating a `name` fan that run input out to each of
    their ports (`Graph.expose_input(..., fan_out=True)`)."""

    node_id: str = Field(min_length=1)
    port_name: str = Field(min_length=1)
    name: str | None = None


class GraphConfig(StrictConfig):
    """A whole graph. Edges are the explicit ones only; exposures keep their order."""

    schema_version: str = SCHEMA_VERSION
    graph_id: str = Field(min_length=1)
    kind: str = Field("generic", validation_alias=AliasChoices("kind", "graph_kind"))
    metadata: dict[str, Any] = {}
    ambiguity_policy: AmbiguityPolicy = AmbiguityPolicy.NONE
    nodes: dict[str, NodeConfig] = {}
    edges: list[EdgeConfig] = []
    exposed_inputs: list[ExposedPortConfig] = []
    exposed_outputs: list[ExposedPortConfig] = []


def graph_config_json_schema() -> dict[str, Any]:
    """JSON Schema of graph configs (for editors and a ``worldgen schema`` command)."""
    return GraphConfig.model_json_schema()


# ------------------------------------------------------------------- blocks
def block_to_config(block: Block) -> dict[str, Any]:
    """``{block_type, block_id, config}`` of `block`; its config must be JSON-serializable."""
    entry = BlockConfig(
        block_type=block.block_type, block_id=block.block_id, config=_jsonable(block.config, repr(block))
    )
    return _dump(entry)


def block_from_config(config: Mapping[str, Any] | BlockConfig, *, registry: BlockRegistry | None = None) -> Block:
    """Build the block a `block_to_config` dict describes, through the registry."""
    entry = _validate(BlockConfig, config, "block config")
    return _build_block(entry, registry or global_registry())


# -------------------------------------------------------------------- graphs
def graph_to_config(graph: Graph) -> dict[str, Any]:
    """`graph` as a plain config dict (JSON/YAML-ready); see `GraphConfig`."""
    return _dump(_graph_config(graph))


def graph_from_config(
    source: ConfigSource,
    *,
    registry: BlockRegistry | None = None,
    validate: bool = False,
    base_dir: str | PathLike[str] | None = None,
) -> Graph:
    """Build a graph from a config dict/model or a YAML/JSON file (or a saved graph's folder).

    ``{ref: file}`` nodes and ``weights`` are resolved relative to the config file, else to
    `base_dir` (default: the working directory). With `validate`, the built graph is
    checked strictly (`Graph.validate`).
    """
    config, base = _read_source(source, base_dir)
    graph = _build_graph(config, base, registry or global_registry())
    if validate:
        graph.validate(strict=True)
    return graph


def save_graph(graph: Graph, directory: str | PathLike[str]) -> Path:
    """Write ``config.yaml`` and each stateful block's weights once; returns the config path."""
    root = Path(directory)
    # one graph: nothing is shared between graphs, so every file goes to root/weights/
    return _WeightSaver(root / SHARED_WEIGHTS_DIR, [graph]).save_graph(graph, root)


def load_graph(
    directory: str | PathLike[str], *, registry: BlockRegistry | None = None, validate: bool = False
) -> Graph:
    """A graph written by `save_graph` (weights from ``weights/``) or by
    ``Graph.save(format="checkpoint")`` (weights from ``checkpoint.<ext>``)."""
    from worldgen.engine.checkpoint import find_checkpoint_file, load_graph_checkpoint

    graph = graph_from_config(Path(directory), registry=registry)
    checkpoint = find_checkpoint_file(Path(directory)) if Path(directory).is_dir() else None
    if checkpoint is not None:
        load_graph_checkpoint(graph, checkpoint)
    if validate:
        graph.validate(strict=True)
    return graph


# --------------------------------------------------------------------- files
def read_config_file(path: str | PathLike[str]) -> dict[str, Any]:
    """A YAML or JSON file's top-level mapping (``.json`` is parsed as JSON, else YAML)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc}") from exc
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping, got {type(data).__name__}")
    return data


def write_config_file(config: Mapping[str, Any], path: str | PathLike[str]) -> Path:
    """Write `config` as JSON (``.json``) or YAML (anything else), UTF-8; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        text = json.dumps(config, indent=2, ensure_ascii=False) + "\n"
    else:
        text = yaml.safe_dump(dict(config), sort_keys=False, allow_unicode=True)
    path.write_text(text, encoding="utf-8")
    return path


def save_block_state(block: Block, stem: str | PathLike[str]) -> Path | None:
    """Write `block.state_dict()` to ``stem.safetensors`` (non-tensor entries as JSON in its
    metadata) or, without tensors, ``stem.json``; None when the block has no state."""
    state = block.state_dict()
    if not state:
        return None
    tensors = {key: value for key, value in state.items() if _is_tensor(value)}
    rest = _jsonable({k: v for k, v in state.items() if k not in tensors}, f"{block!r} state")
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    if not tensors:
        path = stem.with_name(stem.name + ".json")
        path.write_text(json.dumps(rest, ensure_ascii=False), encoding="utf-8")
        return path
    return write_safetensors(tensors, rest, stem.with_name(stem.name + ".safetensors"))


def load_block_state(block: Block, path: str | PathLike[str], *, strict: bool = True) -> None:
    """Load a `save_block_state` file into `block` (safetensors or JSON only, never pickles)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"weights file {str(path)!r} of {block!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".json":
        state = json.loads(path.read_text(encoding="utf-8"))
    elif suffix == ".safetensors":
        state, _ = read_safetensors(path)
    else:
        raise ConfigError(f"weights file {str(path)!r}: only .safetensors and .json load (no pickles)")
    block.load_state_dict(state, strict=strict)


def write_safetensors(
    tensors: Mapping[str, Any], rest: Mapping[str, Any], path: Path, header: Mapping[str, str] | None = None
) -> Path:
    """`tensors` to a safetensors file, the JSON-ready non-tensor state `rest` in its metadata
    (plus `header`, extra metadata entries): the one layout of weights files and checkpoints."""
    from safetensors.torch import save_file

    metadata = {**(header or {}), _STATE_KEY: json.dumps(rest, ensure_ascii=False)}
    save_file(_storable(tensors), str(path), metadata=metadata)
    return path


def read_safetensors(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """``(state, other metadata)`` of a `write_safetensors` file: its tensors plus the
    non-tensor state from the metadata (as JSON data, undecoded)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as file:
        metadata = dict(file.metadata() or {})
        state = {key: file.get_tensor(key) for key in file.keys()}
    state.update(json.loads(metadata.pop(_STATE_KEY, "{}")))
    return state, metadata


def weights_owner(block: Block) -> tuple[str, int]:
    """What a block's saved state belongs to: its torch module when the block's whole state
    is that module's (a `TorchBlock` without sub-blocks), so blocks sharing one pooled
    module (one checkpoint ref) write and load it once; else the block itself."""
    from_module = getattr(type(block), "local_state_dict", None)
    module = getattr(block, "module", None)
    if module is not None and not block.get_sub_blocks():
        torch = sys.modules.get("torch")
        torch_block = sys.modules.get("worldgen.blocks.torch_block")
        if (torch is not None and torch_block is not None and isinstance(module, torch.nn.Module)
                and from_module is torch_block.TorchBlock.local_state_dict):
            return ("module", id(module))
    return ("block", id(block))


# ------------------------------------------------------------------ private
def _graph_config(graph: Graph) -> GraphConfig:
    owners: dict[str, tuple[Block, str]] = {}  # block_id → (block, first node)
    nodes: dict[str, NodeConfig] = {}
    auto = set(graph.auto_node_ids)
    for node_id in graph.node_ids:
        block = graph.get_node(node_id).block
        owner, first = owners.setdefault(block.block_id, (block, node_id))
        if owner is not block:  # ids key sharing on load, so two blocks must not share one
            raise ConfigError(
                f"graph {graph.graph_id!r}: nodes {first!r} and {node_id!r} hold different blocks with the "
                f"same block_id {block.block_id!r}; give them distinct ids to serialize the graph"
            )
        entry = block_to_config(block)
        trainable = graph.is_trainable(node_id) and not block.frozen  # set_trainable or a frozen block
        nodes[node_id] = NodeConfig(**entry, trainable=trainable, auto_connect=node_id in auto)
    return GraphConfig(
        graph_id=graph.graph_id,
        kind=graph.graph_kind,
        metadata=_jsonable(graph.metadata, f"graph {graph.graph_id!r} metadata"),
        ambiguity_policy=graph.ambiguity_policy,
        nodes=nodes,
        edges=[EdgeConfig(**asdict(e)) for e in graph.get_edges() if not graph.is_auto_edge(e)],
        exposed_inputs=[ExposedPortConfig(**asdict(e)) for e in graph.exposed_input_ports()],
        exposed_outputs=[ExposedPortConfig(**asdict(e)) for e in graph.exposed_outputs().values()],
    )


def read_graph_config(source: ConfigSource) -> GraphConfig:
    """Read and validate a graph config (version, keys, types) without building any block."""
    return _read_source(source, None)[0]


def _read_source(source: ConfigSource, base_dir: str | PathLike[str] | None) -> tuple[GraphConfig, Path]:
    """The validated config and the folder its relative paths start from."""
    if isinstance(source, GraphConfig):
        return source, Path(base_dir or ".")
    if isinstance(source, BaseModel):
        source = source.model_dump()
    if isinstance(source, Mapping):
        return _validate_graph(source, "graph config"), Path(base_dir or ".")
    path = Path(source)
    if path.is_dir():
        path = next((path / name for name in CONFIG_FILES if (path / name).is_file()), path / CONFIG_FILES[0])
    return _validate_graph(read_config_file(path), f"graph config {str(path)!r}"), Path(base_dir or path.parent)


def _validate_graph(raw: Mapping[str, Any], where: str) -> GraphConfig:
    # the version first: another version's keys would otherwise fail with a confusing key error
    return _validate(GraphConfig, {**raw, "schema_version": check_schema_version(raw, where)}, where)


def check_schema_version(raw: Mapping[str, Any], where: str) -> str:
    """`raw`'s ``schema_version`` (default `SCHEMA_VERSION`), or a `ConfigError` naming `where`
    when it is not supported: the one check for configs, metas and checkpoint headers."""
    version = str(raw.get("schema_version", SCHEMA_VERSION))
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise ConfigError(
            f"{where}: schema_version {version!r} is not supported (supported: {list(SUPPORTED_SCHEMA_VERSIONS)})"
        )
    return version


def _validate(model: type[StrictConfig], data: Any, where: str) -> Any:
    """`model.model_validate`, with errors as one `ConfigError` naming each key path."""
    if isinstance(data, model):
        return data
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, error['loc'])) or '<root>'}: {error['msg']}" for error in exc.errors()
        )
        raise ConfigError(f"invalid {where}: {problems}") from None


def _build_graph(config: GraphConfig, base: Path, registry: BlockRegistry) -> Graph:
    return _build_graph_sharing(config, base, registry, {}, "")


def _resolve_ref(node_id: str, entry: NodeConfig, base: Path) -> NodeConfig:
    """The node entry a ``{ref: file}`` names; its `weights` become relative to `base`."""
    if entry.ref is None:
        return entry
    path = base / entry.ref
    resolved = _validate(NodeConfig, read_config_file(path), f"node {node_id!r} (ref {str(path)!r})")
    if resolved.ref is not None:
        raise ConfigError(f"node {node_id!r}: ref file {str(path)!r} holds another ref; refs do not nest")
    if resolved.weights is not None:
        resolved.weights = str((path.parent / resolved.weights).resolve())
    return resolved


def _shared_block(
    node_id: str, entry: NodeConfig, shared: Mapping[str, tuple[str, NodeConfig, Block]]
) -> Block | None:
    """The block already built for `entry.block_id`, if any; its description must match."""
    if entry.block_id is None or entry.block_id not in shared:
        return None
    first, seen, block = shared[entry.block_id]
    fields = ("block_type", "config", "weights")  # `trainable` is per node (Graph.set_trainable)
    differ = [f for f in fields if getattr(seen, f) != getattr(entry, f)]
    if differ:
        raise ConfigError(
            f"nodes {first!r} and {node_id!r} share block_id {entry.block_id!r} (one block) but differ in {differ}"
        )
    return block


def _build_block(entry: BlockConfig, registry: BlockRegistry) -> Block:
    assert entry.block_type is not None  # NodeConfig's validator and `_resolve_ref` ensure it
    if entry.block_type not in registry:
        _import_plugins()
    return registry.build({"block_type": entry.block_type, "block_id": entry.block_id, "config": entry.config})


def _import_plugins() -> None:
    """Import the packages that register more block types; missing optional deps are skipped."""
    from importlib.metadata import entry_points

    plugins = [*PLUGIN_PACKAGES, *(ep.module for ep in entry_points(group=PLUGIN_ENTRY_POINTS))]
    for package in plugins:
        try:
            importlib.import_module(package)
        except ImportError:
            continue


@contextmanager
def _located(loc: str) -> Iterator[None]:
    """Name the config key path in errors raised while building from it (type unchanged)."""
    try:
        yield
    except Exception as exc:
        exc.add_note(f"(while building graph config key {loc!r})")
        raise


def _dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json", exclude_none=True)


def _jsonable(value: Any, what: str) -> Any:
    """Plain JSON types (tuples → lists, paths → str), or a `ConfigError` naming `what`."""
    try:
        return to_jsonable_python(value)
    except PydanticSerializationError as exc:
        raise ConfigError(f"{what} is not JSON-serializable: {exc}") from None


def _file_stem(node_id: str, taken: set[str]) -> str:
    """A file-name-safe, unused stem for `node_id`."""
    stem = re.sub(r"[^\w.-]", "_", node_id).lstrip(".") or "node"
    unique, n = stem, 1
    while unique.lower() in taken:  # lower-case: case-insensitive file systems
        n += 1
        unique = f"{stem}-{n}"
    taken.add(unique.lower())
    return unique


def _is_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")  # no torch loaded means no tensors: don't import it for that
    return torch is not None and isinstance(value, torch.Tensor)


def _storable(tensors: Mapping[str, Any]) -> dict[str, Any]:
    """CPU tensors that each own exactly their contiguous storage, as safetensors requires
    (views and tied weights are written as copies; loading copies them back in place)."""
    import torch

    out: dict[str, Any] = {}
    seen: set[int] = set()
    for key, tensor in tensors.items():
        tensor = tensor.detach().cpu()
        storage = tensor.untyped_storage()
        owns_storage = (
            tensor.is_contiguous() and tensor.storage_offset() == 0
            and storage.nbytes() == tensor.numel() * tensor.element_size()
        )
        if not owns_storage or storage.data_ptr() in seen:
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        seen.add(tensor.untyped_storage().data_ptr())
        out[key] = tensor
    return out


# ================================================================ pipelines (levels.md §4, §8)
# Additive: pipeline configs and saved pipelines, built on the graph helpers above. Blocks are
# shared by `block_id` across *all* graphs built with one `shared_blocks` dict, so a block
# used by two graphs (or two pipelines of a stage) is one object after loading, and a saved
# directory holds its weights once, in ``shared/``.
#
# Layout of `save_pipeline(pipeline, d)`::
#
#     d/config.yaml                 PipelineConfig; graphs: {pid: {ref: checkpoints/<pid>}}
#     d/checkpoints/<pid>/          a saved graph (config.yaml + weights/), loadable alone
#     d/shared/<block_id>.*         weights of blocks used by more than one graph (once)
#     d/pipeline_meta.json          {schema_version, pipeline_id, node_ids}

PIPELINE_META_FILE = "pipeline_meta.json"
CHECKPOINTS_DIR = "checkpoints"
SHARED_WEIGHTS_DIR = "shared"

SharedBlocks = dict[str, tuple[str, NodeConfig, Block]]
"""block_id → (first node label, its entry, the block): pass one dict to share blocks across builds."""


class PipelineGraphConfig(StrictConfig):
    """One graph of a pipeline: a nested graph config or ``{ref: file or saved folder}``.

    A bare graph config (no ``graph_config``/``ref`` key) is accepted as the nested form."""

    graph_config: dict[str, Any] | None = None
    ref: str | None = Field(None, min_length=1)
    trainable: bool = True

    @model_validator(mode="before")
    @classmethod
    def _bare_graph_config(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and not ({"graph_config", "ref"} & set(data)):
            return {"graph_config": dict(data)}
        return data

    @model_validator(mode="after")
    def _one_form(self) -> PipelineGraphConfig:
        if (self.graph_config is None) == (self.ref is None):
            raise ValueError("a pipeline graph needs exactly one of 'graph_config' or 'ref'")
        return self


class PipelineExposedPortConfig(StrictConfig):
    pipeline_node_id: str = Field(min_length=1)
    port_name: str = Field(min_length=1)
    name: str | None = None


class PipelineConfig(StrictConfig):
    """A whole pipeline: graphs by pipeline node id, edges between their ports, exposures."""

    schema_version: str = SCHEMA_VERSION
    pipeline_id: str = Field(min_length=1)
    metadata: dict[str, Any] = {}
    graphs: dict[str, PipelineGraphConfig] = {}
    edges: list[EdgeConfig] = []
    exposed_inputs: list[PipelineExposedPortConfig] = []
    exposed_outputs: list[PipelineExposedPortConfig] = []


def pipeline_to_config(pipeline: Any) -> dict[str, Any]:
    """`pipeline` as a plain config dict, each graph nested (no weights)."""
    check_block_ids([(pid, pipeline.get_graph(pid)) for pid in pipeline.graph_ids])
    entries = {
        pid: PipelineGraphConfig(
            graph_config=_dump(_graph_config(pipeline.get_graph(pid))), trainable=pipeline.is_trainable(pid)
        )
        for pid in pipeline.graph_ids
    }
    return _dump(_pipeline_config(pipeline, entries))


def pipeline_from_config(
    source: ConfigSource,
    *,
    registry: BlockRegistry | None = None,
    validate: bool = False,
    base_dir: str | PathLike[str] | None = None,
    shared_blocks: SharedBlocks | None = None,
    label: str = "",
) -> Any:
    """Build a pipeline from a config dict/model, a YAML/JSON file or a saved pipeline's folder.

    ``ref`` graphs and weights resolve relative to the config file, else `base_dir`. Nodes
    of *different* graphs with one `block_id` get one block (their entries must agree);
    pass the same `shared_blocks` dict to several calls to share blocks between pipelines."""
    raw, base = _read_versioned(source, base_dir, "pipeline config")
    config = _validate(PipelineConfig, raw, f"pipeline config{_where(source)}")
    pipeline = _build_pipeline(
        config, base, registry or global_registry(), {} if shared_blocks is None else shared_blocks, label
    )
    if validate:
        pipeline.validate(strict=True)
    return pipeline


def save_pipeline(pipeline: Any, directory: str | PathLike[str]) -> Path:
    """Write a pipeline (layout above); returns the config path."""
    root = Path(directory)
    saver = _WeightSaver(root / SHARED_WEIGHTS_DIR, [pipeline.get_graph(pid) for pid in pipeline.graph_ids])
    return _save_pipeline_into(pipeline, root, saver)


def save_pipelines(pipelines: Mapping[str, Any], directory: str | PathLike[str]) -> dict[str, str]:
    """Save several pipelines under ``directory/checkpoints/<id>/``, blocks shared between
    any of their graphs written once in ``directory/shared/``; returns ``{id: folder}``
    relative to `directory` (for ``{ref: folder}`` entries)."""
    root = Path(directory)
    check_block_ids(
        [(f"{nid}/{pid}", p.get_graph(pid)) for nid, p in pipelines.items() for pid in p.graph_ids]
    )
    graphs = [p.get_graph(pid) for p in pipelines.values() for pid in p.graph_ids]
    saver = _WeightSaver(root / SHARED_WEIGHTS_DIR, graphs)
    taken: set[str] = set()
    refs: dict[str, str] = {}
    for nid, pipeline in pipelines.items():
        sub = root / CHECKPOINTS_DIR / _file_stem(nid, taken)
        _save_pipeline_into(pipeline, sub, saver)
        refs[nid] = sub.relative_to(root).as_posix()
    return refs


def check_block_ids(graphs: Iterable[tuple[str, Graph]]) -> None:
    """`ConfigError` when two nodes of these graphs hold different blocks with one `block_id`
    (loading would merge them into one block)."""
    owners: dict[str, tuple[Block, str]] = {}
    for label, graph in graphs:
        for node_id in graph.node_ids:
            block = graph.get_node(node_id).block
            owner, first = owners.setdefault(block.block_id, (block, f"{label}.{node_id}"))
            if owner is not block:
                raise ConfigError(
                    f"nodes {first!r} and {label + '.' + node_id!r} hold different blocks with the same "
                    f"block_id {block.block_id!r}; give them distinct ids to serialize"
                )


def read_versioned_config(
    source: ConfigSource, base_dir: str | PathLike[str] | None, what: str
) -> tuple[dict[str, Any], Path]:
    """A config mapping (dict, model, file or saved folder) whose `schema_version` is
    supported, and the folder its relative paths start from."""
    return _read_versioned(source, base_dir, what)


# ------------------------------------------------------------- pipeline private
def _pipeline_config(pipeline: Any, entries: dict[str, PipelineGraphConfig]) -> PipelineConfig:
    inner = pipeline._graph  # the pipeline's graph of GraphBlocks: its edges and exposures

    def exposed(table: Mapping[str, Any]) -> list[PipelineExposedPortConfig]:
        return [
            PipelineExposedPortConfig(pipeline_node_id=e.node_id, port_name=e.port_name, name=e.name)
            for e in table.values()
        ]

    return PipelineConfig(
        pipeline_id=pipeline.pipeline_id,
        metadata=_jsonable(getattr(pipeline, "metadata", None) or {}, f"pipeline {pipeline.pipeline_id!r} metadata"),
        graphs=entries,
        edges=[EdgeConfig(**asdict(e)) for e in pipeline.get_edges()],
        exposed_inputs=exposed(inner.exposed_inputs()),
        exposed_outputs=exposed(inner.exposed_outputs()),
    )


def _where(source: Any) -> str:
    return f" {str(source)!r}" if isinstance(source, (str, PathLike)) else ""


def _read_versioned(
    source: ConfigSource, base_dir: str | PathLike[str] | None, what: str
) -> tuple[dict[str, Any], Path]:
    if isinstance(source, BaseModel):
        source = source.model_dump()
    if isinstance(source, Mapping):
        raw, base, where = dict(source), Path(base_dir or "."), what
    else:
        path = Path(source)
        if path.is_dir():
            path = next((path / n for n in CONFIG_FILES if (path / n).is_file()), path / CONFIG_FILES[0])
        raw, base, where = read_config_file(path), Path(base_dir or path.parent), f"{what} {str(path)!r}"
    return {**raw, "schema_version": check_schema_version(raw, where)}, base


@contextmanager
def _located_in(what: str, loc: str) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        exc.add_note(f"(while building {what} config key {loc!r})")
        raise


def _build_pipeline(config: PipelineConfig, base: Path, registry: BlockRegistry, shared: SharedBlocks, label: str) -> Any:
    from worldgen.engine.pipeline import Pipeline

    pipeline = Pipeline(config.pipeline_id)
    for pid, entry in config.graphs.items():
        with _located_in("pipeline", f"graphs.{pid}"):
            if entry.ref is not None:
                graph_config, graph_base = _read_source(base / entry.ref, None)
            else:
                graph_config = _validate_graph(entry.graph_config or {}, f"pipeline config graphs.{pid}.graph_config")
                graph_base = base
            graph = _build_graph_sharing(graph_config, graph_base, registry, shared, f"{label}{pid}.")
            pipeline.add_graph(graph, pid)
            if not entry.trainable:
                pipeline.set_trainable(pid, False)
    for i, edge in enumerate(config.edges):
        with _located_in("pipeline", f"edges.{i}"):
            pipeline.add_edge(edge.source_node, edge.source_port, edge.target_node, edge.target_port)
    for key, exposures, expose in (
        ("exposed_inputs", config.exposed_inputs, pipeline.expose_input),
        ("exposed_outputs", config.exposed_outputs, pipeline.expose_output),
    ):
        for i, exposed in enumerate(exposures):
            with _located_in("pipeline", f"{key}.{i}"):
                expose(exposed.pipeline_node_id, exposed.port_name, exposed.name)
    if config.metadata:
        pipeline.metadata = dict(config.metadata)
    return pipeline


def _build_graph_sharing(
    config: GraphConfig, base: Path, registry: BlockRegistry, shared: SharedBlocks, label: str
) -> Graph:
    """Build a graph; ``shared`` (block_id → first node, entry, block) is the caller's, so a
    pipeline or stage can share blocks across its graphs (a lone graph passes a fresh one)."""
    from worldgen.engine.graph import Graph

    graph = Graph(
        config.graph_id, graph_kind=config.kind, metadata=config.metadata, ambiguity_policy=config.ambiguity_policy
    )
    for node_id, raw_entry in config.nodes.items():
        entry = _resolve_ref(node_id, raw_entry, base)
        if entry.weights is not None:  # compare weights by file, not by spelling relative to each graph
            entry = entry.model_copy(update={"weights": str((base / entry.weights).resolve())})
        with _located(f"nodes.{node_id}"):
            block = _shared_block(label + node_id, entry, shared)
            if block is None:
                with requesting(f"node {label + node_id!r} of graph {config.graph_id!r}"):
                    block = _build_block(entry, registry)
                if entry.weights is not None and not _already_loaded(block, entry.weights, shared):
                    load_block_state(block, entry.weights)
                shared[block.block_id] = (label + node_id, entry, block)
        graph.add_node(node_id, block, auto_connect=entry.auto_connect)
        if not entry.trainable:
            graph.set_trainable(node_id, False)
    for i, edge in enumerate(config.edges):
        with _located(f"edges.{i}"):
            graph.add_edge(edge.source_node, edge.source_port, edge.target_node, edge.target_port)
    for i, exposed in enumerate(config.exposed_inputs):
        with _located(f"exposed_inputs.{i}"):
            graph.expose_input(exposed.node_id, exposed.port_name, exposed.name, fan_out=True)
    for i, exposed in enumerate(config.exposed_outputs):
        with _located(f"exposed_outputs.{i}"):
            graph.expose_output(exposed.node_id, exposed.port_name, exposed.name)
    if graph.auto_node_ids:
        graph.auto_connect()  # auto edges as the explicit ones leave them, independent of order
    _freeze_unused(graph, shared, label)
    return graph


def _freeze_unused(graph: Graph, shared: SharedBlocks, label: str) -> None:
    """Saved, a block no node trained said ``trainable: false`` on every node: freeze the
    blocks first built here that no node of this graph trains. A block from an earlier graph
    keeps that graph's decision unless a node here trains it."""
    trained = {id(graph.get_node(n).block) for n in graph.trainable_nodes}
    for node_id in graph.node_ids:
        block = graph.get_node(node_id).block
        if id(block) in trained:
            if block.frozen:
                block.unfreeze()
        elif shared[block.block_id][0] == label + node_id and not block.frozen:
            block.freeze()


def _already_loaded(block: Block, weights: str, shared: SharedBlocks) -> bool:
    """True when `weights` was loaded in this build into a block with the same weights owner
    (the same pooled module): loading it again would only repeat the same copy."""
    owner = weights_owner(block)
    return owner[0] == "module" and any(
        seen.weights == weights and weights_owner(other) == owner for _, seen, other in shared.values()
    )


class _WeightSaver:
    """Writes each block's state once: blocks in several of `graphs` go to `shared_dir`."""

    def __init__(self, shared_dir: Path, graphs: Iterable[Graph]) -> None:
        self.shared_dir = shared_dir
        graphs_of: dict[tuple[str, int], set[int]] = {}
        for graph in graphs:
            for block in graph.blocks():
                graphs_of.setdefault(weights_owner(block), set()).add(id(graph))
        self.shared = {b for b, gs in graphs_of.items() if len(gs) > 1}
        self.written: dict[tuple[str, int], Path | None] = {}
        self.taken: set[str] = set()

    def save_graph(self, graph: Graph, directory: Path) -> Path:
        config = _graph_config(graph)
        taken: set[str] = set()
        for node_id in graph.node_ids:
            block = graph.get_node(node_id).block
            owner = weights_owner(block)
            if owner not in self.written:
                if owner in self.shared:
                    stem = self.shared_dir / _file_stem(block.block_id, self.taken)
                else:
                    stem = directory / _WEIGHTS_DIR / _file_stem(node_id, taken)
                self.written[owner] = save_block_state(block, stem)
            file = self.written[owner]
            config.nodes[node_id].weights = None if file is None else Path(os.path.relpath(file, directory)).as_posix()
        return write_config_file(_dump(config), directory / CONFIG_FILES[0])


def _save_pipeline_into(pipeline: Any, root: Path, saver: _WeightSaver) -> Path:
    check_block_ids([(pid, pipeline.get_graph(pid)) for pid in pipeline.graph_ids])
    taken: set[str] = set()
    entries: dict[str, PipelineGraphConfig] = {}
    for pid in pipeline.graph_ids:
        sub = root / CHECKPOINTS_DIR / _file_stem(pid, taken)
        saver.save_graph(pipeline.get_graph(pid), sub)
        entries[pid] = PipelineGraphConfig(ref=sub.relative_to(root).as_posix(), trainable=pipeline.is_trainable(pid))
    meta = {"schema_version": SCHEMA_VERSION, "pipeline_id": pipeline.pipeline_id, "node_ids": pipeline.graph_ids}
    root.mkdir(parents=True, exist_ok=True)
    (root / PIPELINE_META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return write_config_file(_dump(_pipeline_config(pipeline, entries)), root / CONFIG_FILES[0])
