"""The canonical cycle: the world.md §2 table and checks 1–17 and 42 of world.md §8."""

from __future__ import annotations

import json

import pytest
from langchain_core.runnables import RunnableLambda
from langgraph.graph import START, StateGraph

from tests.conftest import AFTER_PASS, TABLE_ROWS, user_state
from worldgen import Stage, TransitionError, World, WorldState
from worldgen.stage import StageInput
from worldgen.state import StateError

FULL = {"block1": "u1", "block2": "u2", "block3": "u3", "block4": "u4", "block5": "u5"}


# -- the table of world.md §2, one row per case --------------------------------------------
@pytest.mark.parametrize(
    ("given", "ran", "snaps"),
    TABLE_ROWS,
)
def test_table_row(make_world, log, given, ran, snaps):
    world = make_world()
    result = world.invoke(user_state(*given) if given else None)
    assert result.ran() == ran
    assert log.names() == ran
    assert result.state.filled() == {1, 2, 3}
    assert len(result.snapshots) == snaps == len(world.snapshots())
    # every transition appears exactly once per pass in the trace, ran or skipped
    assert [e.transition for e in result.trace] == [
        "philosopher", "author", "world_update", "development", "architect", "creator"
    ]
    for e in result.trace:
        assert e.status == ("ran" if e.transition in ran else "skipped")
        assert e.reason


def test_check1_no_state_runs_development_architect_creator(make_world, log):
    result = make_world().invoke(state=None)
    assert log.names() == AFTER_PASS
    assert result.state.filled() == {1, 2, 3}
    assert result.snapshots == []


@pytest.mark.parametrize("empty", [{}, {f"block{n}": "" for n in range(1, 6)}, {f"block{n}": None for n in range(1, 6)}])
def test_check2_empty_state_behaves_like_none(make_world, log, empty):
    result = make_world().invoke(empty)
    assert log.names() == AFTER_PASS
    assert result.state.filled() == {1, 2, 3} and result.snapshots == []


def test_check3_block1_comes_from_development(make_world, log):
    result = make_world().invoke({"block1": "the user's intent"})
    assert "philosopher" not in log.names() and "author" not in log.names()
    assert result.state.block1.text == "intent 1"
    skipped = {e.transition: e.reason for e in result.trace if e.status == "skipped"}
    assert "dropped" in skipped["world_update"]


def test_check4_block12_dropped_and_rebuilt(make_world, log):
    result = make_world().invoke(user_state(1, 2))
    assert log.names() == AFTER_PASS
    assert log.inputs("architect")[0]["block1"] == {"text": "intent 1"}
    assert result.state.block2.slots[0].prompt == "draw it"


def test_check5_block123_philosopher_and_author_write_and_snapshot_holds_users_blocks(make_world):
    world = make_world()
    result = world.invoke(user_state(1, 2, 3))
    (snap,) = result.snapshots
    doc = json.loads(snap.read_text())["state"]
    assert doc["block1"] == {"text": "u1"} and doc["block2"]["slots"][0]["prompt"] == "u2"
    assert doc["block3"]["items"][0]["sha256"]  # the user's inline text was stored as a file
    assert (world.root / doc["block3"]["items"][0]["uri"]).read_text() == "u3"
    assert doc["block4"]["items"][0]["text"] == "described"
    assert doc["block5"] == {"text": "it happened"}


def test_check6_block1to4_author_only(make_world, log):
    result = make_world().invoke(user_state(1, 2, 3, 4))
    assert "philosopher" not in log.names() and "author" in log.names()
    doc = json.loads(result.snapshots[0].read_text())["state"]
    assert doc["block4"]["items"][0]["text"] == "u4"


def test_check7_full_state_snapshot_equals_input(make_world, log):
    result = make_world().invoke(FULL)
    assert "philosopher" not in log.names() and "author" not in log.names()
    doc = json.loads(result.snapshots[0].read_text())["state"]
    parsed = WorldState.parse(doc)
    assert parsed.block1.text == "u1" and parsed.block4.items[0].text == "u4"
    assert parsed.block5.text == "u5"


