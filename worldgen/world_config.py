"""``world.yaml``: what rebuilds a world — its cycle, its stages, storage, training keys.

The execution half of world.md §4's two serialization fields: structure and launch
parameters. The content half (chronicle, entities, glossary …) lives in the world's store.
A stage entry is a stage template with parameters, a saved stage graph (``ref``) or a
nested stage-graph config; a transition without an entry is the canon's, driven by
``llm`` and ``text_to_image``. Secrets never appear here: models are named, not keyed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from worldgen.artifacts import check_name
from worldgen.content import InitialWorld
from worldgen.files import atomic_write
from worldgen.stage import CANON, CYCLE, Condition, Stage

__all__ = [
    "SCHEMA_VERSION",
    "LoraPolicy",
    "StageEntry",
    "StorageConfig",
    "WorldConfig",
    "check_cycle",
    "check_version",
    "stage_entry",
]

SCHEMA_VERSION = 1

#: transitions whose canon condition can be named as a preset (world.md §3 ``set_execution_condition``)
_PRESETS = ("philosopher", "author", "world_update")


def check_version(version: Any, where: str) -> None:
    """One schema version is read; anything else is a clear error naming the file."""
    if version != SCHEMA_VERSION:
        raise ValueError(f"{where}: schema_version {version!r} is not supported (this worldgen reads {SCHEMA_VERSION})")


def check_cycle(ids: Any, known: Any = CYCLE) -> list[str]:
    """The cycle as a list; rejects unknown ids, repeats and a length other than the stages'."""
    ids = [str(i) for i in ids]
    known = list(known)
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise ValueError(f"cycle: unknown stage {', '.join(map(repr, unknown))} (stages: {', '.join(known)})")
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise ValueError(f"cycle: {', '.join(map(repr, repeated))} appears more than once")
    if len(ids) != len(known):
        missing = [k for k in known if k not in ids]
        raise ValueError(f"cycle: has {len(ids)} stages, the world has {len(known)} (missing {', '.join(missing)})")
    return ids


class StorageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: where World update's snapshots go, relative to the world's root (or absolute)
    state_dir: str = "states"
    #: keep at most this many snapshots, dropping the oldest (None keeps all)
    max_snapshots: int | None = Field(None, ge=1)
    #: a world opened on a fresh thread starts from the newest snapshot
    load_last_state: bool = False


class LoraPolicy(BaseModel):
    """LoRA on the whole world (levels.md §7): rank and which blocks get an adapter."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    rank: int = Field(8, ge=1)
    alpha: float | None = None
    #: block roles, block types or node ids; empty = every eligible local block
    targets: list[str] = Field(default_factory=list)


class StageEntry(BaseModel):
    """One stage of the world: exactly one of ``template``, ``ref`` or ``stage_config``."""

    model_config = ConfigDict(extra="forbid")

    template: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    #: a saved stage graph's folder or a stage config file, relative to the world config
    ref: str | None = None
    stage_config: dict[str, Any] | None = None
    #: blocks that must be filled for the stage to run, or a preset name; the canon's by default
    execution_condition: list[int] | str | None = None
    #: a LangGraph server serving this stage (world.md §4, per-stage endpoint_url);
    #: its key comes from the environment (LANGGRAPH_API_KEY), never from here
    endpoint_url: str | None = None
    #: the served graph's name on that server (default: the stage id)
    assistant_id: str | None = None
    #: the environment variable holding that server's key (default LANGGRAPH_API_KEY)
    api_key_env: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> StageEntry:
        given = [k for k in ("template", "ref", "stage_config") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a stage needs exactly one of template, ref or stage_config (got {given or 'none'})")
        if self.params and self.template is None:
            raise ValueError("params go with a template")
        if self.template is not None and (self.endpoint_url or self.assistant_id or self.api_key_env):
            raise ValueError("endpoint_url goes with a stage graph (ref or stage_config), not a template")
        return self

    @field_validator("execution_condition")
    @classmethod
    def _known_condition(cls, value: list[int] | str | None) -> list[int] | str | None:
        if isinstance(value, str) and value not in _PRESETS:
            raise ValueError(f"unknown condition preset {value!r}: expected a list of blocks or {', '.join(_PRESETS)}")
        return value

    def condition(self, transition: str) -> Condition:
        cond = self.execution_condition
        if cond is None:
            return CANON[transition].condition
        if isinstance(cond, str):
            return CANON[cond].condition
        return Condition(requires=tuple(cond), produces=CANON[transition].condition.produces)

    def build(self, transition: str, base: Path) -> Stage:
        """The stage this entry describes, for the world's ``transition``."""
        from worldgen.stage_graph import StageGraph

        if self.template is not None:
            stage = Stage.from_template(self.template, **self.params)
            if stage.role != transition:
                raise ValueError(f"stages.{transition}: template {self.template!r} makes a {stage.role!r} stage")
            stage.source = self.model_dump(exclude_defaults=True)
            if self.execution_condition is not None:
                stage.condition = self.condition(transition)
            return stage
        source: Any = base / self.ref if self.ref is not None else self.stage_config
        graph = StageGraph.from_config(source, base_dir=None if self.ref is not None else base, validate=True)
        if self.endpoint_url is not None:
            graph.set_endpoint(self.endpoint_url, self.assistant_id, api_key_env=self.api_key_env)
        # the entry's condition wins over the stage graph's own, which wins over the canon's
        condition = self.condition(transition) if self.execution_condition is not None else None
        stage = graph.as_stage(transition, condition=condition)
        stage.source = self.model_dump(exclude_defaults=True)
        return stage


