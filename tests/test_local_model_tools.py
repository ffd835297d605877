"""Local models as LangChain tools, Runnables and Embeddings (worldgen.tools.local_models),
and pickle safety of every local loader. Every model is tiny, random, built from a config in
a fixture and saved as safetensors: no network, no hub."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import threading
from pathlib import Path

import pytest
import torch
from langchain_core.messages import AIMessage, ToolMessage
from PIL import Image
from pydantic import ValidationError

from tests.conftest import ScriptedChat
from tests.test_local_models import build_tiny_llm
from worldgen.local_models.pool import (
    ModelNotFoundError,
    ModelPool,
    model_nbytes,
)
from worldgen.local_models.safety import PickleCheckpointError
from worldgen.tools.local_models import (
    EmbeddingArgs,
    ImageDescriptionArgs,
    TextGenerationArgs,
    TextToImageToolArgs,
    TransformersEmbeddings,
    embedding_tool,
    image_description_tool,
    load_image_to_text,
    local_chat_model,
    text_generation_tool,
    text_to_image_graph_tool,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WORDS = ["a", "red", "blue", "cube", "hill", "the", "sea", "of", "picture", "tower", "night", "sky"]


# --------------------------------------------------------------------------- fixtures
def _word_tokenizer():
    """A WordLevel tokenizer with BERT's specials, built in memory (no files, no hub)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    vocab = {t: i for i, t in enumerate(specials + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        model_max_length=64,
    )


def build_tiny_bert(folder: Path) -> Path:
    from transformers import BertConfig, BertModel

    tokenizer = _word_tokenizer()
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, pad_token_id=0)
    torch.manual_seed(0)
    BertModel(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_blip(folder: Path) -> Path:
    """A random BLIP captioner (1-layer ViT + 1-layer text decoder) and its processor."""
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipProcessor

    try:  # without torchvision transformers uses the PIL image processor
        from transformers import BlipImageProcessorPil as ImageProcessor
    except ImportError:  # pragma: no cover - older transformers
        from transformers import BlipImageProcessor as ImageProcessor
    tokenizer = _word_tokenizer()
    tokenizer.bos_token = "[CLS]"
    processor = BlipProcessor(image_processor=ImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer)
    config = BlipConfig(
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 4,
                       "image_size": 32, "patch_size": 8, "projection_dim": 32},
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 37,
                     "num_hidden_layers": 1, "num_attention_heads": 4, "encoder_hidden_size": 32,
                     "max_position_embeddings": 64, "bos_token_id": tokenizer.cls_token_id,
                     "pad_token_id": tokenizer.pad_token_id, "sep_token_id": tokenizer.sep_token_id,
                     "eos_token_id": tokenizer.sep_token_id},
        projection_dim=32,
    )
    torch.manual_seed(0)
    BlipForConditionalGeneration(config).eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llm(tmp_path_factory.mktemp("llm"))


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_blip(tmp_path_factory.mktemp("blip"))


@pytest.fixture
def picture(tmp_path: Path) -> Path:
    path = tmp_path / "scene.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(path)
    return path


def pickle_only_copy(folder: Path, target: Path, weights: str = "model.safetensors",
                     pickle_name: str = "pytorch_model.bin") -> Path:
    """`folder` with its safetensors weights rewritten as a torch pickle (same tensors)."""
    from safetensors.torch import load_file

    shutil.copytree(folder, target)
    state = load_file(target / weights)
    (target / weights).unlink()
    torch.save(state, target / Path(weights).parent / pickle_name)
    return target


def loads_of(pool: ModelPool, folder: Path) -> list[dict]:
    return [m for m in pool.stats()["models"] if m["ref"] == str(folder.resolve())]


