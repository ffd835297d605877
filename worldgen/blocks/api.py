"""API-backed blocks: the same ports as the local blocks, the model behind an HTTP API.

levels.md §6: a block with ``backend: "api"`` loads no weights and builds no model; its
`forward` is one HTTP request whose reply lands on the ports a local block of the same role
has, so graphs, pipelines and worlds cannot tell the two apart. Registered types (importing
this module registers them):

- ``llm/api`` (alias ``llm/openai``): the ``llm`` role's ports (``prompt``, optional
  ``context`` / ``system_prompt`` / ``params`` → ``text``), through langchain-openai's
  ``ChatOpenAI``; `LlmApi.chat_model` is that model for LangChain / world use.
- ``embedding/api`` (alias ``embedding/openai``): ``input`` (a text or a list of texts) →
  ``embedding`` (float32 tensor ``[N, D]``), through ``OpenAIEmbeddings``.
- ``image/api`` (alias ``image/openai``): ``prompt`` → ``image``, over the OpenAI images API
  (``/images/generations``, ``b64_json``); the output port is the ``image`` (IMAGE) port of the
  local ``text_to_image`` graph; the value is a PIL image by default (``output_format``:
  ``"pil"``, ``"tensor"`` = ``[1, 3, H, W]`` in [0, 1] like the local graph, or ``"png"``
  bytes). The block is also a `TextToImage` renderer, so a world's Creator can use it.
- ``vlm/api`` (alias ``vlm/openai``): ``image`` (+ optional ``prompt``) → ``text``, an image
  description through a vision chat API.

Config (validated by `ApiSettings`): ``provider`` (``openai``, or ``openai_compatible`` /
``vllm`` / ``ollama`` … with ``endpoint_url``), ``model_id``, optional ``endpoint_url``,
``api_key_env`` (the *name* of the variable holding the key; default ``OPENAI_API_KEY``,
which may be unset for a self-hosted endpoint), ``max_retries`` (default 2) and ``timeout``.
The key itself is refused in a config: configs are saved, and secrets must not be.

All blocks naming one (provider, model_id, endpoint, key variable, retry options) share one
client (`worldgen.blocks.api_clients`). Transient failures (HTTP 408/409/429/5xx, timeouts,
connection errors) are retried by that client with exponential backoff, honouring
``Retry-After``; when retries run out the block raises `ApiCallError` naming the block, the
provider, the model and the endpoint (never the key).

`state_dict()` is empty and `trainable_parameters()` yields nothing: gradients stop at the
API boundary (a trainable wrapper, e.g. a prompt adapter, owns its own parameters).
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from worldgen.blocks.api_clients import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    ApiCallError,
    ApiClient,
    ApiConfigError,
    get_client,
    is_transient,
)
from worldgen.blocks.base import Block
from worldgen.blocks.ports import Port, PortType, input_port, output_port
from worldgen.blocks.registry import register_block
from worldgen.blocks.roles import LLM

__all__ = [
    "ApiBlock",
    "ApiCallError",
    "ApiConfigError",
    "ApiSettings",
    "EmbeddingApi",
    "ImageApi",
    "LlmApi",
    "VlmApi",
]

T = TypeVar("T")

#: config keys that would hold a secret; refused (the value is never echoed)
_SECRET_KEYS = frozenset({"api_key", "apikey", "openai_api_key", "key", "token", "secret", "password", "authorization"})


class ApiSettings(BaseModel):
    """The saved part of an API block's config: where the model lives, never the key."""

    model_config = ConfigDict(extra="allow")

    backend: Literal["api"] = "api"
    provider: str = "openai"
    model_id: str = Field(min_length=1)
    endpoint_url: str | None = None
    api_key_env: str | None = Field(None, min_length=1, description="name of the env var with the key")
    max_retries: int = Field(DEFAULT_MAX_RETRIES, ge=0)
    timeout: float | None = Field(DEFAULT_TIMEOUT, gt=0)


