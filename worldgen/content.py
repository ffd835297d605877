"""The world's content: chronicle, entities, glossary, style, rules.

It lives in a LangGraph ``BaseStore`` (SqliteStore locally, the platform's store on
LangGraph Server) under ``("worlds", world_id, <kind>)``, so it outlives threads and
checkpoints stay small. Every write is keyed, which makes World update idempotent: a
transition re-run after a crash rewrites the same records instead of adding new ones.
"""

from __future__ import annotations

from typing import Any

from langgraph.store.base import BaseStore
from pydantic import BaseModel, Field

from worldgen.artifacts import ArtifactStore

__all__ = ["ContentSnapshot", "InitialWorld", "WorldContent"]

_PAGE = 1000


class InitialWorld(BaseModel):
    """What a world starts from (the canon's ``initial_world``)."""

    story: str = ""
    glossary: dict[str, str] = Field(default_factory=dict)
    style: str = ""
    rules: list[str] = Field(default_factory=list)


class ContentSnapshot(BaseModel):
    """Everything the world knows, read at one moment."""

    story: str = ""
    chronicle: list[dict[str, Any]] = Field(default_factory=list)
    entities: dict[str, dict[str, Any]] = Field(default_factory=dict)
    glossary: dict[str, str] = Field(default_factory=dict)
    style: str = ""
    rules: list[str] = Field(default_factory=list)


class WorldContent:
    """Read and write one world's content in a LangGraph store."""

    def __init__(self, store: BaseStore, world_id: str, artifacts: ArtifactStore | None = None):
        self.store = store
        self.world_id = world_id
        self.artifacts = artifacts

    def _ns(self, kind: str) -> tuple[str, ...]:
        return ("worlds", self.world_id, kind)

    def _all(self, kind: str) -> list[Any]:
        items, offset = [], 0
        while True:
            page = self.store.search(self._ns(kind), limit=_PAGE, offset=offset)
            items.extend(page)
            if len(page) < _PAGE:
                return sorted(items, key=lambda it: it.key)
            offset += _PAGE

    # -- reading ---------------------------------------------------------------------------
    def chronicle(self, last: int | None = None) -> list[dict[str, Any]]:
        """Episodes in order; ``last`` keeps only the newest ones."""
        episodes = [it.value for it in self._all("chronicle")]
        return episodes[-last:] if last else episodes

    def entities(self) -> dict[str, dict[str, Any]]:
        return {it.value["name"]: it.value for it in self._all("entities")}

    def glossary(self) -> dict[str, str]:
        return {it.key: it.value["definition"] for it in self._all("glossary")}

    def style(self) -> str:
        item = self.store.get(self._ns("style"), "style")
        return item.value["text"] if item else ""

    def rules(self) -> list[str]:
        return [it.value["text"] for it in self._all("rules")]

    def story(self) -> str:
        item = self.store.get(self._ns("style"), "story")
        return item.value["text"] if item else ""

    def snapshot(self) -> ContentSnapshot:
        return ContentSnapshot(
            story=self.story(),
            chronicle=self.chronicle(),
            entities=self.entities(),
            glossary=self.glossary(),
            style=self.style(),
            rules=self.rules(),
        )

    def summary(self, episodes: int = 3, max_chars: int = 1500) -> str:
        """A compact briefing for prompts: premise, style, rules, recent episodes, cast."""
        parts: list[str] = []
        if story := self.story():
            parts.append(f"Premise: {story}")
        if style := self.style():
            parts.append(f"Style: {style}")
        if rules := self.rules():
            parts.append("Rules: " + "; ".join(rules))
        recent = self.chronicle(last=episodes)
        if recent:
            parts.append("Recent episodes:")
            parts.extend(f"{e.get('episode', '?')}. {e.get('outcome', '')}" for e in recent)
        cast = sorted(self.entities().values(), key=lambda e: -len(e.get("episodes", [])))[:8]
        if cast:
            parts.append("Known beings and places: " + ", ".join(e["name"] for e in cast))
        text = "\n".join(parts) or "The world is new: nothing has happened yet."
        return text if len(text) <= max_chars else "…" + text[-max_chars:]

    # -- writing ---------------------------------------------------------------------------
    def seed(self, initial: InitialWorld) -> None:
        """Write the initial world once; an existing world keeps its content."""
        if self.store.get(self._ns("style"), "seeded") is not None:
            return
        self.store.put(self._ns("style"), "story", {"text": initial.story})
        self.store.put(self._ns("style"), "style", {"text": initial.style})
        for term, definition in initial.glossary.items():
            self.store.put(self._ns("glossary"), term, {"definition": definition})
        for i, rule in enumerate(initial.rules):
            self.store.put(self._ns("rules"), f"{i:04d}", {"text": rule})
        self.store.put(self._ns("style"), "seeded", {"value": True})

    def put_episode(self, key: str, episode: dict[str, Any]) -> None:
        self.store.put(self._ns("chronicle"), key, episode)

    def note_entity(self, name: str, episode_key: str, mention: str) -> None:
        """Record that ``name`` appears in an episode (idempotent per episode)."""
        key = name.casefold()
        item = self.store.get(self._ns("entities"), key)
        value = dict(item.value) if item else {"name": name, "episodes": [], "mentions": {}}
        if episode_key not in value["episodes"]:
            value["episodes"] = sorted([*value["episodes"], episode_key])
        value["mentions"] = {**value.get("mentions", {}), episode_key: mention}
        self.store.put(self._ns("entities"), key, value)

    def set_glossary(self, term: str, definition: str) -> None:
        self.store.put(self._ns("glossary"), term, {"definition": definition})
