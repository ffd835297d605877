"""Walking any level down to its blocks: World → stages → StageGraph → pipelines → graphs → nodes.

Training helpers need the blocks behind a world, with where each one sits (stage, pipeline,
graph, node), and the parts that have no blocks (functions, agents, API chat models) so
they can be reported rather than silently skipped. Levels are recognised by class where
this package may import them, else by their public shape (a World is anything with a
``stages`` mapping of `Stage`s), so the walk never reaches into private state.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from worldgen.blocks.base import Block
from worldgen.blocks.roles import block_role
from worldgen.engine.graph import Graph
from worldgen.engine.graph_block import GraphBlock
from worldgen.engine.pipeline import Pipeline

__all__ = ["BlockSite", "OtherSite", "walk"]


@dataclass(frozen=True)
class BlockSite:
    """One use of a block: the block, a readable path, and the call-context keys of the site.
    `trainable` is False when a level's own controls leave the site out (`Graph.set_trainable`,
    `Pipeline.set_trainable`, `StageGraph.set_training`), as their `trainable_parameters` do."""

    block: Block
    path: str
    context: Mapping[str, str] = field(default_factory=dict)
    trainable: bool = True

    @property
    def node_id(self) -> str | None:
        return self.context.get("node_id")

    def matches(self, targets: Any) -> bool:
        """True if any target names this block's role, type, id, node id or ``graph_id.node_id``."""
        if targets is None:
            return True
        wanted = {targets} if isinstance(targets, str) else set(targets)
        names = {block_role(self.block), self.block.block_type, self.block.block_id, self.node_id}
        if self.node_id and self.context.get("graph_id"):
            names.add(f"{self.context['graph_id']}.{self.node_id}")
        return bool(wanted & {n for n in names if n})


@dataclass(frozen=True)
class OtherSite:
    """A part with no blocks to walk (a function, an agent, a chat model); `llm` is its chat
    model when it has one (the place for a prompt adapter)."""

    obj: Any
    path: str
    reason: str
    context: Mapping[str, str] = field(default_factory=dict)
    llm: Any = None


def walk(obj: Any) -> Iterator[BlockSite | OtherSite]:
    """Every block use and every block-less part under `obj` (any level, or a Stage)."""
    yield from _walk(obj, "", {}, True)


def _walk(obj: Any, path: str, ctx: dict[str, str], on: bool) -> Iterator[BlockSite | OtherSite]:
    from worldgen.stage import Stage
    from worldgen.stage_graph import StageGraph

    if isinstance(obj, Block):
        yield from _walk_block(obj, path or obj.block_id, ctx, on)
    elif isinstance(obj, Graph):
        yield from _walk_graph(obj, path, ctx, on)
    elif isinstance(obj, Pipeline):
        pctx = {**ctx, "pipeline_id": obj.pipeline_id}
        for pid in obj.graph_ids:
            remote = obj.get_endpoint(pid)
            if remote is not None:  # as Pipeline.trainable_parameters: its local copy never runs
                yield _remote_site(remote, _join_level(path, pid), "graph", {**pctx, "graph_id": pid})
                continue
            yield from _walk_graph(obj.get_graph(pid), _join_level(path, pid), pctx, on and obj.is_trainable(pid))
    elif isinstance(obj, StageGraph):
        sctx = {**ctx, "stage_id": ctx.get("stage_id", obj.stage_id)}
        if obj.remote is not None:  # as StageGraph.trainable_parameters: the local copy never runs
            yield _remote_site(obj.remote, path or obj.stage_id, "stage", sctx)
            return
        kept = obj.trainable_nodes
        for nid in obj.node_ids:
            if (remote := obj.get_node_endpoint(nid)) is not None:
                yield _remote_site(remote, _join(path, nid), "stage node", sctx)
                continue
            yield from _walk(obj.get_node(nid), _join(path, nid), sctx, on and (kept is None or nid in kept))
    elif isinstance(obj, Stage):
        sctx = {**ctx, "stage_id": obj.name, "role": obj.role}
        inner = getattr(obj, "stage_graph", None)  # a driver (e.g. per image slot) may wrap the graph
        yield from _walk(inner if inner is not None else obj.impl, path or obj.name, sctx, on)
    elif isinstance(getattr(obj, "stages", None), Mapping):  # a World (duck-typed: world.py is not imported)
        for key, stage in obj.stages.items():
            yield from _walk(stage, _join(path, str(key)), ctx, on)
    elif isinstance(getattr(obj, "stage_graph", None), StageGraph):
        yield from _walk(obj.stage_graph, path, ctx, on)
    else:
        yield from _other(obj, path or type(obj).__name__, ctx)


def _remote_site(remote: Any, path: str, what: str, ctx: dict[str, str]) -> OtherSite:
    return OtherSite(remote, path, f"remote {what} ({remote.endpoint_url}): trains where it is served", ctx)


def _walk_graph(graph: Graph, path: str, ctx: dict[str, str], on: bool) -> Iterator[BlockSite | OtherSite]:
    gpath = _join_level(path, graph.graph_id)
    for nid in graph.node_ids:
        block = graph.get_node(nid).block
        yield from _walk_block(block, _join(gpath, nid), {**ctx, "graph_id": graph.graph_id, "node_id": nid},
                               on and graph.is_trainable(nid))


def _walk_block(block: Block, path: str, ctx: dict[str, str], on: bool) -> Iterator[BlockSite | OtherSite]:
    if isinstance(block, GraphBlock):
        yield from _walk_graph(block.graph, path, ctx, on)
        return
    yield BlockSite(block, path, dict(ctx), on)
    for name, sub in block.get_sub_blocks().items():
        yield from _walk_block(sub, _join(path, name), ctx, on)


def _other(obj: Any, path: str, ctx: dict[str, str]) -> Iterator[OtherSite]:
    from langchain_core.language_models import BaseChatModel

    llm = obj if isinstance(obj, BaseChatModel) else getattr(obj, "llm", None)
    if not isinstance(llm, BaseChatModel):
        llm = None
    kind = type(obj).__name__
    reason = f"{kind}: no local blocks" + ("; its chat model can take a prompt adapter" if llm is not None else "")
    yield OtherSite(obj, path, reason, dict(ctx), llm)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _join_level(path: str, name: str) -> str:
    """Like `_join`, but a level named like its holder (a stage node "paint" holding pipeline
    "paint" holding graph "paint") adds no repeated segment."""
    return path if path.rsplit(".", 1)[-1] == name else _join(path, name)