# ------------------------------------------------------------------------ arg schemas
def test_each_tool_has_a_typed_argument_schema(tiny_llm: Path, tiny_bert: Path, tiny_blip: Path,
                                               tiny_sd: Path, pool: ModelPool) -> None:
    tools = {
        TextToImageToolArgs: text_to_image_graph_tool(tiny_sd),
        TextGenerationArgs: text_generation_tool(tiny_llm),
        ImageDescriptionArgs: image_description_tool(tiny_blip),
        EmbeddingArgs: embedding_tool(tiny_bert),
    }
    for schema, tool in tools.items():
        assert tool.args_schema is schema
        assert tool.description
    assert set(tools[TextToImageToolArgs].args) == {"prompt", "negative_prompt", "seed"}
    assert tools[TextGenerationArgs].args["max_new_tokens"]["anyOf"][0]["type"] == "integer"
    assert tools[ImageDescriptionArgs].args["image"]["type"] == "string"
    assert tools[EmbeddingArgs].args["texts"]["type"] == "array"
    # bad input is refused by the schema, before any model loads
    for tool, bad in [
        (tools[TextToImageToolArgs], {"prompt": ""}),
        (tools[TextToImageToolArgs], {"prompt": "x", "seed": -1}),
        (tools[TextGenerationArgs], {"prompt": "hi", "max_new_tokens": 0}),
        (tools[ImageDescriptionArgs], {"image": "x.png", "max_new_tokens": 10_000}),
        (tools[EmbeddingArgs], {"texts": []}),
        (tools[EmbeddingArgs], {"text": ["typo in the key"]}),
    ]:
        with pytest.raises(ValidationError):
            tool.invoke(bad)
    assert pool.stats()["loads"] == 0  # lazy: building tools loads nothing


# ----------------------------------------------------------------------- text → image
def test_text_to_image_tool_runs_the_graph_and_writes_a_png(tiny_sd: Path, tmp_path: Path, pool: ModelPool) -> None:
    tool = text_to_image_graph_tool(tiny_sd, output_dir=tmp_path / "out", num_inference_steps=2, height=32, width=32)
    path = Path(tool.invoke({"prompt": "a red cube", "seed": 3}))
    assert path.parent == tmp_path / "out" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(path).size == (32, 32)
    assert Path(tool.invoke({"prompt": "a red cube", "seed": 3})) == path  # same seed, same file
    assert pool.stats()["loads"] == 4  # unet, vae, text encoder, tokenizer

    # as a tool call: content is the path, the PIL image rides along as the artifact
    message = tool.invoke({"type": "tool_call", "id": "c1", "name": tool.name,
                           "args": {"prompt": "a red cube", "seed": 3}})
    assert isinstance(message, ToolMessage) and message.content == str(path)
    assert isinstance(message.artifact, Image.Image) and message.artifact.info["seed"] == 3

    # base64 output, and a second tool on the same checkpoint: no new loads, same pixels
    b64 = text_to_image_graph_tool(tiny_sd, output="base64", num_inference_steps=2, height=32, width=32)
    url = b64.invoke({"prompt": "a red cube", "seed": 3})
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == path.read_bytes()
    assert pool.stats()["loads"] == 4


# ------------------------------------------------------------------ text generation
def test_text_generation_tool_and_chat_model_share_one_model(tiny_llm: Path, pool: ModelPool) -> None:
    tool = text_generation_tool(tiny_llm, max_new_tokens=4)
    reply = tool.invoke({"prompt": "hello world", "max_new_tokens": 3})
    assert isinstance(reply, str)
    chat = local_chat_model(tiny_llm, max_new_tokens=3)  # e.g. the world's or an agent's llm
    assert chat.invoke("hello world").content == reply  # greedy: the same model, the same text
    assert chat._model is not None
    assert len(loads_of(pool, tiny_llm)) == 1 and pool.stats()["loads"] == 1
    # the pool counts the model's bytes even though the entry is a (model, tokenizer) bundle
    assert loads_of(pool, tiny_llm)[0]["bytes"] == model_nbytes(chat._model) > 0
    # a chat model handed in directly is used as is
    assert text_generation_tool(chat, name="again").invoke({"prompt": "hello world"}) == chat.invoke(
        "hello world").content


def test_text_generation_tool_async_loads_off_the_event_loop(tiny_llm: Path, pool: ModelPool,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []
    real = ModelPool._load

    def spy(self, *args, **kwargs):
        threads.append(threading.get_ident())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ModelPool, "_load", spy)

    async def main() -> tuple[int, str]:
        tool = text_generation_tool(tiny_llm, max_new_tokens=2)
        return threading.get_ident(), await tool.ainvoke({"prompt": "hi"})

    loop_thread, reply = asyncio.run(main())
    assert isinstance(reply, str) and threads and loop_thread not in threads


