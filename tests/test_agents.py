"""The canon's default transitions, driven by scripted chat models (no network)."""

from __future__ import annotations

import json

import pytest
from langchain_core.messages import HumanMessage, SystemMessage

from tests.conftest import scripted_chat
from worldgen import TransitionError, World
from worldgen.agents import extract_entities, extract_json, parse_generation_config
from worldgen.agents.base import ModelOutputError, ask_json, ask_text

CONFIG = json.dumps(
    {"slots": [{"name": "scene", "kind": "image", "prompt": "a lighthouse at dusk"},
               {"name": "caption", "kind": "text", "prompt": "a line about the keeper"}]}
)


def canon_world(tmp_path, *replies, **kw):
    llm = scripted_chat(*replies)
    return World.from_template("canon", root=tmp_path / "w", llm=llm, **kw), llm


def test_canon_pass_one_with_scripted_model(tmp_path):
    world, llm = canon_world(
        tmp_path,
        "A keeper finds a glowing stone.",  # development
        CONFIG,  # architect
        "The keeper kept the light for forty years.",  # creator, text slot
    )
    with world:
        result = world.invoke(action="walk the beach")
        assert result.ran() == ["development", "architect", "creator"]
        state = result.state
        assert state.block1.text == "A keeper finds a glowing stone."
        assert [s.kind for s in state.block2.slots] == ["image", "text"]
        image, text = state.block3.items
        assert image.kind == "image" and image.meta["generator"] == "procedural"
        assert (world.root / image.uri).stat().st_size > 1000
        assert world.artifacts.read_text(text) == "The keeper kept the light for forty years."
        # the action reached Development's prompt, and no other prompt
        prompts = [" ".join(str(m.content) for m in call) for call in llm.seen]
        assert "walk the beach" in prompts[0]
        assert all("walk the beach" not in p for p in prompts[1:])


def test_canon_two_passes_writes_chronicle_and_entities(tmp_path):
    world, llm = canon_world(
        tmp_path,
        "A keeper finds a glowing stone.",
        CONFIG,
        "The keeper kept the light.",
        "A short line about a keeper and a light.",  # philosopher on the text artifact
        "Old Tamsin lifted the stone and the Lighthouse of Varn went dark.",  # author
        "The sea answers.",  # development, pass 2
        CONFIG,
        "Waves.",
    )
    with world:
        result = world.invoke(num_steps=2)
        assert result.ran() == ["development", "architect", "creator", "philosopher", "author",
                                "world_update", "development", "architect", "creator"]
        (snap,) = result.snapshots
        doc = json.loads(snap.read_text())["state"]
        descriptions = doc["block4"]["items"]
        # the image is described from its pixels, not from block 2's prompt
        assert "lighthouse" not in descriptions[0]["text"].lower()
        assert "512" in descriptions[0]["text"]
        assert descriptions[1]["text"] == "A short line about a keeper and a light."
        content = world.content
        assert content.chronicle[0]["outcome"].startswith("Old Tamsin")
        assert {"Old Tamsin", "Lighthouse of Varn"} <= set(content.entities)
        # Development of pass 2 read the updated world
        assert "Old Tamsin" in " ".join(str(m.content) for m in llm.seen[5])


def test_architect_repairs_malformed_json(tmp_path):
    llm = scripted_chat("Sure! ```json\n{'slots': [{'name': 'scene picture', 'prompt': 'a hill',}]\n```")
    config = ask_json(llm, "architect", "sys", "user", parse_generation_config)
    assert config.slots[0].prompt == "a hill" and config.slots[0].kind == "image"


def test_architect_reasks_with_the_problem(tmp_path):
    llm = scripted_chat("no json here", CONFIG)
    config = ask_json(llm, "architect", "sys", "user", parse_generation_config)
    assert len(config.slots) == 2
    assert "not usable" in str(llm.seen[1][-1].content)


def test_garbage_model_gives_clear_error_naming_transition_and_keeps_state(tmp_path):
    # development answers, then the architect gets garbage until every retry is spent
    world, llm = canon_world(tmp_path, "An intent.", *(["", "not json at all"] * 10))
    with world:
        with pytest.raises(TransitionError, match="architect: .*did not return valid JSON after 3 attempts"):
            world.invoke()
        assert world.state.filled() == {1}  # Development's block 1 survived
        asked = len(llm.seen)
        assert asked == 1 + 3 * 3  # 3 node attempts × 3 asks, bounded
    world2 = World.from_template("canon", root=tmp_path / "w", llm=scripted_chat(CONFIG, "words"))
    with world2:
        result = world2.invoke()  # reopening resumes the interrupted pass at the Architect
        assert result.ran() == ["architect", "creator"] and world2.state.filled() == {1, 2, 3}


