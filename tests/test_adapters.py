"""Training across levels: shared blocks, LoRA through peft (shared and per call context),
LoRA on a whole world, prompt adapters for API chat models (levels.md §7; checks 27, 28,
32, 33, 34). Tiny torch modules and a tiny diffusers UNet; no network."""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from safetensors.torch import load_file

from worldgen.adapters import (
    Adapter,
    AdapterError,
    LoraSet,
    PromptAdaptedChatModel,
    PromptAdapter,
    apply_lora,
    call_context,
    freeze_others,
    load_lora,
    optimize_prompt,
    trainable_parameters,
    trainable_stages,
)
from worldgen.adapters.lora import lora_adapters_of
from worldgen.blocks.ports import PortType, input_port, output_port
from worldgen.blocks.registry import BlockRegistry
from worldgen.blocks.torch_block import TorchBlock
from worldgen.engine.graph import Graph
from worldgen.engine.pipeline import Pipeline
from worldgen.stage_graph import StageGraph

pytestmark = pytest.mark.usefixtures("one_torch_thread")

T = PortType.TENSOR
REGISTRY = BlockRegistry()


class TinyMLP(TorchBlock):
    """x [B, 4] → y [B, 4] through Linear-Tanh-Linear; weights from ``seed``."""

    block_type = "test/tiny_mlp"

    def build_module(self) -> torch.nn.Module:
        torch.manual_seed(int(self.config.get("seed", 0)))
        width = int(self.config.get("width", 8))
        return torch.nn.Sequential(torch.nn.Linear(4, width), torch.nn.Tanh(), torch.nn.Linear(width, 4))

    def declare_ports(self):
        return [input_port("x", T), output_port("y", T)]

    def forward(self, inputs):
        return {"y": self.module(inputs["x"])}


class LinearBlock(TorchBlock):
    """A bare shared Linear (check 28)."""

    block_type = "test/linear"

    def build_module(self) -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Linear(3, 2)

    def declare_ports(self):
        return [input_port("x", T), output_port("y", T)]

    def forward(self, inputs):
        return {"y": self.module(inputs["x"])}


REGISTRY.register(TinyMLP.block_type, TinyMLP)
REGISTRY.register(LinearBlock.block_type, LinearBlock)


def one_node_graph(graph_id: str, block: TorchBlock, node_id: str = "net") -> Graph:
    graph = Graph(graph_id)
    graph.add_node(node_id, block)
    graph.expose_input(node_id, "x", "x")
    graph.expose_output(node_id, "y", "y")
    return graph


def shared_in_two_graphs(block_name: str, g1_id: str, g2_id: str) -> tuple[TinyMLP, Graph, Graph, Pipeline]:
    """One TinyMLP used by two one-node graphs of one pipeline (a shared base)."""
    shared = TinyMLP(block_name)
    g1, g2 = one_node_graph(g1_id, shared), one_node_graph(g2_id, shared)
    pipeline = Pipeline("p")
    pipeline.add_graph(g1)
    pipeline.add_graph(g2)
    return shared, g1, g2, pipeline


def ids(params) -> set[int]:
    return {id(p) for p in params}


# ------------------------------------------------------------------ check 27 / 28
def test_check27_shared_block_listed_once_and_not_when_all_users_frozen() -> None:
    shared = TinyMLP("shared")
    graph = Graph("g")
    graph.add_node("a", shared)
    graph.add_node("b", shared)
    own = set(map(id, shared.module.parameters()))
    assert len(list(graph.trainable_parameters())) == 4 and ids(graph.trainable_parameters()) == own

    graph.set_trainable("b", False)  # one trainable user, one frozen: listed once
    params = list(graph.trainable_parameters())
    assert len(params) == 4 and ids(params) == own
    assert graph.trainable_nodes == ["a"] and not graph.is_trainable("b")

    graph.set_trainable("a", False)  # all users frozen: not listed
    assert list(graph.trainable_parameters()) == []
    assert not shared.frozen  # freezing a use site does not freeze the block

    with pytest.raises(KeyError, match="no node 'zz'"):
        graph.set_trainable("zz", False)


