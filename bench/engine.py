"""Per-node cost of the dataflow engine against plain Python calls.

Side A: ``graph.run`` over a chain of N identity blocks (N edges, one exposed input and
output; the plan is cached, as it is on every run after the first).
Side B: the same N blocks' ``forward`` called directly in a Python loop, each feeding the
next, which is the floor any executor has to pay.

Rounds alternate A, B, A, B... so a noisy machine hurts both alike; medians are reported.

Run: ``.venv/bin/python bench/engine.py [--nodes 1000] [--rounds 30]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Mapping
from typing import Any

from worldgen.blocks import Block, Port, input_port, output_port
from worldgen.engine import Graph


class Identity(Block):
    def declare_ports(self) -> list[Port]:
        return [input_port("x"), output_port("y")]

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return {"y": inputs["x"]}


def build_chain(n: int) -> tuple[Graph, list[Identity]]:
    graph, blocks = Graph("chain"), [Identity() for _ in range(n)]
    for i, block in enumerate(blocks):
        graph.add_node(f"n{i}", block)
        if i:
            graph.add_edge(f"n{i - 1}", "y", f"n{i}", "x")
    graph.expose_input("n0", "x", "x")
    graph.expose_output(f"n{n - 1}", "y", "y")
    return graph, blocks


def direct(blocks: list[Identity], value: Any) -> Any:
    for block in blocks:
        value = block.forward({"x": value})["y"]
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    started = time.perf_counter()
    graph, blocks = build_chain(args.nodes)
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    graph.plan()
    plan_s = time.perf_counter() - started
    assert graph.run({"x": 7}) == {"y": 7} and direct(blocks, 7) == 7  # warm-up and sanity

    engine_us, direct_us = [], []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        graph.run({"x": 1})
        t1 = time.perf_counter()
        direct(blocks, 1)
        t2 = time.perf_counter()
        engine_us.append((t1 - t0) / args.nodes * 1e6)
        direct_us.append((t2 - t1) / args.nodes * 1e6)
    a, b = statistics.median(engine_us), statistics.median(direct_us)
    print(f"identity chain of {args.nodes} blocks, {args.rounds} rounds (medians)")
    print(f"  build {build_s * 1e3:.1f} ms, plan {plan_s * 1e3:.1f} ms (once per structural change)")
    print(f"  graph.run : {a:7.2f} µs per node call")
    print(f"  direct    : {b:7.2f} µs per forward call")
    print(f"  ratio     : {a / b:7.1f}x  (engine overhead {a - b:.2f} µs per node)")


if __name__ == "__main__":
    main()
