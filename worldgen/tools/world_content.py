"""Tools over a world's content, for agents that read the world (an agentic Development).

Each call builds them on the content of the run at hand, so they read the store the run was
given (the local SqliteStore, or LangGraph Server's own).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from langchain_core.tools import BaseTool, StructuredTool

if TYPE_CHECKING:
    from worldgen.content import WorldContent

__all__ = ["content_tools"]


def content_tools(world: WorldContent) -> list[BaseTool]:
    """``recent_episodes``, ``search_chronicle`` and ``get_entity`` over ``world``."""

    def recent_episodes(n: int = 3) -> str:
        """The world's latest episodes, oldest first: number, intent and what happened."""
        episodes = world.chronicle(last=max(1, min(int(n), 20)))
        return "\n".join(f"{e.get('episode')}. {e.get('outcome', '')}" for e in episodes) or "No episodes yet."

    def search_chronicle(query: str, limit: int = 5) -> str:
        """Episodes whose intent or outcome mention the query (case-insensitive)."""
        needle = query.casefold().strip()
        hits = [e for e in world.chronicle()
                if needle and needle in f"{e.get('intent', '')} {e.get('outcome', '')}".casefold()]
        return "\n".join(f"{e.get('episode')}. {e.get('outcome', '')}" for e in hits[-limit:]) or f"Nothing about {query!r}."

    def get_entity(name: str) -> str:
        """What the world knows about a being or place: the episodes it appears in, and how."""
        entities = world.entities()  # one read of the store
        entity = entities.get(name) or next(
            (e for key, e in entities.items() if key.casefold() == name.casefold()), None)
        if entity is None:
            glossary = world.glossary()
            return glossary.get(name, f"The world knows nothing named {name!r}.")
        mentions = "; ".join(entity.get("mentions", {}).values())
        return f"{entity['name']} appears in episodes {', '.join(entity['episodes'])}: {mentions}"

    return [StructuredTool.from_function(f) for f in (recent_episodes, search_chronicle, get_entity)]
