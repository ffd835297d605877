"""Shared fixtures: scripted stages that log their calls, and scripted chat models."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, BaseMessage

from worldgen import World

CYCLE = ("philosopher", "author", "world_update", "development", "architect", "creator")
AFTER_PASS = ["development", "architect", "creator"]
# The table of world.md §2, one row per case: (blocks the user gives, transitions that run,
# snapshots taken). Shared by the scripted world and the world with agents inside (check 34).
TABLE_ROWS = [
    ((), AFTER_PASS, 0),
    ((1,), AFTER_PASS, 0),
    ((1, 2), AFTER_PASS, 0),
    ((1, 2, 3), ["philosopher", "author", "world_update", *AFTER_PASS], 1),
    ((1, 2, 3, 4), ["author", "world_update", *AFTER_PASS], 1),
    ((1, 2, 3, 4, 5), ["world_update", *AFTER_PASS], 1),
    ((1, 5), AFTER_PASS, 0),
    ((1, 3), AFTER_PASS, 0),
]


def user_state(*blocks: int) -> dict[str, str]:
    """The user's input with the given blocks filled ("u1", "u2", ...)."""
    return {f"block{n}": f"u{n}" for n in blocks}


class ScriptedChat(FakeMessagesListChatModel):
    """A fake chat model replying from a script; records what it was asked."""

    seen: list[list[BaseMessage]] = []

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedChat:  # drives ToolNode loops
        return self

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):  # type: ignore[override]
        self.seen.append(list(messages))
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)


def scripted_chat(*replies: str) -> ScriptedChat:
    return ScriptedChat(responses=[AIMessage(r) for r in replies], seen=[])


class CallLog:
    """Scripted transitions: each records its input and returns a fixed block."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def inputs(self, name: str) -> list[dict[str, Any]]:
        return [inp for n, inp in self.calls if n == name]

    def stage(self, name: str, result: Callable[[dict[str, Any]], dict[str, Any]]):
        def run(state: dict[str, Any]) -> dict[str, Any]:
            self.calls.append((name, dict(state)))
            return result(state)

        run.__name__ = name
        return run

    def stages(self) -> dict[str, Any]:
        counter = {"n": 0}

        def development(state: dict[str, Any]) -> dict[str, Any]:
            counter["n"] += 1
            return {"block1": f"intent {counter['n']}"}

        return {
            "philosopher": self.stage("philosopher", lambda s: {"block4": "described"}),
            "author": self.stage("author", lambda s: {"block5": "it happened"}),
            "world_update": self.stage("world_update", lambda s: {}),
            "development": self.stage("development", development),
            "architect": self.stage("architect", lambda s: {"block2": "draw it"}),
            "creator": self.stage("creator", lambda s: {"block3": "made it"}),
        }


@pytest.fixture
def log() -> CallLog:
    return CallLog()


@pytest.fixture
def make_world(tmp_path: Path, log: CallLog):
    worlds: list[World] = []

    def make(root: Path | None = None, **overrides: Any) -> World:
        stages = {**log.stages(), **overrides}
        world = World.from_template("canon", root=root or tmp_path / "w", stages=stages)
        worlds.append(world)
        return world

    yield make
    for w in worlds:
        w.close()


@pytest.fixture
def pool():
    """A fresh process-default model pool for the test (each test loads its models anew),
    the old one restored after."""
    from worldgen.local_models.pool import ModelPool, set_default_pool

    fresh = ModelPool()
    old = set_default_pool(fresh)
    yield fresh
    set_default_pool(old)


def chain_graph(graph_id: str, first: Any, second: Any, ids: tuple[str, str] = ("a", "b")) -> Any:
    """``x → first → second → y``: the two-block graph the level tests build pipelines and
    stages from."""
    from worldgen.engine import Graph

    a, b = ids
    graph = Graph(graph_id)
    graph.add_node(a, first)
    graph.add_node(b, second)
    graph.add_edge(a, "y", b, "x")
    graph.expose_input(a, "x", "x")
    graph.expose_output(b, "y", "y")
    return graph


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Stable Diffusion checkpoint (diffusers layout, safetensors), built once."""
    from tests.tiny_diffusers import build_tiny_stable_diffusion

    return build_tiny_stable_diffusion(tmp_path_factory.mktemp("tiny-sd") / "model")


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads, and on a busy 2-core machine OpenMP threads
    spinning against other processes make them ~50x slower. Opt in per module with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
