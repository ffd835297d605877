"""Local models as LangChain tools, Runnables and `Embeddings`.

Every tool here resolves its model through the model pool (`worldgen.local_models.pool`),
so two tools, a chat model and an embeddings object on one folder hold one model object
(``pool.stats()`` shows one load), and nothing loads before the first call. Each tool has
a typed pydantic argument schema (the ``*Args`` classes), runs synchronously with
``invoke`` and off the event loop with ``ainvoke`` (the load and the forward pass run in a
worker thread: LangGraph's dev server rejects blocking calls on the loop).

* `text_to_image_graph_tool(checkpoint)`: the ``text_to_image`` graph template on a local
  diffusers folder; returns a PNG path (or a base64 data URL), the PIL image as artifact.
* `text_generation_tool(folder)`: a transformers causal LM with its chat template, through
  `ChatTransformers.from_pretrained`; `local_chat_model(folder)` is the same model as a
  chat model (e.g. the world's ``llm``).
* `image_description_tool(folder)`: a captioning / vision-language checkpoint (BLIP, a
  VisionEncoderDecoder, …) describing an image file.
* `TransformersEmbeddings(folder)`: a LangChain `Embeddings` over a transformers encoder
  (mean pooling), and `embedding_tool`.

Safety: weights load from safetensors only; a folder of pickles is refused
(`PickleCheckpointError`) unless ``allow_pickle=True``, then read with
``torch.load(weights_only=True)``. Nothing is ever downloaded (``local_files_only``).
Images an agent names are read from local files only, optionally confined to
``image_root``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import json
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.embeddings import Embeddings
from langchain_core.tools import BaseTool, StructuredTool
from pydantic import BaseModel, ConfigDict, Field

from worldgen.local_models.pool import (
    ModelNotFoundError,
    ModelPool,
    requester,
    requesting,
    resolve_pool,
    using_pool,
)
from worldgen.local_models.safety import safe_load_kwargs

if TYPE_CHECKING:
    from PIL import Image

    from worldgen.engine.graph import Graph
    from worldgen.local_models.chat_model import ChatTransformers

__all__ = [
    "EmbeddingArgs",
    "ImageDescriptionArgs",
    "LoadedImageToText",
    "LoadedTextEncoder",
    "TextGenerationArgs",
    "TextToImageToolArgs",
    "TransformersEmbeddings",
    "embedding_tool",
    "image_description_tool",
    "load_image_to_text",
    "load_text_encoder",
    "local_chat_model",
    "text_generation_tool",
    "text_to_image_graph_tool",
]

_MAX_IMAGE_SIDE = 1024
_MAX_TEXTS = 256


def _folder(path: str | os.PathLike[str]) -> Path:
    return Path(path).expanduser().resolve()


def _local_tool(
    run: Callable[..., Any],
    *,
    name: str,
    description: str,
    args_schema: type[BaseModel],
    arun: Callable[..., Any] | None = None,
    artifact: bool = False,
) -> BaseTool:
    """`run` as a structured tool. Its async twin is `arun`, or else `run` in a worker thread
    (loading a model and its forward pass block; they must stay off the event loop)."""

    async def in_thread(*args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(run, *args, **kwargs)

    return StructuredTool.from_function(
        func=run,
        coroutine=arun or in_thread,
        name=name,
        description=description,
        args_schema=args_schema,
        **({"response_format": "content_and_artifact"} if artifact else {}),
    )


def _not_there(what: str) -> FileNotFoundError:
    return FileNotFoundError(f"{what} folder does not exist (local folders only; nothing is downloaded)")


def _pooled(
    folder: str | os.PathLike[str],
    build: Callable[[Path, dict[str, Any]], Any],
    *,
    what: str,
    cls: str,
    pool: ModelPool | None,
    allow_pickle: bool,
    requested_by: str | None,
) -> Any:
    """``build(path, safe)`` once per folder, through the pool: the one load path of the
    transformers loaders here. `safe` are the ``from_pretrained`` keywords of the pickle
    check (`safe_load_kwargs`, run before any read). A missing folder fails before
    transformers would take it for a hub id; the pool's error names the ref and who asked."""
    path = _folder(folder)
    requested_by = requester(requested_by)

    def load() -> Any:
        if not path.is_dir():
            raise _not_there(what)
        return build(path, safe_load_kwargs(path, allow_pickle=allow_pickle, requested_by=requested_by))

    return resolve_pool(pool).get(str(path), load, cls=cls, allow_pickle=allow_pickle, requested_by=requested_by)