class ApiBlock(Block):
    """Shared behaviour of API blocks: settings, the shared client, error mapping."""

    config_schema = ApiSettings
    backend: ClassVar[str] = "api"

    def __init__(self, block_id: str | None = None, *, config: Mapping[str, Any] | BaseModel | None = None) -> None:
        if isinstance(config, BaseModel):
            config = config.model_dump()
        config = dict(config or {})
        who = f"{self.block_type} block {block_id!r}" if block_id else f"{self.block_type} block"
        secrets = sorted(k for k in config if str(k).lower() in _SECRET_KEYS)
        if secrets:
            raise ApiConfigError(
                f"{who}: config key(s) {secrets} would store a secret in the config, which is saved; "
                "put the key in an environment variable and name it with 'api_key_env'"
            )
        config.setdefault("backend", "api")
        config.setdefault("provider", "openai")  # saved explicitly: a config says where the model lives
        try:  # Block.__init__ validates against `config_schema` (ApiSettings)
            super().__init__(block_id, config=config)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())
            raise ApiConfigError(f"{who}: invalid API config: {problems}") from None
        try:  # fail at build time on what can be checked without the network (provider, endpoint)
            self.client  # noqa: B018 - makes no request
        except ApiConfigError as exc:
            raise ApiConfigError(f"{self._who()}: {exc}") from None

    # ------------------------------------------------------------ settings
    @property
    def api_settings(self) -> ApiSettings:
        return self.settings  # type: ignore[return-value]

    @property
    def provider(self) -> str:
        return self.api_settings.provider

    @property
    def model_id(self) -> str:
        return self.api_settings.model_id

    def describe(self) -> dict[str, Any]:
        """Metadata for listings and reports (no secret: the key variable's name only)."""
        key = self.client.key
        return {
            "block_type": self.block_type, "backend": "api", "provider": key.provider, "model_id": key.model_id,
            "endpoint_url": key.endpoint_url, "api_key_env": key.api_key_env,
        }

    # --------------------------------------------------------------- client
    @property
    def client(self) -> ApiClient:
        """The process-wide client for this block's model (shared by every block naming it)."""
        s = self.api_settings
        return get_client(
            s.provider, s.model_id, endpoint_url=s.endpoint_url, api_key_env=s.api_key_env,
            max_retries=s.max_retries, timeout=s.timeout, check_key=False,
        )

    def _who(self) -> str:
        return f"{self.block_type} block {self.block_id!r}"

    def _call(self, what: str, fn: Callable[[ApiClient], T]) -> T:
        """Run one request; turn failures into errors naming block, provider, model, endpoint."""
        import openai

        client = self.client
        where = f"{self._who()} ({client.key.describe()})"
        try:
            client.api_key()  # a missing key variable: say so before any request
            return fn(client)
        except ApiConfigError as exc:
            raise ApiConfigError(f"{self._who()}: {exc}") from None
        except openai.APIStatusError as exc:
            retryable = is_transient(exc)  # the SDK retried exactly these
            tries = f" after {client.key.max_retries} retries" if retryable else ""
            raise ApiCallError(
                f"{where}: {what} failed with HTTP {exc.status_code}{tries}: {client.scrub(_error_text(exc))}",
                status_code=exc.status_code, retryable=retryable,
            ) from None
        except openai.APIConnectionError as exc:
            raise ApiCallError(
                f"{where}: {what} could not reach the server after {client.key.max_retries} retries: "
                f"{client.scrub(str(exc))}",
                retryable=True,
            ) from None
        except openai.OpenAIError as exc:
            raise ApiCallError(f"{where}: {what} failed: {client.scrub(str(exc))}") from None


def _error_text(exc: Any) -> str:
    """The server's own message when its error body has one, else the SDK's text."""
    body = getattr(exc, "body", None)
    if isinstance(body, Mapping):
        inner = body.get("error")
        message = inner.get("message") if isinstance(inner, Mapping) else body.get("message")
        if message:
            return str(message)
    return str(getattr(exc, "message", None) or exc)