def test_check27_across_graphs_of_a_pipeline() -> None:
    _, _, _, pipeline = shared_in_two_graphs("shared", "g1", "g2")
    pipeline.set_trainable("g2", False)
    assert len(list(pipeline.trainable_parameters())) == 4
    pipeline.freeze_others("g2")
    assert pipeline.trainable_nodes == ["g2"] and len(list(pipeline.trainable_parameters())) == 4
    pipeline.set_trainable("g2", False)
    assert list(pipeline.trainable_parameters()) == []


def test_check28_gradient_of_a_shared_linear_is_the_sum_over_its_sites() -> None:
    shared = LinearBlock("lin")
    graph = Graph("two_sites")
    graph.add_node("site1", shared)
    graph.add_node("site2", shared)
    graph.expose_input("site1", "x", "x1")
    graph.expose_input("site2", "x", "x2")
    graph.expose_output("site1", "y", "y1")
    graph.expose_output("site2", "y", "y2")
    x1, x2 = torch.randn(5, 3), torch.randn(5, 3)
    weight = shared.module.weight

    def site_grad(loss_of) -> torch.Tensor:
        weight.grad = None
        loss_of(graph.run({"x1": x1, "x2": x2}, training=True)).backward()
        return weight.grad.clone()

    g1 = site_grad(lambda out: (out["y1"] ** 2).sum())
    g2 = site_grad(lambda out: (out["y2"] * 3).sum())
    both = site_grad(lambda out: (out["y1"] ** 2).sum() + (out["y2"] * 3).sum())
    torch.testing.assert_close(both, g1 + g2)
    assert len(list(graph.trainable_parameters())) == 2  # weight and bias, once


# ------------------------------------------------------------------ LoRA: shared and per context
def test_shared_adapter_is_one_adapter_for_every_use() -> None:
    shared, g1, g2, pipeline = shared_in_two_graphs("shared", "g1", "g2")
    x = torch.randn(3, 4)
    base = g1.run({"x": x})["y"]
    lora = apply_lora(pipeline, rank=2, name="style", init_lora_weights=False)
    assert [a.name for a in lora.adapters] == ["style"] and len(lora.adapters[0].sites) == 2
    y1, y2 = g1.run({"x": x})["y"], g2.run({"x": x})["y"]
    torch.testing.assert_close(y1, y2)
    assert not torch.allclose(y1, base)
    # optimizer: adapter params only, once; base frozen
    assert ids(pipeline.trainable_parameters()) == ids(lora.parameters())
    assert all(not p.requires_grad for n, p in shared.module.named_parameters() if "lora_" not in n)
    assert lora.num_parameters() == (2 * 4 + 8 * 2) + (2 * 8 + 4 * 2)  # rank 2 on Linear(4,8), Linear(8,4)


def test_check34_per_context_adapters_on_one_base(tmp_path: Path) -> None:
    shared, g1, g2, pipeline = shared_in_two_graphs("base_net", "G1", "G2")
    x = torch.randn(3, 4)
    base = g1.run({"x": x})["y"]
    l1 = apply_lora(g1, rank=2, name="g1", when={"graph_id": "G1"}, init_lora_weights=False)
    l2 = apply_lora(g2, rank=2, name="g2", when={"graph_id": "G2"}, init_lora_weights=False)
    assert lora_adapters_of(shared) == ["g1", "g2"]
    y1, y2 = g1.run({"x": x})["y"], g2.run({"x": x})["y"]
    assert not torch.allclose(y1, y2), "G1 and G2 must differ: each runs its own adapter"
    assert not torch.allclose(y1, base) and not torch.allclose(y2, base)
    torch.testing.assert_close(shared.module(x), base)  # outside any graph: no rule → bare base
    with call_context(graph_id="G2"):
        torch.testing.assert_close(shared.module(x), y2)

    # the base once plus two adapter files
    pipeline.save(tmp_path / "base")
    weight_files = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "base").rglob("*.safetensors"))
    assert weight_files == ["base/shared/base_net.safetensors"]
    assert not any("lora" in k for k in load_file(tmp_path / "base/shared/base_net.safetensors"))
    written = l1.save(tmp_path / "adapters") + l2.save(tmp_path / "adapters")
    assert sorted(p.name for p in written) == ["lora_g1.json", "lora_g1.safetensors", "lora_g2.json", "lora_g2.safetensors"]
    meta = json.loads((tmp_path / "adapters/lora_g1.json").read_text())
    assert meta["kind"] == "lora" and meta["blocks"]["base_net"]["when"] == [{"graph_id": "G1"}]

    # a fresh process's view: base from its files, adapters from theirs → the same outputs
    loaded = Pipeline.load(tmp_path / "base", registry=REGISTRY)
    G1, G2 = loaded.get_graph("G1"), loaded.get_graph("G2")
    assert G1.get_node("net").block is G2.get_node("net").block
    torch.testing.assert_close(G1.run({"x": x})["y"], base)
    again = load_lora(loaded, tmp_path / "adapters")
    assert sorted(a.name for a in again.adapters) == ["g1", "g2"]
    torch.testing.assert_close(G1.run({"x": x})["y"], y1)
    torch.testing.assert_close(G2.run({"x": x})["y"], y2)


