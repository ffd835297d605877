from __future__ import annotations

import pytest

from worldgen.state import (
    Artifacts,
    GenerationConfig,
    Intent,
    Outcome,
    StateError,
    WorldState,
)


def test_strings_are_coerced_to_each_block_type():
    s = WorldState.parse({f"block{n}": f"text {n}" for n in range(1, 6)})
    assert isinstance(s.block1, Intent) and s.block1.text == "text 1"
    assert isinstance(s.block2, GenerationConfig) and s.block2.slots[0].kind == "image"
    assert isinstance(s.block3, Artifacts) and s.block3.items[0].inline == "text 3"
    assert s.block4.items[0].text == "text 4"
    assert isinstance(s.block5, Outcome) and s.block5.text == "text 5"
    assert s.filled() == {1, 2, 3, 4, 5} and s.is_full()


def test_json_string_for_block2_is_read_as_a_config():
    s = WorldState.parse({"block2": '{"slots": [{"name": "c", "kind": "text", "prompt": "p"}]}'})
    assert s.block2.slots[0].kind == "text" and s.block2.slots[0].name == "c"


@pytest.mark.parametrize(
    "empty",
    [
        {"block1": ""},
        {"block1": "   "},
        {"block2": {"slots": []}},
        {"block3": {"items": []}},
        {"block4": ""},
        {"block5": {"text": ""}},
        {"block2": {"slots": [{"prompt": " "}]}},
    ],
)
def test_empty_values_do_not_fill(empty):
    assert WorldState.parse(empty).filled() == set()


def test_unknown_block_is_rejected_by_name():
    with pytest.raises(StateError, match="unknown block block7"):
        WorldState.parse({"block1": "x", "block7": "y"})


@pytest.mark.parametrize(("key", "value"), [("block1", 5), ("block3", ["a"]), ("block5", {"txt": "x"})])
def test_wrong_type_names_the_block(key, value):
    with pytest.raises(StateError, match=key):
        WorldState.parse({key: value})


def test_not_a_dict():
    with pytest.raises(StateError, match="dict of blocks"):
        WorldState.parse(["block1"])


def test_channels_round_trip_and_empty_blocks_become_none():
    s = WorldState.parse({"block1": "go", "block2": ""})
    channels = s.to_channels()
    assert channels["block1"] == {"text": "go"} and channels["block2"] is None
    assert WorldState.from_channels(channels).filled() == {1}
