"""worldgen: worlds made of language models, agents and local generative models, on LangGraph."""

from worldgen.stage import Condition, Stage, TransitionError
from worldgen.state import WorldState
from worldgen.world import TraceEvent, World, WorldConfig, WorldResult

__all__ = ["Condition", "Stage", "TraceEvent", "TransitionError", "World", "WorldConfig", "WorldResult", "WorldState"]
__version__ = "0.1.0"
