"""The tool-calling Agent (world.md §5, checks 32–33), on scripted chat models only."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool

from tests.conftest import ScriptedChat
from worldgen.agents.agent import Agent, AgentResult, block_as_tool
from worldgen.blocks import Block, StateDictError, global_registry, input_port, output_port
from worldgen.engine.graph import Graph

BETA = "ignore::langchain_core._api.beta_decorator.LangChainBetaWarning"  # Runnable.as_tool is beta


def call(name: str, call_id: str, **args: Any) -> AIMessage:
    return AIMessage("", tool_calls=[{"name": name, "args": args, "id": call_id}])


def chat(*replies: AIMessage | str) -> ScriptedChat:
    return ScriptedChat(responses=[r if isinstance(r, AIMessage) else AIMessage(r) for r in replies], seen=[])


class Recorder:
    """A `lookup` tool that records each call."""

    def __init__(self) -> None:
        self.calls: list[str] = []

        @tool
        def lookup(key: str) -> str:
            """Look a key up in the world."""
            self.calls.append(key)
            return f"value of {key}"

        self.tool = lookup


class Add(Block):
    """Adds two numbers."""

    def declare_ports(self):
        return [input_port("a"), input_port("b"), output_port("sum")]

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return {"sum": inputs["a"] + inputs["b"]}


def tool_messages(messages) -> list[ToolMessage]:
    return [m for m in messages if isinstance(m, ToolMessage)]


# ------------------------------------------------------------- check 32
def test_two_tool_rounds_then_answer():
    rec = Recorder()
    model = chat(call("lookup", "c1", key="x"), call("lookup", "c2", key="y"), "x and y")
    result = Agent(llm=model, tools=[rec.tool]).invoke("what are x and y?")
    assert isinstance(result, AgentResult)
    assert rec.calls == ["x", "y"] and result.tool_calls == 2
    assert result.steps == 3 and len(model.seen) == 3
    assert result.stop_reason == "answered" and result.text == "x and y"
    # each model call sees the previous tool result
    assert tool_messages(model.seen[1])[-1].content == "value of x"
    assert tool_messages(model.seen[2])[-1].content == "value of y"


def test_max_steps_stops_early_without_raising():
    rec = Recorder()
    model = chat(call("lookup", "c1", key="x"), call("lookup", "c2", key="y"), "x and y")
    agent = Agent(llm=model, tools=[rec.tool], max_steps=2)
    result = agent.invoke("what are x and y?")
    assert result.stop_reason == "max_steps" and result.steps == 2 and len(model.seen) == 2
    assert rec.calls == ["x"] and result.tool_calls == 1
    assert result.messages[-1].tool_calls[0]["id"] == "c2"  # the last model message, returned
    assert [c["id"] for c in result.pending_tool_calls] == ["c2"]
    # the next call closes the open tool call so the conversation stays valid
    agent.invoke("go on")
    seen = model.seen[-1]
    closing = next(m for m in seen if isinstance(m, ToolMessage) and m.tool_call_id == "c2")
    assert "step limit" in closing.content


def test_system_prompt_and_no_tools():
    model = chat("hello")
    result = Agent(llm=model, system_prompt="Be brief.").invoke("hi")
    assert result.text == "hello" and result.steps == 1 and result.tool_calls == 0
    assert isinstance(model.seen[0][0], SystemMessage) and model.seen[0][0].content == "Be brief."
    assert not any(isinstance(m, SystemMessage) for m in result.messages)  # not in memory


# ------------------------------------------------------------- check 33
def test_memory_persists_across_calls_and_resets():
    model = chat("first answer", "second answer")
    agent = Agent(llm=model)
    agent.invoke("first question")
    agent.invoke("second question")
    assert [m.content for m in model.seen[1]] == ["first question", "first answer", "second question"]
    agent.reset()
    agent.invoke("third")
    assert [m.content for m in model.seen[2]] == ["third"]


def test_memory_round_trips_through_state_dict():
    rec = Recorder()
    first = Agent(llm=chat(call("lookup", "c1", key="x"), "x is known"), tools=[rec.tool])
    first.invoke("remember x")
    state = first.state_dict()
    assert set(state) == {"memory"}

    model = chat("you asked about x")
    second = Agent(llm=model, tools=[rec.tool])
    second.load_state_dict(state, strict=True)
    assert second.invoke("what did I ask?").text == "you asked about x"
    seen = model.seen[0]
    assert [type(m).__name__ for m in seen] == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage", "HumanMessage"]
    assert seen[0].content == "remember x" and seen[1].tool_calls[0]["id"] == "c1"
    assert seen[2].content == "value of x" and seen[3].content == "x is known"


def test_strict_load_names_unknown_keys():
    agent = Agent(llm=chat("hi"))
    state = {**agent.state_dict(), "plan": [1, 2]}
    with pytest.raises(StateDictError, match="plan"):
        agent.load_state_dict(state, strict=True)
    assert agent.load_state_dict(state, strict=False).unexpected_keys == ["plan"]


def test_memory_limit_keeps_the_last_messages():
    model = chat("a1", "a2", "a3")
    agent = Agent(llm=model, memory_limit=2)
    for q in ("q1", "q2", "q3"):
        agent.invoke(q)
    assert [m.content for m in model.seen[2]] == ["q2", "a2", "q3"]
    assert [m.content for m in agent.memory] == ["q3", "a3"]


# ------------------------------------------------------- graphs and blocks as tools
def adder_graph() -> Graph:
    graph = Graph("adder")
    graph.add_node("add", Add())
    graph.expose_input("add", "a", "a")
    graph.expose_input("add", "b", "b")
    graph.expose_output("add", "sum", "sum")
    return graph


@pytest.mark.filterwarnings(BETA)
def test_worldgen_graph_as_a_tool():
    model = chat(call("adder", "c1", a=2, b=3), "the sum is 5")
    result = Agent(llm=model, tools=[adder_graph().as_tool(name="adder", description="Adds a and b.")]).invoke("2+3?")
    assert result.text == "the sum is 5" and result.tool_calls == 1
    assert '"sum": 5' in tool_messages(model.seen[1])[-1].content


@pytest.mark.filterwarnings(BETA)
def test_graph_and_runnables_are_wrapped_automatically():
    model = chat(call("adder", "c1", a=1, b=1), "2")
    agent = Agent(llm=model, tools=[adder_graph()])
    assert [t.name for t in agent.tools] == ["adder"]
    agent.invoke("1+1?")
    assert '"sum": 2' in tool_messages(model.seen[1])[-1].content


def test_block_as_tool():
    block = Add("adder_block")
    add_tool = block_as_tool(block, description="Adds a and b.")
    assert add_tool.name == "adder_block" and set(add_tool.args) == {"a", "b"}
    assert add_tool.invoke({"a": 4, "b": 5}) == {"sum": 9}
    model = chat(call("adder_block", "c1", a=4, b=5), "nine")
    result = Agent(llm=model, tools=[block]).invoke("4+5?")  # a Block is wrapped the same way
    assert result.text == "nine" and '"sum": 9' in tool_messages(model.seen[1])[-1].content


# ---------------------------------------------------------- the Agent as a block
def test_agent_as_a_block_in_a_graph():
    rec = Recorder()
    model = chat(call("lookup", "c1", key="hero"), "the hero is Ana")
    agent = Agent(llm=model, tools=[rec.tool])
    assert {p.name for p in agent.get_input_ports()} == {"context", "tool_results"}
    assert {p.name for p in agent.get_output_ports()} == {"response", "tool_calls"}
    graph = Graph()
    graph.add_node("agent", agent)
    graph.expose_input("agent", "context", "context")
    graph.expose_output("agent", "response", "response")
    assert graph.run({"context": "who is the hero?"}) == {"response": "the hero is Ana"}
    assert rec.calls == ["hero"] and isinstance(model.seen[0][-1], HumanMessage)


def test_forward_returns_unrun_tool_calls_and_takes_their_results():
    rec = Recorder()
    model = chat(call("lookup", "c1", key="x"), "x is 1")
    agent = Agent(llm=model, tools=[rec.tool], max_steps=1)
    out = agent.forward({"context": "x?"})
    assert out == {"response": "", "tool_calls": [{"tool_id": "lookup", "arguments": {"key": "x"}, "call_id": "c1"}]}
    assert rec.calls == []
    out = agent.forward({"context": "go on", "tool_results": [{"tool_id": "lookup", "result": {"x": 1}}]})
    assert out == {"response": "x is 1"}
    answered = next(m for m in model.seen[1] if isinstance(m, ToolMessage))
    assert answered.tool_call_id == "c1" and answered.content == '{"x": 1}'


def test_registered_as_agent_react():
    model = chat("ok")
    agent = global_registry().build({"type": "agent/react", "llm": model, "max_steps": 3, "system_prompt": "s"})
    assert isinstance(agent, Agent) and agent.block_type == "agent/react"
    assert agent.max_steps == 3 and "llm" not in agent.config  # an object model is not config
    assert agent.run({"context": "hi"}) == {"response": "ok"}
    with pytest.raises(ValueError, match="llm"):
        global_registry().build({"type": "agent/react"})


def test_compiled_graph_is_exposed():
    agent = Agent(llm=chat("ok"), tools=[Recorder().tool])
    assert {"model", "tools"} <= set(agent.graph.get_graph().nodes)
    out = agent.graph.invoke({"messages": [HumanMessage("hi")]})
    assert out["messages"][-1].content == "ok" and out["steps"] == 1


def test_ainvoke():
    rec = Recorder()
    model = chat(call("lookup", "c1", key="x"), "done")
    agent = Agent(llm=model, tools=[rec.tool])
    result = asyncio.run(agent.ainvoke("x?"))
    assert result.stop_reason == "answered" and result.steps == 2 and rec.calls == ["x"]
    assert len(agent.memory) == 4
