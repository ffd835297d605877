"""worldgen: worlds made of language models, agents and local generative models, on LangGraph.

The public names load lazily, so ``worldgen --help`` starts without importing LangGraph.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worldgen.stage import Condition, Stage, TransitionError
    from worldgen.state import WorldState
    from worldgen.world import TraceEvent, World, WorldConfig, WorldResult

_EXPORTS = {
    "Condition": "worldgen.stage",
    "Stage": "worldgen.stage",
    "TransitionError": "worldgen.stage",
    "WorldState": "worldgen.state",
    "TraceEvent": "worldgen.world",
    "World": "worldgen.world",
    "WorldConfig": "worldgen.world",
    "WorldResult": "worldgen.world",
}
__all__ = ["Condition", "Stage", "TraceEvent", "TransitionError", "World", "WorldConfig", "WorldResult", "WorldState"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'worldgen' has no attribute {name!r}")
