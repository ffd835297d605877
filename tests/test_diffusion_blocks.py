"""Diffusion blocks over diffusers, and the ``text_to_image`` template's parity with
`StableDiffusionPipeline` on a tiny random checkpoint (no hub, no downloads)."""

from __future__ import annotations


from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor
from pydantic import ValidationError

from worldgen.blocks import Block, block_role
from worldgen.blocks.diffusion import (
    BatchConcat,
    BatchRepeat,
    BatchSplit,
    CLIPTextConditioner,
    CLIPTokenizerBlock,
    DiffusersSolver,
    InitialNoise,
    LoopCarry,
    UNet2DConditionBackbone,
    VAECodec,
    scheduler_class,
    to_pil,
)
from worldgen.engine import Graph
from worldgen.engine.templates import graph_from_template, graph_templates, register_graph_template

PROMPT = "a lighthouse on a cliff"
SIZE = 64
STEPS = 20
TOLERANCE = 1e-4


pytestmark = pytest.mark.usefixtures("one_torch_thread")




@pytest.fixture(scope="session")
def pipe(tiny_sd: Path) -> StableDiffusionPipeline:
    pipeline = StableDiffusionPipeline.from_pretrained(tiny_sd, local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="session")
def model(tiny_sd: Path) -> dict[str, str]:
    return {"model_id": str(tiny_sd)}


def _pipeline_image(pipe: StableDiffusionPipeline, solver: str, guidance_scale: float, seed: int = 0) -> np.ndarray:
    pipe.scheduler = scheduler_class(solver).from_config(pipe.scheduler.config)
    return pipe(
        PROMPT, generator=torch.Generator().manual_seed(seed), num_inference_steps=STEPS,
        guidance_scale=guidance_scale, height=SIZE, width=SIZE, output_type="np",
    ).images


def _graph_image(tiny_sd: Path, seed: int = 0, **params: object) -> np.ndarray:
    graph = Graph.from_template(
        "text_to_image", checkpoint=tiny_sd, num_inference_steps=STEPS, height=SIZE, width=SIZE, **params
    )
    image = graph.run({"prompt": PROMPT, "seed": seed})["image"]
    assert image.shape == (1, 3, SIZE, SIZE) and image.dtype == torch.float32
    return image.permute(0, 2, 3, 1).numpy()


# ------------------------------------------------------------------------------ parity


@pytest.mark.parametrize(
    ("solver", "guidance_scale"),
    [("ddim", 7.5), ("euler", 7.5), ("dpm++", 7.5), ("ddim", 1.0), ("EulerAncestralDiscreteScheduler", 7.5)],
)
def test_text_to_image_matches_the_pipeline(
    tiny_sd: Path, pipe: StableDiffusionPipeline, solver: str, guidance_scale: float
) -> None:
    expected = _pipeline_image(pipe, solver, guidance_scale)
    ours = _graph_image(tiny_sd, solver=solver, guidance_scale=guidance_scale)
    assert 0.9 < ((expected > 0) & (expected < 1)).mean()  # not a saturated, trivially equal image
    assert np.abs(ours - expected).max() <= TOLERANCE


def test_seed_and_prompt_change_the_image_and_runs_repeat(tiny_sd: Path) -> None:
    graph = graph_from_template("text_to_image", checkpoint=tiny_sd, num_inference_steps=4, height=32, width=32)
    first = graph.run({"prompt": PROMPT})["image"]
    assert torch.equal(first, graph.run({"prompt": PROMPT})["image"])  # the solver restarts cleanly
    assert not torch.equal(first, graph.run({"prompt": PROMPT, "seed": 1})["image"])
    assert not torch.equal(first, graph.run({"prompt": "a desert"})["image"])
    assert not torch.equal(first, graph.run({"prompt": PROMPT, "negative_prompt": "fog"})["image"])


def test_without_guidance_there_is_no_unconditional_branch(tiny_sd: Path, pipe: StableDiffusionPipeline) -> None:
    graph = graph_from_template("text_to_image", checkpoint=tiny_sd, guidance=None, num_inference_steps=STEPS)
    assert not {"guidance", "negative_tokenizer", "cfg_split"} & set(graph.node_ids)
    assert {s.get("name") for s in graph.get_input_spec()} == {"prompt", "seed"}
    ours = graph.run({"prompt": PROMPT})["image"].permute(0, 2, 3, 1).numpy()
    assert np.abs(ours - _pipeline_image(pipe, "ddim", 1.0)).max() <= TOLERANCE


def test_guidance_block_is_swappable(tiny_sd: Path, pipe: StableDiffusionPipeline) -> None:
    # guidance/identity passes the conditional prediction through: CFG at scale 1, batched
    ours = _graph_image(tiny_sd, solver="ddim", guidance="guidance/identity", guidance_scale=7.5)
    assert np.abs(ours - _pipeline_image(pipe, "ddim", 1.0)).max() <= TOLERANCE


