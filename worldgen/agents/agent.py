"""`Agent`: LangGraph's tool-calling loop as a worldgen block with memory (ARCHITECTURE §6).

The loop is a compiled subgraph (model → `tools_condition` → `ToolNode` → model …) bounded by
`max_steps` model calls, so it can also be a node of a stage or be shown in Studio
(`Agent.graph`). The `Agent` wrapper adds what the subgraph does not have: a conversation that
persists across calls and lives in `state_dict()`, and the agent role's ports, so the same
object answers `invoke("...")` and sits in a worldgen `Graph` (`context` → `response`).

Tools may be LangChain tools, worldgen graphs or any Runnable (via ``as_tool``), plain
functions, or worldgen blocks (via `block_as_tool`). As a node of a worldgen `Graph` (the
``agent`` role), a tool may also be ``"node:<node_id>"``: another node of the same graph,
called by the agent instead of by edges (levels.md §2, the tool_id → node_id map). The graph
leaves such a node out of its static run when nothing feeds it, and the reference is resolved
when the loop is first compiled; references are strings, so they stay in the agent's config.

Registered as ``agent/react``. A chat model cannot be written in a config file, so
``registry.build({"type": "agent/react", "llm": ...})`` needs ``llm`` in the config: a
`BaseChatModel` object or a spec string for `worldgen.chat_models.resolve_chat_model`
("local", "openai:<model>"); only a spec string is kept in ``config``. The registration
happens when this module is imported.

One Agent holds one conversation: sharing an Agent between nodes or threads shares (and
interleaves) its memory; concurrent calls on the same Agent are not supported.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, NotRequired, TypedDict

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AnyMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    convert_to_messages,
    messages_from_dict,
    messages_to_dict,
)
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, StructuredTool
from langchain_core.tools import tool as _function_tool
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode, tools_condition
from pydantic import BaseModel, ConfigDict, Field, create_model

from worldgen.blocks.api import message_text
from worldgen.blocks.base import Block
from worldgen.blocks.ports import PortType
from worldgen.blocks.registry import register_block
from worldgen.blocks.roles import Agent as AgentRole

try:  # what ToolNode and langgraph's own agents use: a sync and an async body, no extra run
    from langgraph._internal._runnable import RunnableCallable as _Callable
except ImportError:  # pragma: no cover - moved in a later langgraph
    from langchain_core.runnables import RunnableLambda as _Callable  # type: ignore[assignment]

__all__ = ["NODE_TOOL_PREFIX", "Agent", "AgentResult", "AgentSettings", "AgentState", "StopReason", "block_as_tool"]

StopReason = Literal["answered", "max_steps"]
DEFAULT_MAX_STEPS = 10
#: a tool given as ``"node:<node_id>"`` is that node of the agent's graph
NODE_TOOL_PREFIX = "node:"
_SKIPPED = "Not run: the agent's step limit was reached before this call."
_SCHEMA_TYPES: dict[PortType, Any] = {PortType.TEXT: str, PortType.DICT: dict[str, Any]}
_TOOL_NAME = re.compile(r"[^a-zA-Z0-9_-]+")


class AgentState(TypedDict):
    """State of the loop subgraph: the conversation and the model calls made so far."""

    messages: Annotated[list[AnyMessage], add_messages]
    steps: NotRequired[int]


class AgentResult(BaseModel):
    """One `Agent.invoke`: the reply, the whole conversation, and why the loop stopped."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    text: str
    messages: list[BaseMessage]
    steps: int = Field(description="model calls in this invoke")
    tool_calls: int = Field(description="tool calls run in this invoke")
    stop_reason: StopReason

    @property
    def pending_tool_calls(self) -> list[dict[str, Any]]:
        """The calls the last model message asked for but the loop did not run (max_steps)."""
        last = self.messages[-1] if self.messages else None
        return list(last.tool_calls) if isinstance(last, AIMessage) and self.stop_reason == "max_steps" else []


class AgentSettings(BaseModel):
    """The serialisable part of an agent's config (the model only as a spec string)."""

    model_config = ConfigDict(extra="allow")

    llm: str | None = None
    system_prompt: str | None = None
    max_steps: int = Field(DEFAULT_MAX_STEPS, ge=1)
    memory_limit: int | None = Field(None, ge=1)


