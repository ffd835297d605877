"""The five-block world state.

Each block is a small typed document. A plain non-empty string is accepted for any block
and coerced to its type, so a user (or LangGraph Studio) can pass ``{"block1": "a storm"}``.
"Filled" means present and non-empty: an empty string, list or model does not count.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "ArtifactDescription",
    "ArtifactDescriptions",
    "ArtifactRef",
    "Artifacts",
    "Block",
    "BLOCK_NUMBERS",
    "BLOCK_TYPES",
    "GenerationConfig",
    "Intent",
    "Outcome",
    "Slot",
    "StateError",
    "WorldState",
    "block_key",
]

BLOCK_NUMBERS: tuple[int, ...] = (1, 2, 3, 4, 5)


def block_key(n: int) -> str:
    return f"block{n}"


class StateError(ValueError):
    """A state that cannot be accepted; the message names the block at fault."""


class Block(BaseModel):
    """Base of the five block types: frozen-shape documents with a string shortcut."""

    model_config = ConfigDict(extra="forbid")
    #: the field a bare string is coerced into
    _text_field: ClassVar[str] = "text"

    @model_validator(mode="before")
    @classmethod
    def _coerce_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            return cls._from_text(value)
        return value

    @classmethod
    def _from_text(cls, text: str) -> dict[str, Any]:
        return {cls._text_field: text}

    def filled(self) -> bool:  # pragma: no cover - every block overrides
        raise NotImplementedError

    def as_text(self) -> str:
        """A readable rendering for prompts and the chronicle."""
        raise NotImplementedError


class Intent(Block):
    """Block 1: what is supposed to happen next."""

    text: str = ""

    def filled(self) -> bool:
        return bool(self.text.strip())

    def as_text(self) -> str:
        return self.text


class Slot(BaseModel):
    """One thing to generate: a kind (image, text, audio, …), a prompt and parameters."""

    model_config = ConfigDict(extra="forbid")

    name: str = "scene"
    kind: str = "image"
    prompt: str
    params: dict[str, Any] = Field(default_factory=dict)


class GenerationConfig(Block):
    """Block 2: how to generate this step's artifacts.

    A bare string is read as JSON when it parses as a config, otherwise it becomes one
    image slot whose prompt is the string.
    """

    slots: list[Slot] = Field(default_factory=list)

    @classmethod
    def _from_text(cls, text: str) -> dict[str, Any]:
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict) and "slots" in data:
            return data
        if not text.strip():
            return {"slots": []}
        return {"slots": [{"name": "scene", "kind": "image", "prompt": text}]}

    def filled(self) -> bool:
        return any(s.prompt.strip() for s in self.slots)

    def as_text(self) -> str:
        return "\n".join(f"- {s.name} ({s.kind}): {s.prompt}" for s in self.slots)


class ArtifactRef(BaseModel):
    """A reference to an artifact file in the world's ArtifactStore — never the bytes.

    ``inline`` carries a short text given by a user as a bare string; the world writes it
    to the store before the first transition reads it.
    """

    model_config = ConfigDict(extra="forbid")

    kind: str
    uri: str = ""
    sha256: str = ""
    mime: str = ""
    slot: str = ""
    meta: dict[str, Any] = Field(default_factory=dict)
    inline: str | None = None


class Artifacts(Block):
    """Block 3: the generated artifacts, as references."""

    items: list[ArtifactRef] = Field(default_factory=list)

    @classmethod
    def _from_text(cls, text: str) -> dict[str, Any]:
        if not text.strip():
            return {"items": []}
        return {"items": [{"kind": "text", "slot": "text", "inline": text, "mime": "text/plain"}]}

    def filled(self) -> bool:
        return bool(self.items)

    def as_text(self) -> str:
        return "\n".join(f"- {a.slot or a.kind}: {a.kind} {a.uri or '(inline)'}" for a in self.items)


class ArtifactDescription(BaseModel):
    model_config = ConfigDict(extra="forbid")

    slot: str = ""
    sha256: str = ""
    text: str


class ArtifactDescriptions(Block):
    """Block 4: what the artifacts actually contain."""

    items: list[ArtifactDescription] = Field(default_factory=list)

    @classmethod
    def _from_text(cls, text: str) -> dict[str, Any]:
        return {"items": [{"text": text}] if text.strip() else []}

    def filled(self) -> bool:
        return any(d.text.strip() for d in self.items)

    def as_text(self) -> str:
        return "\n".join(f"- {d.slot or 'artifact'}: {d.text}" for d in self.items)


class Outcome(Block):
    """Block 5: what really happened in the world."""

    text: str = ""

    def filled(self) -> bool:
        return bool(self.text.strip())

    def as_text(self) -> str:
        return self.text


BLOCK_TYPES: dict[int, type[Block]] = {
    1: Intent,
    2: GenerationConfig,
    3: Artifacts,
    4: ArtifactDescriptions,
    5: Outcome,
}


class WorldState(BaseModel):
    """The five blocks. Unknown keys (``block7``) and wrong types are rejected by name."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    block1: Intent | None = None
    block2: GenerationConfig | None = None
    block3: Artifacts | None = None
    block4: ArtifactDescriptions | None = None
    block5: Outcome | None = None

    @classmethod
    def parse(cls, value: WorldState | dict[str, Any] | None) -> WorldState:
        """Validate user input into a state, raising StateError that names the block."""
        if value is None:
            return cls()
        if isinstance(value, WorldState):
            return value
        if not isinstance(value, dict):
            raise StateError(f"a world state must be a dict of blocks, got {type(value).__name__}")
        unknown = sorted(str(k) for k in value if k not in cls.model_fields)
        if unknown:
            raise StateError(
                f"unknown block {', '.join(unknown)}: a world state has block1 … block5"
            )
        try:
            return cls.model_validate(value)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = str(err["loc"][0]) if err["loc"] else "state"
            raise StateError(
                f"{where}: {err['msg']} (expected {_expected(where)}, got {_short(value.get(where))})"
            ) from exc

    def get(self, n: int) -> Block | None:
        return getattr(self, block_key(n))

    def filled(self) -> set[int]:
        """The numbers of the filled blocks."""
        return {n for n in BLOCK_NUMBERS if (b := self.get(n)) is not None and b.filled()}

    def is_full(self) -> bool:
        return self.filled() == set(BLOCK_NUMBERS)

    def to_channels(self) -> dict[str, dict[str, Any] | None]:
        """JSON documents per block, as the world's graph keeps them (empty → None)."""
        filled = self.filled()
        return {
            block_key(n): (self.get(n).model_dump(mode="json") if n in filled else None)  # type: ignore[union-attr]
            for n in BLOCK_NUMBERS
        }

    @classmethod
    def from_channels(cls, channels: dict[str, Any]) -> WorldState:
        return cls.parse({block_key(n): channels.get(block_key(n)) for n in BLOCK_NUMBERS})


def _expected(key: str) -> str:
    if key.startswith("block") and key[5:].isdigit() and int(key[5:]) in BLOCK_TYPES:
        return f"{BLOCK_TYPES[int(key[5:])].__name__}, a dict or a non-empty string"
    return "a block"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
