"""A saved pipeline served by LangGraph Server (``langgraph.json`` → ``pipeline``).

A stage node with ``endpoint_url`` (``StageGraph.set_node_endpoint(node, url, "pipeline")``)
calls this graph through ``RemoteGraph`` with its port values in the wire format of their
port types (see `worldgen.remote.serve_pipeline`).

Environment: ``WORLDGEN_PIPELINE`` — the saved pipeline folder (``Pipeline.save``) or a
pipeline config file (unset: a placeholder that fails each run with that message);
``WORLDGEN_IMPORTS`` — comma-separated modules to import first (custom block types).
"""

from __future__ import annotations

import importlib
import os

from langgraph.graph.state import CompiledStateGraph

from worldgen.remote import placeholder_graph, serve_pipeline

for _module in filter(None, (m.strip() for m in os.environ.get("WORLDGEN_IMPORTS", "").split(","))):
    importlib.import_module(_module)

_source = os.environ.get("WORLDGEN_PIPELINE")
graph: CompiledStateGraph = (
    serve_pipeline(_source, name="pipeline") if _source
    else placeholder_graph("pipeline", "set WORLDGEN_PIPELINE to a saved pipeline folder to serve it")
)

__all__ = ["graph"]
