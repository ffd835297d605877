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


AGENT_SYSTEM = (
    "You direct an evolving story world. Use the tools to look up what happened and who is "
    "involved, then decide what happens next. Answer with one or two sentences describing the "
    "next event, in the present tense. No preamble."
)


class AgentDevelopment:
    """Development as an agent: it reads the world through tools before deciding.

    The action reaches it as part of its prompt; its answer becomes block 1, as in the canon.
    """

    def __init__(self, llm: BaseChatModel, *, max_steps: int = 6):
        self.llm = llm
        self.max_steps = max_steps

    def __call__(self, state: dict[str, Any]) -> dict[str, Any]:
        from worldgen.agents.agent import Agent
        from worldgen.agents.base import clean_text
        from worldgen.tools.world_content import content_tools

        world = state["world"]
        action = state.get("action")
        agent = Agent(llm=self.llm, tools=content_tools(world), system_prompt=AGENT_SYSTEM,
                      max_steps=self.max_steps)
        premise = world.story()
        prompt = (f"Premise: {premise}\n" if premise else "") + (
            f"The user acts: {action}\nWhat happens next, given this action?"
            if action else "No one intervenes. What happens next?")
        text = clean_text(agent.invoke(prompt).text, max_sentences=2)
        if not text:
            from worldgen.agents.base import ModelOutputError

            raise ModelOutputError("development: the agent gave no answer")
        return {"block1": {"text": text}}
