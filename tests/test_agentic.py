"""Agents at every level (world.md §5, checks 32–34; levels.md §2 agent/tool roles):
agentic Development, Author and Creator inside the canon world (the §2 table holds),
their fallbacks, the agent role in graphs with other nodes as tools, a graph-agent in a
pipeline, and the stage-agent. Scripted chat models only (no network, no real model)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
from langchain_core.messages import AIMessage, ToolMessage

from tests.conftest import AFTER_PASS, TABLE_ROWS, ScriptedChat, user_state
from worldgen import World
from worldgen.agents import AgentAuthor, AgentCreator, AgentDevelopment
from worldgen.agents.agent import Agent
from worldgen.blocks import Block, input_port, output_port
from worldgen.engine import Graph, Pipeline

CONFIG = {"slots": [{"name": "scene", "kind": "image", "prompt": "a lighthouse at dusk"},
                    {"name": "caption", "kind": "text", "prompt": "a line about the keeper"}]}


def call(tool: str, call_id: str, **args: Any) -> AIMessage:
    return AIMessage("", tool_calls=[{"name": tool, "args": args, "id": call_id, "type": "tool_call"}])


def chat(*replies: AIMessage | str) -> ScriptedChat:
    return ScriptedChat(responses=[r if isinstance(r, AIMessage) else AIMessage(r) for r in replies], seen=[])


def said(model: ScriptedChat) -> list[str]:
    return [" ".join(str(m.content) for m in call) for call in model.seen]


def three_agents():
    """Each agent on its own scripted model: one tool call, then an answer (2 replies a call)."""
    dev = chat(call("recent_episodes", "d1", n=2), "A gull brings a message to the gate.")
    author = chat(call("get_entity", "a1", name="Tamsin"), "Tamsin read the message aloud.")
    creator = chat(call("render_procedural", "c1", slot="scene"), "done")
    stages = {"development": AgentDevelopment(dev), "author": AgentAuthor(author),
              "creator": AgentCreator(creator, "procedural")}
    return stages, dev, author, creator


# -- the §2 table with all three agents inside (check 34) ---------------------------------
@pytest.mark.parametrize(
    ("given", "ran", "snaps"),
    TABLE_ROWS,
)
def test_table_row_with_three_agents(make_world, log, given, ran, snaps):
    stages, dev, author, creator = three_agents()
    world = make_world(**stages)
    result = world.invoke(user_state(*given) if given else None, action="knock")
    assert result.ran() == ran
    assert log.names() == [t for t in ran if t not in ("development", "author", "creator")]
    assert result.state.filled() == {1, 2, 3}
    assert len(result.snapshots) == snaps == len(world.snapshots())
    assert result.state.block1.text == "A gull brings a message to the gate."
    (ref,) = result.state.block3.items  # the scripted architect's one image slot
    assert ref.meta["chosen_by"] == "agent" and ref.meta["tool"] == "render_procedural"
    assert "knock" in said(dev)[0]  # the action reaches Development's agent
    assert not any("knock" in p for p in said(author) + said(creator))
    if "author" in ran:
        doc = json.loads(result.snapshots[0].read_text())["state"]
        assert doc["block5"] == {"text": "Tamsin read the message aloud."}
        tool_reply = [m for m in author.seen[1] if isinstance(m, ToolMessage)]
        assert "knows nothing named 'Tamsin'" in tool_reply[0].content  # read the world, pre-update
    for stage in (stages["development"], stages["creator"]):
        (record,) = stage.records
        assert record.tool_calls == 1 and record.stop_reason == "answered" and record.fallback is None


def test_two_passes_with_three_agents_update_the_world(make_world, log):
    from worldgen.agents import WorldUpdate

    stages, dev, _, _ = three_agents()
    world = make_world(**stages, world_update=WorldUpdate())
    result = world.invoke(num_steps=2)
    assert result.ran() == [*AFTER_PASS, "philosopher", "author", "world_update", *AFTER_PASS]
    assert len(result.snapshots) == 1 and result.state.filled() == {1, 2, 3}
    assert world.content.chronicle[0]["outcome"] == "Tamsin read the message aloud."
    # pass 2's Development read the updated world through its tool
    episodes = [m for m in dev.seen[3] if isinstance(m, ToolMessage)]
    assert episodes[-1].content.startswith("1. Tamsin read the message aloud.")


@pytest.mark.parametrize("steps", [1, 3, 5])
def test_pass_counts_and_stream_with_three_agents(make_world, log, steps):
    """Checks 9, 10, 17 and 42 with the agents inside: same passes, snapshots and events."""
    stages, *_ = three_agents()
    world = make_world(**stages)
    events = list(world.stream(num_steps=steps))
    assert len(events) == 6 * steps
    assert [e.status for e in events if e.transition == "development"] == ["ran"] * steps
    assert len(world.snapshots()) == steps - 1
    assert len(stages["development"].records) == steps and len(stages["author"].records) == steps - 1
    assert world.state.filled() == {1, 2, 3}


def test_canon_template_with_agents_wires_three_agents(tmp_path):
    llm = chat("x")
    with World.from_template("canon", root=tmp_path / "w", llm=llm, agents=True) as world:
        impls = {t: type(s.impl).__name__ for t, s in world.stages.items()}
    assert impls["development"] == "AgentDevelopment" and impls["author"] == "AgentAuthor"
    assert impls["creator"] == "AgentCreator" and impls["architect"] == "Architect"


# -- fallbacks: a small model that answers without tools -----------------------------------
class _World:
    def __init__(self, tmp_path):
        from worldgen.artifacts import ArtifactStore

        self.artifacts = ArtifactStore(tmp_path)

    def story(self):
        return "A valley."

    def summary(self):
        return "A valley."

    def chronicle(self, last=None):
        return []

    def entities(self):
        return {}

    def glossary(self):
        return {}


def test_creator_picks_a_generator_per_slot(tmp_path):
    painted, flat = [], []

    def renderer(log, name):
        from worldgen.tools.text_to_image import ProceduralRenderer

        def render(prompt, **kw):
            log.append(prompt)
            return ProceduralRenderer()(prompt, width=64, height=64)

        render.name = name
        return render

    renderers = {"painted": renderer(painted, "painted"), "flat": renderer(flat, "flat")}
    config = {"slots": [{"name": "a", "kind": "image", "prompt": "a hill"},
                        {"name": "b", "kind": "image", "prompt": "a sea"},
                        {"name": "c", "kind": "text", "prompt": "a line"}]}
    llm = chat(call("render_flat", "1", slot="b"), call("render_painted", "2", slot="a"),
               call("write_text", "3", slot="c"), "The line.", "done")
    creator = AgentCreator(llm, renderers["painted"], renderers=renderers)
    out = creator({"block2": config, "world": _World(tmp_path)})
    a, b, c = out["block3"]["items"]
    assert (a["meta"]["generator"], b["meta"]["generator"]) == ("painted", "flat")
    assert painted == ["a hill"] and flat == ["a sea"]
    assert c["meta"]["chosen_by"] == "agent" and c["slot"] == "c"
    assert creator.records[-1].tools == ["render_flat", "render_painted", "write_text"]


def test_creator_renders_every_slot_by_default_when_the_agent_calls_no_tool(tmp_path):
    llm = chat("I will not call tools.", "A keeper's line.")
    creator = AgentCreator(llm, "procedural")
    out = creator({"block2": CONFIG, "world": _World(tmp_path)})
    image, text = out["block3"]["items"]
    assert image["meta"]["chosen_by"] == "default" and image["meta"]["generator"] == "procedural"
    assert text["meta"]["chosen_by"] == "default"
    assert creator.records[-1].fallback == "default generator for scene, caption"


def test_creator_agent_tools_take_only_slots_of_their_kind(tmp_path):
    from langchain_core.utils.function_calling import convert_to_openai_tool

    from worldgen.state import Slot

    creator = AgentCreator(chat("x"), "procedural")
    slots = {"scene": Slot(name="scene", kind="image", prompt="p"), "caption": Slot(name="caption", kind="text", prompt="q")}
    slots["note"] = Slot(name="note", kind="text", prompt="r")
    tools = {t.name: convert_to_openai_tool(t)["function"]["parameters"] for t in creator.tools(slots, {}, None)}
    assert tools["render_procedural"]["properties"]["slot"]["const"] == "scene"
    assert tools["write_text"]["properties"]["slot"]["enum"] == ["caption", "note"]


def test_a_repeated_slot_is_made_once(tmp_path):
    llm = chat(call("render_procedural", "1", slot="scene"), call("render_procedural", "2", slot="scene"), "done")
    creator = AgentCreator(llm, "procedural")
    out = creator({"block2": {"slots": [CONFIG["slots"][0]]}, "world": _World(tmp_path)})
    assert len(out["block3"]["items"]) == 1
    assert "already made" in [m for m in llm.seen[2] if isinstance(m, ToolMessage)][-1].content


@pytest.mark.parametrize("cls", [AgentDevelopment, AgentAuthor])
def test_empty_agent_answer_falls_back_to_the_plain_transition(tmp_path, cls):
    llm = chat(call("recent_episodes", "1"), call("recent_episodes", "2"), "The plain answer.")
    transition = cls(llm, max_steps=2)
    state = {"block1": "x", "block2": "y", "block4": "z", "world": _World(tmp_path), "action": None}
    out = transition(state)
    key = "block1" if cls is AgentDevelopment else "block5"
    assert out[key]["text"] == "The plain answer."
    (record,) = transition.records
    assert record.stop_reason == "max_steps" and record.fallback.startswith("plain ")


# -- the agent role in graphs: other nodes as tools ----------------------------------------
class Paint(Block):
    """Paints a prompt (records its calls)."""

    def declare_ports(self):
        return [input_port("prompt"), output_port("image")]

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        self.config.setdefault("calls", []).append(inputs["prompt"])
        return {"image": f"<image of {inputs['prompt']}>"}


def agent_graph(model) -> tuple[Graph, Paint]:
    paint = Paint()
    graph = Graph("painter_agent")
    graph.add_node("agent", Agent(llm=model, tools=["node:t2i"]))
    graph.add_node("t2i", paint)
    graph.expose_input("agent", "context", "context")
    graph.expose_output("agent", "response", "response")
    return graph, paint


def test_agent_node_calls_another_node_of_its_graph_as_a_tool():
    model = chat(call("t2i", "1", prompt="a red moon"), "painted it")
    graph, paint = agent_graph(model)
    assert graph.tool_only_nodes() == {"t2i"}
    assert graph.validate().is_valid  # t2i's unfed prompt is not an error: the agent feeds it
    assert [s.node_ids for s in graph.plan().steps] == [("agent",)]
    assert graph.run({"context": "paint a red moon"}) == {"response": "painted it"}
    assert paint.config["calls"] == ["a red moon"]
    assert "<image of a red moon>" in next(m for m in model.seen[1] if isinstance(m, ToolMessage)).content


def test_a_node_tool_fed_by_edges_still_runs_statically_and_unknown_refs_are_errors():
    graph = Graph()
    graph.add_node("agent", Agent(llm=chat("ok"), tools=["node:nowhere"]))
    graph.expose_input("agent", "context", "context")
    result = graph.validate(strict=False)
    assert any("node:nowhere" in str(e) for e in result.errors)
    with pytest.raises(KeyError, match="nowhere"):
        graph.run({"context": "hi"})
    graph2, _ = agent_graph(chat("ok"))
    graph2.expose_input("t2i", "prompt", "prompt")
    assert graph2.tool_only_nodes() == set()  # seeded from outside: a normal node too


def test_node_tool_refs_survive_the_agent_config():
    agent = Agent(llm="local", tools=["node:t2i"])
    assert agent.config["tools"] == ["node:t2i"] and agent.tool_nodes == ["t2i"]
    graph = Graph("g")
    graph.add_node("agent", agent)
    graph.add_node("echo", "tool/identity")
    graph.expose_input("agent", "context", "context")
    again = Graph.from_config(graph.to_config())  # no model is loaded: the spec is a string
    assert again.get_node("agent").block.tool_nodes == ["t2i"]
    assert not again.validate(strict=False).is_valid  # t2i is not a node of this graph
    with pytest.raises(ValueError, match="add it to the worldgen Graph"):
        Agent(llm=chat("x"), tools=["node:t2i"]).invoke("hi")


@pytest.mark.filterwarnings("ignore::langchain_core._api.beta_decorator.LangChainBetaWarning")
def test_graph_agent_as_a_pipeline_node():
    model = chat(call("t2i", "1", prompt="a tower"), "a tower, painted")
    graph, paint = agent_graph(model)
    pipeline = Pipeline("with_agent")
    pipeline.add_graph(graph, "painter")
    shout = Graph("shout")

    class Upper(Block):
        def declare_ports(self):
            return [input_port("text"), output_port("text")]

        def forward(self, inputs):
            return {"text": inputs["text"].upper()}

    shout.add_node("upper", Upper())
    shout.expose_input("upper", "text", "text")
    shout.expose_output("upper", "text", "text")
    pipeline.add_graph(shout, "shout")
    pipeline.add_edge("painter", "response", "shout", "text")
    pipeline.expose_input("painter", "context", "context")
    pipeline.expose_output("shout", "text", "text")
    assert pipeline.validate().is_valid
    assert pipeline.run({"context": "paint a tower"}) == {"text": "A TOWER, PAINTED"}
    assert paint.config["calls"] == ["a tower"]


# -- the stage-agent ----------------------------------------------------------------------
def test_stage_agent_maps_blocks_to_context_and_its_answer_to_the_block(make_world, log):
    from worldgen.agents.stage_agent import stage_agent

    model = chat(call("search_chronicle", "1", query="gate"), "The gate opened at last.")
    author = stage_agent("author", model)
    assert author.reads == (1, 2, 3, 4) and author.writes == (5,)
    world = make_world(author=author)
    result = world.invoke(user_state(1, 2, 3))
    assert result.ran() == ["philosopher", "author", "world_update", *AFTER_PASS]
    doc = json.loads(result.snapshots[0].read_text())["state"]
    assert doc["block5"] == {"text": "The gate opened at last."}
    context = model.seen[0][-1].content
    assert "What is supposed to happen next (block 1):\nu1" in context
    assert "What the artifacts actually show (block 4):\n- artifact: described" in context
    assert "Nothing about 'gate'" in next(m for m in model.seen[1] if isinstance(m, ToolMessage)).content


def test_stage_agent_as_development_gets_the_action_and_architect_json(make_world, log):
    from worldgen.agents.stage_agent import stage_agent

    dev_model = chat("The tide comes in.")
    arch_model = chat(json.dumps({"slots": [{"name": "scene", "kind": "image", "prompt": "the tide"}]}))
    world = make_world(development=stage_agent("development", dev_model, world_tools=False),
                       architect=stage_agent("architect", arch_model, world_tools=False))
    result = world.invoke(action="wait for the tide")
    assert result.state.block1.text == "The tide comes in."
    assert result.state.block2.slots[0].prompt == "the tide"
    assert "The user acts: wait for the tide" in dev_model.seen[0][-1].content
    assert "wait for the tide" not in arch_model.seen[0][-1].content


def test_stage_agent_memory_is_kept_only_when_asked():
    from worldgen.agents.stage_agent import stage_agent

    model = chat("one", "two")
    stage = stage_agent("author", model, world_tools=False, keep_memory=True)
    state = {"block1": "a", "block2": "b", "block3": "c", "block4": "d", "world": None}
    stage.invoke(state)
    stage.invoke(state)
    assert len(model.seen[1]) == 4  # system + first question, answer + second question
    saved = stage.impl.state_dict()
    assert len(saved["memory"]) == 4


def test_stage_agent_without_memory_starts_afresh_each_call():
    from worldgen.agents.stage_agent import stage_agent

    model = chat("one", "two")
    stage = stage_agent("author", model, world_tools=False)
    state = {"block1": "a", "block2": "b", "block3": "c", "block4": "d", "world": None}
    stage.invoke(state)
    stage.invoke(state)
    assert len(model.seen[1]) == 2  # system + second question: nothing of the first call
    assert stage.impl.state_dict()["memory"] == []


class _EchoToolChat(ScriptedChat):
    """Calls recent_episodes once, then answers with what the tool returned (thread-safe)."""

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):  # type: ignore[override]
        from langchain_core.outputs import ChatGeneration, ChatResult

        last = messages[-1]
        reply = AIMessage(last.content) if isinstance(last, ToolMessage) else call("recent_episodes", "r", n=1)
        return ChatResult(generations=[ChatGeneration(message=reply)])


def test_concurrent_stage_agent_calls_each_read_their_own_world():
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from worldgen.agents.stage_agent import stage_agent

    both_reading = threading.Barrier(2, timeout=10)

    class World:
        def __init__(self, name: str):
            self.name = name

        def chronicle(self, last: int | None = None) -> list[dict[str, Any]]:
            both_reading.wait()  # the two calls are in flight at once
            return [{"episode": 1, "outcome": f"in {self.name}"}]

    stage = stage_agent("author", _EchoToolChat(responses=[], seen=[]))
    base = {"block1": "a", "block2": "b", "block3": "c", "block4": "d"}
    with ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(lambda n: stage.impl({**base, "world": World(n)}), ["north", "south"]))
    assert [o["block5"] for o in outs] == ["1. in north", "1. in south"]
