"""Running a stage graph's nodes: each once its predecessors are done, independent ones at
the same time.

Nodes with no path between them run concurrently (a thread pool; model calls release the
GIL), so a stage of four independent 200 ms model calls takes about 200 ms
(``bench/parallel_stage.py``). Results do not depend on the finishing order.
"""

from __future__ import annotations

import contextvars
import sys
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

from langchain_core.runnables import Runnable

from worldgen.stage_graph.nodes import NodeCallback, _Node

if TYPE_CHECKING:
    from worldgen.stage_graph.graph import StageGraph


def _run_nodes(
    sg: StageGraph,
    order: list[str],
    buffer: dict[tuple[str, str], Any],
    cbs: list[NodeCallback],
    kwargs: dict[str, Any],
) -> None:
    """Run each node of `sg` once its predecessors are done. Several ready nodes run at
    once in a thread pool (at most ``sg.max_concurrency``): model calls (torch kernels, HTTP
    to a remote node or an API) release the GIL, so independent pipelines overlap. A lone
    ready node runs in this thread.

    Not a LangGraph `StateGraph`: the buffer carries tensors and images, which must stay
    out of LangGraph channels (inside a world run they would join its checkpoints and
    streams); the world's own graph is where LangGraph takes over. Callbacks fire from
    this thread: "before" when a node starts, "after" as it finishes (ties in
    topological order). Each worker runs in a copy of this context (run options, the
    LangGraph runtime) with this thread's grad mode."""
    rank = {n: i for i, n in enumerate(order)}
    waiting = {n: {e.source_node for e in sg.in_edges(n)} for n in order}
    ready = [n for n in order if not waiting[n]]
    running: dict[Future[dict[str, Any]], tuple[str, dict[str, Any]]] = {}  # → (node id, its inputs)
    pool: ThreadPoolExecutor | None = None
    grad = _grad_enabled()

    def start(nid: str) -> dict[str, Any]:
        for e in sg.in_edges(nid):
            if (e.source_node, e.source_port) in buffer:
                buffer[(nid, e.target_port)] = buffer[(e.source_node, e.source_port)]
        inputs = {p: buffer[(nid, p)] for p in sg._nodes[nid].inputs if (nid, p) in buffer}
        for cb in cbs:
            cb(nid, inputs, None)
        return inputs

    def finish(nid: str, inputs: dict[str, Any], outputs: dict[str, Any]) -> None:
        for cb in cbs:
            cb(nid, inputs, outputs)
        for port, value in outputs.items():
            buffer[(nid, port)] = value
        for e in sg.out_edges(nid):
            pending = waiting[e.target_node]
            if nid in pending:
                pending.discard(nid)
                if not pending:
                    ready.append(e.target_node)

    try:
        while ready or running:
            ready.sort(key=rank.__getitem__)
            if len(ready) == 1 and not running:  # a chain: no thread needed
                nid = ready.pop()
                inputs = start(nid)
                finish(nid, inputs, _run_node(nid, sg._nodes[nid], inputs, kwargs))
                continue
            while ready:
                nid = ready.pop(0)
                inputs = start(nid)
                if pool is None:
                    pool = ThreadPoolExecutor(sg.max_concurrency or max(2, len(order)),
                                              thread_name_prefix=f"stage-{sg.stage_id}")
                ctx = contextvars.copy_context()
                future = pool.submit(ctx.run, _run_node_in_worker, nid, sg._nodes[nid], inputs, kwargs, grad)
                running[future] = (nid, inputs)
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=lambda f: rank[running[f][0]]):
                nid, inputs = running.pop(future)
                finish(nid, inputs, future.result())
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _run_node_in_worker(
    nid: str, node: _Node, inputs: dict[str, Any], kwargs: dict[str, Any], grad: bool | None
) -> dict[str, Any]:
    if grad is None:
        return _run_node(nid, node, inputs, kwargs)
    import torch

    with torch.set_grad_enabled(grad):  # grad mode is per thread
        return _run_node(nid, node, inputs, kwargs)


def _run_node(nid: str, node: _Node, inputs: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    if node.remote is not None:
        return node.remote.invoke(inputs, node.inputs, node.outputs, node_id=nid)
    if node.kind == "pipeline":
        return dict(node.impl.run(inputs, **kwargs))
    out = node.impl.invoke(inputs) if isinstance(node.impl, Runnable) else node.impl(inputs)
    if not isinstance(out, Mapping):
        if len(node.outputs) != 1:
            raise TypeError(f"node {nid!r} returned {type(out).__name__}, not a dict of its outputs {list(node.outputs)}")
        out = {next(iter(node.outputs)): out}
    missing = [p for p in node.outputs if p not in out]
    if missing:
        raise RuntimeError(f"node {nid!r} gave no output {missing}")
    return {p: out[p] for p in node.outputs}


def _grad_enabled() -> bool | None:
    torch = sys.modules.get("torch")
    return None if torch is None else torch.is_grad_enabled()

