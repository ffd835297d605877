"""API-backed blocks against a real OpenAI-compatible server on loopback (levels.md §6; checks 29–31).

The blocks run the real ``openai`` / ``langchain-openai`` client code (HTTP, JSON, SSE,
retries with backoff) against `tests.openai_stub.OpenAIStub` on 127.0.0.1; nothing is mocked
and nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from langchain_core.callbacks import BaseCallbackHandler
from PIL import Image

from tests.openai_stub import OpenAIStub, Reply, tool_call
from worldgen.blocks import (
    LLM,
    Block,
    Codec,
    Port,
    PortType,
    global_registry,
    input_port,
    output_port,
)
from worldgen.blocks.api import (
    ApiCallError,
    ApiConfigError,
    VlmApi,
    image_data_url,
)
from worldgen.blocks.api_clients import (
    cached_clients,
    clear_clients,
    get_client,
    is_transient,
)
from worldgen.chat_models import resolve_chat_model
from worldgen.engine import Graph

KEY_ENV = "WORLDGEN_TEST_API_KEY"
SECRET = "sk-test-9f8e7d6c5b4a-do-not-leak"
TYPES = ("llm/api", "embedding/api", "image/api", "vlm/api")


@pytest.fixture(scope="module")
def server() -> Iterator[OpenAIStub]:
    with OpenAIStub() as stub:
        yield stub


@pytest.fixture
def stub(server: OpenAIStub, monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenAIStub]:
    """The shared server, reset; the key in the environment; a fresh client cache."""
    monkeypatch.setenv(KEY_ENV, SECRET)
    server.recover()
    server.requests.clear()
    server.failures.clear()
    server.script.clear()
    server.reply_fn = None
    clear_clients()
    yield server
    clear_clients()


def api_config(stub: OpenAIStub, **extra: Any) -> dict[str, Any]:
    return {
        "provider": "openai_compatible", "model_id": "stub-model", "endpoint_url": stub.base_url,
        "api_key_env": KEY_ENV, **extra,
    }


def build(block_type: str, stub: OpenAIStub, block_id: str = "b", **extra: Any) -> Block:
    return global_registry().build({"type": block_type, "block_id": block_id, **api_config(stub, **extra)})


def png_image(colour: tuple[int, int, int] = (200, 40, 40)) -> Image.Image:
    return Image.new("RGB", (16, 12), colour)


# -- check 29: no weights, no network at build, no trainable params; forward fills the port --------


def test_check29_build_makes_no_connection_and_holds_no_weights(stub, monkeypatch) -> None:
    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a block connected to the network while being built")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    blocks = [build(t, stub, block_id=t.replace("/", "_")) for t in TYPES]
    monkeypatch.undo()  # the environment too: restore the key below
    monkeypatch.setenv(KEY_ENV, SECRET)
    assert stub.requests == []
    for block in blocks:
        assert block.backend == "api" and block.config["backend"] == "api"
        assert block.state_dict() == {}
        assert list(block.trainable_parameters()) == []
        block.load_state_dict({})  # strict load of the empty state works
        assert block.to("cpu") is block


def test_check29_forward_fills_each_output_port(stub) -> None:
    stub.script.append("Hello from the API.")
    assert build("llm/api", stub).forward({"prompt": "Say hello."}) == {"text": "Hello from the API."}

    out = build("embedding/api", stub).forward({"input": ["a tower", "a gate", "a tower"]})
    emb = out["embedding"]
    assert emb.dtype == torch.float32 and emb.shape == (3, stub.dim)
    assert torch.equal(emb[0], emb[2]) and not torch.equal(emb[0], emb[1])
    assert torch.allclose(emb[0], torch.tensor(stub.embedding("a tower")), atol=1e-6)

    image = build("image/api", stub, width=48, height=32).forward({"prompt": "a red tower"})["image"]
    assert isinstance(image, Image.Image) and image.size == (48, 32) and image.mode == "RGB"
    as_tensor = build("image/api", stub, block_id="t", width=48, height=32, output_format="tensor")
    tensor = as_tensor.forward({"prompt": "a red tower"})["image"]
    assert tensor.shape == (1, 3, 32, 48) and 0.0 <= float(tensor.min()) <= float(tensor.max()) <= 1.0
    body = stub.requests_to("/images/generations")[0].body
    assert body == {"model": "stub-model", "prompt": "a red tower", "n": 1, "size": "48x32", "response_format": "b64_json"}

    stub.script.append("A red rectangle.")
    assert build("vlm/api", stub).forward({"image": png_image()}) == {"text": "A red rectangle."}
    content = stub.requests_to("/chat/completions")[-1].body["messages"][-1]["content"]
    assert content[0] == {"type": "text", "text": VlmApi.DEFAULT_PROMPT}
    assert content[1]["image_url"]["url"] == image_data_url(png_image())


def test_ports_match_the_local_roles(stub) -> None:
    assert build("llm/api", stub).declare_ports() == list(LLM.PORTS)
    local_image = next(p for p in Codec.PORTS if p.name == "decode_image")  # text_to_image's "image" output
    assert build("image/api", stub).get_port("image", "out").dtype is local_image.dtype
    assert [p.name for p in build("vlm/api", stub).get_output_ports()] == ["text"]
    assert {"llm/api", "llm/openai", "embedding/api", "image/api", "vlm/api"} <= set(global_registry().list())
    assert build("llm/openai", stub).block_type == "llm/openai"


def test_llm_api_sends_system_context_and_params(stub) -> None:
    block = build("llm/api", stub, system_prompt="Be terse.", params={"temperature": 0.2})
    block.forward({
        "prompt": "And now?", "context": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
        "params": {"max_tokens": 7},
    })
    body = stub.requests_to("/chat/completions")[-1].body
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
    assert body["messages"][0]["content"] == "Be terse." and body["messages"][-1]["content"] == "And now?"
    assert body["temperature"] == 0.2 and body["model"] == "stub-model"
    assert body.get("max_tokens", body.get("max_completion_tokens")) == 7
    block.forward({"prompt": "go", "context": {"place": "harbour"}})
    assert stub.requests_to("/chat/completions")[-1].body["messages"][1]["content"] == 'Context:\n{"place": "harbour"}'


def test_chat_model_streams_sse_calls_tools_and_runs_async(stub) -> None:
    chat = build("llm/api", stub).chat_model
    stub.script.append("a fairly long streamed reply, in pieces")
    chunks = [c.content for c in chat.stream("go")]
    assert len(chunks) > 3 and "".join(chunks) == "a fairly long streamed reply, in pieces"
    assert stub.requests_to("/chat/completions")[-1].body["stream"] is True

    def lookup(name: str) -> str:
        """Look a name up."""
        return name

    stub.script.append(Reply(tool_calls=[tool_call("lookup", name="Ada")]))
    reply = chat.bind_tools([lookup]).invoke("who?")
    assert [(c["name"], c["args"]) for c in reply.tool_calls] == [("lookup", {"name": "Ada"})]
    assert stub.requests_to("/chat/completions")[-1].body["tools"][0]["function"]["name"] == "lookup"

    stub.script.append("async ok")
    assert asyncio.run(chat.ainvoke("go")).content == "async ok"


def test_an_agent_runs_its_tool_loop_on_an_api_block(stub) -> None:
    from worldgen.agents.agent import Agent

    calls = []

    def lookup(name: str) -> str:
        """Look a name up in the world."""
        calls.append(name)
        return f"{name} keeps the lighthouse."

    block = build("llm/api", stub)
    stub.script += [Reply(tool_calls=[tool_call("lookup", name="Ada")]), "Ada keeps the lighthouse."]
    result = Agent(llm=block.chat_model, tools=[lookup], max_steps=3).invoke("Who is Ada?")
    assert calls == ["Ada"] and result.text == "Ada keeps the lighthouse." and result.tool_calls == 1
    second = stub.requests_to("/chat/completions")[-1].body["messages"]
    assert second[-1]["role"] == "tool" and second[-1]["content"] == "Ada keeps the lighthouse."


# -- check 30: provider and model_id in the config, the key only in the environment ----------------


def test_check30_config_names_the_model_never_the_key(stub, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.DEBUG)  # openai, httpx and langchain log requests at DEBUG
    graph = Graph("api_graph")
    for t in TYPES:
        graph.add_node(t.split("/")[0], t, config=api_config(stub), auto_connect=False)
    graph.add_edge("llm", "text", "embedding", "input")
    graph.add_edge("llm", "text", "image", "prompt")
    graph.add_edge("image", "image", "vlm", "image")
    graph.expose_input("llm", "prompt", "prompt")
    graph.expose_output("llm", "text", "text")
    graph.expose_output("vlm", "text", "description")
    config = graph.to_config()
    text = json.dumps(config)
    assert SECRET not in text and "api_key" not in text.replace("api_key_env", "")
    for node in graph.blocks():
        assert node.config["provider"] == "openai_compatible" and node.config["model_id"] == "stub-model"
        assert node.config["api_key_env"] == KEY_ENV

    traced: list[str] = []

    class Trace(BaseCallbackHandler):
        def on_chat_model_start(self, serialized, messages, **kwargs):  # type: ignore[override]
            traced.append(json.dumps([serialized, kwargs], default=str))

        def on_llm_end(self, response, **kwargs):  # type: ignore[override]
            traced.append(json.dumps(response.model_dump(), default=str))

    stub.script += ["a red tower", "a red square"]
    assert graph.run({"prompt": "hi"}) == {"text": "a red tower", "description": "a red square"}
    llm = graph.get_node("llm").block
    llm.chat_model.invoke("traced", config={"callbacks": [Trace()]})

    # the key travels only in the Authorization header, read from the environment
    assert len(stub.requests) == 5
    for request in stub.requests:
        assert request.authorization == f"Bearer {SECRET}"
        assert SECRET.encode() not in request.raw
    # ... and is never written, logged, traced or shown
    graph.save_config(tmp_path / "graph.yaml")
    graph.save(tmp_path / "saved")
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files and all(SECRET.encode() not in p.read_bytes() for p in files)
    assert SECRET not in caplog.text and any("127.0.0.1" in r.getMessage() for r in caplog.records)
    assert traced and all(SECRET not in t for t in traced)
    for block in graph.blocks():
        assert SECRET not in repr(block) + repr(block.client) + json.dumps(block.describe())
        assert SECRET not in json.dumps(block.to_config()) + json.dumps(block.state_dict())
    assert SECRET not in repr(llm.chat_model) + json.dumps(llm.chat_model.model_dump(), default=str)

    reloaded = Graph.load(tmp_path / "saved")
    stub.script += ["again", "a square"]
    assert reloaded.run({"prompt": "hi"}) == {"text": "again", "description": "a square"}
    assert reloaded.get_node("llm").block.client is llm.client  # same model → the same client


def test_key_comes_from_the_environment_at_each_request(stub, monkeypatch) -> None:
    block = build("llm/api", stub)
    block.forward({"prompt": "one"})
    monkeypatch.setenv(KEY_ENV, "sk-rotated-key")
    block.forward({"prompt": "two"})
    assert [r.authorization for r in stub.requests] == [f"Bearer {SECRET}", "Bearer sk-rotated-key"]

    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(ApiConfigError, match=f"llm/api block 'b'.*{KEY_ENV} is not set"):
        block.forward({"prompt": "three"})
    assert len(stub.requests) == 2  # nothing was sent without a key


def test_langchain_objects_hold_no_key_only_the_callback(stub, monkeypatch) -> None:
    """Left alone, ChatOpenAI / OpenAIEmbeddings copy OPENAI_API_KEY onto themselves (dumped, traced)."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-unrelated-env-key-42")
    chat = build("llm/api", stub).chat_model
    embeddings = build("embedding/api", stub).embeddings
    for model in (chat, embeddings):
        assert callable(model.openai_api_key) and model.openai_api_key() == SECRET
        assert "sk-unrelated-env-key-42" not in repr(model) + json.dumps(model.model_dump(), default=str)
    monkeypatch.setenv(KEY_ENV, "sk-rotated-key")
    assert chat.openai_api_key() == embeddings.openai_api_key() == "sk-rotated-key"