def test_adapters_per_node_within_one_graph() -> None:
    shared = TinyMLP("shared")
    graph = Graph("g")
    graph.add_node("author", shared)
    graph.add_node("architect", shared)
    for n in ("author", "architect"):
        graph.expose_input(n, "x", f"{n}_x")
        graph.expose_output(n, "y", f"{n}_y")
    apply_lora(graph, name="lora_author", when={"node_id": "author"}, init_lora_weights=False)
    apply_lora(graph, name="lora_architect", when={"node_id": "architect"}, init_lora_weights=False)
    x = torch.randn(2, 4)
    out = graph.run({"author_x": x, "architect_x": x})
    assert not torch.allclose(out["author_y"], out["architect_y"])
    with call_context(node_id="author"):
        torch.testing.assert_close(shared.module(x), out["author_y"])


def test_node_id_is_set_per_node_and_restored_after_a_run_even_on_error() -> None:
    from worldgen.adapters import current_call_context
    from worldgen.engine.graph_block import GraphBlock

    seen: list[tuple[str | None, str | None]] = []

    class Probe(TinyMLP):
        block_type = "test/probe"

        def forward(self, inputs):
            ctx = current_call_context()
            seen.append((ctx.get("graph_id"), ctx.get("node_id")))
            if inputs["x"] is None:
                raise RuntimeError("boom")
            return super().forward(inputs)

    inner = one_node_graph("inner", Probe("p"), node_id="deep")
    outer = Graph("outer")
    outer.add_node("first", Probe("q"), auto_connect=False)
    outer.add_node("wrap", GraphBlock(inner, "wrap"), auto_connect=False)
    outer.add_node("last", Probe("r"), auto_connect=False)
    outer.add_edge("first", "y", "wrap", "x")
    outer.add_edge("wrap", "y", "last", "x")
    outer.expose_input("first", "x", "x")
    outer.expose_output("last", "y", "y")
    with call_context(node_id="caller"):
        outer.run({"x": torch.randn(2, 4)})
        assert current_call_context()["node_id"] == "caller"  # the run's node ids do not leak out
        with pytest.raises(RuntimeError, match="boom"):
            outer.run({"x": None})
        assert current_call_context()["node_id"] == "caller"
    assert seen[:3] == [("outer", "first"), ("inner", "deep"), ("outer", "last")]
    assert "node_id" not in current_call_context()


def test_remote_graph_of_a_pipeline_gets_no_lora_and_gives_no_parameters() -> None:
    pipeline = Pipeline("p")
    pipeline.add_graph(one_node_graph("here", TinyMLP("here")))
    pipeline.add_graph(one_node_graph("there", TinyMLP("there", config={"seed": 2})))
    pipeline.set_endpoint("there", "http://127.0.0.1:9")  # never called here
    stage = StageGraph("s")
    stage.add_pipeline(pipeline, "p")
    assert ids(trainable_parameters(stage)) == ids(pipeline.trainable_parameters())
    lora = apply_lora(stage, rank=2, name="x")
    assert [a.block.block_id for a in lora.adapters] == ["here"]
    assert any(path == "p.there" and "remote graph" in why for path, why in lora.skipped)
    assert lora_adapters_of(pipeline.get_graph("there").get_node("net").block) == []


