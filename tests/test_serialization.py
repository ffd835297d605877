"""Graph and block configs, saved graphs and their weights (levels.md §8; §10 checks 20–22, 25)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from worldgen.blocks import Block, BlockRegistry, Port, input_port, output_port
from worldgen.blocks.torch_block import TorchBlock
from worldgen.engine import Graph
from worldgen.engine.serialization import (
    SCHEMA_VERSION,
    ConfigError,
    graph_config_json_schema,
    load_block_state,
    save_block_state,
)

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------ test blocks
class Add(Block):
    """result = a + b + offset."""

    block_type = "test/add"

    def declare_ports(self) -> list[Port]:
        return [input_port("a"), input_port("b", optional=True), output_port("result")]

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return {"result": inputs["a"] + inputs.get("b", 0) + self.config.get("offset", 0)}


class Linear(TorchBlock):
    """y = W x + b, built with every weight = `init` so a rebuild is distinguishable."""

    block_type = "test/linear"

    def build_module(self) -> torch.nn.Module:
        module = torch.nn.Linear(self.config["size"], self.config["size"])
        torch.nn.init.constant_(module.weight, self.config.get("init", 0.0))
        torch.nn.init.zeros_(module.bias)
        return module

    def declare_ports(self) -> list[Port]:
        return [input_port("x"), output_port("y")]

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return {"y": self.module(inputs["x"])}


class Tally(Block):
    """Passes `x` through; its state is a plain count and a label (non-tensor state)."""

    block_type = "test/tally"

    def __init__(self, block_id: str | None = None, *, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(block_id, config=config)
        self.count, self.label = 0, "new"

    def declare_ports(self) -> list[Port]:
        return [input_port("x"), output_port("x")]

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return {"x": inputs["x"]}

    def local_state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "label": self.label}

    def load_local_state_dict(self, state: dict[str, Any]) -> None:
        self.count, self.label = state["count"], state["label"]


@pytest.fixture
def registry() -> BlockRegistry:
    reg = BlockRegistry()
    for cls in (Add, Linear, Tally):
        reg.register(cls.block_type, cls)
    return reg


def _graph(registry: BlockRegistry) -> Graph:
    """lin → tally → add(a); add.b exposed unnamed; a frozen block; metadata."""
    graph = Graph("small", graph_kind="data", metadata={"num_loop_steps": 1, "note": ["x", 2]})
    graph.add_node("lin", "test/linear", config={"size": 2, "init": 0.5}, registry=registry)
    graph.add_node("tally", "test/tally", registry=registry)
    graph.add_node("add", "test/add", config={"offset": 1}, registry=registry)
    graph.add_edge("lin", "y", "tally", "x")
    graph.add_edge("tally", "x", "add", "a")
    graph.expose_input("lin", "x", "x")
    graph.expose_input("add", "b")
    graph.expose_output("add", "result", "out")
    graph.get_node("tally").block.freeze()
    return graph


X = {"x": torch.tensor([1.0, -2.0]), "add:b": torch.tensor([0.25, 0.25])}


# ---------------------------------------------------------------- config round trips
def test_dict_round_trip_keeps_structure_and_outputs(registry: BlockRegistry) -> None:
    graph = _graph(registry)
    config = graph.to_config()
    assert config["schema_version"] == SCHEMA_VERSION and config["kind"] == "data"
    assert config["nodes"]["add"] == {
        "block_type": "test/add", "block_id": graph.get_node("add").block.block_id, "config": {"offset": 1},
        "trainable": True, "auto_connect": False,
    }
    assert config["nodes"]["tally"]["trainable"] is False
    assert config["exposed_inputs"] == [
        {"node_id": "lin", "port_name": "x", "name": "x"}, {"node_id": "add", "port_name": "b"},
    ]
    json.dumps(config)  # plain data only

    loaded = Graph.from_config(config, registry=registry)
    assert loaded.to_config() == config
    assert loaded.get_node("tally").block.frozen
    assert loaded.get_edges() == graph.get_edges()
    assert torch.equal(loaded.run(X)["out"], graph.run(X)["out"])


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_file_round_trip(registry: BlockRegistry, tmp_path: Path, suffix: str) -> None:
    graph = _graph(registry)
    path = graph.save_config(tmp_path / f"graph{suffix}")
    text = path.read_text(encoding="utf-8")
    assert (json.loads(text) if suffix == ".json" else yaml.safe_load(text)) == graph.to_config()
    assert Graph.from_config(path, registry=registry).to_config() == graph.to_config()
    assert Graph.from_config(str(path), registry=registry).to_config() == graph.to_config()


def test_auto_edges_are_recomputed_not_stored() -> None:
    graph = Graph("auto")
    graph.add_node("backbone", "backbone/identity")
    graph.add_node("solver", "solver/identity")
    assert len(graph.get_edges()) == 3 and all(graph.is_auto_edge(e) for e in graph.get_edges())
    config = graph.to_config()
    assert config["edges"] == [] and config["nodes"]["solver"]["auto_connect"] is True
    loaded = Graph.from_config(config)
    assert set(loaded.get_edges()) == set(graph.get_edges())
    assert all(loaded.is_auto_edge(e) for e in loaded.get_edges())


def test_ref_nodes_resolve_relative_to_the_config_file(registry: BlockRegistry, tmp_path: Path) -> None:
    (tmp_path / "nodes").mkdir()
    (tmp_path / "nodes" / "add.yaml").write_text("block_type: test/add\nconfig: {offset: 10}\n")
    (tmp_path / "graph.yaml").write_text(yaml.safe_dump({
        "schema_version": SCHEMA_VERSION, "graph_id": "g", "nodes": {"add": {"ref": "nodes/add.yaml"}},
        "exposed_inputs": [{"node_id": "add", "port_name": "a", "name": "a"}],
        "exposed_outputs": [{"node_id": "add", "port_name": "result", "name": "out"}],
    }))
    graph = Graph.from_config(tmp_path / "graph.yaml", registry=registry)
    assert graph.run({"a": 1})["out"] == 11
    # a dict config resolves refs from base_dir; a missing file names the node and path
    assert Graph.from_config({"graph_id": "g", "nodes": {"n": {"ref": "nodes/add.yaml"}}},
                             registry=registry, base_dir=tmp_path).get_node("n").block.config == {"offset": 10}
    with pytest.raises(ConfigError, match=r"nope\.yaml"):
        Graph.from_config({"graph_id": "g", "nodes": {"n": {"ref": "nope.yaml"}}}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"nodes\.n: .*no other keys"):
        Graph.from_config({"graph_id": "g", "nodes": {"n": {"ref": "a.yaml", "block_type": "test/add"}}})


# ------------------------------------------------------------------------ errors
def test_wrong_schema_version_names_found_and_supported() -> None:
    with pytest.raises(ConfigError, match=r"schema_version '2\.0' .*supported: \['1\.0'\]"):
        Graph.from_config({"schema_version": "2.0", "graph_id": "g", "whatever": 1})


def test_malformed_config_names_the_key_path() -> None:
    with pytest.raises(ConfigError, match=r"nodes\.a\.config: Input should be a valid dictionary"):
        Graph.from_config({"graph_id": "g", "nodes": {"a": {"block_type": "test/add", "config": [1]}}})
    with pytest.raises(ConfigError, match=r"edges\.0\.target_port: Field required"):
        Graph.from_config({"graph_id": "g", "edges": [{"source_node": "a", "source_port": "x", "target_node": "b"}]})
    with pytest.raises(ConfigError, match=r"nodes\.a: .*needs 'block_type'"):
        Graph.from_config({"graph_id": "g", "nodes": {"a": {"config": {}}}})
    with pytest.raises(ConfigError, match=r"nodes\.a\.blocktype: Extra inputs are not permitted"):
        Graph.from_config({"graph_id": "g", "nodes": {"a": {"block_type": "x", "blocktype": "x"}}})


def test_unknown_block_type_lists_registered_types(registry: BlockRegistry) -> None:
    with pytest.raises(KeyError, match=r"unknown block type 'test/ad'.*registered types: \[.*'test/add'"):
        Graph.from_config({"graph_id": "g", "nodes": {"a": {"block_type": "test/ad"}}}, registry=registry)


def test_unknown_type_imports_plugin_packages_first() -> None:
    """In a fresh interpreter nothing imported `worldgen.blocks.diffusion`; its types still build."""
    code = (
        "import sys; from worldgen.engine import Graph\n"
        "assert 'worldgen.blocks.diffusion' not in sys.modules\n"
        "node = {'block_type': 'batch/repeat', 'config': {'times': 3}}\n"
        "g = Graph.from_config({'graph_id': 'g', 'nodes': {'r': node}})\n"
        "print(type(g.get_node('r').block).__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "BatchRepeat"


def test_distinct_blocks_with_one_block_id_cannot_serialize(registry: BlockRegistry) -> None:
    graph = Graph("g")
    graph.add_node("a", Add("same"))
    graph.add_node("b", Add("same"))
    with pytest.raises(ConfigError, match=r"'a' and 'b' hold different blocks with the same block_id 'same'"):
        graph.to_config()


# ----------------------------------------------------------------------- blocks
def test_block_config_round_trip(registry: BlockRegistry) -> None:
    block = Add("adder", config={"offset": 3})
    config = block.to_config()
    assert config == {"block_type": "test/add", "block_id": "adder", "config": {"offset": 3}}
    rebuilt = Block.from_config(config, registry=registry)
    assert type(rebuilt) is Add and rebuilt.block_id == "adder" and rebuilt.config == {"offset": 3}
    assert Add.from_config(config, registry=registry).config == {"offset": 3}
    with pytest.raises(TypeError, match="not a Tally"):
        Tally.from_config(config, registry=registry)
    with pytest.raises(ConfigError, match=r"block_type: Field required"):
        Block.from_config({"config": {}}, registry=registry)


def test_block_state_files(tmp_path: Path) -> None:
    tally = Tally()
    tally.count, tally.label = 4, "seen"
    path = save_block_state(tally, tmp_path / "tally")
    assert path is not None and path.name == "tally.json"
    fresh = Tally()
    load_block_state(fresh, path)
    assert (fresh.count, fresh.label) == (4, "seen")
    assert save_block_state(Add(), tmp_path / "add") is None  # no state, no file
    (tmp_path / "evil.pt").write_bytes(b"not read")
    with pytest.raises(ConfigError, match="only .safetensors and .json"):
        load_block_state(fresh, tmp_path / "evil.pt")


# ------------------------------------------------------------------ save / load
def test_save_load_restores_weights_from_files(registry: BlockRegistry, tmp_path: Path) -> None:
    graph = _graph(registry)
    linear = graph.get_node("lin").block
    with torch.no_grad():
        linear.module.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))  # not what a rebuild gives
    tally = graph.get_node("tally").block
    tally.count, tally.label = 7, "trained"

    graph.save(tmp_path)
    assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == ["lin.safetensors", "tally.json"]
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["nodes"]["lin"]["weights"] == "weights/lin.safetensors" and "weights" not in saved["nodes"]["add"]

    loaded = Graph.load(tmp_path, registry=registry)
    assert torch.equal(loaded.get_node("lin").block.module.weight, linear.module.weight)
    assert (loaded.get_node("tally").block.count, loaded.get_node("tally").block.label) == (7, "trained")
    assert loaded.get_node("tally").block.frozen
    assert torch.equal(loaded.run(X)["out"], graph.run(X)["out"])


def test_shared_block_is_written_once_and_loaded_once(registry: BlockRegistry, tmp_path: Path) -> None:
    shared = Linear(config={"size": 2})
    with torch.no_grad():
        shared.module.weight.fill_(2.0)
    graph = Graph("shared")
    graph.add_node("first", shared)
    graph.add_node("second", shared)
    graph.add_node("own", Linear(config={"size": 2}))
    graph.add_edge("first", "y", "second", "x")
    graph.add_edge("second", "y", "own", "x")

    graph.save(tmp_path)
    assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == ["first.safetensors", "own.safetensors"]
    nodes = yaml.safe_load((tmp_path / "config.yaml").read_text())["nodes"]
    assert nodes["first"]["weights"] == nodes["second"]["weights"] == "weights/first.safetensors"

    for loaded in (Graph.load(tmp_path, registry=registry), Graph.from_config(graph.to_config(), registry=registry)):
        first, second = loaded.get_node("first").block, loaded.get_node("second").block
        assert first is second and first is not loaded.get_node("own").block
        assert len(list(loaded.trainable_parameters())) == 4  # shared params listed once
    assert torch.equal(Graph.load(tmp_path, registry=registry).get_node("first").block.module.weight,
                       shared.module.weight)


def test_one_block_id_with_different_configs_is_an_error(registry: BlockRegistry) -> None:
    nodes = {"a": {"block_type": "test/add", "block_id": "x"},
             "b": {"block_type": "test/add", "block_id": "x", "config": {"offset": 2}}}
    with pytest.raises(ConfigError, match=r"'a' and 'b' share block_id 'x' .*differ in \['config'\]"):
        Graph.from_config({"graph_id": "g", "nodes": nodes}, registry=registry)


def test_json_schema_describes_the_config() -> None:
    schema = graph_config_json_schema()
    assert {"schema_version", "graph_id", "kind", "nodes", "edges", "exposed_inputs", "exposed_outputs"} <= set(
        schema["properties"]
    )
    assert schema["required"] == ["graph_id"]
    assert "ref" in schema["$defs"]["NodeConfig"]["properties"]
    json.dumps(schema)


# ------------------------------------------------------------ text_to_image (tiny SD)


def _text_to_image(tiny_sd: Path) -> Graph:
    return Graph.from_template("text_to_image", checkpoint=tiny_sd, num_inference_steps=4, height=32, width=32)


def _image(graph: Graph) -> torch.Tensor:
    return graph.run({"prompt": "a lighthouse", "seed": 3})["image"]


def test_template_config_round_trips(tiny_sd: Path) -> None:
    graph = _text_to_image(tiny_sd)
    config = graph.to_config()
    loaded = Graph.from_config(config, validate=True)
    assert loaded.to_config() == config
    assert loaded.get_node("conditioner").block is loaded.get_node("negative_conditioner").block
    assert loaded.metadata == graph.metadata
    assert torch.equal(_image(loaded), _image(graph))


def test_text_to_image_save_load_same_image(tiny_sd: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from worldgen.local_models import pool as pool_module
    from worldgen.local_models.pool import ModelPool

    # a private pool: the weights changed below are pooled, and must not leak into other tests
    monkeypatch.setattr(pool_module, "_DEFAULT", ModelPool())
    graph = _text_to_image(tiny_sd)
    original = _image(graph)
    with torch.no_grad():  # trained weights: the loaded graph must not re-read the tiny_sd's
        for param in graph.get_node("conditioner").block.module.parameters():
            param.mul_(1.5)
    modified = _image(graph)
    assert not torch.equal(modified, original)

    graph.save(tmp_path)
    files = sorted(p.name for p in (tmp_path / "weights").iterdir())
    assert files == ["backbone.safetensors", "codec.safetensors", "conditioner.safetensors"]

    def no_pickles(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("torch.load called while loading a saved graph")

    monkeypatch.setattr(torch, "load", no_pickles)
    loaded = Graph.load(tmp_path)
    assert loaded.get_node("conditioner").block is loaded.get_node("negative_conditioner").block
    assert torch.equal(_image(loaded), modified)


# ---------------------------------------------- check 25: a shared checkpoint ref, saved once
def _module_loads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """ids of the modules `load_state_dict` fills, one entry per call."""
    calls: list[int] = []
    real = TorchBlock.load_local_state_dict

    def counting(self: TorchBlock, state: dict[str, Any]) -> None:
        calls.append(id(self.module))
        real(self, state)

    monkeypatch.setattr(TorchBlock, "load_local_state_dict", counting)
    return calls


def _unet_keyed_files(root: Path) -> list[str]:
    from safetensors import safe_open

    found = []
    for path in sorted(root.rglob("*.safetensors")):
        with safe_open(str(path), framework="pt") as file:
            if any(k.startswith("conv_in.") for k in file.keys()):  # a UNet state
                found.append(path.relative_to(root).as_posix())
    return found


def test_check25_shared_ref_is_written_once_and_loaded_once(
    tiny_sd: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worldgen.engine.pipeline import Pipeline
    from worldgen.local_models import pool as pool_module
    from worldgen.local_models.pool import ModelPool

    monkeypatch.setattr(pool_module, "_DEFAULT", ModelPool())
    # one graph, two distinct blocks on one ref (one pooled module)
    graph = Graph.from_config({"graph_id": "g", "nodes": {
        name: {"block_type": "backbone/unet2d_condition", "config": {"model_id": str(tiny_sd)}} for name in ("a", "b")}})
    a, b = graph.get_node("a").block, graph.get_node("b").block
    assert a is not b and a.module is b.module
    with torch.no_grad():
        next(a.module.parameters()).fill_(0.5)  # "trained": must survive the round trip
    graph.save(tmp_path / "graph")
    assert _unet_keyed_files(tmp_path / "graph") == ["weights/a.safetensors"]
    nodes = yaml.safe_load((tmp_path / "graph" / "config.yaml").read_text())["nodes"]
    assert nodes["a"]["weights"] == nodes["b"]["weights"] == "weights/a.safetensors"

    # two graphs of a pipeline on that ref: its weights once, in shared/
    first = _text_to_image(tiny_sd)
    second = Graph.from_template("text_to_image", checkpoint=tiny_sd, num_inference_steps=4, height=32,
                                 width=32, graph_id="second")
    assert first.get_node("backbone").block.module is second.get_node("backbone").block.module
    pipeline = Pipeline("p")
    pipeline.add_graph(first, "first")
    pipeline.add_graph(second, "second")
    pipeline.save(tmp_path / "pipeline")
    (unet_file,) = _unet_keyed_files(tmp_path / "pipeline")
    assert unet_file.startswith("shared/")

    # loading (in a fresh pool, so new modules): each shared module filled once, still shared
    monkeypatch.setattr(pool_module, "_DEFAULT", ModelPool())
    loads = _module_loads(monkeypatch)
    loaded = Graph.load(tmp_path / "graph")
    la, lb = loaded.get_node("a").block, loaded.get_node("b").block
    assert la.module is lb.module is not a.module
    assert loads == [id(la.module)]
    assert torch.equal(next(la.module.parameters()), next(a.module.parameters()))

    loads.clear()
    again = Pipeline.load(tmp_path / "pipeline")
    unets = {id(again.get_graph(pid).get_node("backbone").block.module) for pid in ("first", "second")}
    assert len(unets) == 1 and loads.count(unets.pop()) == 1
    assert len(loads) == len(set(loads))  # every module (unet, vae, text encoder) filled once
    assert torch.equal(_image(again.get_graph("second")), _image(second))  # the trained weights came back


# ------------------------------------------- checks 21, 22: graph checkpoints (levels.md §8)
class Buffers(Block):
    """Non-float tensors, a 0-dim tensor and plain values: what a JSON checkpoint must keep."""

    block_type = "test/buffers"

    def __init__(self, block_id: str | None = None, *, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(block_id, config=config)
        self.state = {"half": torch.zeros(2, 3, dtype=torch.float16), "ids": torch.zeros(4, dtype=torch.int64),
                      "scale": torch.tensor(0.0), "empty": torch.zeros(0, 2), "flag": False, "names": []}

    def declare_ports(self) -> list[Port]:
        return [input_port("x"), output_port("x")]

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return {"x": inputs["x"] * self.state["scale"].item() if self.state["flag"] else inputs["x"]}

    def local_state_dict(self) -> dict[str, Any]:
        return dict(self.state)

    def load_local_state_dict(self, state: dict[str, Any]) -> None:
        self.state = dict(state)


def _trained(registry: BlockRegistry) -> Graph:
    """`_graph` with weights and state a rebuild does not give."""
    graph = _graph(registry)
    with torch.no_grad():
        graph.get_node("lin").block.module.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    tally = graph.get_node("tally").block
    tally.count, tally.label = 7, "trained"
    return graph


def _same_state(a: Graph, b: Graph) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for node_id in sa:
        assert sa[node_id].keys() == sb[node_id].keys(), node_id
        for key, value in sa[node_id].items():
            other = sb[node_id][key]
            if isinstance(value, torch.Tensor):
                assert value.dtype == other.dtype and torch.equal(value, other), (node_id, key)
            else:
                assert value == other, (node_id, key)


def test_check21_graph_state_dict_is_keyed_by_node(registry: BlockRegistry) -> None:
    graph = _trained(registry)
    state = graph.state_dict()
    assert list(state) == ["lin", "tally", "add"] and state["add"] == {}
    assert state["tally"] == {"count": 7, "label": "trained"} and set(state["lin"]) == {"weight", "bias"}
    fresh = _graph(registry)
    fresh.load_state_dict(state)
    _same_state(fresh, graph)
    assert torch.equal(fresh.run(X)["out"], graph.run(X)["out"])

    from worldgen.blocks.base import StateDictError

    with pytest.raises(StateDictError, match=r"graph 'small': state for unknown node 'nope'"):
        fresh.load_state_dict({**state, "nope": {}})
    with pytest.raises(StateDictError, match=r"no state for stateful nodes \['tally'\]"):
        fresh.load_state_dict({"lin": state["lin"]})
    fresh.load_state_dict({"lin": state["lin"]}, strict=False)  # non-strict: leaves tally alone
    with pytest.raises(StateDictError, match=r"node 'tally': .*unexpected keys \['extra'\]"):
        fresh.load_state_dict({**state, "tally": {**state["tally"], "extra": 1}})

    shared = Linear(config={"size": 2})
    two = Graph("two")
    two.add_node("first", shared)
    two.add_node("second", shared)
    assert list(two.state_dict()) == ["first"]  # a shared block once, under its first node
    with pytest.raises(StateDictError, match=r"nodes 'first' and 'second' hold one block"):
        two.load_state_dict({"first": shared.state_dict(), "second": shared.state_dict()})
    two.load_state_dict({"second": shared.state_dict()})  # any node holding it may key it


def test_check21_save_checkpoint_format_and_load(registry: BlockRegistry, tmp_path: Path) -> None:
    graph = _trained(registry)
    graph.save(tmp_path / "ckpt", format="checkpoint")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["checkpoint.json", "config.json"]
    saved = json.loads((tmp_path / "ckpt" / "checkpoint.json").read_text())
    assert {"lin.weight", "lin.bias", "tally.count", "tally.label"} == set(saved["state"])
    loaded = Graph.load(tmp_path / "ckpt", registry=registry)
    _same_state(loaded, graph)
    assert torch.equal(loaded.run(X)["out"], graph.run(X)["out"])
    assert loaded.get_node("tally").block.frozen and loaded.to_config() == graph.to_config()
    # the default layout is unchanged
    graph.save(tmp_path / "default")
    assert sorted(p.name for p in (tmp_path / "default").iterdir()) == ["config.yaml", "weights"]


def test_check21_dir_format_round_trips_via_checkpoint_dir(registry: BlockRegistry, tmp_path: Path) -> None:
    graph = _trained(registry)
    graph.add_node("again", graph.get_node("tally").block)  # shared: written once
    graph.add_edge("add", "result", "again", "x")
    root = graph.save_checkpoint(tmp_path / "dir", format="dir")
    assert sorted(p.name for p in root.iterdir()) == ["graph_meta.json", "lin.json", "tally.json"]
    meta = json.loads((root / "graph_meta.json").read_text())
    assert meta["nodes"] == {"lin": "lin.json", "tally": "tally.json"} and meta["shared"] == {"again": "tally"}
    assert meta["graph_id"] == "small" and meta["backend"] == "json" and meta["format"] == "dir"
    config = graph.to_config()
    for loaded in (
        Graph.load_from_checkpoint(config=config, checkpoint_dir=root, registry=registry),
        Graph.load_from_checkpoint(graph.save_config(tmp_path / "g.yaml"), checkpoint_dir=root, registry=registry),
        Graph.load_from_checkpoint(config=config, checkpoint=graph.state_dict(), registry=registry),
        Graph.load_from_checkpoint(config=config, registry=registry,
                                   checkpoint_path=graph.save_checkpoint(tmp_path / "one.json")),
    ):
        _same_state(loaded, graph)
        assert loaded.get_node("tally").block is loaded.get_node("again").block
        assert torch.equal(loaded.run(X)["out"], graph.run(X)["out"])
    with pytest.raises(ValueError, match="exactly one of checkpoint_path=, checkpoint_dir=, checkpoint="):
        Graph.load_from_checkpoint(config=config, checkpoint_dir=root, checkpoint_path=root / "lin.json")
    with pytest.raises(ConfigError, match=r"missing\.json' does not exist"):
        _graph(registry).load_checkpoint(tmp_path / "missing.json")


@pytest.mark.parametrize("backend", ["json", "safetensors", "torch"])
@pytest.mark.parametrize("format", ["single", "dir"])
def test_check22_backends_round_trip_tensors(
    registry: BlockRegistry, tmp_path: Path, backend: str, format: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.register(Buffers.block_type, Buffers)
    graph = _trained(registry)
    graph.add_node("buf", "test/buffers", registry=registry)
    graph.get_node("buf").block.state = {
        "half": torch.tensor([[0.5, -1.0, 2.0], [3.0, 4.0, -0.25]], dtype=torch.float16),
        "ids": torch.tensor([1, 2, 3, 2**40]), "scale": torch.tensor(2.5), "empty": torch.zeros(0, 2),
        "flag": True, "names": ["a", "b"],
    }
    loads: list[dict[str, Any]] = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: loads.append(kw) or real_load(*a, **kw))
    ext = {"json": ".json", "safetensors": ".safetensors", "torch": ".pt"}[backend]
    path = tmp_path / (f"ckpt{ext}" if format == "single" else "ckpt")
    graph.save_checkpoint(path, format=format, backend=backend)
    fresh = _graph(registry)
    fresh.add_node("buf", "test/buffers", registry=registry)
    if format == "single":
        fresh.load_checkpoint(path)  # the backend from the extension
    else:
        fresh.load_checkpoint(checkpoint_dir=path, backend=backend)
    _same_state(fresh, graph)
    assert all(kw.get("weights_only") is True for kw in loads) and bool(loads) == (backend == "torch")


def test_check22_unknown_backend_or_format_raises(registry: BlockRegistry, tmp_path: Path) -> None:
    graph = _graph(registry)
    for call in (
        lambda: graph.save_checkpoint(tmp_path / "x", backend="pickle"),
        lambda: graph.save_checkpoint(tmp_path / "x", format="dir", backend="onnx"),
        lambda: graph.save(tmp_path / "x", format="checkpoint", backend="pickle"),
        lambda: graph.load_checkpoint(tmp_path / "x.json", backend="pickle"),
        lambda: graph.load_checkpoint(tmp_path / "x.bin"),
    ):
        with pytest.raises(NotImplementedError, match=r"supported: \['json', 'safetensors', 'torch'\]"):
            call()
    with pytest.raises(NotImplementedError, match=r"format 'archive' is not supported"):
        graph.save_checkpoint(tmp_path / "x", format="archive")


class _Trap:
    """Unpickling this would create `marker`: a weights_only load must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_check22_torch_backend_never_unpickles_objects(registry: BlockRegistry, tmp_path: Path) -> None:
    import pickle

    marker = tmp_path / "pwned"
    torch.save({"state": {"tally.count": _Trap(marker), "tally.label": "x"}}, tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError):
        _graph(registry).load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
    from worldgen.blocks.base import StateDictError

    graph = _graph(registry)
    graph.get_node("tally").block.label = object()  # not storable: refused at save time, named
    with pytest.raises(StateDictError, match=r"tally\.label: object value is neither a tensor nor plain JSON"):
        graph.save_checkpoint(tmp_path / "bad.pt", backend="torch")


def test_set_trainable_survives_a_round_trip(registry: BlockRegistry, tmp_path: Path) -> None:
    """levels.md §7: the choice of what trains is serializable. A node left out of training
    keeps its shared block trainable through its other user; a block no node trains loads frozen."""
    shared, alone = Linear(config={"size": 2}), Linear(config={"size": 2})
    graph = Graph("choice")
    graph.add_node("first", shared)
    graph.add_node("second", shared)
    graph.add_node("alone", alone)
    graph.add_edge("first", "y", "second", "x")
    graph.add_edge("second", "y", "alone", "x")
    graph.set_trainable("second", False)
    graph.set_trainable("alone", False)
    graph.save(tmp_path)
    for loaded in (Graph.load(tmp_path, registry=registry), Graph.from_config(graph.to_config(), registry=registry)):
        assert loaded.trainable_nodes == ["first"]
        assert not loaded.get_node("first").block.frozen and loaded.get_node("alone").block.frozen
        assert {id(p) for p in loaded.trainable_parameters()} == {
            id(p) for p in loaded.get_node("first").block.module.parameters()}
