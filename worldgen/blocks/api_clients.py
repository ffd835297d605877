"""One API client per remote model, shared by every block and chat model that uses it.

Levels.md §5 asks for "one ref → one instance"; for an API model the ref is the provider, the
``model_id`` and the endpoint. `get_client` returns the same `ApiClient` for the same
`ClientKey` anywhere in the process (ten nodes naming one model share one connection pool and
one retry budget), and `ApiClient` hands out the SDK objects built on it: the ``openai``
clients, a LangChain ``ChatOpenAI`` and ``OpenAIEmbeddings``.

Secrets: the key never enters a config, a key or a repr. A client holds only the *name* of
the environment variable (``api_key_env``); the ``openai`` clients and the LangChain objects
get `ApiClient.api_key` as a callback read at each request, so a rotated key is picked up and
nothing that worldgen saves, traces or shows holds it (the SDK keeps the last value it sent
in memory, on its own client object).

Retries: ``max_retries`` / ``timeout`` configure the ``openai`` clients only (their backoff
honours ``Retry-After``); the LangChain objects run on those clients and add none of their own.
`is_transient` is the one place saying which failures are worth retrying again later.

The cache is process-wide and thread-safe (one lock, held only while a client is created:
creation is local, no request is made). Clients live as long as the process, unless
`clear_clients` drops them (tests).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any, TypedDict, Unpack
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "DEFAULT_API_KEY_ENV",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_TIMEOUT",
    "PROVIDERS",
    "ApiCallError",
    "ApiClient",
    "ApiConfigError",
    "ClientKey",
    "ClientOptions",
    "cached_clients",
    "clear_clients",
    "get_client",
    "is_transient",
    "normalise_provider",
]

DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
DEFAULT_MAX_RETRIES = 2
DEFAULT_TIMEOUT = 60.0
OPENAI_URL = "https://api.openai.com/v1"
PLACEHOLDER_KEY = "not-needed"
"""Local OpenAI-compatible servers ignore the key, but the SDK insists on one."""

#: provider name → default endpoint (None: ``endpoint_url`` is required). All speak the
#: OpenAI wire format; they differ only in where they live.
PROVIDERS: dict[str, str | None] = {"openai": OPENAI_URL, "openai_compatible": None}
_ALIASES = {
    "openai-compatible": "openai_compatible", "vllm": "openai_compatible", "ollama": "openai_compatible",
    "llamacpp": "openai_compatible", "llama.cpp": "openai_compatible", "lmstudio": "openai_compatible",
    "sglang": "openai_compatible", "tgi": "openai_compatible",
}


class ApiConfigError(ValueError):
    """An API block or client is configured wrongly (unknown provider, missing key variable…)."""


class ApiCallError(RuntimeError):
    """A request failed for good (after the client's retries); names who asked and what for."""

    def __init__(self, message: str, *, status_code: int | None = None, retryable: bool = False) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retryable = retryable


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` (or what it wraps, e.g. a TransitionError's cause) is worth retrying later:
    HTTP 408/409/429/5xx, timeouts and connection errors, as LangGraph's ``RetryPolicy(retry_on=...)``
    expects. The client has already retried these ``max_retries`` times with backoff."""
    import openai

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ApiCallError):
            return current.retryable
        if isinstance(current, openai.APIConnectionError):
            return True
        if isinstance(current, openai.APIStatusError):
            return current.status_code in (408, 409, 429) or current.status_code >= 500
        current = current.__cause__
    return False


def normalise_provider(provider: str | None) -> str:
    name = (provider or "openai").strip().lower()
    name = _ALIASES.get(name, name)
    if name not in PROVIDERS:
        raise ApiConfigError(
            f"unknown API provider {provider!r}; supported: {sorted(PROVIDERS)} "
            f"(aliases {sorted(_ALIASES)}); every provider here speaks the OpenAI HTTP format"
        )
    return name


def _clean_url(url: str) -> str:
    """The endpoint without credentials or a trailing slash (user:pass@ must never be keyed or logged)."""
    parts = urlsplit(url.strip())
    if not parts.scheme or not parts.netloc:
        raise ApiConfigError(f"endpoint_url must be an absolute http(s) URL, got {url!r}")
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), parts.query, ""))


class ClientOptions(TypedDict, total=False):
    """The keyword options of `ClientKey.make` (and so of `get_client`); defaults there."""

    endpoint_url: str | None
    api_key_env: str | None
    max_retries: int
    timeout: float | None


@dataclass(frozen=True)
class ClientKey:
    """What makes two requests go through one client.

    `endpoint_url` is resolved (explicit, else ``OPENAI_BASE_URL`` for provider openai, else the
    provider's default). The key variable and the retry/timeout options are part of the key:
    two blocks with other credentials or other retry budgets must not share a client.
    """

    provider: str
    model_id: str
    endpoint_url: str
    api_key_env: str = DEFAULT_API_KEY_ENV
    key_required: bool = True
    max_retries: int = DEFAULT_MAX_RETRIES
    timeout: float | None = DEFAULT_TIMEOUT

    @classmethod
    def make(
        cls,
        provider: str | None,
        model_id: str,
        *,
        endpoint_url: str | None = None,
        api_key_env: str | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> ClientKey:
        name = normalise_provider(provider)
        if not model_id or not str(model_id).strip():
            raise ApiConfigError("an API model needs a non-empty model_id")
        url = endpoint_url or (os.environ.get("OPENAI_BASE_URL") if name == "openai" else None) or PROVIDERS[name]
        if not url:
            raise ApiConfigError(f"provider {name!r} has no default endpoint: set endpoint_url")
        url = _clean_url(url)
        # a named variable must be set; the default one may be absent for a self-hosted server
        key_required = api_key_env is not None or url == OPENAI_URL
        if max_retries < 0:
            raise ApiConfigError(f"max_retries must be >= 0, got {max_retries}")
        return cls(name, str(model_id), url, api_key_env or DEFAULT_API_KEY_ENV, key_required,
                   int(max_retries), None if timeout is None else float(timeout))

    def describe(self) -> str:
        return f"provider {self.provider!r}, model {self.model_id!r} at {self.endpoint_url}"


@dataclass(eq=False)
class ApiClient:
    """The SDK objects for one `ClientKey`, created once and shared.

    ``sync`` / ``aio`` are ``openai.OpenAI`` / ``openai.AsyncOpenAI`` (retries with backoff on
    429, 5xx, timeouts and connection errors: ``max_retries``); `chat_model()` and
    `embeddings()` are LangChain objects over those same clients.
    """

    key: ClientKey
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)  # factories nest
    _objects: dict[str, Any] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:  # the key is never an attribute, but say so explicitly
        return f"ApiClient({self.key.describe()}, key from ${self.key.api_key_env})"

    # ------------------------------------------------------------------ key
    def api_key(self) -> str:
        """The key, read from the environment now (never stored by worldgen)."""
        value = os.environ.get(self.key.api_key_env)
        if value:
            return value
        if not self.key.key_required:
            return PLACEHOLDER_KEY
        hint = " (or set OPENAI_BASE_URL / endpoint_url to a self-hosted server)" if self.key.provider == "openai" else ""
        raise ApiConfigError(
            f"{self.key.describe()}: environment variable {self.key.api_key_env} is not set; it must hold "
            f"the API key{hint}"
        )

    def scrub(self, text: str) -> str:
        """`text` with the current key (if any) masked: error bodies may echo headers back."""
        value = os.environ.get(self.key.api_key_env)
        return text.replace(value, "***") if value and len(value) >= 4 else text

    # ---------------------------------------------------------- SDK objects
    def _get(self, name: str, factory: Any) -> Any:
        obj = self._objects.get(name)
        if obj is None:
            with self._lock:
                obj = self._objects.get(name)
                if obj is None:
                    obj = self._objects[name] = factory()
        return obj

    @property
    def sync(self) -> Any:
        """The ``openai.OpenAI`` client (no request is made to build it)."""

        def build() -> Any:
            import openai

            return openai.OpenAI(
                api_key=self.api_key, base_url=self.key.endpoint_url,
                max_retries=self.key.max_retries, timeout=self.key.timeout,
            )

        return self._get("sync", build)

    @property
    def aio(self) -> Any:
        """The ``openai.AsyncOpenAI`` client, same endpoint, key and retries."""

        def build() -> Any:
            import openai

            async def api_key() -> str:  # AsyncOpenAI takes an async key callback
                return self.api_key()

            return openai.AsyncOpenAI(
                api_key=api_key, base_url=self.key.endpoint_url,
                max_retries=self.key.max_retries, timeout=self.key.timeout,
            )

        return self._get("aio", build)

    def chat_model(self) -> Any:
        """A ``ChatOpenAI`` over the shared clients (one per ApiClient).

        ``api_key`` is the callback: left out, LangChain would copy ``OPENAI_API_KEY`` (or a
        LangSmith gateway key) from the environment onto the model, which is dumped and traced.
        No ``max_retries``: with the clients given LangChain ignores it (see the module doc).
        """

        def build() -> Any:
            from langchain_openai import ChatOpenAI

            return ChatOpenAI(
                model=self.key.model_id, client=self.sync.chat.completions, root_client=self.sync,
                async_client=self.aio.chat.completions, root_async_client=self.aio,
                api_key=self.api_key, base_url=self.key.endpoint_url,
            )

        return self._get("chat", build)

    def embeddings(self) -> Any:
        """An ``OpenAIEmbeddings`` over the shared clients; raw text is sent to non-OpenAI
        servers (their tokenizers are not tiktoken's). Key callback and retries as `chat_model`."""

        def build() -> Any:
            from langchain_openai import OpenAIEmbeddings

            return OpenAIEmbeddings(
                model=self.key.model_id, client=self.sync.embeddings, async_client=self.aio.embeddings,
                check_embedding_ctx_length=self.key.endpoint_url == OPENAI_URL, api_key=self.api_key,
            )

        return self._get("embeddings", build)

    def close(self) -> None:
        """Close the sync client's connections (the async one needs an event loop to close)."""
        sync = self._objects.get("sync")
        if sync is not None:
            sync.close()


_CLIENTS: dict[ClientKey, ApiClient] = {}
_CLIENTS_LOCK = threading.Lock()


def get_client(
    provider: str | None, model_id: str, *, check_key: bool = True, **options: Unpack[ClientOptions]
) -> ApiClient:
    """The process's client for this model (created on first use; no request is made).
    `options` (``endpoint_url``, ``api_key_env``, ``max_retries``, ``timeout``) are those of
    `ClientKey.make`.

    With `check_key`, a missing required key variable raises `ApiConfigError` now rather than
    at the first request.
    """
    key = ClientKey.make(provider, model_id, **options)
    client = _CLIENTS.get(key)
    if client is None:
        with _CLIENTS_LOCK:
            client = _CLIENTS.setdefault(key, ApiClient(key))
    if check_key:
        client.api_key()
    return client


def cached_clients() -> list[ApiClient]:
    """Every client created so far (for inspection and tests)."""
    with _CLIENTS_LOCK:
        return list(_CLIENTS.values())


def clear_clients() -> None:
    """Forget (and close) every cached client; the next `get_client` creates new ones."""
    with _CLIENTS_LOCK:
        clients = list(_CLIENTS.values())
        _CLIENTS.clear()
    for client in clients:
        client.close()
