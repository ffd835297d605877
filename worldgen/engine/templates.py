"""Graph and pipeline templates: named builders that assemble a ready-to-run `Graph` or
`Pipeline` from a few parameters.

``graph_from_template("text_to_image", checkpoint=folder)`` gives a Stable Diffusion graph
whose denoising loop is a graph cycle (without a checkpoint, the five-role stub graph of
levels.md §2); ``pipeline_from_template("generate_and_reconstruct",
checkpoint=folder)`` chains it with a VAE round trip. `register_graph_template` and
`register_pipeline_template` add more.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from worldgen.blocks.base import Block
from worldgen.blocks.registry import BlockRegistry
from worldgen.engine.graph import Graph

if TYPE_CHECKING:
    from worldgen.engine.pipeline import Pipeline

__all__ = [
    "TEXT_TO_IMAGE_EDGES", "diffusers_text_to_image", "generate_and_reconstruct", "graph_from_template",
    "graph_templates", "pipeline_from_template", "pipeline_templates", "register_graph_template",
    "register_pipeline_template", "stub_text_to_image", "text_to_image", "vae_reconstruct",
]

TemplateBuilder = Callable[..., Any]
F = TypeVar("F", bound=TemplateBuilder)

_TEMPLATES: dict[str, TemplateBuilder] = {}
_PIPELINE_TEMPLATES: dict[str, TemplateBuilder] = {}


def register_graph_template(name: str, *, replace: bool = False) -> Callable[[F], F]:
    """Decorator: register ``builder(**params) -> Graph`` under `name`."""
    return _registrar(_TEMPLATES, "graph", name, replace)


def register_pipeline_template(name: str, *, replace: bool = False) -> Callable[[F], F]:
    """Decorator: register ``builder(**params) -> Pipeline`` under `name`."""
    return _registrar(_PIPELINE_TEMPLATES, "pipeline", name, replace)


def graph_templates() -> list[str]:
    """Registered template names, sorted."""
    return sorted(_TEMPLATES)


def pipeline_templates() -> list[str]:
    """Registered pipeline template names, sorted."""
    return sorted(_PIPELINE_TEMPLATES)


def graph_from_template(name: str, *, validate: bool = True, **params: Any) -> Graph:
    """Build the graph of template `name` with `params`; `validate` raises on a broken result."""
    graph: Graph = _builder(_TEMPLATES, "graph", name)(**params)
    if validate:
        graph.validate(strict=True)
    return graph


def pipeline_from_template(name: str, *, validate: bool = True, **params: Any) -> Pipeline:
    """Build the pipeline of template `name` with `params`; `validate` raises on a broken
    result (its graphs included)."""
    pipeline: Pipeline = _builder(_PIPELINE_TEMPLATES, "pipeline", name)(**params)
    if validate:
        pipeline.validate(strict=True, validate_graphs=True)
    return pipeline


def _registrar(table: dict[str, TemplateBuilder], kind: str, name: str, replace: bool) -> Callable[[F], F]:
    def decorate(builder: F) -> F:
        if name in table and table[name] is not builder and not replace:
            raise ValueError(f"{kind} template {name!r} is already registered ({table[name]!r})")
        table[name] = builder
        return builder

    return decorate


def _builder(table: dict[str, TemplateBuilder], kind: str, name: str) -> TemplateBuilder:
    try:
        return table[name]
    except KeyError:
        raise KeyError(f"unknown {kind} template {name!r}; registered templates: {sorted(table)}") from None


#: The role-stub ``text_to_image`` graph's edges (levels.md §2): the role-rule edges, with
#: ``codec.encode_latent → solver.latent`` replaced by the loop-seed fix (the two solver
#: self-edges), so the solver steps the *current* latent and timestep.
TEXT_TO_IMAGE_EDGES: tuple[tuple[str, str], ...] = (
    ("tokenizer.token_ids", "conditioner.input"),
    ("conditioner.embedding", "backbone.condition"),
    ("backbone.pred", "solver.pred"),
    ("solver.next_latent", "backbone.latent"),
    ("solver.next_timestep", "backbone.timestep"),
    ("solver.next_latent", "solver.latent"),
    ("solver.next_timestep", "solver.timestep"),
    ("solver.next_latent", "codec.decode_latent"),
)


@register_graph_template("text_to_image")
def text_to_image(*, checkpoint: str | Path | None = None, **params: Any) -> Graph:
    """Text → image: with `checkpoint`, the real Stable Diffusion graph
    (`diffusers_text_to_image`); without, the role-stub graph of levels.md §2
    (`stub_text_to_image`). Each form takes only its own parameters."""
    build = stub_text_to_image if checkpoint is None else diffusers_text_to_image
    allowed = set(inspect.signature(build).parameters) - {"checkpoint"}  # each form's own keywords
    unknown = sorted(set(params) - allowed)
    if unknown:
        form = "the role-stub graph (no checkpoint=)" if checkpoint is None else "the diffusers graph (checkpoint=)"
        raise TypeError(f"text_to_image: {unknown} are not parameters of {form}; it takes {sorted(allowed)}")
    return build(**params) if checkpoint is None else build(checkpoint=checkpoint, **params)


def stub_text_to_image(
    *,
    tokenizer_type: str = "tokenizer/identity",
    conditioner_type: str = "conditioner/identity",
    backbone_type: str = "backbone/identity",
    solver_type: str = "solver/identity",
    codec_type: str = "codec/identity",
    num_steps: int | None = None,
    model_id: str | None = None,
    resolution: int | Sequence[int] | None = None,
    graph_id: str = "text_to_image",
    registry: BlockRegistry | None = None,
) -> Graph:
    """The five-role graph of levels.md §2: tokenizer, conditioner, backbone, solver, codec.

    Each node's type is its ``<role>_type`` (default ``<role>/identity``, so the graph runs
    with no model); `model_id` goes into the config of every node but the solver, and
    `num_steps` becomes ``metadata["num_loop_steps"]``, `resolution` ``metadata["resolution"]``.
    Edges: `TEXT_TO_IMAGE_EDGES`. Inputs: ``text`` (tokenizer.text), ``latent`` (initial
    noise) and ``timestep`` (the first timestep). Output: ``image`` (codec.decode_image).

    Loop seed (the fix of D's graph, where backbone.latent had no value on iteration 1 and
    the solver re-read a stale codec latent every step): the loop {backbone, solver} runs
    backbone first; ``latent`` and ``timestep`` each fan out to the loop entry (backbone)
    *and* to the solver, seeding iteration 1 only; from then on both read the solver's
    previous ``next_latent``/``next_timestep`` (solver self-edges), so the solver always
    steps the latent the backbone just saw. The codec is outside the loop and decodes once.
    """
    graph = Graph(graph_id, graph_kind="diffusion")
    types = {"tokenizer": tokenizer_type, "conditioner": conditioner_type, "backbone": backbone_type,
             "solver": solver_type, "codec": codec_type}
    for role, block_type in types.items():
        config = {"model_id": model_id} if model_id is not None and role != "solver" else None
        graph.add_node(role, block_type, config=config, registry=registry, auto_connect=False)  # wired below
    for source, target in TEXT_TO_IMAGE_EDGES:
        _connect(graph, source, target)
    graph.expose_input("tokenizer", "text", "text")
    for port in ("latent", "timestep"):
        graph.expose_input("backbone", port, port)
        graph.expose_input("solver", port, port, fan_out=True)
    graph.expose_output("codec", "decode_image", "image")
    graph.metadata["loop_order"] = ["backbone", "solver"]
    if num_steps is not None:
        graph.metadata["num_loop_steps"] = num_steps
    if resolution is not None:
        graph.metadata["resolution"] = resolution if isinstance(resolution, int) else list(resolution)
    return graph


def diffusers_text_to_image(
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


@register_graph_template("vae_reconstruct")
def vae_reconstruct(
    *, checkpoint: str | Path | None = None, codec: Block | None = None, graph_id: str = "vae_reconstruct"
) -> Graph:
    """An image through the VAE and back: encode, then decode the latent.

    Input: ``image`` (``[B, 3, H, W]`` in [0, 1]). Outputs: ``image`` (same shape, what the
    VAE keeps of it) and ``latent`` (the scaled latent). Pass `codec` to reuse a VAE already
    loaded (e.g. the one of the graph before it); otherwise it loads from `checkpoint`.
    (This is the refine step a real img2img would replace: the diffusers solver block can
    only start at its schedule's first timestep, so it cannot resume mid-schedule yet.)
    """
    import worldgen.blocks.diffusion  # noqa: F401  registers codec/vae

    if codec is None and checkpoint is None:
        raise ValueError("vae_reconstruct needs a checkpoint or a codec block")
    graph = Graph(graph_id, graph_kind="diffusion")
    vae = codec if codec is not None else {"block_type": "codec/vae", "model_id": str(checkpoint)}
    graph.add_node("encode", vae, auto_connect=False)
    graph.add_node("decode", graph.get_node("encode").block, auto_connect=False)  # one VAE, two places
    _connect(graph, "encode.encode_latent", "decode.decode_latent")
    graph.expose_input("encode", "encode_image", "image")
    graph.expose_output("decode", "decode_image", "image")
    graph.expose_output("encode", "encode_latent", "latent")
    return graph


@register_pipeline_template("generate_and_reconstruct")
def generate_and_reconstruct(
    *, checkpoint: str | Path, pipeline_id: str = "generate_and_reconstruct", **text_to_image_params: Any
) -> Pipeline:
    """``text_to_image`` → ``vae_reconstruct``, the two graphs sharing one VAE.

    Inputs: those of ``text_to_image`` (``prompt``, ``seed``, ``negative_prompt`` with
    guidance). Outputs: ``image`` (the reconstruction), ``generated`` (the first graph's
    image) and ``latent``. `text_to_image_params` go to the ``text_to_image`` template.
    """
    from worldgen.engine.pipeline import Pipeline

    generate = diffusers_text_to_image(checkpoint=checkpoint, **text_to_image_params)
    reconstruct = vae_reconstruct(codec=generate.get_node("codec").block)
    pipeline = Pipeline(pipeline_id)
    pipeline.add_graph(generate, "generate")
    pipeline.add_graph(reconstruct, "reconstruct")
    pipeline.add_edge("generate", "image", "reconstruct", "image")
    for key in generate.exposed_inputs():
        pipeline.expose_input("generate", key, key)
    pipeline.expose_output("reconstruct", "image", "image")
    pipeline.expose_output("reconstruct", "latent", "latent")
    pipeline.expose_output("generate", "image", "generated")
    return pipeline


def _latent_shape(channels: int, scale: int, height: int, width: int) -> list[int]:
    if height % scale or width % scale:
        raise ValueError(f"height and width must be multiples of the VAE scale factor {scale}, got {height}x{width}")
    return [1, channels, height // scale, width // scale]


def _connect(graph: Graph, source: str, target: str) -> None:
    """``graph.add_edge`` from ``"node.port"`` strings."""
    graph.add_edge(*source.split(".", 1), *target.split(".", 1))