# --------------------------------------------------------------- image description
def test_image_description_tool_reads_a_file_or_base64(tiny_blip: Path, picture: Path, pool: ModelPool) -> None:
    tool = image_description_tool(tiny_blip)
    caption = tool.invoke({"image": str(picture), "max_new_tokens": 5})
    assert isinstance(caption, str)
    data = base64.b64encode(picture.read_bytes()).decode()
    assert tool.invoke({"image": f"data:image/png;base64,{data}", "max_new_tokens": 5}) == caption
    assert tool.invoke({"image": data, "max_new_tokens": 5}) == caption
    assert isinstance(tool.invoke({"image": str(picture), "prompt": "a picture of", "max_new_tokens": 3}), str)
    # a second tool on the folder: the same model object, one load
    other = image_description_tool(tiny_blip, name="caption")
    assert other.invoke({"image": str(picture), "max_new_tokens": 5}) == caption
    assert len(loads_of(pool, tiny_blip)) == 1 and pool.stats()["loads"] == 1
    assert load_image_to_text(tiny_blip).model is load_image_to_text(tiny_blip, pool=pool).model
    assert loads_of(pool, tiny_blip)[0]["bytes"] > 0  # bundle bytes are counted


def test_image_description_bad_input_is_a_clear_error(tiny_blip: Path, picture: Path, tmp_path: Path,
                                                      pool: ModelPool) -> None:
    confined = image_description_tool(tiny_blip, image_root=picture.parent / "allowed")
    with pytest.raises(PermissionError, match="outside the folder"):
        confined.invoke({"image": str(picture)})
    tool = image_description_tool(tiny_blip)
    with pytest.raises(FileNotFoundError, match="nope.png"):
        tool.invoke({"image": str(tmp_path / "nope.png")})
    (tmp_path / "fake.png").write_text("not an image")
    with pytest.raises(ValueError, match="could not read image file"):
        tool.invoke({"image": str(tmp_path / "fake.png")})
    with pytest.raises(ValueError, match="base64"):
        tool.invoke({"image": "data:image/png;base64,@@@"})
    assert pool.stats()["loads"] == 0  # bad input fails before the model loads


# ----------------------------------------------------------------------- embeddings
def test_embeddings_mean_pool_over_real_tokens(tiny_bert: Path, pool: ModelPool) -> None:
    from transformers import AutoModel, AutoTokenizer

    emb = TransformersEmbeddings(tiny_bert)
    vectors = emb.embed_documents(["a red cube", "the sea of night sky"])
    assert len(vectors) == 2 and len(vectors[0]) == 16
    assert all(abs(sum(x * x for x in v) - 1.0) < 1e-5 for v in vectors)  # normalised
    # padding does not change a text's vector: alone equals in a batch with a longer text
    assert emb.embed_query("a red cube") == pytest.approx(vectors[0], abs=1e-5)

    # the same numbers by hand: mean of the last hidden states over the unpadded tokens
    model = AutoModel.from_pretrained(tiny_bert, local_files_only=True).eval()
    tokens = AutoTokenizer.from_pretrained(tiny_bert, local_files_only=True)("a red cube", return_tensors="pt")
    with torch.no_grad():
        mean = model(**tokens).last_hidden_state[0].mean(0)
    assert torch.allclose(torch.tensor(vectors[0]), torch.nn.functional.normalize(mean, dim=0), atol=1e-5)

    raw = TransformersEmbeddings(tiny_bert, normalize=False).embed_query("a red cube")
    assert torch.allclose(torch.tensor(raw), mean, atol=1e-5)
    assert len(loads_of(pool, tiny_bert)) == 1  # both embeddings objects: one model


def test_embedding_tool_ranks_and_shares_the_model(tiny_bert: Path, pool: ModelPool) -> None:
    emb = TransformersEmbeddings(tiny_bert)
    tool = embedding_tool(tiny_bert)  # built from the folder: the same pooled model as `emb`
    ranked = json.loads(tool.invoke({"texts": ["a red cube", "the sea of night sky"], "query": "a red cube"}))
    assert ranked[0] == {"text": "a red cube", "score": pytest.approx(1.0, abs=1e-5)}
    plain = json.loads(tool.invoke({"texts": ["a red cube"]}))
    assert plain["dim"] == 16 and plain["vectors"][0] == pytest.approx(emb.embed_query("a red cube"), abs=1e-5)
    assert pool.stats()["loads"] == 1 and len(loads_of(pool, tiny_bert)) == 1

    async def main() -> tuple[list[float], str]:
        return await emb.aembed_query("a red cube"), await tool.ainvoke({"texts": ["a red cube"]})

    vector, content = asyncio.run(main())
    assert vector == pytest.approx(emb.embed_query("a red cube")) and json.loads(content)["dim"] == 16


