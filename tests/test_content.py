from __future__ import annotations

import sqlite3

from langgraph.store.sqlite import SqliteStore

from worldgen.content import InitialWorld, WorldContent


def _content(tmp_path):
    store = SqliteStore(sqlite3.connect(tmp_path / "s.sqlite", check_same_thread=False, isolation_level=None))
    store.setup()
    return WorldContent(store, "w")


def test_seed_once_and_read_back(tmp_path):
    c = _content(tmp_path)
    c.seed(InitialWorld(story="A valley.", glossary={"Gate": "the old gate"}, style="ink", rules=["no magic"]))
    c.seed(InitialWorld(story="overwritten?"))
    assert c.story() == "A valley." and c.glossary() == {"Gate": "the old gate"}
    assert c.style() == "ink" and c.rules() == ["no magic"]
    assert "A valley." in c.summary() and "no magic" in c.summary()


def test_chronicle_is_ordered_and_keyed(tmp_path):
    c = _content(tmp_path)
    for i in (2, 1, 3):
        c.put_episode(f"{i:06d}", {"episode": i, "outcome": f"o{i}"})
    c.put_episode("000002", {"episode": 2, "outcome": "o2 again"})
    assert [e["episode"] for e in c.chronicle()] == [1, 2, 3]
    assert c.chronicle(last=1)[0]["outcome"] == "o3"
    assert c.chronicle()[1]["outcome"] == "o2 again"


def test_entities_are_idempotent_per_episode(tmp_path):
    c = _content(tmp_path)
    c.note_entity("Mira", "000001", "Mira ran.")
    c.note_entity("Mira", "000001", "Mira ran.")
    c.note_entity("Mira", "000002", "Mira slept.")
    assert c.entities()["Mira"]["episodes"] == ["000001", "000002"]


def test_many_episodes_page_through(tmp_path):
    c = _content(tmp_path)
    for i in range(1205):
        c.put_episode(f"{i:06d}", {"episode": i, "outcome": "x"})
    assert len(c.chronicle()) == 1205
