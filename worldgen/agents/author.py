"""Author: writes what really happened (block 5), in the world as it was before this pass."""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseChatModel

from worldgen.agents.base import ask_text
from worldgen.state import ArtifactDescriptions, Intent

SYSTEM = (
    "You are the Author of a story world. Tell what really happened in this episode, "
    "in two to four sentences, past tense, naming the beings and places involved. No preamble."
)


class Author:
    def __init__(self, llm: BaseChatModel):
        self.llm = llm

    def __call__(self, state: dict[str, Any]) -> dict[str, Any]:
        summary = state["world"].summary()
        intent = Intent.model_validate(state["block1"]).as_text()
        seen = ArtifactDescriptions.model_validate(state["block4"]).as_text()
        prompt = (
            f"The world so far:\n{summary}\n\n"
            f"What was meant to happen: {intent}\nWhat was actually made:\n{seen}\n\nWhat happened?"
        )
        return {"block5": {"text": ask_text(self.llm, "author", SYSTEM, prompt, max_sentences=4, echo=summary)}}