def test_a_key_in_the_config_is_refused_without_echoing_it(stub) -> None:
    for field in ("api_key", "openai_api_key"):
        with pytest.raises(ApiConfigError, match="api_key_env") as info:
            build("llm/api", stub, **{field: SECRET})
        assert SECRET not in str(info.value) and "llm/api block 'b'" in str(info.value)


def test_config_errors_name_the_block(stub) -> None:
    with pytest.raises(ApiConfigError, match=r"image/api block 'img'.*model_id"):
        global_registry().build({"type": "image/api", "block_id": "img", "provider": "openai"})
    with pytest.raises(ApiConfigError, match=r"llm/api block 'x'.*unknown API provider 'anthropicx'"):
        build("llm/api", stub, block_id="x", provider="anthropicx")
    with pytest.raises(ApiConfigError, match=r"provider 'openai_compatible' has no default endpoint"):
        global_registry().build({"type": "llm/api", "block_id": "y", "provider": "vllm", "model_id": "m"})


# -- check 31: one client per model ---------------------------------------------------------------


def test_check31_ten_nodes_with_one_model_share_one_client(stub) -> None:
    graph = Graph("ten")
    for i in range(10):
        graph.add_node(f"llm{i}", "llm/api", config=api_config(stub), auto_connect=False)
    blocks = list(graph.blocks())
    assert len({id(b) for b in blocks}) == 10  # ten blocks (ten nodes) …
    assert len({id(b.client) for b in blocks}) == 1  # … one client
    assert len({id(b.chat_model) for b in blocks}) == 1 and len({id(b.client.sync) for b in blocks}) == 1
    assert len([c for c in cached_clients() if c.key.model_id == "stub-model"]) == 1
    # the world's resolver hands out the same chat model for that provider, model and endpoint
    openai_block = build("llm/api", stub, block_id="o", provider="openai")
    assert resolve_chat_model("openai:stub-model", endpoint_url=stub.base_url, api_key_env=KEY_ENV) is openai_block.chat_model
    assert resolve_chat_model(f"openai:stub-model@{stub.base_url}", api_key_env=KEY_ENV) is openai_block.chat_model
    assert resolve_chat_model(openai_block) is openai_block.chat_model

    other = build("llm/api", stub, block_id="other", model_id="another-model")
    assert other.client is not blocks[0].client
    vlm = build("vlm/api", stub, block_id="v")  # another role, same model: the same client
    assert vlm.client is blocks[0].client

    for i in range(10):
        graph.expose_input(f"llm{i}", "prompt", f"p{i}")
        graph.expose_output(f"llm{i}", "text", f"t{i}")
    out = graph.run({f"p{i}": f"prompt {i}" for i in range(10)})
    assert out == {f"t{i}": "ok" for i in range(10)} and len(stub.requests) == 10