# =============================================================== text → image (graph)
class TextToImageToolArgs(BaseModel):
    """Arguments of `text_to_image_graph_tool`."""

    prompt: str = Field(min_length=1, max_length=2000, description="What the picture shows: subjects, setting, light, style.")
    negative_prompt: str = Field("", max_length=2000, description="What the picture must not show (with guidance only).")
    seed: int | None = Field(None, ge=0, lt=2**63, description="Fix for a reproducible image; omit to derive it from the prompt.")


def text_to_image_graph_tool(
    checkpoint: str | os.PathLike[str],
    *,
    name: str = "local_text_to_image",
    output: Literal["path", "base64"] = "path",
    output_dir: str | os.PathLike[str] | None = None,
    save: Callable[[Image.Image], str] | None = None,
    pool: ModelPool | None = None,
    num_inference_steps: int = 20,
    height: int = 64,
    width: int = 64,
    **template_params: Any,
) -> BaseTool:
    """The ``text_to_image`` graph on a local diffusers folder, as a LangChain tool.

    Content: ``save(image)`` if given, else the path of a PNG written to `output_dir`
    (default: a fresh temp dir; the file is named by its hash), or with ``output="base64"``
    a ``data:image/png;base64,…`` URL. The PIL image is the ToolMessage artifact. The graph
    is built on the first call (its modules through the pool) and reused; calls are
    serialised, since a diffusers scheduler is stateful. `template_params` go to the
    template (``solver``, ``guidance_scale``…).
    """
    from worldgen.tools.text_to_image import _prompt_seed

    folder = _folder(checkpoint)
    params = {"num_inference_steps": num_inference_steps, "height": height, "width": width, **template_params}
    state: dict[str, Any] = {}
    lock = threading.Lock()

    def graph() -> Graph:
        if "graph" not in state:
            from worldgen.engine.templates import graph_from_template

            # a missing folder fails in the first block's load, naming the ref and this tool
            with using_pool(resolve_pool(pool)), requesting(f"tool {name!r}"):
                state["graph"] = graph_from_template("text_to_image", checkpoint=folder, **params)
        return state["graph"]

    def write(image: Image.Image) -> str:
        if save is not None:
            return save(image)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
        if output == "base64":
            return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        if "dir" not in state:
            state["dir"] = Path(output_dir) if output_dir is not None else Path(tempfile.mkdtemp(prefix="worldgen-t2i-"))
            state["dir"].mkdir(parents=True, exist_ok=True)
        path = state["dir"] / f"{hashlib.sha256(data).hexdigest()[:16]}.png"
        path.write_bytes(data)
        return str(path)

    def run(prompt: str, negative_prompt: str = "", seed: int | None = None) -> tuple[str, Image.Image]:
        from worldgen.blocks.diffusion import to_pil

        seed = _prompt_seed(prompt) if seed is None else seed
        with lock:
            g = graph()
            inputs: dict[str, Any] = {"prompt": prompt, "seed": seed}
            if "negative_prompt" in g.exposed_inputs():
                inputs["negative_prompt"] = negative_prompt
            image = to_pil(g.run(inputs)["image"])[0]
            image.info.update(renderer=f"graph:text_to_image:{folder}", prompt=prompt, seed=seed)
            return write(image), image  # under the lock too: the output dir is made once

    return _local_tool(
        run,
        name=name,
        description=(
            f"Render a {width}x{height} image from a text prompt with the local diffusion model "
            f"{folder.name!r}; returns {'a base64 PNG data URL' if output == 'base64' and save is None else 'a reference to the PNG'}."
        ),
        args_schema=TextToImageToolArgs,
        artifact=True,
    )


# ===================================================================== text generation
class TextGenerationArgs(BaseModel):
    """Arguments of `text_generation_tool`."""

    prompt: str = Field(min_length=1, max_length=20000, description="The instruction or question for the model.")
    max_new_tokens: int | None = Field(None, ge=1, le=4096, description="Longest reply in tokens; omit for the tool's default.")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="0 is greedy (deterministic); omit for the default.")


def local_chat_model(
    folder: str | os.PathLike[str], *, pool: ModelPool | None = None, allow_pickle: bool = False, **kwargs: Any
) -> ChatTransformers:
    """A chat model over a local ``save_pretrained`` causal LM folder (its chat template),
    loaded through the pool on first use: usable as a world's or an agent's ``llm``, and
    the same model object as `text_generation_tool` on that folder."""
    from worldgen.local_models.chat_model import ChatTransformers

    folder = _folder(folder)
    if not folder.is_dir():  # fail now, not at the first (lazy) load
        raise ModelNotFoundError(str(folder), requester("local_chat_model"), _not_there("causal LM"))
    return ChatTransformers.from_pretrained(folder, pool=pool, allow_pickle=allow_pickle, **kwargs)


