"""Development: reads the world (and the user's action) and starts a fresh state, block 1."""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseChatModel

from worldgen.agents.base import ask_text

SYSTEM = (
    "You direct an evolving story world. Decide what happens next. "
    "Reply with one or two sentences describing the next event, in the present tense. No preamble."
)


class Development:
    """The world's next intent, from its content and the optional action."""

    def __init__(self, llm: BaseChatModel):
        self.llm = llm

    def __call__(self, state: dict[str, Any]) -> dict[str, Any]:
        summary = state["world"].summary()
        action = state.get("action")
        prompt = f"The world so far:\n{summary}\n\n"
        prompt += (
            f"The user acts: {action}\nWhat happens next, given this action?"
            if action
            else "No one intervenes. What happens next?"
        )
        return {"block1": {"text": ask_text(self.llm, "development", SYSTEM, prompt, max_sentences=2, echo=summary)}}