def test_client_cache_is_thread_safe(stub) -> None:
    got: list[Any] = []
    barrier = threading.Barrier(16)

    def worker() -> None:
        barrier.wait()
        got.append(get_client("vllm", "m-threads", endpoint_url=stub.base_url, check_key=False).chat_model())

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 16 and len({id(x) for x in got}) == 1


# -- transient errors: retried with backoff, then a clear error -----------------------------------


@pytest.mark.parametrize("status", [503, 429, 500, 0])  # 0: the server hangs up
def test_transient_errors_are_retried_then_succeed(stub, status) -> None:
    block = build("llm/api", stub)
    stub.fail_next(2, status)
    stub.script.append("made it")
    assert block.forward({"prompt": "hi"}) == {"text": "made it"}
    assert len(stub.failures) == 2 and len(stub.requests_to("/chat/completions")) == 3


def test_every_api_block_retries(stub) -> None:
    inputs = {"embedding/api": {"input": "x"}, "image/api": {"prompt": "x"}, "vlm/api": {"image": png_image()}}
    for block_type, block_inputs in inputs.items():
        stub.fail_next(1, 503)
        assert build(block_type, stub).forward(block_inputs)
    assert len(stub.failures) == 3 and len(stub.requests) == 6


def test_retries_exhausted_raise_a_clear_error(stub) -> None:
    block = build("llm/api", stub, block_id="narrator", max_retries=2)
    stub.fail_always(503)
    with pytest.raises(ApiCallError) as info:
        block.forward({"prompt": "hi"})
    message = str(info.value)
    for part in ("llm/api block 'narrator'", "provider 'openai_compatible'", "model 'stub-model'",
                 stub.base_url, "HTTP 503 after 2 retries", "stub says 503"):
        assert part in message
    assert SECRET not in message and info.value.status_code == 503 and info.value.retryable
    assert is_transient(info.value)  # for LangGraph's RetryPolicy(retry_on=is_transient)
    assert len(stub.failures) == 3  # one try + two retries

    stub.recover()
    assert block.forward({"prompt": "hi"}) == {"text": "ok"}  # the same block works again

    image = build("image/api", stub, block_id="painter", max_retries=0)
    stub.fail_next(1, 429)
    with pytest.raises(ApiCallError, match=r"image/api block 'painter'.*image generation failed with HTTP 429 after 0 retries"):
        image.forward({"prompt": "x"})


