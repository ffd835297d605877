"""Graph and block configs (YAML/JSON) and saved graphs (config + safetensors weights).

A config describes structure only: blocks by registered type and config, the explicit
edges (auto edges are recomputed from the role nodes), exposures and metadata. Blocks are
rebuilt through the registry, so a config never holds code. A *saved* graph adds each
block's `state_dict()` in ``weights/``, written once per block object, so a block shared by
two nodes is one file and one object again after loading. Weights load from safetensors
(or JSON for non-tensor state) only: nothing here ever unpickles.

Layout of `save_graph(graph, d)`::

    d/config.yaml                     GraphConfig; nodes carry ``weights: weights/<file>``
    d/weights/<first node id>.safetensors   tensors (+ non-tensor state as JSON metadata)
    d/weights/<first node id>.json          blocks whose state has no tensors
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from collections.abc import Iterator, Mapping
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
]

SCHEMA_VERSION = "1.0"
SUPPORTED_SCHEMA_VERSIONS: tuple[str, ...] = (SCHEMA_VERSION,)
#: What `load_graph` looks for in a saved directory, in order (`save_graph` writes the first).
CONFIG_FILES: tuple[str, ...] = ("config.yaml", "config.yml", "config.json")
#: Packages whose import registers block types; imported when a config names an unknown type.
PLUGIN_PACKAGES: tuple[str, ...] = ("worldgen.blocks.diffusion",)

_WEIGHTS_DIR = "weights"
_STATE_KEY = "worldgen.state"  # safetensors metadata entry holding the non-tensor state (JSON)

ConfigSource = Mapping[str, Any] | BaseModel | str | PathLike[str]
"""A config dict or model, or the path of a YAML/JSON config file (or of a saved graph's folder)."""


class ConfigError(ValueError):
    """A config that cannot be read: wrong schema version, malformed keys, unreadable files."""


# ----------------------------------------------------------------- config models
class _Strict(BaseModel):
    # unknown keys are errors: a misspelt key silently ignored is a wrong graph
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class BlockConfig(_Strict):
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


class EdgeConfig(_Strict):
    source_node: str = Field(min_length=1)
    source_port: str = Field(min_length=1)
    target_node: str = Field(min_length=1)
    target_port: str = Field(min_length=1)


class ExposedPortConfig(_Strict):
    node_id: str = Field(min_length=1)
    port_name: str = Field(min_length=1)
    name: str | None = None


class GraphConfig(_Strict):
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
    config = _graph_config(graph)
    written: dict[int, str | None] = {}  # id(block) → its weights file, relative to root
    taken: set[str] = set()
    for node_id in graph.node_ids:
        block = graph.get_node(node_id).block
        if id(block) not in written:
            stem = _file_stem(node_id, taken)
            written[id(block)] = save_block_state(block, root / _WEIGHTS_DIR / stem)
        file = written[id(block)]
        config.nodes[node_id].weights = None if file is None else Path(file).relative_to(root).as_posix()
    return write_config_file(_dump(config), root / CONFIG_FILES[0])


def load_graph(
    directory: str | PathLike[str], *, registry: BlockRegistry | None = None, validate: bool = False
) -> Graph:
    """A graph written by `save_graph`, weights restored from its files."""
    return graph_from_config(Path(directory), registry=registry, validate=validate)


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
    from safetensors.torch import save_file

    path = stem.with_name(stem.name + ".safetensors")
    save_file(_storable(tensors), path, metadata={_STATE_KEY: json.dumps(rest, ensure_ascii=False)})
    return path


def load_block_state(block: Block, path: str | PathLike[str], *, strict: bool = True) -> None:
    """Load a `save_block_state` file into `block` (safetensors or JSON only, never pickles)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"weights file {str(path)!r} of {block!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".json":
        state = json.loads(path.read_text(encoding="utf-8"))
    elif suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as file:
            state = {key: file.get_tensor(key) for key in file.keys()}
            state.update(json.loads((file.metadata() or {}).get(_STATE_KEY, "{}")))
    else:
        raise ConfigError(f"weights file {str(path)!r}: only .safetensors and .json load (no pickles)")
    block.load_state_dict(state, strict=strict)


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
        nodes[node_id] = NodeConfig(**entry, trainable=not block.frozen, auto_connect=node_id in auto)
    return GraphConfig(
        graph_id=graph.graph_id,
        kind=graph.graph_kind,
        metadata=_jsonable(graph.metadata, f"graph {graph.graph_id!r} metadata"),
        ambiguity_policy=graph.ambiguity_policy,
        nodes=nodes,
        edges=[EdgeConfig(**asdict(e)) for e in graph.get_edges() if not graph.is_auto_edge(e)],
        exposed_inputs=[ExposedPortConfig(**asdict(e)) for e in graph.exposed_inputs().values()],
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
    version = str(raw.get("schema_version", SCHEMA_VERSION))
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise ConfigError(
            f"{where}: schema_version {version!r} is not supported (supported: {list(SUPPORTED_SCHEMA_VERSIONS)})"
        )
    return _validate(GraphConfig, {**raw, "schema_version": version}, where)


def _validate(model: type[_Strict], data: Any, where: str) -> Any:
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
    from worldgen.engine.graph import Graph

    graph = Graph(
        config.graph_id, graph_kind=config.kind, metadata=config.metadata, ambiguity_policy=config.ambiguity_policy
    )
    shared: dict[str, tuple[str, NodeConfig, Block]] = {}  # block_id → (first node, entry, block)
    for node_id, raw_entry in config.nodes.items():
        entry = _resolve_ref(node_id, raw_entry, base)
        with _located(f"nodes.{node_id}"):
            block = _shared_block(node_id, entry, shared)
            if block is None:
                block = _build_block(entry, registry)
                if entry.weights is not None:
                    load_block_state(block, base / entry.weights)
                if not entry.trainable:
                    block.freeze()
                shared[block.block_id] = (node_id, entry, block)
        graph.add_node(node_id, block, auto_connect=entry.auto_connect)
    for i, edge in enumerate(config.edges):
        with _located(f"edges.{i}"):
            graph.add_edge(edge.source_node, edge.source_port, edge.target_node, edge.target_port)
    for key, exposures, expose in (
        ("exposed_inputs", config.exposed_inputs, graph.expose_input),
        ("exposed_outputs", config.exposed_outputs, graph.expose_output),
    ):
        for i, exposed in enumerate(exposures):
            with _located(f"{key}.{i}"):
                expose(exposed.node_id, exposed.port_name, exposed.name)
    if graph.auto_node_ids:
        graph.auto_connect()  # auto edges as the explicit ones leave them, independent of order
    return graph


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
    fields = ("block_type", "config", "weights", "trainable")
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
    for package in PLUGIN_PACKAGES:
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
