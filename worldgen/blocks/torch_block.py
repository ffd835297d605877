"""`TorchBlock`: a block whose state and parameters live in a `torch.nn.Module`.

Kept apart from `base.py` so that importing the block contract does not import torch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from pydantic import BaseModel

from worldgen.blocks.base import Block

__all__ = ["TorchBlock"]


class TorchBlock(Block):
    """A block wrapping `self.module`: state, parameters, train/eval, freeze and `to()`
    delegate to it.

    Pass `module=` or override `build_module()` (called when no module is given). A frozen
    block's parameters get `requires_grad=False`; unfreezing sets it back to True on all of
    them. Sub-blocks must not also be submodules of `self.module` (their state would be
    saved twice).
    """

    def __init__(
        self,
        block_id: str | None = None,
        *,
        config: Mapping[str, Any] | BaseModel | None = None,
        module: torch.nn.Module | None = None,
    ) -> None:
        super().__init__(block_id, config=config)
        self.module: torch.nn.Module = module if module is not None else self.build_module()
        self.module.train(self._training)

    def build_module(self) -> torch.nn.Module:
        """Create the wrapped module from `self.config`; override when not passing `module=`."""
        raise TypeError(f"{type(self).__name__} needs module= or a build_module() override")

    def local_state_dict(self) -> dict[str, Any]:
        return dict(self.module.state_dict())

    def load_local_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state, strict=False)

    def local_parameters(self) -> Iterator[torch.nn.Parameter]:
        return (p for p in self.module.parameters() if p.requires_grad)

    def to(self, device: Any) -> TorchBlock:
        self.module.to(device)
        super().to(device)
        return self

    def _on_train(self, mode: bool) -> None:
        self.module.train(mode)

    def _on_freeze(self, frozen: bool) -> None:
        self.module.requires_grad_(not frozen)
