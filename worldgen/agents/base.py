"""Asking a chat model for text or JSON, with bounded retries.

A small or misbehaving model may return nothing, or prose where JSON was asked. The canon's
transitions must not crash a pass on that: they re-ask with the problem spelled out, a
bounded number of times, then raise ModelOutputError naming the transition (the world turns
it into a TransitionError and keeps its state at the last checkpoint).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

__all__ = ["ModelOutputError", "ask_json", "ask_text", "extract_json", "message_text"]

T = TypeVar("T")
DEFAULT_ATTEMPTS = 3


class ModelOutputError(ValueError):
    """The chat model kept returning unusable output."""


def message_text(message: BaseMessage | str) -> str:
    """The text of a reply, whatever content-block shape the provider used."""
    return message if isinstance(message, str) else message.text


_THINK = re.compile(r"<think>.*?</think>", re.S)
_PREAMBLE = re.compile(r"^(sure|certainly|of course|okay|ok)[,!.:]?\s+(here( is|'s)[^:\n]*:\s*)?", re.I)


_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")


def _sentence_key(sentence: str) -> str:
    return re.sub(r"\W+", " ", sentence).strip().casefold()


def _sentences(text: str) -> list[str]:
    # a "Heading:" line is a label, not a sentence: split it off so it can be dropped
    text = re.sub(r"^([A-Z][\w ]{0,40}):\s*$", r"\1:.", text, flags=re.M)
    return _SENTENCE_END.split(" ".join(text.split()))


def clean_text(text: str, max_sentences: int | None = None, echo: str = "") -> str:
    """Strip reasoning tags and chat preambles; drop repeated sentences, sentences copied
    from the prompt (``echo``), and keep at most ``max_sentences``: small models loop and
    parrot, and a world's blocks should stay short."""
    text = _THINK.sub("", text).strip()
    text = _PREAMBLE.sub("", text).strip()
    text = text.strip().strip('"').strip()
    if max_sentences is None and not echo:
        return text
    seen: set[str] = {_sentence_key(x) for x in _sentences(echo)} if echo else set()
    seen |= {_sentence_key(x.split(":", 1)[1]) for x in _sentences(echo) if ":" in x} if echo else set()
    kept: list[str] = []
    for sentence in _sentences(text):
        key = _sentence_key(sentence)
        if sentence.endswith(":.") or sentence.endswith(":"):
            continue
        if ":" in sentence and _sentence_key(sentence.split(":", 1)[1]) in seen:
            continue
        if key and key not in seen:
            seen.add(key)
            kept.append(sentence)
        if len(kept) == max_sentences:
            break
    if len(kept) > 1 and not kept[-1].rstrip('"\')”').endswith((".", "!", "?", "…")):
        kept.pop()  # cut off by the token budget mid-sentence
    return " ".join(kept)


def ask_text(
    llm: BaseChatModel,
    transition: str,
    system: str,
    user: str | list[Any],
    *,
    attempts: int = DEFAULT_ATTEMPTS,
    min_chars: int = 2,
    max_sentences: int | None = None,
    echo: str = "",
) -> str:
    """Ask for prose; re-ask when the reply is empty. Sentences copied from ``echo`` (the
    context the model was shown) do not count as an answer."""
    messages: list[BaseMessage] = [SystemMessage(system), HumanMessage(user)]
    for _ in range(attempts):
        reply = llm.invoke(messages)
        text = clean_text(message_text(reply), max_sentences, echo=echo)
        if len(text) >= min_chars:
            return text
        messages += [AIMessage(message_text(reply) or "(empty)"),
                     HumanMessage("Your reply was empty. Answer in one to three sentences.")]
    raise ModelOutputError(f"{transition}: the chat model returned an empty reply {attempts} times")


def ask_json(
    llm: BaseChatModel,
    transition: str,
    system: str,
    user: str,
    validate: Callable[[Any], T],
    *,
    attempts: int = DEFAULT_ATTEMPTS,
    prefill: str | None = None,
) -> T:
    """Ask for JSON; repair what can be repaired, re-ask with the error otherwise.

    ``validate`` turns parsed JSON into the result or raises ValueError saying what is wrong.
    ``prefill`` starts the reply for models that continue a trailing assistant message
    (small local models need it to keep the shape); other models ignore it.
    """
    from worldgen.chat_models import supports_prefill

    model = llm.bind(response_format={"type": "json_object"})
    start = [AIMessage(prefill)] if prefill and supports_prefill(llm) else []
    messages: list[BaseMessage] = [SystemMessage(system), HumanMessage(user)]
    problem = ""
    for _ in range(attempts):
        raw = message_text(model.invoke(messages + start))
        if start and not raw.lstrip().startswith(prefill[:1]):
            raw = prefill + raw
        try:
            return validate(extract_json(raw))
        except ValueError as exc:
            problem = str(exc)
        messages += [
            AIMessage(raw or "(empty)"),
            HumanMessage(f"That was not usable: {problem}. Reply again with the JSON object only."),
        ]
    raise ModelOutputError(
        f"{transition}: the chat model did not return valid JSON after {attempts} attempts (last problem: {problem})"
    )


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def extract_json(text: str) -> Any:
    """Parse JSON from a model's reply: strip fences and prose, fix common slips."""
    if not text or not text.strip():
        raise ValueError("the reply is empty")
    fenced = _FENCE.search(text)
    if fenced:
        text = fenced.group(1)
    start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
    if start < 0:
        raise ValueError("the reply contains no JSON object")
    candidate = text[start:]
    decoder = json.JSONDecoder(object_pairs_hook=_first_wins)
    for attempt in (candidate, _repair(candidate)):
        try:
            value, _ = decoder.raw_decode(attempt)
            return value
        except ValueError:
            continue
    raise ValueError("the reply is not valid JSON")


def _first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """On a duplicated key keep the first value: small models repeat a key with a worse one."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        out.setdefault(key, value)
    return out


def _repair(text: str) -> str:
    """Fix trailing commas, smart quotes and unclosed brackets: the usual small-model slips."""
    text = text.replace("\u201c", '"').replace("\u201d", '"').replace("\u2019", "'")
    if '"' not in text:
        text = text.replace("'", '"')
    text = re.sub(r",\s*([}\]])", r"\1", text)
    stack: list[str] = []
    in_string = escaped = False
    end = len(text)
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]":
            if not stack:
                end = i
                break
            stack.pop()
            if not stack:
                end = i + 1
                break
    text = text[:end]
    if in_string:
        text += '"'
    text = re.sub(r",\s*$", "", text)
    return text + "".join(reversed(stack))
