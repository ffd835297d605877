"""Graph and pipeline checkpoints: weights only, keyed by node (levels.md §8 "Graph checkpoint",
"Backends", "Pipeline checkpoint").

A graph's state is ``{node_id: block.state_dict()}`` with each block (or pooled module, see
`weights_owner`) once, under the first node holding it. On disk:

* ``format="single"``: one file, keys ``"<node_id>.<key>"``;
* ``format="dir"``: ``path/<node_id>.<ext>`` per stateful node plus ``path/graph_meta.json``
  (``{schema_version, graph_id, format, backend, nodes: {node_id: file}, shared}``).

Backends: ``json`` (tensors as ``{"__tensor__": {dtype, shape, data}}`` nested lists — for
small or non-tensor state), ``safetensors`` (tensors; non-tensor entries as JSON in its
metadata) and ``torch`` (``torch.save``; read back with ``torch.load(weights_only=True)``
only, so nothing but tensors and plain containers is ever unpickled). Anything else raises
`NotImplementedError`.

A pipeline checkpoint is ``path/<pid>/config.json`` + ``path/<pid>/checkpoint.<ext>`` per
graph, ``path/config.json`` (graphs as ``{ref: <pid>}``) and ``path/pipeline_meta.json``; a
block shared by several graphs is written once, in the first graph's file, and the meta's
``shared`` entry points the others at it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worldgen.blocks.base import StateDictError
from worldgen.engine.serialization import (
    PIPELINE_META_FILE,
    SCHEMA_VERSION,
    ConfigError,
    PipelineGraphConfig,
    _dump,
    _file_stem,
    _is_tensor,
    _pipeline_config,
    check_block_ids,
    check_schema_version,
    read_safetensors,
    weights_owner,
    write_config_file,
    write_safetensors,
)

if TYPE_CHECKING:
    from worldgen.engine.graph import Graph

__all__ = [
    "BACKENDS", "CHECKPOINT_STEM", "FORMATS", "GRAPH_META_FILE", "graph_state_dict", "load_graph_checkpoint",
    "load_graph_state", "load_pipeline_checkpoint", "pipeline_load_state", "read_state_file",
    "save_graph_checkpoint", "save_graph_with_checkpoint", "save_pipeline_checkpoint", "write_state_file",
]

#: backend → file extension
BACKENDS: dict[str, str] = {"json": ".json", "safetensors": ".safetensors", "torch": ".pt"}
FORMATS: tuple[str, ...] = ("single", "dir")
GRAPH_META_FILE = "graph_meta.json"
#: The single-file checkpoint `Graph.save(d, format="checkpoint")` writes: ``checkpoint.<ext>``.
CHECKPOINT_STEM = "checkpoint"
_TENSOR = "__tensor__"
_META_KEY = "worldgen.checkpoint"  # safetensors metadata entry holding the header (JSON)

Owner = tuple[str, int]


# ---------------------------------------------------------------- graph state
def owner_groups(graph: Graph) -> dict[Owner, list[str]]:
    """Weights owner → the nodes holding it (first = the node its state is keyed by)."""
    groups: dict[Owner, list[str]] = {}
    for node_id in graph.node_ids:
        groups.setdefault(weights_owner(graph.get_node(node_id).block), []).append(node_id)
    return groups


def graph_state_dict(graph: Graph, groups: Mapping[Owner, list[str]] | None = None) -> dict[str, dict[str, Any]]:
    """``{node_id: state}``, each shared block (or pooled module) once, under its first node
    (`groups`: `owner_groups(graph)`, when the caller has it already)."""
    groups = owner_groups(graph) if groups is None else groups
    return {nodes[0]: graph.get_node(nodes[0]).block.state_dict() for nodes in groups.values()}


def load_graph_state(
    graph: Graph, state: Mapping[str, Mapping[str, Any]], *, strict: bool = True, loaded: set[Owner] | None = None
) -> None:
    """Load ``{node_id: state}`` into `graph`'s blocks, each shared block once.

    A key may be any node holding the block, but only one per block. `strict` raises
    `StateDictError` on an unknown node, on a stateful block given no state, and on unknown
    or missing keys of a block. `loaded` (owners already filled, e.g. by an earlier graph
    of a pipeline) is skipped and updated."""
    groups = owner_groups(graph)
    group_of = {nid: owner for owner, nodes in groups.items() for nid in nodes}
    given: dict[Owner, str] = {}
    for node_id in state:
        if node_id not in group_of:
            raise StateDictError(
                f"graph {graph.graph_id!r}: state for unknown node {node_id!r} (nodes: {graph.node_ids})"
            )
        owner = group_of[node_id]
        if owner in given:
            raise StateDictError(
                f"graph {graph.graph_id!r}: nodes {given[owner]!r} and {node_id!r} hold one block; give its state once"
            )
        given[owner] = node_id
    done = loaded if loaded is not None else set()
    if strict:
        missing = [nodes[0] for owner, nodes in groups.items()
                   if owner not in given and owner not in done and graph.get_node(nodes[0]).block.state_dict()]
        if missing:
            raise StateDictError(f"graph {graph.graph_id!r}: no state for stateful nodes {missing}")
    for owner, node_id in given.items():
        if owner in done:
            continue
        try:
            graph.get_node(node_id).block.load_state_dict(state[node_id], strict=strict)
        except StateDictError as exc:
            raise StateDictError(f"graph {graph.graph_id!r} node {node_id!r}: {exc}") from exc
        done.add(owner)


def flatten(state: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``{node_id: {key: v}}`` → ``{"node_id.key": v}``."""
    return {f"{node_id}.{key}": value for node_id, block_state in state.items() for key, value in block_state.items()}


