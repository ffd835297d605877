"""The canon's default transitions, each driven by a chat model (and a text-to-image tool)."""

from __future__ import annotations

from typing import Any

from worldgen.agents.agentic import AgentRecord, AgentTransition
from worldgen.agents.architect import Architect, parse_generation_config
from worldgen.agents.author import AgentAuthor, Author
from worldgen.agents.base import ModelOutputError, ask_json, ask_text, extract_json
from worldgen.agents.creator import AgentCreator, Creator
from worldgen.agents.development import AgentDevelopment, Development
from worldgen.agents.philosopher import Philosopher
from worldgen.agents.world_update import WorldUpdate, extract_entities

__all__ = [
    "AgentAuthor",
    "AgentCreator",
    "AgentDevelopment",
    "AgentRecord",
    "AgentTransition",
    "Architect",
    "Author",
    "Creator",
    "Development",
    "ModelOutputError",
    "Philosopher",
    "WorldUpdate",
    "ask_json",
    "ask_text",
    "canon_stages",
    "extract_entities",
    "extract_json",
    "parse_generation_config",
]


def canon_stages(*, llm: Any = "local", text_to_image: Any = "procedural", agents: bool = False) -> dict[str, Any]:
    """The six default transition implementations for one chat model and one renderer.

    ``agents=True`` makes three transitions agents (the chat model must support tool calling;
    the embedded local model does, by constrained decoding): Development and Author read the
    world through content tools, and Creator picks a generator per slot. Each falls back to
    its plain implementation for what its agent leaves undone, so the contracts hold.
    """
    from worldgen.chat_models import resolve_chat_model
    from worldgen.tools.text_to_image import resolve_text_to_image

    model = resolve_chat_model(llm)
    renderer = resolve_text_to_image(text_to_image)
    return {
        "philosopher": Philosopher(model),
        "author": AgentAuthor(model) if agents else Author(model),
        "world_update": WorldUpdate(),
        "development": AgentDevelopment(model) if agents else Development(model),
        "architect": Architect(model),
        "creator": AgentCreator(model, renderer) if agents else Creator(model, renderer),
    }
