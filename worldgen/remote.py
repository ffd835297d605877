"""Remote nodes and stages: run a pipeline or a whole stage on another LangGraph server.

levels.md §9 / world.md §3–4: a node (or a stage) with an ``endpoint_url`` holds a *remote
descriptor* instead of running its graph here. The call goes through LangGraph's own
`RemoteGraph` (``langgraph.pregel.remote``), so auth, retries of the SDK, threadless runs
and Studio all work as for any deployed graph; we only add the wire format.

**Wire format** (JSON, by port type): text, numbers, dicts and lists as they are; a pydantic
model as its JSON; a torch tensor / numpy array as ``{"__wire__": "tensor"|"ndarray",
"dtype", "shape", "data": base64}``; a PIL image as ``{"__wire__": "image", "format":
"png", "data": base64}``; bytes as ``{"__wire__": "bytes", "data": base64}``.

**Serving** — the other side is a compiled LangGraph graph, listed in a ``langgraph.json``
(see ``graphs/stage.py``):

* `serve_pipeline(pipeline)`: state ``{"inputs": {run_key: wire}, "outputs": {...}}``; one
  node runs the pipeline. A remote *node* calls it with the node's port values.
* `serve_stage(stage)`: state ``{block1 … block5, action, artifacts}``; one node runs the
  stage graph's `update`. Block 3 holds artifact refs whose files live in a store; they
  cross the wire as ``artifacts: {sha256: base64}`` beside the blocks and are stored again
  on the receiving side (content-addressed: the refs come out identical).

Secrets never enter a config: the API key comes from the environment variable named by
``api_key_env`` (default ``LANGGRAPH_API_KEY``), read when the call is made.
"""

from __future__ import annotations

import base64
import io
import os
import tempfile
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict

from worldgen.blocks.ports import PortType
from worldgen.engine.serialization import ConfigError, _is_tensor
from worldgen.stage import StageBlocks
from worldgen.state import block_key

__all__ = [
    "API_KEY_ENV",
    "RemoteNode",
    "RemoteStage",
    "decode_value",
    "encode_value",
    "placeholder_graph",
    "serve_pipeline",
    "serve_stage",
]

API_KEY_ENV = "LANGGRAPH_API_KEY"
_TAG = "__wire__"


class RemoteCallError(RuntimeError):
    """A remote node or stage failed or answered something unusable; names it and its URL."""


# ------------------------------------------------------------------ wire format
def encode_value(value: Any, dtype: PortType | str = PortType.ANY, *, where: str = "value") -> Any:
    """`value` as JSON-ready data (module doc); `where` names the node/port in errors."""
    dtype = PortType(dtype)
    if dtype is PortType.TEXT and value is not None and not isinstance(value, str):
        raise TypeError(f"{where} is a text port but holds {type(value).__name__}")
    return _encode(value, where)


def decode_value(data: Any, dtype: PortType | str = PortType.ANY, *, where: str = "value") -> Any:
    """The inverse of `encode_value`."""
    value = _decode(data, where)
    dtype = PortType(dtype)
    if dtype is PortType.TENSOR and value is not None and not _is_tensor(value) and not isinstance(value, (list, dict)):
        raise TypeError(f"{where} is a tensor port but the wire gave {type(value).__name__}")
    return value


