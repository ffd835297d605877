"""`Block`: the unit of computation ("matter") that graph nodes hold.

A block owns its config, state and parameters and computes `forward(inputs) -> outputs`
over dicts keyed by port name. It knows nothing about graphs: ports are declared by the
block itself, so any block fits any node whose edges its port types allow.
"""

from __future__ import annotations

import copy
import itertools
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

from worldgen.blocks.ports import Port, PortDirection

if TYPE_CHECKING:
    from worldgen.blocks.registry import BlockRegistry

__all__ = ["Block", "StateDictError", "StateLoadResult"]

_ids = itertools.count(1)


class StateDictError(ValueError):
    """A strict `load_state_dict` met unknown or missing keys."""


@dataclass(frozen=True)
class StateLoadResult:
    """What a non-strict load skipped (same idea as torch's `_IncompatibleKeys`)."""

    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)


class Block(ABC):
    """Base class of every block.

    Subclasses implement `declare_ports()` and `forward()`. Blocks with state override the
    `local_*` hooks (or use `TorchBlock`); blocks made of other blocks return them from
    `get_sub_blocks()`, and save/load/freeze/train recurse into them under `"<name>."`.

    Blocks start in eval mode: most are used for inference, and `Graph.run(training=...)`
    sets the mode of every block on each run anyway.
    """

    #: Registry name. Defaults to the class name; task-role implementations use "role/impl".
    block_type: ClassVar[str] = "Block"
    #: Optional pydantic model validating `config`; the validated instance is `self.settings`.
    config_schema: ClassVar[type[BaseModel] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "block_type" not in cls.__dict__:
            cls.block_type = cls.__name__

    def __init__(
        self, block_id: str | None = None, *, config: Mapping[str, Any] | BaseModel | None = None
    ) -> None:
        if isinstance(config, BaseModel):
            config = config.model_dump()
        self.config: dict[str, Any] = copy.deepcopy(dict(config or {}))
        self.settings: BaseModel | None = (
            self.config_schema.model_validate(self.config) if self.config_schema else None
        )
        self.block_id: str = block_id or f"{self.block_type.replace('/', '_')}-{next(_ids)}"
        self._training = False
        self._frozen = False
        self._ports: dict[tuple[PortDirection, str], Port] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(block_id={self.block_id!r}, block_type={self.block_type!r})"

    # -------------------------------------------------------------- config
    # in `worldgen.engine.serialization`, imported late: configs are not needed to compute
    def to_config(self) -> dict[str, Any]:
        """``{block_type, block_id, config}``: enough to rebuild this block (not its state)."""
        from worldgen.engine.serialization import block_to_config

        return block_to_config(self)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, registry: BlockRegistry | None = None) -> Block:
        """Build the block a `to_config()` dict describes, through the registry; called on a
        subclass, the result must be an instance of it."""
        from worldgen.engine.serialization import block_from_config

        block = block_from_config(config, registry=registry)
        if not isinstance(block, cls):
            raise TypeError(f"{cls.__name__}.from_config built {block!r}, not a {cls.__name__}")
        return block

    # ---------------------------------------------------------------- ports
    @abstractmethod
    def declare_ports(self) -> list[Port]:
        """Every port of this block, inputs and outputs; called once and cached."""

    def _port_map(self) -> dict[tuple[PortDirection, str], Port]:
        if self._ports is None:
            ports: dict[tuple[PortDirection, str], Port] = {}
            for port in self.declare_ports():
                key = (port.direction, port.name)
                if key in ports:
                    raise ValueError(f"{self!r}: duplicate {port.direction.value} port {port.name!r}")
                ports[key] = port
            self._ports = ports
        return self._ports

    def get_input_ports(self) -> list[Port]:
        return [p for (d, _), p in self._port_map().items() if d is PortDirection.IN]

    def get_output_ports(self) -> list[Port]:
        return [p for (d, _), p in self._port_map().items() if d is PortDirection.OUT]

    def get_port(self, name: str, direction: PortDirection | str | None = None) -> Port:
        """The port called `name`; pass `direction` when an input and an output share it."""
        ports = self._port_map()
        if direction is not None:
            port = ports.get((PortDirection(direction), name))
            if port is None:
                raise KeyError(f"{self!r} has no {PortDirection(direction).value} port {name!r}")
            return port
        found = [p for (_, n), p in ports.items() if n == name]
        if not found:
            raise KeyError(f"{self!r} has no port {name!r} (ports: {sorted({n for _, n in ports})})")
        if len(found) > 1:
            raise KeyError(f"{self!r}: port {name!r} is both an input and an output; pass direction")
        return found[0]

    def has_port(self, name: str, direction: PortDirection | str) -> bool:
        return (PortDirection(direction), name) in self._port_map()

    # ------------------------------------------------------------ execution
    @abstractmethod
    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Compute outputs (keyed by OUT port name) from inputs; must not mutate `inputs`."""

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Alias of `forward`, so every level shares the `run(inputs)` verb."""
        return self.forward(inputs)

    def to(self, device: Any) -> Block:
        """Move weights to `device`; a no-op for blocks without tensors."""
        for sub in self.get_sub_blocks().values():
            sub.to(device)
        return self

    # -------------------------------------------------------- composition
    def get_sub_blocks(self) -> dict[str, Block]:
        """Named child blocks; state, training and freezing recurse into them."""
        return {}

    # --------------------------------------------------------------- state
    def local_state_dict(self) -> dict[str, Any]:
        """This block's own state, without sub-blocks. Override in stateful blocks."""
        return {}

    def load_local_state_dict(self, state: dict[str, Any]) -> None:
        """Load own state; `state` holds only keys that `local_state_dict()` has."""

    def state_dict(self) -> dict[str, Any]:
        """Own state plus each sub-block's under `"<name>.<key>"`."""
        state = dict(self.local_state_dict())
        for name, sub in self.get_sub_blocks().items():
            state.update({f"{name}.{key}": value for key, value in sub.state_dict().items()})
        return state

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> StateLoadResult:
        """Load `state` (as written by `state_dict`); strict raises on unknown or missing keys."""
        missing, unexpected = self._load_tree(state)
        if strict and (missing or unexpected):
            problems = []
            if unexpected:
                problems.append(f"unexpected keys {sorted(unexpected)}")
            if missing:
                problems.append(f"missing keys {sorted(missing)}")
            raise StateDictError(f"{self!r}: load_state_dict(strict=True): " + "; ".join(problems))
        return StateLoadResult(sorted(missing), sorted(unexpected))

    def _load_tree(self, state: Mapping[str, Any]) -> tuple[list[str], list[str]]:
        subs = self.get_sub_blocks()
        local: dict[str, Any] = {}
        per_sub: dict[str, dict[str, Any]] = {name: {} for name in subs}
        for key, value in state.items():
            head, dot, rest = key.partition(".")
            if dot and head in subs:
                per_sub[head][rest] = value
            else:
                local[key] = value
        expected = set(self.local_state_dict())
        missing = [k for k in expected if k not in local]
        unexpected = [k for k in local if k not in expected]
        self.load_local_state_dict({k: v for k, v in local.items() if k in expected})
        for name, sub in subs.items():
            sub_missing, sub_unexpected = sub._load_tree(per_sub[name])
            missing += [f"{name}.{k}" for k in sub_missing]
            unexpected += [f"{name}.{k}" for k in sub_unexpected]
        return missing, unexpected

    # ------------------------------------------------------------ training
    def local_parameters(self) -> Iterator[Any]:
        """This block's own trainable parameters (not sub-blocks'). Override to add some."""
        return iter(())

    def trainable_parameters(self) -> Iterator[Any]:
        """Parameters an optimizer should see: none of a frozen block's, each one once."""
        seen: set[int] = set()
        for param in self._all_trainable():
            if id(param) not in seen:
                seen.add(id(param))
                yield param

    def _all_trainable(self) -> Iterator[Any]:
        if not self._frozen:
            yield from self.local_parameters()
        for sub in self.get_sub_blocks().values():
            yield from sub._all_trainable()

    @property
    def training(self) -> bool:
        return self._training

    def train(self, mode: bool = True) -> Block:
        self._training = bool(mode)
        self._on_train(self._training)
        for sub in self.get_sub_blocks().values():
            sub.train(mode)
        return self

    def eval(self) -> Block:
        return self.train(False)

    @property
    def frozen(self) -> bool:
        return self._frozen

    def freeze(self) -> Block:
        """Exclude this block (and its sub-blocks) from `trainable_parameters()`.

        Freezing does not change train/eval mode; call `eval()` as well for that.
        """
        return self._set_frozen(True)

    def unfreeze(self) -> Block:
        return self._set_frozen(False)

    def _set_frozen(self, frozen: bool) -> Block:
        self._frozen = frozen
        self._on_freeze(frozen)
        for sub in self.get_sub_blocks().values():
            sub._set_frozen(frozen)
        return self

    def _on_train(self, mode: bool) -> None:
        """Hook: mirror the train/eval mode into wrapped objects (see `TorchBlock`)."""

    def _on_freeze(self, frozen: bool) -> None:
        """Hook: mirror freezing into wrapped objects (see `TorchBlock`)."""