def test_check9_two_passes_from_nothing(make_world, log):
    result = make_world().invoke(num_steps=2)
    assert result.ran() == AFTER_PASS + ["philosopher", "author", "world_update", *AFTER_PASS]
    assert len(result.snapshots) == 1 and result.state.filled() == {1, 2, 3}
    assert [e.pass_index for e in result.trace] == [1] * 6 + [2] * 6


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5])
def test_pass_counts(make_world, log, steps):
    world = make_world()
    result = world.invoke(num_steps=steps)
    assert log.names().count("development") == steps
    assert len(result.snapshots) == steps - 1 == len(world.snapshots())
    assert max(e.pass_index for e in result.trace) == steps


def test_check10_stream_yields_events_as_they_happen(make_world):
    world = make_world()
    events = list(world.stream(num_steps=3))
    assert len(events) == 18
    assert sum(1 for e in events if e.transition == "world_update" and e.status == "ran") == 2


def test_check11_action_reaches_development_only(make_world, log):
    make_world().invoke(user_state(1, 2, 3), action="open the gate")
    for name, inputs in log.calls:
        assert inputs["action"] == ("open the gate" if name == "development" else None), name


def test_action_is_consumed_by_the_first_pass(make_world, log):
    world = make_world()
    world.invoke(action="open the gate", num_steps=2)
    assert [i["action"] for i in log.inputs("development")] == ["open the gate", None]
    world.invoke()
    assert log.inputs("development")[-1]["action"] is None


def test_check12_no_action_still_develops(make_world):
    result = make_world().invoke(action=None)
    assert result.state.block1 and result.state.block1.text


def test_check13_author_sees_world_before_update_architect_after(tmp_path, log):
    seen: dict[str, int] = {}

    def counting(name, block):
        def run(state):
            seen[name] = len(state["world"].chronicle())
            return block

        return run

    from worldgen.agents import WorldUpdate

    stages = {
        **log.stages(),
        "author": counting("author", {"block5": "Mira opened the Gate."}),
        "development": counting("development", {"block1": "next"}),
        "architect": counting("architect", {"block2": "draw"}),
        "world_update": WorldUpdate(),
    }
    with World.from_template("canon", root=tmp_path / "w", stages=stages) as world:
        world.invoke(user_state(1, 2, 3))
        assert seen == {"author": 0, "development": 1, "architect": 1}
        assert world.content.chronicle[0]["outcome"] == "Mira opened the Gate."
        assert "Mira" in world.content.entities


def test_check14_development_output_is_block1_only(make_world):
    sneaky = lambda s: {"block1": "next", "block2": "x", "block3": "y", "block4": "z", "block5": "w"}  # noqa: E731
    world = make_world(development=sneaky, architect=lambda s: {}, creator=lambda s: {})
    result = world.invoke(FULL)
    assert result.state.filled() == {1}


def test_check15_philosopher_and_author_change_only_their_block(make_world):
    world = make_world(
        philosopher=lambda s: {"block4": "d", "block1": "hijack", "block2": "hijack"},
        author=lambda s: {"block5": "o", "block3": "hijack"},
    )
    result = world.invoke(user_state(1, 2, 3))
    doc = json.loads(result.snapshots[0].read_text())["state"]
    assert doc["block1"] == {"text": "u1"} and doc["block2"]["slots"][0]["prompt"] == "u2"
    assert doc["block3"]["items"][0]["sha256"] and doc["block4"]["items"][0]["text"] == "d"


def test_check16_false_condition_never_calls_the_stage(make_world, log):
    from worldgen import Condition

    never = Stage("philosopher", log.stage("philosopher", lambda s: {"block4": "x"}),
                  condition=Condition(requires=(1, 2, 3, 5)))
    result = make_world(philosopher=never).invoke(user_state(1, 2, 3))
    assert "philosopher" not in log.names()
    (event,) = [e for e in result.trace if e.transition == "philosopher"]
    assert event.status == "skipped" and "5" in event.reason


