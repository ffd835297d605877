"""Pipeline and stage-graph configs, saved directories and checkpoints (levels.md §4, §8 check 38;
world.md §3 check 22)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tests.conftest import chain_graph
from worldgen.blocks import Block, BlockRegistry, Port, input_port, output_port
from worldgen.blocks.torch_block import TorchBlock
from worldgen.engine import Graph
from worldgen.engine.pipeline import Pipeline
from worldgen.engine.serialization import SCHEMA_VERSION, ConfigError
from worldgen.stage_graph import StageGraph

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------ test blocks
class Scale(TorchBlock):
    """y = w * x with a learnable scalar `w` (initialised to `init`)."""

    block_type = "lvl/scale"

    def build_module(self) -> torch.nn.Module:
        module = torch.nn.Linear(1, 1, bias=False)
        torch.nn.init.constant_(module.weight, self.config.get("init", 1.0))
        return module

    def declare_ports(self) -> list[Port]:
        return [input_port("x"), output_port("y")]

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return {"y": self.module(inputs["x"].reshape(-1, 1)).reshape(inputs["x"].shape)}


class Counter(Block):
    """y = x + count; non-tensor state."""

    block_type = "lvl/counter"

    def __init__(self, block_id: str | None = None, *, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(block_id, config=config)
        self.count = 0

    def declare_ports(self) -> list[Port]:
        return [input_port("x"), output_port("y")]

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return {"y": inputs["x"] + self.count}

    def local_state_dict(self) -> dict[str, Any]:
        return {"count": self.count}

    def load_local_state_dict(self, state: dict[str, Any]) -> None:
        self.count = state["count"]


@pytest.fixture
def registry() -> BlockRegistry:
    reg = BlockRegistry()
    for cls in (Scale, Counter):
        reg.register(cls.block_type, cls)
    return reg


def _trained_blocks(registry: BlockRegistry) -> tuple[Scale, Scale, Counter]:
    shared = registry.build({"block_type": "lvl/scale", "block_id": "backbone", "config": {"init": 1.0}})
    other = registry.build({"block_type": "lvl/scale", "block_id": "head", "config": {"init": 1.0}})
    counter = registry.build({"block_type": "lvl/counter", "block_id": "counter"})
    with torch.no_grad():  # state that differs from a fresh build
        shared.module.weight.fill_(2.0)
        other.module.weight.fill_(-3.0)
    counter.count = 5
    return shared, other, counter


def _pipeline(registry: BlockRegistry) -> tuple[Pipeline, Scale]:
    """g1(backbone → counter) → g2(backbone → head); backbone shared by both graphs."""
    shared, other, counter = _trained_blocks(registry)
    pipeline = Pipeline("pipe")
    pipeline.add_graph(chain_graph("g1", shared, counter))
    pipeline.add_graph(chain_graph("g2", shared, other))
    pipeline.add_edge("g1", "y", "g2", "x")
    pipeline.expose_input("g1", "x", "x")
    pipeline.expose_output("g2", "y", "out")
    pipeline.expose_output("g1", "y")
    pipeline.set_trainable("g1", False)
    return pipeline, shared


X = {"x": torch.tensor([1.0, -2.0])}


def _same_outputs(a: Mapping[str, Any], b: Mapping[str, Any]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ------------------------------------------------------------------ pipelines
def test_pipeline_config_round_trip_keeps_structure(registry: BlockRegistry) -> None:
    pipeline, _ = _pipeline(registry)
    config = pipeline.to_config()
    json.dumps(config)
    assert config["schema_version"] == SCHEMA_VERSION and config["pipeline_id"] == "pipe"
    assert list(config["graphs"]) == ["g1", "g2"]
    assert config["graphs"]["g1"]["trainable"] is False and config["graphs"]["g2"]["trainable"] is True
    assert config["graphs"]["g2"]["graph_config"]["nodes"]["a"]["block_id"] == "backbone"
    assert config["edges"] == [{"source_node": "g1", "source_port": "y", "target_node": "g2", "target_port": "x"}]
    assert config["exposed_inputs"] == [{"pipeline_node_id": "g1", "port_name": "x", "name": "x"}]
    assert config["exposed_outputs"] == [
        {"pipeline_node_id": "g2", "port_name": "y", "name": "out"}, {"pipeline_node_id": "g1", "port_name": "y"},
    ]

    loaded = Pipeline.from_config(config, registry=registry)
    assert loaded.to_config() == config
    assert loaded.get_edges() == pipeline.get_edges()
    assert not loaded.is_trainable("g1") and loaded.is_trainable("g2")
    # one block_id across graphs → one object again
    assert loaded.get_graph("g1").get_node("a").block is loaded.get_graph("g2").get_node("a").block


def test_pipeline_config_file_and_bare_graph_entries(registry: BlockRegistry, tmp_path: Path) -> None:
    pipeline, _ = _pipeline(registry)
    path = pipeline.save_config(tmp_path / "pipe.yaml")
    assert yaml.safe_load(path.read_text(encoding="utf-8")) == pipeline.to_config()
    assert Pipeline.from_config(path, registry=registry).to_config() == pipeline.to_config()

    # a graph entry may be a bare graph config, or {ref: file} relative to the config file
    graph = chain_graph("g", registry.build({"block_type": "lvl/counter"}), registry.build({"block_type": "lvl/counter"}))
    graph.save_config(tmp_path / "g.json")
    raw = {"pipeline_id": "p", "graphs": {"bare": graph.to_config(), "byref": {"ref": "g.json"}},
           "edges": [{"source_node": "bare", "source_port": "y", "target_node": "byref", "target_port": "x"}],
           "exposed_inputs": [{"pipeline_node_id": "bare", "port_name": "x", "name": "x"}],
           "exposed_outputs": [{"pipeline_node_id": "byref", "port_name": "y", "name": "y"}]}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    loaded = Pipeline.from_config(tmp_path / "p.yaml", registry=registry)
    assert loaded.graph_ids == ["bare", "byref"]
    assert torch.equal(loaded.run({"x": torch.tensor([1.0])})["y"], torch.tensor([1.0]))


def test_pipeline_save_load_preserves_outputs_weights_and_sharing(registry: BlockRegistry, tmp_path: Path) -> None:
    """Check 38: save → load reproduces the outputs; shared weights are written once."""
    pipeline, shared = _pipeline(registry)
    expected = pipeline.run(X)
    config_path = pipeline.save(tmp_path / "saved")
    root = tmp_path / "saved"
    assert config_path == root / "config.yaml"
    meta = json.loads((root / "pipeline_meta.json").read_text())
    assert meta == {"schema_version": SCHEMA_VERSION, "pipeline_id": "pipe", "node_ids": ["g1", "g2"]}
    assert (root / "checkpoints" / "g1" / "config.yaml").is_file()
    assert (root / "checkpoints" / "g2" / "config.yaml").is_file()
    weight_files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix in (".safetensors", ".json")
                          and p.name != "pipeline_meta.json")
    # backbone (in both graphs) once in shared/; the others once under their graph
    assert weight_files == ["checkpoints/g1/weights/b.json", "checkpoints/g2/weights/b.safetensors",
                            "shared/backbone.safetensors"]

    loaded = Pipeline.load(root, registry=registry)
    _same_outputs(loaded.run(X), expected)
    assert loaded.to_config() == pipeline.to_config()
    a1, a2 = loaded.get_graph("g1").get_node("a").block, loaded.get_graph("g2").get_node("a").block
    assert a1 is a2 and torch.equal(a1.module.weight, shared.module.weight)
    assert loaded.get_graph("g1").get_node("b").block.count == 5
    assert len(list(loaded.trainable_parameters())) == 2  # g2 only: backbone + head, each once

    # each graph folder is a saved graph on its own
    alone = Graph.load(root / "checkpoints" / "g2", registry=registry)
    assert torch.equal(alone.run(X)["y"], pipeline.get_graph("g2").run(X)["y"])


def test_check38_pipeline_save_checkpoint_dir(
    registry: BlockRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8 "Pipeline checkpoint": ``<pid>/{config,checkpoint}.json`` + ``pipeline_meta.json``;
    the block shared by g1 and g2 is written once and loaded once, still shared."""
    pipeline, shared = _pipeline(registry)
    expected = pipeline.run(X)
    root = pipeline.save_checkpoint(tmp_path / "ckpt")
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert files == ["config.json", "g1/checkpoint.json", "g1/config.json", "g2/checkpoint.json", "g2/config.json",
                     "pipeline_meta.json"]
    meta = json.loads((root / "pipeline_meta.json").read_text())
    assert meta["pipeline_id"] == "pipe" and meta["node_ids"] == ["g1", "g2"] and meta["backend"] == "json"
    assert meta["shared"] == {"g2": {"a": ["g1", "a"]}}
    assert set(json.loads((root / "g2" / "checkpoint.json").read_text())["state"]) == {"b.weight"}  # head only

    from worldgen.blocks.base import StateDictError

    loads: list[str] = []
    real = Scale.load_local_state_dict
    for loaded in (Pipeline.load_from_checkpoint(checkpoint_dir=root, registry=registry),
                   Pipeline.load(root, registry=registry)):
        _same_outputs(loaded.run(X), expected)
        a1, a2 = loaded.get_graph("g1").get_node("a").block, loaded.get_graph("g2").get_node("a").block
        assert a1 is a2 and torch.equal(a1.module.weight, shared.module.weight)
        assert loaded.get_graph("g1").get_node("b").block.count == 5 and not loaded.is_trainable("g1")
    # loading into existing graphs: the shared block once
    fresh = Pipeline.from_config(pipeline.to_config(), registry=registry)
    with monkeypatch.context() as patch:
        patch.setattr(Scale, "load_local_state_dict", lambda self, state: loads.append(self.block_id) or real(self, state))
        fresh.load_checkpoint(root)
    assert sorted(loads) == ["backbone", "head"]
    _same_outputs(fresh.run(X), expected)
    # the in-memory form: {pid: {node_id: state}}
    assert list(pipeline.state_dict()) == ["g1", "g2"] and list(pipeline.state_dict()["g1"]) == ["a", "b"]
    again = Pipeline.from_config(pipeline.to_config(), registry=registry)
    again.load_state_dict(pipeline.state_dict())
    _same_outputs(again.run(X), expected)
    with pytest.raises(StateDictError, match=r"state for unknown graphs \['g3'\]"):
        again.load_state_dict({**pipeline.state_dict(), "g3": {}})
    with pytest.raises(NotImplementedError, match=r"format 'archive' is not supported \(supported: \['dir'\]\)"):
        pipeline.save_checkpoint(tmp_path / "zip", format="archive")
    with pytest.raises(NotImplementedError, match=r"backend 'pickle'"):
        pipeline.save_checkpoint(tmp_path / "p", backend="pickle")