# ------------------------------------------------------------------------- agents
def test_a_scripted_agent_calls_a_local_model_tool(tiny_bert: Path, pool: ModelPool) -> None:
    from worldgen.agents.agent import Agent

    tool = embedding_tool(tiny_bert)
    call = AIMessage("", tool_calls=[{"name": "embed_texts", "id": "c1",
                                      "args": {"texts": ["the sea of night sky", "a red cube"], "query": "red cube"}}])
    llm = ScriptedChat(responses=[call, AIMessage("the cube")], seen=[])
    result = Agent(llm=llm, tools=[tool]).invoke("which text is about a cube?")
    assert result.text == "the cube" and result.tool_calls == 1
    (answer,) = [m for m in result.messages if isinstance(m, ToolMessage)]
    ranked = json.loads(answer.content)
    assert {r["text"] for r in ranked} == {"the sea of night sky", "a red cube"}
    assert ranked[0]["score"] >= ranked[1]["score"]
    assert len(loads_of(pool, tiny_bert)) == 1


# ------------------------------------------------------------------ missing models
def test_a_missing_folder_names_the_ref_and_the_tool(tmp_path: Path, picture: Path, pool: ModelPool) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFoundError, match="requested by \"tool 'describe_image'\"") as info:
        image_description_tool(missing).invoke({"image": str(picture)})
    assert info.value.ref == str(missing)
    assert str(info.value).count("could not be loaded") == 1  # the pool does not wrap its own error
    with pytest.raises(ModelNotFoundError, match="no-such-model"):
        TransformersEmbeddings(missing).embed_query("a")
    with pytest.raises(ModelNotFoundError, match="no-such-model.*local_chat_model"):
        local_chat_model(missing)
    with pytest.raises(ModelNotFoundError, match="no-such-model.*tool 'local_text_to_image'"):
        text_to_image_graph_tool(missing).invoke({"prompt": "a hill"})
    assert pool.stats()["models"] == []


def test_a_graph_node_with_a_missing_ref_names_the_node(tmp_path: Path, pool: ModelPool) -> None:
    from worldgen.engine import Graph

    config = {"graph_id": "g", "nodes": {"unet": {"block_type": "backbone/unet2d_condition",
                                                  "config": {"model_id": str(tmp_path / "gone")}}}}
    with pytest.raises(ModelNotFoundError, match=r"requested by .*node 'unet' of graph 'g'") as info:
        Graph.from_config(config)
    assert info.value.ref == str(tmp_path / "gone")


# -------------------------------------------------------------------- pickle safety
def test_pickle_only_causal_lm_is_refused_unless_opted_in(tiny_llm: Path, tmp_path: Path, pool: ModelPool) -> None:
    pickled = pickle_only_copy(tiny_llm, tmp_path / "llm-bin")
    with pytest.raises(PickleCheckpointError, match=r"llm-bin.*pytorch_model\.bin.*allow_pickle=True") as info:
        local_chat_model(pickled).invoke("hi")
    assert info.value.ref == str(pickled.resolve())
    with pytest.raises(PickleCheckpointError):
        text_generation_tool(pickled).invoke({"prompt": "hi"})
    assert pool.stats()["models"] == []

    chat = local_chat_model(pickled, allow_pickle=True, max_new_tokens=3)
    safe = local_chat_model(tiny_llm, max_new_tokens=3)
    assert chat.invoke("hello world").content == safe.invoke("hello world").content
    for p, q in zip(chat._model.state_dict().values(), safe._model.state_dict().values()):
        assert torch.equal(p, q)


class _Boom:
    """Unpickling this calls `exec`: what weights_only=True exists to stop."""

    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').touch()",))


