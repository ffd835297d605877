"""The model pool: one ref + load options → one instance, opt-out copies, threads, budget
(levels.md §5; §10 checks 23, 24, 26)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

import pytest
import torch

from worldgen.engine import Graph
from worldgen.local_models.pool import (
    ModelNotFoundError,
    ModelPool,
    default_pool,
    model_nbytes,
    resolve_pool,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def linear_loader(calls: list[int], size: int = 8, delay: float = 0.0):
    def load() -> torch.nn.Module:
        calls.append(1)
        if delay:
            time.sleep(delay)
        return torch.nn.Linear(size, size)

    return load


def _t2i(checkpoint: Path, graph_id: str) -> Graph:
    return Graph.from_template(
        "text_to_image", checkpoint=checkpoint, num_inference_steps=2, height=32, width=32,
        graph_id=graph_id,
    )


# ------------------------------------------------------------------ sharing in graphs
def test_two_graphs_from_one_checkpoint_share_modules(tiny_sd: Path, pool: ModelPool) -> None:
    a, b = _t2i(tiny_sd, "a"), _t2i(tiny_sd, "b")
    for node in ("backbone", "codec", "conditioner"):
        assert a.get_node(node).block is not b.get_node(node).block  # two blocks…
        assert a.get_node(node).block.module is b.get_node(node).block.module  # …one module
    assert a.get_node("tokenizer").block.tokenizer is b.get_node("tokenizer").block.tokenizer
    # the template's two conditioner nodes use one text encoder
    assert a.get_node("negative_conditioner").block.module is a.get_node("conditioner").block.module

    stats = pool.stats()
    assert stats["loads"] == 4  # unet, vae, text encoder, tokenizer: each once
    assert {m["subfolder"] for m in stats["models"]} == {"unet", "vae", "text_encoder", "tokenizer"}
    assert {m["ref"] for m in stats["models"]} == {str(tiny_sd.resolve())}
    assert stats["hits"] >= 4  # the second graph hit each (its negative tokenizer too)
    unet = next(m for m in stats["models"] if m["subfolder"] == "unet")
    assert unet["bytes"] == model_nbytes(a.get_node("backbone").block.module) > 0

    # a different spelling of the same folder is the same model
    c = _t2i(tiny_sd / ".." / tiny_sd.name, "c")
    assert c.get_node("backbone").block.module is a.get_node("backbone").block.module


def test_shared_graphs_give_identical_outputs(tiny_sd: Path, pool: ModelPool) -> None:
    a = _t2i(tiny_sd, "a")
    first = a.run({"prompt": "a red cube", "seed": 3})["image"]
    b = _t2i(tiny_sd, "b")
    assert torch.equal(b.run({"prompt": "a red cube", "seed": 3})["image"], first)


def test_share_false_gives_an_independent_copy(tiny_sd: Path, pool: ModelPool) -> None:
    from worldgen.blocks.diffusion import UNet2DConditionBackbone

    shared = UNet2DConditionBackbone(config={"model_id": str(tiny_sd)})
    again = UNet2DConditionBackbone(config={"model_id": str(tiny_sd)})
    copy = UNet2DConditionBackbone(config={"model_id": str(tiny_sd), "share": False})
    assert again.module is shared.module
    assert copy.module is not shared.module
    assert not {id(p) for p in copy.module.parameters()} & {id(p) for p in shared.module.parameters()}
    for (name, p), (_, q) in zip(shared.module.state_dict().items(), copy.module.state_dict().items()):
        assert torch.equal(p, q), name
    assert copy.to_config()["config"]["share"] is False  # the opt-out survives serialisation
    assert pool.stats()["unshared_loads"] == 1 and pool.stats()["loads"] == 1


# ----------------------------------------------------------------------- the pool API
def test_one_key_one_instance_and_options_in_the_key(pool: ModelPool) -> None:
    calls: list[int] = []
    load = linear_loader(calls)
    a = pool.get("model-x", load, subfolder="unet")
    assert pool.get("model-x", load, subfolder="unet") is a
    assert pool.get("model-x", load, subfolder="vae") is not a  # other options: another model
    half = pool.get("model-x", load, subfolder="unet", dtype=torch.float16)
    assert half is not a and next(half.parameters()).dtype == torch.float16
    assert pool.get("model-x", load, subfolder="unet", dtype="float16") is half
    assert len(calls) == 3
    unshared = pool.get("model-x", load, subfolder="unet", share=False)
    assert unshared is not a and len(calls) == 4
    assert pool.get("model-x", load, subfolder="unet") is a


def test_eight_threads_one_key_load_once(pool: ModelPool) -> None:
    calls: list[int] = []
    load = linear_loader(calls, delay=0.2)
    barrier = threading.Barrier(8)
    got: list[object] = []

    def ask() -> None:
        barrier.wait()
        got.append(pool.get("slow-model", load))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len(got) == 8 and all(g is got[0] for g in got)
    assert pool.stats()["loads"] == 1 and pool.stats()["hits"] >= 7


def test_loads_of_different_keys_do_not_wait_for_each_other(pool: ModelPool) -> None:
    calls: list[int] = []
    together = threading.Barrier(4, timeout=10)  # passes only if all four loads run at once
    load = linear_loader(calls)
    errors: list[BaseException] = []

    def get(i: int) -> None:
        try:
            pool.get(f"m{i}", lambda: (together.wait(), load())[1])
        except BaseException as exc:  # a serialised pool breaks the barrier
            errors.append(exc)

    threads = [threading.Thread(target=get, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(calls) == 4


def test_budget_evicts_the_least_recently_used_unheld_model(pool: ModelPool) -> None:
    calls: list[int] = []
    one = model_nbytes(torch.nn.Linear(8, 8))
    pool.set_budget(2 * one)
    a = pool.get("a", linear_loader(calls))
    pool.get("b", linear_loader(calls))
    assert pool.get("a", linear_loader(calls)) is a  # a is now the most recently used
    pool.get("c", linear_loader(calls))  # over budget: b (LRU) goes
    assert "b" not in pool and "a" in pool and "c" in pool
    stats = pool.stats()
    assert stats["evictions"] == 1 and stats["loads"] == 3 and stats["hits"] == 1
    assert stats["bytes"] == 2 * one and [m["ref"] for m in stats["models"]] == ["a", "c"]
    assert [m["bytes"] for m in stats["models"]] == [one, one]
    pool.get("b", linear_loader(calls))  # loads again, evicting a (now LRU)
    assert len(calls) == 4 and "a" not in pool


def test_a_held_model_is_never_evicted(pool: ModelPool, caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []
    one = model_nbytes(torch.nn.Linear(8, 8))
    pool.set_budget(one)
    with pool.hold("a"):
        a = pool.get("a", linear_loader(calls))
        with caplog.at_level(logging.WARNING, logger="worldgen.local_models.pool"):
            pool.get("b", linear_loader(calls))  # a is LRU but held; b was just loaded
        assert "a" in pool and "b" in pool
        assert "over budget" in caplog.text  # a warning, not an error
        assert next(m for m in pool.stats()["models"] if m["ref"] == "a")["held"]
    # released: back under budget by evicting the LRU one (a)
    assert "a" not in pool and "b" in pool
    lease = pool.lease("c", linear_loader(calls))
    pool.get("d", linear_loader(calls))
    assert "c" in pool  # leased
    lease.release()
    assert "c" not in pool and "d" in pool
    assert a is not None and pool.stats()["evictions"] == 3


def test_hold_by_object(pool: ModelPool) -> None:
    pool.set_budget(0)
    calls: list[int] = []
    with pool.hold("x"):
        x = pool.get("x", linear_loader(calls))
    assert "x" not in pool  # budget 0: dropped when released
    x = pool.get("x", linear_loader(calls))
    with pool.hold(x):
        pool.get("y", linear_loader(calls))
        assert "x" in pool


def test_missing_ref_names_ref_and_requester(tmp_path: Path, pool: ModelPool) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ModelNotFoundError, match="requested by 'backbone'") as info:
        pool.get(missing, cls=torch.nn.Linear, requested_by="backbone",
                 loader=lambda: open(missing / "model.safetensors"))  # noqa: SIM115
    assert str(missing) in str(info.value) and info.value.ref == str(missing)

    from worldgen.blocks.diffusion import UNet2DConditionBackbone

    with pytest.raises(FileNotFoundError, match=r"could not be loaded \(requested by 'my_unet'\)") as info:
        UNet2DConditionBackbone("my_unet", config={"model_id": str(missing)})
    assert str(missing) in str(info.value)
    assert pool.stats()["models"] == []


def test_aget_loads_off_the_event_loop(pool: ModelPool) -> None:
    calls: list[int] = []
    loop_thread: list[int] = []
    load_thread: list[int] = []

    def load() -> torch.nn.Module:
        load_thread.append(threading.get_ident())
        return linear_loader(calls)()

    async def main() -> tuple[object, object]:
        loop_thread.append(threading.get_ident())
        first, second = await asyncio.gather(pool.aget("async-model", load), pool.aget("async-model", load))
        return first, second

    first, second = asyncio.run(main())
    assert first is second and len(calls) == 1
    assert load_thread[0] != loop_thread[0]
    assert asyncio.run(pool.aget("async-model", load)) is first  # a hit needs no thread


def test_resolve_pool_from_langgraph_config(pool: ModelPool) -> None:
    from typing import TypedDict

    from langgraph.graph import END, START, StateGraph

    class S(TypedDict):
        found: object

    run_pool = ModelPool()
    seen: list[ModelPool] = []

    def node(state: S) -> dict:
        seen.append(resolve_pool())
        return {"found": 1}

    builder = StateGraph(S)
    builder.add_node("n", node)
    builder.add_edge(START, "n")
    builder.add_edge("n", END)
    app = builder.compile()
    app.invoke({"found": 0}, config={"configurable": {"model_pool": run_pool}})
    app.invoke({"found": 0})
    assert seen[0] is run_pool and seen[1] is pool
    assert resolve_pool() is pool is default_pool()  # outside a run: the default
    explicit = ModelPool()
    assert resolve_pool(explicit) is explicit  # even while empty (len 0)


# ------------------------------------------------- levels.md §10 checks 23, 24, 26
def _unet_node(model_id: Path, **extra: object) -> dict:
    return {"block_type": "backbone/unet2d_condition", "config": {"model_id": str(model_id), **extra}}


def _count_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every read of UNet weights from disk (the factory under the pool)."""
    from diffusers import UNet2DConditionModel

    calls: list[str] = []
    real = UNet2DConditionModel.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        calls.append(str(args[0]))
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "from_pretrained", classmethod(counting))
    return calls


