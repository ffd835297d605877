"""StageGraph: a transition as a DAG of pipelines and runnables (world.md §3; §8 checks 18–21,
23), and the ``creator_stage`` template rendering block 2's image slots on a tiny SD checkpoint."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
from PIL import Image

from tests.conftest import chain_graph
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


# ------------------------------------------------------------------ concurrency
def test_independent_nodes_run_concurrently_with_deterministic_results():
    """Four independent nodes meet at a barrier: it only opens if they run at once."""
    import random
    import threading
    import time

    barrier = threading.Barrier(4, timeout=10)

    def node(i: int):
        def run(d: dict[str, Any]) -> str:
            barrier.wait()
            time.sleep(random.random() / 50)  # finish in any order
            return f"{d['x']}-{i}"
        return run

    sg = StageGraph("fan")
    for i in range(4):
        sg.add_runnable(node(i), f"n{i}", inputs=["x"], outputs=["y"])
    sg.add_runnable(lambda d: " ".join(d[f"a{i}"] for i in range(4)), "join",
                    inputs=[f"a{i}" for i in range(4)], outputs=["out"])
    for i in range(4):
        sg.add_edge(f"n{i}", "y", "join", f"a{i}")
    sg.set_state_contract([1], [5], mapping_input=[("block1", f"n{i}", "x") for i in range(4)],
                          mapping_output=[("block5", "join", "out")])
    assert sg.validate().is_valid
    for _ in range(3):
        events: list[tuple[str, bool]] = []
        update = sg.run({"block1": {"text": "t"}}, callbacks=lambda n, i, o, seen=events: seen.append((n, o is None)))
        assert update["block5"] == {"text": "t-0 t-1 t-2 t-3"}
        assert events[:4] == [(f"n{i}", True) for i in range(4)]  # all started before any finished
        assert sorted(events[4:8]) == [(f"n{i}", False) for i in range(4)]
        assert events[8:] == [("join", True), ("join", False)]
        barrier.reset()


def test_a_failing_concurrent_node_raises_and_the_others_finish():
    import threading

    finished = threading.Event()

    def slow(d: dict[str, Any]) -> str:
        finished.wait(0.2)
        finished.set()
        return "ok"

    def boom(d: dict[str, Any]) -> str:
        raise ValueError("node boom failed")

    sg = StageGraph("fail")
    sg.add_runnable(slow, "slow", inputs=["x"], outputs=["y"])
    sg.add_runnable(boom, "boom", inputs=["x"], outputs=["y"])
    sg.set_state_contract([1], [4, 5], mapping_input=[("block1", "slow", "x"), ("block1", "boom", "x")],
                          mapping_output=[("block4", "slow", "y"), ("block5", "boom", "y")])
    with pytest.raises(ValueError, match="node boom failed"):
        sg({"block1": "x"})
    assert finished.is_set()  # the pool was drained, not abandoned


def test_workers_keep_grad_mode_and_context():
    import contextvars

    import torch

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    seen = {}

    def probe(name: str):
        def run(d: dict[str, Any]) -> str:
            seen[name] = (torch.is_grad_enabled(), var.get())
            return "x"
        return run

    sg = StageGraph("ctx")
    sg.add_runnable(probe("a"), "a", inputs=["x"], outputs=["y"])
    sg.add_runnable(probe("b"), "b", inputs=["x"], outputs=["y"])
    sg.set_state_contract([1], [4, 5], mapping_input=[("block1", "a", "x"), ("block1", "b", "x")],
                          mapping_output=[("block4", "a", "y"), ("block5", "b", "y")])
    token = var.set("set")
    try:
        with torch.no_grad():
            sg({"block1": "x"})
    finally:
        var.reset(token)
    assert seen == {"a": (False, "set"), "b": (False, "set")}


# ------------------------------------------------------------------ check 22: condition + training keys
class Lin(Block):
    """y = x * w with one learnable scalar, so sharing and freezing are visible."""

    block_type = "sg_test/lin"

    def __init__(self, block_id: str | None = None, *, config: Mapping[str, Any] | None = None) -> None:
        import torch

        super().__init__(block_id, config=config)
        self.w = torch.nn.Parameter(torch.tensor(float((config or {}).get("w", 2.0))))

    def declare_ports(self) -> list[Port]:
        return [input_port("x", PortType.TENSOR), output_port("y", PortType.TENSOR)]

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return {"y": inputs["x"] * self.w}

    def local_parameters(self):
        yield self.w

    def local_state_dict(self) -> dict[str, Any]:
        return {"w": self.w.detach().clone()}

    def load_local_state_dict(self, state: dict[str, Any]) -> None:
        import torch

        with torch.no_grad():
            self.w.copy_(state["w"])


def _lin_registry():
    from worldgen.blocks import BlockRegistry

    registry = BlockRegistry()
    registry.register("sg_test/lin", Lin)
    return registry


def _training_stage() -> tuple[StageGraph, Lin, Lin, Lin]:
    """Nodes a and b share block `shared`; a has `own_a`, b has `own_b`."""
    shared, own_a, own_b = Lin("shared"), Lin("own_a", config={"w": 3.0}), Lin("own_b", config={"w": 5.0})
    sg = StageGraph("trainer")
    for nid, own in (("a", own_a), ("b", own_b)):
        sg.add_pipeline(chain_graph(nid, shared, own, ids=("s", "o")), nid)
    sg.set_state_contract([1], [5], mapping_input=[("block1", "a", "x"), ("block1", "b", "x")],
                          mapping_output=[("block5", "a", "y")])
    return sg, shared, own_a, own_b


def test_trainable_parameters_are_deduplicated_and_follow_trainable_nodes():
    sg, shared, own_a, own_b = _training_stage()
    assert [id(p) for p in sg.trainable_parameters()] == [id(shared.w), id(own_a.w), id(own_b.w)]
    sg.set_training(["b"], lr=0.01)
    assert [id(p) for p in sg.trainable_parameters()] == [id(shared.w), id(own_b.w)]
    assert own_a.w.requires_grad  # freeze_others=False leaves the others alone
    assert sg.param_groups()[0]["lr"] == 0.01 and len(sg.param_groups()[0]["params"]) == 2
    sg.set_training(["b"], freeze_others=True)
    assert not own_a.w.requires_grad and shared.w.requires_grad and own_b.w.requires_grad
    with pytest.raises(ValueError, match="no node 'nope'"):
        sg.set_training(["nope"])
    with pytest.raises(ValueError, match="lr must be positive"):
        sg.set_training(None, lr=0)
    sg.set_node_endpoint("b", "http://elsewhere", "pipeline")  # remote: nothing to train here
    assert [id(p) for p in sg.trainable_parameters()] == []
    sg.add_remote("r", "http://x", "p", inputs=["x"])
    with pytest.raises(ValueError, match="node 'r' is remote: only local parameters"):
        sg.set_training(["r"])


@pytest.mark.parametrize("condition, expected", [
    ("author", {"requires": (1, 2, 3, 4), "produces": 5, "always": False}),
    ([1, "block2"], {"requires": (1, 2), "produces": None, "always": False}),
    ({"requires": [2], "produces": 3}, {"requires": (2,), "produces": 3, "always": False}),
    ({"always": True}, {"requires": (), "produces": None, "always": True}),
])
def test_check22_condition_and_training_keys_round_trip(tmp_path, condition, expected):
    from worldgen.stage import Condition

    sg, shared, _, _ = _training_stage()
    shared.w.data.fill_(7.0)  # a weight that only the checkpoint knows
    sg.role = "creator"
    sg.set_execution_condition(condition)
    sg.set_training(["a"], lr=1e-3, freeze_others=True)
    config = sg.to_config()
    json.dumps(config)
    assert config["execution_condition"] == ([1, 2] if isinstance(condition, list) else condition)
    assert config["trainable_nodes"] == ["a"] and config["lr"] == 1e-3 and config["freeze_others"] is True

    registry = _lin_registry()
    sg.save(tmp_path / "saved")
    from_disk = StageGraph.load(tmp_path / "saved", registry=registry)
    assert from_disk.get_node("a").get_graph("a").get_node("s").block.w.item() == 7.0
    for loaded in (StageGraph.from_config(config, registry=registry), from_disk):
        assert loaded.to_config() == config
        assert loaded.execution_condition == Condition(**expected)
        assert loaded.as_stage("author").condition == Condition(**expected)
        assert loaded.trainable_nodes == ["a"] and loaded.lr == 1e-3 and loaded.freeze_others
        params = list(loaded.trainable_parameters())
        assert len(params) == 2 and all(p.requires_grad for p in params)  # shared + own_a, once each
        own_b = loaded.get_node("b").get_graph("b").get_node("o").block
        assert not own_b.w.requires_grad  # frozen again on load
    # the stage's own condition is what the world sees; an explicit one still wins
    assert sg.as_stage("author", condition=Condition(always=True)).condition.always


def test_execution_condition_errors():
    sg = StageGraph("s")
    with pytest.raises(ValueError, match="unknown execution_condition preset 'nope'"):
        sg.set_execution_condition("nope")
    with pytest.raises(TypeError, match="must be data"):
        sg.set_execution_condition(lambda state: True)
    with pytest.raises(ValueError, match="block7"):
        sg.set_execution_condition([7])
    from worldgen.engine.serialization import ConfigError

    with pytest.raises(ConfigError, match="trainable_nodes names unknown nodes"):
        StageGraph.from_config({"stage_id": "s", "trainable_nodes": ["ghost"]})
    with pytest.raises(ConfigError, match="unknown execution_condition preset"):
        StageGraph.from_config({"stage_id": "s", "execution_condition": "ghost"})
