"""`ModelPool`: one checkpoint ref plus load options → one model instance per process.

The key of a model is its *ref* (a local path, normalised to an absolute real path so two
spellings of one folder are one model; anything else is taken as a model id, verbatim) plus
its load options: the class loaded, the subfolder, dtype, device and any other hashable
options. A ref asked for with other options is another model (the options are part of the
key), never an error.

* Lazy: nothing loads before the first `get`.
* Thread-safe: each key has its own lock, so two threads asking for one key load it once,
  while loads of different keys run in parallel. The pool-wide lock is only held for
  dictionary updates, never during a load; a hit costs a few microseconds.
* `share=False` is the opt-out: a fresh, independent load that the pool does not keep.
* `aget` loads off the event loop (`asyncio.to_thread`), as LangGraph's dev server demands.
* Memory budget: with `max_bytes`, after each load (and when a hold is released) the least
  recently used models that nobody holds are dropped until the total fits. A held model
  (`with pool.hold(...)`, or a `pool.lease(...)`) is never dropped; when everything left is
  held the pool stays over budget and logs a warning; it never fails a run. Dropping only
  removes the pool's reference: a block still holding the object keeps it alive, and the
  next `get` of that key loads it again.
* Bytes are the parameter and buffer bytes of the torch modules in a value: a module, or a
  bundle holding modules (a ``(model, tokenizer)`` tuple, a dict, a dataclass such as
  `LoadedModel`, a diffusers pipeline's ``components``); each tensor counted once. Other
  objects (tokenizers) count 0.
* Safetensors only: the default loader refuses a folder holding only pickled weights
  (`PickleCheckpointError`) unless ``allow_pickle=True``, and then reads them with
  ``weights_only=True`` (see `worldgen.local_models.safety`).

A shared model shares all of its state: train/eval mode, `requires_grad`, weights loaded
into it. Use ``share=False`` for a copy to train on its own.

The pool of a call is, in order: the one passed explicitly, the one set by ``with
using_pool(pool):`` (a context variable, so it follows threads started with
``asyncio.to_thread``), the ``model_pool`` of the running LangGraph config
(``config["configurable"]["model_pool"]``) or runtime context,
and the process default (`default_pool`, replaceable with `set_default_pool`). The default
pool lives as long as the process (no budget unless one is set).
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

__all__ = [
    "Lease",
    "ModelNotFoundError",
    "ModelPool",
    "PoolKey",
    "current_requester",
    "default_pool",
    "model_nbytes",
    "normalise_ref",
    "requester",
    "requesting",
    "resolve_pool",
    "set_default_pool",
    "using_pool",
]

T = TypeVar("T")


class ModelNotFoundError(FileNotFoundError):
    """A ref the pool could not load; the message names the ref and who asked for it."""

    def __init__(self, ref: str, requested_by: str | None, cause: BaseException) -> None:
        who = f" (requested by {requested_by!r})" if requested_by else ""
        super().__init__(f"model {ref!r} could not be loaded{who}: {cause}")
        self.ref = ref
        self.requested_by = requested_by


# ------------------------------------------------------------------------------- keys
def normalise_ref(ref: str | os.PathLike[str]) -> str:
    """An absolute real path for anything that names an existing path or looks like one
    (absolute, ``~``, ``./``, ``../``); other strings are model ids, kept as they are."""
    text = os.fspath(ref)
    looks_like_path = isinstance(ref, os.PathLike) or text.startswith(("/", "~", "./", "../", "."))
    expanded = os.path.expanduser(text)
    if looks_like_path or os.path.exists(expanded):
        return os.path.realpath(expanded)
    return text


def _class_name(cls: Any) -> str | None:
    if cls is None:
        return None
    if isinstance(cls, str):
        return cls
    return f"{cls.__module__}.{cls.__qualname__}"


def _dtype_name(dtype: Any) -> str | None:
    return None if dtype is None else str(dtype).removeprefix("torch.")


def _device_name(device: Any) -> str | None:
    if device is None:
        return None
    try:
        import torch

        return str(torch.device(device))
    except Exception:  # noqa: BLE001 - torch missing or an unusual device spec: keep its text
        return str(device)


def _freeze(value: Any) -> Hashable:
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_freeze(v) for v in value]
        return tuple(sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items)
    if isinstance(value, type):
        return _class_name(value)
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value  # type: ignore[no-any-return]


@dataclass(frozen=True)
class PoolKey:
    """What makes two loads "the same model": the ref and every load option."""

    ref: str
    cls: str | None = None
    subfolder: str | None = None
    dtype: str | None = None
    device: str | None = None
    options: Hashable = ()

    @classmethod
    def make(
        cls,
        ref: str | os.PathLike[str],
        *,
        model_cls: Any = None,
        subfolder: str | None = None,
        dtype: Any = None,
        device: Any = None,
        options: Mapping[str, Any] | None = None,
    ) -> PoolKey:
        return cls(
            normalise_ref(ref), _class_name(model_cls), subfolder or None,
            _dtype_name(dtype), _device_name(device), _freeze(dict(options or {})),
        )

    def describe(self) -> dict[str, Any]:
        return {"ref": self.ref, "cls": self.cls, "subfolder": self.subfolder,
                "dtype": self.dtype, "device": self.device}


def model_nbytes(value: Any) -> int:
    """Parameter + buffer bytes of the torch modules in `value`, each tensor once.

    `value` may be a module or a bundle of them (tuple/list/set, mapping, dataclass, or an
    object with a ``components`` mapping like a diffusers pipeline), nested a few levels;
    anything else counts 0. An LLM entry ``(model, tokenizer)`` thus counts its model, so the
    memory budget sees it."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        return 0
    seen: set[int] = set()
    return _nbytes(value, torch, seen, depth=4)


