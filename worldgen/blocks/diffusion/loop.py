"""`loop/carry`: where a loop takes its first values from outside and the rest from itself."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field

from worldgen.blocks.base import Block
from worldgen.blocks.ports import Port, PortType, input_port, output_port
from worldgen.blocks.registry import register_block

__all__ = ["LoopCarry"]


class _CarrySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channels: list[str] = Field(min_length=1)
    defaults: dict[str, Any] = {}


@register_block("loop/carry")
class LoopCarry(Block):
    """For each channel ``c``: out `c` = in ``c_next`` if it has a value yet, else ``c_init``.

    Put it first in a loop, with ``c_init`` fed from outside the loop and ``c_next`` from
    the loop's last node: iteration 1 then sees the initial value and every later one the
    value of the previous iteration. (The executor leaves an optional input out while its
    source has not run yet, which is exactly "iteration 1".) This lets a loop start from
    values computed by the graph itself, not only from run inputs.
    """

    config_schema = _CarrySettings

    @property
    def channels(self) -> list[str]:
        return cast(_CarrySettings, self.settings).channels

    def declare_ports(self) -> list[Port]:
        ports: list[Port] = []
        for name in self.channels:
            ports += [
                input_port(f"{name}_init", PortType.ANY),
                input_port(f"{name}_next", PortType.ANY, optional=True),
                output_port(name, PortType.ANY),
            ]
        return ports

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return {c: inputs[f"{c}_next"] if f"{c}_next" in inputs else inputs[f"{c}_init"] for c in self.channels}
