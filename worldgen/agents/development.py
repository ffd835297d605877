"""Development: reads the world (and the user's action) and starts a fresh state, block 1."""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseChatModel

from worldgen.agents.agentic import AgentTransition
from worldgen.agents.base import ask_text, clean_text

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
        from worldgen.tools.world_content import content_tools

        world = state["world"]
        action = state.get("action")
        premise = world.story()
        prompt = (f"Premise: {premise}\n" if premise else "") + (
            f"The user acts: {action}\nWhat happens next, given this action?"
            if action else "No one intervenes. What happens next?")
        result = self.run_agent(content_tools(world), AGENT_SYSTEM, prompt)
        text = clean_text(result.text, max_sentences=2, echo=premise)
        if text:
            self.record(result)
            return {"block1": {"text": text}}
        self.record(result, f"plain Development: the agent gave no answer ({result.stop_reason})")
        return Development(self.llm)(state)
