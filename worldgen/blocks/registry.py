"""`BlockRegistry`: block type name → factory, so configs can name blocks as strings.

A new model is a new class plus one registry entry; nothing in the core changes.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from worldgen.blocks.base import Block

__all__ = ["BlockFactory", "BlockRegistry", "global_registry", "register_block"]

BlockFactory = Callable[..., Block]
"""Anything called as `factory(block_id, config=...)` returning a block (usually the class)."""

B = TypeVar("B", bound=type[Block])


class BlockRegistry:
    """Maps block type names (e.g. ``"backbone/unet2d"``) to factories."""

    def __init__(self) -> None:
        self._factories: dict[str, BlockFactory] = {}

    def register(self, block_type: str, factory: BlockFactory, *, replace: bool = False) -> None:
        """Add `factory` under `block_type`; re-registering a name needs `replace=True`."""
        if not block_type:
            raise ValueError("block_type must be a non-empty string")
        existing = self._factories.get(block_type)
        if existing is not None and existing is not factory and not replace:
            raise ValueError(f"block type {block_type!r} is already registered ({existing!r})")
        self._factories[block_type] = factory

    def get(self, block_type: str) -> BlockFactory:
        try:
            return self._factories[block_type]
        except KeyError:
            raise KeyError(self._unknown_message(block_type)) from None

    def __contains__(self, block_type: object) -> bool:
        return block_type in self._factories

    def list(self) -> list[str]:
        """Registered type names, sorted."""
        return sorted(self._factories)

    def build(self, config: Mapping[str, Any]) -> Block:
        """Build a block from ``{"block_type"|"type": t, "block_id"?: id, **config}``.

        Everything but the type and id becomes the block's `config`; a nested ``"config"``
        mapping is merged under the flat keys (the graph-config node form).
        """
        rest = dict(config)
        block_type = rest.pop("block_type", None) or rest.pop("type", None)
        rest.pop("type", None)
        if not block_type:
            raise KeyError(
                f"block config has no 'block_type' or 'type' key (keys: {sorted(config)}); "
                f"registered types: {self.list()}"
            )
        block_id = rest.pop("block_id", None)
        nested = rest.pop("config", None)
        if isinstance(nested, Mapping):
            rest = {**nested, **rest}
        elif nested is not None:
            rest["config"] = nested
        block = self.get(block_type)(block_id, config=rest)
        if block.block_type != block_type:  # registered under another name than the class's
            block.block_type = block_type  # type: ignore[misc]
        return block

    def _unknown_message(self, block_type: str) -> str:
        known = self.list()
        close = difflib.get_close_matches(block_type, known, n=3, cutoff=0.5)
        hint = f" (did you mean {close}?)" if close else ""
        return f"unknown block type {block_type!r}{hint}; registered types: {known}"


_GLOBAL: BlockRegistry | None = None


def global_registry() -> BlockRegistry:
    """The process-wide registry, holding the built-in role blocks and `<role>/identity` stubs."""
    global _GLOBAL
    if _GLOBAL is None:
        _GLOBAL = BlockRegistry()
        from worldgen.blocks import roles  # registers the built-ins; imported late (cycle)

        roles.register_builtin_blocks(_GLOBAL)
    return _GLOBAL


def register_block(block_type: str, *, registry: BlockRegistry | None = None) -> Callable[[B], B]:
    """Class decorator: register under `block_type` (global registry by default).

    The class's `block_type` becomes `block_type` unless the class sets its own.
    """

    def decorate(cls: B) -> B:
        if cls.block_type == cls.__name__:  # the default, i.e. the class did not choose one
            cls.block_type = block_type
        (registry or global_registry()).register(block_type, cls)
        return cls

    return decorate