def test_pipeline_config_errors(registry: BlockRegistry, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"schema_version '9' is not supported"):
        Pipeline.from_config({"schema_version": "9", "pipeline_id": "p"})
    with pytest.raises(ConfigError, match=r"graphs\.g: .*exactly one of 'graph_config' or 'ref'"):
        Pipeline.from_config({"pipeline_id": "p", "graphs": {"g": {"graph_config": {}, "ref": "x"}}})
    with pytest.raises(ConfigError, match=r"graphs\.g\.graph_config.*nodes\.a\.config"):
        Pipeline.from_config({"pipeline_id": "p", "graphs": {"g": {"graph_id": "g", "nodes": {"a": {
            "block_type": "lvl/counter", "config": [1]}}}}}, registry=registry)
    with pytest.raises(ConfigError, match=r"exposed_input: Extra inputs"):
        Pipeline.from_config({"pipeline_id": "p", "exposed_input": []})
    pipeline, _ = _pipeline(registry)
    bad = pipeline.to_config()
    bad["edges"][0]["source_port"] = "nope"
    with pytest.raises(ValueError, match=r"no exposed output 'nope'") as info:
        Pipeline.from_config(bad, registry=registry)
    assert any("edges.0" in note for note in info.value.__notes__)
    # two different blocks with one block_id in two graphs would merge on load: refuse
    p = Pipeline("p")
    p.add_graph(chain_graph("g1", Counter("same"), Counter("c1")))
    p.add_graph(chain_graph("g2", Counter("same"), Counter("c2")))
    with pytest.raises(ConfigError, match=r"'g1\.a' and 'g2\.a' hold different blocks .*'same'"):
        p.to_config()
    with pytest.raises(ConfigError, match="same block_id"):
        p.save(tmp_path / "x")