def unflatten(flat: Mapping[str, Any], node_ids: Iterable[str], where: str) -> dict[str, dict[str, Any]]:
    """Split ``"node_id.key"`` keys by the longest node id they start with (ids may hold dots)."""
    ids = sorted(node_ids, key=len, reverse=True)
    out: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        node_id = next((n for n in ids if key.startswith(n + ".")), None)
        if node_id is None:
            raise StateDictError(f"{where}: key {key!r} names no node of the graph (nodes: {sorted(ids)})")
        out.setdefault(node_id, {})[key[len(node_id) + 1:]] = value
    return out


# ------------------------------------------------------------------ backends
def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise NotImplementedError(f"checkpoint backend {backend!r} is not supported (supported: {sorted(BACKENDS)})")
    return backend


def backend_of(path: Path, backend: str | None) -> str:
    """`backend`, else the one the file extension names."""
    if backend is not None:
        return check_backend(backend)
    by_suffix = {ext: name for name, ext in BACKENDS.items()} | {".pth": "torch"}
    try:
        return by_suffix[path.suffix.lower()]
    except KeyError:
        raise NotImplementedError(
            f"checkpoint {str(path)!r}: cannot tell the backend from {path.suffix or 'no extension'!r}; pass "
            f"backend= (supported: {sorted(BACKENDS)})"
        ) from None


def write_state_file(state: Mapping[str, Any], path: Path, backend: str, header: Mapping[str, Any]) -> Path:
    """Write a flat state (str keys) with `backend`; `header` is kept beside it."""
    check_backend(backend)
    path.parent.mkdir(parents=True, exist_ok=True)
    if backend == "json":
        text = json.dumps({**header, "state": _encode(dict(state), str(path))}, ensure_ascii=False)
        path.write_text(text, encoding="utf-8")
    elif backend == "safetensors":  # the layout of `save_block_state`'s files, plus the header
        tensors = {k: v for k, v in state.items() if _is_tensor(v)}
        rest = _encode({k: v for k, v in state.items() if k not in tensors}, str(path))
        write_safetensors(tensors, rest, path, {_META_KEY: json.dumps(header, ensure_ascii=False)})
    else:
        import torch

        # the non-tensor entries must be plain data (as for json), so a weights_only load reads
        # them back; top-level tensors are not encoded (`tolist` of every weight, for nothing)
        _encode({k: v for k, v in state.items() if not _is_tensor(v)}, str(path))
        plain = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in state.items()}
        torch.save({**header, "state": plain}, path)
    return path


