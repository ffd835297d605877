"""What every decoding loop over a local causal LM shares: the loaded model, how to sample
from it (greedy, or temperature + top-p from a private seeded generator), and token counts."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass
class Sampling:
    """A loaded model, how to sample from it, and the token counts of one reply: what a
    plain / JSON-mode ``chat_model._Run`` and a tool-mode ``tool_calls.Decoder`` share."""

    model: Any
    tokenizer: Any
    model_ref: str
    temperature: float
    top_p: float
    seed: int | None
    #: applied to prose only (plain text, JSON string values); JSON punctuation must repeat
    repetition_penalty: float = 1.0
    input_tokens: int = 0
    output_tokens: int = 0

    def _begin(self) -> tuple[set[int], dict[str, Any], Any]:
        """End-of-sequence ids, extra forward arguments, and the sampling generator (seeded;
        None when greedy)."""
        import torch

        eos = _eos_ids(self.model, self.tokenizer)
        extra = {"logits_to_keep": 1} if _accepts(self.model, "logits_to_keep") else {}
        generator = None
        if self.temperature > 0:
            generator = torch.Generator()
            generator.manual_seed(self.seed if self.seed is not None else int(torch.seed()))
        return eos, extra, generator

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def usage(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
        }


def candidates(logits: Any, temperature: float, top_p: float, generator: Any, limit: int) -> Iterator[int]:
    """Next tokens in order of preference: by logit if greedy, else sampled without replacement."""
    import torch

    if temperature <= 0:
        yield from torch.topk(logits, min(limit, logits.numel())).indices.tolist()
        return
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p  # always keeps the top token
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    for _ in range(limit):
        if float(probs.sum()) <= 0:
            return
        token = int(torch.multinomial(probs, 1, generator=generator))
        yield token
        probs[token] = 0.0


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    config = getattr(model, "generation_config", None)
    for value in (getattr(config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


def _accepts(model: Any, parameter: str) -> bool:
    try:
        return parameter in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