def test_client_errors_are_not_retried(stub) -> None:
    block = build("llm/api", stub, block_id="b400")
    stub.fail_next(1, 400)
    with pytest.raises(ApiCallError, match=r"HTTP 400: stub says 400") as info:
        block.forward({"prompt": "hi"})
    assert not info.value.retryable and not is_transient(info.value) and len(stub.requests) == 1


def test_unreachable_server_names_the_block(stub) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    block = build("embedding/api", stub, block_id="emb", endpoint_url=f"http://127.0.0.1:{port}/v1", max_retries=1)
    with pytest.raises(ApiCallError, match=r"embedding/api block 'emb'.*could not reach the server after 1 retries") as info:
        block.forward({"input": "x"})
    assert is_transient(info.value)


# -- an API block in a graph next to local blocks -------------------------------------------------


class Shout(Block):
    """A local text block: upper-cases its input."""

    def declare_ports(self) -> list[Port]:
        return [input_port("text", PortType.TEXT), output_port("text", PortType.TEXT)]

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return {"text": inputs["text"].upper() + "!"}


class Project(Block):
    """A local torch layer on embeddings: gradients stop at the API block before it."""

    def __init__(self, block_id: str | None = None, *, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(block_id, config=config)
        self.layer = torch.nn.Linear(8, 2)

    def declare_ports(self) -> list[Port]:
        return [input_port("x", PortType.TENSOR), output_port("y", PortType.TENSOR)]

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return {"y": self.layer(inputs["x"])}

    def local_parameters(self) -> Iterator[Any]:
        return iter(self.layer.parameters())


def chain(llm: Any) -> Graph:
    graph = Graph("chain")
    graph.add_node("llm", llm, config=None if isinstance(llm, Block) else {}, auto_connect=False)
    graph.add_node("shout", Shout(), auto_connect=False)
    graph.add_edge("llm", "text", "shout", "text")
    graph.expose_input("llm", "prompt", "prompt")
    graph.expose_output("shout", "text", "text")
    return graph


def test_api_llm_and_local_blocks_in_one_graph(stub) -> None:
    stub.reply_fn = lambda body: f"the tower says {body['messages'][-1]['content']}"
    remote = chain(build("llm/api", stub))
    local = chain(global_registry().build({"type": "llm/identity"}))  # the local llm role, same ports
    remote.validate()
    local.validate()
    assert remote.get_input_spec(include_dtype=True) == local.get_input_spec(include_dtype=True)
    assert remote.get_output_spec(include_dtype=True) == local.get_output_spec(include_dtype=True)
    assert remote.run({"prompt": "hello"}) == {"text": "THE TOWER SAYS HELLO!"}
    assert local.run({"prompt": "hello"}) == {"text": "HELLO!"}

    graph = Graph("embed")
    graph.add_node("embed", "embedding/api", config=api_config(stub), auto_connect=False)
    graph.add_node("project", Project(), auto_connect=False)
    graph.add_edge("embed", "embedding", "project", "x")
    graph.expose_input("embed", "input", "texts")
    graph.expose_output("project", "y", "y")
    y = graph.run({"texts": ["a", "b", "c"]})["y"]
    assert y.shape == (3, 2)
    params = list(graph.trainable_parameters())
    assert len(params) == 2 and all(p.shape in ((2, 8), (2,)) for p in params)  # only the local layer's
    y.sum().backward()
    assert graph.get_node("project").block.layer.weight.grad is not None


def test_image_api_is_a_text_to_image_renderer(stub) -> None:
    from worldgen.tools.text_to_image import TextToImage, resolve_text_to_image

    block = build("image/api", stub)
    assert isinstance(block, TextToImage) and resolve_text_to_image(block) is block
    image = block("a blue gate", width=40, height=24, seed=3)
    assert isinstance(image, Image.Image) and image.size == (40, 24) and block.name == "api:stub-model"
    assert "seed" not in stub.requests[-1].body  # the OpenAI API has no seed field …
    build("image/api", stub, block_id="s", send_seed=True)("a blue gate", seed=3)
    assert stub.requests[-1].body["seed"] == 3  # … servers that have one can get it


def test_a_saved_graph_with_an_api_block_loads_in_a_fresh_process(stub, tmp_path: Path) -> None:
    """The API block types register themselves when a config names them (plugin packages)."""
    import subprocess
    import sys

    graph = Graph("ask")
    graph.add_node("llm", "llm/api", config=api_config(stub), auto_connect=False)
    graph.expose_input("llm", "prompt", "prompt")
    graph.expose_output("llm", "text", "text")
    graph.save(tmp_path / "saved")
    code = ("from worldgen.engine import Graph; g = Graph.load(r'%s'); "
            "print(type(g.get_node('llm').block).__name__)") % (tmp_path / "saved")
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == type(graph.get_node("llm").block).__name__