def _nbytes(value: Any, torch: Any, seen: set[int], depth: int) -> int:
    if isinstance(value, torch.nn.Module):
        total = 0
        for tensor in (*value.parameters(), *value.buffers()):
            if id(tensor) not in seen:
                seen.add(id(tensor))
                total += tensor.numel() * tensor.element_size()
        return total
    if depth <= 0 or value is None or isinstance(value, (str, bytes, int, float, bool)):
        return 0
    if isinstance(value, Mapping):
        children: Any = value.values()
    elif isinstance(value, (list, tuple, set, frozenset)):
        children = value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        children = (getattr(value, f.name) for f in dataclasses.fields(value))
    elif isinstance(getattr(value, "components", None), Mapping):  # diffusers pipelines
        children = value.components.values()
    else:
        return 0
    return sum(_nbytes(child, torch, seen, depth - 1) for child in children)


# ----------------------------------------------------------------------------- pool
@dataclass
class _Entry:
    value: Any
    nbytes: int
    hits: int = 0


@dataclass
class _Hold:
    """An active hold: matches entries by ref (+ given options) or by the object itself."""

    ref: str | None = None
    obj_id: int | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def matches(self, key: PoolKey, entry: _Entry) -> bool:
        if self.obj_id is not None:
            return id(entry.value) == self.obj_id
        if key.ref != self.ref:
            return False
        return all(getattr(key, name) == want for name, want in self.options.items())


def _key(ref: str | os.PathLike[str], *, cls: Any, subfolder: str | None, dtype: Any, device: Any,
         options: Mapping[str, Any] | None, allow_pickle: bool | None) -> PoolKey:
    """The key of `get` and `aget`: the pickle opt-in is a load option (an opted-in load is
    another object than a safetensors-only one)."""
    if allow_pickle:
        options = {**(options or {}), "allow_pickle": True}
    return PoolKey.make(ref, model_cls=cls, subfolder=subfolder, dtype=dtype, device=device, options=options)


