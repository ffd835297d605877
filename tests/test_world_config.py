"""World serialization (world.md §4, checks 24 and 26): world.yaml with stages built from
pipelines, a custom cycle, save → load, load_last_state, snapshot rotation."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from worldgen import World
from worldgen.blocks import Block, Port, PortType, input_port, output_port
from worldgen.blocks.registry import global_registry, register_block
from worldgen.engine import Graph, Pipeline
from worldgen.stage_graph import StageGraph
from worldgen.world_config import WorldConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SLOTS = {"slots": [{"name": "scene", "kind": "image", "prompt": "a hill", "params": {"seed": 3}}]}

if "test/shout" not in global_registry().list():

    @register_block("test/shout")
    class Shout(Block):
        """text → TEXT upper-cased, with a suffix from its config (so config survives a save)."""

        def declare_ports(self) -> list[Port]:
            return [input_port("text", PortType.TEXT), output_port("text", PortType.TEXT)]

        def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
            return {"text": inputs["text"].upper() + self.config.get("suffix", "")}


def author_graph() -> StageGraph:
    """An Author of pipelines: block 4's text, shouted, becomes block 5."""
    graph = Graph("shout")
    graph.add_node("s", global_registry().build({"type": "test/shout", "suffix": "!"}))
    graph.expose_input("s", "text", "text")
    graph.expose_output("s", "text", "text")
    pipeline = Pipeline("shout")
    pipeline.add_graph(graph)
    pipeline.expose_input("shout", "text", "text")
    pipeline.expose_output("shout", "text", "text")
    sg = StageGraph("author_of_pipelines")
    sg.add_pipeline(pipeline, "shout")
    sg.set_state_contract([4], [5])
    return sg


def scripted(log, **extra: Any) -> dict[str, Any]:
    stages = {**log.stages(), "architect": lambda s: {"block2": json.dumps(SLOTS)}}
    stages.update(extra)
    return stages


# ------------------------------------------------------------ a world from YAML
def test_world_from_yaml_runs_a_pass_with_a_pipeline_built_creator(tmp_path, log, tiny_sd):
    path = tmp_path / "w" / "world.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump({
        "world_id": "from-yaml",
        "stages": {"creator": {"template": "creator_stage",
                               "params": {"checkpoint": str(tiny_sd), "num_inference_steps": 2,
                                          "height": 32, "width": 32}}},
    }))
    others = {k: v for k, v in scripted(log).items() if k != "creator"}
    with World.from_config(path, stages=others) as world:
        assert world.root == path.parent and world.world_id == "from-yaml"
        assert world.stages["creator"].stage_graph.node_ids == ["text_to_image"]
        state = world.invoke().state
        (ref,) = state.block3.items
        assert ref.slot == "scene" and ref.meta["generator"].startswith("stage_graph:text_to_image")
        assert world.artifacts.open_image(ref).size == (32, 32)


def test_stage_config_entries_build_stage_graphs_with_their_condition(tmp_path, log):
    saved = author_graph().save(tmp_path / "author")
    config = {"world_id": "w", "stages": {"author": {"ref": str(saved.parent), "execution_condition": [1, 4]}}}
    others = {k: v for k, v in scripted(log).items() if k != "author"}
    with World.from_config(config, root=tmp_path / "w", stages=others) as world:
        author = world.stages["author"]
        assert isinstance(author.impl, StageGraph) and author.reads == (4,) and author.writes == (5,)
        assert author.condition.requires == (1, 4)
        full = {"block1": "go", "block2": "draw", "block3": "made", "block4": "a grey sky"}
        result = world.invoke(full)
        assert result.ran()[:2] == ["author", "world_update"]
        assert json.loads(result.snapshots[0].read_text())["state"]["block5"]["text"] == "A GREY SKY!"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"stages": {"painter": {"template": "creator_stage"}}}, "unknown stage 'painter'"),
        ({"stages": {"creator": {"template": "x", "ref": "y"}}}, "exactly one of template, ref or stage_config"),
        ({"stages": {"author": {"ref": "a", "execution_condition": "sometimes"}}}, "unknown condition preset"),
        ({"stages": {"creator": {"template": "creator_stage", "endpoint_url": "http://x"}}}, "endpoint_url goes with"),
        ({"cycle": ["author", "philosopher"]}, "has 2 stages, the world has 6"),
        ({"schema_version": 9}, "schema_version 9 is not supported"),
        ({"storage": {"max_snapshots": 0}}, "storage.max_snapshots"),
    ],
)
def test_bad_world_configs_name_the_key(tmp_path, config, message):
    with pytest.raises(ValueError, match=message):
        World.from_config(config, root=tmp_path / "w")