def test_remote_stage_nodes_and_stages_get_no_lora_and_give_no_parameters() -> None:
    here, there = TinyMLP("here"), TinyMLP("there", config={"seed": 2})
    stage = StageGraph("s")
    stage.add_pipeline(one_node_graph("here", here), "here")
    stage.add_pipeline(one_node_graph("there", there), "there")
    stage.set_node_endpoint("there", "http://127.0.0.1:9")  # never called here
    assert ids(trainable_parameters(stage)) == ids(stage.trainable_parameters()) == ids(here.module.parameters())
    lora = apply_lora(stage, rank=2, name="x")
    assert [a.block.block_id for a in lora.adapters] == ["here"]
    assert any(path == "there" and "remote stage node" in why for path, why in lora.skipped)
    assert lora_adapters_of(there) == []

    stage.set_endpoint("http://127.0.0.1:9")  # the whole stage served elsewhere
    assert list(stage.trainable_parameters()) == [] == trainable_parameters(stage)


def test_second_default_adapter_is_an_error_naming_the_block() -> None:
    block = TinyMLP("unet_like")
    graph = one_node_graph("g", block)
    apply_lora(graph, name="a")
    with pytest.raises(AdapterError, match="'unet_like'.*'a' is already the default"):
        apply_lora(graph, name="b")
    with pytest.raises(AdapterError, match="already has a LoRA adapter 'a'"):
        apply_lora(graph, name="a", when={"graph_id": "g"})


def test_targets_select_blocks_and_unknown_targets_list_the_eligible_ones() -> None:
    graph = Graph("g")
    graph.add_node("enc", TinyMLP("enc"))
    graph.add_node("dec", TinyMLP("dec", config={"seed": 1}))
    lora = apply_lora(graph, targets=["dec"], name="only_dec")
    assert [a.block.block_id for a in lora.adapters] == ["dec"]
    assert ("g.enc", "not in targets") in lora.skipped and graph.get_node("enc").block.frozen
    assert ids(graph.trainable_parameters()) == ids(lora.parameters())
    with pytest.raises(AdapterError, match=r"no eligible block matches targets \['nope'\].*g\.dec"):
        apply_lora(graph, targets=["nope"], name="x")
    assert ids(graph.trainable_parameters()) == ids(lora.parameters())  # the error froze nothing


def test_adapter_load_with_wrong_keys_names_block_and_keys() -> None:
    block = TinyMLP("b")
    lora = apply_lora(block, name="a", rank=2)
    state = lora.adapters[0].state_dict()
    state["9.lora_A.weight"] = state.pop("0.lora_A.weight")
    with pytest.raises(AdapterError, match=r"'a' on block 'b'.*missing keys \['0.lora_A.weight'\]"):
        lora.adapters[0].load_state_dict(state)


# ------------------------------------------------------------------ LoRA on a whole world
class ScriptedLLM(BaseChatModel):
    """An 'API' chat model: no weights, a reply computed from the prompt."""

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _generate(self, messages: list[BaseMessage], stop=None, run_manager=None, **kwargs: Any) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=AIMessage(reply_to(messages)))])


def reply_to(messages: list[BaseMessage]) -> str:
    """Echo the last user message; UPPERCASE if the system says so; end as the demos end."""
    text = str(messages[-1].content)
    system = " ".join(str(m.content) for m in messages if isinstance(m, SystemMessage))
    if "UPPERCASE" in system:
        text = text.upper()
    demos = [str(m.content) for m in messages[:-1] if isinstance(m, AIMessage)]
    if demos and demos[-1].endswith("!"):
        text += "!"
    return text


def tiny_world(tmp_path: Path):
    from worldgen import World
    from worldgen.agents.philosopher import Philosopher

    net = TinyMLP("painter", config={"seed": 3})
    helper = TinyMLP("helper", config={"seed": 4})
    sg = StageGraph("creator_sg")
    sg.add_pipeline(one_node_graph("paint", net))
    sg.add_pipeline(one_node_graph("touch_up", helper))
    sg.set_state_contract([2], [3])
    stages = {
        "philosopher": Philosopher(ScriptedLLM()),
        "author": lambda s: {"block5": "it happened"},
        "world_update": lambda s: {},
        "development": lambda s: {"block1": "intent"},
        "architect": lambda s: {"block2": "draw it"},
        "creator": sg.as_stage("creator"),
    }
    return World(stages, root=tmp_path / "world"), sg, net, helper