def read_state_file(path: Path, backend: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(flat state, header)`` of a `write_state_file` file; never unpickles objects."""
    check_backend(backend)
    if not path.is_file():
        raise ConfigError(f"checkpoint file {str(path)!r} does not exist")
    if backend == "json":
        data = json.loads(path.read_text(encoding="utf-8"))
        header = {k: v for k, v in data.items() if k != "state"}
        return _decode(data.get("state", {})), header
    if backend == "safetensors":
        state, metadata = read_safetensors(path)
        return {k: _decode(v) for k, v in state.items()}, json.loads(metadata.get(_META_KEY, "{}"))
    import torch

    data = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain containers only
    if not isinstance(data, dict):
        raise StateDictError(f"checkpoint {str(path)!r} holds {type(data).__name__}, not a worldgen checkpoint")
    header = {k: v for k, v in data.items() if k != "state"}
    return dict(data.get("state", {})), header


def _encode(value: Any, where: str) -> Any:
    """JSON-ready: tensors become ``{"__tensor__": {dtype, shape, data}}``; other values
    must be plain JSON data."""
    if _is_tensor(value):
        tensor = value.detach().cpu()
        if tensor.is_complex():
            raise StateDictError(f"{where}: complex tensors do not store as JSON; use backend='safetensors'")
        return {_TENSOR: {"dtype": str(tensor.dtype).removeprefix("torch."), "shape": list(tensor.shape),
                          "data": tensor.tolist()}}
    if isinstance(value, Mapping):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise StateDictError(f"{where}: state keys must be strings, got {bad!r}")
        return {k: _encode(v, f"{where}: {k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v, where) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise StateDictError(f"{where}: {type(value).__name__} value is neither a tensor nor plain JSON data")


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {_TENSOR}:
            import torch

            spec = value[_TENSOR]
            dtype = getattr(torch, str(spec["dtype"]), None)
            if not isinstance(dtype, torch.dtype):
                raise StateDictError(f"checkpoint tensor has unknown dtype {spec['dtype']!r}")
            return torch.tensor(spec["data"], dtype=dtype).reshape(spec["shape"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


# ------------------------------------------------------------------ graph files
def _check_format(format: str, allowed: tuple[str, ...] = FORMATS) -> None:
    if format not in allowed:
        raise NotImplementedError(f"checkpoint format {format!r} is not supported (supported: {list(allowed)})")


def _header(graph: Graph, format: str, backend: str) -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "graph_id": graph.graph_id, "format": format, "backend": backend}


def save_graph_checkpoint(
    graph: Graph, path: str | PathLike[str], *, format: str = "single", backend: str = "json",
    state: Mapping[str, Mapping[str, Any]] | None = None, extra_meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write `graph`'s state (or `state`) as one file or a directory; returns `path`."""
    _check_format(format)
    check_backend(backend)
    groups = owner_groups(graph)
    state = graph_state_dict(graph, groups) if state is None else state
    state = {nid: s for nid, s in state.items() if s}
    path = Path(path)
    header = {**_header(graph, format, backend), **(extra_meta or {})}
    if format == "single":
        return write_state_file(flatten(state), path, backend, header)
    taken: set[str] = {GRAPH_META_FILE.rsplit(".", 1)[0].lower()}
    files: dict[str, str] = {}
    for node_id, block_state in state.items():
        name = _file_stem(node_id, taken) + BACKENDS[backend]
        write_state_file(block_state, path / name, backend, {"node_id": node_id})
        files[node_id] = name
    shared = {nid: nodes[0] for nodes in groups.values() for nid in nodes[1:]}
    meta = {**header, "nodes": files, "shared": shared}
    path.mkdir(parents=True, exist_ok=True)
    (path / GRAPH_META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def read_graph_checkpoint(
    graph: Graph, path: str | PathLike[str] | None = None, *, directory: str | PathLike[str] | None = None,
    backend: str | None = None,
) -> dict[str, dict[str, Any]]:
    """``{node_id: state}`` from a single-file checkpoint (`path`) or a directory one."""
    if (path is None) == (directory is None):
        raise ValueError("pass exactly one of checkpoint_path= (format 'single') or checkpoint_dir= (format 'dir')")
    if path is not None:
        path = Path(path)
        flat, header = read_state_file(path, backend_of(path, backend))
        check_schema_version(header, f"checkpoint {str(path)!r}")
        return unflatten(flat, graph.node_ids, f"checkpoint {str(path)!r}")
    root = Path(directory)  # type: ignore[arg-type]
    meta_path = root / GRAPH_META_FILE
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        check_schema_version(meta, str(meta_path))
        saved = meta.get("backend")
        if backend is not None and saved is not None and check_backend(backend) != saved:
            raise ValueError(f"checkpoint dir {str(root)!r} was written with backend {saved!r}, not {backend!r}")
        backend = check_backend(backend or saved or "json")
        files = dict(meta.get("nodes", {}))
    else:  # no meta: files named <node_id>.<ext>
        if not root.is_dir():
            raise ConfigError(f"checkpoint dir {str(root)!r} does not exist")
        backend = check_backend(backend or "json")
        files = {p.name[: -len(BACKENDS[backend])]: p.name for p in sorted(root.glob("*" + BACKENDS[backend]))}
    return {node_id: read_state_file(root / name, backend)[0] for node_id, name in files.items()}


def load_graph_checkpoint(
    graph: Graph, path: str | PathLike[str] | None = None, *, directory: str | PathLike[str] | None = None,
    backend: str | None = None, strict: bool = True,
) -> Graph:
    """Load a `save_graph_checkpoint` file or directory into `graph`; returns it."""
    load_graph_state(graph, read_graph_checkpoint(graph, path, directory=directory, backend=backend), strict=strict)
    return graph


def save_graph_with_checkpoint(
    graph: Graph, directory: str | PathLike[str], *, backend: str = "json",
    state: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """``directory/config.json`` + ``directory/checkpoint.<ext>`` (format ``single``): what
    ``Graph.save(format="checkpoint")`` and each graph of a pipeline checkpoint write, and
    `load_graph` reads back; returns the config path."""
    root = Path(directory)
    save_graph_checkpoint(graph, root / (CHECKPOINT_STEM + BACKENDS[check_backend(backend)]), backend=backend,
                          state=state)
    return write_config_file(graph.to_config(), root / "config.json")


def find_checkpoint_file(directory: Path) -> Path | None:
    """The ``checkpoint.<ext>`` in `directory` (at most one), else None."""
    found = [directory / (CHECKPOINT_STEM + ext) for ext in BACKENDS.values()
             if (directory / (CHECKPOINT_STEM + ext)).is_file()]
    if len(found) > 1:
        raise ValueError(f"{str(directory)!r} holds several checkpoints {[p.name for p in found]}; keep one")
    return found[0] if found else None


# ------------------------------------------------------------------- pipelines
def pipeline_load_state(pipeline: Any, state: Mapping[str, Mapping[str, Any]], *, strict: bool = True) -> None:
    """``{pid: graph state}`` into `pipeline`, a block shared by several graphs loaded once."""
    unknown = [pid for pid in state if pid not in pipeline]
    if unknown:
        raise StateDictError(f"pipeline {pipeline.pipeline_id!r}: state for unknown graphs {unknown} "
                             f"(graphs: {pipeline.graph_ids})")
    loaded: set[Owner] = set()
    for pid in pipeline.graph_ids:
        if pid not in state and not strict:
            continue
        load_graph_state(pipeline.get_graph(pid), state.get(pid, {}), strict=strict, loaded=loaded)


def save_pipeline_checkpoint(
    pipeline: Any, path: str | PathLike[str], *, format: str = "dir", backend: str = "json"
) -> Path:
    """Write ``path/<pid>/{config.json, checkpoint.<ext>}``, ``path/config.json`` and
    ``path/pipeline_meta.json``; a block shared between graphs is written once."""
    _check_format(format, ("dir",))
    check_backend(backend)
    root = Path(path)
    check_block_ids([(pid, pipeline.get_graph(pid)) for pid in pipeline.graph_ids])
    written: dict[Owner, tuple[str, str]] = {}  # owner → (pid, node) whose file holds it
    shared: dict[str, dict[str, list[str]]] = {}
    dirs: dict[str, str] = {}
    taken: set[str] = set()
    entries: dict[str, PipelineGraphConfig] = {}
    for pid in pipeline.graph_ids:
        graph = pipeline.get_graph(pid)
        sub = _file_stem(pid, taken)
        state: dict[str, dict[str, Any]] = {}
        for owner, nodes in owner_groups(graph).items():
            if owner in written:
                shared.setdefault(pid, {})[nodes[0]] = list(written[owner])
            else:
                written[owner] = (pid, nodes[0])
                state[nodes[0]] = graph.get_node(nodes[0]).block.state_dict()
        save_graph_with_checkpoint(graph, root / sub, backend=backend, state=state)
        dirs[pid] = sub
        entries[pid] = PipelineGraphConfig(ref=sub, trainable=pipeline.is_trainable(pid))
    meta = {"schema_version": SCHEMA_VERSION, "pipeline_id": pipeline.pipeline_id, "node_ids": pipeline.graph_ids,
            "checkpoint_format": format, "backend": backend, "graphs": dirs, "shared": shared}
    root.mkdir(parents=True, exist_ok=True)
    (root / PIPELINE_META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    write_config_file(_dump(_pipeline_config(pipeline, entries)), root / "config.json")
    return root


def load_pipeline_checkpoint(
    pipeline: Any, directory: str | PathLike[str], *, backend: str | None = None, strict: bool = True
) -> Any:
    """Load a `save_pipeline_checkpoint` directory's weights into `pipeline`'s graphs."""
    root = Path(directory)
    meta_path = root / PIPELINE_META_FILE
    if not meta_path.is_file():
        raise ConfigError(f"{str(root)!r} is not a pipeline checkpoint (no {PIPELINE_META_FILE})")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    check_schema_version(meta, str(meta_path))
    saved = meta.get("backend", "json")
    if backend is not None and check_backend(backend) != saved:
        raise ValueError(f"pipeline checkpoint {str(root)!r} was written with backend {saved!r}, not {backend!r}")
    dirs: dict[str, str] = meta.get("graphs") or {pid: pid for pid in meta.get("node_ids", [])}
    missing = [pid for pid in pipeline.graph_ids if pid not in dirs]
    if strict and missing:
        raise StateDictError(f"pipeline checkpoint {str(root)!r} has no graphs {missing}")
    state: dict[str, dict[str, dict[str, Any]]] = {}
    for pid, sub in dirs.items():
        if pid not in pipeline:
            if strict:
                raise StateDictError(f"pipeline checkpoint {str(root)!r}: graph {pid!r} is not in pipeline "
                                     f"{pipeline.pipeline_id!r} (graphs: {pipeline.graph_ids})")
            continue
        file = root / sub / (CHECKPOINT_STEM + BACKENDS[saved])
        state[pid] = read_graph_checkpoint(pipeline.get_graph(pid), file, backend=saved)
    for pid, links in (meta.get("shared") or {}).items():  # blocks written once, in another graph's file
        for node_id, (first_pid, first_node) in links.items():
            if pid in state and first_pid in state and first_node in state[first_pid]:
                state[pid][node_id] = state[first_pid][first_node]
    pipeline_load_state(pipeline, state, strict=strict)
    return pipeline
