"""The world: the canonical cycle of five transitions as one cyclic LangGraph StateGraph.

Philosopher → Author → World update → Development → Architect → Creator → … Each
transition is a node; its execution condition is data (``Condition``) compiled into the
conditional edges, so a skipped transition costs no superstep. The node that runs before a
skip records the skip in the trace (the routing is a pure function of the state, so the node
and its edge agree on where the graph goes next).

Persistence (ARCHITECTURE.md §4): ``checkpoints.sqlite`` (SqliteSaver) holds the current
state and resumes a crashed run; ``store.sqlite`` (SqliteStore) holds the world's content;
``states/`` one JSON snapshot per World update; ``artifacts/`` the files; ``world.yaml``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.store.base import BaseStore
from langgraph.types import Command, RetryPolicy, interrupt
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from typing_extensions import (
    TypedDict,  # pydantic (LangGraph Server schemas) needs it before 3.12
)

from worldgen.artifacts import ArtifactStore, check_name
from worldgen.content import ContentSnapshot, InitialWorld, WorldContent
from worldgen.engine.context import call_context
from worldgen.engine.validation import ValidationIssue, ValidationResult
from worldgen.files import atomic_write
from worldgen.stage import CYCLE, Condition, Stage, StageImpl, TransitionError
from worldgen.state import BLOCK_NUMBERS, BLOCK_TYPES, StateError, WorldState, block_key
from worldgen.storage import open_checkpointer, open_store
from worldgen.world_config import SCHEMA_VERSION, LoraPolicy, WorldConfig, check_version, stage_entry

__all__ = ["TraceEvent", "World", "WorldConfig", "WorldHook", "WorldResult", "SCHEMA_VERSION"]

WORLD_META_FILE = "world_meta.json"
_BLOCK_KEYS = tuple(block_key(n) for n in BLOCK_NUMBERS)


# --------------------------------------------------------------------------------------
# graph state
# --------------------------------------------------------------------------------------
class WorldInput(TypedDict, total=False):
    """What a caller (World.invoke, Studio, the server) sends into a run."""

    block1: Any
    block2: Any
    block3: Any
    block4: Any
    block5: Any
    action: str | None
    num_steps: int | None


class WorldChannels(WorldInput, total=False):
    """The world graph's state: the blocks plus control channels.

    ``passes`` is this run's pass count and ``episode`` the number of World updates so far
    on this thread. ``trace`` holds the latest step's events: the transition that ran and
    the skips that follow it; its "ran" event is where the run stands. The whole run's
    trace is streamed (and returned by ``World.invoke``), and every step's events stay in
    the checkpoint history — keeping only the latest in state holds each checkpoint small.
    """

    passes: int
    episode: int
    trace: list[dict[str, Any]]


# --------------------------------------------------------------------------------------
# public result types and config
# --------------------------------------------------------------------------------------
class TraceEvent(BaseModel):
    """One transition in one pass: it ran or was skipped, and why."""

    model_config = ConfigDict(populate_by_name=True)

    pass_index: int = Field(alias="pass")
    transition: Literal["philosopher", "author", "world_update", "development", "architect", "creator"]
    status: Literal["ran", "skipped"]
    reason: str = ""
    snapshot: str | None = None
    #: wall time of the transition (0 for a skip)
    seconds: float = 0.0
    #: a person's verdict on a reviewed World update
    review: Literal["approved", "edited", "rejected"] | None = None


class WorldResult(BaseModel):
    """What ``World.invoke`` returns."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    state: WorldState
    trace: list[TraceEvent]
    snapshots: list[Path]
    thread_id: str
    #: the candidate state a paused World update waits on (``World.review`` answers it)
    pending_review: dict[str, Any] | None = None

    def ran(self) -> list[str]:
        """The transitions that ran, in order."""
        return [e.transition for e in self.trace if e.status == "ran"]


#: called after each transition that ran: (transition, state before, state after)
WorldHook = Callable[[str, WorldState, WorldState], None]


