"""Adapters: small trainable slots on frozen bases, one interface for every kind.

* `lora` — LoRA weights on local torch blocks through peft (`apply_lora`, `load_lora`);
* `prompt` — instructions + few-shot demonstrations in front of API chat models
  (`PromptAdapter`, `optimize_prompt`);
* `training` — what is trainable across levels (`trainable_parameters`, `freeze_others`,
  `trainable_stages`).

Import the submodules directly when torch/peft are not wanted (`worldgen.adapters.prompt`
imports neither).
"""

from __future__ import annotations

from typing import Any

from worldgen.adapters.base import ADAPTER_KINDS, Adapter, AdapterError, unique_parameters
from worldgen.engine.context import call_context, current_call_context

__all__ = [
    "ADAPTER_KINDS",
    "Adapter",
    "AdapterError",
    "LoraAdapter",
    "LoraSet",
    "PromptAdaptedChatModel",
    "PromptAdapter",
    "apply_lora",
    "call_context",
    "current_call_context",
    "freeze_others",
    "load_lora",
    "optimize_prompt",
    "trainable_parameters",
    "trainable_stages",
    "unique_parameters",
]

_LAZY = {
    "LoraAdapter": "lora", "LoraSet": "lora", "apply_lora": "lora", "load_lora": "lora",
    "PromptAdapter": "prompt", "PromptAdaptedChatModel": "prompt", "optimize_prompt": "prompt",
    "trainable_parameters": "training", "freeze_others": "training", "trainable_stages": "training",
}


def __getattr__(name: str) -> Any:  # torch and peft load on first use, not on import
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"worldgen.adapters.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'worldgen.adapters' has no attribute {name!r}")
