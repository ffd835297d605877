"""Tool calling by constrained decoding (``ChatTransformers.bind_tools``).

The reply is forced into ``{"tool": <a bound name>, "arguments": {...}}`` or
``{"answer": "..."}``. The model
only *chooses* where the shape branches (call or answer, which tool: the likeliest
allowed token wins), the fixed parts are fed to it, and each required argument is a
guided JSON value under a forced key (a choice when the schema gives an ``enum``). So
a 135M model always yields a parseable call naming a bound tool with the schema's
required keys; whether the call is *useful* is the agent's problem (bounded by its
step limit, with fallbacks in the transitions). Optional arguments are left out, so
the tool's defaults apply. One call per turn; in "auto" mode a call repeating an
earlier one of the conversation becomes an answer (a small model loops otherwise).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ToolMessage

from worldgen.local_models.chat_template import text_of, to_chat
from worldgen.local_models.json_guide import (
    BLANKS,
    JSON_CANDIDATES,
    NUMBER_ENDS,
    JsonState,
    number_next,
)
from worldgen.local_models.sampling import Sampling, candidates

_TOOL_ARG_TOKENS = 24
"""Token budget of one guided argument value (a tool argument is a short phrase or number)."""
_MAX_DIGITS = 12
"""Longest number a tool argument may be: a small model repeats digits until stopped."""


def normalise_tool_choice(choice: Any, names: Sequence[str]) -> str:
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


def to_tool_chat(messages: list[BaseMessage], tools: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
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
                         "content": json.dumps({"answer": text_of(message.content)}, ensure_ascii=False)})
        elif isinstance(message, ToolMessage):
            name = message.name or names.get(message.tool_call_id, "the tool")
            chat.append({"role": "user", "content": f"Result of {name}: {text_of(message.content)}"})
        else:
            chat.extend(to_chat([message]))
    instructions = _tool_instructions(tools)
    if chat and chat[0]["role"] == "system":
        chat[0] = {"role": "system", "content": f"{chat[0]['content']}\n\n{instructions}"}
    else:
        chat.insert(0, {"role": "system", "content": instructions})
    return chat


def take_tool_turn(
    sampling: dict[str, Any],
    messages: list[BaseMessage],
    tools: Sequence[dict[str, Any]],
    tool_choice: Any,
    *,
    max_new_tokens: int,
) -> ToolTurn:
    """One reply in tool mode, decoded by the model in ``sampling`` (`Sampling`'s fields).

    In "auto" mode a call repeating an earlier one of the conversation becomes an answer.
    """
    tokenizer = sampling["tokenizer"]
    tools = list(tools)
    chat = to_tool_chat(messages, tools)
    prompt = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    choice = normalise_tool_choice(tool_choice, [t["function"]["name"] for t in tools])

    decoder = Decoder(**sampling)
    decoder.start(prompt)
    first = ToolTurn(decoder, tools, choice, max_new_tokens=max_new_tokens)
    first.run(prompt)
    made = {_call_key(c["name"], c["args"]) for m in messages if isinstance(m, AIMessage) for c in m.tool_calls}
    if choice == "auto" and first.call is not None and _call_key(first.call["name"], first.call["args"]) in made:
        # A small model loops on one call; the same call would bring the same result, so
        # the turn answers instead (the repeat is kept in the metadata). The answer is
        # decoded from the prompt's KV cache: the prompt is not fed twice.
        decoder.rewind()
        again = ToolTurn(decoder, tools, "none", max_new_tokens=max_new_tokens)
        again.run(prompt)
        again.repeated = first.call
        return again
    return first


@dataclass
class Decoder(Sampling):
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
        self._prompt = (prompt, self._fed, self._logits)

    def rewind(self) -> None:
        """Back to the end of the prompt, for another reply to it: the KV cache is cut back
        to the prompt (fed again only when the cache cannot be cut)."""
        prompt, fed, logits = self._prompt
        self.text, self.output_tokens = "", 0
        try:  # a negative count removes that many tokens (transformers 4 and 5 alike)
            if self._fed > fed:
                self._cache.crop(fed - self._fed)
        except (AttributeError, RuntimeError, ValueError):  # no cache to cut (sliding window...)
            self.start(prompt)
            return
        self._fed, self._logits = fed, logits
        self._eos, self._extra, self._generator = self._begin()  # the same seed: as a fresh start

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
        state = JsonState()
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
            for token in candidates(logits, self.temperature, self.top_p, self._generator, JSON_CANDIDATES):
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
                    if _item_done(trial) or (_closable_number(trial) and number_next(trial.number, char) is None):
                        cut = i
                        break
                    if trial.mode != "string" and char in BLANKS:  # compact JSON: no blank runs
                        trial = None
                        break
                    if first is not None and not text and not i and char not in first:
                        trial = None
                        break
                    if kind == "integer" and trial.mode == "number" and char in ".eE":
                        trial = None
                        break
                    if not trial.feed(char):
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


def _item_done(state: JsonState) -> bool:
    return state.mode == "after" and len(state.stack) == 1


def _closable_number(state: JsonState) -> bool:
    return state.mode == "number" and state.number in NUMBER_ENDS and len(state.stack) == 1


@dataclass
class ToolTurn:
    """One reply in tool mode: a call of a bound tool, or an answer."""

    decoder: Decoder
    tools: list[dict[str, Any]]
    choice: str
    max_new_tokens: int
    call: dict[str, Any] | None = None
    answer: str = ""
    #: a call the model repeated, replaced by this answer (see take_tool_turn)
    repeated: dict[str, Any] | None = None
    _prompt: str = ""

    def run(self, prompt: str) -> None:
        """Decode the turn; the decoder has been started on ``prompt``."""
        self._prompt = prompt
        d = self.decoder
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
