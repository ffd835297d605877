"""Turn a chat-model spec from config ("local", "openai:<model>") into a LangChain chat model."""

from __future__ import annotations

import os
from typing import Any

from langchain_core.language_models import BaseChatModel

ACCEPTED_SPECS = (
    "a BaseChatModel instance", "an llm/api block", '"local"', '"openai:<model>"', '"openai:<model>@<endpoint_url>"',
)


def resolve_chat_model(
    spec: BaseChatModel | str | Any,
    *,
    endpoint_url: str | None = None,
    api_key_env: str | None = None,
    max_retries: int | None = None,
) -> BaseChatModel:
    """Build the chat model a spec names; an already-built model passes through.

    ``"local"`` is the embedded SmolLM2 (loaded on first use). ``"openai:<model>"`` is a
    ``ChatOpenAI`` on the process-wide API client for that model and endpoint (shared with
    ``llm/api`` blocks, see `worldgen.blocks.api_clients`): the endpoint is `endpoint_url`, or
    the one after ``@`` in the spec (``"openai:qwen@http://127.0.0.1:8000/v1"``), or
    ``OPENAI_BASE_URL``, or OpenAI's; the key is read from `api_key_env` (default
    ``OPENAI_API_KEY``, optional for a self-hosted endpoint) at each request, never stored;
    `max_retries` defaults to the API client's. An ``llm/api`` block gives its chat model.
    """
    if isinstance(spec, BaseChatModel):
        return spec
    if getattr(spec, "backend", None) == "api":
        from worldgen.blocks.api import LlmApi

        if isinstance(spec, LlmApi):
            return spec.chat_model
    if isinstance(spec, str):
        name = spec.strip()
        if name == "local":
            from worldgen.local_models.chat_model import load_local_chat_model

            return load_local_chat_model()
        provider, _, model = name.partition(":")
        model, _, url = model.partition("@")
        if provider == "openai" and model.strip():
            return _openai(model.strip(), endpoint_url or url.strip() or None, api_key_env, max_retries)
    raise ValueError(f"unknown chat model spec {spec!r}; accepted: {', '.join(ACCEPTED_SPECS)}")


def model_accepts_images(model: Any) -> bool:
    """Whether the model's profile says it takes image inputs (False when unknown).

    Looks through ``.bind(...)`` / ``with_config`` wrappers to the chat model.
    """
    while not isinstance(model, BaseChatModel) and hasattr(model, "bound"):
        model = model.bound
    profile = getattr(model, "profile", None)
    return bool(isinstance(profile, dict) and profile.get("image_inputs", False))


def supports_prefill(model: Any) -> bool:
    """Whether a trailing AIMessage is continued as the start of the reply (local models)."""
    while not isinstance(model, BaseChatModel) and hasattr(model, "bound"):
        model = model.bound
    return bool(getattr(model, "supports_prefill", False))


def _openai(model: str, endpoint_url: str | None, api_key_env: str | None, max_retries: int | None) -> BaseChatModel:
    from worldgen.blocks.api_clients import ApiConfigError, ClientOptions, get_client

    options: ClientOptions = {"endpoint_url": endpoint_url, "api_key_env": api_key_env}
    if max_retries is not None:  # else the client's default, kept in one place
        options["max_retries"] = max_retries
    try:
        client = get_client("openai", model, **options)
    except ApiConfigError as exc:
        if endpoint_url or os.environ.get("OPENAI_BASE_URL") or api_key_env:
            raise
        raise ValueError(
            f"'openai:{model}' needs OPENAI_API_KEY, or OPENAI_BASE_URL pointing at an "
            "OpenAI-compatible server (then no key is needed)"
        ) from exc
    return client.chat_model()
