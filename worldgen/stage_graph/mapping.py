"""The state contract's mapping: which block (or field, or the action) feeds which node
port, which port gives which block, and how values are converted between them.

**Blocks → port values** (the default converters; a mapping entry may carry its own):

===========  ==============================================================
block1, 5    the text string
block2       the prompt of its first image slot (else of its first slot)
block3       the list of artifact-ref dicts (``items``)
block4       the descriptions' texts joined by newlines
"action"     the action string (a mapping source besides the blocks)
``"blockN.field"``  that field of the block's JSON (``"block2.slots"``)
===========  ==============================================================

An empty (``None``) block gives no value, so the port must be optional.

**Port values → blocks:** block 3 accepts an image tensor ``[B, 3, H, W]`` / ``[3, H, W]``
in [0, 1], a PIL image or a list of them (each stored with
``state["world"].artifacts.put_image`` and becoming an artifact-ref item), a string (stored
with ``put_text``), or refs / a block dict; a stored artifact's ``slot`` is the output port's
name. Blocks 1, 2, 4 and 5 accept a string (their text
form, coerced as `worldgen.state` does), a dict or a block model. Several outputs mapped to
block 3 add up their items; for other blocks the last one wins.

**Default mapping** (no explicit one, `StageGraph.resolved_mapping_input` / `_output`): the
boundary nodes' inputs (nodes with no incoming edge, in insertion order, each port in spec
order) take the input blocks by order, and the sink nodes' outputs (no outgoing edge) give
the output blocks by order. Extra ports stay unmapped; more blocks than ports is a
validation error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from worldgen.blocks.ports import PortType
from worldgen.engine.serialization import _is_tensor
from worldgen.engine.validation import ValidationIssue
from worldgen.stage_graph.nodes import _Node
from worldgen.state import BLOCK_NUMBERS, BLOCK_TYPES, block_key

Converter = Callable[[Any], Any]


@dataclass(frozen=True)
class _Mapping:
    """One contract entry: a block (or field, or ``"action"``) ↔ a node port."""

    source: str  # "block2", "block2.slots", "action"
    node_id: str
    port: str
    converter: Converter | None = None

    @property
    def block(self) -> int | None:
        head = self.source.split(".", 1)[0]
        if head.startswith("block") and head[5:].isdigit():
            return int(head[5:])
        return None


def _mapping(entry: Sequence[Any]) -> _Mapping:
    if len(entry) not in (3, 4):
        raise ValueError(f"a mapping entry is (block_or_field, node_id, port[, converter]), got {entry!r}")
    source = entry[0]
    source = block_key(source) if isinstance(source, int) else str(source)
    converter = entry[3] if len(entry) == 4 else None
    if converter is not None and not callable(converter):
        raise TypeError(f"mapping converter must be callable, got {type(converter).__name__}")
    return _Mapping(source, str(entry[1]), str(entry[2]), converter)


def _block_number(block: int | str) -> int:
    if isinstance(block, int):
        return block
    text = str(block)
    if text.startswith("block") and text[5:].isdigit():
        return int(text[5:])
    raise ValueError(f"{block!r} is not a block (a number or 'blockN')")


def _mapping_errors(
    mappings: list[_Mapping], what: str, blocks: tuple[int, ...], nodes: Mapping[str, _Node]
) -> list[ValidationIssue]:
    """What is wrong with the `what` (``"input"``/``"output"``) mapping entries, given the
    contract's blocks and the graph's nodes (see `StageGraph.validate`)."""
    errors = []
    for m in mappings:
        n = m.block
        if n is None and not (what == "input" and m.source == "action"):
            errors.append(ValidationIssue(f"mapping_{what} source {m.source!r} is not a block (block1 … block5)"))
        elif n is not None and n not in BLOCK_NUMBERS:
            errors.append(ValidationIssue(f"mapping_{what} uses block{n}, but the state has block1 … block5"))
        elif n is not None and n not in blocks:
            errors.append(ValidationIssue(f"mapping_{what} uses block{n}, which is not among the contract's {what} blocks {list(blocks)}"))
        if what == "output" and "." in m.source:
            errors.append(ValidationIssue(f"mapping_output must name a whole block, got {m.source!r}"))
        if m.node_id not in nodes:
            errors.append(ValidationIssue(f"mapping_{what} names an unknown node {m.node_id!r}", m.node_id))
            continue
        ports = nodes[m.node_id].inputs if what == "input" else nodes[m.node_id].outputs
        if m.port not in ports:
            errors.append(ValidationIssue(
                f"mapping_{what}: node {m.node_id!r} has no {what} {m.port!r} ({what}s: {list(ports)})", m.node_id, m.port))
        elif what == "input" and m.converter is None and n in (1, 2, 4, 5) and "." not in m.source \
                and ports[m.port] not in (PortType.ANY, PortType.TEXT):
            errors.append(ValidationIssue(
                f"mapping_input: block{n} gives text but {m.node_id}.{m.port} is {ports[m.port].value}; add a converter",
                m.node_id, m.port))
    return errors


def _block_to_port(state: Mapping[str, Any], m: _Mapping) -> Any:
    if m.source == "action":
        raw = state.get("action")
        return m.converter(raw) if m.converter else raw
    head, _, fieldname = m.source.partition(".")
    raw = state.get(head)
    if hasattr(raw, "model_dump"):
        raw = raw.model_dump(mode="json")
    if isinstance(raw, str) and m.block in BLOCK_TYPES:
        raw = BLOCK_TYPES[m.block].model_validate(raw).model_dump(mode="json")  # type: ignore[index]
    if fieldname:
        raw = None if raw is None else raw.get(fieldname)
    if m.converter is not None:
        return m.converter(raw)
    if raw is None or fieldname:
        return raw
    n = m.block
    if n in (1, 5):
        return raw.get("text")
    if n == 2:
        slots = raw.get("slots") or []
        image = [s for s in slots if s.get("kind") == "image"]
        return (image or slots)[0]["prompt"] if slots else None
    if n == 3:
        return list(raw.get("items") or [])
    if n == 4:
        return "\n".join(d.get("text", "") for d in raw.get("items") or [])
    return raw


def _port_to_block(n: int, value: Any, state: Mapping[str, Any], *, slot: str = "") -> dict[str, Any]:
    if n == 3:
        return {"items": _artifact_items(value, state, slot)}
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    return BLOCK_TYPES[n].model_validate(value).model_dump(mode="json")


def _artifact_items(value: Any, state: Mapping[str, Any], slot: str) -> list[dict[str, Any]]:
    from PIL import Image

    if isinstance(value, Mapping) and "items" in value:
        return [dict(i) if isinstance(i, Mapping) else i.model_dump(mode="json") for i in value["items"]]
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    items: list[dict[str, Any]] = []
    for v in values:
        if hasattr(v, "model_dump"):  # an ArtifactRef
            items.append(v.model_dump(mode="json"))
        elif isinstance(v, Mapping):
            items.append(dict(v))
        elif isinstance(v, str):
            items.append(_store(state).put_text(v, slot=slot).model_dump(mode="json"))
        elif isinstance(v, Image.Image):
            items.append(_store(state).put_image(v, slot=slot).model_dump(mode="json"))
        elif _is_tensor(v):
            from worldgen.blocks.diffusion import to_pil

            tensor = v if v.dim() == 4 else v.unsqueeze(0)
            items += [_store(state).put_image(img, slot=slot).model_dump(mode="json") for img in to_pil(tensor.clamp(0, 1))]
        else:
            raise TypeError(f"block3 takes images, tensors, text or artifact refs, got {type(v).__name__}")
    return items


def _store(state: Mapping[str, Any]) -> Any:
    world = state.get("world")
    store = getattr(world, "artifacts", None)
    if store is None:
        raise RuntimeError("writing block3 needs state['world'].artifacts (an ArtifactStore)")
    return store

