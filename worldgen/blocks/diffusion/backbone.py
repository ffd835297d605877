"""`backbone/unet2d_condition`: one noise (or v / x0) prediction of a diffusers UNet."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from diffusers import UNet2DConditionModel

from worldgen.blocks.diffusion._pretrained import PretrainedTorchBlock, grad_context
from worldgen.blocks.registry import register_block
from worldgen.blocks.roles import Backbone

__all__ = ["UNet2DConditionBackbone"]


@register_block("backbone/unet2d_condition")
class UNet2DConditionBackbone(PretrainedTorchBlock, Backbone):
    """`latent` ``[B, C, h, w]`` at `timestep` (a scalar or ``[B]``), cross-attending to
    `condition` ``[B, L, D]`` → `pred` ``[B, C, h, w]``, from the folder's ``unet/``.

    The latent must already be what the UNet expects (scaled by the solver's
    ``scale_model_input``, batched like the condition): this block only runs the model.
    """

    model_class = UNet2DConditionModel
    component = "unet"

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        condition = inputs.get("condition")
        if condition is None:
            raise ValueError(f"{self!r}: UNet2DConditionModel needs a `condition` (encoder hidden states)")
        with grad_context(self):
            pred = self.module(inputs["latent"], inputs["timestep"], encoder_hidden_states=condition, return_dict=False)
        return {"pred": pred[0]}