def test_check17_environment_every_pass_update_only_on_full(make_world, log):
    result = make_world().invoke(user_state(1), num_steps=3)
    dev = [e for e in result.trace if e.transition == "development"]
    upd = [e for e in result.trace if e.transition == "world_update"]
    assert [e.status for e in dev] == ["ran"] * 3
    assert [e.status for e in upd] == ["skipped", "ran", "ran"]


def test_check42_five_autonomous_passes_leave_four_snapshots(make_world):
    world = make_world()
    result = world.invoke(num_steps=5)
    assert len(result.snapshots) == 4 == len(world.snapshots())
    assert [p.name for p in world.snapshots()] == [f"{i:06d}.json" for i in range(1, 5)]


# -- continuing, replacing, reopening -----------------------------------------------------
def test_none_continues_the_persisted_state(make_world, log):
    world = make_world()
    world.invoke()
    result = world.invoke()  # second call continues from {1,2,3}
    assert result.ran()[:3] == ["philosopher", "author", "world_update"]
    assert len(world.snapshots()) == 1


def test_explicit_state_replaces_current(make_world, log):
    world = make_world()
    world.invoke()
    result = world.invoke(user_state(1))
    assert "world_update" not in result.ran()


def test_reopen_continues_where_it_stopped(tmp_path, log):
    root = tmp_path / "w"
    with World.from_template("canon", root=root, stages=log.stages()) as world:
        world.invoke(num_steps=2)
    with World.from_template("canon", root=root, stages=log.stages()) as again:
        assert again.state.filled() == {1, 2, 3}
        result = again.invoke()
        assert result.ran()[:3] == ["philosopher", "author", "world_update"]
        assert [p.name for p in again.snapshots()] == ["000001.json", "000002.json"]
    for name in ("checkpoints.sqlite", "store.sqlite", "world.yaml", "states", "artifacts"):
        assert (root / name).exists(), name


def test_threads_are_independent(make_world):
    world = make_world()
    world.invoke(num_steps=2, thread_id="a")
    result = world.invoke(thread_id="b")
    assert result.snapshots == [] and result.ran() == AFTER_PASS
    assert world.current_state("a").filled() == {1, 2, 3}
    assert [p.name for p in world.snapshots()] == ["a-000001.json"]


# -- replacing transitions ----------------------------------------------------------------
def test_any_transition_accepts_stage_runnable_or_function(make_world, log):
    runnable = RunnableLambda(lambda s: {"block2": "from a runnable"})
    staged = Stage("creator", lambda s: {"block3": "from a stage"})
    result = make_world(architect=runnable, creator=staged).invoke()
    assert result.state.block2.slots[0].prompt == "from a runnable"
    assert result.state.block3.items[0].inline == "from a stage"


def test_stage_with_inner_structure_runs_as_subgraph(make_world):
    inner = StateGraph(StageInput)
    inner.add_node("draft", lambda s: {"block4": "draft of " + s["block1"]["text"]})
    inner.add_node("polish", lambda s: {"block4": s["block4"].upper()})
    inner.add_edge(START, "draft")
    inner.add_edge("draft", "polish")
    stage = Stage("philosopher", inner)
    assert stage.is_subgraph
    world = make_world(philosopher=stage)
    result = world.invoke({"block1": "a", "block2": "b", "block3": "c"})
    doc = json.loads(result.snapshots[0].read_text())["state"]
    assert doc["block4"]["items"][0]["text"] == "DRAFT OF A"


def test_from_template_rejects_unknown_transition(tmp_path):
    with pytest.raises(ValueError, match="oracle"):
        World.from_template("canon", root=tmp_path / "w", stages={"oracle": lambda s: {}})


def test_unknown_template(tmp_path):
    with pytest.raises(ValueError, match="unknown world template 'nope'"):
        World.from_template("nope", root=tmp_path)


