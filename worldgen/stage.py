"""One transition of the world: what it reads, what it writes, when it runs, and how.

A Stage wraps any implementation — a plain function ``(state: dict) -> dict``, a LangChain
Runnable, or a LangGraph ``StateGraph`` with inner structure — behind one contract. The
world compiles a function or Runnable into a plain node (cheap: one superstep) and a graph
into a subgraph invoked from that node (4–6× a plain node per step in LangGraph 1.2, so it
is only used when the stage really has structure).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from typing_extensions import TypedDict  # pydantic needs it before Python 3.12

from langchain_core.runnables import Runnable, RunnableConfig
from langgraph.graph.state import CompiledStateGraph, StateGraph
from pydantic import BaseModel, ConfigDict, field_validator

from worldgen.state import BLOCK_NUMBERS, block_key

__all__ = [
    "CANON",
    "CYCLE",
    "Condition",
    "Stage",
    "StageInput",
    "StageImpl",
    "TRANSITIONS",
    "TransitionError",
]

#: the canonical order of one pass (world.md §2)
CYCLE: tuple[str, ...] = (
    "philosopher",
    "author",
    "world_update",
    "development",
    "architect",
    "creator",
)
TRANSITIONS = frozenset(CYCLE)


class StageBlocks(TypedDict, total=False):
    """The five blocks (block documents, or None) and the user's action: what a stage reads,
    locally (`StageInput`) or over the wire (``worldgen.remote.serve_stage``)."""

    block1: dict[str, Any] | None
    block2: dict[str, Any] | None
    block3: dict[str, Any] | None
    block4: dict[str, Any] | None
    block5: dict[str, Any] | None
    action: str | None


class StageInput(StageBlocks, total=False):
    """What a stage implementation receives. ``world`` is a ``WorldContent`` (not in graphs)."""

    world: Any


StageImpl = Callable[[dict[str, Any]], Mapping[str, Any]] | Runnable | StateGraph


class TransitionError(RuntimeError):
    """A transition failed; names it. The world's state stays at its last checkpoint."""

    def __init__(self, transition: str, message: str):
        super().__init__(f"{transition}: {message}")
        self.transition = transition


