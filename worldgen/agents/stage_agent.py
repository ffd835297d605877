"""A stage whose implementation is an agent (world.md §5 "Stage-agent").

The stage's input blocks are rendered as text into the agent's context (with the action, for
Development), the agent runs its tool loop, and its answer becomes the stage's output block.
The world's contract does not change: reads, writes and the execution condition are the
canon's for the role unless given.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from langchain_core.language_models import BaseChatModel

from worldgen.agents.agent import Agent
from worldgen.agents.base import ModelOutputError, clean_text, extract_json
from worldgen.stage import CANON, Stage
from worldgen.state import BLOCK_TYPES, block_key

__all__ = ["BLOCK_MEANINGS", "stage_agent"]

#: how each block is introduced in the agent's context (world.md §1)
BLOCK_MEANINGS = {
    1: "What is supposed to happen next",
    2: "How the artifacts are to be generated",
    3: "The generated artifacts",
    4: "What the artifacts actually show",
    5: "What really happened",
}


class _CurrentWorld:
    """Stands for the world content of the call in progress, so tools built once (at stage
    construction) read the store of the run at hand. The world is held in a ContextVar, so
    concurrent calls of one stage (threads, or tasks) each read their own run's world."""

    def __init__(self) -> None:
        self._world: ContextVar[Any] = ContextVar("stage_agent_world", default=None)

    @contextmanager
    def bound(self, world: Any) -> Iterator[None]:
        token = self._world.set(world)
        try:
            yield
        finally:
            self._world.reset(token)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        world = self._world.get()
        if world is None:
            raise RuntimeError("the world's content is only readable while the stage runs")
        return getattr(world, name)


def stage_agent(
    role: str,
    llm: BaseChatModel | str,
    tools: Sequence[Any] = (),
    *,
    reads: Sequence[int] | None = None,
    writes: int | None = None,
    system_prompt: str | None = None,
    world_tools: bool = True,
    max_steps: int = 6,
    keep_memory: bool = False,
    name: str | None = None,
) -> Stage:
    """A `Stage` for ``role`` implemented by an `Agent`.

    ``reads`` (default: the role's canon inputs) are rendered into the agent's context;
    its answer fills block ``writes`` (default: the role's canon output; block 2 is parsed
    as JSON when it is JSON). ``world_tools`` adds the world-content tools
    (recent_episodes, search_chronicle, get_entity) reading the running world.
    ``keep_memory``: the agent remembers earlier calls (its `state_dict` then holds them);
    by default each call starts afresh, so a small model's context does not fill up.
    An empty answer raises `ModelOutputError` (the world retries the transition).
    """
    canon = CANON[role]
    read = tuple(canon.reads if reads is None else reads)
    if writes is None:
        if len(canon.writes) != 1:
            raise ValueError(f"role {role!r} writes {canon.writes}; give writes= (one block)")
        writes = canon.writes[0]
    current = _CurrentWorld()
    all_tools: list[Any] = list(tools)
    if world_tools:
        from worldgen.tools.world_content import content_tools

        all_tools += content_tools(current)  # type: ignore[arg-type]
    system = system_prompt or (
        f"You are the {role.replace('_', ' ')} of a story world. "
        + ("Use the tools to look things up if you need to, then answer. " if all_tools else "")
        + f"Answer with {BLOCK_MEANINGS[writes].lower()}, in one to three sentences. No preamble."
    )
    agent = Agent(block_id=name or f"{role}_agent", llm=llm, tools=all_tools, system_prompt=system, max_steps=max_steps)
    impl = _StageAgent(agent, read, writes, current, keep_memory)
    return Stage(role, impl, reads=read, writes=(writes,), name=name)


class _StageAgent:
    def __init__(self, agent: Agent, reads: tuple[int, ...], writes: int, current: _CurrentWorld, keep: bool):
        self.agent, self.reads, self.writes, self.current, self.keep = agent, reads, writes, current, keep
        self.last: Any = None  # the last AgentResult, to see how the agent stopped

    def __call__(self, state: dict[str, Any]) -> dict[str, Any]:
        context = render_context(state, self.reads)
        with self.current.bound(state.get("world")):
            # without memory, a run touches no state of the agent: concurrent calls are safe
            self.last = result = self.agent.invoke(context) if self.keep else self.agent.invoke_stateless(context)
        text = clean_text(result.text)
        if not text:
            raise ModelOutputError(f"stage agent {self.agent.block_id!r}: no answer ({result.stop_reason})")
        return {block_key(self.writes): _to_block(self.writes, text)}

    def state_dict(self) -> dict[str, Any]:
        return self.agent.state_dict()

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> Any:
        return self.agent.load_state_dict(state, strict=strict)


def render_context(state: dict[str, Any], reads: Sequence[int]) -> str:
    """The stage's input blocks (and the action, when there is one) as the agent's context."""
    lines = []
    for n in reads:
        value = state.get(block_key(n))
        if value:
            text = BLOCK_TYPES[n].model_validate(value).as_text()
            lines.append(f"{BLOCK_MEANINGS[n]} (block {n}):\n{text}")
    if state.get("action"):
        lines.append(f"The user acts: {state['action']}")
    return "\n\n".join(lines) or "Nothing has happened yet. Begin."


def _to_block(n: int, text: str) -> Any:
    if n == 2:
        try:
            from worldgen.agents.architect import parse_generation_config

            return parse_generation_config(extract_json(text))
        except ValueError:
            return text  # a plain prompt: one image slot
    return text


