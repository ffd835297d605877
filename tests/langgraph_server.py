"""A ``langgraph dev`` server on loopback for tests (shared by test_server and test_remote).

``--no-reload``: the dev server's reloader watches the repo, and an edit anywhere in it
during the run would restart the server mid-run. It serves the repo's ``langgraph.json``
(every graph in it is imported at start). Timeouts can be raised through
``WORLDGEN_SERVER_STARTUP_TIMEOUT`` / ``WORLDGEN_SERVER_RUN_TIMEOUT`` (seconds). No secret
from the test environment reaches the server.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

__all__ = ["LANGGRAPH", "REPO", "RUN_TIMEOUT", "STARTUP_TIMEOUT", "Server", "free_port", "inprocess_client", "server_env"]

REPO = Path(__file__).resolve().parent.parent
LANGGRAPH = Path(sys.executable).parent / "langgraph"
STARTUP_TIMEOUT = float(os.environ.get("WORLDGEN_SERVER_STARTUP_TIMEOUT", "180"))
RUN_TIMEOUT = float(os.environ.get("WORLDGEN_SERVER_RUN_TIMEOUT", "1500"))
_API_URL = re.compile(r"API:\s*(?:\x1b\[[0-9;]*m)?(https?://[^\s\x1b]+)")
_SECRET_VARS = re.compile(r"(API_KEY|_TOKEN|LICENSE_KEY|SECRET)$|^(LANGSMITH|LANGCHAIN)_", re.IGNORECASE)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(root: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not _SECRET_VARS.search(k)}
    env.update(
        LANGSMITH_TRACING="false",
        LANGCHAIN_TRACING_V2="false",
        LANGGRAPH_NO_VERSION_CHECK="true",  # no PyPI look-up from the server
        WORLDGEN_ROOT=str(root),
        WORLDGEN_LLM="local",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra or {})
    return env


class Server:
    """A ``langgraph dev`` subprocess in its own process group, logging to a file."""

    def __init__(self, log_path: Path, root: Path, extra_env: dict[str, str] | None = None):
        self.log_path = log_path
        self.root = root
        self.url: str | None = None
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(LANGGRAPH), "dev", "--no-browser", "--no-reload",
             "--host", "127.0.0.1", "--port", str(free_port())],
            cwd=REPO,
            env=server_env(root, extra_env),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self, tail: int = 150) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        lines = re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines()
        return "\n".join(lines[-tail:])

    def wait_healthy(self, timeout: float = STARTUP_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"langgraph dev exited with {self.proc.returncode}:\n{self.log()}")
            if self.url is None:  # it moves to a random port if the asked one is taken
                match = _API_URL.search(self.log_path.read_text(encoding="utf-8", errors="replace"))
                self.url = match.group(1).rstrip("/") if match else None
            if self.url is not None:
                try:
                    with urllib.request.urlopen(f"{self.url}/ok", timeout=5) as response:
                        if response.status == 200:
                            return self.url
                except (urllib.error.URLError, OSError):
                    pass
            time.sleep(0.5)
        pytest.fail(f"langgraph dev was not healthy after {timeout:.0f}s (url={self.url}):\n{self.log()}")

    def stop(self, timeout: float = 20) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    try:
                        os.killpg(self.proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    self.proc.wait(timeout=timeout)
            else:  # the server is gone; make sure nothing it started lingers
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        finally:
            self._log.close()


def inprocess_client(graphs: Mapping[str, Any], calls: list[dict[str, Any]] | None = None) -> Any:
    """A `langgraph_sdk` sync client whose transport answers ``POST /runs/stream`` by running
    the named compiled graph here: the real `RemoteGraph` / SDK / SSE code paths, no socket."""
    from langgraph_sdk.client import SyncLangGraphClient

    def handle(request: httpx.Request) -> httpx.Response:
        if request.method != "POST" or request.url.path != "/runs/stream":
            return httpx.Response(404, json={"detail": f"not served: {request.method} {request.url.path}"})
        body = json.loads(request.content)
        if calls is not None:
            calls.append(body)
        graph = graphs.get(body["assistant_id"])
        if graph is None:
            return httpx.Response(404, json={"detail": f"assistant {body['assistant_id']!r} not found"})
        modes = [m for m in body.get("stream_mode") or ["values"] if m in ("values", "updates")]
        events = [("metadata", {"run_id": str(uuid.uuid4())})]
        try:
            events += list(graph.stream(body.get("input"), stream_mode=modes))
        except Exception as exc:  # noqa: BLE001 - the server reports it as an error event
            events.append(("error", {"error": type(exc).__name__, "message": str(exc)}))
        sse = "".join(f"event: {mode}\ndata: {json.dumps(data)}\n\n" for mode, data in events)
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=sse.encode())

    http = httpx.Client(base_url="http://remote.test", transport=httpx.MockTransport(handle))
    return SyncLangGraphClient(http)