class Condition(BaseModel):
    """When a transition runs, as data: required blocks filled and its own output empty."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    requires: tuple[int, ...] = ()
    produces: int | None = None
    always: bool = False

    @field_validator("requires")
    @classmethod
    def _known_blocks(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        for n in value:
            if n not in BLOCK_NUMBERS:
                raise ValueError(f"condition requires block{n}, but the state has block1 … block5")
        return value

    @field_validator("produces")
    @classmethod
    def _known_output(cls, value: int | None) -> int | None:
        if value is not None and value not in BLOCK_NUMBERS:
            raise ValueError(f"condition produces block{value}, but the state has block1 … block5")
        return value

    def check(self, filled: set[int] | frozenset[int]) -> tuple[bool, str]:
        """Whether to run on a state with these blocks filled, and why not."""
        if self.always:
            return True, "always runs"
        missing = [n for n in self.requires if n not in filled]
        if missing:
            what = ", ".join(map(str, missing))
            return False, f"needs block{'s' if len(missing) > 1 else ''} {what}, which {'are' if len(missing) > 1 else 'is'} empty"
        if self.produces is not None and self.produces in filled:
            return False, f"block {self.produces} is already filled"
        return True, "inputs filled"


@dataclass(frozen=True)
class _Contract:
    reads: tuple[int, ...]
    writes: tuple[int, ...]
    condition: Condition


#: the canon's contracts (world.md §2): reads, writes, execution condition
CANON: dict[str, _Contract] = {
    "philosopher": _Contract((1, 2, 3), (4,), Condition(requires=(1, 2, 3), produces=4)),
    "author": _Contract((1, 2, 3, 4), (5,), Condition(requires=(1, 2, 3, 4), produces=5)),
    "world_update": _Contract((1, 2, 3, 4, 5), (), Condition(requires=(1, 2, 3, 4, 5))),
    "development": _Contract((), (1,), Condition(always=True)),
    "architect": _Contract((1,), (2,), Condition(requires=(1,), produces=2)),
    "creator": _Contract((2,), (3,), Condition(requires=(2,), produces=3)),
}


class Stage:
    """One transition: a role, its state contract, its condition and an implementation.

    >>> Stage("philosopher", lambda s: {"block4": "a red sky"})
    """

    def __init__(
        self,
        role: str,
        impl: StageImpl,
        *,
        reads: tuple[int, ...] | None = None,
        writes: tuple[int, ...] | None = None,
        condition: Condition | None = None,
        name: str | None = None,
    ):
        if role not in TRANSITIONS:
            raise ValueError(f"unknown stage role {role!r}: expected one of {', '.join(CYCLE)}")
        canon = CANON[role]
        self.role = role
        self.name = name or role
        self.reads = tuple(canon.reads if reads is None else reads)
        self.writes = tuple(canon.writes if writes is None else writes)
        self.condition = condition or canon.condition
        for n in (*self.reads, *self.writes):
            if n not in BLOCK_NUMBERS:
                raise ValueError(f"stage {self.name!r} uses block{n}, but the state has block1 … block5")
        if isinstance(impl, StateGraph):
            impl = impl.compile()
        if not (isinstance(impl, Runnable) or callable(impl)):
            raise TypeError(
                f"stage {self.name!r}: implementation must be a function, a Runnable or a "
                f"StateGraph, got {type(impl).__name__}"
            )
        self.impl = impl
        self._takes_config = _accepts_config(impl)
        #: the config entry the stage was built from (a template and its params), for saving
        self.source: dict[str, Any] | None = None
        #: the canon's own transition, rebuilt from the world's ``llm`` rather than saved
        self.canon = False

    @classmethod
    def coerce(cls, role: str, value: Stage | StageImpl) -> Stage:
        """Accept a Stage, a Runnable or a function for the transition ``role``."""
        if isinstance(value, Stage):
            if value.role != role:
                raise ValueError(f"stage for {role!r} has role {value.role!r}")
            return value
        return cls(role, value)

    @classmethod
    def from_template(cls, name: str, **params: Any) -> Stage:
        """A registered stage template (``"creator_stage"``: the canon Creator as a graph)."""
        from worldgen.stage_graph import stage_from_template

        stage = stage_from_template(name, **params)
        stage.source = {"template": name, "params": dict(params)}
        return stage

    def validate(self, strict: bool = True) -> Any:
        """Validate the stage's inner graph of pipelines, when it is built from one.

        Contract and condition blocks are checked when the stage is made; a function or
        Runnable has no inner structure to check, so its result is empty.
        """
        from worldgen.engine.validation import ValidationResult

        inner = getattr(self, "stage_graph", None)
        if inner is None and not isinstance(self.impl, Runnable) and callable(getattr(self.impl, "validate", None)):
            inner = self.impl  # a graph of pipelines (StageGraph) or anything with the same contract
        return inner.validate(strict=strict) if inner is not None else ValidationResult([], [])

    @property
    def is_subgraph(self) -> bool:
        """True when the stage has inner structure (a compiled LangGraph graph)."""
        return isinstance(self.impl, CompiledStateGraph)

    def invoke(self, inputs: dict[str, Any], config: RunnableConfig | None = None) -> Mapping[str, Any]:
        """Run the implementation on the stage's inputs and return its partial update."""
        if self.is_subgraph:
            inputs = {k: v for k, v in inputs.items() if k != "world"}
            return self.impl.invoke(inputs, config)  # type: ignore[union-attr]
        if isinstance(self.impl, Runnable):
            return self.impl.invoke(inputs, config)
        if self._takes_config:
            return self.impl(inputs, config)  # type: ignore[call-arg]
        return self.impl(inputs)  # type: ignore[call-arg]

    def input_keys(self) -> tuple[str, ...]:
        return tuple(block_key(n) for n in self.reads)

    def __repr__(self) -> str:
        kind = "subgraph" if self.is_subgraph else type(self.impl).__name__
        return f"Stage({self.role!r}, reads={self.reads}, writes={self.writes}, impl={kind})"


def _accepts_config(impl: Any) -> bool:
    if isinstance(impl, Runnable) or not callable(impl):
        return False
    try:
        params = list(inspect.signature(impl).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2
