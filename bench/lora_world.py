"""LoRA on the whole world vs full fine-tuning: trainable parameters and time per training step.

One world, built twice from the same random weights (nothing is downloaded): its Creator
stage is a StageGraph whose ``denoise`` graph holds a text-condition projector (a small
torch MLP) feeding a diffusers UNet (the other transitions are functions, with no weights).

* ``full``: every weight trains (`trainable_parameters(world)` → Adam);
* ``lora``: ``apply_lora(world, rank=R)`` — LoRA on every linear layer of every local block,
  base frozen, Adam over the adapters only.

A step is forward + noise-prediction loss + backward + ``optimizer.step()`` on one batch;
reported is the median of ``--steps`` steps after two warm-up steps, on one torch thread.
Printed side by side with the ratios lora / full (parameters, Adam state, step time).

Run: ``.venv/bin/python bench/lora_world.py [--rank 4] [--steps 10] [--batch 4]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for examples.lora_world
from examples.lora_world import tiny_unet_folder, world_with_creator
from worldgen import World
from worldgen.adapters import apply_lora, trainable_parameters
from worldgen.blocks.diffusion import UNet2DConditionBackbone
from worldgen.blocks.ports import PortType, input_port, output_port
from worldgen.blocks.torch_block import TorchBlock
from worldgen.engine.graph import Graph


class ConditionProjector(TorchBlock):
    """``text_features [B, L, 64]`` → ``condition [B, L, 128]`` (a two-layer MLP)."""

    block_type = "conditioner/bench_projector"

    def build_module(self) -> torch.nn.Module:
        torch.manual_seed(1)
        return torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 128))

    def declare_ports(self):
        return [input_port("text_features", PortType.TENSOR), output_port("condition", PortType.TENSOR)]

    def forward(self, inputs):
        return {"condition": self.module(inputs["text_features"])}


def build_unet(folder: Path) -> Path:
    """The example's tiny UNet, wider: cross-attention on the first level, 128-d condition."""
    return tiny_unet_folder(
        folder, block_out_channels=(64, 128), sample_size=16, cross_attention_dim=128,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )


def build_world(model_dir: Path, root: Path) -> tuple[World, Graph]:
    graph = Graph("denoise")
    graph.add_node("projector", ConditionProjector("projector"), auto_connect=False)
    graph.add_node("unet", UNet2DConditionBackbone("unet", config={"model_id": str(model_dir), "share": False}),
                   auto_connect=False)
    graph.add_edge("projector", "condition", "unet", "condition")
    graph.expose_input("projector", "text_features", "text_features")
    graph.expose_input("unet", "latent", "latent")
    graph.expose_input("unet", "timestep", "timestep")
    graph.expose_output("unet", "pred", "pred")
    return world_with_creator(graph, root), graph


def measure(graph: Graph, params: list[torch.nn.Parameter], batch: dict[str, torch.Tensor], steps: int) -> list[float]:
    optimizer = torch.optim.Adam(params, lr=1e-4)
    inputs = {k: batch[k] for k in ("text_features", "latent", "timestep")}
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(graph.run(inputs, training=True)["pred"], batch["noise"])
        loss.backward()
        optimizer.step()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    batch = {
        "text_features": torch.randn(args.batch, 8, 64, generator=g),
        "latent": torch.randn(args.batch, 4, 16, 16, generator=g),
        "timestep": torch.randint(0, 1000, (args.batch,), generator=g),
        "noise": torch.randn(args.batch, 4, 16, 16, generator=g),
    }
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_unet(Path(tmp) / "model")
        for case in ("full", "lora"):
            world, graph = build_world(model_dir, Path(tmp) / case)
            try:
                total = sum(p.numel() for b in graph.blocks() for p in b.module.parameters())  # type: ignore[attr-defined]
                if case == "lora":
                    lora = apply_lora(world, rank=args.rank, name="world")
                    params = lora.parameters()
                    assert {id(p) for p in trainable_parameters(world)} == {id(p) for p in params}
                else:
                    params = trainable_parameters(world)
                n = sum(p.numel() for p in params)
                times = measure(graph, params, batch, args.steps)
                rows[case] = {"params": n, "total": total, "adam_mb": 2 * 4 * n / 2**20,
                              "step_ms": 1000 * statistics.median(times)}
            finally:
                world.close()
    full, lora = rows["full"], rows["lora"]
    print(f"LoRA on the whole world (rank {args.rank}, all linear layers of 2 local blocks) vs full fine-tuning; "
          f"batch {args.batch}, median of {args.steps} steps, 1 thread")
    print(f"{'':22}{'full':>14}{'lora':>14}{'lora/full':>12}")
    print(f"{'trainable params':22}{full['params']:>14,}{lora['params']:>14,}{lora['params'] / full['params']:>12.4f}")
    print(f"{'Adam state (MB)':22}{full['adam_mb']:>14.2f}{lora['adam_mb']:>14.2f}{lora['adam_mb'] / full['adam_mb']:>12.4f}")
    print(f"{'time per step (ms)':22}{full['step_ms']:>14.1f}{lora['step_ms']:>14.1f}{lora['step_ms'] / full['step_ms']:>12.3f}")
    print(f"(base weights in the world: {full['total']:,}; under LoRA all of them frozen)")


if __name__ == "__main__":
    main()
