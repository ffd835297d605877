"""`tokenizer/clip`: text → CLIP token ids, padded exactly as diffusers pipelines pad them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import torch
from transformers import CLIPTokenizer

from worldgen.blocks.diffusion._pretrained import PretrainedSettings, load_component
from worldgen.blocks.registry import register_block
from worldgen.blocks.roles import Tokenizer

__all__ = ["CLIPTokenizerBlock"]


@register_block("tokenizer/clip")
class CLIPTokenizerBlock(Tokenizer):
    """Tokenizes a prompt (or a list of prompts) to ``[B, model_max_length]`` int64 ids.

    Pads to ``model_max_length`` and truncates, like `StableDiffusionPipeline.encode_prompt`,
    so the text encoder sees the same ids as in the pipeline. The vocabulary is read from
    the folder's ``tokenizer/`` component (it is not part of `state_dict`).
    """

    config_schema = PretrainedSettings

    def __init__(self, block_id: str | None = None, *, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(block_id, config=config)
        settings = cast(PretrainedSettings, self.settings)
        self.tokenizer: CLIPTokenizer = load_component(CLIPTokenizer, settings, "tokenizer")

    @property
    def max_length(self) -> int:
        return int(self.tokenizer.model_max_length)

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer(
            inputs["text"], padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        )
        return {"token_ids": encoded.input_ids, "attention_mask": encoded.attention_mask}
