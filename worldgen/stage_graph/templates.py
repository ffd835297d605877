"""Stage templates: ready-made stages by name (`stage_from_template`), such as the canon
Creator as a stage graph (`creator_stage`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from worldgen.engine.graph import Graph
from worldgen.stage import Stage
from worldgen.stage_graph.graph import StageGraph


class _SlotCreator:
    """Runs the stage graph once per image slot of block 2 and gathers the refs in block 3."""

    def __init__(self, stage_graph: StageGraph, seed: int | None, generator: str) -> None:
        self.stage_graph = stage_graph
        self.seed = seed
        self.generator = generator

    def __call__(self, state: dict[str, Any]) -> dict[str, Any]:
        from worldgen.agents.creator import slot_seed
        from worldgen.state import GenerationConfig

        config = GenerationConfig.model_validate(state.get("block2") or {})
        items: list[dict[str, Any]] = []
        for slot in config.slots:
            if slot.kind != "image":
                raise ValueError(f"slot {slot.name!r} has kind {slot.kind!r}; this creator stage renders image slots")
            params = dict(slot.params)
            seed = int(params["seed"]) if "seed" in params else (
                self.seed if self.seed is not None else slot_seed(slot.prompt, params))
            one = {"slots": [{**slot.model_dump(mode="json"), "params": {**params, "seed": seed}}]}
            update = self.stage_graph({**state, "block2": one})
            for item in update["block3"]["items"]:
                meta = {**item.get("meta", {}), "generator": self.generator, "seed": seed, "prompt": slot.prompt}
                items.append({**item, "slot": slot.name, "meta": meta})
        return {"block3": {"items": items}}


def _slot_seed(block2: Mapping[str, Any] | None) -> int | None:
    slots = (block2 or {}).get("slots") or []
    return int(slots[0]["params"]["seed"]) if slots and "seed" in slots[0].get("params", {}) else None


def creator_stage(checkpoint: Any, *, seed: int | None = None, node_id: str = "text_to_image", **params: Any) -> Stage:
    """The canon Creator as a stage graph: each image slot of block 2 → ``text_to_image``
    graph (``prompt``, ``seed``) → image → an artifact ref in block 3.

    `params` go to the ``text_to_image`` template (``num_inference_steps``, ``height``,
    ``width``, ``guidance_scale``, ``solver``…); the image size is fixed by them (a slot's
    ``width``/``height`` are ignored). The seed is the slot's ``params["seed"]``, else
    `seed`, else derived from the prompt as the Creator agent does. Text slots are an
    error. The returned stage has ``stage.stage_graph`` (to validate or inspect it)."""
    graph = Graph.from_template("text_to_image", checkpoint=checkpoint, graph_id=node_id, **params)
    sg = StageGraph("creator_stage", description="image slots of block 2 rendered by text_to_image")
    sg.add_pipeline(graph, node_id)
    sg.set_state_contract(
        [2], [3],
        mapping_input=[("block2", node_id, "prompt"), ("block2", node_id, "seed", _slot_seed)],
        mapping_output=[("block3", node_id, "image")],
    )
    sg.validate(strict=True)
    stage = Stage("creator", _SlotCreator(sg, seed, f"stage_graph:text_to_image:{checkpoint}"), reads=(2,), writes=(3,),
                  name="creator_stage")
    stage.stage_graph = sg  # type: ignore[attr-defined]
    return stage


_STAGE_TEMPLATES: dict[str, Callable[..., Stage]] = {"creator_stage": creator_stage}


def stage_templates() -> list[str]:
    return sorted(_STAGE_TEMPLATES)


def stage_from_template(name: str, **params: Any) -> Stage:
    """A registered stage template (``"creator_stage"``) built with `params`."""
    if name not in _STAGE_TEMPLATES:
        raise ValueError(f"unknown stage template {name!r}: available: {', '.join(stage_templates())}")
    return _STAGE_TEMPLATES[name](**params)
