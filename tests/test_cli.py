"""The ``worldgen`` command line, end to end on worlds with scripted stages (no model, no network).

The CLI builds worlds from model specs; tests swap ``worldgen.cli._open_world`` for one that
builds the same canon world with plain functions as stages.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

import worldgen.cli as cli
from worldgen.agents.world_update import WorldUpdate
from worldgen.chronicle import write_chronicle
from worldgen.world import TraceEvent, World, WorldConfig

OUTCOME = "Mara of Hollow Hill watched the <red> sky & said nothing."
runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})


def _creator(state: dict[str, Any]) -> dict[str, Any]:
    ref = state["world"].artifacts.put_image(
        Image.new("RGB", (8, 8), "red"), slot="scene", meta={"prompt": "a red sky"}
    )
    return {"block3": {"items": [ref.model_dump(mode="json")]}}


def scripted_stages(**overrides: Any) -> dict[str, Any]:
    stages = {
        "philosopher": lambda s: {"block4": "A red square, nothing else."},
        "author": lambda s: {"block5": OUTCOME},
        "world_update": WorldUpdate(),
        "development": lambda s: {"block1": "The sky over Hollow Hill turns red."},
        "architect": lambda s: {"block2": "a red sky over Hollow Hill"},
        "creator": _creator,
    }
    return {**stages, **overrides}


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch):
    """Make the CLI build scripted worlds; returns a setter to swap the stages per test."""
    chosen: dict[str, Any] = {"stages": scripted_stages()}
    calls: list[tuple[Any, ...]] = []

    def open_world(
        root: Path, llm: str | None, text_to_image: str | None, review: bool | None = None, agents: bool | None = None
    ) -> World:
        calls.append((root, llm, text_to_image))
        if review is None and (root / "world.yaml").exists():
            review = WorldConfig.load(root / "world.yaml").review
        return World.from_template("canon", root=root, stages=chosen["stages"], review=bool(review))

    monkeypatch.setattr(cli, "_open_world", open_world)

    def use(**overrides: Any) -> list[tuple[Any, ...]]:
        chosen["stages"] = scripted_stages(**overrides)
        return calls

    return use


def _has_traceback(result: Any) -> bool:
    return "Traceback" in result.output


# --------------------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------------------
def test_run_two_passes_prints_transitions_and_writes_chronicle(tmp_path: Path, scripted: Any) -> None:
    root = tmp_path / "w"
    calls = scripted()
    result = runner.invoke(cli.app, ["run", "--root", str(root), "--steps", "2", "--llm", "openai:x"])
    assert result.exit_code == 0, result.output
    assert calls == [(root, "openai:x", None)]
    out = result.output
    # one line per transition, skipped ones with their reason
    for name in ("philosopher", "author", "world_update", "development", "architect", "creator"):
        assert name in out
    assert "✓ pass 1  development" in out
    assert "· pass 1  philosopher" in out and "skipped" in out
    assert "needs blocks 1, 2, 3, which are empty" in out
    assert "states/000001.json" in out
    assert re.search(r"\d+\.\d\ds", out)  # elapsed seconds per transition
    assert "2/2" in out  # the progress bar over passes finished

    page = root / "chronicle.html"
    assert page.is_file()
    assert str(page) in out.replace("\n", "")
    html = page.read_text(encoding="utf-8")
    assert "Mara of Hollow Hill watched the &lt;red&gt; sky &amp; said nothing." in html
    assert "<red>" not in html  # every text is escaped
    srcs = re.findall(r'<img src="([^"]+)"', html)
    assert srcs and all(s.startswith("artifacts/") for s in srcs)
    assert all((root / s).is_file() for s in srcs)
    # the last run's trace, with the skipped transitions and why
    assert '<tr class="skipped"><td>1</td><td>philosopher</td>' in html
    assert "state is not full" in html
    # the current state after pass 2: blocks 1–3 with the image
    state_section = html.split('id="state"', 1)[1]
    assert "1 (intent), 2 (generation config), 3 (artifacts)" in state_section
    assert "<img src=" in state_section.split('id="trace"', 1)[0]
    # summary
    assert re.search(r"passes\s*│\s*2", out)
    assert re.search(r"transitions ran\s*│\s*9", out)
    assert re.search(r"snapshots written\s*│\s*1", out)


def test_run_continues_an_existing_world(tmp_path: Path, scripted: Any) -> None:
    scripted()
    root = tmp_path / "w"
    assert runner.invoke(cli.app, ["run", "--root", str(root), "--steps", "2"]).exit_code == 0
    result = runner.invoke(cli.app, ["run", "--root", str(root), "--action", "a storm comes"])
    assert result.exit_code == 0, result.output
    assert "starts a new state from the world and the action" in result.output
    assert len(list((root / "states").glob("*.json"))) == 2


def test_run_rejects_zero_steps_before_touching_the_world(tmp_path: Path, scripted: Any) -> None:
    calls = scripted()
    root = tmp_path / "w"
    result = runner.invoke(cli.app, ["run", "--root", str(root), "--steps", "0"])
    assert result.exit_code != 0
    assert "--steps" in result.output
    assert not _has_traceback(result)
    assert calls == [] and not root.exists()


def test_transition_error_exits_1_naming_the_transition(tmp_path: Path, scripted: Any) -> None:
    def broken(state: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("no brush")

    scripted(creator=broken)
    result = runner.invoke(cli.app, ["run", "--root", str(tmp_path / "w")])
    assert result.exit_code == 1
    assert "creator" in result.stderr and "failed" in result.stderr
    assert "no brush" in result.stderr
    assert not _has_traceback(result)
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_invalid_block_from_a_stage_is_a_clean_error(tmp_path: Path, scripted: Any) -> None:
    scripted(architect=lambda s: {"block2": {"slots": "not a list"}})
    result = runner.invoke(cli.app, ["run", "--root", str(tmp_path / "w")])
    assert result.exit_code == 1
    assert "architect" in result.stderr
    assert not _has_traceback(result)


def test_run_resumes_after_a_failed_transition(tmp_path: Path, scripted: Any) -> None:
    root = tmp_path / "w"
    scripted(author=lambda s: (_ for _ in ()).throw(RuntimeError("the author is asleep")))
    assert runner.invoke(cli.app, ["run", "--root", str(root), "--steps", "2"]).exit_code == 1
    scripted()
    result = runner.invoke(cli.app, ["run", "--root", str(root)])
    assert result.exit_code == 0, result.output
    assert "resuming an interrupted run (2 passes)" in result.output
    assert "✓ pass 2  author" in result.output
    assert len(list((root / "states").glob("*.json"))) == 1


# --------------------------------------------------------------------------------------
# show
# --------------------------------------------------------------------------------------
def test_show_prints_chronicle_and_state(tmp_path: Path, scripted: Any) -> None:
    scripted()
    root = tmp_path / "w"
    assert runner.invoke(cli.app, ["run", "--root", str(root), "--steps", "2"]).exit_code == 0
    result = runner.invoke(cli.app, ["show", "--root", str(root)])  # the real reader: no models
    assert result.exit_code == 0, result.output
    out = result.output
    assert "1 episode" in out
    assert "The sky over Hollow Hill turns red." in out
    assert "Mara of Hollow Hill" in out
    assert "artifacts/" in out
    assert "block 1 · Intent" in out and "block 3 · Artifacts" in out
    assert "block 4" not in out  # not filled after the last pass


def test_show_without_a_world_is_a_clean_error(tmp_path: Path) -> None:
    result = runner.invoke(cli.app, ["show", "--root", str(tmp_path / "nowhere")])
    assert result.exit_code == 1
    assert "no world here" in result.stderr
    assert not (tmp_path / "nowhere").exists()


# --------------------------------------------------------------------------------------
# validate
# --------------------------------------------------------------------------------------
def test_validate_accepts_the_config_a_run_wrote(tmp_path: Path, scripted: Any) -> None:
    scripted()
    root = tmp_path / "valley"
    assert runner.invoke(cli.app, ["run", "--root", str(root)]).exit_code == 0
    result = runner.invoke(cli.app, ["validate", str(root / "world.yaml")])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output and "valley" in result.output


def test_validate_accepts_json(tmp_path: Path) -> None:
    path = tmp_path / "world.json"
    path.write_text(json.dumps({"schema_version": 1, "world_id": "isle"}))
    result = runner.invoke(cli.app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "isle" in result.output


@pytest.mark.parametrize(
    ("doc", "named"),
    [
        ({"world_id": "w", "colour": "red"}, "colour"),
        ({"world_id": "w", "storage": {"state_dir": "states", "bucket": "x"}}, "storage.bucket"),
        ({"schema_version": 7, "world_id": "w"}, "schema_version 7"),
        ({"world_id": "../escape"}, "world id"),
    ],
)
def test_validate_rejects_naming_the_key(tmp_path: Path, doc: dict[str, Any], named: str) -> None:
    path = tmp_path / "world.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = runner.invoke(cli.app, ["validate", str(path)])
    assert result.exit_code == 1
    assert named in result.stderr
    assert "valid:" not in result.output
    assert not _has_traceback(result)


def test_validate_missing_or_broken_file(tmp_path: Path) -> None:
    result = runner.invoke(cli.app, ["validate", str(tmp_path / "absent.yaml")])
    assert result.exit_code == 1 and not _has_traceback(result)
    bad = tmp_path / "bad.yaml"
    bad.write_text("world_id: [unclosed\n")
    result = runner.invoke(cli.app, ["validate", str(bad)])
    assert result.exit_code == 1 and "not valid YAML" in result.stderr


# --------------------------------------------------------------------------------------
# the chronicle page on its own
# --------------------------------------------------------------------------------------
def test_chronicle_inlines_text_artifacts_and_links_from_elsewhere(tmp_path: Path) -> None:
    def creator(state: dict[str, Any]) -> dict[str, Any]:
        store = state["world"].artifacts
        image = store.put_image(Image.new("RGB", (8, 8), "blue"), slot="scene")
        text = store.put_text("A <letter> from the sea.", slot="letter")
        return {"block3": {"items": [image.model_dump(mode="json"), text.model_dump(mode="json")]}}

    root = tmp_path / "w"
    with World.from_template(
        "canon", root=root, stages=scripted_stages(creator=creator),
        initial_world={"story": "An island <of> salt.", "style": "woodcut", "rules": ["no magic"]},
    ) as world:
        result = world.invoke(num_steps=2)
        page = write_chronicle(world, trace=result.trace)
        elsewhere = write_chronicle(world, tmp_path / "pages" / "c.html")
    html = page.read_text(encoding="utf-8")
    assert "<title>w — chronicle</title>" in html
    assert "An island &lt;of&gt; salt." in html and "woodcut" in html and "no magic" in html
    assert "A &lt;letter&gt; from the sea." in html  # text artifact inlined, escaped
    assert "http" not in html.replace("http-equiv", "")  # no external resources
    assert "<script" not in html
    other = elsewhere.read_text(encoding="utf-8")
    srcs = re.findall(r'<img src="([^"]+)"', other)
    assert srcs and all(s.startswith("../w/artifacts/") for s in srcs)
    assert all((elsewhere.parent / s).resolve().is_file() for s in srcs)
    assert 'id="trace"' not in other  # no trace given


def test_chronicle_of_a_new_world(tmp_path: Path) -> None:
    with World.from_template("canon", root=tmp_path / "w", stages=scripted_stages()) as world:
        html = write_chronicle(world).read_text(encoding="utf-8")
    assert "Nothing has happened yet" in html
    assert "All five blocks are empty" in html


def test_chronicle_skips_refs_that_escape_the_store(tmp_path: Path) -> None:
    evil = {"kind": "image", "uri": "artifacts/../../etc/passwd", "slot": "scene"}
    stages = scripted_stages(creator=lambda s: {"block3": {"items": [evil]}})
    with World.from_template("canon", root=tmp_path / "w", stages=stages) as world:
        world.invoke(num_steps=2)
        html = write_chronicle(world).read_text(encoding="utf-8")
    assert "<img" not in html
    assert "missing image" in html


def test_trace_events_render_with_reasons(tmp_path: Path) -> None:
    trace = [TraceEvent.model_validate({"pass": 1, "transition": "author", "status": "skipped",
                                        "reason": "needs <block> 4"})]
    with World.from_template("canon", root=tmp_path / "w", stages=scripted_stages()) as world:
        html = write_chronicle(world, trace=trace).read_text(encoding="utf-8")
    assert "needs &lt;block&gt; 4" in html


def test_ctrl_c_exits_130_and_the_next_run_resumes(tmp_path: Path, scripted: Any) -> None:
    def interrupted(state: dict[str, Any]) -> dict[str, Any]:
        raise KeyboardInterrupt

    root = tmp_path / "w"
    scripted(architect=interrupted)
    result = runner.invoke(cli.app, ["run", "--root", str(root), "--steps", "2"])
    assert result.exit_code == 130
    assert "interrupted" in result.stderr
    scripted()
    result = runner.invoke(cli.app, ["run", "--root", str(root)])
    assert result.exit_code == 0, result.output
    assert "resuming an interrupted run" in result.output
    assert "✓ pass 1  architect" in result.output


@pytest.mark.slow
def test_demo_runs_two_passes_on_the_embedded_models(tmp_path):
    """What `make demo` does: the agentic canon world on the real SmolLM2 and the procedural
    renderer, end to end."""
    import sys

    root = tmp_path / "demo"
    exe = Path(sys.executable).parent / "worldgen"
    proc = subprocess.run(
        [str(exe), "run", "--root", str(root), "--steps", "2", "--agents"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(list((root / "states").glob("*.json"))) == 1
    html = (root / "chronicle.html").read_text()
    assert "<img" in html and "artifacts/" in html
    with World.open(root) as world:
        assert world.config.agents
        episode = world.content.chronicle[0]
        assert episode["outcome"].strip() and episode["intent"].strip()
        assert world.state.filled() == {1, 2, 3}
        assert any(a["kind"] == "image" for a in episode["artifacts"])


def test_review_pauses_then_the_review_command_answers(tmp_path: Path, scripted: Any, monkeypatch) -> None:
    root = tmp_path / "w"
    monkeypatch.setattr(cli, "_open_for_reading", lambda r: World.from_template(
        "canon", root=r, stages=scripted_stages(), review=True))
    result = runner.invoke(cli.app, ["run", "--root", str(root), "--steps", "2", "--review"])
    assert result.exit_code == 0, result.output
    assert "waits for review" in result.output and "waiting for review" in result.output
    assert not list((root / "states").glob("*.json"))
    result = runner.invoke(cli.app, ["review", "--root", str(root), "--outcome", "Mara left Hollow Hill."])
    assert result.exit_code == 0, result.output
    (snap,) = (root / "states").glob("*.json")
    assert json.loads(snap.read_text())["state"]["block5"] == {"text": "Mara left Hollow Hill."}
    result = runner.invoke(cli.app, ["review", "--root", str(root), "--approve"])
    assert result.exit_code == 1 and "no World update is waiting" in result.output + result.stderr


def test_review_needs_exactly_one_answer(tmp_path: Path) -> None:
    result = runner.invoke(cli.app, ["review", "--root", str(tmp_path), "--approve", "--reject"])
    assert result.exit_code == 1 and "exactly one" in result.stderr


@pytest.mark.parametrize("kind", ["world", "graph"])
def test_schema_prints_json_schema(kind: str) -> None:
    result = runner.invoke(cli.app, ["schema", kind])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["type"] == "object" and ("world_id" if kind == "world" else "nodes") in document["properties"]


def test_schema_rejects_unknown_kind() -> None:
    result = runner.invoke(cli.app, ["schema", "galaxy"])
    assert result.exit_code == 1 and "galaxy" in result.stderr


def test_validate_graph_configs(tmp_path: Path) -> None:
    good = tmp_path / "graph.yaml"
    good.write_text(yaml.safe_dump({
        "schema_version": "1.0", "graph_id": "g",
        "nodes": {"a": {"block_type": "backbone/identity", "config": {}}}, "edges": [],
    }))
    result = runner.invoke(cli.app, ["validate", str(good)])
    assert result.exit_code == 0 and "graph g" in result.output, result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"schema_version": "1.0", "nodes": {"a": {"config": {}}}, "edgez": []}))
    result = runner.invoke(cli.app, ["validate", str(bad)])
    assert result.exit_code == 1
    assert "edgez" in result.stderr and "nodes.a" in result.stderr
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump({"schema_version": "0.1", "nodes": {}}))
    result = runner.invoke(cli.app, ["validate", str(old)])
    assert result.exit_code == 1 and "0.1" in result.stderr