# --------------------------------------------------------------------------------------
# the world
# --------------------------------------------------------------------------------------
class World:
    """A world rooted in a folder: ``invoke`` runs passes of the canonical cycle.

    Build one with ``World.from_template("canon", root=..., llm=...)`` or reopen one with
    ``World.open(root)``; any transition can be replaced with ``stages={...}``.
    """

    def __init__(
        self,
        stages: Mapping[str, Stage | StageImpl],
        *,
        root: str | os.PathLike[str] | None = None,
        config: WorldConfig | None = None,
        checkpointer: BaseCheckpointSaver | None | Literal[False] = None,
        store: BaseStore | None = None,
    ):
        self.config = config or WorldConfig()
        check_name(self.config.world_id, "world id")
        missing = [t for t in CYCLE if t not in stages]
        unknown = [t for t in stages if t not in CYCLE]
        if unknown:
            raise ValueError(f"unknown transition {', '.join(unknown)}: expected {', '.join(CYCLE)}")
        if missing:
            raise ValueError(f"the world needs a stage for {', '.join(missing)}")
        self.stages: dict[str, Stage] = {t: Stage.coerce(t, stages[t]) for t in CYCLE}
        #: the order transitions run in (the config's ``cycle``; the canon's by default)
        self.cycle: tuple[str, ...] = tuple(self.config.cycle)  # checked by WorldConfig
        self._index = {t: i for i, t in enumerate(self.cycle)}
        self._conditions: dict[str, Condition] = {t: s.condition for t, s in self.stages.items()}
        self.root = Path(root) if root is not None else Path("worlds") / self.config.world_id
        self.root.mkdir(parents=True, exist_ok=True)
        self.artifacts = ArtifactStore(self.root)
        self._conns: list[sqlite3.Connection] = []
        self._settled: set[str] = set()  # threads whose last run ended in this process
        self._views: dict[int, WorldContent] = {}  # content views on injected stores
        if store is None:
            store, conn = open_store(self.root)
            self._conns.append(conn)
        self.store = store
        if checkpointer is None:
            checkpointer, conn = open_checkpointer(self.root)
            self._conns.append(conn)
        self.content_view = WorldContent(self.store, self.config.world_id, self.artifacts)
        self.content_view.seed(self.config.initial_world)
        self._write_config()
        self._initial_state = self._last_snapshot() if self.config.storage.load_last_state else None
        self.graph: CompiledStateGraph = self.compile(checkpointer=checkpointer or None, store=self.store)

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_template(
        cls,
        name: str = "canon",
        *,
        root: str | os.PathLike[str] | None = None,
        world_id: str | None = None,
        llm: Any = "local",
        text_to_image: Any = "procedural",
        stages: Mapping[str, Stage | StageImpl] | None = None,
        initial_world: InitialWorld | Mapping[str, Any] | None = None,
        description: str = "",
        review: bool = False,
        style: str | None = None,
        agents: bool = False,
        cycle: Sequence[str] | None = None,
    ) -> World:
        """The canon world, its six transitions driven by ``llm`` unless given in ``stages``.

        ``style`` fills the template's ``{{ style }}``: the initial world's style, which the
        Architect passes on to every image prompt.
        """
        if name not in ("canon", "canon_2.0"):
            raise ValueError(f"unknown world template {name!r}: available: canon")
        if root is not None and world_id is None and (Path(root) / "world.yaml").exists():
            previous = WorldConfig.load(Path(root) / "world.yaml")
            world_id = previous.world_id
            initial_world = initial_world if initial_world is not None else previous.initial_world
        config = WorldConfig(
            world_id=world_id if world_id is not None else (Path(root).name if root is not None else "world"),
            template="canon",
            description=description,
            llm=llm if isinstance(llm, str) or llm is None else None,
            text_to_image=text_to_image if isinstance(text_to_image, str) or text_to_image is None else None,
            initial_world=InitialWorld.model_validate(initial_world if initial_world is not None else _CANON_INITIAL),
            review=review,
            agents=agents,
            cycle=list(cycle) if cycle is not None else list(CYCLE),
        )
        if style is not None:
            config.initial_world.style = style
        return cls(_canon_stages(llm, text_to_image, stages or {}, agents=agents), root=root, config=config)

    @classmethod
    def from_config(
        cls,
        config: str | os.PathLike[str] | Mapping[str, Any] | WorldConfig,
        *,
        root: str | os.PathLike[str] | None = None,
        llm: Any = None,
        text_to_image: Any = None,
        stages: Mapping[str, Stage | StageImpl] | None = None,
        review: bool | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        agents: bool | None = None,
    ) -> World:
        """A world from ``world.yaml`` (a path, a dict or a WorldConfig), then validated.

        Stage entries (templates, saved stage graphs, stage configs) resolve relative to the
        config file; the other transitions are the canon's, driven by ``llm`` (the config's
        unless given). ``root`` defaults to the config file's folder, so reopening a world is
        ``World.from_config(root / "world.yaml")``. ``base_dir`` resolves the refs of a
        config given as a dict (default: the working directory).
        """
        base = Path(base_dir) if base_dir is not None else Path.cwd()
        if isinstance(config, (str, os.PathLike)):
            path = Path(config)
            if path.is_dir():
                path = path / "world.yaml"
            if not path.exists():
                raise FileNotFoundError(f"{path}: no world config here; create a world with World.from_template")
            base = Path(base_dir) if base_dir is not None else path.parent
            root = root if root is not None else path.parent
            config = WorldConfig.load(path)
        config = WorldConfig.parse(config)
        llm = llm if llm is not None else config.llm
        t2i = text_to_image if text_to_image is not None else config.text_to_image
        config = config.model_copy(
            update={
                "llm": llm if isinstance(llm, str) or llm is None else None,
                "text_to_image": t2i if isinstance(t2i, str) or t2i is None else None,
                "review": config.review if review is None else review,
                "agents": config.agents if agents is None else agents,
            }
        )
        overrides = {**config.build_stages(base), **(stages or {})}
        world = cls(_canon_stages(llm, t2i, overrides, agents=config.agents), root=root, config=config)
        try:
            world.validate(strict=True)
        except ValueError:
            world.close()
            raise
        return world

    @classmethod
    def open(
        cls,
        root: str | os.PathLike[str],
        *,
        llm: Any = None,
        text_to_image: Any = None,
        stages: Mapping[str, Stage | StageImpl] | None = None,
        review: bool | None = None,
        agents: bool | None = None,
    ) -> World:
        """Reopen a world from its root; it continues where it stopped."""
        return cls.from_config(root, root=root, llm=llm, text_to_image=text_to_image, stages=stages, review=review,
                               agents=agents)

    # -- saving ---------------------------------------------------------------------------
    def save(self, save_dir: str | os.PathLike[str], *, with_state: bool = True) -> Path:
        """Write ``config.yaml``, ``checkpoints/<stage_id>/`` and ``world_meta.json``.

        The world's execution half (world.md §4): its cycle, storage, initial world and the
        stages that are not the canon's — a stage graph is saved with its weights, a
        template stage as its template and parameters, a canon stage as nothing (it is
        rebuilt from ``llm``). A stage that is only code is listed in ``world_meta.json``
        (``code_stages``) and must be given again to ``World.load(stages=...)``.
        ``with_state`` adds the current state (``last_state.json``), which ``World.load``
        starts from.
        """
        directory = Path(save_dir)
        entries = {}
        for transition in self.cycle:
            rel = f"checkpoints/{transition}"
            entry = stage_entry(transition, self.stages[transition], directory / rel, rel)
            if entry is not None:
                entries[transition] = entry
        config = self.config.model_copy(update={"stages": entries})
        config.dump(directory / "config.yaml")
        meta: dict[str, Any] = {
            "world_id": self.world_id, "cycle": list(self.cycle), "schema_version": SCHEMA_VERSION,
            "stages": sorted(entries),
            # neither saved nor the canon's: code, given again to World.load(stages=...)
            "code_stages": [t for t in self.cycle if t not in entries and not self.stages[t].canon],
        }
        if with_state:
            state = self.state.to_channels()
            atomic_write(directory / "last_state.json", json.dumps(state, indent=2, ensure_ascii=False))
            meta["last_state"] = "last_state.json"
        atomic_write(directory / WORLD_META_FILE, json.dumps(meta, indent=2, ensure_ascii=False))
        return directory

    @classmethod
    def load(
        cls,
        save_dir: str | os.PathLike[str],
        *,
        root: str | os.PathLike[str] | None = None,
        llm: Any = None,
        text_to_image: Any = None,
        stages: Mapping[str, Stage | StageImpl] | None = None,
    ) -> World:
        """A world written by ``save``, rooted in ``root`` (default: ``worlds/<world_id>``).

        The saved state, if any, is where the new world starts (on a thread that has none).
        """
        directory = Path(save_dir)
        meta_path = directory / WORLD_META_FILE
        if not meta_path.exists():
            raise FileNotFoundError(f"{directory}: no {WORLD_META_FILE}; not a folder written by World.save")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        check_version(meta.get("schema_version"), str(meta_path))
        config = WorldConfig.load(directory / "config.yaml")
        missing = [t for t in meta.get("code_stages", ()) if t not in (stages or {})]
        if missing:
            raise ValueError(
                f"{directory}: stages {', '.join(missing)} were code when saved; give them with stages={{...}}")
        if root is None:
            root = Path("worlds") / config.world_id
        world = cls.from_config(
            config, root=root, llm=llm, text_to_image=text_to_image, stages=stages, base_dir=directory)
        state_file = meta.get("last_state")
        if state_file and world._initial_state is None:
            world._initial_state = WorldState.from_channels(
                json.loads((directory / state_file).read_text(encoding="utf-8")))
        return world

    def compile(
        self, *, checkpointer: BaseCheckpointSaver | None = None, store: BaseStore | None = None
    ) -> CompiledStateGraph:
        """The world as a compiled LangGraph graph (the server passes its own storage)."""
        builder = StateGraph(WorldChannels, input_schema=WorldInput)
        builder.add_node("intake", self._intake_node)
        builder.add_edge(START, "intake")
        targets = [*self.cycle, END]
        builder.add_conditional_edges("intake", self._next_target, targets)
        retry = RetryPolicy(max_attempts=3, retry_on=_is_retryable)
        for t in self.cycle:
            builder.add_node(t, self._transition_node(t), retry_policy=retry)
            builder.add_conditional_edges(t, self._next_target, targets)
        return builder.compile(checkpointer=checkpointer, store=store, name=f"world:{self.config.world_id}")

    # -- running --------------------------------------------------------------------------
    def invoke(
        self,
        state: WorldState | Mapping[str, Any] | None = None,
        action: str | None = None,
        *,
        num_steps: int = 1,
        thread_id: str | None = None,
        hooks: Sequence[WorldHook] = (),
        dry_run: bool = False,
    ) -> WorldResult:
        """Run ``num_steps`` passes and return the final state, the trace and new snapshots.

        ``state=None`` continues the world's current state (a crashed run is resumed first);
        an explicit state replaces it. ``action`` reaches Development only, on the first pass.
        ``hooks`` are called ``(transition, state_before, state_after)`` after each transition
        that ran. ``dry_run`` runs no transition and saves nothing: the trace says which would
        run and which would be skipped, taking each transition to fill the block it writes.
        """
        thread = thread_id or "main"
        if dry_run:
            _check_call(num_steps, action)
            return self._dry_run(state, num_steps, thread)
        return self._result(self._inputs(state, action, num_steps, thread), thread, hooks)

    run = invoke

    def stream(
        self,
        state: WorldState | Mapping[str, Any] | None = None,
        action: str | None = None,
        *,
        num_steps: int = 1,
        thread_id: str | None = None,
    ) -> Iterator[TraceEvent]:
        """Yield trace events as the transitions run."""
        thread = thread_id or "main"
        return self._run(self._inputs(state, action, num_steps, thread), thread, {})

    def review(self, decision: ReviewDecision, thread_id: str | None = None) -> WorldResult:
        """Answer a paused World update and finish the run.

        ``decision`` is ``"approve"``, ``"reject"`` (the state is dropped, as on a non-full
        state) or a dict of blocks that replace the candidate's (the state must stay full).
        """
        thread = thread_id or "main"
        self._check_review(decision, thread)  # a bad decision fails here, before anything is resumed
        return self._result(Command(resume=decision), thread)

    def stream_review(self, decision: ReviewDecision, thread_id: str | None = None) -> Iterator[TraceEvent]:
        """``review``, yielding the trace events as the rest of the run happens."""
        thread = thread_id or "main"
        self._check_review(decision, thread)
        return self._run(Command(resume=decision), thread, {})

    def _check_review(self, decision: ReviewDecision, thread: str) -> None:
        if self.pending_review(thread) is None:
            raise ValueError(f"thread {thread!r} has no World update waiting for review")
        if not self.config.review:
            raise ValueError("this world is open with review off; reopen it with review=True to answer")
        _Review.parse(decision)  # a bad decision fails here, before anything is resumed

    def pending_review(self, thread_id: str | None = None) -> dict[str, Any] | None:
        """The candidate state a paused World update waits on, or None."""
        snapshot = self.graph.get_state(self._run_config(thread_id))
        for interrupt_ in snapshot.interrupts:
            if isinstance(interrupt_.value, Mapping) and interrupt_.value.get("review") == "world_update":
                return dict(interrupt_.value)
        return None

    def _inputs(
        self, state: WorldState | Mapping[str, Any] | None, action: str | None, num_steps: int, thread: str
    ) -> dict[str, Any] | None:
        """The graph input for a call: a new run, or None to finish an interrupted one."""
        _check_call(num_steps, action)
        parsed = None if state is None else WorldState.parse(state)  # fail before persisting
        if parsed is None and action is None and thread not in self._settled and self.interrupted(thread):
            return None
        inputs: dict[str, Any] = {"num_steps": num_steps, "action": action}
        if parsed is None and self._initial_state is not None and thread not in self._settled \
                and not self._has_state(thread):
            parsed = self._initial_state  # load_last_state / World.load: a fresh thread starts from it
        if parsed is not None:
            inputs.update(parsed.to_channels())
        return inputs

    def _has_state(self, thread: str) -> bool:
        return bool(self.graph.get_state(self._run_config(thread)).values)

    def _last_snapshot(self) -> WorldState | None:
        """The newest snapshot's state (``storage.load_last_state``), or None."""
        snapshots = self.snapshots()
        if not snapshots:
            return None
        newest = max(snapshots, key=lambda p: p.stat().st_mtime_ns)
        return WorldState.from_channels(json.loads(newest.read_text(encoding="utf-8"))["state"])

    def _result(self, inputs: Any, thread: str, hooks: Sequence[WorldHook] = ()) -> WorldResult:
        final: dict[str, Any] = {}
        trace = list(self._run(inputs, thread, final, hooks))
        return WorldResult(
            state=WorldState.from_channels(final),
            trace=trace,
            snapshots=[self.root / e.snapshot for e in trace if e.snapshot],
            thread_id=thread,
            pending_review=final.get("__review__"),
        )

    def _run(
        self, inputs: Any, thread: str, final: dict[str, Any], hooks: Sequence[WorldHook] = ()
    ) -> Iterator[TraceEvent]:
        """Stream one run's trace events; ``final`` receives the state the run ends on."""
        cfg = self._run_config(thread)
        self._settled.discard(thread)
        ran: list[str] = []  # transitions of the current step, for the hooks
        for mode, chunk in self.graph.stream(inputs, cfg, stream_mode=["updates", "values"], durability="sync"):
            if mode == "values":
                if hooks and ran:
                    before, after = WorldState.from_channels(final), WorldState.from_channels(chunk)
                    for transition in ran:
                        for hook in hooks:
                            hook(transition, before, after)
                ran = []
                final.update(chunk)
                continue
            for key, update in chunk.items():
                if key == "__interrupt__":
                    final["__review__"] = dict(update[0].value)
                    return  # paused: the thread is not settled
                if isinstance(update, Mapping):
                    for e in update.get("trace") or ():
                        event = TraceEvent.model_validate(e)
                        if event.transition == key and event.status == "ran":
                            ran.append(key)
                        yield event
        # this process saw the run end: the next call needs no check for an interrupted run
        self._settled.add(thread)

    def _dry_run(self, state: WorldState | Mapping[str, Any] | None, num_steps: int, thread: str) -> WorldResult:
        """Walk the cycle on the conditions alone: no stage is called, nothing is persisted."""
        current = self.current_state(thread) if state is None else WorldState.parse(state)
        channels: dict[str, Any] = dict(current.to_channels())
        trace: list[TraceEvent] = []
        cursor = (1, -1)
        while True:
            skipped, target = self._route(channels, cursor, num_steps)
            trace += [TraceEvent.model_validate(e) for e in skipped]
            if target == END:
                break
            index = self._index[target]
            cursor = (cursor[0] if index > cursor[1] else cursor[0] + 1, index)
            for n in self.stages[target].writes:
                channels[block_key(n)] = {"planned": target}  # any filled block will do
            if target == "development":
                channels.update({k: None for k in _BLOCK_KEYS[1:]})
            trace.append(TraceEvent.model_validate(
                {"pass": cursor[0], "transition": target, "status": "ran", "reason": "would run (dry run)"}))
        return WorldResult(state=current, trace=trace, snapshots=[], thread_id=thread)

    def validate(self, strict: bool = True) -> ValidationResult:
        """Check every stage (errors prefixed by its transition) and that the snapshot folder
        can be made; ``strict`` raises listing every error, otherwise they are returned."""
        errors: list[ValidationIssue] = []
        warnings: list[ValidationIssue] = []
        for transition, stage in self.stages.items():
            result = stage.validate(strict=False)
            errors += [ValidationIssue(f"{transition}: {e}", transition) for e in result.errors]
            warnings += [ValidationIssue(f"{transition}: {w}", transition) for w in result.warnings]
        try:
            self.states_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            errors.append(ValidationIssue(
                f"storage.state_dir: cannot create {self.states_dir}: {exc.strerror or exc}", "storage"))
        result = ValidationResult(errors, warnings)
        if strict and errors:
            lines = "\n".join(f"  - {e}" for e in errors)
            raise ValueError(f"world {self.world_id!r} is invalid ({len(errors)} errors):\n{lines}")
        return result

    def interrupted(self, thread_id: str | None = None) -> bool:
        """Whether a run on this thread stopped mid-way (a crash, a kill, a failed transition)."""
        return self.interrupted_passes(thread_id) is not None

    def interrupted_passes(self, thread_id: str | None = None) -> int | None:
        """The pass count of the run that stopped mid-way on this thread, or None."""
        snapshot = self.graph.get_state(self._run_config(thread_id))
        return int(snapshot.values.get("passes") or 1) if snapshot.next else None

    def resume(self, thread_id: str | None = None) -> WorldResult:
        """Finish a run that was interrupted (by a crash or a kill) from its last checkpoint."""
        return self.invoke(None, None, thread_id=thread_id)

    # -- training (levels.md §7) -------------------------------------------------------------
    def apply_lora(self, rank: int | None = None, targets: Sequence[str] | None = None, **options: Any) -> Any:
        """LoRA on the whole world: an adapter on every eligible local block, every base
        weight frozen; returns the `LoraSet` whose parameters go to the optimizer.
        ``rank`` and ``targets`` default to the config's ``lora`` policy."""
        from worldgen.adapters import apply_lora

        policy = self.config.lora or LoraPolicy()
        options.setdefault("alpha", policy.alpha)
        rank = rank if rank is not None else policy.rank
        return apply_lora(self, rank=rank, targets=targets if targets is not None else policy.targets or None, **options)

    def trainable_parameters(self) -> list[Any]:
        """The parameters an optimizer gets, each once; with the config's ``trainable_stages``
        only those stages' blocks train (a block shared with another stage is frozen only if
        no trainable stage uses it)."""
        from worldgen.adapters import trainable_parameters, trainable_stages

        if self.config.trainable_stages:
            trainable_stages(self, self.config.trainable_stages)
        return trainable_parameters(self)

    # -- reading --------------------------------------------------------------------------
    def current_state(self, thread_id: str | None = None) -> WorldState:
        values = self.graph.get_state(self._run_config(thread_id)).values
        if not values and self._initial_state is not None:
            return self._initial_state
        return WorldState.from_channels(values)

    @property
    def state(self) -> WorldState:
        return self.current_state()

    @property
    def content(self) -> ContentSnapshot:
        """Everything in the world's content store (chronicle, entities, glossary, …)."""
        return self.content_view.snapshot()

    @property
    def world_id(self) -> str:
        return self.config.world_id

    @property
    def states_dir(self) -> Path:
        return self.root / self.config.storage.state_dir

    def snapshots(self) -> list[Path]:
        """Every snapshot World update has written, oldest first."""
        return sorted(self.states_dir.glob("*.json")) if self.states_dir.exists() else []

    def close(self) -> None:
        for conn in self._conns:
            conn.close()
        self._conns.clear()

    def __enter__(self) -> World:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------
    def _write_config(self) -> None:
        self.config.dump(self.root / "world.yaml")

    def _run_config(self, thread_id: str | None) -> RunnableConfig:
        thread = check_name(thread_id or "main", "thread id")
        return {"configurable": {"thread_id": thread}, "recursion_limit": 10_000}

    def _content(self, store: BaseStore | None) -> WorldContent:
        """The content in the store this run was given (the server's own, when served)."""
        if store is None or store is self.store:
            return self.content_view
        view = self._views.get(id(store))
        if view is None or view.store is not store:
            view = WorldContent(store, self.config.world_id, self.artifacts)
            view.seed(self.config.initial_world)
            self._views[id(store)] = view
        return view

    def _next_target(self, state: Mapping[str, Any]) -> str:
        return self._route(state, self._cursor(state), state.get("passes") or 1)[1]

    def _route(
        self, state: Mapping[str, Any], cursor: tuple[int, int], passes: int
    ) -> tuple[list[dict[str, Any]], str]:
        return _route(state, cursor, passes, self._conditions, self.cycle)

    def _cursor(self, state: Mapping[str, Any]) -> tuple[int, int]:
        """(pass, cycle index) of the last transition that ran in this run; (1, -1) before any."""
        for event in reversed(state.get("trace") or ()):
            if event["status"] == "ran" or event.get("review"):  # a rejected update was still visited
                return event["pass"], self._index[event["transition"]]
        return 1, -1

    def _intake_node(self, state: WorldChannels) -> dict[str, Any]:
        """Normalise this run's input: coerce blocks, reset the trace, set the pass count."""
        try:
            parsed = WorldState.from_channels(state)
        except StateError as exc:
            raise TransitionError("intake", str(exc)) from exc
        update: dict[str, Any] = {}
        for key, value in parsed.to_channels().items():
            value = self._materialise(value) if key == "block3" else value
            if value != state.get(key):
                update[key] = value
        num_steps = state.get("num_steps") or 1
        update.update(num_steps=None, passes=num_steps)
        merged = {**state, **update}
        update["trace"] = self._route(merged, (1, -1), num_steps)[0]
        return update

    def _materialise(self, block3: dict[str, Any] | None) -> dict[str, Any] | None:
        if not block3 or not any(item.get("inline") is not None for item in block3["items"]):
            return block3
        artifacts = BLOCK_TYPES[3].model_validate(block3)
        artifacts.items = [self.artifacts.materialise(ref) for ref in artifacts.items]
        return artifacts.model_dump(mode="json")

    def _transition_node(self, transition: str):
        stage = self.stages[transition]
        index = self._index[transition]
        is_development = transition == "development"
        is_update = transition == "world_update"
        world = self

        def node(state: WorldChannels, config: RunnableConfig, store: BaseStore) -> dict[str, Any]:
            node_input = state
            last_pass, last_index = world._cursor(state)
            position = (last_pass if index > last_index else last_pass + 1, index)
            inputs: dict[str, Any] = {key: state.get(key) for key in stage.input_keys()}
            inputs["action"] = state.get("action") if is_development else None
            inputs["world"] = world._content(store)
            if is_update:
                if world.config.review:
                    verdict = _Review.parse(interrupt(_review_request(state, position[0])))
                    if verdict.reject:
                        return world._rejected(state, position)
                    edits = {k: _coerce_block(transition, int(k[5:]), v) for k, v in verdict.edits.items()}
                    if edits:
                        state = {**state, **edits}
                        inputs.update({k: v for k, v in edits.items() if k in inputs})
                        if len(_filled(state)) < len(BLOCK_NUMBERS):
                            raise TransitionError(transition, "an edited state must keep all five blocks filled")
                episode = (state.get("episode") or 0) + 1
                inputs["episode"] = episode
                inputs["episode_key"] = world._episode_key(episode, config)
            started = time.perf_counter()
            try:
                with call_context(stage_id=stage.name, role=transition):  # per-stage adapters
                    result = stage.invoke(inputs, config) or {}
            except TransitionError:
                raise
            except Exception as exc:
                raise TransitionError(transition, f"{type(exc).__name__}: {exc}") from exc
            if not isinstance(result, Mapping):
                raise TransitionError(transition, f"must return a dict of blocks, got {type(result).__name__}")
            update = {key: _coerce_block(transition, n, result.get(key)) for n in stage.writes
                      if (key := block_key(n)) in result}
            event: dict[str, Any] = {"pass": position[0], "transition": transition, "status": "ran",
                                     "reason": stage.condition.check(_filled(state))[1],
                                     "seconds": round(time.perf_counter() - started, 4)}
            if is_development:
                if not update.get("block1"):
                    raise TransitionError(transition, "must return a non-empty block1 (the next intent)")
                update.update({k: None for k in _BLOCK_KEYS[1:] if state.get(k) is not None})
                if state.get("action") is not None:
                    update["action"] = None  # consumed: later passes run on their own
                event["reason"] = "starts a new state from the world" + (
                    " and the action" if state.get("action") else ""
                )
            if is_update:
                event["snapshot"] = world._write_snapshot(state, episode, inputs["episode_key"], config, position[0])
                update["episode"] = episode
                update.update({k: state[k] for k in _BLOCK_KEYS if state.get(k) != node_input.get(k)})
                event["reason"] = "state is full: applied to the world and saved"
                if world.config.review:
                    event["review"] = "edited" if verdict.edits else "approved"
            merged = {**state, **update}
            update["trace"] = [event, *world._route(merged, position, state.get("passes") or 1)[0]]
            return update

        node.__name__ = transition
        return node

    def _rejected(self, state: Mapping[str, Any], position: tuple[int, int]) -> dict[str, Any]:
        """A reviewer rejected the candidate: the state is dropped, as a non-full one is."""
        event = {"pass": position[0], "transition": "world_update", "status": "skipped",
                 "reason": "rejected at review: dropped", "review": "rejected"}
        passes = state.get("passes") or 1
        return {"trace": [event, *self._route(state, position, passes)[0]]}

    def _episode_key(self, episode: int, config: RunnableConfig) -> str:
        thread = str(config.get("configurable", {}).get("thread_id", "main"))
        return f"{episode:06d}" if thread == "main" else f"{check_name(thread, 'thread id')}-{episode:06d}"

    def _write_snapshot(
        self, state: Mapping[str, Any], episode: int, key: str, config: RunnableConfig, pass_index: int
    ) -> str:
        """The canon's "state saved to a directory": one JSON file per World update.

        The name comes from the checkpointed episode counter, so a transition re-run after
        a crash overwrites its own snapshot instead of adding a second one.
        """
        thread = config.get("configurable", {}).get("thread_id", "main")
        rel = Path(self.config.storage.state_dir) / f"{key}.json"
        doc = {
            "world_id": self.config.world_id,
            "thread_id": thread,
            "episode": episode,
            "pass": pass_index,
            "saved_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "state": {key: state.get(key) for key in _BLOCK_KEYS},
        }
        atomic_write(self.root / rel, json.dumps(doc, indent=2, ensure_ascii=False))
        self._rotate_snapshots(keep=self.root / rel)
        return rel.as_posix()

    def _rotate_snapshots(self, keep: Path) -> None:
        """``storage.max_snapshots``: drop the oldest snapshots beyond the cap."""
        cap = self.config.storage.max_snapshots
        if cap is None:
            return
        snapshots = sorted(self.snapshots(), key=lambda p: (p.stat().st_mtime_ns, p.name))
        for old in snapshots[: max(0, len(snapshots) - cap)]:
            if old != keep:
                old.unlink(missing_ok=True)


