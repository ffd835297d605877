"""A world killed with SIGKILL mid-pass resumes from its last checkpoint on reopen."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from worldgen import World
from worldgen.agents import WorldUpdate

SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from worldgen import World
    from worldgen.agents import WorldUpdate

    root, kill_at, marker = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    name, nth = kill_at.split(":")
    seen = {}

    def stage(transition, block):
        def run(state):
            seen[transition] = seen.get(transition, 0) + 1
            if transition == name and seen[transition] == int(nth):
                marker.write_text("reached")
                time.sleep(120)  # the test kills us here
            if transition == "world_update":
                return WorldUpdate()(state)
            return block
        return run

    stages = {
        "philosopher": stage("philosopher", {"block4": "described"}),
        "author": stage("author", {"block5": "Ada crossed the River."}),
        "world_update": stage("world_update", {}),
        "development": stage("development", {"block1": "next"}),
        "architect": stage("architect", {"block2": "draw"}),
        "creator": stage("creator", {"block3": "made"}),
    }
    World.from_template("canon", root=root, stages=stages).invoke(num_steps=5)
    """
)


def _stages() -> dict:
    return {
        "philosopher": lambda s: {"block4": "described"},
        "author": lambda s: {"block5": "Ada crossed the River."},
        "world_update": WorldUpdate(),
        "development": lambda s: {"block1": "next"},
        "architect": lambda s: {"block2": "draw"},
        "creator": lambda s: {"block3": "made"},
    }


def _run_until_killed(tmp_path: Path, kill_at: str) -> Path:
    root, marker, script = tmp_path / "w", tmp_path / "reached", tmp_path / "crashy.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(root), kill_at, str(marker)])
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, f"the world exited before reaching {kill_at}"
            assert time.monotonic() < deadline, "timed out waiting for the world to reach the kill point"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    return root


@pytest.mark.parametrize(
    ("kill_at", "snaps_before"),
    [("world_update:2", 1), ("development:3", 2), ("creator:4", 3)],
)
def test_sigkill_then_reopen_resumes_without_losing_or_duplicating_snapshots(tmp_path, kill_at, snaps_before):
    root = _run_until_killed(tmp_path, kill_at)
    assert len(list((root / "states").glob("*.json"))) == snaps_before

    with World.from_template("canon", root=root, stages=_stages()) as world:
        result = world.invoke()  # no state, no action: finish the interrupted run
        passes = {e.pass_index for e in result.trace}
        assert max(passes) == 5  # the interrupted run's remaining passes, not a new run
        names = [p.name for p in world.snapshots()]
        assert names == [f"{i:06d}.json" for i in range(1, 5)]
        episodes = [json.loads(p.read_text())["episode"] for p in world.snapshots()]
        assert episodes == [1, 2, 3, 4]
        assert [e["key"] for e in world.content.chronicle] == [f"{i:06d}" for i in range(1, 5)]
        assert world.state.filled() == {1, 2, 3}
        assert world.content.entities["Ada"]["episodes"] == [f"{i:06d}" for i in range(1, 5)]
        # and the world goes on from there
        again = world.invoke()
        assert again.ran()[:3] == ["philosopher", "author", "world_update"]
        assert len(world.snapshots()) == 5