def text_generation_tool(
    model: str | os.PathLike[str] | ChatTransformers,
    *,
    name: str = "generate_text",
    description: str | None = None,
    system_prompt: str | None = None,
    pool: ModelPool | None = None,
    allow_pickle: bool = False,
    **chat_kwargs: Any,
) -> BaseTool:
    """A local causal LM (a folder, or a `ChatTransformers` already built) as a tool: the
    prompt is wrapped in the model's chat template (after `system_prompt`), the reply is
    the tool's content. `chat_kwargs` are ChatTransformers fields (``max_new_tokens``…)."""
    from langchain_core.messages import HumanMessage, SystemMessage

    from worldgen.local_models.chat_model import ChatTransformers

    chat = model if isinstance(model, ChatTransformers) else local_chat_model(
        model, pool=pool, allow_pickle=allow_pickle, **chat_kwargs
    )

    def messages(prompt: str) -> list[Any]:
        return ([SystemMessage(system_prompt)] if system_prompt else []) + [HumanMessage(prompt)]

    def overrides(max_new_tokens: int | None, temperature: float | None) -> dict[str, Any]:
        return {k: v for k, v in (("max_new_tokens", max_new_tokens), ("temperature", temperature)) if v is not None}

    def run(prompt: str, max_new_tokens: int | None = None, temperature: float | None = None) -> str:
        return str(chat.invoke(messages(prompt), **overrides(max_new_tokens, temperature)).content)

    async def arun(prompt: str, max_new_tokens: int | None = None, temperature: float | None = None) -> str:
        # ChatTransformers generates (and loads, on first use) in a worker thread
        reply = await chat.ainvoke(messages(prompt), **overrides(max_new_tokens, temperature))
        return str(reply.content)

    return _local_tool(
        run,
        arun=arun,
        name=name,
        description=description or f"Generate text with the local language model {Path(chat.model_ref).name!r}.",
        args_schema=TextGenerationArgs,
    )


# ===================================================================== image → text
@dataclass(frozen=True)
class LoadedImageToText:
    """A captioning / vision-language model with what prepares its inputs."""

    model: Any
    processor: Any  # a transformers processor, or None when image_processor + tokenizer are apart
    image_processor: Any = None
    tokenizer: Any = None

    def describe(self, image: Image.Image, prompt: str | None, max_new_tokens: int) -> str:
        import torch

        if self.processor is not None:
            kwargs: dict[str, Any] = {"images": image, "return_tensors": "pt"}
            if prompt:
                kwargs["text"] = prompt
            inputs = dict(self.processor(**kwargs))
            decode = self.processor.decode
        else:
            inputs = dict(self.image_processor(images=image, return_tensors="pt"))
            decode = self.tokenizer.decode
        with torch.inference_mode():
            ids = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        return str(decode(ids[0], skip_special_tokens=True)).strip()


def load_image_to_text(
    folder: str | os.PathLike[str],
    *,
    pool: ModelPool | None = None,
    allow_pickle: bool = False,
    requested_by: str | None = None,
) -> LoadedImageToText:
    """A local image-to-text checkpoint through the pool (one object per folder). The model
    class is the one ``config.json`` names under ``architectures`` (e.g.
    ``BlipForConditionalGeneration``, ``VisionEncoderDecoderModel``); it must generate."""

    def build(path: Path, safe: dict[str, Any]) -> LoadedImageToText:
        import transformers

        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
        names = list(getattr(config, "architectures", None) or [])
        cls = getattr(transformers, names[0], None) if names else None
        if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel) and hasattr(cls, "generate")):
            raise ValueError(
                f"image-to-text folder {str(path)!r}: config.json names architectures {names}, not a transformers "
                "model that generates text (expected e.g. BlipForConditionalGeneration or VisionEncoderDecoderModel)"
            )
        model = cls.from_pretrained(path, local_files_only=True, **safe).eval()
        try:
            processor = transformers.AutoProcessor.from_pretrained(path, local_files_only=True)
            if not callable(getattr(processor, "decode", None)):
                raise TypeError("an image processor alone cannot decode")
            return LoadedImageToText(model, processor)
        except (OSError, ValueError, TypeError, KeyError):  # no processor config: its two halves
            image_processor = transformers.AutoImageProcessor.from_pretrained(path, local_files_only=True)
            tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
            return LoadedImageToText(model, None, image_processor, tokenizer)

    return _pooled(folder, build, what="image-to-text", cls="transformers:image_to_text", pool=pool,
                   allow_pickle=allow_pickle, requested_by=requested_by)


