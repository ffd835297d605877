"""Pipelines: DAGs of graphs on the graph executor (levels.md §4; §10 checks 35–37, 39),
and the ``generate_and_reconstruct`` template on a tiny Stable Diffusion checkpoint."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

from worldgen.blocks import Block, Port, PortType, input_port, output_port
from worldgen.blocks.torch_block import TorchBlock
from worldgen.engine import (
    AFTER,
    BEFORE,
    Graph,
    GraphBlock,
    MissingInputError,
    Pipeline,
    PipelineValidationError,
    pipeline_templates,
)

BETA = "ignore::langchain_core._api.beta_decorator.LangChainBetaWarning"  # Runnable.as_tool is beta


class Add(Block):
    """result = a + b + config offset (b optional); counts its calls."""

    calls = 0

    def declare_ports(self) -> list[Port]:
        return [input_port("a"), input_port("b", optional=True), output_port("result")]

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        Add.calls += 1
        return {"result": inputs["a"] + inputs.get("b", 0) + self.config.get("offset", 0)}


class Mul(Block):
    """y = x * config factor; `x` aggregates per config (SINGLE by default)."""

    def declare_ports(self) -> list[Port]:
        return [input_port("x", aggregation=self.config.get("aggregation", "single")), output_port("y")]

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return {"y": inputs["x"] * self.config.get("factor", 1)}


class Step(Block):
    """value + 1: a one-node loop body."""

    def declare_ports(self) -> list[Port]:
        return [input_port("value"), output_port("value")]

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return {"value": inputs["value"] + 1}


class Text(Block):
    def declare_ports(self) -> list[Port]:
        return [input_port("text", PortType.TEXT), output_port("text", PortType.TEXT)]

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return {"text": inputs["text"]}


class Lin(TorchBlock):
    def build_module(self) -> torch.nn.Module:
        return torch.nn.Linear(2, 2)

    def declare_ports(self) -> list[Port]:
        return [input_port("x", PortType.TENSOR), output_port("y", PortType.TENSOR)]

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return {"y": self.module(inputs["x"])}


def add_graph(graph_id: str = "adder", offset: int = 2) -> Graph:
    graph = Graph(graph_id)
    graph.add_node("add", Add(config={"offset": offset}))
    graph.expose_input("add", "a", "a")
    graph.expose_input("add", "b", "b")
    graph.expose_output("add", "result", "sum")
    return graph


def mul_graph(graph_id: str = "multiplier", factor: int = 3, aggregation: str = "single") -> Graph:
    graph = Graph(graph_id)
    graph.add_node("mul", Mul(config={"factor": factor, "aggregation": aggregation}))
    graph.expose_input("mul", "x", "x")
    graph.expose_output("mul", "y", "y")
    return graph


def chain() -> Pipeline:
    """adder(a, b) → multiplier(x); inputs a, b; output y = (a + b + 2) * 3."""
    pipeline = Pipeline("chain")
    pipeline.add_graph(add_graph())
    pipeline.add_graph(mul_graph())
    pipeline.add_edge("adder", "sum", "multiplier", "x")
    pipeline.expose_input("adder", "a", "a")
    pipeline.expose_input("adder", "b")
    pipeline.expose_output("multiplier", "y", "y")
    return pipeline


def lin_graph(graph_id: str, lin: Lin) -> Graph:
    graph = Graph(graph_id)
    graph.add_node("lin", lin)
    graph.expose_input("lin", "x", "x")
    graph.expose_output("lin", "y", "y")
    return graph


# ------------------------------------------------------------------ building
def test_two_graphs_chained():  # check 37
    pipeline = chain()
    assert pipeline.graph_ids == ["adder", "multiplier"]
    assert pipeline.run({"a": 1, "adder:b": 2}) == {"y": 15}
    assert pipeline.run({"a": 1}) == {"y": 9}  # b is optional
    assert isinstance(pipeline.get_graph("adder"), Graph)


def test_callbacks_fire_before_and_after_each_graph():  # check 37
    events: list[tuple[str, str]] = []
    chain().run({"a": 1}, callbacks=lambda node_id, phase, **kw: events.append((node_id, phase)))
    assert events == [("adder", BEFORE), ("adder", AFTER), ("multiplier", BEFORE), ("multiplier", AFTER)]


def test_single_graph_pipeline_matches_the_graph_and_passes_num_loop_steps():  # check 36
    loop = Graph("loop")
    loop.add_node("step", Step())
    loop.add_edge("step", "value", "step", "value")
    loop.expose_input("step", "value", "start")
    loop.expose_output("step", "value", "end")
    pipeline = Pipeline()
    pipeline.add_graph(loop)
    pipeline.infer_exposed_ports()
    assert pipeline.run({"loop:start": 0}) == {"loop:end": loop.run({"start": 0})["end"]} == {"loop:end": 1}
    assert pipeline.run({"loop:start": 0}, num_loop_steps=5) == {"loop:end": 5}


def test_fan_out_and_fan_in():
    pipeline = Pipeline()
    pipeline.add_graph(add_graph())
    pipeline.add_graph(mul_graph("double", 2))
    pipeline.add_graph(mul_graph("triple", 3))
    pipeline.add_graph(mul_graph("total", 1, aggregation="sum"))
    for branch in ("double", "triple"):
        pipeline.add_edge("adder", "sum", branch, "x")  # fan-out
        pipeline.add_edge(branch, "y", "total", "x")  # fan-in, summed
    pipeline.expose_input("adder", "a", "a")
    pipeline.expose_output("total", "y", "total")
    pipeline.expose_output("double", "y", "double")
    assert pipeline.validate().is_valid
    assert pipeline.run({"a": 1}) == {"total": 15, "double": 6}


def test_second_edge_into_a_single_input_is_rejected():
    pipeline = chain()
    pipeline.add_graph(add_graph("other"))
    pipeline.add_edge("adder", "sum", "multiplier", "x")  # the same edge again: a no-op
    assert len(pipeline.get_edges()) == 1
    with pytest.raises(ValueError, match="takes only one"):
        pipeline.add_edge("other", "sum", "multiplier", "x")


def test_duplicate_graph_id_raises():  # check 35
    pipeline = chain()
    with pytest.raises(ValueError, match="already has a graph 'adder'"):
        pipeline.add_graph(add_graph())
    assert pipeline.add_graph(add_graph(), "adder_2") == "adder_2"


def test_add_graph_from_a_graph_config(tmp_path: Path):
    graph = Graph("tok")
    graph.add_node("t", "tokenizer/identity")  # a registered block, so the config rebuilds it
    graph.expose_input("t", "text", "text")
    graph.expose_output("t", "token_ids", "ids")
    pipeline = Pipeline()
    assert pipeline.add_graph(graph.to_config()) == "tok"
    assert pipeline.add_graph(graph.save_config(tmp_path / "tok.json"), "from_file") == "from_file"
    pipeline.infer_exposed_ports()
    assert pipeline.run({"tok:text": "hi", "from_file:text": "yo"}) == {"tok:ids": "hi", "from_file:ids": "yo"}


def test_add_edge_checks_graphs_ports_and_types():  # check 35
    pipeline = Pipeline()
    pipeline.add_graph(add_graph())
    pipeline.add_graph(mul_graph())
    texts = Graph("texts")
    texts.add_node("t", Text())
    texts.expose_input("t", "text", "text")
    texts.expose_output("t", "text", "text")
    pipeline.add_graph(texts)
    pipeline.add_graph(lin_graph("lin", Lin()))
    with pytest.raises(ValueError, match="has no graph 'nowhere'.*graphs: \\['adder'"):
        pipeline.add_edge("nowhere", "sum", "multiplier", "x")
    with pytest.raises(ValueError, match="graph 'adder' has no exposed output 'total'.*outputs: \\['sum'\\]"):
        pipeline.add_edge("adder", "total", "multiplier", "x")
    with pytest.raises(ValueError, match="graph 'multiplier' has no exposed input 'y'"):
        pipeline.add_edge("adder", "sum", "multiplier", "y")  # an output, not an input
    with pytest.raises(ValueError, match="incompatible port types text -> tensor"):
        pipeline.add_edge("texts", "text", "lin", "x")
    with pytest.raises(ValueError, match="graph 'lin' has no exposed output 'x'"):
        pipeline.expose_output("lin", "x")
    assert pipeline.get_edges() == []


def test_spec_lists_graph_port_and_dtype():  # check 39
    pipeline = Pipeline()
    pipeline.add_graph(lin_graph("lin", Lin()))
    pipeline.expose_input("lin", "x", "features")
    pipeline.expose_output("lin", "y")
    assert pipeline.get_input_spec(include_dtype=True) == [
        {"pipeline_node_id": "lin", "port_name": "x", "name": "features", "dtype": "tensor"}
    ]
    assert pipeline.get_output_spec() == [{"pipeline_node_id": "lin", "port_name": "y"}]


# ---------------------------------------------------------------- validation
def test_cycle_between_graphs_is_rejected_naming_them():  # check 35
    pipeline = Pipeline("loopy")
    pipeline.add_graph(add_graph("g1"))
    pipeline.add_graph(mul_graph("g2"))
    pipeline.add_edge("g1", "sum", "g2", "x")
    pipeline.add_edge("g2", "y", "g1", "a")
    result = pipeline.validate(strict=False)
    assert not result.is_valid
    assert any("form a cycle" in e.message and "'g1'" in e.message and "'g2'" in e.message for e in result.errors)
    with pytest.raises(PipelineValidationError, match="pipeline 'loopy' is invalid"):
        pipeline.validate()
    with pytest.raises(PipelineValidationError, match="form a cycle"):
        pipeline.run({})


def test_validate_reports_every_problem_and_graph_errors_when_asked():
    broken = Graph("broken")
    broken.add_node("add", Add())  # `a` is neither fed nor exposed
    broken.expose_output("add", "result", "sum")
    pipeline = Pipeline()
    pipeline.add_graph(broken)
    pipeline.add_graph(mul_graph())  # its `x` is fed by nothing
    pipeline.expose_output("multiplier", "y", "y")
    errors = [e.message for e in pipeline.validate(strict=False).errors]
    assert len(errors) == 1 and "'multiplier'" in errors[0] and "'x'" in errors[0]
    errors = [e.message for e in pipeline.validate(strict=False, validate_graphs=True).errors]
    assert len(errors) == 2 and errors[1].startswith("graph 'broken': node 'add' port 'a'")


def test_dry_run_checks_inputs_without_running_graphs():
    pipeline = chain()
    Add.calls = 0
    assert pipeline.run({"a": 1}, dry_run=True) == {"y": None}
    assert Add.calls == 0
    with pytest.raises(MissingInputError, match="'adder'.*'a'"):
        pipeline.run({}, dry_run=True)
    assert Add.calls == 0


# ------------------------------------------------------------- LangChain
@pytest.mark.filterwarnings(BETA)
def test_pipeline_is_a_runnable_and_a_tool():
    pipeline = chain()
    assert pipeline.invoke({"a": 1, "adder:b": 2}) == {"y": 15}
    assert pipeline.batch([{"a": 0}, {"a": 1}]) == [{"y": 6}, {"y": 9}]
    tool = pipeline.as_tool(name="add_then_triple", description="(a + b + 2) * 3")
    assert tool.name == "add_then_triple" and set(tool.args) == {"a", "adder__b"}
    assert tool.invoke({"a": 1, "adder__b": 2}) == {"y": 15}


# --------------------------------------------------------------- training
def test_trainable_parameters_are_deduplicated_and_per_graph():
    shared, own = Lin(), Lin()
    first = lin_graph("first", shared)
    second = Graph("second")
    second.add_node("lin", shared)
    second.add_node("own", own)
    second.add_edge("lin", "y", "own", "x")
    second.expose_input("lin", "x", "x")
    second.expose_output("own", "y", "y")
    pipeline = Pipeline()
    pipeline.add_graph(first)
    pipeline.add_graph(second)
    pipeline.add_edge("first", "y", "second", "x")
    ids = [id(p) for p in pipeline.trainable_parameters()]
    assert len(ids) == len(set(ids)) == 4  # the shared Linear's weight and bias once, own's once
    pipeline.set_trainable("second", False)
    assert [id(p) for p in pipeline.trainable_parameters()] == [id(p) for p in shared.module.parameters()]
    pipeline.set_trainable("first", False)
    assert list(pipeline.trainable_parameters()) == [] and not shared.frozen


def test_training_flag_reaches_the_blocks_inside_graphs():
    lin = Lin()
    pipeline = Pipeline()
    pipeline.add_graph(lin_graph("g", lin))
    pipeline.infer_exposed_ports()
    out = pipeline.run({"g:x": torch.ones(1, 2)}, training=True)["g:y"]
    assert lin.training and lin.module.training
    out.sum().backward()
    assert lin.module.weight.grad is not None
    pipeline.run({"g:x": torch.ones(1, 2)})
    assert not lin.module.training


def test_graph_block_ports_mirror_the_graph():
    block = GraphBlock(add_graph())
    assert block.block_id == "adder"
    assert [(p.name, p.optional) for p in block.get_input_ports()] == [("a", False), ("b", True)]
    assert [p.name for p in block.get_output_ports()] == ["sum"]
    assert block.forward({"a": 1}) == {"sum": 3}


# ---------------------------------------------------- the real template
pytestmark = pytest.mark.usefixtures("one_torch_thread")




def test_generate_and_reconstruct_on_a_tiny_checkpoint(tiny_sd: Path):
    assert "generate_and_reconstruct" in pipeline_templates()
    with pytest.raises(KeyError, match="generate_and_reconstruct"):
        Pipeline.from_template("no_such_pipeline")
    pipeline = Pipeline.from_template(
        "generate_and_reconstruct", checkpoint=tiny_sd, num_inference_steps=3, height=32, width=32
    )
    assert pipeline.graph_ids == ["generate", "reconstruct"]
    assert {s["name"] for s in pipeline.get_input_spec()} == {"prompt", "negative_prompt", "seed"}
    generate, reconstruct = pipeline.get_graph("generate"), pipeline.get_graph("reconstruct")
    assert generate.get_node("codec").block is reconstruct.get_node("encode").block  # one VAE

    out = pipeline.run({"prompt": "a red fox", "seed": 1})
    image, generated = out["image"], out["generated"]
    assert image.shape == generated.shape == (1, 3, 32, 32)
    assert out["latent"].shape == (1, 4, 16, 16)
    assert 0 <= float(image.min()) and float(image.max()) <= 1
    assert torch.equal(generated, generate.run({"prompt": "a red fox", "seed": 1})["image"])
    alone = Graph.from_template("vae_reconstruct", checkpoint=tiny_sd)  # its own VAE, same weights
    assert torch.allclose(alone.run({"image": generated})["image"], image)

    again = pipeline.invoke({"prompt": "a red fox", "seed": 1})
    assert torch.equal(again["image"], image)  # deterministic for a seed
    other = pipeline.run({"prompt": "a red fox", "seed": 2})
    assert not torch.equal(other["image"], image)


# ------------------------------------------------------------------ remote graphs (§9, check 39)
def test_check39_graph_with_mocked_endpoint_gives_the_local_outputs():
    """The multiplier graph served in-process behind RemoteGraph: same outputs, same callbacks."""
    from tests.langgraph_server import inprocess_client
    from worldgen.remote import serve_pipeline

    pipeline = chain()
    expected = pipeline.run({"a": 1, "adder:b": 2})
    calls: list[dict[str, Any]] = []
    client = inprocess_client({"mul": serve_pipeline(mul_graph())}, calls)
    pipeline.set_endpoint("multiplier", "http://remote.test", "mul", sync_client=client)
    events: list[tuple[str, str]] = []
    got = pipeline.run({"a": 1, "adder:b": 2}, callbacks=lambda node_id, phase, **kw: events.append((node_id, phase)))
    assert got == expected == {"y": 15}
    assert calls[0]["assistant_id"] == "mul" and calls[0]["input"] == {"inputs": {"x": 5}}
    assert events == [("adder", BEFORE), ("adder", AFTER), ("multiplier", BEFORE), ("multiplier", AFTER)]
    assert pipeline.metadata["endpoints"] == {"multiplier": {"endpoint_url": "http://remote.test", "assistant_id": "mul"}}

    # tensors cross the wire by their port type; a remote graph has no local parameters to train
    lin = Lin()
    tensors = Pipeline("tensors")
    tensors.add_graph(lin_graph("lin", lin))
    tensors.expose_input("lin", "x", "x")
    tensors.expose_output("lin", "y", "y")
    x = torch.randn(3, 2)
    local = tensors.run({"x": x})["y"]
    tensors.set_endpoint("lin", "http://remote.test", "lin",
                         sync_client=inprocess_client({"lin": serve_pipeline(lin_graph("lin", lin))}))
    assert torch.equal(tensors.run({"x": x})["y"], local)
    assert list(tensors.trainable_parameters()) == []
    tensors.set_endpoint("lin", None)
    assert len(list(tensors.trainable_parameters())) == 2 and "endpoints" not in tensors.metadata


def test_endpoint_round_trips_in_the_pipeline_config(monkeypatch):
    from worldgen.blocks import BlockRegistry

    monkeypatch.setenv("LANGGRAPH_API_KEY", "sk-never-saved")
    registry = BlockRegistry()
    registry.register("Add", Add)
    registry.register("Mul", Mul)
    pipeline = chain()
    pipeline.set_endpoint("multiplier", "http://gpu:2024", api_key_env="GPU_KEY")
    config = pipeline.to_config()
    assert config["metadata"]["endpoints"] == {
        "multiplier": {"endpoint_url": "http://gpu:2024", "assistant_id": "multiplier", "api_key_env": "GPU_KEY"}}
    assert "sk-never-saved" not in str(config)
    loaded = Pipeline.from_config(config, registry=registry)
    assert loaded.get_endpoint("multiplier").to_config() == config["metadata"]["endpoints"]["multiplier"]
    assert loaded.get_endpoint("adder") is None and loaded.to_config() == config
    with pytest.raises(ValueError, match="metadata.endpoints.adder needs an endpoint_url"):
        loaded.metadata = {"endpoints": {"adder": {}}}
