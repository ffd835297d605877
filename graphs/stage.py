"""A saved stage graph served by LangGraph Server (``langgraph.json`` → ``stage``).

A world whose stage has ``endpoint_url`` (``StageGraph.set_endpoint`` or the stage config's
``endpoint_url`` / ``assistant_id: stage``) calls this graph through ``RemoteGraph``: the
blocks the stage reads (and the action) come in as JSON, the blocks it writes go back, with
block 3's files by value (see `worldgen.remote.serve_stage`).

Environment:

* ``WORLDGEN_STAGE`` — the saved stage folder (``StageGraph.save``) or a stage config file.
  Unset, the graph is a placeholder that fails each run with that message, so the repo's
  ``langgraph.json`` still loads for the other graphs.
* ``WORLDGEN_STAGE_ARTIFACTS`` — where the served stage keeps artifact files (default: a
  temporary folder).
* ``WORLDGEN_IMPORTS`` — comma-separated modules to import first (they register custom
  block types the saved stage uses).
"""

from __future__ import annotations

import importlib
import os

from langgraph.graph.state import CompiledStateGraph

from worldgen.remote import placeholder_graph, serve_stage

for _module in filter(None, (m.strip() for m in os.environ.get("WORLDGEN_IMPORTS", "").split(","))):
    importlib.import_module(_module)

_source = os.environ.get("WORLDGEN_STAGE")
graph: CompiledStateGraph = (
    serve_stage(_source, artifacts_root=os.environ.get("WORLDGEN_STAGE_ARTIFACTS") or None, name="stage")
    if _source else placeholder_graph("stage", "set WORLDGEN_STAGE to a saved stage folder to serve it")
)

__all__ = ["graph"]