#: what the canon template starts from when no initial world is given: a small model
#: needs something concrete to develop, and a user can see the world evolve from it
_CANON_INITIAL = {
    "story": "A fishing village sits below an old lighthouse on a rocky northern coast. "
    "Tamsin, the lighthouse keeper, has noticed strange lights out at sea.",
    "style": "painterly, moody northern light",
    "rules": ["Events follow from what already happened."],
}


# --------------------------------------------------------------------------------------
# review: a person approves, edits or rejects the state before World update
# --------------------------------------------------------------------------------------
ReviewDecision = Literal["approve", "reject"] | Mapping[str, Any]


class _Review(BaseModel):
    reject: bool = False
    edits: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def parse(cls, decision: Any) -> _Review:
        if decision in ("approve", True, None):
            return cls()
        if decision in ("reject", False):
            return cls(reject=True)
        if isinstance(decision, Mapping):
            unknown = sorted(str(k) for k in decision if k not in _BLOCK_KEYS)
            if unknown:
                raise StateError(f"unknown block {', '.join(unknown)} in the review: edit block1 … block5")
            WorldState.parse(dict(decision))  # names a malformed block
            return cls(edits=dict(decision))
        raise ValueError(f"a review decision is 'approve', 'reject' or a dict of blocks, got {decision!r}")


