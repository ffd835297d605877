"""Independent pipelines of a stage run concurrently: 4 × a 200 ms model call vs one.

Each pipeline is a one-graph pipeline (a graph given to `add_pipeline`) whose block stands
for a model with 200 ms latency (an API or a remote node: it waits, releasing the GIL). A stage with one such pipeline is
the anchor; a stage with 4 of them, no edge between them, each writing its own block,
should take about as long (target: ratio ≤ 1.5×; sequentially it would be 4×). Both run
side by side in this process, best of `--repeats`.

Run: ``.venv/bin/python bench/parallel_stage.py``
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from typing import Any

from worldgen.blocks import Block, Port, PortType, input_port, output_port
from worldgen.engine import Graph
from worldgen.stage_graph import StageGraph

LATENCY = 0.2
TARGET = 1.5


class SlowModel(Block):
    """A model call with fixed latency: text → text."""

    def declare_ports(self) -> list[Port]:
        return [input_port("prompt", PortType.TEXT), output_port("text", PortType.TEXT)]

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        time.sleep(LATENCY)
        return {"text": f"{self.block_id}: {inputs['prompt']}"}


def graph(name: str) -> Graph:
    """One slow model; `StageGraph.add_pipeline` holds it as a one-graph pipeline."""
    g = Graph(name)
    g.add_node("model", SlowModel(f"model_{name}"))
    g.expose_input("model", "prompt", "prompt")
    g.expose_output("model", "text", "text")
    return g


def stage(n: int) -> StageGraph:
    """`n` independent pipelines, all reading block 1, each writing one of blocks 2…5."""
    sg = StageGraph(f"parallel_{n}")
    names = [f"p{i}" for i in range(n)]
    for name in names:
        sg.add_pipeline(graph(name))
    outs = [5, 4, 2, 1][:n] if n > 1 else [5]
    sg.set_state_contract(
        [1], outs,
        mapping_input=[("block1", name, "prompt") for name in names],
        mapping_output=[(f"block{b}", name, "text") for b, name in zip(outs, names)],
    )
    sg.validate(strict=True)
    return sg


def timed(sg: StageGraph, repeats: int) -> float:
    state = {"block1": {"text": "a storm"}}
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        update = sg(state)
        times.append(time.perf_counter() - started)
    assert len(update) == len(sg.output_blocks), update
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    one, four = stage(1), stage(4)
    timed(one, 1), timed(four, 1)  # warm-up: imports, thread start
    t1, t4 = timed(one, args.repeats), timed(four, args.repeats)
    four.max_concurrency = 1  # the same stage, one node at a time: what concurrency saves
    t4_serial = timed(four, 1)
    ratio = t4 / t1
    print(f"parallel_stage: 1 pipeline {t1 * 1000:.0f} ms | 4 independent pipelines {t4 * 1000:.0f} ms "
          f"(one at a time: {t4_serial * 1000:.0f} ms) | ratio {ratio:.2f}x (target <= {TARGET}x) "
          f"[{'ok' if ratio <= TARGET else 'MISSED'}]")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
