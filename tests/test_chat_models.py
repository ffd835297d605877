"""ChatTransformers mechanics and chat-model specs (worldgen.chat_models); no network.

A tiny random Llama exercises the real loading and decoding path; a scripted
model (which emits a fixed token sequence) pins down stop sequences and JSON
mode exactly, which random weights cannot.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from tests.test_local_models import build_tiny_llm, build_tiny_tokenizer
from worldgen.chat_models import model_accepts_images, resolve_chat_model
from worldgen.local_models import ChatTransformers, gguf, load_local_chat_model
from worldgen.local_models.chat_template import to_chat
from worldgen.local_models.json_guide import JsonState

JSON = {"type": "json_object"}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llm(tmp_path_factory.mktemp("tiny-llm"))


@pytest.fixture
def tiny(tiny_dir: Path) -> ChatTransformers:
    return ChatTransformers.from_pretrained(str(tiny_dir), max_new_tokens=24)


class ScriptedLM(torch.nn.Module):
    """Emits ``script`` token by token (then EOS) whatever the prompt, through the KV-cache API."""

    def __init__(self, script: list[int], vocab_size: int, eos_id: int) -> None:
        super().__init__()
        self.script, self.vocab_size, self.eos_id = script, vocab_size, eos_id
        self.generation_config = SimpleNamespace(eos_token_id=eos_id)
        self.prompts: list[torch.Tensor] = []

    def forward(self, input_ids, past_key_values=None, use_cache=True, **kwargs):
        step = past_key_values or 0
        if step == 0:
            self.prompts.append(input_ids)
        token = self.script[step] if step < len(self.script) else self.eos_id
        logits = torch.zeros(1, input_ids.shape[1], self.vocab_size)
        logits[0, -1, token] = 1.0
        return SimpleNamespace(logits=logits, past_key_values=step + 1)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def scripted(tokenizer, text: str, **kwargs) -> ChatTransformers:
    script = tokenizer.encode(text, add_special_tokens=False)
    model = ScriptedLM(script, len(tokenizer), tokenizer.eos_token_id)
    return ChatTransformers(model=model, tokenizer=tokenizer, model_ref="scripted", **kwargs)


def streamed(chat, *args, **kwargs) -> str:
    return "".join(chunk.content for chunk in chat.stream(*args, **kwargs))


# -- the tiny real model -----------------------------------------------------


def test_loads_lazily_and_invoke_returns_text(tiny: ChatTransformers, tiny_dir: Path) -> None:
    assert tiny._model is None  # nothing loaded at construction
    reply = tiny.invoke([SystemMessage("be brief"), HumanMessage("hello")])
    assert isinstance(reply, AIMessage) and isinstance(reply.content, str) and reply.content
    assert tiny._model is gguf.load_pretrained(tiny_dir).model
    assert reply.response_metadata["finish_reason"] in ("stop", "length")
    assert reply.usage_metadata["output_tokens"] <= 24 and reply.usage_metadata["input_tokens"] > 0


def test_greedy_is_deterministic(tiny: ChatTransformers) -> None:
    assert tiny.invoke("hello").content == tiny.invoke("hello").content


def test_seeded_sampling_is_reproducible(tiny: ChatTransformers) -> None:
    first = tiny.invoke("hello", temperature=1.0, top_p=0.9, seed=7).content
    assert tiny.invoke("hello", temperature=1.0, top_p=0.9, seed=7).content == first
    assert len({tiny.invoke("hello", temperature=1.0, seed=s).content for s in range(4)}) > 1


def test_stream_concatenates_to_invoke(tiny: ChatTransformers) -> None:
    for kwargs in ({}, {"temperature": 1.0, "seed": 3}, {"response_format": JSON}):
        chunks = [c.content for c in tiny.stream("hello", **kwargs)]
        assert len([c for c in chunks if c]) >= 1
        assert "".join(chunks) == tiny.invoke("hello", **kwargs).content


def test_stop_sequence_cuts_real_output(tiny: ChatTransformers) -> None:
    full = tiny.invoke("hello", temperature=1.0, seed=3, max_new_tokens=40).content
    stop = full[5:8]
    assert len(full) > 8 and stop
    cut = tiny.invoke("hello", temperature=1.0, seed=3, max_new_tokens=40, stop=[stop])
    assert cut.content == full[: full.index(stop)]
    assert cut.response_metadata["finish_reason"] == "stop"


def test_json_mode_on_random_weights_still_parses(tiny: ChatTransformers) -> None:
    for kwargs in ({}, {"temperature": 1.0, "seed": 1}, {"temperature": 1.0, "seed": 2}):
        out = tiny.bind(response_format=JSON).invoke("hello", **kwargs).content
        assert out.startswith("{")
        assert isinstance(json.loads(out), dict)


def test_ainvoke_runs_off_the_event_loop(tiny: ChatTransformers) -> None:
    async def main() -> tuple[str, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        reply = await tiny.ainvoke("hello")
        task.cancel()
        return reply.content, ticks

    content, ticks = asyncio.run(main())
    assert content == tiny.invoke("hello").content
    assert ticks > 100  # the loop kept running while the model generated (blocking: ~10)


def test_astream_matches_invoke(tiny: ChatTransformers) -> None:
    async def main() -> str:
        return "".join([chunk.content async for chunk in tiny.astream("hello")])

    assert asyncio.run(main()) == tiny.invoke("hello").content


# -- scripted output: stop sequences and JSON mode exactly --------------------


def test_stop_sequences_cut_across_tokens(tokenizer) -> None:
    chat = scripted(tokenizer, "hello world. STOP here")
    for stop in (["STOP"], ["ld. S", "zzz"], ["STOP", "world"]):
        expected = "hello world. STOP here"[: min("hello world. STOP here".find(s) for s in stop if s in "hello world. STOP here")]
        assert chat.invoke("x", stop=stop).content == expected
        assert streamed(chat, "x", stop=stop) == expected
    assert chat.invoke("x").content == "hello world. STOP here"
    assert chat.invoke("x").response_metadata["finish_reason"] == "stop"  # EOS


def test_json_mode_stops_when_braces_balance(tokenizer) -> None:
    body = '"slots": [{"name": "scene", "prompt": "a {tower} \\" "}], "n": -1.5e3}'
    chat = scripted(tokenizer, body + " and then chatter {}")
    out = chat.invoke("x", response_format=JSON)
    assert out.content == "{" + body
    assert json.loads(out.content)["slots"][0]["prompt"] == 'a {tower} " '
    assert out.response_metadata["finish_reason"] == "stop"
    assert streamed(chat, "x", response_format=JSON) == out.content


def test_json_mode_closes_the_object_when_tokens_run_out(tokenizer) -> None:
    chat = scripted(tokenizer, '"slots": [{"name": "scene", "prompt": "a very long prompt that goes on and on')
    for budget in range(1, 30, 3):
        out = chat.invoke("x", response_format=JSON, max_new_tokens=budget)
        assert isinstance(json.loads(out.content), dict), out.content
        assert out.response_metadata["finish_reason"] == "length"
        assert streamed(chat, "x", response_format=JSON, max_new_tokens=budget) == out.content


def test_json_mode_continues_an_assistant_prefill(tokenizer) -> None:
    chat = scripted(tokenizer, 'a tower"}]}')
    prefill = AIMessage('{"slots": [{"name": "scene", "prompt": "')
    out = chat.invoke([HumanMessage("x"), prefill], response_format=JSON)
    assert json.loads(out.content) == {"slots": [{"name": "scene", "prompt": "a tower"}]}
    prompt = tokenizer.decode(chat._model.prompts[-1][0])
    assert prompt.endswith('<|im_start|>assistant\n{"slots": [{"name": "scene", "prompt": "')


def test_plain_prefill_returns_the_continuation_only(tokenizer) -> None:
    chat = scripted(tokenizer, " world")
    assert chat.invoke([HumanMessage("x"), AIMessage("hello")]).content == " world"


def test_json_prefix_checker_on_every_prefix() -> None:
    doc = '{"a": [1, -0.5e+2, true, null, {"b": "x\\u00e9\\"}"}], "c": {}, "d": []}'
    closable = 0
    for end in range(1, len(doc) + 1):
        state = JsonState()
        assert state.feed(doc[:end])
        closing = state.completion()
        if closing is not None:
            json.loads(doc[:end] + closing)
            closable += 1
    assert state.done and closable > 20
    for bad in ('{"a" 1}', '{"a": 01}', '{"a": [1,]}', '{"a": "x\ny"}', '{"a": 1}}', "{'a': 1}"):
        state = JsonState()
        assert not (state.feed(bad) and state.done), bad


def test_unsupported_response_format_is_rejected(tiny: ChatTransformers) -> None:
    with pytest.raises(ValueError, match="response_format"):
        tiny.invoke("hello", response_format={"type": "xml"})


# -- text only, no tools ------------------------------------------------------


def test_image_blocks_are_dropped_and_profile_says_no_images(tiny: ChatTransformers, tokenizer) -> None:
    message = HumanMessage(
        content=[
            {"type": "text", "text": "describe"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            {"type": "image", "base64": "AAAA", "mime_type": "image/png"},
            {"type": "text", "text": "this"},
        ]
    )
    assert to_chat([message]) == [{"role": "user", "content": "describe\nthis"}]
    chat = scripted(tokenizer, "ok")
    assert chat.invoke([message]).content == "ok"
    assert "AAAA" not in tokenizer.decode(chat._model.prompts[-1][0])
    assert tiny.profile is not None and tiny.profile["image_inputs"] is False
    assert model_accepts_images(tiny) is False


def test_bind_tools_binds_for_constrained_decoding(tiny: ChatTransformers) -> None:
    """Tool calling is constrained decoding; tests/test_local_models.py runs it on a model."""
    assert tiny.bind_tools([], tool_choice="auto").kwargs == {"tools": [], "tool_choice": "auto"}
    assert tiny.profile is not None and tiny.profile["tool_calling"] is True


def test_identity_and_serialisation_leave_out_the_weights(tiny: ChatTransformers) -> None:
    assert tiny._llm_type == "transformers-chat"
    assert tiny._identifying_params["model_ref"] == tiny.model_ref
    dumped = tiny.model_dump()
    assert dumped["model_ref"] == tiny.model_ref and dumped["max_new_tokens"] == 24
    assert not any("model" == key or "tokenizer" in key for key in dumped)


# -- resolve_chat_model -------------------------------------------------------


def test_resolve_passes_instances_through() -> None:
    fake = FakeListChatModel(responses=["hi"])
    assert resolve_chat_model(fake) is fake


def test_resolve_local_is_lazy(monkeypatch: pytest.MonkeyPatch, tiny_dir: Path) -> None:
    calls = []

    def fake_load() -> gguf.LoadedModel:
        calls.append(1)
        return gguf.load_pretrained(tiny_dir)

    monkeypatch.setattr(gguf, "load_smollm2", fake_load)
    chat = resolve_chat_model("local")
    assert isinstance(chat, ChatTransformers) and chat.model_ref == "smollm2-135m-instruct"
    assert calls == []  # building it loads nothing
    assert chat.invoke("hello", max_new_tokens=3).content == chat.invoke("hello", max_new_tokens=3).content
    assert calls == [1]
    assert load_local_chat_model(max_new_tokens=5).max_new_tokens == 5


def test_resolve_openai_against_a_local_server_without_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from langchain_openai import ChatOpenAI

    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    chat = resolve_chat_model("openai:qwen2.5-0.5b")
    assert isinstance(chat, ChatOpenAI) and chat.model_name == "qwen2.5-0.5b"
    assert str(chat.root_client.base_url).startswith("http://127.0.0.1:9/v1")
    assert "not-needed" not in repr(chat) and "not-needed" not in json.dumps(chat.model_dump(), default=str)
    assert model_accepts_images(chat) is False  # unknown model: no profile


def test_resolve_openai_keeps_a_real_key_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    chat = resolve_chat_model("openai:gpt-4o-mini")
    assert "sk-test-secret" not in repr(chat)
    assert "sk-test-secret" not in json.dumps(chat.model_dump(), default=str)
    assert model_accepts_images(chat) is True  # from langchain-openai's profile data
    assert model_accepts_images(chat.bind(temperature=0)) is True


def test_resolve_openai_without_any_credentials_explains(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="OPENAI_BASE_URL"):
        resolve_chat_model("openai:gpt-4o-mini")


@pytest.mark.parametrize("spec", ["", "openai", "openai:", "anthropic:claude", "LOCAL-ish", 42])
def test_resolve_rejects_unknown_specs(spec) -> None:
    with pytest.raises(ValueError, match="openai:<model>"):
        resolve_chat_model(spec)


def test_model_accepts_images_defaults_to_false() -> None:
    assert model_accepts_images(FakeListChatModel(responses=["x"])) is False
    assert model_accepts_images(object()) is False


def test_prompt_longer_than_the_context_is_refused(tiny: ChatTransformers) -> None:
    with pytest.raises(ValueError, match="context"):
        tiny.invoke("beach " * 600)  # the tiny model has 512 positions


# -- resolve_chat_model with an API endpoint (a real OpenAI-compatible server on loopback) ------


@pytest.fixture
def openai_stub():
    from tests.openai_stub import OpenAIStub
    from worldgen.blocks.api_clients import clear_clients

    clear_clients()
    with OpenAIStub() as stub:
        yield stub
    clear_clients()


def test_resolve_openai_honours_base_url_and_shares_one_client(monkeypatch: pytest.MonkeyPatch, openai_stub) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", openai_stub.base_url)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    chat = resolve_chat_model("openai:stub-model")
    assert resolve_chat_model("openai:stub-model") is chat  # one client per model and endpoint
    assert resolve_chat_model("openai:other-model") is not chat
    openai_stub.script.append("hello over HTTP")
    assert chat.invoke("hi").content == "hello over HTTP"
    request = openai_stub.requests[-1]
    assert request.path == "/v1/chat/completions" and request.body["model"] == "stub-model"
    assert request.authorization == "Bearer not-needed"  # a self-hosted server needs no key
    assert "not-needed" not in repr(chat) and "not-needed" not in json.dumps(chat.model_dump(), default=str)


def test_resolve_openai_with_an_explicit_endpoint_and_key_variable(monkeypatch: pytest.MonkeyPatch, openai_stub) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # overridden below
    monkeypatch.setenv("MY_LLM_KEY", "sk-mine-123456")
    by_kwarg = resolve_chat_model("openai:stub-model", endpoint_url=openai_stub.base_url, api_key_env="MY_LLM_KEY")
    by_spec = resolve_chat_model(f"openai:stub-model@{openai_stub.base_url}", api_key_env="MY_LLM_KEY")
    assert by_kwarg is by_spec
    assert by_kwarg.invoke("hi").content == "ok"
    assert openai_stub.requests[-1].authorization == "Bearer sk-mine-123456"
    assert "sk-mine-123456" not in repr(by_kwarg) + json.dumps(by_kwarg.model_dump(), default=str)
    monkeypatch.delenv("MY_LLM_KEY")
    with pytest.raises(ValueError, match="MY_LLM_KEY is not set"):  # a named variable must be set
        resolve_chat_model("openai:stub-model", endpoint_url=openai_stub.base_url, api_key_env="MY_LLM_KEY")


def test_resolve_accepts_an_llm_api_block(openai_stub) -> None:
    from worldgen.blocks.api import LlmApi

    block = LlmApi("chat", config={"provider": "vllm", "model_id": "stub-model", "endpoint_url": openai_stub.base_url})
    assert resolve_chat_model(block) is block.chat_model
    assert resolve_chat_model(block).invoke("hi").content == "ok"