# ---------------------------------------------------------------------------- template


def test_template_structure(tiny_sd: Path) -> None:
    graph = graph_from_template("text_to_image", checkpoint=tiny_sd, num_inference_steps=STEPS)
    assert "text_to_image" in graph_templates()
    assert graph.graph_kind == "diffusion" and graph.metadata["num_loop_steps"] == STEPS
    assert {s["name"] for s in graph.get_input_spec()} == {"prompt", "negative_prompt", "seed"}
    assert [s["name"] for s in graph.get_output_spec()] == ["image"]
    loops = [ids for kind, ids in graph.plan().describe() if kind == "cycle"]
    assert loops == [("carry", "cfg_batch", "backbone", "cfg_split", "guidance", "solver")]
    assert graph.validate().is_valid
    calls: list[str] = []
    graph.run({"prompt": PROMPT}, num_loop_steps=3, callbacks=lambda node, phase, **kw: calls.append(f"{node}:{phase}"))
    assert calls.count("backbone:before") == 3 and calls.count("codec:before") == 1


def test_template_registry_errors() -> None:
    with pytest.raises(KeyError, match="text_to_image"):
        graph_from_template("no_such_template")
    with pytest.raises(ValueError, match="already registered"):
        register_graph_template("text_to_image")(lambda: Graph())


def test_loop_longer_than_the_schedule_is_an_error(tiny_sd: Path) -> None:
    graph = graph_from_template("text_to_image", checkpoint=tiny_sd, num_inference_steps=2, height=32, width=32)
    with pytest.raises(ValueError, match="all were taken"):
        graph.run({"prompt": PROMPT}, num_loop_steps=3)


# ----------------------------------------------------------------------- bad config


def test_unknown_scheduler_lists_the_known_ones(tiny_sd: Path, model: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="unknown scheduler 'nope'.*'ddim'.*'DDIMScheduler'"):
        DiffusersSolver(config={**model, "scheduler": "nope"})
    with pytest.raises(ValueError, match="known schedulers"):
        graph_from_template("text_to_image", checkpoint=tiny_sd, solver="EulerDiscrete")


