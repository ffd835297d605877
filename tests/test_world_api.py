"""The canon world driven by an API chat model: langchain-openai against a loopback server.

`tests.openai_stub.OpenAIStub` answers each canon transition as its prompt asks (the
Architect gets JSON, the others prose), so two full passes run through the real
``ChatOpenAI`` → ``openai`` → HTTP path. A failing endpoint surfaces as a `TransitionError`
naming the transition, leaves the world's state as it was, and the next `invoke()` finishes
the interrupted run once the server is back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.openai_stub import OpenAIStub, Reply, tool_call
from worldgen import TransitionError, World
from worldgen.blocks.api_clients import clear_clients, is_transient
from worldgen.chat_models import resolve_chat_model

KEY_ENV = "WORLDGEN_TEST_WORLD_KEY"
SECRET = "sk-world-test-0a1b2c3d4e5f-secret"
CONFIG = {"slots": [
    {"name": "scene", "kind": "image", "prompt": "a lighthouse on a black cliff at dusk"},
    {"name": "caption", "kind": "text", "prompt": "a caption for the lighthouse at dusk"},
]}


def canon_reply(body: dict[str, Any]) -> str | Reply:
    """What each canon transition expects, chosen by its system prompt."""
    messages = body["messages"]
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    if "You are the Architect" in system:
        return json.dumps(CONFIG)
    if "You are the Creator" in system:
        return "The lamp of the lighthouse burns over the cliff. Waves break below it."
    if "You describe artifacts" in system:
        return "A caption about a lighthouse burning at dusk."
    if "You are the Author" in system:
        return "Mara lit the Old Lighthouse as the storm came in. The ships of Vell turned away from the rocks."
    if "Use the tools" in system and not any(m["role"] == "tool" for m in messages):
        return Reply(tool_calls=[tool_call("recent_episodes", n=2)])
    if "You direct an evolving story world" in system:
        return "A storm gathers over the harbour of Vell."
    return "ok"


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenAIStub]:
    monkeypatch.setenv(KEY_ENV, SECRET)
    clear_clients()
    with OpenAIStub(reply_fn=canon_reply) as server:
        yield server
    clear_clients()


def api_world(stub: OpenAIStub, root: Path, **kwargs: Any) -> World:
    llm = resolve_chat_model("openai:stub-model", endpoint_url=stub.base_url, api_key_env=KEY_ENV)
    return World.from_template("canon", root=root, llm=llm, text_to_image="procedural", **kwargs)


def systems(stub: OpenAIStub) -> list[str]:
    return [r.body["messages"][0]["content"].split(".")[0] for r in stub.requests_to("/chat/completions")]


def test_canon_world_runs_two_passes_against_the_api(stub, tmp_path) -> None:
    with api_world(stub, tmp_path / "w") as world:
        result = world.invoke(num_steps=2)
        assert result.ran() == [
            "development", "architect", "creator",
            "philosopher", "author", "world_update", "development", "architect", "creator",
        ]
        state = world.state
        assert state.block1.text == "A storm gathers over the harbour of Vell."
        assert [s.name for s in state.block2.slots] == ["scene", "caption"]
        assert {item.kind for item in state.block3.items} == {"image", "text"}
        content = world.content
        assert len(content.chronicle) == 1 and content.chronicle[0]["outcome"].startswith("Mara lit")
        assert "Mara" in content.entities
    # every transition that needs the model reached the server, through ChatOpenAI
    asked = systems(stub)
    for who in ("You direct an evolving story world", "You are the Architect", "You are the Creator",
                "You describe artifacts exactly as they are", "You are the Author of a story world"):
        assert who in asked
    architect = next(r for r in stub.requests_to("/chat/completions") if "Architect" in r.body["messages"][0]["content"])
    assert architect.body["response_format"] == {"type": "json_object"} and architect.body["model"] == "stub-model"
    assert all(r.authorization == f"Bearer {SECRET}" for r in stub.requests)
    assert all(SECRET.encode() not in r.raw for r in stub.requests)
    files = [p for p in (tmp_path / "w").rglob("*") if p.is_file()]
    assert files and all(SECRET.encode() not in p.read_bytes() for p in files)


def test_failing_endpoint_is_a_transition_error_and_the_world_resumes(stub, tmp_path) -> None:
    with api_world(stub, tmp_path / "w") as world:
        world.invoke()  # pass 1: development, architect, creator
        before = world.state
        assert before.filled() == {1, 2, 3}
        stub.fail_always(503)
        with pytest.raises(TransitionError) as info:
            world.invoke()
        error = info.value
        # philosopher reads the image itself (no model) and asks the model about the caption
        assert error.transition == "philosopher" and str(error).startswith("philosopher: ")
        assert "503" in str(error) and SECRET not in str(error)
        assert is_transient(error)  # the cause is an HTTP 503: the world's RetryPolicy retried it
        assert len(stub.failures) == 9  # 3 attempts of the transition × (one try + two client retries)
        assert world.state == before  # nothing written by the failed run

        stub.recover()
        result = world.invoke()  # no state: the interrupted run is finished from its checkpoint
        assert result.ran() == ["philosopher", "author", "world_update", "development", "architect", "creator"]
        assert world.state.filled() == {1, 2, 3}
        assert world.state.block1.text == "A storm gathers over the harbour of Vell."
        assert len(world.snapshots()) == 1


def test_transient_failures_are_absorbed_by_the_client(stub, tmp_path) -> None:
    with api_world(stub, tmp_path / "w") as world:
        stub.fail_next(2, 429)
        result = world.invoke()
        assert result.ran() == ["development", "architect", "creator"] and len(stub.failures) == 2


def test_an_outage_longer_than_the_client_retries_is_outlasted_by_the_world_retry(stub, tmp_path) -> None:
    with api_world(stub, tmp_path / "w") as world:
        stub.fail_next(4, 503)  # the client gives up after 3; LangGraph's RetryPolicy runs the transition again
        result = world.invoke()
        assert result.ran() == ["development", "architect", "creator"] and len(stub.failures) == 4
        assert world.state.filled() == {1, 2, 3}


def test_agentic_development_calls_tools_through_the_api(stub, tmp_path) -> None:
    with api_world(stub, tmp_path / "w", agents=True) as world:
        result = world.invoke(action="light the lamp")
        assert result.ran() == ["development", "architect", "creator"]
        assert world.state.block1.text == "A storm gathers over the harbour of Vell."
    first, second = stub.requests_to("/chat/completions")[:2]
    assert [t["function"]["name"] for t in first.body["tools"]] == ["recent_episodes", "search_chronicle", "get_entity"]
    assert second.body["messages"][-1]["role"] == "tool"


def test_world_images_from_the_image_api(stub, tmp_path) -> None:
    from worldgen.blocks.api import ImageApi

    painter = ImageApi("painter", config={
        "provider": "vllm", "model_id": "stub-image", "endpoint_url": stub.base_url, "api_key_env": KEY_ENV,
    })
    llm = resolve_chat_model(f"openai:stub-model@{stub.base_url}", api_key_env=KEY_ENV)
    with World.from_template("canon", root=tmp_path / "w", llm=llm, text_to_image=painter) as world:
        world.invoke()
        image = next(item for item in world.state.block3.items if item.kind == "image")
        assert image.meta["generator"] == "api:stub-image"
    generated = stub.requests_to("/images/generations")
    assert len(generated) == 1 and generated[0].body["prompt"] == CONFIG["slots"][0]["prompt"]


def test_world_llm_as_a_spec_string_is_saved_and_reopened(stub, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # a self-hosted endpoint needs no key
    spec = f"openai:stub-model@{stub.base_url}"
    with World.from_template("canon", root=tmp_path / "w", llm=spec) as world:
        assert world.invoke().ran() == ["development", "architect", "creator"]
    assert spec in (tmp_path / "w" / "world.yaml").read_text()
    with World.open(tmp_path / "w") as world:  # the saved spec names the same model and endpoint
        assert world.invoke().ran() == ["philosopher", "author", "world_update", "development", "architect", "creator"]
    assert {r.authorization for r in stub.requests} == {"Bearer not-needed"}
