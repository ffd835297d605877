"""Creator: realises block 2's slots as artifacts (block 3).

Image slots go through a text-to-image generator; text slots through the chat model. Every
artifact is written to the world's ArtifactStore and the block holds only references.
"""

from __future__ import annotations

import hashlib
from typing import Any

from langchain_core.language_models import BaseChatModel

from worldgen.agents.base import ask_text
from worldgen.state import GenerationConfig

SYSTEM = "You are the Creator. Write exactly what is asked, in two to four sentences. No preamble."


def slot_seed(prompt: str, params: dict[str, Any]) -> int:
    """A slot's seed: given in params, else derived from the prompt (stable across runs)."""
    if "seed" in params:
        return int(params["seed"])
    return int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "big")


class Creator:
    def __init__(self, llm: BaseChatModel | None, text_to_image: Any):
        self.llm = llm
        self.text_to_image = text_to_image

    def __call__(self, state: dict[str, Any]) -> dict[str, Any]:
        config = GenerationConfig.model_validate(state["block2"])
        store = state["world"].artifacts
        refs = []
        for slot in config.slots:
            params = dict(slot.params)
            if slot.kind == "image":
                seed = slot_seed(slot.prompt, params)
                size = {k: int(params.pop(k)) for k in ("width", "height") if k in params}
                params.pop("seed", None)
                image = self.text_to_image(slot.prompt, seed=seed, **size, **params)
                meta = {"generator": getattr(self.text_to_image, "name", type(self.text_to_image).__name__),
                        "seed": seed, "prompt": slot.prompt}
                refs.append(store.put_image(image, slot=slot.name, meta=meta))
            elif slot.kind == "text":
                if self.llm is None:
                    raise ValueError(f"slot {slot.name!r} is a text slot but the world has no chat model")
                text = ask_text(self.llm, "creator", SYSTEM, slot.prompt, max_sentences=4)
                refs.append(store.put_text(text, slot=slot.name, meta={"prompt": slot.prompt}))
            else:
                raise ValueError(f"slot {slot.name!r} has kind {slot.kind!r}; the Creator makes image and text slots")
        return {"block3": {"items": [r.model_dump(mode="json") for r in refs]}}