# ------------------------------------------------------------------ stage graphs
def _stage(registry: BlockRegistry) -> tuple[StageGraph, Pipeline]:
    pipeline, _ = _pipeline(registry)
    second = Pipeline("post")
    backbone = pipeline.get_graph("g1").get_node("a").block  # shared with the first pipeline
    second.add_graph(chain_graph("g3", backbone, Counter("post_counter")))
    second.expose_input("g3", "x", "x")
    second.expose_output("g3", "y", "y")
    stage = StageGraph("st", description="two pipelines")
    stage.role = "creator"  # type: ignore[attr-defined]
    stage.add_pipeline(pipeline, "first")
    stage.add_pipeline(second, "second")
    stage.add_edge("first", "out", "second", "x")
    stage.set_state_contract([1], [5], mapping_input=[("block1", "first", "x")],
                             mapping_output=[("block5", "second", "y")])
    return stage, pipeline


def _run_nodes(stage: StageGraph) -> torch.Tensor:
    first = stage.get_node("first").run(X)
    return stage.get_node("second").run({"x": first["out"]})["y"]


def test_stage_config_round_trip(registry: BlockRegistry) -> None:
    stage, _ = _stage(registry)
    config = stage.to_config()
    json.dumps(config)
    assert config["stage_id"] == "st" and config["role"] == "creator"
    assert config["metadata"] == {"description": "two pipelines"}
    assert config["edges"] == [{"source_node": "first", "source_port": "out", "target_node": "second", "target_port": "x"}]
    assert config["state_contract"] == {"input_blocks": [1], "output_blocks": [5],
                                        "mapping_input": [["block1", "first", "x"]],
                                        "mapping_output": [["block5", "second", "y"]]}
    loaded = StageGraph.from_config(config, registry=registry)
    assert loaded.to_config() == config
    assert loaded.role == "creator" and loaded.edges == stage.edges  # type: ignore[attr-defined]
    assert loaded.input_blocks == (1,) and loaded.output_blocks == (5,)
    loaded.validate(strict=True)
    # the backbone is one object across both pipelines
    assert (loaded.get_node("first").get_graph("g1").get_node("a").block
            is loaded.get_node("second").get_graph("g3").get_node("a").block)
    assert loaded.get_node("first").get_graph("g1").get_node("b").block.count == 0  # a config holds no state


