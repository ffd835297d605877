"""Human in the loop: a world that pauses before World update for approval, edits or rejection."""

from __future__ import annotations

import json

import pytest

from worldgen import World
from worldgen.agents import WorldUpdate
from worldgen.state import StateError

STATE = {"block1": "u1", "block2": "u2", "block3": "u3"}


@pytest.fixture
def reviewed(tmp_path, log):
    worlds = []

    def make(root=None):
        stages = {**log.stages(), "world_update": WorldUpdate()}
        world = World.from_template("canon", root=root or tmp_path / "w", stages=stages, review=True)
        worlds.append(world)
        return world

    yield make
    for w in worlds:
        w.close()


def test_pauses_before_world_update_with_the_candidate(reviewed, log):
    world = reviewed()
    result = world.invoke(STATE)
    assert result.ran() == ["philosopher", "author"]
    assert result.pending_review["state"]["block5"] == {"text": "it happened"}
    assert result.snapshots == [] and world.snapshots() == []
    assert world.pending_review()["pass"] == 1
    assert "development" not in log.names()


def test_approve_applies_and_finishes_the_pass(reviewed):
    world = reviewed()
    world.invoke(STATE)
    result = world.review("approve")
    assert result.ran() == ["world_update", "development", "architect", "creator"]
    assert result.trace[0].review == "approved"
    assert len(result.snapshots) == 1 and world.pending_review() is None
    assert world.content.chronicle[0]["outcome"] == "it happened"


def test_edit_replaces_blocks_in_the_snapshot_and_the_content(reviewed):
    world = reviewed()
    world.invoke(STATE)
    result = world.review({"block5": "Ada opened the gate instead."})
    assert result.trace[0].review == "edited"
    doc = json.loads(result.snapshots[0].read_text())["state"]
    assert doc["block5"] == {"text": "Ada opened the gate instead."} and doc["block1"] == {"text": "u1"}
    assert world.content.chronicle[0]["outcome"] == "Ada opened the gate instead."
    assert "Ada" in world.content.entities


def test_reject_drops_the_state(reviewed, log):
    world = reviewed()
    world.invoke(STATE)
    result = world.review("reject")
    first = result.trace[0]
    assert first.transition == "world_update" and first.status == "skipped" and "rejected" in first.reason
    assert result.snapshots == [] and world.content.chronicle == []
    assert result.ran() == ["development", "architect", "creator"] and result.state.filled() == {1, 2, 3}


@pytest.mark.parametrize(("decision", "error"), [({"block7": "x"}, "block7"), ({"block2": 5}, "block2"),
                                                  ("maybe", "approve")])
def test_bad_decisions_are_refused_and_the_review_stays_pending(reviewed, decision, error):
    world = reviewed()
    world.invoke(STATE)
    with pytest.raises((StateError, ValueError), match=error):
        world.review(decision)
    assert world.pending_review() is not None
    assert len(world.review("approve").snapshots) == 1


def test_edit_that_empties_a_block_is_an_error_naming_the_transition(reviewed):
    world = reviewed()
    world.invoke(STATE)
    with pytest.raises(Exception, match="world_update: an edited state must keep all five blocks filled"):
        world.review({"block4": ""})


def test_review_without_a_pause_is_an_error(reviewed):
    with pytest.raises(ValueError, match="no World update waiting"):
        reviewed().review("approve")


def test_a_pause_survives_reopening(reviewed, tmp_path):
    root = tmp_path / "w"
    first = reviewed(root)
    first.invoke(STATE)
    first.close()
    again = reviewed(root)
    assert again.pending_review()["state"]["block1"] == {"text": "u1"}
    assert again.invoke().pending_review is not None  # continuing asks again, it never skips review
    assert len(again.review("approve").snapshots) == 1


def test_every_pass_is_reviewed(reviewed):
    world = reviewed()
    result = world.invoke(num_steps=3)
    assert result.pending_review["pass"] == 2
    result = world.review("approve")
    assert result.pending_review["pass"] == 3
    result = world.review("approve")
    assert result.pending_review is None and len(world.snapshots()) == 2
