"""Prompt adapters for API chat models: instructions + few-shot demonstrations (levels.md §7).

An API model has no weights to adapt and no gradient to follow: its adapter is text put in
front of every call — an instruction (system message) and demonstrations (user/assistant
turns) — and it is trained by *search* against a metric on a small training set, not by an
optimizer. `optimize_prompt` runs a named, deterministic search:

``greedy_demos+instruction``
    1. pick the best instruction among the candidates (the current one included);
    2. add demonstrations greedily: each round tries every remaining training example as
       the next demo and keeps the one that raises the mean score most; stop at
       ``max_demos`` or when nothing improves (the candidate order is a seeded shuffle, which
       also breaks ties);
    3. re-pick the instruction with the chosen demos.
    An example is never scored while it is one of the demos (it would just be copied).

The adapter is plain data (`config` / `state_dict`: name, instruction, demos): it is saved
with the world's config, holds no secrets and no torch tensors — `trainable_parameters()` is
empty, so gradients stop at the API boundary. `PromptAdaptedChatModel` wraps any LangChain
chat model (or `Runnable` taking messages) and is itself a chat model, so it drops in where
the model was (an agent's ``llm``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable, RunnableLambda
from pydantic import ConfigDict

from worldgen.adapters.base import Adapter, AdapterError

__all__ = ["Demo", "PromptAdaptedChatModel", "PromptAdapter", "PromptSearchResult", "SEARCH_METHOD", "optimize_prompt"]

SEARCH_METHOD = "greedy_demos+instruction"
Metric = Callable[[str, str], float]


@dataclass(frozen=True)
class Demo:
    """One demonstration: what the user said and what the model should answer."""

    input: str
    output: str

    @classmethod
    def coerce(cls, value: Any) -> Demo:
        if isinstance(value, Demo):
            return value
        if isinstance(value, Mapping):
            try:
                return cls(str(value["input"]), str(value["output"]))
            except KeyError as exc:
                raise AdapterError(f"a demonstration needs keys 'input' and 'output', got {sorted(value)}") from exc
        if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
            return cls(str(value[0]), str(value[1]))
        raise AdapterError(f"a demonstration is {{'input', 'output'}} or an (input, output) pair, got {value!r}")


class PromptAdapter(Adapter):
    """Instruction + demonstrations placed before the messages of each call."""

    kind = "prompt"

    def __init__(self, name: str, instruction: str | None = None, demos: Sequence[Any] = ()) -> None:
        super().__init__(name)
        self.instruction = instruction or None
        self.demos: list[Demo] = [Demo.coerce(d) for d in demos]
        self.search: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"PromptAdapter({self.name!r}, instruction={self.instruction!r}, demos={len(self.demos)})"

    # ------------------------------------------------------------ applying
    def apply(self, messages: Sequence[BaseMessage] | str) -> list[BaseMessage]:
        """The messages to send: one system message (the instruction, then the caller's own
        system text), the demos as user/assistant turns, then the rest of the caller's."""
        msgs: list[BaseMessage] = [HumanMessage(messages)] if isinstance(messages, str) else list(messages)
        system: list[str] = [self.instruction] if self.instruction else []
        if msgs and isinstance(msgs[0], SystemMessage):
            system.append(str(msgs[0].content))
            msgs = msgs[1:]
        head: list[BaseMessage] = [SystemMessage("\n\n".join(system))] if system else []
        for demo in self.demos:
            head += [HumanMessage(demo.input), AIMessage(demo.output)]
        return head + msgs

    def wrap(self, model: Any) -> Any:
        """`model` with this adapter in front: a chat model stays a chat model
        (`PromptAdaptedChatModel`); another Runnable gets the adapted messages."""
        if isinstance(model, BaseChatModel):
            return PromptAdaptedChatModel(inner=model, adapter=self)
        if isinstance(model, Runnable) or callable(model):
            call = model.invoke if isinstance(model, Runnable) else model
            return RunnableLambda(lambda messages: call(self.apply(messages)), name=f"prompt_adapter:{self.name}")
        raise AdapterError(f"prompt adapter {self.name!r}: cannot wrap {type(model).__name__} (not a Runnable)")

    # --------------------------------------------------------- adapter slot
    def trainable_parameters(self) -> Iterator[Any]:
        """None: nothing differentiable crosses an API call (it is trained by search)."""
        return iter(())

    def state_dict(self) -> dict[str, Any]:
        return {"instruction": self.instruction, "demos": [{"input": d.input, "output": d.output} for d in self.demos]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        unknown = sorted(set(state) - {"instruction", "demos"})
        if unknown:
            raise AdapterError(f"prompt adapter {self.name!r}: unknown keys {unknown} (expected instruction, demos)")
        self.instruction = state.get("instruction") or None
        self.demos = [Demo.coerce(d) for d in state.get("demos", [])]

    def config(self) -> dict[str, Any]:
        """Plain data for the world's config: kind, name, what was learned and how."""
        return {"kind": self.kind, "name": self.name, **self.state_dict(), "search": dict(self.search)}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> PromptAdapter:
        if config.get("kind", "prompt") != "prompt":
            raise AdapterError(f"config kind {config.get('kind')!r} is not 'prompt' (LoRA configs load with load_lora)")
        if "name" not in config:
            raise AdapterError("a prompt adapter config needs a 'name'")
        adapter = cls(config["name"], config.get("instruction"), config.get("demos", ()))
        adapter.search = dict(config.get("search") or {})
        return adapter


class PromptAdaptedChatModel(BaseChatModel):
    """A chat model that sends `adapter.apply(messages)` to `inner` (any chat model or Runnable
    taking messages). Tool binding passes through; the adapter is shared, so training it
    changes every wrapper that holds it."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    inner: Any
    adapter: Any

    @property
    def _llm_type(self) -> str:
        return "prompt-adapted"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"adapter": self.adapter.name, "inner": type(self.inner).__name__}

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        kw = dict(kwargs)
        if stop is not None:
            kw["stop"] = stop
        reply = self.inner.invoke(self.adapter.apply(messages), **kw)
        message = reply if isinstance(reply, BaseMessage) else AIMessage(str(reply))
        return ChatResult(generations=[ChatGeneration(message=message)])

    def bind_tools(self, tools: Any, **kwargs: Any) -> PromptAdaptedChatModel:  # type: ignore[override]
        return PromptAdaptedChatModel(inner=self.inner.bind_tools(tools, **kwargs), adapter=self.adapter)

    def trainable_parameters(self) -> Iterator[Any]:
        """The adapter's (none): gradients stop at the API call."""
        return self.adapter.trainable_parameters()


# ------------------------------------------------------------------ search
@dataclass
class PromptSearchResult:
    """Scores before and after, each step taken, and how many model calls it cost."""

    method: str
    baseline: float
    score: float
    history: list[dict[str, Any]] = field(default_factory=list)
    calls: int = 0

    @property
    def improved(self) -> bool:
        return self.score > self.baseline


def optimize_prompt(
    adapter: PromptAdapter,
    model: Any,
    trainset: Sequence[Any],
    metric: Metric,
    *,
    instructions: Sequence[str | None] = (),
    max_demos: int = 3,
    seed: int = 0,
    valset: Sequence[Any] | None = None,
) -> PromptSearchResult:
    """Search `adapter`'s instruction and demos (see the module doc) to maximise the mean of
    ``metric(prediction, target)`` over `valset` (default: the training set, leaving out
    the examples in use as demos). `model` is the bare chat model (not wrapped). Sets the
    adapter's instruction, demos and ``search`` summary; returns the report."""
    train = [Demo.coerce(e) for e in trainset]
    if not train:
        raise AdapterError(f"prompt adapter {adapter.name!r}: the training set is empty")
    scored = [Demo.coerce(e) for e in valset] if valset is not None else train
    call = model.invoke if isinstance(model, Runnable) else model
    cache: dict[tuple[str | None, tuple[Demo, ...], Demo], float] = {}
    calls = 0

    def evaluate(instruction: str | None, demos: tuple[Demo, ...]) -> float:
        nonlocal calls
        probe = PromptAdapter(adapter.name, instruction, demos)
        values = []
        for example in scored:
            if valset is None and example in demos:
                continue
            key = (instruction, demos, example)
            if key not in cache:
                reply = call(probe.apply([HumanMessage(example.input)]))
                text = reply.content if isinstance(reply, BaseMessage) else reply
                cache[key] = float(metric(str(text), example.output))
                calls += 1
            values.append(cache[key])
        return sum(values) / len(values) if values else float("-inf")

    candidates: list[str | None] = []
    for c in (adapter.instruction or None, *(i or None for i in instructions)):  # "" is no instruction
        if c not in candidates:
            candidates.append(c)
    history: list[dict[str, Any]] = []
    demos: tuple[Demo, ...] = tuple(adapter.demos)
    baseline = evaluate(adapter.instruction, demos)

    def pick_instruction(step: str) -> tuple[str | None, float]:
        scores = [(evaluate(c, demos), -i, c) for i, c in enumerate(candidates)]
        best_score, _, best = max(scores, key=lambda t: (t[0], t[1]))
        history.append({"step": step, "choice": best, "score": best_score})
        return best, best_score

    instruction, current = pick_instruction("instruction")
    pool = [e for e in train if e not in demos]
    random.Random(seed).shuffle(pool)
    while len(demos) < max_demos and pool:
        trials = [(evaluate(instruction, (*demos, d)), -i, d) for i, d in enumerate(pool)]
        best_score, _, best = max(trials, key=lambda t: (t[0], t[1]))
        if best_score <= current:
            break
        demos, current = (*demos, best), best_score
        pool.remove(best)
        history.append({"step": "demo", "choice": {"input": best.input, "output": best.output}, "score": best_score})
    if len(candidates) > 1:
        instruction, current = pick_instruction("instruction (with demos)")
    if current < baseline:  # never hand back something worse than what we started from
        instruction, demos, current = adapter.instruction, tuple(adapter.demos), baseline
    adapter.instruction, adapter.demos = instruction, list(demos)
    adapter.search = {"method": SEARCH_METHOD, "seed": seed, "baseline": baseline, "score": current,
                      "train_size": len(train), "max_demos": max_demos}
    return PromptSearchResult(SEARCH_METHOD, baseline, current, history, calls)
