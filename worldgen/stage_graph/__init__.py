"""`StageGraph`: one transition implemented as a DAG of pipelines and runnables (world.md §3).

A stage graph holds nodes — `Pipeline`s (a `Graph` is wrapped as a one-graph pipeline
whose ports keep the graph's run keys) and runnables (a LangChain `Runnable` or a function
``(inputs: dict) -> dict`` with declared ports) — joined port to port, and a *state
contract*: which blocks it reads and writes, and which node port each one goes to.

It is callable as ``(state: dict) -> dict``, so it is a `Stage` implementation as it is::

    sg = StageGraph("draw")
    sg.add_pipeline(Graph.from_template("text_to_image", checkpoint=folder))
    sg.set_state_contract([2], [3])
    Stage("creator", sg)

* `graph` — `StageGraph` itself: building, the state contract, validation, running;
* `nodes` — what a node and an edge (`StageEdge`) are, and their ports;
* `mapping` — blocks ↔ node ports: the contract's entries and the default conversions;
* `execution` — running the nodes, independent ones at the same time;
* `config` — the config models, to/from config, save/load;
* `templates` — stages by name (`stage_from_template`), e.g. `creator_stage`.
"""

from worldgen.stage_graph.graph import StageGraph, StageGraphValidationError
from worldgen.stage_graph.nodes import StageEdge
from worldgen.stage_graph.templates import creator_stage, stage_from_template, stage_templates

__all__ = [
    "StageEdge",
    "StageGraph",
    "StageGraphValidationError",
    "creator_stage",
    "stage_from_template",
    "stage_templates",
]
