"""Diffusers schedulers by name: short aliases, class names, and one loader.

Both blocks that need a noise schedule (the solver, and the start of a trajectory in
`noise.py`) load it here from the same `ScheduleSettings`, so their schedules agree.
"""

from __future__ import annotations

import functools
import inspect
import json
from typing import Any

import diffusers.schedulers
import torch
from diffusers import SchedulerMixin
from diffusers.schedulers.scheduling_utils import SCHEDULER_CONFIG_NAME

from worldgen.blocks.diffusion._pretrained import PretrainedSettings, component_folder

__all__ = [
    "SCHEDULER_ALIASES", "ScheduleSettings", "known_schedulers", "load_scheduler", "scheduler_class", "step_kwargs",
]

#: Short names → diffusers class names (the rest are addressed by class name).
SCHEDULER_ALIASES: dict[str, str] = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "dpm++_sde": "DPMSolverSDEScheduler",
    "dpm_single": "DPMSolverSinglestepScheduler",
    "unipc": "UniPCMultistepScheduler",
    "deis": "DEISMultistepScheduler",
    "lcm": "LCMScheduler",
}


class ScheduleSettings(PretrainedSettings):
    """A scheduler from ``model_id/scheduler``, optionally swapped for another class.

    `scheduler` is an alias (see `SCHEDULER_ALIASES`), a diffusers class name, or None for
    the folder's own class. The folder's scheduler config is reused either way, as in
    ``NewScheduler.from_config(pipe.scheduler.config)``; `scheduler_kwargs` override it.
    """

    scheduler: str | None = None
    num_inference_steps: int = 50
    scheduler_kwargs: dict[str, Any] = {}


def known_schedulers() -> list[str]:
    """Every accepted name: the aliases, then the diffusers scheduler classes."""
    classes = sorted(n for n in dir(diffusers.schedulers) if n.endswith("Scheduler") and n != "SchedulerMixin")
    return [*SCHEDULER_ALIASES, *classes]


def scheduler_class(name: str) -> type[SchedulerMixin]:
    """The diffusers class for an alias or class name; unknown names list the known ones."""
    class_name = SCHEDULER_ALIASES.get(name.lower(), name)
    cls = getattr(diffusers.schedulers, class_name, None) if class_name.endswith("Scheduler") else None
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise ValueError(f"unknown scheduler {name!r}; known schedulers: {known_schedulers()}")
    return cls


def load_scheduler(settings: ScheduleSettings, device: torch.device | str | None = None) -> SchedulerMixin:
    """The configured scheduler with ``set_timesteps(num_inference_steps)`` already called."""
    subfolder = settings.subfolder or "scheduler"
    path = component_folder(settings.model_id, subfolder) / subfolder / SCHEDULER_CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no scheduler config {str(path)!r}")
    config = json.loads(path.read_text())
    cls = scheduler_class(settings.scheduler or config["_class_name"])
    scheduler = cls.from_config(config, **settings.scheduler_kwargs)
    scheduler.set_timesteps(settings.num_inference_steps, device=device)
    return scheduler


def step_kwargs(scheduler: SchedulerMixin, *, eta: float, generator: torch.Generator | None) -> dict[str, Any]:
    """The extra ``step()`` arguments this scheduler takes (eta, generator), as
    `StableDiffusionPipeline.prepare_extra_step_kwargs` passes them."""
    accepted = _step_parameters(type(scheduler))
    extra: dict[str, Any] = {}
    if "eta" in accepted:
        extra["eta"] = eta
    if "generator" in accepted:
        extra["generator"] = generator
    return extra


@functools.cache
def _step_parameters(cls: type[SchedulerMixin]) -> frozenset[str]:
    return frozenset(inspect.signature(cls.step).parameters)