def test_stage_default_contract_round_trips(registry: BlockRegistry) -> None:
    stage = StageGraph("plain")
    stage.add_pipeline(chain_graph("g", Counter("c1"), Counter("c2")))
    stage.set_state_contract([1], [5])
    config = stage.to_config()
    assert "role" not in config and config["state_contract"] == {"input_blocks": [1], "output_blocks": [5]}
    loaded = StageGraph.from_config(config, registry=registry)
    assert loaded.to_config() == config
    assert loaded.resolved_mapping_input() == stage.resolved_mapping_input()


def test_stage_save_load(registry: BlockRegistry, tmp_path: Path) -> None:
    """Check 22: save → load keeps edges, contract, role and weights; one directory per node
    plus stage_meta.json."""
    stage, _ = _stage(registry)
    expected = _run_nodes(stage)
    root = tmp_path / "stage"
    assert stage.save(root) == root / "config.yaml"
    meta = json.loads((root / "stage_meta.json").read_text())
    assert meta["stage_id"] == "st" and meta["role"] == "creator" and meta["node_ids"] == ["first", "second"]
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["first", "second"]
    assert (root / "checkpoints" / "first" / "pipeline_meta.json").is_file()
    assert [p.name for p in (root / "shared").iterdir()] == ["backbone.safetensors"]  # once, stage-wide
    assert not list((root / "checkpoints").rglob("*backbone*"))
    assert yaml.safe_load((root / "config.yaml").read_text())["pipelines"] == {
        "first": {"ref": "checkpoints/first"}, "second": {"ref": "checkpoints/second"}}

    loaded = StageGraph.load(root, registry=registry)
    assert loaded.to_config() == stage.to_config()
    assert torch.equal(_run_nodes(loaded), expected)
    assert loaded.get_node("first").get_graph("g1").get_node("b").block.count == 5


def test_stage_with_runnable_or_converter_does_not_serialize(registry: BlockRegistry, tmp_path: Path) -> None:
    stage = StageGraph("mixed")
    stage.add_pipeline(chain_graph("g", Counter("c1"), Counter("c2")))
    stage.add_runnable(lambda d: {"z": d["y"]}, "post", inputs=["y"], outputs=["z"])
    stage.add_edge("g", "y", "post", "y")
    stage.set_state_contract([1], [5])
    with pytest.raises(ConfigError, match=r"node 'post' is a runnable"):
        stage.to_config()
    with pytest.raises(ConfigError, match=r"node 'post' is a runnable"):
        stage.save(tmp_path / "s")

    conv = StageGraph("conv")
    conv.add_pipeline(chain_graph("g", Counter("c1"), Counter("c2")))
    conv.set_state_contract([1], [5], mapping_input=[("block1", "g", "x", float)])
    with pytest.raises(ConfigError, match=r"mapping_input\[0\].*converter"):
        conv.to_config()


def test_stage_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"schema_version '2\.0' is not supported"):
        StageGraph.from_config({"schema_version": "2.0", "stage_id": "s"})
    with pytest.raises(ConfigError, match=r"state_contract\.mapping_input\.0"):
        StageGraph.from_config({"stage_id": "s", "state_contract": {"mapping_input": [["block1", "n"]]}})
    with pytest.raises(ConfigError, match=r"pipelines\.p: .*pipeline_id"):
        StageGraph.from_config({"stage_id": "s", "pipelines": {"p": {"pipeline_config": {"graphs": {}}}}})
