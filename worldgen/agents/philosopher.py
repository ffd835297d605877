"""Philosopher: describes what the artifacts actually contain (block 3 → block 4).

It looks at the artifacts themselves, never at the prompts of block 2: an image goes to the
chat model when the model accepts images, otherwise through a deterministic analysis of its
pixels; a text is read and summarised by the chat model.
"""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseChatModel

from worldgen.agents.base import ask_text
from worldgen.state import Artifacts

SYSTEM = "You describe artifacts exactly as they are. One or two sentences. No preamble."


class Philosopher:
    def __init__(self, llm: BaseChatModel | None, *, accepts_images: bool | None = None):
        self.llm = llm
        if accepts_images is None:
            from worldgen.chat_models import model_accepts_images

            accepts_images = llm is not None and model_accepts_images(llm)
        self.accepts_images = accepts_images

    def __call__(self, state: dict[str, Any]) -> dict[str, Any]:
        artifacts = Artifacts.model_validate(state["block3"])
        store = state["world"].artifacts
        items = []
        for ref in artifacts.items:
            if ref.kind == "image":
                text = self._describe_image(store.read_bytes(ref), store.path(ref))
            elif ref.kind == "text":
                text = self._describe_text(store.read_text(ref))
            else:
                text = f"A {ref.kind} artifact ({ref.mime or 'unknown format'})."
            items.append({"slot": ref.slot, "sha256": ref.sha256, "text": text})
        return {"block4": {"items": items}}

    def _describe_image(self, data: bytes, path: Any) -> str:
        if self.accepts_images and self.llm is not None:
            from worldgen.blocks.api import image_data_url  # the MIME type from the bytes

            url = image_data_url(data)
            content = [
                {"type": "text", "text": "Describe what this image shows."},
                {"type": "image_url", "image_url": {"url": url}},
            ]
            return ask_text(self.llm, "philosopher", SYSTEM, content, max_sentences=2)
        from worldgen.tools.image_analysis import describe_image

        return describe_image(path)

    def _describe_text(self, text: str) -> str:
        if self.llm is None:
            words = text.split()
            return f"A text of {len(words)} words beginning: {' '.join(words[:20])}"
        return ask_text(
            self.llm, "philosopher", SYSTEM, f"Describe what this text says:\n\n{text[:2000]}", max_sentences=2
        )
