"""Choosing what trains, at any level (levels.md §7 "Controls", "Shared block").

Graph, Pipeline and StageGraph carry their own controls (`Graph.set_trainable(node_id, ...)`,
`Pipeline.set_trainable(pid, ...)` / `freeze_others`, `StageGraph.set_training`), which
`trainable_parameters` honours at any depth; a World has none of its own, so `freeze_others`
above a Pipeline reaches the blocks through `walk` and uses the block's `freeze()`. Every helper keeps the rule of a shared block: it stays trainable while any of
its users is kept, and it reaches the optimizer once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from worldgen.adapters.base import Adapter, unique_parameters
from worldgen.adapters.walk import BlockSite, OtherSite, walk
from worldgen.blocks.base import Block
from worldgen.engine.graph import Graph
from worldgen.engine.pipeline import Pipeline

__all__ = ["freeze_others", "trainable_parameters", "trainable_stages"]


def trainable_parameters(obj: Any) -> list[Any]:
    """The parameters an optimizer should get for `obj` (any level, a Stage, a `LoraSet`, an
    adapter), each once. A Graph or Pipeline answers itself; above them, the blocks of every
    site the levels' own controls keep (`BlockSite.trainable`), plus whatever a block-less
    part (e.g. a wrapped chat model) exposes through ``trainable_parameters()``."""
    if isinstance(obj, Block | Graph | Pipeline | Adapter):
        return unique_parameters([obj.trainable_parameters()])
    if hasattr(obj, "parameters") and hasattr(obj, "adapters"):  # a LoraSet (lora.py imports torch)
        return list(obj.parameters())
    groups: list[Iterable[Any]] = []
    levels: dict[int, Any] = {}
    for site in walk(obj):
        if isinstance(site, BlockSite):
            if site.trainable:
                groups.append(site.block.trainable_parameters())
        elif isinstance(site, OtherSite):
            for part in (site.obj, site.llm):
                if part is not None and callable(getattr(part, "trainable_parameters", None)):
                    levels.setdefault(id(part), part)
    groups += [part.trainable_parameters() for part in levels.values()]
    return unique_parameters(groups)


def freeze_others(obj: Any, keep: str | Iterable[str]) -> list[str]:
    """Train only the parts named in `keep` (node ids for a Graph, graph ids for a Pipeline;
    for a StageGraph or World: stage names, roles, pipeline/graph ids or node ids). Blocks
    used only by other parts are frozen; a block shared with a kept part stays trainable.
    Returns the paths of the blocks frozen (for a Graph/Pipeline: the ids set not trainable)."""
    kept = {keep} if isinstance(keep, str) else set(keep)
    if isinstance(obj, Graph):
        _check_known(kept, obj.node_ids, f"graph {obj.graph_id!r}", "node")
        for nid in obj.node_ids:
            obj.set_trainable(nid, nid in kept)
        return [n for n in obj.node_ids if n not in kept]
    if isinstance(obj, Pipeline):
        _check_known(kept, obj.graph_ids, f"pipeline {obj.pipeline_id!r}", "graph")
        obj.freeze_others(*kept)
        return [p for p in obj.graph_ids if p not in kept]
    every = list(walk(obj))
    sites = [s for s in every if isinstance(s, BlockSite)]
    names = {v for s in every for v in s.context.values()} | {s.path.split(".")[0] for s in sites}
    _check_known(kept, sorted(names), type(obj).__name__, "part")
    keep_ids = {id(s.block) for s in sites if _kept(s, kept)}
    frozen: list[str] = []
    for site in sites:
        if id(site.block) not in keep_ids and not site.block.frozen:
            site.block.freeze()
            frozen.append(site.path)
    return frozen


def trainable_stages(world: Any, stages: str | Iterable[str]) -> list[str]:
    """Train only these stages of a World (by stage name or role): `freeze_others` on it."""
    return freeze_others(world, stages)


def _kept(site: BlockSite, kept: set[str]) -> bool:
    parts = set(site.context.values()) | set(site.path.split("."))
    return bool(parts & kept)


def _check_known(kept: set[str], known: Iterable[str], where: str, what: str) -> None:
    known = list(known)
    unknown = sorted(kept - set(known))
    if unknown:
        raise KeyError(f"{where} has no {what} {unknown} (known: {sorted(set(known))})")