# -- bad input ----------------------------------------------------------------------------
def test_bad_state_names_the_block_and_persists_nothing(make_world):
    world = make_world()
    world.invoke()
    before = world.state
    with pytest.raises(StateError, match="block7"):
        world.invoke({"block7": "x"})
    with pytest.raises(StateError, match="block2"):
        world.invoke({"block2": 42})
    assert world.state == before
    assert len(list(world.graph.get_state_history({"configurable": {"thread_id": "main"}}))) > 0


@pytest.mark.parametrize("bad", ["../escape", "a/b", "..", ""])
def test_world_id_with_path_separator_is_rejected(tmp_path, log, bad):
    with pytest.raises(ValueError, match="world id"):
        World.from_template("canon", root=tmp_path / "w", world_id=bad, stages=log.stages())


def test_thread_id_with_separator_is_rejected(make_world):
    with pytest.raises(ValueError, match="thread id"):
        make_world().invoke(thread_id="../x")


def test_num_steps_must_be_positive(make_world):
    with pytest.raises(ValueError, match="num_steps"):
        make_world().invoke(num_steps=0)


def test_failing_stage_names_transition_and_keeps_state(make_world):
    calls = {"n": 0}

    def flaky(state):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("disk on fire")
        return {"block3": "made"}

    world = make_world(creator=flaky)
    with pytest.raises(TransitionError, match="creator: RuntimeError: disk on fire"):
        world.invoke()
    assert world.state.filled() == {1, 2}  # what ran before the failure is kept
    result = world.invoke()  # no state, no action: the interrupted run is finished
    assert result.ran() == ["creator"] and world.state.filled() == {1, 2, 3}


def test_development_must_produce_block1(make_world):
    world = make_world(development=lambda s: {"block1": ""})
    with pytest.raises(TransitionError, match="development: must return a non-empty block1"):
        world.invoke()


def test_invalid_block_from_a_stage_names_it(make_world):
    world = make_world(architect=lambda s: {"block2": {"slots": "nope"}})
    with pytest.raises(TransitionError, match="architect: returned an invalid block2"):
        world.invoke()


def test_an_injected_store_gets_the_initial_world(tmp_path, log):
    """On LangGraph Server the graph runs on the platform's store: it is seeded too."""
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.store.memory import InMemoryStore

    seen = {}

    def development(state):
        seen["story"] = state["world"].story()
        return {"block1": "next"}

    world = World.from_template("canon", root=tmp_path / "w", initial_world={"story": "A valley."},
                                stages={**log.stages(), "development": development})
    with world:
        store = InMemoryStore()
        graph = world.compile(checkpointer=InMemorySaver(), store=store)
        graph.invoke({"num_steps": 1}, {"configurable": {"thread_id": "t"}})
        assert seen["story"] == "A valley."
        assert store.get(("worlds", world.world_id, "style"), "story").value == {"text": "A valley."}


def test_validate_passes_for_the_canon_and_reports_an_uncreatable_state_dir(tmp_path, log):
    world = World.from_template("canon", root=tmp_path / "w", stages=log.stages())
    with world:
        assert world.validate().is_valid
        (tmp_path / "w" / "blocker").write_text("a file, not a folder")
        world.config.storage.state_dir = "blocker/states"
        result = world.validate(strict=False)
        assert not result.is_valid and "storage.state_dir" in str(result.errors[0])
        with pytest.raises(ValueError, match="storage.state_dir: cannot create"):
            world.validate()


def test_validate_prefixes_a_stage_error_with_its_transition(tmp_path, log):
    from worldgen.engine.validation import ValidationIssue, ValidationResult

    class Broken:
        def __call__(self, state):
            return {}

        def validate(self, strict=True):
            return ValidationResult([ValidationIssue("contract uses block7")], [])

    world = World.from_template("canon", root=tmp_path / "w", stages={**log.stages(), "author": Broken()})
    with world:
        result = world.validate(strict=False)
        assert [str(e) for e in result.errors] == ["author: contract uses block7"]


def test_canon_template_fills_style(tmp_path, log):
    world = World.from_template("canon_2.0", root=tmp_path / "w", stages=log.stages(), style="noir")
    with world:
        assert world.content.style == "noir" and world.validate().is_valid
        assert "noir" in (tmp_path / "w" / "world.yaml").read_text()