class Lease(Generic[T]):
    """A model taken from the pool and marked in use until `release()` (or the end of a
    ``with`` block): the pool never evicts it meanwhile."""

    def __init__(self, pool: ModelPool, value: T, hold: _Hold) -> None:
        self.pool, self.value, self._hold = pool, value, hold
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.pool._release(self._hold)

    def __enter__(self) -> T:
        return self.value

    def __exit__(self, *exc: object) -> None:
        self.release()


class ModelPool:
    """One instance per (ref, load options) in the process; see the module docstring."""

    def __init__(self, max_bytes: int | None = None) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()  # guards the tables below; never held during a load
        self._entries: OrderedDict[PoolKey, _Entry] = OrderedDict()  # LRU first
        self._key_locks: dict[PoolKey, threading.Lock] = {}
        self._holds: list[_Hold] = []
        self._hits = self._loads = self._evictions = self._unshared_loads = 0

    # ------------------------------------------------------------------ get
    def get(
        self,
        ref: str | os.PathLike[str],
        loader: Callable[[], T] | None = None,
        *,
        cls: Any = None,
        subfolder: str | None = None,
        dtype: Any = None,
        device: Any = None,
        options: Mapping[str, Any] | None = None,
        share: bool = True,
        requested_by: str | None = None,
        allow_pickle: bool = False,
    ) -> T:
        """The model for this key, loading it on first use with ``loader()``.

        Without `loader`, ``cls.from_pretrained(ref, subfolder=..., torch_dtype=...,
        local_files_only=True, use_safetensors=True)`` is used; a folder holding only pickled
        weights raises `PickleCheckpointError` unless `allow_pickle` (part of the key), which
        loads them with ``weights_only=True``. A torch module is moved to `dtype`/`device`
        when they are given. `share=False` returns a fresh load the pool does not keep. A
        missing ref raises `ModelNotFoundError` naming `ref` and `requested_by` (default: the
        innermost ``with requesting(...)``).
        """
        requested_by = requester(requested_by)
        key = _key(ref, cls=cls, subfolder=subfolder, dtype=dtype, device=device, options=options,
                   allow_pickle=allow_pickle)
        if not share:
            value = self._load(key, ref, loader, cls, dtype, device, requested_by)
            with self._lock:
                self._unshared_loads += 1
            return value
        hit = self._lookup(key)
        if hit is not None:
            return hit.value  # type: ignore[no-any-return]
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            hit = self._lookup(key)  # another thread may have loaded it while we waited
            if hit is not None:
                return hit.value  # type: ignore[no-any-return]
            value = self._load(key, ref, loader, cls, dtype, device, requested_by)
            nbytes = model_nbytes(value)
            with self._lock:
                self._entries[key] = _Entry(value, nbytes)
                self._loads += 1
                self._key_locks.pop(key, None)
                self._evict_locked(keep=key)
        return value

    async def aget(self, ref: str | os.PathLike[str], loader: Callable[[], T] | None = None,
                   **kwargs: Any) -> T:
        """`get` without blocking the event loop: a hit returns at once, a load runs in a
        worker thread."""
        if kwargs.get("share", True):
            names = ("cls", "subfolder", "dtype", "device", "options", "allow_pickle")
            hit = self._lookup(_key(ref, **{k: kwargs.get(k) for k in names}))
            if hit is not None:
                return hit.value  # type: ignore[no-any-return]
        return await asyncio.to_thread(self.get, ref, loader, **kwargs)

    def lease(self, ref: str | os.PathLike[str], loader: Callable[[], T] | None = None,
              **kwargs: Any) -> Lease[T]:
        """`get` and hold the result until the lease is released."""
        value = self.get(ref, loader, **kwargs)
        hold = _Hold(obj_id=id(value))
        with self._lock:
            self._holds.append(hold)
        return Lease(self, value, hold)

    @contextmanager
    def hold(self, *refs: Any, **options: Any) -> Iterator[None]:
        """Mark models in use for the block: each of `refs` is a ref (every model loaded
        from it, or only those matching the given `cls`/`subfolder`/`dtype`/`device`) or a
        model object taken from the pool. Holding a ref before its load also protects it."""
        wanted = {
            "cls": _class_name(options.pop("cls", None)),
            "subfolder": options.pop("subfolder", None),
            "dtype": _dtype_name(options.pop("dtype", None)),
            "device": _device_name(options.pop("device", None)),
        }
        if options:
            raise TypeError(f"hold() got unexpected options {sorted(options)}")
        wanted = {k: v for k, v in wanted.items() if v is not None}
        holds = [
            _Hold(ref=normalise_ref(r), options=wanted) if isinstance(r, (str, os.PathLike))
            else _Hold(obj_id=id(r))
            for r in refs
        ]
        with self._lock:
            self._holds.extend(holds)
        try:
            yield
        finally:
            for h in holds:
                self._release(h)

    # ------------------------------------------------------------- managing
    def stats(self) -> dict[str, Any]:
        """Loaded models (LRU first) with their bytes and hits, and the pool's counters."""
        with self._lock:
            models = [
                {**key.describe(), "bytes": e.nbytes, "hits": e.hits, "held": self._held(key, e)}
                for key, e in self._entries.items()
            ]
            return {
                "models": models,
                "bytes": sum(m["bytes"] for m in models),
                "max_bytes": self.max_bytes,
                "hits": self._hits,
                "loads": self._loads,
                "unshared_loads": self._unshared_loads,
                "evictions": self._evictions,
            }

    def __contains__(self, ref: object) -> bool:
        if not isinstance(ref, (str, os.PathLike)):
            return False
        norm = normalise_ref(ref)
        with self._lock:
            return any(k.ref == norm for k in self._entries)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
        """Forget every model (blocks keep theirs); counters are kept."""
        with self._lock:
            self._entries.clear()

    def set_budget(self, max_bytes: int | None) -> None:
        with self._lock:
            self.max_bytes = max_bytes
            self._evict_locked()

    # ------------------------------------------------------------- internals
    def _lookup(self, key: PoolKey) -> _Entry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                entry.hits += 1
                self._hits += 1
                self._entries.move_to_end(key)
            return entry

    def _load(self, key: PoolKey, ref: Any, loader: Callable[[], Any] | None, cls: Any,
              dtype: Any, device: Any, requested_by: str | None) -> Any:
        try:
            if loader is not None:
                value = loader()
            elif cls is not None:
                from worldgen.local_models.safety import safe_load_kwargs

                folder = os.path.join(key.ref, key.subfolder or "")
                allow = ("allow_pickle", True) in key.options
                kwargs: dict[str, Any] = {
                    "local_files_only": True,
                    **safe_load_kwargs(folder, ref=folder.rstrip(os.sep), allow_pickle=allow,
                                       requested_by=requested_by),
                }
                if key.subfolder:
                    kwargs["subfolder"] = key.subfolder
                if dtype is not None:
                    kwargs["torch_dtype"] = dtype
                value = cls.from_pretrained(key.ref, **kwargs)
            else:
                raise TypeError("ModelPool.get needs a loader or a cls with from_pretrained")
        except ModelNotFoundError:
            raise  # a nested load (or the loader) already named the ref and who asked
        except OSError as exc:  # FileNotFoundError; transformers/diffusers report missing files as OSError
            raise ModelNotFoundError(key.ref, requested_by, exc) from exc
        if dtype is not None or device is not None:
            import sys

            torch = sys.modules.get("torch")
            if torch is not None and isinstance(value, torch.nn.Module):
                value = value.to(device=key.device, dtype=getattr(torch, key.dtype) if key.dtype else None)
        return value

    def _held(self, key: PoolKey, entry: _Entry) -> bool:
        return any(h.matches(key, entry) for h in self._holds)

    def _release(self, hold: _Hold) -> None:
        with self._lock:
            for i, h in enumerate(self._holds):
                if h is hold:
                    del self._holds[i]
                    break
            self._evict_locked()

    def _evict_locked(self, keep: PoolKey | None = None) -> None:
        if self.max_bytes is None:
            return
        total = sum(e.nbytes for e in self._entries.values())
        if total <= self.max_bytes:
            return
        for key in list(self._entries):  # least recently used first
            if total <= self.max_bytes:
                break
            entry = self._entries[key]
            if key == keep or self._held(key, entry):
                continue
            del self._entries[key]
            total -= entry.nbytes
            self._evictions += 1
            logger.info("model pool: evicted %s (%d bytes)", key.ref, entry.nbytes)
        if total > self.max_bytes:
            logger.warning(
                "model pool over budget: %d bytes > max_bytes=%d, and every remaining model is "
                "held or just loaded; continuing", total, self.max_bytes,
            )


