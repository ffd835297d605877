"""Loading one component of a local diffusers folder, and the torch block built on it.

Every model block of this package reads the same config (`PretrainedSettings`): the folder
(`model_id`, as `save_pretrained` wrote it) and, optionally, another `subfolder` than the
block's usual component. Loading never touches the network (``local_files_only=True``) and
models load from safetensors only, so a missing file is an error, not a download.

Loads go through the model pool (`worldgen.local_models.pool`): blocks built from one folder
and component (and the same load options) share one module object (``a.module is
b.module``), across graphs and pipelines of the process. ``share: false`` in the block's
config opts out and loads an independent copy.

Pickle safety: a component folder holding only pickled weights (``*.bin``) is refused with
`PickleCheckpointError` naming the folder, unless the block's config says
``allow_pickle: true``; then the weights load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, ClassVar, cast

import torch
from diffusers import ModelMixin
from diffusers.utils import is_accelerate_available
from pydantic import BaseModel, ConfigDict

from worldgen.blocks.base import Block
from worldgen.blocks.torch_block import TorchBlock
from worldgen.local_models.pool import ModelPool, requester, resolve_pool
from worldgen.local_models.safety import safe_load_kwargs

__all__ = ["PretrainedSettings", "PretrainedTorchBlock", "component_folder", "grad_context", "load_component"]


class PretrainedSettings(BaseModel):
    """Where a block's component lives; unknown keys are rejected so typos fail early."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_id: str
    """A local diffusers folder (the one holding ``model_index.json``)."""
    subfolder: str | None = None
    """Component folder inside `model_id`; None means the block's usual one (``unet``, ``vae``…)."""
    defaults: dict[str, Any] = {}
    allow_pickle: bool = False
    """Accept a component stored only as a pickle (``*.bin``), read with
    ``torch.load(weights_only=True)``; off by default because unpickling can run code."""
    share: bool = True
    """Take the component from the model pool (one object per folder+component+options in the
    process); False loads an independent copy (e.g. to train it on its own)."""


def component_folder(model_id: str | Path, subfolder: str | None) -> Path:
    """The checked path of ``model_id/subfolder``; the error names what is missing."""
    root = Path(model_id).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"diffusers folder {str(root)!r} does not exist (model_id must be a local folder; "
            f"nothing is downloaded)"
        )
    if subfolder and not (root / subfolder).is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise FileNotFoundError(
            f"diffusers folder {str(root)!r} has no component {subfolder!r} (components: {present})"
        )
    return root


def load_component(
    cls: Any,
    settings: PretrainedSettings,
    default_subfolder: str,
    *,
    pool: ModelPool | None = None,
    requested_by: str | None = None,
    **kwargs: Any,
) -> Any:
    """``cls.from_pretrained(folder, subfolder=..., local_files_only=True, **kwargs)``, through
    the model pool (`pool`, else the running graph's, else the process default): one object
    per (folder, subfolder, cls, kwargs) unless ``settings.share`` is False.

    A component with only pickled weights raises `PickleCheckpointError` unless
    ``settings.allow_pickle``; weight-less components (tokenizers) load as they are."""
    subfolder = settings.subfolder or default_subfolder
    requested_by = requester(requested_by)

    def load() -> Any:
        folder = component_folder(settings.model_id, subfolder)
        safe = safe_load_kwargs(folder / subfolder, ref=f"{settings.model_id}/{subfolder}",
                                allow_pickle=settings.allow_pickle, requested_by=requested_by)
        call = dict(kwargs)
        if "use_safetensors" in call or safe["use_safetensors"] is False:
            call.update(safe)
        return cls.from_pretrained(folder, subfolder=subfolder, local_files_only=True, **call)

    return resolve_pool(pool).get(
        settings.model_id, load, cls=cls, subfolder=subfolder, options=kwargs,
        share=settings.share, requested_by=requested_by, allow_pickle=settings.allow_pickle,
    )


def grad_context(block: Block) -> AbstractContextManager[Any]:
    """No autograd in eval mode (as diffusers pipelines run); train mode records the graph."""
    return nullcontext() if block.training else torch.no_grad()


class PretrainedTorchBlock(TorchBlock):
    """A `TorchBlock` whose module is ``model_class`` loaded from ``model_id/component``."""

    config_schema = PretrainedSettings
    #: The diffusers/transformers class to load (e.g. ``UNet2DConditionModel``).
    model_class: ClassVar[Any]
    #: Its usual subfolder in a diffusers folder (e.g. ``"unet"``).
    component: ClassVar[str]

    @property
    def pretrained(self) -> PretrainedSettings:
        return cast(PretrainedSettings, self.settings)

    def build_module(self) -> torch.nn.Module:
        kwargs: dict[str, Any] = {"use_safetensors": True}
        if issubclass(self.model_class, ModelMixin):  # say it, or diffusers warns about accelerate
            kwargs["low_cpu_mem_usage"] = is_accelerate_available()
        # No `.eval()` here: `TorchBlock.__init__` sets the mode right after, and walking a
        # big module's tree twice would be most of the cost of a pooled (shared) build.
        module = load_component(
            self.model_class, self.pretrained, self.component, requested_by=self.block_id, **kwargs
        )
        return cast(torch.nn.Module, module)
