"""Graph building, execution, validation, the text_to_image stub template and the LangChain surface
(levels.md §2, §3; §10 checks 4–6, 9, 10–19)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import pytest
import torch

from worldgen.blocks import (
    Block,
    BlockRegistry,
    Port,
    PortAggregation,
    PortType,
    input_port,
    output_port,
)
from worldgen.blocks.roles import Solver, register_task_node_stubs
from worldgen.blocks.torch_block import TorchBlock
from worldgen.engine import (
    AFTER,
    BEFORE,
    LOOP_END,
    LOOP_START,
    Edge,
    Graph,
    GraphValidationError,
    MissingInputError,
    Node,
    strongly_connected_components,
)
from worldgen.engine.templates import TEXT_TO_IMAGE_EDGES

T, TEXT = PortType.TENSOR, PortType.TEXT


class Add(Block):
    """result = a + b + config offset (b optional)."""

    def declare_ports(self) -> list[Port]:
        return [input_port("a"), input_port("b", optional=True), output_port("result")]

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return {"result": inputs["a"] + inputs.get("b", 0) + self.config.get("offset", 0)}


class Identity(Block):
    def declare_ports(self) -> list[Port]:
        return [input_port("x"), output_port("y")]

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return {"y": inputs["x"]}


class Counter_(Block):
    """value + 1; counts its calls (a loop body)."""

    def __init__(self, block_id=None, *, config=None):
        super().__init__(block_id, config=config)
        self.calls = 0

    def declare_ports(self) -> list[Port]:
        return [input_port("value"), output_port("value")]

    def forward(self, inputs):
        self.calls += 1
        return {"value": inputs["value"] + 1}


class Merge(Block):
    """Returns its `x` input untouched; `x` aggregates per config."""

    def declare_ports(self) -> list[Port]:
        return [input_port("x", aggregation=self.config["aggregation"]), output_port("y")]

    def forward(self, inputs):
        return {"y": inputs["x"]}


class Const(Block):
    def declare_ports(self):
        return [output_port("y")]

    def forward(self, inputs):
        return {"y": self.config["value"]}


def add_identity_graph() -> Graph:
    graph = Graph("g")
    graph.add_node("add", Add(config={"offset": 2}))
    graph.add_node("id", Identity())
    graph.add_edge("add", "result", "id", "x")
    graph.expose_input("add", "a", "a_in")
    graph.expose_input("add", "b", "b_in")
    graph.expose_output("id", "y", "result")
    return graph


def counter_loop(steps: int | None = None) -> tuple[Graph, Counter_]:
    graph = Graph(metadata={} if steps is None else {"num_loop_steps": steps})
    counter = Counter_()
    graph.add_node("c", counter)
    graph.add_edge("c", "value", "c", "value")
    graph.expose_input("c", "value", "start")
    graph.expose_output("c", "value", "end")
    return graph, counter


def fan_in(aggregation: PortAggregation, values: dict[str, Any]) -> Graph:
    graph = Graph()
    graph.add_node("m", Merge(config={"aggregation": aggregation}))
    for node_id, value in values.items():
        graph.add_node(node_id, Const(config={"value": value}))
        graph.add_edge(node_id, "y", "m", "x")
    graph.expose_output("m", "y", "out")
    return graph


# ------------------------------------------------------------------- structure
def test_node_and_edge_need_ids():  # check 4
    with pytest.raises(ValueError):
        Node("", Identity())
    with pytest.raises(TypeError):
        Node("n", object())  # type: ignore[arg-type]
    for fields in (("", "p", "b", "q"), ("a", "", "b", "q"), ("a", "p", "", "q"), ("a", "p", "b", "")):
        with pytest.raises(ValueError):
            Edge(*fields)


def test_add_node_forms_and_duplicates():
    graph = Graph()
    assert graph.add_node(Node("n", Identity())) == "n"
    assert graph.add_node(None, "backbone/identity", auto_connect=False) == "backbone_identity_1"
    assert graph.add_node(None, {"type": "guidance/cfg", "guidance_scale": 2}) == "guidance_cfg_1"
    assert graph.get_node("guidance_cfg_1").block.config == {"guidance_scale": 2}
    with pytest.raises(ValueError, match="already has a node 'n'"):
        graph.add_node("n", Identity())
    with pytest.raises(ValueError):
        graph.add_node(Node("m", Identity()), config={"x": 1})
    with pytest.raises(KeyError, match="registered types"):
        graph.add_node("x", "backbone/nope")


def test_add_edge_checks_name_node_and_port():  # check 5
    graph = Graph()
    graph.add_node("a", Add())
    graph.add_node("i", Identity())
    graph.add_node("tok", "tokenizer/identity")
    with pytest.raises(ValueError, match="no node 'zz'"):
        graph.add_edge("zz", "y", "i", "x")
    with pytest.raises(ValueError, match=r"node 'i' \(Identity\) has no input port 'nope'"):
        graph.add_edge("a", "result", "i", "nope")
    with pytest.raises(ValueError, match="node 'i' port 'y' is an output port"):
        graph.add_edge("a", "result", "i", "y")  # OUT → OUT
    graph.add_node("bb", "backbone/identity", auto_connect=False)
    with pytest.raises(ValueError, match="incompatible port types tensor -> text"):
        graph.add_edge("bb", "pred", "tok", "text")
    graph.add_edge("a", "result", "i", "x")
    graph.add_edge(Edge("a", "result", "i", "x"))  # again: a no-op
    assert graph.get_edges() == [Edge("a", "result", "i", "x")]
    assert graph.get_edges_in("i") == graph.get_edges_out("a") == [Edge("a", "result", "i", "x")]


def test_single_port_takes_one_edge_and_sum_aggregates():  # check 6
    graph = Graph()
    graph.add_node("a", Const(config={"value": 1}))
    graph.add_node("b", Const(config={"value": 2}))
    graph.add_node("i", Identity())
    graph.add_edge("a", "y", "i", "x")
    with pytest.raises(ValueError, match="node 'i' port 'x' already has an edge"):
        graph.add_edge("b", "y", "i", "x")
    assert fan_in(PortAggregation.SUM, {"a": 1, "b": 2, "c": 4}).run() == {"out": 7}


def test_concat_first_and_dict_aggregation():
    concat = fan_in(PortAggregation.CONCAT, {"a": torch.ones(1, 2), "b": torch.zeros(2, 2)}).run()["out"]
    assert concat.shape == (3, 2) and concat[0].tolist() == [1.0, 1.0]
    assert fan_in(PortAggregation.CONCAT, {"a": [1], "b": [2, 3]}).run() == {"out": [1, 2, 3]}
    assert fan_in(PortAggregation.FIRST, {"b": "first", "a": "second"}).run() == {"out": "first"}
    assert fan_in(PortAggregation.DICT, {"b": 1, "a": 2}).run() == {"out": {"b": 1, "a": 2}}


# -------------------------------------------------------------------- running
def test_add_then_identity():  # check 10
    graph = add_identity_graph()
    assert graph.run({"a_in": 10, "b_in": 5}) == {"result": 17}
    assert graph.run({("add", "a"): 1}) == {"result": 3}  # tuple keys; b is optional
    graph.expose_output("add", "result")
    assert graph.run({"a_in": 0})["add:result"] == 2  # unnamed → "node:port"
    assert graph.get_input_spec(include_dtype=True) == [
        {"node_id": "add", "port_name": "a", "name": "a_in", "dtype": "any"},
        {"node_id": "add", "port_name": "b", "name": "b_in", "dtype": "any"},
    ]
    assert graph.get_output_spec()[1] == {"node_id": "add", "port_name": "result"}
    with pytest.raises(ValueError, match=r"unknown run inputs \['c_in'\]"):
        graph.run({"a_in": 1, "c_in": 2})


def test_missing_required_input_names_node_and_port():
    with pytest.raises(MissingInputError, match="node 'add': required input port 'a'"):
        add_identity_graph().run({"b_in": 1})


def test_counter_loop_runs_num_loop_steps_times():  # check 11
    graph, counter = counter_loop()
    assert graph.plan().describe() == [("cycle", ("c",))]
    assert graph.run({"start": 0}, num_loop_steps=5) == {"end": 5} and counter.calls == 5
    assert graph.run({"start": 0}) == {"end": 1}  # default: once
    graph, _ = counter_loop(steps=3)
    assert graph.run({"start": 10}) == {"end": 13}  # from metadata
    assert graph.run({"start": 10}, num_loop_steps=2) == {"end": 12}  # argument wins
    with pytest.raises(ValueError, match="num_loop_steps"):
        graph.run({"start": 0}, num_loop_steps=0)


def test_backbone_runs_before_solver_and_loop_steps_from_solver_config():  # check 11
    for order in (("solver", "backbone"), ("backbone", "solver")):
        graph = Graph()
        for role in order:
            graph.add_node(role, f"{role}/identity", config={"num_steps": 4} if role == "solver" else None)
        graph.expose_input("backbone", "latent", "latent")
        graph.expose_input("backbone", "timestep", "t")
        graph.expose_input("solver", "latent", "solver_latent")
        graph.expose_input("solver", "timestep", "solver_t")
        graph.expose_output("solver", "next_latent", "out")
        assert graph.plan().describe() == [("cycle", ("backbone", "solver"))]
        seen: list[str] = []
        graph.run({"latent": 1, "t": 0, "solver_latent": 1, "solver_t": 0}, callbacks=lambda nid, phase, **kw: seen.append(nid) if phase == BEFORE else None)
        assert seen == ["backbone", "solver"] * 4


def test_explicit_loop_order():
    graph = Graph(metadata={"loop_order": ["b"]})
    graph.add_node("a", Identity())
    graph.add_node("b", Identity())
    graph.add_edge("a", "y", "b", "x")
    graph.add_edge("b", "y", "a", "x")
    assert graph.plan().describe() == [("cycle", ("b", "a"))]
    graph.metadata["loop_order"] = []  # a metadata edit invalidates the plan too
    assert graph.plan().describe() == [("cycle", ("a", "b"))]  # insertion order when nothing else decides


def test_exposed_loop_input_seeds_first_iteration_only():  # check 12
    graph = Graph()
    graph.add_node("a", Add(config={"offset": 1}))  # a.a gets 100 on iteration 1, then b's output
    graph.add_node("b", Identity())
    graph.add_edge("a", "result", "b", "x")
    graph.add_edge("b", "y", "a", "a")
    graph.expose_input("a", "a", "seed")
    graph.expose_output("b", "y", "out")
    seen: list[Any] = []
    graph.run({"seed": 100}, num_loop_steps=3,
              callbacks=lambda nid, phase, inputs=None, **kw: seen.append(inputs["a"]) if (nid, phase) == ("a", BEFORE) else None)
    assert seen == [100, 101, 102]


def test_optional_port_default_or_absent():  # check 13
    graph = Graph()
    graph.add_node("add", Add(config={"defaults": {"b": 40}}))
    graph.expose_input("add", "a", "a")
    graph.expose_output("add", "result", "r")
    assert graph.run({"a": 2}) == {"r": 42}
    seen = []
    graph2 = Graph()
    graph2.add_node("add", Add())
    graph2.expose_input("add", "a", "a")
    graph2.expose_output("add", "result", "r")
    graph2.run({"a": 2}, callbacks=lambda nid, phase, inputs=None, **kw: seen.append(dict(inputs)))
    assert seen[0] == {"a": 2}  # b absent, not None


def test_callbacks_fire_per_node_and_per_iteration():  # check 14
    graph, _ = counter_loop()
    graph.add_node("after", Identity())
    graph.add_edge("c", "value", "after", "x")
    events: Counter[tuple[str, str]] = Counter()
    iterations = []

    def hook(node_id, phase, **kw):
        events[(node_id, phase)] += 1
        if phase == LOOP_START:
            iterations.append((kw["iteration"], kw["num_steps"], kw["node_ids"]))
        if phase == AFTER:
            assert kw["outputs"] is not None and "buffer" in kw

    graph.run({"start": 0}, num_loop_steps=3, callbacks=[hook])
    assert events == {("c", LOOP_START): 3, ("c", LOOP_END): 3, ("c", BEFORE): 3, ("c", AFTER): 3,
                      ("after", BEFORE): 1, ("after", AFTER): 1}
    assert iterations == [(0, 3, ("c",)), (1, 3, ("c",)), (2, 3, ("c",))]

    def broken(node_id, phase, **kw):
        raise RuntimeError("hook failed")

    with pytest.raises(RuntimeError, match="hook failed"):  # callback errors are not swallowed
        graph.run({"start": 0}, callbacks=broken)


def test_dry_run_calls_no_forward():  # check 15
    graph, counter = counter_loop()
    graph.expose_output("c", "value", "end")
    assert graph.run({"start": 0}, num_loop_steps=4, dry_run=True) == {"end": None}
    assert counter.calls == 0


class Lin(TorchBlock):
    def build_module(self):
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))

    def declare_ports(self):
        return [input_port("x", T), output_port("y", T)]

    def forward(self, inputs):
        return {"y": self.module(inputs["x"])}


def lin_graph() -> tuple[Graph, Lin]:
    graph, lin = Graph(), Lin()
    graph.add_node("lin", lin)
    graph.expose_input("lin", "x", "x")
    graph.expose_output("lin", "y", "y")
    return graph, lin


def test_training_flag_sets_mode_and_inference_keeps_weights():  # check 16
    graph, lin = lin_graph()
    before = {k: v.clone() for k, v in lin.state_dict().items()}
    x = torch.ones(3, 2)
    out1, out2 = graph.run({"x": x})["y"], graph.run({"x": x})["y"]
    assert not lin.training and not lin.module.training and torch.equal(out1, out2)
    assert all(torch.equal(before[k], v) for k, v in lin.state_dict().items())
    graph.run({"x": x}, training=True)
    assert lin.training and lin.module.training


def test_gradients_flow_through_the_graph():
    graph, lin = lin_graph()
    lin.module[1].p = 0.0
    graph.run({"x": torch.ones(1, 2)}, training=True)["y"].sum().backward()
    assert lin.module[0].weight.grad is not None
    assert [id(p) for p in graph.trainable_parameters()] == [id(p) for p in lin.module.parameters()]
    lin.freeze()
    assert list(graph.trainable_parameters()) == []


def test_plan_is_cached_until_the_structure_changes():  # check 17
    graph = add_identity_graph()
    plan = graph.plan()
    graph.run({"a_in": 1})
    assert graph.plan() is plan
    graph.add_node("extra", Identity())
    plan2 = graph.plan()
    assert plan2 is not plan and plan2.version > plan.version
    graph.add_edge("id", "y", "extra", "x")
    assert graph.plan() is not plan2
    assert graph.plan().describe() == [("node", ("add",)), ("node", ("id",)), ("node", ("extra",))]
    graph.remove_node("extra")
    assert "extra" not in graph and len(graph.plan().steps) == 2


# ----------------------------------------------------------------- validation
def test_validate_lists_every_problem_at_once():  # check 18
    graph = Graph()
    graph.add_node("add", Add())  # a unfed
    graph.add_node("id", Identity())  # x unfed
    graph.add_node("ok", Const(config={"value": 1}))
    graph.expose_output("ok", "y")
    result = graph.validate(strict=False)
    assert not result.is_valid
    assert {(e.node_id, e.port_name) for e in result.errors} == {("add", "a"), ("id", "x")}
    assert all("required input" in str(e) for e in result.errors)
    with pytest.raises(GraphValidationError, match=r"(?s)2 errors.*'add' port 'a'.*'id' port 'x'"):
        graph.validate()


def test_unreachable_node_is_only_a_warning():  # check 18
    graph = add_identity_graph()
    graph.add_node("island", Add(config={"defaults": {"a": 1}}))
    result = graph.validate()
    assert result.is_valid
    assert {w.node_id for w in result.warnings} == {"island"}
    assert any("unreachable" in str(w) for w in result.warnings)


def test_loop_input_without_seed_is_an_error():  # check 19
    graph, _ = counter_loop()
    assert graph.validate().is_valid
    unseeded = Graph()
    unseeded.add_node("c", Counter_())
    unseeded.add_edge("c", "value", "c", "value")
    unseeded.expose_output("c", "value")
    (error,) = unseeded.validate(strict=False).errors
    assert (error.node_id, error.port_name) == ("c", "value") and "seed" in str(error)
    with pytest.raises(MissingInputError):
        unseeded.run()
    # a loop port fed by an earlier node of the same iteration needs no seed
    graph = Graph()
    graph.add_node("bb", "backbone/identity")
    graph.add_node("sol", "solver/identity")
    for node, port in (("bb", "latent"), ("bb", "timestep")):
        graph.expose_input(node, port)
    errors = graph.validate(strict=False).errors
    assert {(e.node_id, e.port_name) for e in errors} == {("sol", "latent"), ("sol", "timestep")}


# -------------------------------------------------------------- engine pieces
def test_scc_long_chain_and_cycles():
    chain = [f"n{i}" for i in range(5000)]
    succ = {a: [b] for a, b in zip(chain, chain[1:])}
    assert len(strongly_connected_components(chain, succ)) == 5000  # iterative: no recursion limit
    comps = strongly_connected_components(list("abcde"), {"a": ["b"], "b": ["c"], "c": ["a", "d"], "d": ["e"], "e": ["d"]})
    assert sorted(sorted(c) for c in comps) == [["a", "b", "c"], ["d", "e"]]


def test_infer_exposed_ports_replaces_exposures():
    graph = add_identity_graph()
    graph.infer_exposed_ports()
    assert [s["port_name"] for s in graph.get_input_spec()] == ["a", "b"]
    assert graph.run({"add:a": 1, "add:b": 1}) == {"id:y": 4}


# ------------------------------------------------------------------ LangChain
BETA = "ignore::langchain_core._api.beta_decorator.LangChainBetaWarning"  # Runnable.as_tool is beta


@pytest.mark.filterwarnings(BETA)
def test_graph_is_a_runnable_and_a_tool():
    graph = add_identity_graph()
    assert graph.invoke({"a_in": 10, "b_in": 5}) == {"result": 17}
    assert graph.batch([{"a_in": 1}, {"a_in": 2}]) == [{"result": 3}, {"result": 4}]
    schema = graph.get_input_schema().model_json_schema()
    assert schema["required"] == ["a_in"] and set(schema["properties"]) == {"a_in", "b_in"}
    tool = graph.as_tool(name="adder", description="Adds two numbers plus two.")
    assert tool.name == "adder" and set(tool.args) == {"a_in", "b_in"}
    assert tool.invoke({"a_in": 1, "b_in": 2}) == {"result": 5}


@pytest.mark.filterwarnings(BETA)
def test_tool_arguments_for_unnamed_ports():
    graph = Graph()
    graph.add_node("tok", "tokenizer/identity")
    graph.expose_input("tok", "text")
    graph.expose_output("tok", "token_ids")
    tool = graph.as_tool(name="tokenize", description="Tokenize text.")
    assert tool.args["tok__text"]["type"] == "string"
    assert tool.invoke({"tok__text": "hi"}) == {"tok:token_ids": "hi"}


# ------------------------------------------------- template text_to_image (check 9)
ROLES = ["tokenizer", "conditioner", "backbone", "solver", "codec"]
#: the documented edge set: the role-rule edges, codec.encode_latent → solver.latent replaced by
#: the loop-seed fix (solver self-edges: the solver steps the current latent and timestep)
T2I_EDGES = {
    Edge("tokenizer", "token_ids", "conditioner", "input"),
    Edge("conditioner", "embedding", "backbone", "condition"),
    Edge("backbone", "pred", "solver", "pred"),
    Edge("solver", "next_latent", "backbone", "latent"),
    Edge("solver", "next_timestep", "backbone", "timestep"),
    Edge("solver", "next_latent", "solver", "latent"),
    Edge("solver", "next_timestep", "solver", "timestep"),
    Edge("solver", "next_latent", "codec", "decode_latent"),
}


class HalvingSolver(Solver):
    """A solver that moves: next_latent = latent - pred / 2, next_timestep = timestep - 1."""

    block_type = "solver/test_halving"

    def forward(self, inputs):
        return {"next_latent": inputs["latent"] - inputs["pred"] / 2, "next_timestep": inputs["timestep"] - 1}


def test_check9_text_to_image_stub_template():  # check 9
    graph = Graph.from_template("text_to_image", validate=True, num_steps=3)
    assert graph.node_ids == ROLES and graph.graph_id == "text_to_image" and graph.graph_kind == "diffusion"
    assert [graph.get_node(n).block.block_type for n in ROLES] == [f"{r}/identity" for r in ROLES]
    assert set(graph.get_edges()) == T2I_EDGES and len(graph.get_edges()) == len(T2I_EDGES) == 8
    assert {Edge(*s.split("."), *t.split(".")) for s, t in TEXT_TO_IMAGE_EDGES} == T2I_EDGES
    assert list(graph.exposed_inputs()) == ["text", "latent", "timestep"]
    assert [(e.name, e.node_id, e.port_name) for e in graph.exposed_input_ports()] == [
        ("text", "tokenizer", "text"), ("latent", "backbone", "latent"), ("latent", "solver", "latent"),
        ("timestep", "backbone", "timestep"), ("timestep", "solver", "timestep"),
    ]
    assert {k: (e.node_id, e.port_name) for k, e in graph.exposed_outputs().items()} == {"image": ("codec", "decode_image")}
    result = graph.validate()
    assert result.is_valid and not result.warnings
    assert graph.metadata["num_loop_steps"] == 3
    # the loop is {backbone, solver}, backbone first; the codec decodes once, after it
    assert graph.plan().describe() == [
        ("node", ("tokenizer",)), ("node", ("conditioner",)), ("cycle", ("backbone", "solver")), ("node", ("codec",)),
    ]
    # identity stubs: the run produces the seeded latent as the image
    assert torch.equal(graph.run({"text": "a cat", "latent": torch.ones(2), "timestep": 10})["image"], torch.ones(2))
    # the structure survives a config round trip (the fanned-out inputs included)
    loaded = Graph.from_config(graph.to_config(), validate=True)
    assert loaded.to_config() == graph.to_config() and set(loaded.get_edges()) == T2I_EDGES
    assert loaded.run({"text": "x", "latent": 5.0, "timestep": 1}) == {"image": 5.0}


def test_check9_loop_seed_scheme_feeds_the_current_latent():  # check 9 (loop-seed fix)
    registry = BlockRegistry()
    register_task_node_stubs(registry)
    registry.register(HalvingSolver.block_type, HalvingSolver)
    graph = Graph.from_template("text_to_image", solver_type="solver/test_halving", num_steps=3, registry=registry,
                                graph_id="t2i", model_id="m", resolution=(64, 32))
    assert graph.graph_id == "t2i" and graph.get_node("solver").block.block_type == "solver/test_halving"
    assert graph.get_node("backbone").block.config == {"model_id": "m"} and graph.get_node("solver").block.config == {}
    assert graph.metadata["resolution"] == [64, 32]
    seen: dict[str, list[tuple[float, int]]] = {"backbone": [], "solver": []}

    def record(node_id, phase, inputs=None, **kw):
        if phase == BEFORE and node_id in seen:
            seen[node_id].append((inputs["latent"], inputs["timestep"]))

    out = graph.run({"text": "t", "latent": 8.0, "timestep": 10}, callbacks=record)
    # iteration 1 from the seeds, then the solver's previous step, for both nodes alike
    assert seen["backbone"] == seen["solver"] == [(8.0, 10), (4.0, 9), (2.0, 8)]
    assert out == {"image": 1.0}


def test_check9_template_rejects_parameters_of_the_other_form():  # check 9
    with pytest.raises(TypeError, match=r"\['solver'\] are not parameters of the role-stub graph"):
        Graph.from_template("text_to_image", solver="ddim")
    with pytest.raises(KeyError, match="unknown block type 'backbone/nope'"):
        Graph.from_template("text_to_image", backbone_type="backbone/nope")


def test_exposed_input_fan_out():
    graph = Graph()
    graph.add_node("a", Add())
    graph.add_node("b", Add(config={"offset": 1}))
    graph.expose_input("a", "a", "x")
    with pytest.raises(ValueError, match=r"input key 'x' is already exposed .*fan_out=True"):
        graph.expose_input("b", "a", "x")
    assert graph.expose_input("b", "a", "x", fan_out=True) == "x"
    assert graph.expose_input("b", "a", "x", fan_out=True) == "x"  # idempotent
    tensor_only = Graph()
    tensor_only.add_node("bb", "backbone/identity")
    tensor_only.add_node("t", "tokenizer/identity")
    tensor_only.expose_input("bb", "latent", "x")
    with pytest.raises(ValueError, match=r"input 'x' feeds bb\.latent \(tensor\); cannot also feed t\.text \(text\)"):
        tensor_only.expose_input("t", "text", "x", fan_out=True)
    graph.expose_output("a", "result", "ra")
    graph.expose_output("b", "result", "rb")
    assert graph.run({"x": 2}) == {"ra": 2, "rb": 3}
    assert [e.node_id for e in graph.exposed_input_ports()] == ["a", "b"]
    assert [e["node_id"] for e in graph.to_config()["exposed_inputs"]] == ["a", "b"]
    graph.remove_node("a")  # the key stays, on its remaining port
    assert graph.exposed_inputs()["x"].node_id == "b" and graph.fan_out_ports("x") == []
    assert graph.run({"x": 2}) == {"rb": 3}