@register_block("agent/react")
class Agent(AgentRole):
    """A tool-calling chat agent with memory; also an ``agent`` role block.

    ``Agent(llm=model, tools=[...], system_prompt=..., max_steps=10, memory_limit=None)``;
    the same keys may come from ``config`` (keyword arguments win). `max_steps` bounds model
    calls per `invoke`; `memory_limit` keeps only the last N messages between calls.
    """

    block_type = "agent/react"
    config_schema = AgentSettings

    def __init__(
        self,
        block_id: str | None = None,
        *,
        config: Mapping[str, Any] | None = None,
        llm: BaseChatModel | str | None = None,
        tools: Sequence[Any] | None = None,
        system_prompt: str | None = None,
        max_steps: int | None = None,
        memory_limit: int | None = None,
    ) -> None:
        config = dict(config or {})
        llm = llm if llm is not None else config.get("llm")
        tools = tools if tools is not None else config.get("tools", ())
        config.pop("tools", None)  # objects: never deep-copied into config
        config.pop("llm", None)
        if isinstance(llm, str):
            config["llm"] = llm
        refs = [t for t in tools if isinstance(t, str) and t.startswith(NODE_TOOL_PREFIX)]
        if refs:
            config["tools"] = refs  # strings: serialisable, resolved against the graph
        explicit = {"system_prompt": system_prompt, "max_steps": max_steps, "memory_limit": memory_limit}
        config.update({k: v for k, v in explicit.items() if v is not None})
        super().__init__(block_id, config=config)
        if llm is None:
            raise ValueError(
                f"{self!r} needs llm=: a BaseChatModel, or a spec string such as 'local' or "
                "'openai:<model>' (with registry.build, put it in the config under 'llm')"
            )
        self._llm_spec: BaseChatModel | str = llm
        #: node ids of the graph this agent sits in, offered as tools ("node:<id>")
        self.tool_nodes: list[str] = [t[len(NODE_TOOL_PREFIX):] for t in refs]
        self.tools: list[BaseTool] = [_to_tool(t) for t in tools if t not in refs]
        self.memory: list[BaseMessage] = []
        self._graph: Any = None
        self._host: Any = None  # weakref to the worldgen Graph holding this agent
        self._compiled_for: int | None = None  # that graph's execution_version at compile time

    def attach_to_graph(self, graph: Any, node_id: str) -> None:
        """Called by `Graph.add_node`: remember the graph that resolves ``node:`` tools."""
        import weakref

        self._host = weakref.ref(graph)
        self._graph = None  # recompile: the tools may now resolve differently

    def _node_tools(self) -> list[BaseTool]:
        if not self.tool_nodes:
            return []
        host = self._host() if self._host is not None else None
        if host is None:
            raise ValueError(
                f"agent {self.block_id!r} has node tools {self.tool_nodes}: add it to the worldgen Graph "
                "that holds those nodes"
            )
        tools = []
        for node_id in self.tool_nodes:
            block = host.get_node(node_id).block  # names the graph's nodes when unknown
            tools.append(block_as_tool(block, name=_TOOL_NAME.sub("_", node_id)))
        return tools

    # ------------------------------------------------------------ settings
    @property
    def max_steps(self) -> int:
        return self.settings.max_steps  # type: ignore[union-attr]

    @property
    def memory_limit(self) -> int | None:
        return self.settings.memory_limit  # type: ignore[union-attr]

    @property
    def system_prompt(self) -> str | None:
        return self.settings.system_prompt  # type: ignore[union-attr]

    # ---------------------------------------------------------------- loop
    @property
    def graph(self) -> Any:
        """The compiled loop (state `AgentState`); built, and the model resolved, on first use.

        It is stateless: memory belongs to the Agent, so running the graph directly (e.g. as
        a node of a stage) uses only the messages in its input.
        """
        host = self._host() if self._host is not None and self.tool_nodes else None
        version = host.execution_version if host is not None else None
        if self._graph is None or version != self._compiled_for:  # node tools: follow graph edits
            self._graph = self._compile()
            self._compiled_for = version
        return self._graph

    def invoke(self, input: str | Mapping[str, Any] | Sequence[Any], config: RunnableConfig | None = None) -> AgentResult:
        """Run the loop on `input` after the remembered conversation; remember the outcome.

        `input`: a string (a human message), a list of messages, ``{"messages": [...]}``, or
        any other dict (sent as JSON text).
        """
        history = self._history(input)
        out = self.graph.invoke({"messages": history, "steps": 0}, self._run_config(config))
        return self._finish(len(history), out)

    async def ainvoke(
        self, input: str | Mapping[str, Any] | Sequence[Any], config: RunnableConfig | None = None
    ) -> AgentResult:
        """`invoke` with the async model and tools."""
        history = self._history(input)
        out = await self.graph.ainvoke({"messages": history, "steps": 0}, self._run_config(config))
        return self._finish(len(history), out)

    def invoke_stateless(
        self, input: str | Mapping[str, Any] | Sequence[Any], config: RunnableConfig | None = None
    ) -> AgentResult:
        """One run on `input` alone: memory is neither read nor written, so runs of one Agent
        may overlap (a stage called by concurrent threads)."""
        messages = _to_messages(input)
        return self._result(0, self.graph.invoke({"messages": messages, "steps": 0}, self._run_config(config)))

    def reset(self) -> None:
        """Forget the conversation."""
        self.memory = []

    # --------------------------------------------------------------- block
    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """``context`` (+ ``tool_results`` answering calls left by a max_steps stop) →
        ``response`` (+ ``tool_calls`` the loop did not run, as ``[{tool_id, arguments, call_id}]``)."""
        if inputs.get("tool_results"):
            self._answer_pending(inputs["tool_results"])
        result = self.invoke(inputs.get("context", ""))
        outputs: dict[str, Any] = {"response": result.text}
        pending = result.pending_tool_calls
        if pending:
            outputs["tool_calls"] = [
                {"tool_id": c["name"], "arguments": c["args"], "call_id": c.get("id")} for c in pending
            ]
        return outputs

    def local_state_dict(self) -> dict[str, Any]:
        return {"memory": messages_to_dict(self.memory)}

    def load_local_state_dict(self, state: dict[str, Any]) -> None:
        if "memory" in state:
            self.memory = messages_from_dict(state["memory"])

    # ------------------------------------------------------------- private
    def _compile(self) -> Any:
        model = _resolve_model(self._llm_spec)
        tools = [*self.tools, *self._node_tools()]
        bound = model.bind_tools(tools) if tools else model
        system = SystemMessage(self.system_prompt) if self.system_prompt else None

        def prompt(state: AgentState) -> list[BaseMessage]:
            return [system, *state["messages"]] if system else state["messages"]

        def call_model(state: AgentState) -> dict[str, Any]:
            return {"messages": [bound.invoke(prompt(state))], "steps": state.get("steps", 0) + 1}

        async def acall_model(state: AgentState) -> dict[str, Any]:
            return {"messages": [await bound.ainvoke(prompt(state))], "steps": state.get("steps", 0) + 1}

        def route(state: AgentState) -> str:
            if state.get("steps", 0) >= self.max_steps:  # read per call: settings may change
                return END
            return tools_condition(state)

        builder = StateGraph(AgentState)
        builder.add_node("model", _Callable(call_model, acall_model, name="model"))
        builder.add_edge(START, "model")
        if tools:
            builder.add_node("tools", ToolNode(tools))
            builder.add_conditional_edges("model", route, {"tools": "tools", END: END})
            builder.add_edge("tools", "model")
        else:
            builder.add_edge("model", END)
        return builder.compile(name=self.block_id)

    def _run_config(self, config: RunnableConfig | None) -> RunnableConfig:
        # each model call and each tool batch is one superstep; leave room for both
        limit = 2 * self.max_steps + 2
        config = dict(config or {})
        config["recursion_limit"] = max(config.get("recursion_limit", 0), limit)
        return config  # type: ignore[return-value]

    def _history(self, input: Any) -> list[BaseMessage]:
        self._answer_pending(())  # a provider rejects a tool call with no reply
        return [*self.memory, *_to_messages(input)]

    def _answer_pending(self, results: Sequence[Mapping[str, Any]]) -> None:
        """Reply to the calls a max_steps stop left open: with `results` where they match
        (by ``call_id``, else by ``tool_id``), else with a "not run" note."""
        last = self.memory[-1] if self.memory else None
        if not isinstance(last, AIMessage) or not last.tool_calls:
            return
        unused = list(results)
        for call in last.tool_calls:
            match = next((r for r in unused if r.get("call_id") == call.get("id")), None) or next(
                (r for r in unused if r.get("tool_id") == call["name"] and not r.get("call_id")), None
            )
            if match is not None:
                unused.remove(match)
            content = _SKIPPED if match is None else message_text(match.get("result"))
            self.memory.append(ToolMessage(content, tool_call_id=call.get("id") or "", name=call["name"]))

    def _finish(self, start: int, out: Mapping[str, Any]) -> AgentResult:
        result = self._result(start, out)
        self.memory = _trim(result.messages, self.memory_limit)
        return result

    @staticmethod
    def _result(start: int, out: Mapping[str, Any]) -> AgentResult:
        """The loop's output as an `AgentResult`; ``start``: where this run's messages begin."""
        messages: list[BaseMessage] = list(out["messages"])
        last = messages[-1]
        stop: StopReason = "max_steps" if isinstance(last, AIMessage) and last.tool_calls else "answered"
        ran = sum(isinstance(m, ToolMessage) for m in messages[start:])
        return AgentResult(
            text=last.text, messages=messages, steps=out.get("steps", 0), tool_calls=ran, stop_reason=stop
        )


