"""The call context: who is running right now (graph, node, pipeline, stage, role).

A block cannot see which node it sits in — one block may sit in many. Whoever runs a block
records that here (`Graph.run` sets ``graph_id``, the executor ``node_id``; a stage or a
training loop may add ``stage_id`` / ``role`` with `call_context`), so that a shared block
can behave per use site, e.g. pick the LoRA adapter of its caller (`worldgen.adapters`).
Inner runs override the keys of outer ones; leaving a scope restores them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

__all__ = [
    "CONTEXT_KEYS", "call_context", "current_call_context", "enter_call_context", "enter_node", "exit_call_context",
    "exit_node", "set_node",
]

#: The keys that routing rules may use; others are allowed but nothing reads them.
CONTEXT_KEYS: tuple[str, ...] = ("graph_id", "node_id", "pipeline_id", "stage_id", "role")

_EMPTY: Mapping[str, str] = MappingProxyType({})
_CONTEXT: ContextVar[Mapping[str, str]] = ContextVar("worldgen_call_context", default=_EMPTY)
# node_id changes on every node call: it gets a variable of its own, so the executor's
# per-node cost is one `set_node` (no merged mapping, no reset: `enter_node` scopes the run)
_NODE: ContextVar[str | None] = ContextVar("worldgen_call_node", default=None)
#: Set ``node_id`` inside a scope opened by `enter_node` (the executor, once per node call).
set_node = _NODE.set


def current_call_context() -> Mapping[str, str]:
    """The keys in force for the code running now (read-only)."""
    node = _NODE.get()
    ctx = _CONTEXT.get()
    return ctx if node is None else MappingProxyType({**ctx, "node_id": node})


def enter_node(node_id: str | None = None) -> Any:
    """Open a node scope (the executor, once per graph run): `set_node` may change
    ``node_id`` inside it, `exit_node` restores the caller's (an outer graph's node)."""
    return _NODE.set(node_id)


def exit_node(token: Any) -> None:
    _NODE.reset(token)


def enter_call_context(**keys: str) -> Any:
    """Add `keys` to the context; returns a token for `exit_call_context`."""
    node = keys.pop("node_id", None)
    tokens = (_CONTEXT.set(MappingProxyType({**_CONTEXT.get(), **keys})) if keys else None,
              _NODE.set(node) if node is not None else None)
    return tokens


def exit_call_context(token: Any) -> None:
    ctx_token, node_token = token
    if node_token is not None:
        _NODE.reset(node_token)
    if ctx_token is not None:
        _CONTEXT.reset(ctx_token)


@contextmanager
def call_context(**keys: str) -> Iterator[Mapping[str, str]]:
    """``with call_context(stage_id="creator", role="creator"): ...`` — the keys hold for
    everything run inside, threads and tasks started inside included (contextvars)."""
    token = enter_call_context(**keys)
    try:
        yield current_call_context()
    finally:
        exit_call_context(token)
