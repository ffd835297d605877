"""Pickle safety for local checkpoints: safetensors only, unless the user opts in.

A ``pytorch_model.bin`` / ``.pt`` file is a pickle, and unpickling runs arbitrary code, so a
folder holding only pickled weights is refused with `PickleCheckpointError`, which names the
ref and the opt-in (``allow_pickle=True``). With the opt-in the weights are read by
``torch.load(weights_only=True)`` (transformers' and diffusers' default for ``.bin`` files,
passed explicitly where the API allows), which only rebuilds tensors and plain containers:
a pickle that tries to call anything else still fails.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "PICKLE_SUFFIXES",
    "PickleCheckpointError",
    "pickle_files",
    "safe_load_kwargs",
    "weights_format",
]

PICKLE_SUFFIXES: frozenset[str] = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"})
_SAFE_SUFFIXES = frozenset({".safetensors"})
_OPT_IN = "pass allow_pickle=True to load it with torch.load(weights_only=True)"


class PickleCheckpointError(ValueError):
    """A checkpoint whose weights exist only as pickles, loaded without ``allow_pickle=True``.

    Not an `OSError`: it must not read as "model not found" (the files are there, and refused)."""

    def __init__(self, ref: str, files: list[str], requested_by: str | None = None) -> None:
        who = f" (requested by {requested_by!r})" if requested_by else ""
        shown = ", ".join(files[:4]) + (", …" if len(files) > 4 else "")
        super().__init__(
            f"checkpoint {ref!r}{who} holds only pickle weights ({shown}); pickles can run code "
            f"when loaded, so they are refused. Convert it to safetensors, or {_OPT_IN}."
        )
        self.ref = ref
        self.files = files
        self.requested_by = requested_by


def _weight_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES | _SAFE_SUFFIXES]


def weights_format(folder: str | os.PathLike[str]) -> Literal["safetensors", "pickle", "none"]:
    """What weights `folder` holds (not its subfolders): any safetensors file wins; ``none``
    for a missing folder or one without weights (a tokenizer, a scheduler)."""
    files = _weight_files(Path(folder))
    if any(p.suffix.lower() in _SAFE_SUFFIXES for p in files):
        return "safetensors"
    return "pickle" if files else "none"


def pickle_files(folder: str | os.PathLike[str], *, components: bool = False) -> list[str]:
    """Pickle weight files of `folder` (and, with `components`, of its pickle-only
    subfolders), relative to it, sorted."""
    root = Path(folder)
    folders = [root] + (sorted(p for p in root.iterdir() if p.is_dir()) if components and root.is_dir() else [])
    return sorted(
        p.relative_to(root).as_posix()
        for f in folders if weights_format(f) == "pickle"
        for p in _weight_files(f) if p.suffix.lower() in PICKLE_SUFFIXES
    )


def _is_pipeline(folder: Path) -> bool:
    return (folder / "model_index.json").is_file()


def _is_diffusers_component(folder: Path) -> bool:
    """diffusers writes ``_diffusers_version`` into a model's ``config.json`` (transformers
    writes ``transformers_version``)."""
    try:
        return "_diffusers_version" in json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False


def safe_load_kwargs(
    folder: str | os.PathLike[str],
    *,
    ref: str | None = None,
    allow_pickle: bool = False,
    requested_by: str | None = None,
) -> dict[str, Any]:
    """``from_pretrained`` keywords that load `folder` safely: the one pickle check of every
    local load path (the pool's default loader and the custom loaders alike).

    ``{"use_safetensors": True}`` unless the folder (or, for a diffusers pipeline, i.e. a
    folder with ``model_index.json``, one of its component subfolders) holds only pickles:
    then `PickleCheckpointError` without `allow_pickle`, and with it keywords that let
    pickles load with ``weights_only=True`` (transformers: ``use_safetensors=False,
    weights_only=True``; diffusers, which always passes ``weights_only=True``: its default,
    safetensors first). Which library reads the folder is read from the folder itself, so
    callers need not say. A missing folder gets the safetensors keywords, so the loader's
    "not found" error names it.
    """
    root = Path(folder)
    pipeline = _is_pipeline(root)
    found = pickle_files(root, components=pipeline)
    if not found:
        return {"use_safetensors": True}
    if not allow_pickle:
        raise PickleCheckpointError(ref or str(folder), found, requested_by)
    if pipeline:
        return {"use_safetensors": None}
    if _is_diffusers_component(root):
        return {"use_safetensors": False}
    return {"use_safetensors": False, "weights_only": True}