def _params(block: Block, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Request parameters: ``config["params"]`` overridden by the ``params`` port."""
    return {**(block.config.get("params") or {}), **(inputs.get("params") or {})}


# ------------------------------------------------------------------------------ llm
@register_block("llm/openai")
@register_block("llm/api")
class LlmApi(ApiBlock, LLM):
    """A chat model behind an OpenAI-compatible API, with the ``llm`` role's ports.

    ``prompt`` is the user message; ``system_prompt`` (port, else ``config["system_prompt"]``)
    the system message; ``context`` a list of earlier messages, or any other value shown
    before the prompt as context; ``params`` request options (``temperature``, ``max_tokens``…).
    """

    block_type = "llm/api"

    @property
    def chat_model(self) -> Any:
        """The shared ``ChatOpenAI`` (a LangChain ``BaseChatModel``; e.g. a world's ``llm``)."""
        return self.client.chat_model()

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        from langchain_core.messages import (
            BaseMessage,
            HumanMessage,
            SystemMessage,
            convert_to_messages,
        )

        messages: list[BaseMessage] = []
        system = inputs.get("system_prompt") or self.config.get("system_prompt")
        if system:
            messages.append(SystemMessage(str(system)))
        context = inputs.get("context")
        if isinstance(context, (list, tuple)):
            messages.extend(convert_to_messages(list(context)))
        elif context is not None:
            messages.append(HumanMessage(f"Context:\n{message_text(context)}"))
        messages.append(HumanMessage(message_text(inputs["prompt"])))
        params = _params(self, inputs)

        def request(client: ApiClient) -> str:
            model = client.chat_model()
            reply = (model.bind(**params) if params else model).invoke(messages)
            return reply.text

        return {"text": self._call("chat completion", request)}


def message_text(value: Any) -> str:
    """A value as the text of a chat message: a string as is, anything else as JSON (or
    ``str`` when it does not serialise). Shared by `LlmApi` and the agents' inputs."""
    if isinstance(value, str):
        return value
    import json

    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)


# ------------------------------------------------------------------------ embedding
@register_block("embedding/openai")
@register_block("embedding/api")
class EmbeddingApi(ApiBlock):
    """Text embeddings over an OpenAI-compatible ``/embeddings`` endpoint.

    ``input``: a string or a list of strings → ``embedding``: float32 tensor ``[N, D]`` (one
    row per text; ``config["output"] = "list"`` gives lists of floats instead).
    """

    block_type = "embedding/api"

    def declare_ports(self) -> list[Port]:
        return [input_port("input", PortType.ANY), output_port("embedding", PortType.TENSOR)]

    @property
    def embeddings(self) -> Any:
        """The shared ``OpenAIEmbeddings`` (a LangChain ``Embeddings``)."""
        return self.client.embeddings()

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        value = inputs["input"]
        texts = [value] if isinstance(value, str) else [str(v) for v in value]
        vectors = self._call("embedding", lambda client: client.embeddings().embed_documents(texts))
        if self.config.get("output") == "list":
            return {"embedding": vectors}
        import torch

        return {"embedding": torch.tensor(vectors, dtype=torch.float32)}


# ---------------------------------------------------------------------------- image
@register_block("image/openai")
@register_block("image/api")
class ImageApi(ApiBlock):
    """Text-to-image over the OpenAI images API; also a `TextToImage` renderer.

    Config: ``width`` / ``height`` (default 512), ``output_format`` (``pil`` | ``tensor`` |
    ``png``), ``response_format`` (default ``b64_json``; None for servers that refuse it),
    ``send_seed`` (pass the seed as an extra ``seed`` field; the OpenAI API has none), ``params``.
    ``negative_prompt`` is accepted for port compatibility; the OpenAI API has no such field,
    so it is sent only as ``negative_prompt`` with ``send_negative_prompt: true``.
    """

    block_type = "image/api"

    def declare_ports(self) -> list[Port]:
        return [
            input_port("prompt", PortType.TEXT),
            input_port("negative_prompt", PortType.TEXT, optional=True),
            input_port("seed", PortType.ANY, optional=True),
            input_port("params", PortType.DICT, optional=True),
            output_port("image", PortType.IMAGE),
        ]

    @property
    def name(self) -> str:
        """Renderer name recorded in artifact metadata (the Creator reads it)."""
        return f"api:{self.model_id}"

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        params = _params(self, inputs)
        width = int(params.pop("width", self.config.get("width", 512)))
        height = int(params.pop("height", self.config.get("height", 512)))
        image = self.generate(
            inputs["prompt"], width=width, height=height, seed=inputs.get("seed"),
            negative_prompt=inputs.get("negative_prompt"), **params,
        )
        return {"image": _convert_image(image, self.config.get("output_format", "pil"))}

    def __call__(self, prompt: str, *, width: int = 512, height: int = 512, seed: int | None = None, **params: Any) -> Any:
        """`TextToImage` protocol: a PIL image."""
        return self.generate(prompt, width=width, height=height, seed=seed, **params)

    def generate(
        self, prompt: str, *, width: int = 512, height: int = 512, seed: Any = None,
        negative_prompt: str | None = None, **params: Any,
    ) -> Any:
        from PIL import Image

        extra: dict[str, Any] = {}
        if seed is not None and self.config.get("send_seed"):
            extra["seed"] = int(seed)
        if negative_prompt and self.config.get("send_negative_prompt"):
            extra["negative_prompt"] = negative_prompt
        response_format = self.config.get("response_format", "b64_json")
        request: dict[str, Any] = {"model": self.model_id, "prompt": prompt, "n": 1, "size": f"{width}x{height}", **params}
        if response_format:
            request["response_format"] = response_format
        if extra:
            request["extra_body"] = extra

        def call(client: ApiClient) -> bytes:
            result = client.sync.images.generate(**request)
            item = result.data[0] if result.data else None
            if item is None:
                raise ApiCallError(f"{self._who()}: the images API returned no image")
            if item.b64_json:
                return base64.b64decode(item.b64_json)
            if item.url:
                return _download(client, item.url)
            raise ApiCallError(f"{self._who()}: the images API reply has neither b64_json nor url")

        data = self._call("image generation", call)
        try:
            with Image.open(io.BytesIO(data)) as img:
                return img.convert("RGB")
        except Exception as exc:  # noqa: BLE001 - any undecodable payload
            raise ApiCallError(f"{self._who()}: the images API returned data that is not an image ({exc})") from None


def _download(client: ApiClient, url: str) -> bytes:
    """Fetch an image URL the images API answered with (some servers only return URLs)."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=client.key.timeout or 60) as response:
        return response.read()


def _convert_image(image: Any, fmt: str) -> Any:
    if fmt == "pil":
        return image
    if fmt == "png":
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    if fmt == "tensor":
        import numpy as np
        import torch

        array = np.asarray(image, dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()
    raise ApiConfigError(f"output_format must be 'pil', 'tensor' or 'png', got {fmt!r}")


# ------------------------------------------------------------------------------ vlm
@register_block("vlm/openai")
@register_block("vlm/api")
class VlmApi(ApiBlock):
    """Image description through a vision chat API (OpenAI ``image_url`` content parts).

    ``image``: a PIL image, PNG/JPEG bytes, a file path, or a ``[1, 3, H, W]`` / ``[3, H, W]``
    tensor in [0, 1]; ``prompt`` defaults to ``config["prompt"]`` or "Describe what this image
    shows." → ``text``.
    """

    block_type = "vlm/api"
    role = "vlm"
    DEFAULT_PROMPT = "Describe what this image shows."

    def declare_ports(self) -> list[Port]:
        return [
            input_port("image", PortType.IMAGE),
            input_port("prompt", PortType.TEXT, optional=True),
            input_port("system_prompt", PortType.TEXT, optional=True),
            input_port("params", PortType.DICT, optional=True),
            output_port("text", PortType.TEXT),
        ]

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        prompt = inputs.get("prompt") or self.config.get("prompt") or self.DEFAULT_PROMPT
        system = inputs.get("system_prompt") or self.config.get("system_prompt")
        messages: list[dict[str, Any]] = [{"role": "system", "content": str(system)}] if system else []
        messages.append({
            "role": "user",
            "content": [
                {"type": "text", "text": str(prompt)},
                {"type": "image_url", "image_url": {"url": image_data_url(inputs["image"])}},
            ],
        })
        params = _params(self, inputs)

        def call(client: ApiClient) -> str:
            reply = client.sync.chat.completions.create(model=self.model_id, messages=messages, **params)
            if not reply.choices:
                raise ApiCallError(f"{self._who()}: the chat API returned no choices")
            return reply.choices[0].message.content or ""

        return {"text": self._call("image description", call)}


def image_data_url(image: Any) -> str:
    """A ``data:`` URL for an image given as PIL, bytes, a path or a tensor (PNG unless bytes say otherwise)."""
    from PIL import Image

    if isinstance(image, (bytes, bytearray)):
        data = bytes(image)
        mime = "image/jpeg" if data[:3] == b"\xff\xd8\xff" else "image/png"
        return f"data:{mime};base64,{base64.b64encode(data).decode()}"
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as img:
            image = img.convert("RGB")
    elif not isinstance(image, Image.Image):
        import numpy as np

        tensor = image.detach().cpu().float() if hasattr(image, "detach") else image
        array = np.asarray(tensor)
        if array.ndim == 4:
            array = array[0]
        if array.ndim == 3 and array.shape[0] in (1, 3, 4):
            array = array.transpose(1, 2, 0)
        array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
        image = Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
