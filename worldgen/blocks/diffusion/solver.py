"""`solver/diffusers`: one step of any diffusers scheduler, as a graph node."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import torch

from worldgen.blocks.diffusion.schedulers import ScheduleSettings, load_scheduler, step_kwargs
from worldgen.blocks.ports import PortType, input_port, output_port
from worldgen.blocks.registry import register_block
from worldgen.blocks.roles import Solver

__all__ = ["DiffusersSolver", "SolverSettings"]


class SolverSettings(ScheduleSettings):
    eta: float = 0.0
    """DDIM's η (passed to schedulers whose ``step`` takes it; 0 = deterministic)."""


@register_block("solver/diffusers")
class DiffusersSolver(Solver):
    """Wraps any diffusers scheduler; one call = one ``scheduler.step``.

    The solver owns the schedule (``scheduler.timesteps`` after ``set_timesteps``). A call
    at the schedule's first timestep restarts it (``set_timesteps`` again), which clears
    what multistep schedulers remember, so one block serves any number of runs. Besides the
    role's ports it has:

    - `generator` (in, optional): the torch generator that drew the initial noise; stochastic
      steps (DDIM with η > 0, ancestral samplers) draw from it, as a pipeline's steps do;
    - `model_input` (out): `next_latent` prepared for the backbone at `next_timestep`
      (``scheduler.scale_model_input``; the identity for DDIM and DPM-Solver).

    After the last step, `next_timestep` is 0 and `model_input` is `next_latent`.
    """

    config_schema = SolverSettings
    PORTS = (
        *Solver.PORTS,
        input_port("generator", PortType.ANY, optional=True),
        output_port("model_input", PortType.TENSOR, optional=True),
    )

    def __init__(self, block_id: str | None = None, *, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(block_id, config=config)
        self._device: torch.device | str | None = None
        self.scheduler = load_scheduler(self.schedule)
        self._position = 0  # index in `timesteps` of the next step

    @property
    def schedule(self) -> SolverSettings:
        return cast(SolverSettings, self.settings)

    @property
    def timesteps(self) -> torch.Tensor:
        return self.scheduler.timesteps

    def to(self, device: Any) -> DiffusersSolver:
        self._device = device
        self.scheduler.set_timesteps(self.schedule.num_inference_steps, device=device)
        self._position = 0
        return self

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        latent, timestep = inputs["latent"], inputs["timestep"]
        if float(timestep) == float(self.timesteps[0]):
            self._restart(latent, timestep)
        self._check_position(timestep)
        extra = step_kwargs(self.scheduler, eta=self.schedule.eta, generator=inputs.get("generator"))
        next_latent = self.scheduler.step(inputs["pred"], timestep, latent, **extra, return_dict=False)[0]
        self._position += 1
        if self._position < len(self.timesteps):
            next_timestep = self.timesteps[self._position]
            model_input = self.scheduler.scale_model_input(next_latent, next_timestep)
        else:
            next_timestep, model_input = torch.zeros_like(self.timesteps[0]), next_latent
        return {"next_latent": next_latent, "next_timestep": next_timestep, "model_input": model_input}

    def _restart(self, latent: torch.Tensor, timestep: torch.Tensor) -> None:
        self.scheduler.set_timesteps(self.schedule.num_inference_steps, device=self._device)
        self._position = 0
        # the first model input was scaled by `noise/initial`; replay the call here so
        # schedulers that track it (step index, "input was scaled") are in the pipeline's state
        self.scheduler.scale_model_input(latent, timestep)

    def _check_position(self, timestep: torch.Tensor) -> None:
        if self._position >= len(self.timesteps):
            raise ValueError(
                f"{self!r}: the schedule has {len(self.timesteps)} steps and all were taken; "
                f"run the loop at most that many times (or start again at timestep {float(self.timesteps[0])})"
            )
        expected = self.timesteps[self._position]
        if float(timestep) != float(expected):
            raise ValueError(
                f"{self!r}: expected timestep {float(expected)} (step {self._position}), got {float(timestep)}"
            )