def _no_duplicates(params) -> list[int]:
    ids = [id(p) for p in params]
    assert len(ids) == len(set(ids)), "a parameter is listed twice"
    return ids


def test_check23_two_nodes_on_one_ref_share_one_object_loaded_once(
    tiny_sd: Path, pool: ModelPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worldgen.blocks import global_registry

    calls = _count_loads(monkeypatch)
    built: list[str] = []
    factory = global_registry()._factories["backbone/unet2d_condition"]
    monkeypatch.setitem(global_registry()._factories, "backbone/unet2d_condition",
                        lambda *a, **k: (built.append("x"), factory(*a, **k))[1])
    # one block_id "X" in two nodes: one block object, its factory called once
    graph = Graph.from_config({"graph_id": "g", "nodes": {
        "a": {**_unet_node(tiny_sd), "block_id": "X"}, "b": {**_unet_node(tiny_sd), "block_id": "X"}}})
    a, b = graph.get_node("a").block, graph.get_node("b").block
    assert a is b and built == ["x"] and len(calls) == 1
    unique = {id(p) for p in a.module.parameters()}
    assert set(_no_duplicates(graph.trainable_parameters())) == unique

    # two blocks naming one checkpoint ref: the pool gives them one module, read once
    other = Graph.from_config({"graph_id": "h", "nodes": {"c": _unet_node(tiny_sd), "d": _unet_node(tiny_sd)}})
    c, d = other.get_node("c").block, other.get_node("d").block
    assert c.module is d.module is a.module and len(calls) == 1
    assert set(_no_duplicates(other.trainable_parameters())) == unique
    assert pool.stats()["loads"] == 1


def test_check24_two_graphs_of_a_pipeline_share_the_ref(
    tiny_sd: Path, pool: ModelPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worldgen.engine.pipeline import Pipeline

    calls = _count_loads(monkeypatch)
    first, second = _t2i(tiny_sd, "first"), _t2i(tiny_sd, "second")
    pipeline = Pipeline("p")
    pipeline.add_graph(first, "first")
    pipeline.add_graph(second, "second")
    for node in ("backbone", "codec", "conditioner"):
        assert first.get_node(node).block.module is second.get_node(node).block.module
    assert len(calls) == 1
    ids = _no_duplicates(pipeline.trainable_parameters())
    assert set(ids) == {id(p) for p in first.trainable_parameters()}


def test_check26_share_false_gives_distinct_objects_with_disjoint_params(
    tiny_sd: Path, pool: ModelPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_loads(monkeypatch)
    graph = Graph.from_config({"graph_id": "g", "nodes": {
        "shared": _unet_node(tiny_sd), "own": _unet_node(tiny_sd, share=False)}})
    shared, own = graph.get_node("shared").block, graph.get_node("own").block
    assert shared.module is not own.module and len(calls) == 2
    assert not {id(p) for p in shared.module.parameters()} & {id(p) for p in own.module.parameters()}
    assert len(_no_duplicates(graph.trainable_parameters())) == 2 * len(list(shared.module.parameters()))
    with torch.no_grad():  # training one copy leaves the other alone
        next(own.module.parameters()).add_(1.0)
    assert not torch.equal(next(own.module.parameters()), next(shared.module.parameters()))
    assert pool.stats()["loads"] == 1 and pool.stats()["unshared_loads"] == 1


# --------------------------------------------------------------------- model bytes
def test_model_nbytes_counts_the_model_inside_a_bundle(pool: ModelPool) -> None:
    from dataclasses import dataclass

    model = torch.nn.Linear(8, 8)
    one = model_nbytes(model)
    assert one == (8 * 8 + 8) * 4

    @dataclass
    class Loaded:
        model: torch.nn.Module
        tokenizer: object

    class FakePipeline:  # a diffusers pipeline exposes its modules as `components`
        @property
        def components(self) -> dict[str, object]:
            return {"unet": model, "tokenizer": object(), "scheduler": None}

    for bundle in [(model, object()), {"model": model, "tokenizer": "tok"}, Loaded(model, object()),
                   [model, model], FakePipeline()]:
        assert model_nbytes(bundle) == one, bundle  # shared tensors once, tokenizers 0
    assert model_nbytes("a tokenizer") == model_nbytes(None) == model_nbytes(object()) == 0

    # so the budget sees an LLM entry (model, tokenizer) and evicts it
    pool.set_budget(one)
    pool.get("llm", lambda: (torch.nn.Linear(8, 8), object()))
    assert pool.stats()["bytes"] == one
    pool.get("other", lambda: {"model": torch.nn.Linear(8, 8), "tokenizer": None})
    assert "llm" not in pool and pool.stats()["evictions"] == 1


def test_using_pool_sets_the_pool_for_blocks_and_threads(tiny_sd: Path, pool: ModelPool) -> None:
    from worldgen.blocks.diffusion import UNet2DConditionBackbone
    from worldgen.local_models.pool import using_pool

    private = ModelPool()
    with using_pool(private):
        assert resolve_pool() is private
        assert asyncio.run(asyncio.to_thread(resolve_pool)) is private  # follows worker threads
        UNet2DConditionBackbone(config={"model_id": str(tiny_sd)})  # blocks take no pool argument
    assert resolve_pool() is pool
    assert private.stats()["loads"] == 1 and pool.stats()["loads"] == 0


def test_a_missing_ref_names_the_ref_and_the_graph_node_that_asked() -> None:
    import worldgen.blocks.diffusion  # noqa: F401  registers the UNet block
    from worldgen.engine import Graph
    from worldgen.local_models.pool import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match=r"'/nonexistent/sd'.*node 'unet' of graph 'g'"):
        Graph("g").add_node("unet", "backbone/unet2d_condition", config={"model_id": "/nonexistent/sd"})