def test_a_stage_template_of_the_wrong_role_is_refused(tmp_path, tiny_sd):
    config = {"stages": {"author": {"template": "creator_stage", "params": {"checkpoint": str(tiny_sd)}}}}
    with pytest.raises(ValueError, match="makes a 'creator' stage") as info:
        World.from_config(config, root=tmp_path / "w")
    assert "stages.author" in "".join(info.value.__notes__)


# ------------------------------------------------------------ check 24: the cycle
@pytest.mark.parametrize(
    ("cycle", "message"),
    [
        (["philosopher", "author", "world_update", "development", "architect", "painter"], "unknown stage 'painter'"),
        (["author", "author", "world_update", "development", "architect", "creator"], "'author' appears more than once"),
        (["author", "world_update", "development", "architect", "creator"], "missing philosopher"),
    ],
)
def test_check24_cycle_rejects_unknown_ids_duplicates_and_wrong_length(tmp_path, cycle, message):
    with pytest.raises(ValueError, match=message):
        WorldConfig(cycle=cycle)


def test_a_reordered_cycle_runs_in_its_order(make_world, log, tmp_path):
    order = ["development", "architect", "creator", "philosopher", "author", "world_update"]
    world = World.from_template("canon", root=tmp_path / "o", stages=log.stages(), cycle=order)
    with world:
        result = world.invoke()
        assert result.ran() == order  # one pass in the new order fills and saves a state
        assert len(result.snapshots) == 1
        assert WorldConfig.load(world.root / "world.yaml").cycle == order
    with World.open(tmp_path / "o", stages=log.stages()) as again:
        assert again.cycle == tuple(order)


# ------------------------------------------------------------ check 26: save → load
def test_check26_save_then_load_restores_cycle_storage_initial_world_and_stages(tmp_path, log):
    order = ["philosopher", "author", "world_update", "development", "creator", "architect"]
    others = {k: v for k, v in scripted(log).items() if k != "author"}
    built = World.from_config(
        {"world_id": "saved", "cycle": order, "storage": {"state_dir": "snaps", "max_snapshots": 3},
         "initial_world": {"story": "A town.", "glossary": {"town": "a place"}, "style": "ink"},
         "stages": {"author": {"ref": str(author_graph().save(tmp_path / "a").parent)}}},
        root=tmp_path / "w1", stages=others,
    )
    with built:
        built.invoke({"block1": "go", "block2": "draw", "block3": "made"})
        out = built.save(tmp_path / "saved")
        before = built.state
    assert (out / "config.yaml").exists() and (out / "checkpoints" / "author" / "stage_meta.json").exists()
    meta = json.loads((out / "world_meta.json").read_text())
    assert meta["world_id"] == "saved" and meta["cycle"] == order and meta["schema_version"] == 1
    assert meta["stages"] == ["author"]  # the scripted stages are code: listed, not saved
    assert meta["code_stages"] == ["philosopher", "world_update", "development", "creator", "architect"]
    with pytest.raises(ValueError, match="stages philosopher, world_update, development, creator, architect were code"):
        World.load(out, root=tmp_path / "w3")

    with World.load(out, root=tmp_path / "w2", stages=others) as loaded:
        assert loaded.cycle == tuple(order) and loaded.world_id == "saved"
        assert loaded.config.storage.state_dir == "snaps" and loaded.config.storage.max_snapshots == 3
        assert loaded.content.glossary == {"town": "a place"} and loaded.content.style == "ink"
        assert isinstance(loaded.stages["author"].impl, StageGraph)
        assert loaded.state == before  # it starts where the saved world stood
        result = loaded.invoke({"block1": "x", "block2": "y", "block3": "z", "block4": "rain"})
        assert json.loads(result.snapshots[0].read_text())["state"]["block5"]["text"] == "RAIN!"


def test_canon_stages_are_saved_as_the_llm_name(tmp_path):
    world = World.from_template("canon", root=tmp_path / "w", llm="local")  # the model loads lazily
    with world:
        out = world.save(tmp_path / "out", with_state=False)
    config = WorldConfig.load(out / "config.yaml")
    assert config.stages == {} and config.llm == "local"
    assert "last_state" not in json.loads((out / "world_meta.json").read_text())