class ImageDescriptionArgs(BaseModel):
    """Arguments of `image_description_tool`."""

    image: str = Field(
        min_length=1,
        description="Path of a local image file (PNG, JPEG…), or a base64 PNG/JPEG (optionally a data: URL).",
    )
    prompt: str | None = Field(None, max_length=500, description="Text the description should start with, e.g. 'a picture of'.")
    max_new_tokens: int = Field(40, ge=1, le=512, description="Longest description in tokens.")


_BASE64_IMAGE_STARTS = ("iVBORw0KGgo", "/9j/", "R0lGOD", "UklGR")  # PNG, JPEG, GIF, WEBP


def _open_image(spec: str, root: Path | None) -> Image.Image:
    """An RGB image from a local path (inside `root` when given) or base64 bytes (a data URL,
    or a bare string starting like an encoded PNG/JPEG/GIF/WEBP); errors say which and why."""
    from PIL import Image, UnidentifiedImageError

    text = spec.strip()
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if ";base64" not in header:
            raise ValueError("an image data URL must be base64-encoded (data:image/png;base64,...)")
        encoded = True
    else:
        encoded = len(text) > 1024 or text.startswith(_BASE64_IMAGE_STARTS)
    if encoded:
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("image is neither a local file path nor valid base64 image bytes") from exc
        where = "the base64 image"
    else:
        path = Path(text).expanduser().resolve()
        if root is not None and not path.is_relative_to(root):
            raise PermissionError(f"image {text!r} is outside the folder this tool may read ({str(root)!r})")
        if not path.is_file():
            raise FileNotFoundError(f"image file {text!r} does not exist")
        data, where = path.read_bytes(), f"image file {text!r}"
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ValueError(f"could not read {where} as an image: {exc}") from exc
    image = image.convert("RGB")
    if max(image.size) > _MAX_IMAGE_SIDE:  # the processor resizes anyway; keep memory bounded
        image.thumbnail((_MAX_IMAGE_SIDE, _MAX_IMAGE_SIDE))
    return image


def image_description_tool(
    folder: str | os.PathLike[str],
    *,
    name: str = "describe_image",
    description: str | None = None,
    image_root: str | os.PathLike[str] | None = None,
    pool: ModelPool | None = None,
    allow_pickle: bool = False,
) -> BaseTool:
    """A local captioning / vision-language checkpoint as a tool: image in, text out.

    With `image_root`, only files inside that folder may be read (an agent names the path).
    """
    path = _folder(folder)
    root = Path(image_root).expanduser().resolve() if image_root is not None else None

    def run(image: str, prompt: str | None = None, max_new_tokens: int = 40) -> str:
        picture = _open_image(image, root)
        loaded = load_image_to_text(path, pool=pool, allow_pickle=allow_pickle, requested_by=f"tool {name!r}")
        return loaded.describe(picture, prompt, max_new_tokens)

    return _local_tool(
        run,
        name=name,
        description=description or f"Describe what an image shows, with the local model {path.name!r}.",
        args_schema=ImageDescriptionArgs,
    )


# ========================================================================= embeddings
@dataclass(frozen=True)
class LoadedTextEncoder:
    """A transformers encoder and its tokenizer (pooled: what is derived from them is worked
    out once per load, not per embedding call)."""

    model: Any
    tokenizer: Any

    @cached_property
    def max_length(self) -> int:
        """The longest input both the tokenizer and the position embeddings take."""
        return min(int(getattr(self.tokenizer, "model_max_length", 512) or 512),
                   int(getattr(self.model.config, "max_position_embeddings", 512) or 512))

    @cached_property
    def takes_token_type_ids(self) -> bool:
        """Whether ``forward`` accepts the ``token_type_ids`` a BERT-style tokenizer emits."""
        import inspect

        try:
            return "token_type_ids" in inspect.signature(self.model.forward).parameters
        except (TypeError, ValueError):
            return False


