from __future__ import annotations

import pytest
from langchain_core.runnables import RunnableLambda

from worldgen import Condition, Stage
from worldgen.stage import CANON, CYCLE


def test_canon_conditions_are_data():
    assert CANON["philosopher"].condition == Condition(requires=(1, 2, 3), produces=4)
    assert CANON["author"].condition.requires == (1, 2, 3, 4)
    assert CANON["world_update"].condition.requires == (1, 2, 3, 4, 5)
    assert CANON["development"].condition.always
    assert CYCLE == ("philosopher", "author", "world_update", "development", "architect", "creator")


@pytest.mark.parametrize(
    ("filled", "ok", "why"),
    [({1, 2, 3}, True, "inputs"), ({1, 2}, False, "block 3"), ({1, 2, 3, 4}, False, "already filled")],
)
def test_condition_check(filled, ok, why):
    result, reason = CANON["philosopher"].condition.check(filled)
    assert result is ok and why.split()[-1] in reason


def test_condition_rejects_block_outside_schema():
    with pytest.raises(ValueError, match="block7"):
        Condition(requires=(1, 7))
    with pytest.raises(ValueError, match="block7"):
        Stage("author", lambda s: {}, writes=(7,))


def test_stage_from_function_runnable_and_config_aware_function():
    assert Stage("author", lambda s: {"block5": s["block1"]}).invoke({"block1": "x"}) == {"block5": "x"}
    r = Stage("author", RunnableLambda(lambda s: {"block5": "r"}))
    assert r.invoke({}) == {"block5": "r"} and not r.is_subgraph
    seen = {}

    def with_config(state, config):
        seen["config"] = config
        return {}

    Stage("author", with_config).invoke({}, {"tags": ["t"]})
    assert seen["config"] == {"tags": ["t"]}


def test_unknown_role_and_bad_impl():
    with pytest.raises(ValueError, match="unknown stage role 'oracle'"):
        Stage("oracle", lambda s: {})
    with pytest.raises(TypeError, match="implementation"):
        Stage("author", 42)  # type: ignore[arg-type]


def test_coerce_checks_role():
    s = Stage("author", lambda s: {})
    assert Stage.coerce("author", s) is s
    with pytest.raises(ValueError, match="role 'author'"):
        Stage.coerce("creator", s)


def test_validate_of_stages_without_inner_pipelines_is_empty():
    from langgraph.graph import START, StateGraph

    from worldgen.stage import StageInput

    inner = StateGraph(StageInput)
    inner.add_node("n", lambda s: {})
    inner.add_edge(START, "n")
    for impl in (lambda s: {}, RunnableLambda(lambda s: {}), inner):
        result = Stage("author", impl).validate()
        assert result.is_valid and not result.warnings
