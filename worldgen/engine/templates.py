"""Graph templates: named builders that assemble a ready-to-run `Graph` from a few parameters.

``graph_from_template("text_to_image", checkpoint=folder)`` gives a Stable Diffusion graph
whose denoising loop is a graph cycle; `register_graph_template` adds more.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from worldgen.engine.graph import Graph

__all__ = ["graph_from_template", "graph_templates", "register_graph_template", "text_to_image"]

TemplateBuilder = Callable[..., Graph]
F = TypeVar("F", bound=TemplateBuilder)

_TEMPLATES: dict[str, TemplateBuilder] = {}


def register_graph_template(name: str, *, replace: bool = False) -> Callable[[F], F]:
    """Decorator: register ``builder(**params) -> Graph`` under `name`."""

    def decorate(builder: F) -> F:
        if name in _TEMPLATES and _TEMPLATES[name] is not builder and not replace:
            raise ValueError(f"graph template {name!r} is already registered ({_TEMPLATES[name]!r})")
        _TEMPLATES[name] = builder
        return builder

    return decorate


def graph_templates() -> list[str]:
    """Registered template names, sorted."""
    return sorted(_TEMPLATES)


def graph_from_template(name: str, *, validate: bool = True, **params: Any) -> Graph:
    """Build the graph of template `name` with `params`; `validate` raises on a broken result."""
    try:
        builder = _TEMPLATES[name]
    except KeyError:
        raise KeyError(f"unknown graph template {name!r}; registered templates: {graph_templates()}") from None
    graph = builder(**params)
    if validate:
        graph.validate(strict=True)
    return graph


@register_graph_template("text_to_image")
def text_to_image(
    *,
    checkpoint: str | Path,
    solver: str | None = "ddim",
    guidance: str | None = "guidance/cfg",
    guidance_scale: float = 7.5,
    num_inference_steps: int = 20,
    height: int = 64,
    width: int = 64,
    seed: int | None = 0,
    eta: float = 0.0,
    scheduler_kwargs: Mapping[str, Any] | None = None,
    graph_id: str = "text_to_image",
) -> Graph:
    """Stable Diffusion from a local diffusers folder, step for step like `StableDiffusionPipeline`.

    Inputs: ``prompt`` (str), ``negative_prompt`` (str, default ""; only with guidance),
    ``seed`` (int, default `seed`). Output: ``image``, a float tensor ``[1, 3, H, W]`` in
    [0, 1] (`worldgen.blocks.diffusion.to_pil` converts it).

    `solver` is a scheduler alias (``"ddim"``, ``"euler"``, ``"dpm++"``…), a diffusers
    scheduler class name, or None for the folder's own. `guidance` is a guidance block type
    taking ``guidance_scale``; with None or a scale ≤ 1 there is no unconditional branch
    (as in the pipeline). The denoising loop is the cycle
    ``carry → [cfg_batch] → backbone → [cfg_split → guidance] → solver → carry``, run once
    per scheduler timestep (``metadata["num_loop_steps"]``, = `num_inference_steps` for
    first-order schedulers); ``carry`` starts it from the ``start`` node's seeded noise.
    """
    import worldgen.blocks.diffusion  # noqa: F401  registers the block types used below

    model = {"model_id": str(checkpoint)}
    schedule = {
        **model, "scheduler": solver, "num_inference_steps": num_inference_steps,
        "scheduler_kwargs": dict(scheduler_kwargs or {}),
    }
    cfg = guidance is not None and guidance_scale > 1.0
    graph = Graph(graph_id, graph_kind="diffusion")

    def add(node_id: str, block: Any, config: Mapping[str, Any] | None = None) -> Any:
        graph.add_node(node_id, block, config=config, auto_connect=False)  # wired explicitly below
        return graph.get_node(node_id).block

    backbone = add("backbone", "backbone/unet2d_condition", model)
    codec = add("codec", "codec/vae", model)
    conditioner = add("conditioner", "conditioner/clip_text", model)
    add("tokenizer", "tokenizer/clip", model)
    solver_block = add("solver", "solver/diffusers", {**schedule, "eta": eta})
    add("start", "noise/initial", {
        **schedule, "seed": seed, "dtype": str(conditioner.module.dtype).removeprefix("torch."),
        "shape": _latent_shape(backbone.module.config.in_channels, codec.scale_factor, height, width),
    })
    add("carry", "loop/carry", {"channels": ["latent", "timestep", "model_input"]})

    _connect(graph, "tokenizer.token_ids", "conditioner.input")
    for channel, source in (("latent", "next_latent"), ("timestep", "next_timestep"), ("model_input", "model_input")):
        _connect(graph, f"start.{channel}", f"carry.{channel}_init")
        _connect(graph, f"solver.{source}", f"carry.{channel}_next")
    _connect(graph, "start.generator", "solver.generator")
    _connect(graph, "carry.latent", "solver.latent")
    _connect(graph, "carry.timestep", "solver.timestep")
    _connect(graph, "carry.timestep", "backbone.timestep")
    _connect(graph, "solver.next_latent", "codec.decode_latent")

    if cfg:
        # one UNet call on the batch [uncond, cond], as the pipeline does
        add("negative_tokenizer", "tokenizer/clip", {**model, "defaults": {"text": ""}})
        add("negative_conditioner", conditioner)  # the same text encoder, a second node
        add("condition", "batch/concat")
        add("cfg_batch", "batch/repeat", {"times": 2})
        add("cfg_split", "batch/split", {"names": ["uncond", "cond"]})
        add("guidance", guidance, {"guidance_scale": guidance_scale})
        _connect(graph, "negative_tokenizer.token_ids", "negative_conditioner.input")
        _connect(graph, "negative_conditioner.embedding", "condition.items")  # uncond first
        _connect(graph, "conditioner.embedding", "condition.items")
        _connect(graph, "condition.batch", "backbone.condition")
        _connect(graph, "carry.model_input", "cfg_batch.x")
        _connect(graph, "cfg_batch.batch", "backbone.latent")
        _connect(graph, "backbone.pred", "cfg_split.batch")
        _connect(graph, "cfg_split.uncond", "guidance.pred_uncond")
        _connect(graph, "cfg_split.cond", "guidance.pred_cond")
        _connect(graph, "guidance.pred_guided", "solver.pred")
        graph.expose_input("negative_tokenizer", "text", "negative_prompt")
    else:
        _connect(graph, "conditioner.embedding", "backbone.condition")
        _connect(graph, "carry.model_input", "backbone.latent")
        _connect(graph, "backbone.pred", "solver.pred")

    graph.expose_input("tokenizer", "text", "prompt")
    graph.expose_input("start", "seed", "seed")
    graph.expose_output("codec", "decode_image", "image")
    graph.metadata.update(num_loop_steps=len(solver_block.timesteps), loop_order=["carry"])
    return graph


def _latent_shape(channels: int, scale: int, height: int, width: int) -> list[int]:
    if height % scale or width % scale:
        raise ValueError(f"height and width must be multiples of the VAE scale factor {scale}, got {height}x{width}")
    return [1, channels, height // scale, width // scale]


def _connect(graph: Graph, source: str, target: str) -> None:
    """``graph.add_edge`` from ``"node.port"`` strings."""
    graph.add_edge(*source.split(".", 1), *target.split(".", 1))