def test_load_checks_the_saved_version(tmp_path):
    (tmp_path / "world_meta.json").write_text(json.dumps({"schema_version": 7}))
    with pytest.raises(ValueError, match="schema_version 7 is not supported"):
        World.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="world_meta.json"):
        World.load(tmp_path / "nowhere")


# ------------------------------------------------------------ storage
def test_load_last_state_resumes_from_the_newest_snapshot(tmp_path, log):
    root = tmp_path / "w"
    with World.from_template("canon", root=root, stages=log.stages()) as world:
        world.invoke(num_steps=3)  # two snapshots
        newest = json.loads(world.snapshots()[-1].read_text())["state"]
    config = WorldConfig.load(root / "world.yaml")
    config.storage.load_last_state = True
    # a new world folder with the old snapshots and no checkpoint: it starts from the newest one
    fresh = tmp_path / "fresh"
    (fresh / "states").mkdir(parents=True)
    for snap in (root / "states").iterdir():
        shutil.copy2(snap, fresh / "states" / snap.name)  # keeps the times: "newest" is by write time
    with World.from_config(config, root=fresh, stages=log.stages()) as world:
        assert world.state.to_channels() == {k: newest[k] for k in newest}
        result = world.invoke()
        # a full state: the pass starts with World update applying it, not with a new intent
        assert result.ran()[0] == "world_update"


def test_max_snapshots_keeps_the_newest(make_world, tmp_path, log):
    world = World.from_config({"storage": {"max_snapshots": 2}}, root=tmp_path / "w", stages=log.stages())
    with world:
        world.invoke(num_steps=5)  # four snapshots written
        assert [p.name for p in world.snapshots()] == ["000003.json", "000004.json"]


def test_builder_assembles_and_compiles_a_world(tmp_path, log):
    from worldgen.builder import WorldBuilder

    builder = WorldBuilder("built")
    for name, impl in log.stages().items():
        builder.add_stage(impl, name)
    with pytest.raises(ValueError, match="already has a 'author' stage"):
        builder.add_stage(log.stages()["author"], "author")
    with pytest.raises(ValueError, match="a stage's id is its role"):
        builder.add_stage(lambda s: {}, "painter")
    builder.set_storage(state_dir="snaps").set_initial_world({"story": "Once."})
    with builder.set_canonical_cycle().compile(root=tmp_path / "b") as world:
        assert world.invoke(num_steps=2).snapshots[0].parent == tmp_path / "b" / "snaps"
        assert world.content.story == "Once."


def test_check24_set_canonical_cycle_needs_every_role_and_set_cycle_every_stage(log):
    from worldgen.builder import WorldBuilder

    builder = WorldBuilder()
    builder.AddStage(log.stages()["author"], "author")
    with pytest.raises(ValueError, match="no stage for philosopher, world_update, development"):
        builder.set_canonical_cycle()
    with pytest.raises(ValueError, match="unknown stage 'philosopher'"):
        builder.SetCycle(["philosopher"])
    assert builder.set_cycle(["author"]).cycle == ["author"]


def test_builder_takes_a_saved_stage_graph_folder(tmp_path):
    from worldgen.builder import WorldBuilder

    folder = author_graph().save(tmp_path / "a").parent
    builder = WorldBuilder()
    assert builder.add_stage({"ref": str(folder)}, "author") == "author"
    assert isinstance(builder.stages["author"].impl, StageGraph)
    assert Path(builder.stages["author"].source["ref"]) == folder


def test_a_stage_entry_with_endpoint_url_runs_remotely_and_keeps_no_key(tmp_path, monkeypatch):
    monkeypatch.setenv("GPU_BOX_KEY", "lg-secret-7")
    folder = author_graph().save(tmp_path / "a").parent
    config = {"stages": {"author": {"ref": str(folder), "endpoint_url": "http://gpu-box:2024",
                                    "assistant_id": "author_stage", "api_key_env": "GPU_BOX_KEY"}}}
    with World.from_config(config, root=tmp_path / "w") as world:
        remote = world.stages["author"].impl.remote
        assert (remote.endpoint_url, remote.assistant_id, remote.api_key_env) == (
            "http://gpu-box:2024", "author_stage", "GPU_BOX_KEY")
        saved = world.save(tmp_path / "saved", with_state=False)
    for path in [*saved.rglob("*"), *(tmp_path / "w").rglob("*")]:
        if path.is_file():
            assert b"lg-secret-7" not in path.read_bytes(), path
