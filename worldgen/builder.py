"""`WorldBuilder`: assemble a world stage by stage, then compile it (world.md §4 Builder).

Like LangGraph's ``StateGraph`` → ``compile()``: the builder only collects and checks
(stages, cycle, storage, initial world); ``compile`` makes the runnable `World`. A stage's
id is its role — the world routes by transition — so a second stage for a role is an error.
CamelCase aliases (``AddStage``, ``SetCycle``) follow the design documents' spelling.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from worldgen.content import InitialWorld
from worldgen.stage import CYCLE, Stage, StageImpl
from worldgen.world_config import StageEntry, StorageConfig, WorldConfig, check_cycle

__all__ = ["WorldBuilder"]


class WorldBuilder:
    """Collects a world's stages, cycle, storage and initial world; ``compile`` builds it."""

    def __init__(self, world_id: str = "world", *, description: str = "") -> None:
        self.world_id = world_id
        self.description = description
        self.stages: dict[str, Stage] = {}
        self.cycle: list[str] | None = None
        self.storage = StorageConfig()
        self.initial_world = InitialWorld()

    def add_stage(
        self, stage: Stage | StageImpl | Mapping[str, Any] | str | os.PathLike[str], stage_id: str | None = None
    ) -> str:
        """Add a Stage, a stage graph or a stage entry (``{template|ref|stage_config: …}``,
        or a saved stage graph's folder); returns its id, which is its role."""
        from worldgen.stage_graph import StageGraph

        role = stage_id
        if isinstance(stage, Stage):
            role = role or stage.role
        elif isinstance(stage, StageGraph):
            role = role or getattr(stage, "role", None)
        elif isinstance(stage, Mapping):
            role = role or stage.get("role") or (stage.get("stage_config") or {}).get("role")
        elif isinstance(stage, (str, os.PathLike)):
            stage = {"ref": str(Path(stage).resolve())}
        if role is None:
            raise ValueError("add_stage: give stage_id (one of " + ", ".join(CYCLE) + "); the stage names no role")
        if role not in CYCLE:
            raise ValueError(f"add_stage: unknown stage id {role!r}: a stage's id is its role, one of {', '.join(CYCLE)}")
        if role in self.stages:
            raise ValueError(f"add_stage: the world already has a {role!r} stage")
        if isinstance(stage, Mapping):
            entry = StageEntry.model_validate({k: v for k, v in stage.items() if k != "role"})
            built = entry.build(role, Path.cwd())
        else:
            built = Stage.coerce(role, stage)
        self.stages[role] = built
        return role

    def set_cycle(self, ordered_ids: Sequence[str]) -> WorldBuilder:
        """The order the stages run in: every added stage once, nothing else."""
        self.cycle = check_cycle(ordered_ids, known=[t for t in CYCLE if t in self.stages])
        return self

    def set_canonical_cycle(self) -> WorldBuilder:
        """Philosopher → Author → World update → Development → Architect → Creator."""
        missing = [t for t in CYCLE if t not in self.stages]
        if missing:
            raise ValueError(f"set_canonical_cycle: no stage for {', '.join(missing)}")
        self.cycle = list(CYCLE)
        return self

    def set_storage(self, **storage: Any) -> WorldBuilder:
        """``state_dir``, ``max_snapshots``, ``load_last_state``."""
        self.storage = StorageConfig.model_validate({**self.storage.model_dump(), **storage})
        return self

    def set_initial_world(self, content: InitialWorld | Mapping[str, Any]) -> WorldBuilder:
        """``story``, ``glossary``, ``style``, ``rules``: what the world starts from."""
        self.initial_world = InitialWorld.model_validate(content)
        return self

    AddStage = add_stage
    SetCycle = set_cycle

    def compile(self, *, root: str | os.PathLike[str] | None = None, **options: Any) -> Any:
        """The `World`, validated; ``options`` go to its config (``review``, ``llm``, …)."""
        from worldgen.world import World

        if self.cycle is None:
            self.set_canonical_cycle()
        config = WorldConfig.parse({
            "world_id": self.world_id, "description": self.description, "cycle": self.cycle,
            "storage": self.storage.model_dump(), "initial_world": self.initial_world.model_dump(),
            **options,
        })
        world = World(self.stages, root=root, config=config)
        world.validate(strict=True)
        return world