def test_empty_replies_are_bounded():
    with pytest.raises(ModelOutputError, match="development: .*empty reply 3 times"):
        ask_text(scripted_chat("", " ", ""), "development", "s", "u")


def test_ask_text_strips_preambles():
    assert ask_text(scripted_chat("Sure! Here is the event: The gate opens."), "x", "s", "u") == "The gate opens."


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1}', {"a": 1}),
        ("prose {\"a\": [1, 2,]} more", {"a": [1, 2]}),
        ('```json\n{"a": {"b": 1}\n```', {"a": {"b": 1}}),
        ("{'a': 'b'}", {"a": "b"}),
        ('{"slots": [{"prompt": "x"', {"slots": [{"prompt": "x"}]}),
    ],
)
def test_extract_json(text, expected):
    assert extract_json(text) == expected


@pytest.mark.parametrize("bad", ["", "nothing", "{{{"])
def test_extract_json_rejects(bad):
    with pytest.raises(ValueError):
        extract_json(bad)


@pytest.mark.parametrize(
    ("data", "kinds"),
    [
        ({"slots": [{"kind": "image", "prompt": "p"}]}, ["image"]),
        ([{"name": "caption", "prompt": "p"}], ["text"]),
        ({"scene": "a hill", "caption": "words"}, ["image", "text"]),
        ({"slots": [{"kind": "audio", "prompt": "p"}, {"kind": "text", "prompt": "q"}]}, ["text"]),
    ],
)
def test_parse_generation_config_shapes(data, kinds):
    assert [s.kind for s in parse_generation_config(data).slots] == kinds


def test_parse_generation_config_rejects_empty():
    with pytest.raises(ValueError, match="no usable slot"):
        parse_generation_config({"slots": [{"kind": "audio", "prompt": "p"}]})


def test_extract_entities():
    text = "The storm broke. Old Tamsin walked to the Lighthouse of Varn. She met Ada there."
    assert extract_entities(text, {"storm": "weather"}) == ["Old Tamsin", "Lighthouse of Varn", "Ada", "storm"]


def test_philosopher_uses_the_model_when_it_accepts_images(tmp_path):
    from PIL import Image

    from worldgen.agents import Philosopher
    from worldgen.artifacts import ArtifactStore

    class World_:
        artifacts = ArtifactStore(tmp_path)

    ref = World_.artifacts.put_image(Image.new("RGB", (8, 8), "blue"), slot="scene")
    llm = scripted_chat("A blue square.")
    out = Philosopher(llm, accepts_images=True)({"block3": {"items": [ref.model_dump()]}, "world": World_()})
    assert out["block4"]["items"][0]["text"] == "A blue square."
    human = llm.seen[0][-1]
    assert isinstance(human, HumanMessage) and human.content[1]["type"] == "image_url"
    assert isinstance(llm.seen[0][0], SystemMessage)


def test_extract_json_keeps_the_first_of_duplicated_keys():
    assert extract_json('{"prompt": "a hill", "prompt": "<what to draw>"}') == {"prompt": "a hill"}


def test_placeholder_prompts_are_dropped():
    config = parse_generation_config({"slots": [{"kind": "image", "prompt": "a hill"},
                                                {"kind": "text", "prompt": "<what to write>"}]})
    assert [s.prompt for s in config.slots] == ["a hill"]


def test_architect_prefills_models_that_continue_a_reply():
    from worldgen.agents.architect import PREFILL, Architect

    from typing import ClassVar

    from langchain_core.messages import AIMessage

    from tests.conftest import ScriptedChat

    class Prefilling(ScriptedChat):
        supports_prefill: ClassVar[bool] = True

    llm = Prefilling(responses=[AIMessage(PREFILL + 'a hill at dawn"}]}')], seen=[])

    class W:
        def style(self):
            return ""

    out = Architect(llm)({"block1": {"text": "dawn"}, "world": W()})
    assert out["block2"].slots[0].prompt == "a hill at dawn"
    assert llm.seen[0][-1].content == PREFILL  # the reply was started for the model


