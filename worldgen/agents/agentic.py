"""What the agentic transitions share: one agent run per call, and a record of what it did.

An agentic transition must keep the canon's contract whatever its model does: a small model
may answer without calling a tool, call tools until the step limit, or answer nothing. Each
transition then falls back to its plain (non-agent) implementation for what is missing and
says so in its record, so a run can tell an agent's choice from a default.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from pydantic import BaseModel

from worldgen.agents.agent import Agent, AgentResult
from worldgen.agents.base import clean_text

__all__ = ["AgentRecord", "AgentTransition"]

logger = logging.getLogger("worldgen.agents")


class AgentRecord(BaseModel):
    """One call of an agentic transition: how its agent stopped, and any fallback taken."""

    transition: str
    stop_reason: str
    steps: int
    tool_calls: int
    tools: list[str] = []
    #: why the plain implementation filled in (None: the agent's work was used as it is)
    fallback: str | None = None


class AgentTransition:
    """Base of AgentDevelopment, AgentAuthor and AgentCreator: a fresh Agent per call (its
    tools read the run's own world), bounded by ``max_steps``; ``records`` keeps the last 100."""

    transition = "agent"

    def __init__(self, llm: BaseChatModel, *, max_steps: int = 6):
        self.llm = llm
        self.max_steps = max_steps
        self.records: deque[AgentRecord] = deque(maxlen=100)

    def run_agent(self, tools: Sequence[Any], system: str, prompt: str, *, max_steps: int | None = None) -> AgentResult:
        agent = Agent(llm=self.llm, tools=list(tools), system_prompt=system, max_steps=max_steps or self.max_steps)
        return agent.invoke(prompt)

    def text_or_fallback(self, state: dict[str, Any], block: str, system: str, prompt: str, *,
                         max_sentences: int, echo: str, plain: Callable[[BaseChatModel], Any]) -> dict[str, Any]:
        """Run the agent over the world's content tools: its cleaned answer fills ``block``;
        an empty answer (or a step-limit stop) leaves the call to ``plain`` (the transition's
        non-agent implementation), and the record says so."""
        from worldgen.tools.world_content import content_tools

        result = self.run_agent(content_tools(state["world"]), system, prompt)
        text = clean_text(result.text, max_sentences=max_sentences, echo=echo)
        if text:
            self.record(result)
            return {block: {"text": text}}
        name = getattr(plain, "__name__", type(plain).__name__)
        self.record(result, f"plain {name}: the agent gave no answer ({result.stop_reason})")
        return plain(self.llm)(state)

    def record(self, result: AgentResult, fallback: str | None = None) -> AgentRecord:
        names = [c["name"] for m in result.messages for c in getattr(m, "tool_calls", None) or ()]
        entry = AgentRecord(transition=self.transition, stop_reason=result.stop_reason, steps=result.steps,
                            tool_calls=result.tool_calls, tools=names, fallback=fallback)
        self.records.append(entry)
        if fallback:
            logger.info("%s: agent stopped (%s) after %d tool calls; fallback: %s",
                        self.transition, result.stop_reason, result.tool_calls, fallback)
        return entry