# ----------------------------------------------------------------------- defaults
_DEFAULT: ModelPool | None = None
_DEFAULT_LOCK = threading.Lock()


def default_pool() -> ModelPool:
    """The process-wide pool (created on first use, no memory budget)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = ModelPool()
        return _DEFAULT


def set_default_pool(pool: ModelPool | None) -> ModelPool | None:
    """Replace the process default (None: a fresh one on next use); returns the old one."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        old, _DEFAULT = _DEFAULT, pool
        return old


def _pool_from_langgraph() -> ModelPool | None:
    """The ``model_pool`` of the running LangGraph config or runtime context, if any
    (outside a run both lookups raise, which means "none")."""
    found: Any = None
    with suppress(Exception):
        from langgraph.config import get_config

        found = get_config().get("configurable", {}).get("model_pool")
    if not isinstance(found, ModelPool):
        with suppress(Exception):
            from langgraph.runtime import get_runtime

            context = get_runtime().context
            found = (context.get("model_pool") if isinstance(context, Mapping)
                     else getattr(context, "model_pool", None))
    return found if isinstance(found, ModelPool) else None


_CURRENT: contextvars.ContextVar[ModelPool | None] = contextvars.ContextVar("worldgen_model_pool", default=None)
_REQUESTER: contextvars.ContextVar[str | None] = contextvars.ContextVar("worldgen_model_requester", default=None)


