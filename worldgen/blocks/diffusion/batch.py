"""Batch plumbing for graphs that run several branches in one model call (e.g. CFG).

Classifier-free guidance runs the unconditional and the conditional branch as one batch:
`batch/concat` joins the two conditions, `batch/repeat` repeats the latent to match, and
`batch/split` cuts the prediction back into named halves for the guidance block.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import torch
from pydantic import BaseModel, ConfigDict, Field

from worldgen.blocks.base import Block
from worldgen.blocks.ports import Port, PortAggregation, PortType, input_port, output_port
from worldgen.blocks.registry import register_block

__all__ = ["BatchConcat", "BatchRepeat", "BatchSplit"]

T = PortType.TENSOR


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")
    defaults: dict[str, Any] = {}


@register_block("batch/concat")
class BatchConcat(Block):
    """`items` (several edges, joined on dim 0 in edge order) → `batch`."""

    config_schema = _Strict

    def declare_ports(self) -> list[Port]:
        return [input_port("items", T, aggregation=PortAggregation.CONCAT), output_port("batch", T)]

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        items = inputs["items"]  # the executor already concatenated several edges
        return {"batch": torch.cat(list(items)) if isinstance(items, (list, tuple)) else items}


class _RepeatSettings(_Strict):
    times: int = Field(2, ge=1)


@register_block("batch/repeat")
class BatchRepeat(Block):
    """`x` → `batch`: `x` stacked `times` times on dim 0 (``torch.cat([x] * times)``)."""

    config_schema = _RepeatSettings

    def declare_ports(self) -> list[Port]:
        return [input_port("x", T), output_port("batch", T)]

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        times = cast(_RepeatSettings, self.settings).times
        x = inputs["x"]
        return {"batch": x if times == 1 else torch.cat([x] * times)}


class _SplitSettings(_Strict):
    names: list[str] = Field(min_length=1)


@register_block("batch/split")
class BatchSplit(Block):
    """`batch` → one output per name in `names`: equal chunks on dim 0, in order."""

    config_schema = _SplitSettings

    @property
    def names(self) -> list[str]:
        return cast(_SplitSettings, self.settings).names

    def declare_ports(self) -> list[Port]:
        return [input_port("batch", T), *(output_port(name, T) for name in self.names)]

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        batch = inputs["batch"]
        if batch.shape[0] % len(self.names):
            raise ValueError(f"{self!r}: batch of {batch.shape[0]} does not split into {len(self.names)} equal parts")
        return dict(zip(self.names, batch.chunk(len(self.names)), strict=True))