def _review_request(state: Mapping[str, Any], pass_index: int) -> dict[str, Any]:
    return {"review": "world_update", "pass": pass_index, "state": {k: state.get(k) for k in _BLOCK_KEYS}}


# --------------------------------------------------------------------------------------
# routing: a pure function of the state, shared by the nodes and the conditional edges
# --------------------------------------------------------------------------------------
def _check_call(num_steps: Any, action: Any) -> None:
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    if action is not None and not isinstance(action, str):
        raise TypeError(f"action must be a string or None, got {type(action).__name__}")


def _filled(state: Mapping[str, Any]) -> set[int]:
    # the world keeps a block channel None unless it holds a filled block
    return {n for n, key in zip(BLOCK_NUMBERS, _BLOCK_KEYS) if state.get(key)}


def _route(
    state: Mapping[str, Any],
    cursor: tuple[int, int] | list[int],
    passes: int,
    conditions: Mapping[str, Condition],
    cycle: Sequence[str] = CYCLE,
) -> tuple[list[dict[str, Any]], str]:
    """From the last transition that ran, the skips before the next one, and the next one."""
    filled = _filled(state)
    pass_index, index = cursor
    skipped: list[dict[str, Any]] = []
    while True:
        index += 1
        if index == len(cycle):
            pass_index, index = pass_index + 1, 0
        if pass_index > passes:
            return skipped, END
        transition = cycle[index]
        ok, reason = conditions[transition].check(filled)
        if ok:
            return skipped, transition
        if transition == "world_update":
            reason = f"state is not full ({reason}): dropped"
        skipped.append({"pass": pass_index, "transition": transition, "status": "skipped", "reason": reason})




