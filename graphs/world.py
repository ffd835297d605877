"""The canonical world as a LangGraph Server / Studio graph (``langgraph.json`` → ``world``).

``langgraph dev`` (and LangGraph Server) import this module and serve ``graph``. The server
brings its own checkpointer (threads, runs, resume) and its own store, so the graph is
compiled without either; the world's nodes then read and write the world's content in the
store the server injects (``World._content``), and artifacts go to ``WORLDGEN_ROOT``.

Environment:

* ``WORLDGEN_ROOT`` — the world's folder (artifacts, ``states/`` snapshots, ``world.yaml``);
  default ``<repo>/worlds/studio``. An existing ``world.yaml`` there is reused.
* ``WORLDGEN_LLM`` — the chat model spec (``"local"``: the embedded SmolLM2-135M, loaded
  on first use; ``"openai:<model>"``: ChatOpenAI, reading ``OPENAI_API_KEY`` /
  ``OPENAI_BASE_URL``); default ``"local"``.
* ``WORLDGEN_REVIEW`` — ``1`` pauses each run before World update (LangGraph ``interrupt``)
  until a person answers with ``Command(resume="approve" | "reject" | {blocks})``, from
  Studio or ``langgraph_sdk`` (``client.runs.create(..., command={"resume": ...})``).

Importing is cheap: building the World opens its folder and two small SQLite files and
writes ``world.yaml``; no model weights are read until the first transition asks a model.
The server imports graph modules in a worker thread (``run_in_executor``), not on its
event loop, so this file I/O is not flagged by ``langgraph dev``'s blocking-call detector.
"""

from __future__ import annotations

import os
from pathlib import Path

from langgraph.graph.state import CompiledStateGraph

from worldgen import World

REPO = Path(__file__).resolve().parent.parent


def build_world() -> World:
    """The canonical world the server serves, from the environment."""
    root = os.environ.get("WORLDGEN_ROOT") or str(REPO / "worlds" / "studio")
    llm = os.environ.get("WORLDGEN_LLM") or "local"
    review = os.environ.get("WORLDGEN_REVIEW", "").strip().lower() in {"1", "true", "yes", "on"}
    return World.from_template("canon", root=root, llm=llm, review=review)


world: World = build_world()
graph: CompiledStateGraph = world.compile(checkpointer=None, store=None)

__all__ = ["build_world", "graph", "world"]