# ------------------------------------------------------------------ tools
def block_as_tool(block: Block, name: str | None = None, description: str | None = None) -> BaseTool:
    """A tool whose arguments are `block`'s input ports and whose result is its output dict.

    Optional ports (and ports with a config default) are optional arguments; an argument
    left out is not passed to `forward`, so the block's defaults apply.
    """
    fields: dict[str, Any] = {}
    optional: set[str] = set()
    defaults = block.config.get("defaults") or {}
    for port in block.get_input_ports():
        required = not port.optional and port.name not in defaults
        if not required:
            optional.add(port.name)
        text = port.description or f"{port.name} ({port.dtype.value})"
        fields[port.name] = (_SCHEMA_TYPES.get(port.dtype, Any), Field(... if required else None, description=text))
    tool_name = name or _TOOL_NAME.sub("_", block.block_id)
    schema = create_model(f"{tool_name}_args", __config__=ConfigDict(arbitrary_types_allowed=True), **fields)

    def run(**kwargs: Any) -> dict[str, Any]:
        return block.forward({k: v for k, v in kwargs.items() if not (v is None and k in optional)})

    outputs = ", ".join(p.name for p in block.get_output_ports())
    summary = (type(block).__doc__ or "").strip().split("\n")[0] or f"Run block {block.block_id!r}."
    return StructuredTool.from_function(
        run, name=tool_name, description=description or f"{summary} Returns {{{outputs}}}.", args_schema=schema
    )


