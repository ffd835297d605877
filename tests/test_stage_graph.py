"""StageGraph: a transition as a DAG of pipelines and runnables (world.md §3; §8 checks 18–21,
23), and the ``creator_stage`` template rendering block 2's image slots on a tiny SD checkpoint."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
from PIL import Image

from worldgen import World
from worldgen.blocks import Block, Port, PortType, input_port, output_port
from worldgen.engine import Graph, Pipeline
from worldgen.stage import Stage
from worldgen.stage_graph import (
    StageGraph,
    StageGraphValidationError,
    creator_stage,
    stage_from_template,
    stage_templates,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Upper(Block):
    """text → TEXT upper-cased."""

    def declare_ports(self) -> list[Port]:
        return [input_port("text", PortType.TEXT), output_port("text", PortType.TEXT)]

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return {"text": inputs["text"].upper()}


class Double(Block):
    def declare_ports(self) -> list[Port]:
        return [input_port("x", PortType.TENSOR), output_port("y", PortType.TENSOR)]

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return {"y": inputs["x"] * 2}


def upper_graph(graph_id: str = "upper") -> Graph:
    graph = Graph(graph_id)
    graph.add_node("up", Upper())
    graph.expose_input("up", "text", "text")
    graph.expose_output("up", "text", "text")
    return graph


def upper_pipeline(pipeline_id: str = "shout") -> Pipeline:
    pipeline = Pipeline(pipeline_id)
    pipeline.add_graph(upper_graph())
    pipeline.expose_input("upper", "text", "text")
    pipeline.expose_output("upper", "text", "prompt")
    return pipeline


def double_graph(graph_id: str = "double") -> Graph:
    graph = Graph(graph_id)
    graph.add_node("d", Double())
    graph.expose_input("d", "x", "x")
    graph.expose_output("d", "y", "y")
    return graph


STATE = {
    "block1": {"text": "a storm"},
    "block2": None,
    "block3": {"items": [{"kind": "text", "uri": "artifacts/x.txt"}]},
    "block4": {"items": [{"text": "grey"}]},
    "block5": {"text": "it rained"},
}


# ------------------------------------------------------------------ check 18
def test_check18_single_pipeline_maps_block1_in_and_block2_out():
    sg = StageGraph("architect")
    assert sg.add_pipeline(upper_pipeline()) == "shout"
    sg.set_state_contract([1], [2])
    assert sg.validate().is_valid
    events = []
    new = sg.run(STATE, callbacks=lambda nid, s_in, s_out: events.append((nid, s_in, s_out)))
    assert new["block2"] == {"slots": [{"name": "scene", "kind": "image", "prompt": "A STORM", "params": {}}]}
    for key in ("block1", "block3", "block4", "block5"):
        assert new[key] == STATE[key]
    assert events == [("shout", {"text": "a storm"}, None), ("shout", {"text": "a storm"}, {"prompt": "A STORM"})]
    # as a Stage impl it returns only the update
    assert sg(STATE) == {"block2": new["block2"]}
    stage = sg.as_stage("architect")
    assert stage.reads == (1,) and stage.writes == (2,)
    assert stage.invoke({"block1": {"text": "dusk"}}) == {"block2": {"slots": [
        {"name": "scene", "kind": "image", "prompt": "DUSK", "params": {}}]}}


def test_graph_is_wrapped_and_runnables_chain_with_explicit_mapping():
    sg = StageGraph()
    sg.add_pipeline(upper_graph())  # a Graph: wrapped, keeps its run keys
    sg.add_runnable(lambda d: d["text"] + "!", "exclaim", inputs=[("text", "text")], outputs=[("out", "text")])
    sg.add_edge("upper", "text", "exclaim", "text")
    sg.set_state_contract(
        [4, 5], [5],
        mapping_input=[("block5.text", "upper", "text")],
        mapping_output=[("block5", "exclaim", "out")],
    )
    result = sg.validate()
    assert result.is_valid, result.errors
    assert sg(STATE) == {"block5": {"text": "IT RAINED!"}}
    assert sg.get_input_spec("upper") == {"text": "text"}


def test_per_mapping_converter_and_block3_images(tmp_path):
    from worldgen.artifacts import ArtifactStore

    class W:
        artifacts = ArtifactStore(tmp_path)

    sg = StageGraph()
    sg.add_runnable(lambda d: Image.new("RGB", (8, 4), d["colour"]), "paint", inputs=["colour"], outputs=["image"])
    sg.set_state_contract([1], [3], mapping_input=[("block1", "paint", "colour", lambda b: b["text"].split()[-1])])
    update = sg({"block1": {"text": "paint it red"}, "world": W()})
    (item,) = update["block3"]["items"]
    assert item["kind"] == "image" and item["meta"]["width"] == 8
    assert W.artifacts.open_image(_ref(item)).getpixel((0, 0)) == (255, 0, 0)


def _ref(item):
    from worldgen.state import ArtifactRef

    return ArtifactRef.model_validate(item)


# ------------------------------------------------------------------ check 19
def test_check19_add_edge_rejects_unknown_node_port_and_type_mismatch():
    sg = StageGraph()
    sg.add_pipeline(upper_graph())
    sg.add_pipeline(double_graph())
    with pytest.raises(ValueError, match="no node 'nope'"):
        sg.add_edge("nope", "text", "double", "x")
    with pytest.raises(ValueError, match="no node 'nope'"):
        sg.add_edge("upper", "text", "nope", "x")
    with pytest.raises(ValueError, match="no output 'missing'"):
        sg.add_edge("upper", "missing", "double", "x")
    with pytest.raises(ValueError, match="no input 'missing'"):
        sg.add_edge("upper", "text", "double", "missing")
    with pytest.raises(TypeError, match="type mismatch: upper.text is text, double.x is tensor"):
        sg.add_edge("upper", "text", "double", "x")
    with pytest.raises(ValueError, match="already has a node 'upper'"):
        sg.add_pipeline(upper_graph())
    with pytest.raises(ValueError, match="already has a node 'double'"):
        sg.add_runnable(lambda d: d, "double", inputs=["a"], outputs=["b"])
    sg.add_runnable(lambda d: d["a"], "any", inputs=["a"], outputs=["b"])
    sg.add_edge("upper", "text", "any", "a")  # `any` matches everything
    assert [e.target_node for e in sg.edges] == ["any"]


# ------------------------------------------------------------------ check 20
def chain(*names: str) -> StageGraph:
    sg = StageGraph("loop")
    for name in names:
        sg.add_runnable(lambda d: {"out": d.get("in")}, name, inputs=["in"], outputs=["out"], optional_inputs=["in"])
    return sg


def test_check20_cycle_is_an_error_when_strict_and_a_warning_otherwise():
    sg = chain("a", "b")
    sg.add_edge("a", "out", "b", "in")
    sg.add_edge("b", "out", "a", "in")
    sg.set_state_contract([], [])
    with pytest.raises(StageGraphValidationError, match="form a cycle"):
        sg.validate(strict=True)
    result = sg.validate(strict=False)
    assert result.is_valid
    assert any("cycle" in w.message for w in result.warnings)
    with pytest.raises(StageGraphValidationError, match="cycle"):
        sg({"block1": "x"})


def test_check20_unreachable_node_is_a_warning():
    sg = chain("a", "b", "island")
    sg.add_edge("a", "out", "b", "in")
    sg.set_state_contract([1], [5], mapping_input=[("block1", "a", "in")], mapping_output=[("block5", "b", "out")])
    result = sg.validate(strict=True)  # no raise: warnings only
    assert result.is_valid
    assert [w.node_id for w in result.warnings if "unreachable" in w.message] == ["island"]
    assert sg({"block1": {"text": "hi"}}) == {"block5": {"text": "hi"}}


# ------------------------------------------------------------------ check 21
@pytest.mark.parametrize("contract", [([7], [2]), ([1], [7])])
def test_check21_block7_in_the_contract_fails_validate(contract):
    sg = StageGraph()
    sg.add_pipeline(upper_pipeline())
    sg.set_state_contract(*contract)
    with pytest.raises(StageGraphValidationError, match="block7"):
        sg.validate()
    assert any("block7" in e.message for e in sg.validate(strict=False).errors)


def test_mapping_errors_unknown_port_and_missing_mapping():
    sg = StageGraph()
    sg.add_pipeline(upper_pipeline())
    sg.set_state_contract([1], [2], mapping_input=[("block1", "shout", "nope")], mapping_output=[("block7", "shout", "prompt")])
    messages = [e.message for e in sg.validate(strict=False).errors]
    assert any("no input 'nope'" in m for m in messages)
    assert any("block7" in m for m in messages)
    assert any("'text' is required" in m for m in messages)
    sg.set_state_contract([1, 4], [2])  # one boundary input for two blocks
    assert any("outnumber" in e.message for e in sg.validate(strict=False).errors)


# ------------------------------------------------------------------ check 23 + world
def test_check23_creator_stage_is_a_creator_that_validates(tiny_sd):
    stage = creator_stage(tiny_sd, num_inference_steps=2, height=32, width=32)
    assert isinstance(stage, Stage) and stage.role == "creator"
    assert stage.reads == (2,) and stage.writes == (3,)
    assert stage.stage_graph.validate().is_valid
    assert "creator_stage" in stage_templates()
    assert stage_from_template("creator_stage", checkpoint=tiny_sd, num_inference_steps=1,
                               height=32, width=32).role == "creator"


def test_world_pass_renders_block3_through_the_text_to_image_graph(tmp_path, log, tiny_sd):
    slots = {"slots": [{"name": "scene", "kind": "image", "prompt": "a hill", "params": {"seed": 3}}]}
    stages = {**log.stages(), "architect": lambda s: {"block2": json.dumps(slots)},
              "creator": creator_stage(tiny_sd, num_inference_steps=2, height=32, width=32)}
    world = World.from_template("canon", root=tmp_path / "w", stages=stages)
    with world:
        state = world.invoke().state
        (ref,) = state.block3.items
        assert ref.kind == "image" and ref.mime == "image/png" and ref.slot == "scene"
        assert ref.meta["seed"] == 3 and ref.meta["prompt"] == "a hill"
        assert ref.meta["generator"].startswith("stage_graph:text_to_image")
        path = world.artifacts.path(ref)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert world.artifacts.open_image(ref).size == (32, 32)
        assert state.block1.text == "intent 1"  # the other blocks come from their stages


def test_creator_stage_renders_each_image_slot_with_its_seed(tmp_path, tiny_sd):
    from worldgen.artifacts import ArtifactStore

    class W:
        artifacts = ArtifactStore(tmp_path)

    stage = creator_stage(tiny_sd, seed=5, num_inference_steps=1, height=32, width=32)
    block2 = {"slots": [{"name": "a", "prompt": "a hill"},  # stage seed 5
                        {"name": "b", "prompt": "a hill", "params": {"seed": 5}},
                        {"name": "c", "prompt": "a hill", "params": {"seed": 6}}]}
    a, b, c = stage.invoke({"block2": block2, "world": W()})["block3"]["items"]
    assert [i["slot"] for i in (a, b, c)] == ["a", "b", "c"]
    assert [i["meta"]["seed"] for i in (a, b, c)] == [5, 5, 6]
    assert a["sha256"] == b["sha256"] != c["sha256"]  # the seed reaches the graph
    with pytest.raises(ValueError, match="kind 'text'"):
        stage.invoke({"block2": {"slots": [{"kind": "text", "prompt": "x"}]}, "world": W()})


def test_stage_from_template_and_validate(tiny_sd):
    from worldgen import Stage

    stage = Stage.from_template("creator_stage", checkpoint=tiny_sd, num_inference_steps=2, height=32, width=32)
    assert stage.role == "creator" and stage.validate().is_valid
    assert Stage("author", lambda s: {}).validate().is_valid
