"""`codec/vae`: images in [0, 1] ↔ scaled latents, through a diffusers `AutoencoderKL`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image

from worldgen.blocks.diffusion._pretrained import PretrainedTorchBlock, grad_context
from worldgen.blocks.registry import register_block
from worldgen.blocks.roles import Codec

__all__ = ["VAECodec", "to_pil"]


@register_block("codec/vae")
class VAECodec(PretrainedTorchBlock, Codec):
    """Decodes `decode_latent` and/or encodes `encode_image`, whichever is given.

    Images are float tensors ``[B, 3, H, W]`` in [0, 1] (use `to_pil` for PIL images):
    tensors keep the batch, the exact values and gradients. Decoding is
    ``(vae.decode(latent / scaling_factor) / 2 + 0.5).clamp(0, 1)``, as
    `StableDiffusionPipeline` postprocesses; encoding is the inverse, taking the mean of
    the latent distribution (deterministic) times ``scaling_factor``.
    """

    model_class = AutoencoderKL
    component = "vae"

    @property
    def scale_factor(self) -> int:
        """Pixels per latent cell along each side."""
        return 2 ** (len(self.module.config.block_out_channels) - 1)

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        outputs: dict[str, torch.Tensor] = {}
        scaling = self.module.config.scaling_factor
        with grad_context(self):
            if inputs.get("decode_latent") is not None:
                decoded = self.module.decode(inputs["decode_latent"] / scaling, return_dict=False)[0]
                outputs["decode_image"] = (decoded / 2 + 0.5).clamp(0, 1)
            if inputs.get("encode_image") is not None:
                posterior = self.module.encode(inputs["encode_image"] * 2 - 1).latent_dist
                outputs["encode_latent"] = posterior.mode() * scaling
        return outputs


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """``[B, 3, H, W]`` in [0, 1] → RGB images, rounded as diffusers' ``numpy_to_pil`` does."""
    array = images.detach().cpu().permute(0, 2, 3, 1).float().numpy()
    return [Image.fromarray(x) for x in (array * 255).round().astype(np.uint8)]