def load_text_encoder(
    folder: str | os.PathLike[str],
    *,
    pool: ModelPool | None = None,
    allow_pickle: bool = False,
    requested_by: str | None = None,
) -> LoadedTextEncoder:
    """``AutoModel`` + ``AutoTokenizer`` of a local folder, through the pool."""

    def build(path: Path, safe: dict[str, Any]) -> LoadedTextEncoder:
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        return LoadedTextEncoder(AutoModel.from_pretrained(path, local_files_only=True, **safe).eval(), tokenizer)

    return _pooled(folder, build, what="text encoder", cls="transformers:encoder", pool=pool,
                   allow_pickle=allow_pickle, requested_by=requested_by)


class TransformersEmbeddings(BaseModel, Embeddings):
    """LangChain `Embeddings` over a local transformers encoder: the mean of the last hidden
    states over the real (unpadded) tokens, L2-normalised by default (so dot = cosine).

    The encoder loads through the pool on first use; ``aembed_*`` run in a worker thread.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    folder: str
    normalize: bool = True
    batch_size: int = Field(32, ge=1)
    max_length: int | None = Field(None, ge=1, description="Truncate texts to this many tokens (default: the model's limit).")
    allow_pickle: bool = False
    pool: ModelPool | None = Field(None, exclude=True)

    def __init__(self, folder: str | os.PathLike[str] | None = None, **data: Any) -> None:
        if folder is not None:
            data["folder"] = str(_folder(folder))
        super().__init__(**data)

    def encoder(self) -> LoadedTextEncoder:
        return load_text_encoder(self.folder, pool=self.pool, allow_pickle=self.allow_pickle,
                                 requested_by=f"TransformersEmbeddings({self.folder!r})")

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        import torch

        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("embed_documents takes a list of strings")
        loaded = self.encoder()
        limit = self.max_length or loaded.max_length
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start : start + self.batch_size]
            encoded = loaded.tokenizer(batch, padding=True, truncation=True, max_length=limit, return_tensors="pt")
            if not loaded.takes_token_type_ids:
                encoded.pop("token_type_ids", None)
            with torch.inference_mode():  # no state changes: threads may share the module
                hidden = loaded.model(**encoded).last_hidden_state
            mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            if self.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
            vectors.extend(pooled.float().tolist())
        return vectors

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        return await asyncio.to_thread(self.embed_query, text)


class EmbeddingArgs(BaseModel):
    """Arguments of `embedding_tool`."""

    texts: list[str] = Field(min_length=1, max_length=_MAX_TEXTS, description="The texts to embed (or to rank).")
    query: str | None = Field(None, description="If given, the texts are ranked by similarity to it instead.")


def embedding_tool(
    embeddings: TransformersEmbeddings | Embeddings | str | os.PathLike[str],
    *,
    name: str = "embed_texts",
    description: str | None = None,
    pool: ModelPool | None = None,
) -> BaseTool:
    """Embeddings as a tool. Content (JSON): with ``query``, the texts ranked by cosine
    similarity (``[{"text", "score"}]``, best first); without, ``{"dim", "vectors"}``. The
    raw vectors are the artifact."""
    emb = embeddings if isinstance(embeddings, Embeddings) else TransformersEmbeddings(embeddings, pool=pool)

    def rank(texts: list[str], vectors: list[list[float]], q: list[float] | None) -> str:
        if q is None:
            return json.dumps({"dim": len(vectors[0]) if vectors else 0,
                               "vectors": [[round(x, 6) for x in v] for v in vectors]})
        scores = [_cosine(q, v) for v in vectors]
        order = sorted(range(len(texts)), key=lambda i: -scores[i])
        return json.dumps([{"text": texts[i], "score": round(scores[i], 6)} for i in order], ensure_ascii=False)

    def run(texts: list[str], query: str | None = None) -> tuple[str, list[list[float]]]:
        vectors = emb.embed_documents(list(texts))
        q = emb.embed_query(query) if query is not None else None
        return rank(texts, vectors, q), vectors

    async def arun(texts: list[str], query: str | None = None) -> tuple[str, list[list[float]]]:
        vectors = await emb.aembed_documents(list(texts))
        q = await emb.aembed_query(query) if query is not None else None
        return rank(texts, vectors, q), vectors

    return _local_tool(
        run,
        arun=arun,
        name=name,
        description=description or "Embed texts as vectors, or rank texts by meaning against a query.",
        args_schema=EmbeddingArgs,
        artifact=True,
    )


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    na = sum(x * x for x in a) ** 0.5
    nb = sum(y * y for y in b) ** 0.5
    return dot / (na * nb) if na and nb else 0.0
