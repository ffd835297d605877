"""Development: reads the world (and the user's action) and starts a fresh state, block 1."""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseChatModel

from worldgen.agents.agentic import AgentTransition
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
        prompt = f"The world so far:\n{summary}\n\n" + _question(state.get("action"))
        return {"block1": {"text": ask_text(self.llm, "development", SYSTEM, prompt, max_sentences=2, echo=summary)}}


AGENT_SYSTEM = (
    "You direct an evolving story world. Use the tools to look up what happened and who is "
    "involved, then decide what happens next. Answer with one or two sentences describing the "
    "next event, in the present tense. No preamble."
)


class AgentDevelopment(AgentTransition):
    """Development as an agent: it reads the world through tools before deciding.

    The action reaches it as part of its prompt; its answer becomes block 1, as in the canon.
    An empty answer (or a step-limit stop) falls back to the plain Development.
    """

    transition = "development"

    def __call__(self, state: dict[str, Any]) -> dict[str, Any]:
        premise = state["world"].story()
        prompt = (f"Premise: {premise}\n" if premise else "") + _question(state.get("action"))
        return self.text_or_fallback(state, "block1", AGENT_SYSTEM, prompt, max_sentences=2, echo=premise,
                                     plain=Development)


def _question(action: str | None) -> str:
    """What Development is asked, plain or agent: what happens next (given the action)."""
    if action:
        return f"The user acts: {action}\nWhat happens next, given this action?"
    return "No one intervenes. What happens next?"
