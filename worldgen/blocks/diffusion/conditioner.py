"""`conditioner/clip_text`: CLIP token ids → the text embeddings a UNet cross-attends to."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from transformers import CLIPTextModel

from worldgen.blocks.diffusion._pretrained import PretrainedTorchBlock, grad_context
from worldgen.blocks.registry import register_block
from worldgen.blocks.roles import Conditioner

__all__ = ["CLIPTextConditioner"]


@register_block("conditioner/clip_text")
class CLIPTextConditioner(PretrainedTorchBlock, Conditioner):
    """`input` (token ids ``[B, L]``) → `embedding` (last hidden state ``[B, L, D]``) and
    `pooled` (``[B, D]``), from the folder's ``text_encoder/``.

    No attention mask is passed, as in `StableDiffusionPipeline` for CLIP (whose config has
    no ``use_attention_mask``): padded positions are part of the embedding SD was trained on.
    """

    model_class = CLIPTextModel
    component = "text_encoder"

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        with grad_context(self):
            out = self.module(inputs["input"], return_dict=True)
        return {"embedding": out.last_hidden_state, "pooled": out.pooler_output}
