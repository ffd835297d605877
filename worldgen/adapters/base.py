"""One adapter slot, many kinds (levels.md §7; modelled on peft's tuners).

An *adapter* is a small trainable thing attached to a frozen base: LoRA weights on a local
torch block, or an instruction plus few-shot demonstrations in front of an API chat model.
Both answer the same questions — what kind and name, what it trains, what it saves, what
config rebuilds it — so a world can list, save and load its adapters without knowing which
kinds it holds. The kinds stay separate in every config (``kind: "lora"`` / ``"prompt"``):
weight adapters and prompt adapters are trained and reloaded by different means.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar

__all__ = ["Adapter", "AdapterError", "ADAPTER_KINDS", "unique_parameters"]

#: Every kind this package knows; a config with another kind is an error, not a guess.
ADAPTER_KINDS: tuple[str, ...] = ("lora", "prompt")


class AdapterError(ValueError):
    """An adapter cannot be attached, saved or loaded; the message names the block/node/key."""


class Adapter(ABC):
    """The common adapter slot.

    `trainable_parameters` lists torch parameters an optimizer may step (empty for kinds
    that are not differentiable, such as prompt adapters behind an API: gradients stop at
    the API call). `state_dict` is what is learned (tensors for LoRA, plain data for
    prompts); `config` is plain JSON-able data that rebuilds the empty slot, never secrets.
    """

    kind: ClassVar[str]

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
            raise AdapterError(f"adapter name must be a non-empty [A-Za-z0-9_-] string, got {name!r}")
        self.name = name

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, name={self.name!r})"

    @abstractmethod
    def trainable_parameters(self) -> Iterator[Any]:
        """Torch parameters this adapter trains, each once (none for a prompt adapter)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """What was learned."""

    @abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned; unknown or missing keys raise `AdapterError`."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """``{"kind", "name", ...}``: plain data to rebuild the slot (not the learned state)."""

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())


def unique_parameters(groups: Iterable[Iterable[Any]]) -> list[Any]:
    """Concatenate parameter iterables keeping each tensor once (by identity), in order:
    a shared block or shared adapter must reach the optimizer once."""
    seen: set[int] = set()
    out: list[Any] = []
    for group in groups:
        for param in group:
            if id(param) not in seen:
                seen.add(id(param))
                out.append(param)
    return out