class WorldConfig(BaseModel):
    """``world.yaml``: how to rebuild the world. Never holds secrets (models by name only)."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    world_id: str = "world"
    template: str = "canon"
    description: str = ""
    tags: list[str] = Field(default_factory=list)
    llm: str | None = "local"
    text_to_image: str | None = "procedural"
    #: the order transitions run in; the last links back to the first
    cycle: list[str] = Field(default_factory=lambda: list(CYCLE))
    #: stages that are not the canon's (a template, a saved stage graph, a stage config)
    stages: dict[str, StageEntry] = Field(default_factory=dict)
    initial_world: InitialWorld = Field(default_factory=InitialWorld)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    #: pause before each World update for a person to approve, edit or reject the state
    review: bool = False
    #: Development, Author and Creator as tool-calling agents (the embedded model calls tools too)
    agents: bool = False
    #: training (levels.md §7): stages whose parameters train, learning rate, freezing
    trainable_stages: list[str] = Field(default_factory=list)
    lr: float | None = Field(None, gt=0)
    freeze_others: bool = True
    lora: LoraPolicy | None = None

    @field_validator("cycle")
    @classmethod
    def _cycle(cls, value: list[str]) -> list[str]:
        return check_cycle(value)

    @field_validator("stages", "trainable_stages")
    @classmethod
    def _known_stages(cls, value: Any) -> Any:
        unknown = [t for t in value if t not in CYCLE]
        if unknown:
            raise ValueError(f"unknown stage {', '.join(map(repr, unknown))}: expected {', '.join(CYCLE)}")
        return value

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> WorldConfig:
        """Read and validate a YAML or JSON world config, naming the bad key."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML: {exc}") from exc
        return cls.parse(data, where=str(path))

    @classmethod
    def parse(cls, data: Any, *, where: str = "world config") -> WorldConfig:
        if isinstance(data, WorldConfig):
            return data
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: a world config is a mapping, got {type(data).__name__}")
        check_version(data.get("schema_version", SCHEMA_VERSION), where)
        try:
            config = cls.model_validate(dict(data))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors()
            )
            raise ValueError(f"{where}: {problems}") from exc
        check_name(config.world_id, "world id")
        return config

    def dump(self, path: str | os.PathLike[str]) -> None:
        data = self.model_dump(mode="json")
        data["stages"] = {t: e.model_dump(mode="json", exclude_defaults=True) for t, e in self.stages.items()}
        atomic_write(Path(path), yaml.safe_dump(data, sort_keys=False))

    def build_stages(self, base: Path) -> dict[str, Stage]:
        """The stages the config names (the rest are the canon's), errors prefixed by stage."""
        stages: dict[str, Stage] = {}
        for transition, entry in self.stages.items():
            try:
                stages[transition] = entry.build(transition, base)
            except Exception as exc:
                exc.add_note(f"(while building world config key 'stages.{transition}')")
                raise
        return stages


def stage_entry(transition: str, stage: Stage, directory: Path, rel: str) -> StageEntry | None:
    """How ``World.save`` writes one stage: the entry it came from (a template), a stage
    graph saved under ``directory`` (= ``rel``), or None — a canon stage is rebuilt from
    ``llm`` and a stage that is code is given again to ``World.load``."""
    from worldgen.stage_graph import StageGraph

    if stage.source is not None and "template" in stage.source:
        return StageEntry.model_validate(stage.source)
    if isinstance(stage.impl, StageGraph):
        own = stage.impl.execution_condition or CANON[transition].condition
        condition = None if stage.condition == own else list(stage.condition.requires)
        stage.impl.save(directory)
        return StageEntry(ref=rel, execution_condition=condition)
    return None

