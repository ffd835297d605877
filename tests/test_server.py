"""End to end through LangGraph Server: ``langgraph dev`` serves ``langgraph.json``'s ``world``.

The server imports graphs/world.py, which builds the canonical world with the real
embedded chat model (``WORLDGEN_LLM=local``: SmolLM2-135M on CPU, loaded on first use),
and runs it with its own checkpointer and store. Slow (minutes: every pass asks the model
three to six times) but real; no API key is in the server's environment.

``--no-reload``: the dev server's reloader watches the repo, and an edit anywhere in it
during the run would restart the server mid-run. Timeouts can be raised through
``WORLDGEN_SERVER_STARTUP_TIMEOUT`` / ``WORLDGEN_SERVER_RUN_TIMEOUT`` (seconds).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.langgraph_server import REPO, RUN_TIMEOUT, Server
from tests.langgraph_server import server_env as _server_env


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    # a fresh world id each time: langgraph dev keeps its store in <repo>/.langgraph_api
    srv = Server(tmp_path / "langgraph-dev.log", tmp_path / f"world-{uuid.uuid4().hex[:12]}")
    try:
        srv.wait_healthy()
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def review_server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "langgraph-dev-review.log", tmp_path / f"world-{uuid.uuid4().hex[:12]}",
                 {"WORLDGEN_REVIEW": "1"})
    try:
        srv.wait_healthy()
        yield srv
    finally:
        srv.stop()


def _run(
    client: Any, server: Server, thread_id: str, payload: dict[str, Any] | None, *, command: Any = None,
    pending_ok: bool = False,
) -> tuple[dict[str, Any], list]:
    """Run ``world`` on the thread, streaming its updates; return the thread's values and
    the run's trace events (the ``trace`` channel keeps only the latest step's)."""
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + RUN_TIMEOUT
    for part in client.runs.stream(thread_id, "world", input=payload, command=command, stream_mode="updates"):
        assert part.event != "error", f"run {payload} failed: {part.data}\n{server.log()}"
        if part.event == "updates":
            for update in (part.data or {}).values():
                if isinstance(update, dict):  # "__interrupt__" carries a list
                    events.extend(update.get("trace") or [])
        if time.monotonic() > deadline:
            pytest.fail(f"run {payload} still running after {RUN_TIMEOUT:.0f}s:\n{server.log()}")
    state = client.threads.get_state(thread_id)
    assert pending_ok or not state["next"], f"run {payload} left pending nodes {state['next']}"
    return state["values"], events


def _ran(events: list[dict[str, Any]]) -> list[str]:
    return [e["transition"] for e in events if e["status"] == "ran"]


def _check_blocks_1_to_3(values: dict[str, Any], root: Path) -> None:
    assert values["block1"] and values["block1"]["text"].strip(), values["block1"]
    assert values["block2"] and values["block2"]["slots"], values["block2"]
    assert all(slot["prompt"].strip() for slot in values["block2"]["slots"])
    items = (values["block3"] or {}).get("items") or []
    assert items, values["block3"]
    for ref in items:  # references, never bytes; each one a file under the world's root
        assert ref["uri"].startswith("artifacts/") and len(ref["sha256"]) == 64, ref
        assert ref.get("inline") is None, ref
        assert (root / ref["uri"]).is_file(), f"{ref['uri']} missing under {root}"


def test_graph_module_is_cheap_to_import(tmp_path: Path) -> None:
    """What the server imports: no model weights, no torch, no checkpointer of its own."""
    code = (
        "import json, runpy, sys\n"
        "ns = runpy.run_path('graphs/world.py')\n"
        "g = ns['graph']\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'checkpointer': g.checkpointer is None,\n"
        "                  'store': g.store is None, 'nodes': sorted(g.nodes)}))\n"
    )
    env = _server_env(tmp_path / "world")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {"torch": False, "checkpointer": True, "store": True,
                    "nodes": sorted(["__start__", "intake", "philosopher", "author", "world_update",
                                     "development", "architect", "creator"])}, seen
    assert (tmp_path / "world" / "world.yaml").is_file()


def test_studio_gets_the_input_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LangGraph Server answers /assistants/{id}/schemas with graph.get_input_jsonschema()."""
    import runpy

    monkeypatch.setenv("WORLDGEN_ROOT", str(tmp_path / "world"))
    graph = runpy.run_path(str(REPO / "graphs" / "world.py"))["graph"]
    properties = graph.get_input_jsonschema()["properties"]
    assert {"block1", "block2", "block3", "block4", "block5", "action", "num_steps"} <= set(properties)


