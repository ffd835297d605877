"""Turn a chat-model spec from config ("local", "openai:<model>") into a LangChain chat model."""

from __future__ import annotations

import os
from typing import Any

from langchain_core.language_models import BaseChatModel

ACCEPTED_SPECS = ("a BaseChatModel instance", '"local"', '"openai:<model>"')

_PLACEHOLDER_API_KEY = "not-needed"
"""Local OpenAI-compatible servers ignore the key, but the client insists on one."""


def resolve_chat_model(spec: BaseChatModel | str) -> BaseChatModel:
    """Build the chat model a spec names; an already-built model passes through.

    ``"local"`` is the embedded SmolLM2 (loaded on first use); ``"openai:<model>"``
    is ``ChatOpenAI``, which reads ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY`` itself.
    """
    if isinstance(spec, BaseChatModel):
        return spec
    if isinstance(spec, str):
        name = spec.strip()
        if name == "local":
            from worldgen.local_models.chat_model import load_local_chat_model

            return load_local_chat_model()
        provider, _, model = name.partition(":")
        if provider == "openai" and model:
            return _openai(model)
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


def _openai(model: str) -> BaseChatModel:
    from langchain_openai import ChatOpenAI

    kwargs: dict[str, Any] = {"model": model}
    if not os.environ.get("OPENAI_API_KEY") and os.environ.get("OPENAI_BASE_URL"):
        kwargs["api_key"] = _PLACEHOLDER_API_KEY
    try:
        return ChatOpenAI(**kwargs)
    except Exception as exc:  # openai.OpenAIError: no credentials at all
        if os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL"):
            raise
        raise ValueError(
            f"'openai:{model}' needs OPENAI_API_KEY, or OPENAI_BASE_URL pointing at an "
            "OpenAI-compatible server (then no key is needed)"
        ) from exc
