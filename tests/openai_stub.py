"""A real OpenAI-compatible HTTP server on loopback, for tests (no network beyond 127.0.0.1).

`OpenAIStub` runs a stdlib ``ThreadingHTTPServer`` on ``127.0.0.1`` (port 0: the OS picks a
free one) in a background thread, so the real ``openai`` / ``langchain-openai`` client code
paths — HTTP, JSON, SSE streaming, retries with backoff — run unmodified against it.

Endpoints: ``POST /v1/chat/completions`` (plain text, ``tool_calls`` replies, and SSE when
``stream`` is true), ``POST /v1/embeddings`` (deterministic vectors; ``float`` or ``base64``
encoding), ``POST /v1/images/generations`` (``b64_json`` PNGs of the requested size),
``GET /v1/models``. Every request is recorded (path, headers, parsed body) so tests can check
the Authorization header and that no secret travelled in a body. `fail_next` makes the next N
requests fail with 503/429 (with ``retry-after-ms`` so the client's backoff stays short), and
`fail_always` fails everything until `recover`.

Replies: a queue (`script`) first, else ``reply_fn(body) -> str | Reply``, else ``"ok"``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

__all__ = ["OpenAIStub", "RecordedRequest", "Reply", "tool_call"]


@dataclass
class Reply:
    """A scripted chat reply: text and/or tool calls (``[{"name", "arguments"}]``)."""

    content: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


def tool_call(tool_name: str, /, **arguments: Any) -> dict[str, Any]:
    return {"name": tool_name, "arguments": arguments}


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    raw: bytes
    body: Any

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


class OpenAIStub:
    """Start with ``with OpenAIStub() as stub:`` (or `start`/`stop`); `base_url` ends in /v1."""

    def __init__(self, *, reply_fn: Callable[[dict[str, Any]], str | Reply] | None = None, dim: int = 8) -> None:
        self.reply_fn = reply_fn
        self.script: list[str | Reply] = []
        self.dim = dim
        self.requests: list[RecordedRequest] = []
        self.failures: list[RecordedRequest] = []
        self._fail_left = 0
        self._fail_status = 503
        self._fail_forever = False
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle
    def start(self) -> Self:
        stub = self

        class Handler(_Handler):
            owner = stub

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="openai-stub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "stub not started"
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # ------------------------------------------------------------- control
    def fail_next(self, n: int, status: int = 503) -> None:
        """Fail the next `n` requests (any endpoint) with `status`; status 0 drops the
        connection without a reply (a connection error for the client)."""
        with self._lock:
            self._fail_left, self._fail_status = n, status

    def fail_always(self, status: int = 503) -> None:
        with self._lock:
            self._fail_forever, self._fail_status = True, status

    def recover(self) -> None:
        with self._lock:
            self._fail_forever, self._fail_left = False, 0

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith(path)]

    def _take_failure(self) -> int | None:
        with self._lock:
            if self._fail_forever:
                return self._fail_status
            if self._fail_left > 0:
                self._fail_left -= 1
                return self._fail_status
        return None

    def _next_reply(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            scripted = self.script.pop(0) if self.script else None
        reply = scripted if scripted is not None else (self.reply_fn(body) if self.reply_fn else "ok")
        return reply if isinstance(reply, Reply) else Reply(content=str(reply))

    # ----------------------------------------------------------- endpoints
    def chat(self, body: dict[str, Any]) -> tuple[Reply, dict[str, Any]]:
        reply = self._next_reply(body)
        message: dict[str, Any] = {"role": "assistant", "content": reply.content}
        if reply.tool_calls:
            message["tool_calls"] = [
                {"id": f"call_{i}_{int(time.time() * 1000) % 100000}", "type": "function",
                 "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}}
                for i, c in enumerate(reply.tool_calls)
            ]
        prompt_tokens = sum(len(json.dumps(m.get("content"))) // 4 + 1 for m in body.get("messages", []))
        completion_tokens = len(reply.content or "") // 4 + 1
        return reply, {
            "id": "chatcmpl-stub", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "stub"),
            "choices": [{"index": 0, "message": message,
                         "finish_reason": "tool_calls" if reply.tool_calls else "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    def embedding(self, text: str) -> list[float]:
        digest = hashlib.sha256(text.encode()).digest()
        return [round(b / 255.0 - 0.5, 6) for b in (digest * (self.dim // len(digest) + 1))[: self.dim]]

    def image_png(self, prompt: str, width: int, height: int) -> bytes:
        from PIL import Image

        colour = tuple(hashlib.sha256(prompt.encode()).digest()[:3])
        buffer = io.BytesIO()
        Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
        return buffer.getvalue()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hanging up (a retry, a closed pool) are normal here; anything else is printed."""
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    owner: OpenAIStub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def _record(self) -> RecordedRequest:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        request = RecordedRequest(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, raw, body)
        with self.owner._lock:
            self.owner.requests.append(request)
        return request

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._record()
        if self.path.rstrip("/").endswith("/v1/models"):
            self._json(200, {"object": "list", "data": [{"id": "stub-model", "object": "model", "owned_by": "stub"}]})
        else:
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:
        request = self._record()
        status = self.owner._take_failure()
        if status is not None:
            with self.owner._lock:
                self.owner.failures.append(request)
            if status == 0:  # hang up: the client sees a broken connection
                self.close_connection = True
                return
            kind = "rate_limit_exceeded" if status == 429 else "server_error"
            self._json(status, {"error": {"message": f"stub says {status}", "type": kind}}, {"retry-after-ms": "5"})
            return
        body = request.body if isinstance(request.body, dict) else {}
        path = self.path.split("?")[0].rstrip("/")
        if path.endswith("/chat/completions"):
            reply, payload = self.owner.chat(body)
            if body.get("stream"):
                self._stream(reply, payload, bool((body.get("stream_options") or {}).get("include_usage")))
            else:
                self._json(200, payload)
        elif path.endswith("/embeddings"):
            inputs = body.get("input")
            texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
            base64_mode = body.get("encoding_format") == "base64"
            data = []
            for i, text in enumerate(texts):
                vector = self.owner.embedding(text if isinstance(text, str) else json.dumps(text))
                value: Any = (
                    base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode() if base64_mode else vector
                )
                data.append({"object": "embedding", "index": i, "embedding": value})
            self._json(200, {"object": "list", "data": data, "model": body.get("model"),
                             "usage": {"prompt_tokens": len(texts), "total_tokens": len(texts)}})
        elif path.endswith("/images/generations"):
            width, _, height = str(body.get("size") or "64x64").partition("x")
            png = self.owner.image_png(str(body.get("prompt", "")), int(width), int(height or width))
            self._json(200, {"created": int(time.time()),
                             "data": [{"b64_json": base64.b64encode(png).decode(), "revised_prompt": body.get("prompt")}]})
        else:
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def _stream(self, reply: Reply, payload: dict[str, Any], include_usage: bool) -> None:
        """Server-sent events as the OpenAI API sends them: role, content pieces, finish, [DONE]."""
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("connection", "close")
        self.end_headers()
        self.close_connection = True
        base = {"id": payload["id"], "object": "chat.completion.chunk", "created": payload["created"],
                "model": payload["model"]}

        def send(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> None:
            chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()

        send({"role": "assistant", "content": ""})
        text = reply.content or ""
        for start in range(0, len(text), 7):
            send({"content": text[start:start + 7]})
        message = payload["choices"][0]["message"]
        for i, call in enumerate(message.get("tool_calls") or []):
            send({"tool_calls": [{"index": i, **call}]})
        send({}, payload["choices"][0]["finish_reason"])
        if include_usage:
            chunk = {**base, "choices": [], "usage": payload["usage"]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
