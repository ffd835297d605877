"""Block contract: ports, identity/config, registry, state, training (levels.md §1, §10 checks 1–3)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import torch
from pydantic import BaseModel, ValidationError

from worldgen.blocks import (
    Block,
    BlockRegistry,
    Port,
    PortAggregation,
    PortDirection,
    PortType,
    StateDictError,
    global_registry,
    input_port,
    output_port,
    register_block,
)
from worldgen.blocks.torch_block import TorchBlock

IN, OUT = PortDirection.IN, PortDirection.OUT


class Offset(Block):
    """y = x + offset; holds `offset` as state."""

    def __init__(self, block_id: str | None = None, *, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(block_id, config=config)
        self.offset = self.config.get("offset", 0)

    def declare_ports(self) -> list[Port]:
        return [input_port("x"), output_port("y")]

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return {"y": inputs["x"] + self.offset}

    def local_state_dict(self) -> dict[str, Any]:
        return {"offset": self.offset}

    def load_local_state_dict(self, state: dict[str, Any]) -> None:
        self.offset = state.get("offset", self.offset)


class EncDec(Block):
    """A composite: two sub-blocks, `enc` and `dec`, plus own state `scale`."""

    def __init__(self, block_id: str | None = None, *, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(block_id, config=config)
        self.enc, self.dec, self.scale = Offset(config={"offset": 1}), Offset(config={"offset": 2}), 3

    def declare_ports(self) -> list[Port]:
        return [input_port("x"), output_port("y")]

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        hidden = self.enc.forward({"x": inputs["x"]})["y"] * self.scale
        return self.dec.forward({"x": hidden})

    def get_sub_blocks(self) -> dict[str, Block]:
        return {"enc": self.enc, "dec": self.dec}

    def local_state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale}

    def load_local_state_dict(self, state: dict[str, Any]) -> None:
        self.scale = state["scale"]


class Linear(TorchBlock):
    def build_module(self) -> torch.nn.Module:
        return torch.nn.Linear(self.config.get("dim", 2), self.config.get("dim", 2))

    def declare_ports(self) -> list[Port]:
        return [input_port("x", PortType.TENSOR), output_port("y", PortType.TENSOR)]

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return {"y": self.module(inputs["x"])}


# ------------------------------------------------------------------ ports (check 2)
def test_port_validation_and_compatibility():  # check 2
    with pytest.raises(ValueError):
        Port("", IN)
    with pytest.raises(ValueError, match="SINGLE"):
        Port("y", OUT, aggregation=PortAggregation.SUM)
    tensor_out, any_in, text_in = Port("a", OUT, PortType.TENSOR), Port("b", IN), Port("c", IN, PortType.TEXT)
    assert tensor_out.compatible_with(any_in)
    assert not tensor_out.compatible_with(text_in)
    assert not any_in.compatible_with(Port("d", IN))  # IN → IN
    assert not Port("e", OUT, PortType.IMAGE).compatible_with(Port("f", IN, PortType.TENSOR))  # no subtypes
    assert Port("g", "in", "text", aggregation="sum").aggregation is PortAggregation.SUM  # strings coerced
    with pytest.raises(AttributeError):
        tensor_out.name = "z"  # type: ignore[misc]  # frozen


def test_ports_are_declared_once_and_looked_up_by_direction():
    class Echo(Block):
        calls = 0

        def declare_ports(self) -> list[Port]:
            Echo.calls += 1
            return [input_port("value"), output_port("value"), input_port("extra", optional=True)]

        def forward(self, inputs):
            return {"value": inputs["value"]}

    block = Echo()
    assert [p.name for p in block.get_input_ports()] == ["value", "extra"]
    assert block.get_port("value", OUT).direction is OUT
    assert block.get_port("extra").optional
    with pytest.raises(KeyError, match="direction"):
        block.get_port("value")
    with pytest.raises(KeyError, match="nope"):
        block.get_port("nope")
    assert Echo.calls == 1

    class Twice(Echo):
        def declare_ports(self):
            return [input_port("x"), input_port("x")]

    with pytest.raises(ValueError, match="duplicate"):
        Twice().get_input_ports()


# ------------------------------------------------------------ identity and config
def test_block_identity_and_config_copy():
    cfg = {"offset": 1, "defaults": {"x": [1]}}
    a, b = Offset(config=cfg), Offset(config=cfg)
    assert a.block_type == "Offset" and a.block_id != b.block_id and a.block_id.startswith("Offset")
    cfg["defaults"]["x"].append(2)
    assert a.config == {"offset": 1, "defaults": {"x": [1]}}  # a deep copy
    assert a.run({"x": 1}) == a.forward({"x": 1}) == {"y": 2}


def test_config_schema_validates():
    class Settings(BaseModel):
        offset: int

    class Typed(Offset):
        config_schema = Settings

    assert Typed(config={"offset": 3}).settings == Settings(offset=3)
    with pytest.raises(ValidationError):
        Typed(config={"offset": "many"})


# ------------------------------------------------------------------ registry (check 1)
def test_registry_build():  # check 1
    reg = BlockRegistry()
    reg.register("add", Offset)
    block = reg.build({"type": "add", "block_id": "b1", "offset": 2})
    assert block.block_id == "b1" and block.config == {"offset": 2} and block.block_type == "add"
    assert reg.build({"block_type": "add", "config": {"offset": 5}}).config == {"offset": 5}
    assert "add" in reg and "mul" not in reg and reg.list() == ["add"]


def test_registry_unknown_or_missing_type_lists_types():  # check 1
    reg = BlockRegistry()
    reg.register("add", Offset)
    reg.register("encdec", EncDec)
    with pytest.raises(KeyError, match=r"'add', 'encdec'") as err:
        reg.build({"type": "ad"})
    assert "did you mean ['add']" in str(err.value)
    with pytest.raises(KeyError, match=r"registered types: \['add', 'encdec'\]"):
        reg.build({"offset": 2})
    with pytest.raises(KeyError):
        reg.get("nope")


def test_register_block_decorator_and_duplicates():
    reg = BlockRegistry()

    @register_block("backbone/tiny", registry=reg)
    class Tiny(Offset):
        pass

    assert Tiny.block_type == "backbone/tiny" and reg.get("backbone/tiny") is Tiny
    with pytest.raises(ValueError, match="already registered"):
        reg.register("backbone/tiny", Offset)
    reg.register("backbone/tiny", Offset, replace=True)
    assert reg.get("backbone/tiny") is Offset
    assert "guidance/cfg" in global_registry() and "backbone/identity" in global_registry()


# ---------------------------------------------------------------------- state (check 3)
def test_composite_state_round_trip_with_prefixes():  # check 3
    block = EncDec()
    state = block.state_dict()
    assert state == {"scale": 3, "enc.offset": 1, "dec.offset": 2}
    other = EncDec()
    other.load_state_dict({"scale": 4, "enc.offset": 10, "dec.offset": 20})
    assert (other.scale, other.enc.offset, other.dec.offset) == (4, 10, 20)
    assert other.forward({"x": 0}) == {"y": 60}


def test_strict_load_names_stray_and_missing_keys():  # check 3
    block = EncDec()
    with pytest.raises(StateDictError, match=r"unexpected keys \['enc.stray', 'other'\]"):
        block.load_state_dict({**block.state_dict(), "enc.stray": 1, "other": 2})
    with pytest.raises(StateDictError, match=r"missing keys \['dec.offset'\]"):
        block.load_state_dict({"scale": 1, "enc.offset": 1})
    result = block.load_state_dict({"scale": 9, "enc.stray": 1}, strict=False)
    assert result.unexpected_keys == ["enc.stray"] and result.missing_keys == ["dec.offset", "enc.offset"]
    assert block.scale == 9


def test_plain_block_has_no_state_or_params():
    block = Offset(config={"offset": 1})
    assert list(block.trainable_parameters()) == []
    assert not block.training and not block.frozen
    assert block.train().training and not block.eval().training


# ------------------------------------------------------------------- TorchBlock
def test_torch_block_delegates_state_and_mode():
    block = Linear(config={"dim": 3})
    assert set(block.state_dict()) == {"weight", "bias"}
    other = Linear(config={"dim": 3})
    other.load_state_dict(block.state_dict())
    assert torch.equal(other.module.weight, block.module.weight)
    with pytest.raises(StateDictError, match="stray"):
        other.load_state_dict({**block.state_dict(), "stray": torch.zeros(1)})
    assert not block.module.training  # blocks start in eval mode
    block.train()
    assert block.training and block.module.training
    block.eval()
    assert not block.module.training


def test_freeze_removes_parameters():
    block = Linear()
    assert len(list(block.trainable_parameters())) == 2
    block.freeze()
    assert block.frozen and list(block.trainable_parameters()) == []
    assert not any(p.requires_grad for p in block.module.parameters())
    block.unfreeze()
    assert len(list(block.trainable_parameters())) == 2 and block.module.weight.requires_grad


def test_sub_blocks_recurse_for_state_params_mode_and_freeze():
    shared = Linear()

    class Pair(Block):
        def declare_ports(self):
            return [input_port("x", PortType.TENSOR), output_port("y", PortType.TENSOR)]

        def forward(self, inputs):
            return {"y": self.get_sub_blocks()["b"].forward(self.get_sub_blocks()["a"].forward(inputs))["y"]}

        def get_sub_blocks(self):
            return {"a": shared, "b": shared_b}

    shared_b = Linear()
    pair = Pair()
    assert set(pair.state_dict()) == {"a.weight", "a.bias", "b.weight", "b.bias"}
    assert len(list(pair.trainable_parameters())) == 4
    pair.train()
    assert shared.module.training and shared_b.module.training
    shared_b.freeze()
    assert {id(p) for p in pair.trainable_parameters()} == {id(p) for p in shared.module.parameters()}
    pair.freeze()
    assert list(pair.trainable_parameters()) == []
    fresh = Pair()
    fresh.load_state_dict(pair.state_dict())  # strict round trip through prefixes


def test_shared_parameter_listed_once():
    class Twice(Block):
        def declare_ports(self):
            return [input_port("x"), output_port("y")]

        def forward(self, inputs):
            return {"y": inputs["x"]}

        def get_sub_blocks(self):
            return {"first": one, "second": one}

    one = Linear()
    assert len(list(Twice().trainable_parameters())) == 2
