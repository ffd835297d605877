"""Architect: turns the intent (block 1) into a generation config (block 2), as JSON."""

from __future__ import annotations

import re
from typing import Any

from langchain_core.language_models import BaseChatModel
from pydantic import ValidationError

from worldgen.agents.base import ask_json, clean_text
from worldgen.state import GenerationConfig

SUPPORTED_KINDS = ("image", "text")

SYSTEM = (
    "You are the Architect. You turn an event into instructions for generators. "
    "Reply with JSON only, exactly in this shape: "
    '{"slots": [{"name": "scene", "kind": "image", "prompt": "<what to draw>"}, '
    '{"name": "caption", "kind": "text", "prompt": "<what to write>"}]}'
)

_PLACEHOLDER = re.compile(r"<[^<>]*>|\.\.\.|…")  # the system prompt's own placeholders, copied back
#: starts the reply for local models, which keep the shape only when it is begun for them
PREFILL = '{"slots": [{"name": "scene", "kind": "image", "prompt": "'
_IMAGE_WORDS = ("image", "picture", "scene", "illustration", "drawing", "painting", "art")


def parse_generation_config(data: Any) -> GenerationConfig:
    """Validate a model's JSON into a GenerationConfig, accepting the shapes models drift to.

    Accepted: ``{"slots": [...]}``, a bare list of slots, or ``{"name": "prompt", ...}``.
    Slots of kinds no generator handles are dropped; an empty result is an error.
    """
    if isinstance(data, list):
        data = {"slots": data}
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object with a 'slots' list")
    if "slots" not in data:
        if all(isinstance(v, str) for v in data.values()) and data:
            data = {"slots": [{"name": k, "prompt": v} for k, v in data.items()]}
        else:
            raise ValueError("the object has no 'slots' list")
    slots = data["slots"]
    if isinstance(slots, dict):
        slots = [{"name": k, **(v if isinstance(v, dict) else {"prompt": v})} for k, v in slots.items()]
    if not isinstance(slots, list):
        raise ValueError("'slots' must be a list")
    cleaned = []
    for i, slot in enumerate(slots):
        if isinstance(slot, str):
            slot = {"prompt": slot}
        if not isinstance(slot, dict):
            raise ValueError(f"slot {i} must be an object")
        name = str(slot.get("name") or f"slot{i + 1}")
        kind = str(slot.get("kind") or slot.get("type") or "").lower().strip()
        if not kind:
            kind = "image" if any(w in name.lower() for w in _IMAGE_WORDS) else "text"
        prompt = slot.get("prompt") or slot.get("description") or slot.get("text") or ""
        prompt = clean_text(str(prompt), max_sentences=3)
        if kind not in SUPPORTED_KINDS or not prompt or _PLACEHOLDER.fullmatch(prompt):
            continue
        params = slot.get("params") if isinstance(slot.get("params"), dict) else {}
        cleaned.append({"name": name, "kind": kind, "prompt": prompt, "params": params})
    try:
        config = GenerationConfig.model_validate({"slots": cleaned})
    except ValidationError as exc:  # pragma: no cover - cleaned data is well-formed
        raise ValueError(str(exc)) from exc
    if not config.filled():
        raise ValueError(f"no usable slot: each needs a kind ({', '.join(SUPPORTED_KINDS)}) and a prompt")
    return config


class Architect:
    """Block 1 → block 2 through the chat model, validated, repaired or re-asked."""

    def __init__(self, llm: BaseChatModel):
        self.llm = llm

    def __call__(self, state: dict[str, Any]) -> dict[str, Any]:
        intent = state["block1"]["text"]
        style = state["world"].style()
        prompt = f"Event: {intent}" + (f"\nVisual style: {style}" if style else "")
        config = ask_json(self.llm, "architect", SYSTEM, prompt, parse_generation_config, prefill=PREFILL)
        return {"block2": config}
