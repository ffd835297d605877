"""Per-tool-call overhead of worldgen's `Agent` against a hand-written LangGraph loop.

Side A: ``Agent(llm=model, tools=[echo], max_steps=N + 1).invoke(...)`` (memory reset before
each run, so both sides see the same conversation length).

Side B: the loop written by hand: ``StateGraph(MessagesState)`` with a model node,
``tools_condition`` and a ``ToolNode``, compiled once, invoked on the same input.

Both use the same scripted chat model (N tool calls, then an answer; a fake whose
``bind_tools`` returns itself) and the same trivial tool, so what differs is only the loop
machinery. After a warm-up the sides run interleaved (A B, B A, ...) so a noisy shared
machine hurts both alike; medians per tool call are reported, and the ratio A / B against
the target.

Run: ``.venv/bin/python bench/agent_loop.py [--calls 20] [--rounds 60] [--profile]``
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import statistics
import time
from collections.abc import Callable
from typing import Any

from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from worldgen.agents.agent import Agent

TARGET = 1.2


class ScriptChat(FakeMessagesListChatModel):
    """Replies from a script, cycling; `bind_tools` returns itself (ARCHITECTURE §11)."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptChat:
        return self


@tool
def echo(text: str) -> str:
    """Return the text."""
    return text


def script(n: int) -> list[AIMessage]:
    calls = [
        AIMessage("", tool_calls=[{"name": "echo", "args": {"text": f"t{i}"}, "id": f"call_{i}"}], id=f"ai_{i}")
        for i in range(n)
    ]
    return [*calls, AIMessage("done", id="ai_answer")]


def hand_written_loop(model: Any, tools: list[Any]) -> Any:
    bound = model.bind_tools(tools)

    def call_model(state: MessagesState) -> dict[str, Any]:
        return {"messages": [bound.invoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("model", call_model)
    builder.add_node("tools", ToolNode(tools))
    builder.add_edge(START, "model")
    builder.add_conditional_edges("model", tools_condition, {"tools": "tools", END: END})
    builder.add_edge("tools", "model")
    return builder.compile()


def make_sides(n: int) -> dict[str, Callable[[], None]]:
    agent = Agent(llm=ScriptChat(responses=script(n)), tools=[echo], max_steps=n + 1)
    raw = hand_written_loop(ScriptChat(responses=script(n)), [echo])
    config = {"recursion_limit": 2 * (n + 1) + 2}

    def run_agent() -> None:
        agent.reset()
        result = agent.invoke("go")
        assert result.tool_calls == n and result.stop_reason == "answered", result

    def run_raw() -> None:
        out = raw.invoke({"messages": [HumanMessage("go")]}, config)
        assert out["messages"][-1].content == "done"

    return {"worldgen Agent": run_agent, "hand-written loop": run_raw}


def measure(sides: dict[str, Callable[[], None]], n: int, rounds: int, budget_s: float) -> dict[str, list[float]]:
    names = list(sides)
    for _ in range(5):  # warm-up
        for name in names:
            sides[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    deadline = time.perf_counter() + budget_s
    gc.collect()
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            start = time.perf_counter()
            sides[name]()
            times[name].append((time.perf_counter() - start) / n * 1e6)
        if time.perf_counter() > deadline:
            break
    return times


def profile(run: Callable[[], None], repeats: int = 30, top: int = 25) -> None:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(repeats):
        run()
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20, help="tool calls per run (N)")
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--budget", type=float, default=60.0, help="seconds, measurement stops early")
    parser.add_argument("--profile", action="store_true", help="cProfile the Agent side after measuring")
    args = parser.parse_args()

    sides = make_sides(args.calls)
    times = measure(sides, args.calls, args.rounds, args.budget)
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"N={args.calls} tool calls per run, {len(next(iter(times.values())))} interleaved rounds")
    for name, med in medians.items():
        ts = times[name]
        q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [med, med, med]
        print(f"  {name:18s} {med:8.1f} µs per tool call (IQR {q[0]:.1f}–{q[2]:.1f})")
    ratio = medians["worldgen Agent"] / medians["hand-written loop"]
    verdict = "ok" if ratio <= TARGET else "ABOVE TARGET"
    print(f"  ratio Agent / hand-written = {ratio:.3f} (target ≤ {TARGET}) {verdict}")
    if args.profile or ratio > TARGET:
        for name in sides:
            print(f"\n--- profile: {name} ---")
            profile(sides[name])


if __name__ == "__main__":
    main()