def _encode(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if _is_tensor(value):
        import torch

        t = value.detach().cpu().contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        return {_TAG: "tensor", "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                "data": _b64(raw)}
    if type(value).__module__ == "numpy" or type(value).__name__ == "ndarray":
        import numpy as np

        if isinstance(value, np.ndarray):
            arr = np.ascontiguousarray(value)
            return {_TAG: "ndarray", "dtype": arr.dtype.str, "shape": list(arr.shape), "data": _b64(arr.tobytes())}
        if isinstance(value, np.generic):
            return value.item()
    if _is_image(value):
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return {_TAG: "image", "format": "png", "data": _b64(buf.getvalue())}
    if isinstance(value, (bytes, bytearray)):
        return {_TAG: "bytes", "data": _b64(bytes(value))}
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: dict keys must be strings to cross the wire, got {k!r}")
            out[k] = _encode(v, f"{where}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"{where}: {type(value).__name__} has no wire format (text, JSON, tensors, images, bytes)")


def _decode(data: Any, where: str) -> Any:
    if isinstance(data, list):
        return [_decode(v, f"{where}[{i}]") for i, v in enumerate(data)]
    if not isinstance(data, Mapping):
        return data
    tag = data.get(_TAG)
    if tag is None:
        return {k: _decode(v, f"{where}.{k}") for k, v in data.items()}
    raw = base64.b64decode(data["data"])
    if tag == "tensor":
        import torch

        dtype = getattr(torch, data["dtype"], None)
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"{where}: unknown tensor dtype {data['dtype']!r}")
        return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).reshape(data["shape"]).clone()
    if tag == "ndarray":
        import numpy as np

        return np.frombuffer(raw, dtype=np.dtype(data["dtype"])).reshape(data["shape"]).copy()
    if tag == "image":
        from PIL import Image

        with Image.open(io.BytesIO(raw)) as im:
            im.load()
            return im.copy()
    if tag == "bytes":
        return raw
    raise TypeError(f"{where}: unknown wire tag {tag!r}")


def encode_ports(values: Mapping[str, Any], spec: Mapping[str, PortType], where: str) -> dict[str, Any]:
    return {p: encode_value(v, spec.get(p, PortType.ANY), where=f"{where} port {p!r}") for p, v in values.items()}


def decode_ports(data: Mapping[str, Any], spec: Mapping[str, PortType], where: str) -> dict[str, Any]:
    return {p: decode_value(v, spec.get(p, PortType.ANY), where=f"{where} port {p!r}") for p, v in data.items()}


# ------------------------------------------------------------ remote descriptors
class _Remote:
    """An assistant on a LangGraph server, called through `RemoteGraph` (threadless runs)."""

    def __init__(self, endpoint_url: str, assistant_id: str, *, api_key_env: str | None = None,
                 sync_client: Any = None) -> None:
        """`api_key_env` None: `API_KEY_ENV` (so callers pass their optional setting through)."""
        if not endpoint_url or not isinstance(endpoint_url, str):
            raise ValueError(f"endpoint_url must be a non-empty URL, got {endpoint_url!r}")
        if not assistant_id:
            raise ValueError("a remote graph needs an assistant_id (the graph name in langgraph.json)")
        self.endpoint_url = endpoint_url.rstrip("/")
        self.assistant_id = assistant_id
        self.api_key_env = api_key_env or API_KEY_ENV
        self.sync_client = sync_client  # a langgraph_sdk SyncLangGraphClient (tests, custom transports)
        self._graph: Any = None

    def to_config(self) -> dict[str, Any]:
        """The descriptor as config: URL and assistant id, never a key (only its env name)."""
        config = {"endpoint_url": self.endpoint_url, "assistant_id": self.assistant_id}
        if self.api_key_env != API_KEY_ENV:
            config["api_key_env"] = self.api_key_env
        return config

    def graph(self) -> Any:
        if self._graph is None:
            from langgraph.pregel.remote import RemoteGraph

            if self.sync_client is not None:
                self._graph = RemoteGraph(self.assistant_id, sync_client=self.sync_client)
            else:
                self._graph = RemoteGraph(self.assistant_id, url=self.endpoint_url,
                                          api_key=os.environ.get(self.api_key_env))
        return self._graph

    def call(self, payload: dict[str, Any], what: str) -> dict[str, Any]:
        try:
            # config=None on purpose: a world run's thread/checkpoint must not leak into the call
            result = self.graph().invoke(payload, None)
        except Exception as exc:
            raise RemoteCallError(
                f"{what}: remote call to {self.endpoint_url} (assistant {self.assistant_id!r}) failed: "
                f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(result, Mapping):
            raise RemoteCallError(f"{what}: {self.endpoint_url} answered {type(result).__name__}, not a state dict")
        return dict(result)


class RemoteNode(_Remote):
    """A stage/pipeline node that runs a served pipeline (`serve_pipeline`) elsewhere.

    Port values go out and come back in the wire format of their port types."""

    def invoke(self, inputs: Mapping[str, Any], inputs_spec: Mapping[str, PortType],
               outputs_spec: Mapping[str, PortType], *, node_id: str = "node") -> dict[str, Any]:
        what = f"remote node {node_id!r}"
        result = self.call({"inputs": encode_ports(inputs, inputs_spec, what)}, what)
        outputs = result.get("outputs")
        if not isinstance(outputs, Mapping):
            raise RemoteCallError(f"{what}: {self.endpoint_url} gave no 'outputs' (keys: {sorted(result)})")
        missing = [p for p in outputs_spec if p not in outputs]
        if missing:
            raise RemoteCallError(f"{what}: {self.endpoint_url} gave no output {missing} (gave {sorted(outputs)})")
        return decode_ports({p: outputs[p] for p in outputs_spec}, outputs_spec, what)


class RemoteStage(_Remote):
    """A whole stage served elsewhere (`serve_stage`): blocks + action out, blocks back."""

    def invoke(self, state: Mapping[str, Any], reads: tuple[int, ...], writes: tuple[int, ...], *,
               stage_id: str = "stage") -> dict[str, Any]:
        what = f"remote stage {stage_id!r}"
        payload: dict[str, Any] = {block_key(n): _block_json(state.get(block_key(n))) for n in reads}
        payload["action"] = state.get("action")
        if 3 in reads and payload.get("block3"):
            payload["artifacts"] = _pack_artifacts(payload["block3"], _artifact_store(state, what), what)
        result = self.call(payload, what)
        update: dict[str, Any] = {}
        for n in writes:
            key = block_key(n)
            if key not in result:
                raise RemoteCallError(f"{what}: {self.endpoint_url} gave no {key} (gave {sorted(result)})")
            update[key] = result[key]
        if update.get("block3"):
            update["block3"] = _unpack_artifacts(update["block3"], result.get("artifacts") or {},
                                                 _artifact_store(state, what), what)
        return update


# ------------------------------------------------------------------------ serving
class _PipelineWire(TypedDict, total=False):
    inputs: dict[str, Any]
    outputs: dict[str, Any]


class _StageWire(StageBlocks, total=False):
    artifacts: dict[str, str]


def serve_pipeline(source: Any, *, name: str | None = None) -> Any:
    """A compiled LangGraph graph running `source` (a Pipeline, a Graph, or the config or
    saved folder of either) on wire-format inputs; what a `RemoteNode` calls (a stage's
    pipeline node, or a pipeline's graph node). For a ``langgraph.json`` entry."""
    from worldgen.stage_graph.nodes import as_pipeline, pipeline_ports

    if isinstance(source, (str, PathLike, Mapping)):
        source = _pipeline_or_graph(source)
    pipeline = as_pipeline(source, "serve_pipeline")
    ins, outs, _ = pipeline_ports(pipeline)  # the ports a stage node holding it has
    where = f"served pipeline {pipeline.pipeline_id!r}"

    def run(state: _PipelineWire) -> dict[str, Any]:
        unknown = sorted(set(state.get("inputs") or {}) - set(ins))
        if unknown:
            raise ValueError(f"{where} has no input {unknown} (inputs: {list(ins)})")
        inputs = decode_ports(state.get("inputs") or {}, ins, where)
        outputs = pipeline.run(inputs)
        return {"outputs": encode_ports({k: outputs[k] for k in outs if k in outputs}, outs, where)}

    return _one_node_graph(_PipelineWire, "run", run, name or pipeline.pipeline_id)


def serve_stage(source: Any, *, artifacts_root: str | PathLike[str] | None = None, name: str | None = None) -> Any:
    """A compiled LangGraph graph running a stage graph (an instance, a config or a saved
    folder) on the blocks; what a `RemoteStage` calls. Artifact files it makes or reads are
    kept under `artifacts_root` (default: a temporary folder) and sent back by value."""
    from worldgen.artifacts import ArtifactStore
    from worldgen.stage_graph import StageGraph

    stage = source if isinstance(source, StageGraph) else StageGraph.from_config(source)
    if stage.remote is not None:
        raise ValueError(f"stage {stage.stage_id!r} is itself remote ({stage.remote.endpoint_url}); serve its local graph")
    root = Path(artifacts_root) if artifacts_root is not None else Path(tempfile.mkdtemp(prefix="worldgen-stage-"))
    store = ArtifactStore(root)
    where = f"served stage {stage.stage_id!r}"

    class _World:  # what the stage graph's block-3 conversions need of state["world"]
        artifacts = store

    def run(state: _StageWire) -> dict[str, Any]:
        inputs = {k: v for k, v in state.items() if k != "artifacts"}
        if inputs.get("block3"):
            inputs["block3"] = _unpack_artifacts(inputs["block3"], state.get("artifacts") or {}, store, where)
        update = stage.update({**inputs, "world": _World()})
        out = {block_key(n): _block_json(update.get(block_key(n))) for n in stage.output_blocks}
        out["artifacts"] = _pack_artifacts(out["block3"], store, where) if out.get("block3") else {}
        return out

    return _one_node_graph(_StageWire, "stage", run, name or stage.stage_id)


def _pipeline_or_graph(source: Any) -> Any:
    """A pipeline config/folder, else a graph one (a pipeline node may serve either)."""
    from worldgen.engine.graph import Graph
    from worldgen.engine.pipeline import Pipeline

    try:
        return Pipeline.from_config(source)
    except ConfigError as as_pipeline:
        try:
            return Graph.from_config(source)
        except ConfigError as as_graph:
            raise ConfigError(f"{source!r} is neither a pipeline ({as_pipeline}) nor a graph ({as_graph})") from None


def placeholder_graph(name: str, message: str) -> Any:
    """A graph that fails every run with `message`: keeps a ``langgraph.json`` entry loadable
    when what it would serve is not configured (the server loads every entry at start)."""
    def unconfigured(state: _PipelineWire) -> dict[str, Any]:
        raise RuntimeError(f"graph {name!r} is not configured: {message}")

    return _one_node_graph(_PipelineWire, "unconfigured", unconfigured, name)


def _one_node_graph(state: type, node: str, fn: Any, name: str) -> Any:
    """START → `node` → END over the wire state `state`: what each served graph is."""
    builder = StateGraph(state)
    builder.add_node(node, fn)
    builder.add_edge(START, node)
    builder.add_edge(node, END)
    return builder.compile(name=name)


# ------------------------------------------------------------------------ helpers
def _block_json(block: Any) -> Any:
    """A block model as JSON; a dict, a bare string (coerced on the other side as the state
    does) or None as it is."""
    return block.model_dump(mode="json") if hasattr(block, "model_dump") else block


def _artifact_store(state: Mapping[str, Any], what: str) -> Any:
    store = getattr(state.get("world"), "artifacts", None)
    if store is None:
        raise RemoteCallError(f"{what}: block3 crosses the wire with its files, which needs state['world'].artifacts")
    return store


def _pack_artifacts(block3: Mapping[str, Any], store: Any, what: str) -> dict[str, str]:
    """``{sha256: base64}`` of the files behind block 3's refs (inline-only refs need none)."""
    files: dict[str, str] = {}
    for item in block3.get("items") or []:
        uri, sha = item.get("uri"), item.get("sha256")
        if uri and sha and sha not in files:
            try:
                files[sha] = _b64(store.read_bytes(uri))
            except OSError as exc:
                raise RemoteCallError(f"{what}: artifact {uri} is missing from the store: {exc}") from exc
    return files


def _unpack_artifacts(block3: Mapping[str, Any], files: Mapping[str, str], store: Any, what: str) -> dict[str, Any]:
    """Store the files that came with block 3 and return it with refs into `store`."""
    items = []
    for item in block3.get("items") or []:
        sha = item.get("sha256")
        if item.get("uri") and sha:
            if sha not in files:
                raise RemoteCallError(f"{what}: artifact {item['uri']} came without its file")
            ref = store.put_bytes(base64.b64decode(files[sha]), kind=item.get("kind", "file"),
                                  mime=item.get("mime", ""), slot=item.get("slot", ""), meta=item.get("meta"))
            if ref.sha256 != sha:
                raise RemoteCallError(f"{what}: artifact {item['uri']} arrived corrupted (sha256 mismatch)")
            item = {**item, "uri": ref.uri}
        items.append(dict(item))
    return {**block3, "items": items}


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _is_image(value: Any) -> bool:
    pil = __import__("sys").modules.get("PIL.Image")
    return pil is not None and isinstance(value, pil.Image)