def _coerce_block(transition: str, n: int, value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    model = BLOCK_TYPES[n]
    try:
        block = value if isinstance(value, model) else model.model_validate(value)
    except ValidationError as exc:
        raise TransitionError(transition, f"returned an invalid block{n}: {exc.errors()[0]['msg']}") from exc
    return block.model_dump(mode="json") if block.filled() else None


def _is_retryable(exc: BaseException) -> bool:
    """Retry a transition on bad model output (the canon re-asks) and on an API outage
    (HTTP 429/5xx, timeouts, dropped connections) the model client's own retries did not
    outlast; anything else fails at once."""
    from worldgen.agents.base import ModelOutputError
    from worldgen.blocks.api_clients import is_transient

    if not isinstance(exc, TransitionError):
        return False
    return isinstance(exc.__cause__, ModelOutputError) or is_transient(exc)


def _canon_stages(
    llm: Any, text_to_image: Any, overrides: Mapping[str, Stage | StageImpl], *, agents: bool = False
) -> dict[str, Stage | StageImpl]:
    unknown = [t for t in overrides if t not in CYCLE]
    if unknown:
        raise ValueError(f"unknown transition {', '.join(unknown)}: expected {', '.join(CYCLE)}")
    if all(t in overrides for t in CYCLE):
        return dict(overrides)
    from worldgen.agents import canon_stages

    canon = {t: Stage.coerce(t, impl) for t, impl in canon_stages(llm=llm, text_to_image=text_to_image,
                                                                  agents=agents).items() if t not in overrides}
    for stage in canon.values():
        stage.canon = True
    return {**canon, **overrides}