@contextmanager
def using_pool(pool: ModelPool | None) -> Iterator[ModelPool | None]:
    """Make `pool` the one `resolve_pool()` finds in this context (None: no override), so
    blocks built inside (which do not take a pool argument) load through it."""
    token = _CURRENT.set(pool)
    try:
        yield pool
    finally:
        _CURRENT.reset(token)


@contextmanager
def requesting(name: str | None) -> Iterator[None]:
    """Name who asks for the models loaded inside (a graph node, a tool), for the errors of
    loads that do not pass ``requested_by`` themselves."""
    token = _REQUESTER.set(name)
    try:
        yield
    finally:
        _REQUESTER.reset(token)


def current_requester() -> str | None:
    """The name set by the innermost ``with requesting(...)``, if any."""
    return _REQUESTER.get()


def requester(explicit: str | None = None) -> str | None:
    """Who asks, for error messages: `explicit` (e.g. a block id) and the surrounding
    ``requesting(...)`` name (e.g. the graph node building it), whichever exist."""
    context = _REQUESTER.get()
    if explicit and context and explicit not in context and context not in explicit:
        return f"{explicit} in {context}"
    return explicit or context


def resolve_pool(pool: ModelPool | None = None) -> ModelPool:
    """`pool` if given, else the one of ``with using_pool(...)``, else the running LangGraph
    config's/context's ``model_pool``, else the process default."""
    if pool is not None:  # not `pool or ...`: an empty pool has len 0
        return pool
    current = _CURRENT.get()
    if current is not None:
        return current
    found = _pool_from_langgraph()
    return found if found is not None else default_pool()