def test_creator_renders_image_slots_with_a_diffusers_checkpoint(tmp_path, tiny_sd):
    folder = tiny_sd
    config = json.dumps({"slots": [{"name": "scene", "kind": "image", "prompt": "a hill",
                                    "params": {"width": 32, "height": 32, "num_inference_steps": 2}}]})
    world, _ = canon_world(tmp_path, "A hill rises.", config, text_to_image=f"diffusers:{folder}")
    with world:
        (ref,) = world.invoke().state.block3.items
        assert ref.meta["generator"] == f"diffusers:{folder}"
        image = world.artifacts.open_image(ref)
        assert image.size == (32, 32)
        assert yaml_text(world.root) .count(f"diffusers:{folder}") == 1


def yaml_text(root):
    return (root / "world.yaml").read_text()


def test_secrets_never_reach_config_checkpoint_or_snapshot(tmp_path, monkeypatch):
    secret = "sk-test-DO-NOT-LEAK-1234567890"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    world = World.from_template(
        "canon", root=tmp_path / "w", llm="openai:gpt-4o-mini",
        stages={"development": lambda s: {"block1": "x"}, "architect": lambda s: {"block2": "y"},
                "creator": lambda s: {"block3": "z"}, "philosopher": lambda s: {"block4": "d"},
                "author": lambda s: {"block5": "o"}},
    )
    with world:
        world.invoke(num_steps=2)
    assert "openai:gpt-4o-mini" in yaml_text(world.root)
    for path in world.root.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_clean_text_drops_a_sentence_cut_off_by_the_token_budget():
    from worldgen.agents.base import clean_text

    assert clean_text("The gate opens. A bird flies over the", 3) == "The gate opens."
    assert clean_text("A bird flies over the", 3) == "A bird flies over the"


def test_contractions_are_not_entities_and_possessives_name_the_owner():
    assert extract_entities("She's calm. Tamsin's lamp burns. They're gone.") == ["Tamsin"]


def _tool_call(name, args, call_id):
    from langchain_core.messages import AIMessage

    return AIMessage("", tool_calls=[{"name": name, "args": args, "id": call_id, "type": "tool_call"}])


def test_agentic_development_reads_the_world_through_tools_and_gets_the_action(tmp_path):
    from langchain_core.messages import AIMessage, ToolMessage

    from tests.conftest import ScriptedChat

    llm = ScriptedChat(responses=[
        _tool_call("recent_episodes", {"n": 2}, "c1"),
        AIMessage("A gull brings a message to the gate."),
        AIMessage(CONFIG),
        _tool_call("write_text", {"slot": "caption"}, "c2"),  # the Creator agent picks per slot
        AIMessage("The message is sealed with wax."),  # write_text's chat call
        AIMessage("done"),  # the image slot is left to the default generator
    ], seen=[])
    world = World.from_template("canon", root=tmp_path / "w", llm=llm, agents=True)
    with world:
        result = world.invoke(action="open the gate")
        assert result.ran() == ["development", "architect", "creator"]
        assert result.state.block1.text == "A gull brings a message to the gate."
        image, text = result.state.block3.items
        assert image.meta["chosen_by"] == "default" and text.meta["chosen_by"] == "agent"
        assert world.artifacts.read_text(text) == "The message is sealed with wax."
        first, second = llm.seen[0], llm.seen[1]
        assert "open the gate" in " ".join(str(m.content) for m in first)
        tool_replies = [m for m in second if isinstance(m, ToolMessage)]
        assert [m.content for m in tool_replies] == ["No episodes yet."]
        assert all("open the gate" not in " ".join(str(m.content) for m in call) for call in llm.seen[2:])
    assert "agents: true" in (tmp_path / "w" / "world.yaml").read_text()


def test_content_tools_answer_from_the_chronicle_and_entities(tmp_path, log):
    from worldgen.agents import WorldUpdate
    from worldgen.tools.world_content import content_tools

    stages = {**log.stages(), "world_update": WorldUpdate(), "author": lambda s: {"block5": "Ada found the Gate."}}
    with World.from_template("canon", root=tmp_path / "w", stages=stages) as world:
        world.invoke({"block1": "a", "block2": "b", "block3": "c"})
        tools = {t.name: t for t in content_tools(world.content_view)}
        assert tools["recent_episodes"].invoke({"n": 1}) == "1. Ada found the Gate."
        assert tools["search_chronicle"].invoke({"query": "gate"}) == "1. Ada found the Gate."
        assert "nothing" in tools["search_chronicle"].invoke({"query": "dragon"}).lower()
        assert tools["get_entity"].invoke({"name": "ada"}).startswith("Ada appears in episodes 000001")