def test_missing_folder_is_named(tmp_path: Path, tiny_sd: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        UNet2DConditionBackbone(config={"model_id": str(missing)})
    with pytest.raises(FileNotFoundError, match=str(missing)):
        graph_from_template("text_to_image", checkpoint=missing)
    with pytest.raises(FileNotFoundError, match="no component 'unet_xl'"):
        UNet2DConditionBackbone(config={"model_id": str(tiny_sd), "subfolder": "unet_xl"})


def test_unknown_config_key_is_rejected(model: dict[str, str]) -> None:
    with pytest.raises(ValidationError, match="model_idd"):
        CLIPTokenizerBlock(config={"model_idd": model["model_id"]})


def test_height_must_fit_the_vae(tiny_sd: Path) -> None:
    with pytest.raises(ValueError, match="multiples of the VAE scale factor 2"):
        graph_from_template("text_to_image", checkpoint=tiny_sd, height=33)


# --------------------------------------------------------------------------- blocks


def _port_names(block: Block) -> tuple[set[str], set[str]]:
    return {p.name for p in block.get_input_ports()}, {p.name for p in block.get_output_ports()}


def test_tokenizer_pads_like_the_pipeline(model: dict[str, str], pipe: StableDiffusionPipeline) -> None:
    block = CLIPTokenizerBlock(config=model)
    assert block.block_type == "tokenizer/clip" and block_role(block) == "tokenizer"
    assert _port_names(block) == ({"text"}, {"token_ids", "attention_mask"})
    out = block.run({"text": [PROMPT, ""]})
    expected = pipe.tokenizer([PROMPT, ""], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    assert out["token_ids"].shape == (2, 77) and torch.equal(out["token_ids"], expected.input_ids)
    assert out["attention_mask"][1].sum() == 2  # "" is just <bos><eos>


def test_conditioner_embeds_like_the_text_encoder(model: dict[str, str], pipe: StableDiffusionPipeline) -> None:
    block = CLIPTextConditioner(config=model)
    assert block.block_type == "conditioner/clip_text" and block_role(block) == "conditioner"
    assert _port_names(block) == ({"input"}, {"embedding", "pooled"})
    ids = CLIPTokenizerBlock(config=model).run({"text": PROMPT})["token_ids"]
    out = block.run({"input": ids})
    assert out["embedding"].shape == (1, 77, 32) and out["pooled"].shape == (1, 32)
    assert torch.equal(out["embedding"], pipe.text_encoder(ids)[0])
    assert not out["embedding"].requires_grad  # eval mode runs without autograd
    assert block.train().run({"input": ids})["embedding"].requires_grad


def test_backbone_predicts_like_the_unet(model: dict[str, str], pipe: StableDiffusionPipeline) -> None:
    block = UNet2DConditionBackbone(config=model)
    assert block.block_type == "backbone/unet2d_condition" and block_role(block) == "backbone"
    assert _port_names(block) == ({"latent", "timestep", "condition"}, {"pred"})
    latent, t, condition = torch.randn(2, 4, 8, 8), torch.tensor(500), torch.randn(2, 77, 32)
    pred = block.run({"latent": latent, "timestep": t, "condition": condition})["pred"]
    with torch.no_grad():
        assert torch.equal(pred, pipe.unet(latent, t, encoder_hidden_states=condition).sample)
    assert sum(1 for _ in block.trainable_parameters()) == sum(1 for _ in pipe.unet.parameters())
    with pytest.raises(ValueError, match="condition"):
        block.run({"latent": latent, "timestep": t})


def test_solver_is_one_scheduler_step(model: dict[str, str]) -> None:
    config = {**model, "scheduler": "euler", "num_inference_steps": 5}
    block = DiffusersSolver(config=config)
    assert block.block_type == "solver/diffusers" and block_role(block) == "solver"
    assert _port_names(block) == (
        {"latent", "timestep", "pred", "generator"}, {"next_latent", "next_timestep", "model_input"}
    )
    reference = scheduler_class("euler").from_config(block.scheduler.config)
    reference.set_timesteps(5)
    assert torch.equal(block.timesteps, reference.timesteps)
    latent, pred = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    t0, t1 = reference.timesteps[:2]
    reference.scale_model_input(latent, t0)
    expected = reference.step(pred, t0, latent, return_dict=False)[0]
    out = block.run({"latent": latent, "timestep": t0, "pred": pred})
    assert torch.equal(out["next_latent"], expected) and out["next_timestep"] == t1
    assert torch.equal(out["model_input"], reference.scale_model_input(expected, t1))
    again = block.run({"latent": latent, "timestep": t0, "pred": pred})  # t0 again: a new trajectory
    assert torch.equal(again["next_latent"], expected)
    with pytest.raises(ValueError, match="expected timestep"):
        block.run({"latent": latent, "timestep": reference.timesteps[3], "pred": pred})


def test_initial_noise_is_drawn_like_the_pipeline(model: dict[str, str]) -> None:
    config = {**model, "scheduler": "euler", "num_inference_steps": 5, "shape": [1, 4, 8, 8], "seed": 3}
    block = InitialNoise(config=config)
    assert _port_names(block) == ({"seed"}, {"latent", "timestep", "model_input", "generator"})
    noise = randn_tensor((1, 4, 8, 8), generator=torch.Generator().manual_seed(3))
    out = block.run({})
    assert torch.equal(out["latent"], noise * block.scheduler.init_noise_sigma)
    assert out["timestep"] == block.scheduler.timesteps[0]
    # Euler scales the first model input by 1/sqrt(sigma_max^2 + 1): back to unit noise
    assert torch.allclose(out["model_input"], noise, atol=1e-5)
    assert not torch.equal(block.run({"seed": 4})["latent"], out["latent"])


def test_codec_decodes_and_encodes(model: dict[str, str], pipe: StableDiffusionPipeline) -> None:
    block = VAECodec(config=model)
    assert block.block_type == "codec/vae" and block_role(block) == "codec"
    assert block.scale_factor == 2
    assert _port_names(block) == ({"encode_image", "decode_latent"}, {"encode_latent", "decode_image"})
    latent = torch.randn(1, 4, 16, 16)
    image = block.run({"decode_latent": latent})["decode_image"]
    with torch.no_grad():
        expected = (pipe.vae.decode(latent / pipe.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    assert image.shape == (1, 3, 32, 32) and torch.equal(image, expected)
    both = block.run({"encode_image": image, "decode_latent": latent})
    assert both["encode_latent"].shape == (1, 4, 16, 16) and torch.equal(both["decode_image"], image)
    (pil,) = to_pil(image)
    assert pil.size == (32, 32) and pil.mode == "RGB"


def test_batch_and_loop_plumbing() -> None:
    a, b = torch.zeros(1, 2), torch.ones(1, 2)
    assert torch.equal(BatchConcat().run({"items": torch.cat([a, b])})["batch"], torch.cat([a, b]))
    assert BatchRepeat(config={"times": 3}).run({"x": b})["batch"].shape == (3, 2)
    split = BatchSplit(config={"names": ["uncond", "cond"]})
    assert _port_names(split) == ({"batch"}, {"uncond", "cond"})
    halves = split.run({"batch": torch.cat([a, b])})
    assert torch.equal(halves["uncond"], a) and torch.equal(halves["cond"], b)
    with pytest.raises(ValueError, match="equal parts"):
        split.run({"batch": torch.zeros(3, 2)})
    carry = LoopCarry(config={"channels": ["x"]})
    assert _port_names(carry) == ({"x_init", "x_next"}, {"x"})
    assert carry.run({"x_init": 1}) == {"x": 1} and carry.run({"x_init": 1, "x_next": 2}) == {"x": 2}