@pytest.mark.slow
def test_langgraph_dev_serves_the_world(server: Server) -> None:
    from langgraph_sdk import get_sync_client

    started = time.monotonic()
    client = get_sync_client(url=server.url, api_key=None)
    assistants = client.assistants.search(graph_id="world")
    assert assistants, "langgraph dev did not register the 'world' graph"
    # what Studio asks for first: the graph and its schemas (the input form is checked
    # in-process by test_studio_gets_the_input_schema)
    schemas = client.assistants.get_schemas(assistants[0]["assistant_id"])
    assert {"block1", "trace"} <= set(schemas["state_schema"]["properties"]), schemas["state_schema"]
    assert "creator" in {n["id"] for n in client.assistants.get_graph(assistants[0]["assistant_id"])["nodes"]}
    thread_id = client.threads.create()["thread_id"]

    # pass 1 from nothing: Development → Architect → Creator
    values, events = _run(client, server, thread_id, {"num_steps": 1})
    assert _ran(events) == ["development", "architect", "creator"], events
    assert values["trace"][0]["transition"] == "creator"  # the latest step's events
    _check_blocks_1_to_3(values, server.root)
    assert values.get("block4") is None and values.get("block5") is None

    # pass 2 with an action: the state is full after Philosopher and Author, so World
    # update saves it; Development reads the action and starts the next state
    values, events = _run(client, server, thread_id, {"action": "open the gate"})
    assert _ran(events) == ["philosopher", "author", "world_update", "development", "architect", "creator"], events
    development = next(e for e in events if e["transition"] == "development")
    assert development["reason"].endswith("and the action"), development
    assert values["action"] is None  # consumed by the pass
    _check_blocks_1_to_3(values, server.root)

    update = next(e for e in events if e["transition"] == "world_update")
    assert update["snapshot"] and (server.root / update["snapshot"]).is_file(), update
    # the world's content went to the server's store (not to a local SqliteStore)
    world_id = server.root.name
    chronicle = client.store.search_items(["worlds", world_id, "chronicle"])["items"]
    assert len(chronicle) == 1 and chronicle[0]["value"]["episode"] == 1, chronicle
    print(f"\nlanggraph dev world: two runs in {time.monotonic() - started:.0f}s")


@pytest.mark.slow
def test_review_pauses_and_resumes_through_the_sdk(review_server: Server) -> None:
    """Human in the loop on the server: the run stops before World update; a resume command
    with edited blocks finishes it, and the edit is what the world saves."""
    from langgraph_sdk import get_sync_client

    client = get_sync_client(url=review_server.url, api_key=None)
    thread_id = client.threads.create()["thread_id"]
    given = {"block1": "A storm reaches the harbour.", "block2": "a harbour in a storm",
             "block3": "The boats strain at their ropes."}
    _, events = _run(client, review_server, thread_id, given, pending_ok=True)
    assert _ran(events) == ["philosopher", "author"], events
    state = client.threads.get_state(thread_id)
    assert state["next"] == ["world_update"], state["next"]
    (request,) = [i["value"] for task in state["tasks"] for i in task.get("interrupts", [])]
    assert request["review"] == "world_update" and request["state"]["block1"] == {"text": given["block1"]}

    edited = "Old Tamsin rowed out and brought every boat home."
    _, events = _run(client, review_server, thread_id, None, command={"resume": {"block5": edited}})
    assert _ran(events) == ["world_update", "development", "architect", "creator"], events
    update = events[0]
    assert update["review"] == "edited" and update["snapshot"], update
    saved = json.loads((review_server.root / update["snapshot"]).read_text())
    assert saved["state"]["block5"] == {"text": edited}
