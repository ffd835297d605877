"""Task roles, role rules and auto-connect (levels.md §2; §10 checks 7–8)."""

from __future__ import annotations

import random

import pytest
import torch

from worldgen.blocks import (
    IDENTITY_STUBS,
    KNOWN_ROLES,
    Backbone,
    BlockRegistry,
    ClassifierFreeGuidance,
    PortDirection,
    get_rule_edges,
    global_registry,
    register_task_node_stubs,
    role_from_block_type,
    suggest_edges_for_new_node,
)
from worldgen.blocks.roles import block_role
from worldgen.engine import AmbiguityPolicy, Edge, Graph, auto_connect

D2_LOOP = {
    ("backbone", "pred", "solver", "pred"),
    ("solver", "next_latent", "backbone", "latent"),
    ("solver", "next_timestep", "backbone", "timestep"),
}


def edge_set(graph: Graph) -> set[tuple[str, str, str, str]]:
    return {(e.source_node, e.source_port, e.target_node, e.target_port) for e in graph.get_edges()}


def graph_of(nodes: list[tuple[str, str]], **kw) -> Graph:
    graph = Graph(**kw)
    for node_id, block_type in nodes:
        graph.add_node(node_id, block_type)
    return graph


def test_role_from_block_type():  # check 7
    assert role_from_block_type("Backbone/UNet2D") == "backbone"
    assert role_from_block_type("solver_ddim") == "solver"
    assert role_from_block_type("GUIDANCE") == "guidance"
    assert role_from_block_type("llm/api") == "llm"
    assert role_from_block_type("position_embedder/rope") == "position_embedder"
    for not_a_role in ("foo", "backbones", "", None, "my_backbone"):
        assert role_from_block_type(not_a_role) is None
    assert KNOWN_ROLES == ("backbone", "solver", "codec", "conditioner", "tokenizer", "adapter", "guidance")


def test_role_comes_from_class_when_type_does_not_name_it():
    class MyNet(Backbone):
        def forward(self, inputs):
            return {"pred": inputs["latent"]}

    assert MyNet.block_type == "MyNet" and block_role(MyNet()) == "backbone"


def test_identity_stubs_follow_role_ports():
    reg = BlockRegistry()
    register_task_node_stubs(reg)
    assert {f"{r}/identity" for r in KNOWN_ROLES} <= set(reg.list())
    solver = reg.build({"type": "solver/identity"})
    assert block_role(solver) == "solver" and solver.block_type == "solver/identity"
    assert [p.name for p in solver.get_input_ports()] == ["latent", "timestep", "pred"]
    assert solver.forward({"latent": 1, "timestep": 2, "pred": 3}) == {"next_latent": 1, "next_timestep": 2}
    codec = IDENTITY_STUBS["codec/identity"]()
    assert codec.forward({"decode_latent": 5}) == {"decode_image": 5}  # encode side absent
    assert codec.get_port("decode_image", PortDirection.OUT).optional


def test_cfg_guidance_on_tensors_without_mutating_inputs():
    cond, uncond = torch.tensor([3.0, 1.0]), torch.tensor([1.0, 1.0])
    inputs = {"pred_cond": cond, "pred_uncond": uncond}
    cfg = global_registry().build({"type": "guidance/cfg", "guidance_scale": 2.0})
    assert isinstance(cfg, ClassifierFreeGuidance)
    assert torch.equal(cfg.forward(inputs)["pred_guided"], torch.tensor([5.0, 1.0]))
    assert torch.equal(cfg.forward({**inputs, "scale": 0.5})["pred_guided"], torch.tensor([2.0, 1.0]))
    assert set(inputs) == {"pred_cond", "pred_uncond"} and torch.equal(cond, torch.tensor([3.0, 1.0]))


def test_rule_table_lookups():
    assert get_rule_edges("backbone", "solver") == [("pred", "pred")]
    assert get_rule_edges("solver", "backbone") == [("next_latent", "latent"), ("next_timestep", "timestep")]
    assert set(suggest_edges_for_new_node("s", "solver", [("b", "backbone")])) == {
        ("b", "pred", "s", "pred"), ("s", "next_latent", "b", "latent"), ("s", "next_timestep", "b", "timestep"),
    }


@pytest.mark.parametrize("order", [["backbone", "solver"], ["solver", "backbone"]])
def test_backbone_solver_auto_connect(order):  # check 8
    graph = graph_of([(r, f"{r}/identity") for r in order])
    assert edge_set(graph) == D2_LOOP
    assert all(graph.is_auto_edge(e) for e in graph.get_edges())


def test_auto_connect_is_order_independent():  # check 8 (any insertion order)
    nodes = [(r, f"{r}/identity") for r in KNOWN_ROLES if r != "guidance"] + [("cfg", "guidance/cfg")]
    reference = edge_set(graph_of(nodes))
    assert ("adapter", "adapted", "backbone", "condition") in reference  # adapter beats conditioner
    assert ("cfg", "pred_guided", "solver", "pred") in reference  # guidance beats backbone
    assert ("conditioner", "embedding", "backbone", "condition") not in reference
    assert ("backbone", "pred", "solver", "pred") not in reference
    rng = random.Random(0)
    for _ in range(8):
        rng.shuffle(nodes)
        assert edge_set(graph_of(nodes)) == reference


def test_ambiguous_sources_give_no_edge_and_a_warning():
    nodes = [("bb", "backbone/identity"), ("c1", "conditioner/identity"), ("c2", "conditioner/identity")]
    graph = graph_of(nodes)
    assert not any(e.target == ("bb", "condition") for e in graph.get_edges())
    (warning,) = [w for w in graph.validate(strict=False).warnings if w.port_name == "condition"]
    assert "c1.embedding" in str(warning) and "c2.embedding" in str(warning) and warning.node_id == "bb"
    first = graph_of(list(reversed(nodes)), ambiguity_policy="first")
    assert ("c1", "embedding", "bb", "condition") in edge_set(first)
    result = auto_connect(graph, AmbiguityPolicy.FIRST)
    assert Edge("c1", "embedding", "bb", "condition") in result.edges and not result.ambiguities


def test_explicit_edge_wins_over_auto():
    graph = Graph()
    graph.add_node("bb", "backbone/identity")
    graph.add_node("c1", "conditioner/identity")
    graph.add_node("c2", "conditioner/identity")
    explicit = graph.add_edge("c2", "embedding", "bb", "condition")  # resolves the ambiguity
    assert not graph.is_auto_edge(explicit)
    graph.add_node("c3", "conditioner/identity")  # recompute keeps the explicit choice
    assert [e for e in graph.get_edges() if e.target == ("bb", "condition")] == [explicit]
    assert not graph.auto_connect_ambiguities

    graph = graph_of([("bb", "backbone/identity"), ("cond", "conditioner/identity")])
    assert ("cond", "embedding", "bb", "condition") in edge_set(graph)
    graph.add_node("other", "conditioner/identity", auto_connect=False)
    graph.add_edge("other", "embedding", "bb", "condition")  # replaces the auto edge
    assert [e.source_node for e in graph.get_edges_in("bb")] == ["other"]
    graph.remove_edge(Edge("other", "embedding", "bb", "condition"))  # the auto edge comes back
    assert [e.source_node for e in graph.get_edges_in("bb")] == ["cond"]


def test_auto_connect_opt_out_and_no_role_blocks():
    graph = Graph()
    graph.add_node("bb", "backbone/identity")
    graph.add_node("sol", "solver/identity", auto_connect=False)
    assert graph.get_edges() == []
    graph.auto_connect()  # still excluded: it opted out when added
    assert graph.get_edges() == []