def test_hooks_see_each_transition_that_ran_with_states_before_and_after(make_world):
    seen = []
    world = make_world()
    world.invoke(user_state(1, 2, 3), hooks=[lambda t, before, after: seen.append((t, before, after))])
    assert [t for t, _, _ in seen] == ["philosopher", "author", "world_update", "development", "architect", "creator"]
    philosopher = seen[0]
    assert philosopher[1].filled() == {1, 2, 3} and philosopher[2].filled() == {1, 2, 3, 4}
    development = seen[3]
    assert development[1].is_full() and development[2].filled() == {1}


def test_dry_run_calls_no_stage_and_reports_the_decisions(make_world, log):
    world = make_world()
    planned = world.invoke(user_state(1, 2, 3), num_steps=2, dry_run=True)
    assert log.calls == [] and world.snapshots() == []
    assert planned.ran() == ["philosopher", "author", "world_update", "development", "architect", "creator",
                             "philosopher", "author", "world_update", "development", "architect", "creator"]
    assert len(planned.trace) == 12
    real = world.invoke(user_state(1, 2, 3), num_steps=2)
    assert real.ran() == planned.ran()
    nothing = world.invoke(None, dry_run=True)  # continues from the persisted {1,2,3}
    assert nothing.ran()[:3] == ["philosopher", "author", "world_update"]
    fresh = make_world(root=world.root.parent / "fresh").invoke(dry_run=True)
    assert fresh.ran() == ["development", "architect", "creator"]
    assert [e.status for e in fresh.trace[:3]] == ["skipped"] * 3


@pytest.mark.parametrize("given", [(), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4), (1, 2, 3, 4, 5), (1, 5)])
def test_table_holds_with_an_agent_as_development(make_world, log, given):
    """world.md check 34: the contract does not change with an agent inside."""
    from tests.conftest import scripted_chat
    from worldgen.agents import AgentDevelopment

    world = make_world(development=AgentDevelopment(scripted_chat("An event.")))
    expected = make_world(root=world.root.parent / "plain").invoke(user_state(*given)).ran()
    result = world.invoke(user_state(*given), action="knock")
    assert result.ran() == expected and result.state.block1.text == "An event."
    assert result.state.filled() == {1, 2, 3}


def test_dry_run_checks_its_arguments_like_a_run(make_world):
    world = make_world()
    with pytest.raises(ValueError, match="num_steps"):
        world.invoke(num_steps=0, dry_run=True)
    with pytest.raises(TypeError, match="action"):
        world.invoke(action=5, dry_run=True)


def test_check30_stages_with_one_checkpoint_share_one_model_and_train_it_once(tmp_path, log, tiny_sd):
    """world.md check 30: two stages on one checkpoint_ref hold one object; the world's
    trainable parameters list it once."""
    from worldgen.stage_graph import StageGraph

    creator = Stage.from_template("creator_stage", checkpoint=tiny_sd, num_inference_steps=1, height=32, width=32)
    again = Stage.from_template("creator_stage", checkpoint=tiny_sd, num_inference_steps=1, height=32, width=32)
    # the second text_to_image stage graph, held as the Philosopher's inner graph (never run here)
    philosopher = Stage("philosopher", again.stage_graph)
    assert isinstance(philosopher.impl, StageGraph)

    def unet(stage: Stage):
        return stage.stage_graph.get_node("text_to_image").get_graph("text_to_image").get_node("backbone").block

    assert unet(creator) is not unet(again) and unet(creator).module is unet(again).module
    with World.from_template("canon", root=tmp_path / "w",
                             stages={**log.stages(), "creator": creator, "philosopher": philosopher}) as world:
        params = world.trainable_parameters()
        assert len({id(p) for p in params}) == len(params) > 0
        unet_params = {id(p) for p in unet(creator).module.parameters()}
        assert unet_params <= {id(p) for p in params}