def test_check33_lora_world_freezes_bases_and_optimizer_gets_adapters_only(tmp_path: Path) -> None:
    world, sg, net, helper = tiny_world(tmp_path)
    try:
        everything = [p for b in (net, helper) for p in b.module.parameters()]
        lora = apply_lora(world, rank=2, name="world", prompt_adapters=True)
        assert isinstance(lora, LoraSet) and {a.block.block_id for a in lora.adapters} == {"painter", "helper"}
        # base frozen: every pre-existing weight has requires_grad False
        assert all(not p.requires_grad for p in everything)
        # API model: a prompt adapter (no torch params), never a weight LoRA
        philosopher = world.stages["philosopher"].impl
        assert isinstance(philosopher.llm, PromptAdaptedChatModel)
        assert philosopher.llm.adapter.name == "philosopher_world"
        assert list(philosopher.llm.trainable_parameters()) == []
        assert any(path == "philosopher" and "prompt adapter" in why for path, why in lora.skipped)
        # the optimizer holds LoRA (and prompt-adapter) params only
        params = trainable_parameters(world)
        assert ids(params) == ids(lora.parameters()) and len(params) == 8
        optimizer = torch.optim.SGD(lora.parameters(), lr=0.1)
        before = {(b.block_id, n): p.detach().clone() for b in (net, helper) for n, p in b.module.named_parameters()}
        pipeline = sg.get_node("paint")
        x, target = torch.randn(8, 4), torch.randn(8, 4)
        for _ in range(2):  # lora_B starts at zero, so step 1 moves B only, step 2 A as well
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(pipeline.run({"x": x}, training=True)["y"], target)
            loss.backward()
            optimizer.step()
        changed = {n for n, p in net.module.named_parameters() if not torch.equal(p, before["painter", n])}
        assert changed == {n for n, _ in net.module.named_parameters() if "lora_" in n}  # adapters only, all of them
        assert all(torch.equal(p, before["helper", n]) for n, p in helper.module.named_parameters())  # not run
        config = lora.config()  # the two kinds stay apart
        assert {a["kind"] for a in config["lora"]} == {"lora"} and [p["kind"] for p in config["prompt"]] == ["prompt"]
        assert lora.prompt_adapters == [philosopher.llm.adapter]
        philosopher.llm.adapter.load_state_dict({"instruction": "Describe briefly.", "demos": []})
        names = sorted(p.name for p in lora.save(tmp_path / "adapters"))
        assert names == ["lora_world.json", "lora_world.safetensors", "prompt_philosopher_world.json"]
        tuned = pipeline.run({"x": x})["y"]
    finally:
        world.close()
    # a fresh world of the same config gets both kinds back from the files
    world2, sg2, _, _ = tiny_world(tmp_path / "again")
    try:
        again = load_lora(world2, tmp_path / "adapters")
        assert [a.name for a in again.adapters] == ["world", "world"]
        torch.testing.assert_close(sg2.get_node("paint").run({"x": x})["y"], tuned)
        llm = world2.stages["philosopher"].impl.llm
        assert isinstance(llm, PromptAdaptedChatModel) and llm.adapter.instruction == "Describe briefly."
    finally:
        world2.close()


def test_trainable_stages_and_freeze_others_on_a_world(tmp_path: Path) -> None:
    world, sg, net, helper = tiny_world(tmp_path)
    try:
        assert ids(trainable_parameters(world)) == ids([*net.module.parameters(), *helper.module.parameters()])
        frozen = freeze_others(sg, ["paint"])
        assert frozen == ["touch_up.net"] and helper.frozen and not net.frozen
        assert ids(trainable_parameters(world)) == ids(net.module.parameters())
        trainable_stages(world, ["philosopher"])  # the creator's blocks all go
        assert trainable_parameters(world) == []
        with pytest.raises(KeyError, match="no part \\['nowhere'\\]"):
            trainable_stages(world, ["nowhere"])
    finally:
        world.close()


def test_world_parameters_follow_the_controls_of_the_levels_below(tmp_path: Path) -> None:
    world, sg, net, helper = tiny_world(tmp_path)
    try:
        sg.set_training(["paint"])  # the stage graph's own control
        assert ids(trainable_parameters(world)) == ids(sg.trainable_parameters()) == ids(net.module.parameters())
        sg.set_training(None)
        sg.get_node("touch_up").get_graph("touch_up").set_trainable("net", False)  # a graph's, two levels down
        assert ids(trainable_parameters(world)) == ids(net.module.parameters())
        assert not helper.frozen  # a control leaves the site out; it does not freeze the block
    finally:
        world.close()


