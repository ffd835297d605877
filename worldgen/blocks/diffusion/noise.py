"""`noise/initial`: the start of a sampling trajectory (seeded noise at the first timestep)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, cast

import torch
from diffusers.utils.torch_utils import randn_tensor

from worldgen.blocks.base import Block
from worldgen.blocks.diffusion.schedulers import ScheduleSettings, load_scheduler
from worldgen.blocks.ports import Port, PortType, input_port, output_port
from worldgen.blocks.registry import register_block

__all__ = ["InitialNoise", "InitialNoiseSettings"]


class InitialNoiseSettings(ScheduleSettings):
    shape: tuple[int, ...]
    """Latent shape ``(B, C, h, w)``."""
    seed: int | None = None
    """Used when the `seed` port is not fed; None draws from torch's global generator."""
    dtype: Literal["float32", "float16", "bfloat16", "float64"] = "float32"


@register_block("noise/initial")
class InitialNoise(Block):
    """`seed` → what a denoising loop starts from, drawn as `StableDiffusionPipeline` does.

    Outputs `latent` (``randn_tensor(shape, generator) * init_noise_sigma``), `timestep` (the
    schedule's first), `model_input` (``scale_model_input(latent, timestep)``, for the
    backbone) and `generator` (seeded with `seed`, to be handed to the solver so stochastic
    steps continue the same random stream). Give it the same schedule settings as the
    solver: it loads its own copy of the scheduler, so as to stay a config-only block.
    """

    config_schema = InitialNoiseSettings

    def __init__(self, block_id: str | None = None, *, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(block_id, config=config)
        self._device: torch.device | str | None = None
        self.scheduler = load_scheduler(self.noise_settings)

    @property
    def noise_settings(self) -> InitialNoiseSettings:
        return cast(InitialNoiseSettings, self.settings)

    def declare_ports(self) -> list[Port]:
        return [
            input_port("seed", PortType.ANY, optional=True),
            output_port("latent", PortType.TENSOR),
            output_port("timestep", PortType.TENSOR),
            output_port("model_input", PortType.TENSOR),
            output_port("generator", PortType.ANY, optional=True),
        ]

    def to(self, device: Any) -> InitialNoise:
        self._device = device
        return self

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        settings = self.noise_settings
        seed = inputs.get("seed", settings.seed)
        generator = None if seed is None else torch.Generator(self._device or "cpu").manual_seed(int(seed))
        dtype = getattr(torch, settings.dtype)
        noise = randn_tensor(settings.shape, generator=generator, device=self._device, dtype=dtype)
        self.scheduler.set_timesteps(settings.num_inference_steps, device=self._device)  # fresh scheduler state
        timestep = self.scheduler.timesteps[0]
        latent = noise * self.scheduler.init_noise_sigma
        model_input = self.scheduler.scale_model_input(latent, timestep)
        return {"latent": latent, "timestep": timestep, "model_input": model_input, "generator": generator}