def test_opted_in_pickles_still_load_weights_only(tiny_llm: Path, tmp_path: Path, pool: ModelPool,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    pickled = pickle_only_copy(tiny_llm, tmp_path / "evil")
    torch.save({"model.embed_tokens.weight": _Boom()}, pickled / "pytorch_model.bin")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Exception, match="(?i)weights_only|unpickl|not allowed|unsupported"):
        local_chat_model(pickled, allow_pickle=True).invoke("hi")
    assert not (tmp_path / "PWNED").exists()


def test_pickle_only_encoder_and_captioner_are_refused(tiny_bert: Path, tiny_blip: Path, picture: Path,
                                                       tmp_path: Path, pool: ModelPool) -> None:
    bert = pickle_only_copy(tiny_bert, tmp_path / "bert-bin")
    with pytest.raises(PickleCheckpointError, match="bert-bin"):
        TransformersEmbeddings(bert).embed_query("a")
    opted = TransformersEmbeddings(bert, allow_pickle=True).embed_query("a red cube")
    assert opted == pytest.approx(TransformersEmbeddings(tiny_bert).embed_query("a red cube"), abs=1e-6)

    blip = pickle_only_copy(tiny_blip, tmp_path / "blip-bin")
    with pytest.raises(PickleCheckpointError, match="requested by \"tool 'describe_image'\""):
        image_description_tool(blip).invoke({"image": str(picture)})
    assert isinstance(image_description_tool(blip, allow_pickle=True).invoke({"image": str(picture)}), str)


def test_pool_default_loader_refuses_pickles(tiny_bert: Path, tmp_path: Path, pool: ModelPool) -> None:
    from transformers import BertModel

    bert = pickle_only_copy(tiny_bert, tmp_path / "bert-bin")
    with pytest.raises(PickleCheckpointError, match="requested by 'embedder'"):
        pool.get(bert, cls=BertModel, requested_by="embedder")
    model = pool.get(bert, cls=BertModel, allow_pickle=True)
    assert isinstance(model, BertModel)
    assert pool.get(bert, cls=BertModel, allow_pickle=True) is model  # the opt-in is part of the key
    assert pool.get(tiny_bert, cls=BertModel) is not model


def test_pickle_only_diffusers_component_is_refused(tiny_sd: Path, tmp_path: Path, pool: ModelPool) -> None:
    from worldgen.blocks.diffusion import UNet2DConditionBackbone
    from worldgen.tools.text_to_image import DiffusersTextToImage

    sd = pickle_only_copy(tiny_sd, tmp_path / "sd-bin", weights="unet/diffusion_pytorch_model.safetensors",
                          pickle_name="diffusion_pytorch_model.bin")
    with pytest.raises(PickleCheckpointError, match=r"sd-bin/unet.*requested by 'my_unet'.*allow_pickle=True"):
        UNet2DConditionBackbone("my_unet", config={"model_id": str(sd)})
    opted = UNet2DConditionBackbone(config={"model_id": str(sd), "allow_pickle": True})
    safe = UNet2DConditionBackbone(config={"model_id": str(tiny_sd)})
    for (name, p), q in zip(opted.module.state_dict().items(), safe.module.state_dict().values()):
        assert torch.equal(p, q), name
    assert opted.to_config()["config"]["allow_pickle"] is True  # the opt-in is saved with the node

    # the whole-pipeline renderer, and the pool's own loader on a pipeline folder, check
    # every component folder
    with pytest.raises(PickleCheckpointError, match="unet/diffusion_pytorch_model.bin"):
        DiffusersTextToImage(sd).load()
    from diffusers import DiffusionPipeline

    with pytest.raises(PickleCheckpointError, match="unet/diffusion_pytorch_model.bin"):
        pool.get(sd, cls=DiffusionPipeline)
    assert DiffusersTextToImage(sd, allow_pickle=True).load() is not None


def test_a_tool_given_a_pool_loads_into_it(tiny_bert: Path, tiny_sd: Path, pool: ModelPool) -> None:
    private = ModelPool()
    embedding_tool(tiny_bert, pool=private).invoke({"texts": ["a"]})
    text_to_image_graph_tool(tiny_sd, pool=private, num_inference_steps=1, height=32, width=32,
                       output="base64").invoke({"prompt": "a hill"})
    assert private.stats()["loads"] == 5 and pool.stats()["loads"] == 0