def _to_tool(obj: Any) -> BaseTool:
    if isinstance(obj, BaseTool):
        return obj
    if isinstance(obj, Block):
        return block_as_tool(obj)
    if hasattr(obj, "as_tool"):  # a worldgen Graph, any Runnable
        name = getattr(obj, "name", None) or type(obj).__name__
        return obj.as_tool(name=_TOOL_NAME.sub("_", name), description=_runnable_description(obj, name))
    if callable(obj):
        return _function_tool(obj)
    raise TypeError(f"cannot use {type(obj).__name__} as a tool: give a BaseTool, Block, Runnable or function")


def _runnable_description(obj: Any, name: str) -> str:
    doc = getattr(obj, "description", None) or (type(obj).__doc__ or "").strip().split("\n")[0]
    return doc or f"Run {name}."


# --------------------------------------------------------------- messages
def _resolve_model(spec: BaseChatModel | str) -> BaseChatModel:
    from worldgen.chat_models import resolve_chat_model

    return resolve_chat_model(spec)


def _to_messages(input: Any) -> list[BaseMessage]:
    if isinstance(input, str):
        return [HumanMessage(input)]
    if isinstance(input, BaseMessage):
        return [input]
    if isinstance(input, Mapping):
        if "messages" in input:
            return convert_to_messages(input["messages"])
        return [HumanMessage(message_text(dict(input)))]
    if isinstance(input, Sequence):
        return convert_to_messages(list(input))
    return [HumanMessage(message_text(input))]


def _trim(messages: list[BaseMessage], limit: int | None) -> list[BaseMessage]:
    """The last `limit` messages, never starting with a tool reply cut off from its call."""
    if limit is None or len(messages) <= limit:
        return list(messages)  # not the result's list: editing one must not edit the other
    kept = messages[-limit:]
    while kept and isinstance(kept[0], ToolMessage):
        kept = kept[1:]
    return kept

