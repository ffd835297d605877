"""Fine-tune a LoRA on a world's local diffusion model, save it apart from the base, reload it.

Everything is local and tiny, so this runs in seconds on a CPU with no network:

1. a tiny random UNet is written as a diffusers folder (``<work>/model/unet``);
2. a world is built whose Creator stage is a StageGraph holding a ``denoise`` graph with that
   UNet as its backbone node (the other transitions are plain functions);
3. ``apply_lora(world, targets="backbone", ...)`` walks world → stage → pipeline → graph →
   node, injects a peft LoRA adapter into the UNet's attention projections and freezes every
   base weight; the optimizer gets the adapter parameters only;
4. a few steps of the usual noise-prediction loss on locally generated latents (smooth
   colour fields, noised with a DDPM schedule) — the loss goes down;
5. the base is saved once (``Pipeline.save``) and the adapter apart
   (``lora_creator.safetensors`` + ``lora_creator.json``); a fresh pipeline is loaded from
   those files and gives the same prediction.

Run: ``.venv/bin/python examples/lora_world.py [--steps 30] [--work DIR]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel

from worldgen import World
from worldgen.adapters import apply_lora, load_lora, trainable_parameters
from worldgen.blocks.diffusion import UNet2DConditionBackbone
from worldgen.engine.graph import Graph
from worldgen.engine.pipeline import Pipeline
from worldgen.stage_graph import StageGraph

ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]


TINY_UNET: dict[str, Any] = {
    "block_out_channels": (32, 64), "layers_per_block": 1, "sample_size": 8, "in_channels": 4, "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"), "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "cross_attention_dim": 32, "norm_num_groups": 32, "attention_head_dim": 8,
}


def tiny_unet_folder(root: Path, **sizes: Any) -> Path:
    """A random UNet2DConditionModel with toy sizes (`TINY_UNET`, overridden by `sizes`),
    saved as ``root/unet`` (safetensors). Also used by ``bench/lora_world.py``."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**{**TINY_UNET, **sizes})
    unet.save_pretrained(root / "unet", safe_serialization=True)
    return root


def denoise_pipeline(model_dir: Path) -> Pipeline:
    """The Creator's pipeline: one graph, one UNet node (a private copy: ``share: false``)."""
    graph = Graph("denoise")
    graph.add_node("unet", UNet2DConditionBackbone("unet", config={"model_id": str(model_dir), "share": False}),
                   auto_connect=False)
    for port in ("latent", "timestep", "condition"):
        graph.expose_input("unet", port, port)
    graph.expose_output("unet", "pred", "pred")
    pipeline = Pipeline("denoise")
    pipeline.add_graph(graph)
    for port in ("latent", "timestep", "condition"):
        pipeline.expose_input("denoise", port, port)
    pipeline.expose_output("denoise", "pred", "pred")
    return pipeline


def build_world(model_dir: Path, root: Path) -> tuple[World, Pipeline]:
    pipeline = denoise_pipeline(model_dir)
    return world_with_creator(pipeline, root), pipeline


def world_with_creator(denoise: Graph | Pipeline, root: Path) -> World:
    """A world whose Creator is a StageGraph running `denoise` (block 2 → block 3); the other
    transitions are plain functions with no weights. Also used by ``bench/lora_world.py``."""
    creator = StageGraph("creator")
    creator.add_pipeline(denoise, "denoise")
    creator.set_state_contract([2], [3], mapping_input=[], mapping_output=[])
    stages = {
        "philosopher": lambda s: {"block4": "a field of colour"},
        "author": lambda s: {"block5": "the colour settled"},
        "world_update": lambda s: {},
        "development": lambda s: {"block1": "paint the sky"},
        "architect": lambda s: {"block2": "a warm sky"},
        "creator": creator.as_stage("creator"),
    }
    return World(stages, root=root, checkpointer=False)


def training_data(n: int = 8) -> dict[str, torch.Tensor]:
    """Latents of smooth colour fields, noised at fixed timesteps; the target is the noise."""
    g = torch.Generator().manual_seed(1)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 8), torch.linspace(-1, 1, 8), indexing="ij")
    weights = torch.rand(n, 4, 3, generator=g) * 2 - 1
    clean = weights[..., 0, None, None] * xx + weights[..., 1, None, None] * yy + weights[..., 2, None, None]
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    timesteps = torch.linspace(50, 950, n).long()
    noise = torch.randn(clean.shape, generator=g)
    return {
        "latent": scheduler.add_noise(clean, noise, timesteps),
        "timestep": timesteps,
        "condition": torch.randn(n, 5, 32, generator=g) * 0.1,
        "noise": noise,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temp dir)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny model: threads only add contention
    work = args.work or Path(tempfile.mkdtemp(prefix="lora_world_"))
    model_dir = tiny_unet_folder(work / "model")
    world, pipeline = build_world(model_dir, work / "world")
    try:
        unet = pipeline.get_graph("denoise").get_node("unet").block
        n_base = sum(p.numel() for p in unet.module.parameters())
        lora = apply_lora(world, targets="backbone", rank=args.rank, modules=ATTENTION, name="creator")
        params = lora.parameters()
        assert {id(p) for p in trainable_parameters(world)} == {id(p) for p in params}
        print(f"adapters: {[repr(a) for a in lora.adapters]}")
        print(f"trainable_params={sum(p.numel() for p in params)} base_params={n_base} (base frozen)")
        data = training_data()
        inputs = {k: data[k] for k in ("latent", "timestep", "condition")}
        optimizer = torch.optim.Adam(params, lr=args.lr)

        def loss_now(training: bool) -> torch.Tensor:
            return torch.nn.functional.mse_loss(pipeline.run(inputs, training=training)["pred"], data["noise"])

        with torch.no_grad():
            first = loss_now(False).item()
        start = time.perf_counter()
        for step in range(args.steps):
            optimizer.zero_grad()
            loss = loss_now(True)
            loss.backward()
            optimizer.step()
            if step % 5 == 0 or step == args.steps - 1:
                print(f"step {step:3d} loss {loss.item():.5f}")
        seconds = time.perf_counter() - start
        with torch.no_grad():
            last = loss_now(False).item()
        print(f"loss_first={first:.5f} loss_last={last:.5f} decreased={last < first} "
              f"({args.steps} steps in {seconds:.2f}s)")

        # save: the base once (the pipeline's own save), the adapter apart
        pipeline.save(work / "saved" / "base")
        files = lora.save(work / "saved" / "adapters")
        print("saved:", sorted(p.relative_to(work / "saved").as_posix() for p in (work / "saved").rglob("*.*")
                                if p.suffix in (".safetensors", ".json")))
        assert [p.name for p in files] == ["lora_creator.safetensors", "lora_creator.json"]
        with torch.no_grad():
            expected = pipeline.run(inputs)["pred"]
        # reload into a fresh pipeline: base from its files, then the adapter
        fresh = Pipeline.load(work / "saved" / "base")
        load_lora(fresh, work / "saved" / "adapters")
        with torch.no_grad():
            got = fresh.run(inputs)["pred"]
        diff = (got - expected).abs().max().item()
        print(f"reload_max_abs_diff={diff:.3g} reload_match={diff == 0.0}")
    finally:
        world.close()


if __name__ == "__main__":
    main()
