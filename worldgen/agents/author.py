"""Author: writes what really happened (block 5), in the world as it was before this pass."""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseChatModel

from worldgen.agents.agentic import AgentTransition
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
        prompt = f"The world so far:\n{summary}\n\n" + _question(state)
        return {"block5": {"text": ask_text(self.llm, "author", SYSTEM, prompt, max_sentences=4, echo=summary)}}


AGENT_SYSTEM = (
    "You are the Author of a story world. Look up the beings and places involved with the tools "
    "if you need to, then tell what really happened in this episode, in two to four sentences, "
    "past tense. No preamble."
)


class AgentAuthor(AgentTransition):
    """Author as an agent that may query the world (content tools) before telling what happened.

    The tools read the world as it is when the Author runs: before this pass's World update,
    as the canon asks. An empty answer (or a step-limit stop) falls back to the plain Author.
    """

    transition = "author"

    def __call__(self, state: dict[str, Any]) -> dict[str, Any]:
        world = state["world"]
        premise = world.story()
        prompt = (f"Premise: {premise}\n" if premise else "") + _question(state)
        return self.text_or_fallback(state, "block5", AGENT_SYSTEM, prompt, max_sentences=4, echo=world.summary(),
                                     plain=Author)


def _question(state: dict[str, Any]) -> str:
    """What the Author is asked, plain or agent: the intent (block 1) against what was seen (block 4)."""
    intent = Intent.model_validate(state["block1"]).as_text()
    seen = ArtifactDescriptions.model_validate(state["block4"]).as_text()
    return f"What was meant to happen: {intent}\nWhat was actually made:\n{seen}\n\nWhat happened?"