def denoise_graph(unet: TorchBlock) -> Graph:
    """One UNet backbone node, its ports exposed as the graph's."""
    graph = Graph("denoise")
    graph.add_node("unet", unet, auto_connect=False)
    for port in ("latent", "timestep", "condition"):
        graph.expose_input("unet", port, port)
    graph.expose_output("unet", "pred", "pred")
    return graph


def test_lora_on_the_tiny_diffusers_unet(tiny_sd: Path, tmp_path: Path) -> None:
    from worldgen.blocks.diffusion import UNet2DConditionBackbone

    # share=False: the pool's UNet is used by other tests; LoRA goes on a private copy
    unet = UNet2DConditionBackbone("unet", config={"model_id": str(tiny_sd), "share": False})
    graph = denoise_graph(unet)
    inputs = {"latent": torch.randn(1, 4, 8, 8), "timestep": torch.tensor([10]), "condition": torch.randn(1, 5, 32)}
    base = graph.run(inputs)["pred"]
    n_base = sum(p.numel() for p in unet.module.parameters())
    lora = apply_lora(graph, targets="backbone", rank=2, modules=["to_q", "to_k", "to_v", "to_out.0"], name="unet_style")
    assert 0 < lora.num_parameters() < n_base // 10
    assert ids(graph.trainable_parameters()) == ids(lora.parameters())
    torch.testing.assert_close(graph.run(inputs)["pred"], base)  # peft's default init: B = 0
    optimizer = torch.optim.Adam(lora.parameters(), lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad()
        graph.run(inputs, training=True)["pred"].pow(2).mean().backward()
        optimizer.step()
    tuned = graph.run(inputs)["pred"]
    assert not torch.allclose(tuned, base)
    lora.save(tmp_path / "ad")
    assert sorted(p.name for p in (tmp_path / "ad").iterdir()) == ["lora_unet_style.json", "lora_unet_style.safetensors"]
    # the base's state dict keeps diffusers' own keys, so the base checkpoint is unchanged
    assert set(unet.state_dict()) == set(UNet2DConditionBackbone(
        "u2", config={"model_id": str(tiny_sd), "share": False}).state_dict())

    graph2 = denoise_graph(UNet2DConditionBackbone("unet", config={"model_id": str(tiny_sd), "share": False}))
    load_lora(graph2, tmp_path / "ad")
    torch.testing.assert_close(graph2.run(inputs)["pred"], tuned)


# ------------------------------------------------------------------ prompt adapters
TRAIN = [("apple", "APPLE!"), ("river", "RIVER!"), ("stone", "STONE!"), ("cloud", "CLOUD!"), ("ember", "EMBER!")]


def similarity(prediction: str, target: str) -> float:
    return difflib.SequenceMatcher(None, prediction, target).ratio()


def test_prompt_adapter_search_improves_the_metric() -> None:
    model = ScriptedLLM()
    adapter = PromptAdapter("author")
    result = optimize_prompt(
        adapter, model, TRAIN, similarity,
        instructions=["Be brief.", "Answer in UPPERCASE."], max_demos=2, seed=0,
    )
    assert result.method == "greedy_demos+instruction" and result.improved
    assert result.score == pytest.approx(1.0) and result.baseline < 0.5
    assert adapter.instruction == "Answer in UPPERCASE." and 1 <= len(adapter.demos) <= 2
    assert [h["step"] for h in result.history][:2] == ["instruction", "demo"]
    # deterministic for a seed
    again = PromptAdapter("author")
    optimize_prompt(again, model, TRAIN, similarity, instructions=["Be brief.", "Answer in UPPERCASE."],
                    max_demos=2, seed=0)
    assert again.state_dict() == adapter.state_dict()
    # the wrapped model now answers as trained, on an unseen word
    wrapped = adapter.wrap(model)
    assert isinstance(wrapped, PromptAdaptedChatModel)
    assert wrapped.invoke([HumanMessage("tiger")]).content == "TIGER!"


def test_check32_prompt_adapter_exposes_no_torch_params_and_serialises_plainly() -> None:
    adapter = PromptAdapter("architect", "Answer in UPPERCASE.", [("a", "A!")])
    assert isinstance(adapter, Adapter) and adapter.kind == "prompt"
    assert list(adapter.trainable_parameters()) == [] and adapter.num_parameters() == 0
    wrapped = adapter.wrap(ScriptedLLM())
    assert list(wrapped.trainable_parameters()) == []
    config = adapter.config()
    assert json.loads(json.dumps(config)) == config  # plain data
    assert "api_key" not in json.dumps(config)
    back = PromptAdapter.from_config(config)
    assert back.state_dict() == adapter.state_dict() and back.name == "architect"
    with pytest.raises(AdapterError, match="kind 'lora' is not 'prompt'"):
        PromptAdapter.from_config({"kind": "lora", "name": "x"})
    # a caller's own system message is kept after the instruction
    sent = adapter.apply([SystemMessage("You are the architect."), HumanMessage("b")])
    assert isinstance(sent[0], SystemMessage) and sent[0].content == "Answer in UPPERCASE.\n\nYou are the architect."
    assert [type(m).__name__ for m in sent[1:]] == ["HumanMessage", "AIMessage", "HumanMessage"]


def test_prompt_adapter_wraps_a_plain_runnable() -> None:
    seen: list[list[BaseMessage]] = []

    def echo(messages: list[BaseMessage]) -> str:
        seen.append(messages)
        return reply_to(messages)

    wrapped = PromptAdapter("p", "Answer in UPPERCASE.").wrap(echo)
    assert wrapped.invoke([HumanMessage("hi")]) == "HI" and isinstance(seen[0][0], SystemMessage)


def test_base_weights_keep_their_names_under_lora() -> None:
    block, other = TinyMLP("a"), TinyMLP("b", config={"seed": 5})
    lora = apply_lora(block, name="x", rank=2, init_lora_weights=False)
    adapter_before = lora.adapters[0].state_dict()
    assert set(block.state_dict()) == set(other.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    block.load_state_dict(other.state_dict())  # strict: a base checkpoint loads into the LoRA'd block
    for key, value in other.state_dict().items():
        torch.testing.assert_close(block.state_dict()[key], value)
    for key, value in lora.adapters[0].state_dict().items():
        torch.testing.assert_close(value, adapter_before[key])  # adapters untouched
    # nested in a bigger module, the names keep their prefix
    parent = torch.nn.Sequential(block.module)
    assert set(parent.state_dict()) == {f"0.{k}" for k in other.state_dict()}


def test_adapters_chosen_by_role_and_api_blocks_get_no_weight_lora() -> None:
    shared = TinyMLP("llm_local")
    graph = one_node_graph("g", shared)
    apply_lora(graph, name="lora_author", when={"role": "author"}, init_lora_weights=False)
    apply_lora(graph, name="lora_architect", when={"role": "architect"}, init_lora_weights=False)
    x = torch.randn(2, 4)
    base = graph.run({"x": x})["y"]  # no role in the context: the bare base
    with call_context(stage_id="author", role="author"):
        author = graph.run({"x": x})["y"]
    with call_context(stage_id="architect", role="architect"):
        architect = graph.run({"x": x})["y"]
    assert not torch.allclose(author, architect) and not torch.allclose(author, base)

    remote = TinyMLP("remote_llm", config={"backend": "api"})
    lora = apply_lora(one_node_graph("h", remote), name="x")
    assert lora.adapters == [] and lora.skipped == [("h.net", "API block: no weight LoRA (use a prompt adapter)")]
    assert remote.frozen and list(remote.trainable_parameters()) == []


def test_check31_world_methods_follow_the_config_training_keys(tmp_path: Path) -> None:
    from worldgen.world_config import LoraPolicy

    world, sg, net, helper = tiny_world(tmp_path / "a")
    try:
        world.config.trainable_stages = ["philosopher"]  # the creator's blocks are the only weights
        assert world.trainable_parameters() == [] and net.frozen and helper.frozen
    finally:
        world.close()
    world, sg, net, helper = tiny_world(tmp_path / "b")
    try:
        world.config.lora = LoraPolicy(rank=2, targets=["painter"])
        lora = world.apply_lora(name="world")
        assert {a.block.block_id for a in lora.adapters} == {"painter"}
        assert ids(world.trainable_parameters()) == ids(lora.parameters())
        assert all(not p.requires_grad for p in helper.module.parameters())
    finally:
        world.close()
