"""Registered block types for the remote tests: a served stage is rebuilt from its saved
config in the server's process, which imports this module (``WORLDGEN_IMPORTS``)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch

from worldgen.blocks import Block, Port, PortType, input_port, output_port
from worldgen.blocks.registry import global_registry
from worldgen.blocks.torch_block import TorchBlock


class Shout(Block):
    """text → the text upper-cased, with a mark."""

    block_type = "test_remote/shout"

    def declare_ports(self) -> list[Port]:
        return [input_port("text", PortType.TEXT), output_port("text", PortType.TEXT)]

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return {"text": inputs["text"].upper() + "!"}


class Paint(TorchBlock):
    """prompt → an image tensor [1, 3, 8, 8] in [0, 1] from a random linear layer (weights
    that must travel in the checkpoint for a remote run to match a local one)."""

    block_type = "test_remote/paint"

    def build_module(self) -> torch.nn.Module:
        return torch.nn.Linear(4, 3 * 8 * 8)

    def declare_ports(self) -> list[Port]:
        return [input_port("prompt", PortType.TEXT), output_port("image", PortType.TENSOR)]

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        digest = hashlib.sha256(inputs["prompt"].encode()).digest()
        x = torch.tensor([b / 255 for b in digest[:4]], dtype=torch.float32)
        with torch.no_grad():
            image = torch.sigmoid(self.module(x)).reshape(1, 3, 8, 8)
        return {"image": image}


for _cls in (Shout, Paint):
    global_registry().register(_cls.block_type, _cls, replace=True)
