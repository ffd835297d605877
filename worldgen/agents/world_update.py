"""World update: merges a full state into the world's content.

The episode (intent, config, artifacts, descriptions, outcome) joins the chronicle, and the
beings and places the outcome names join the entities. Every write is keyed by the episode,
so a re-run after a crash rewrites rather than duplicates.
"""

from __future__ import annotations

import re
from typing import Any

_NAME = re.compile(r"\b[A-Z][\w'’-]+(?:\s+(?:of|the|de|von)?\s*[A-Z][\w'’-]+)*")
_NOT_NAMES = frozenset(
    "A An The He She It They We I You His Her Its Their Our This That These Those There Then "
    "When While As At In On Of For From With Without But And Or So Yet After Before Suddenly "
    "Meanwhile Now Later Soon Once Every Each No Nothing Someone Something Everyone All Some "
    "One Two Three First Last Here Where What Who Why How Inside Outside Above Below Under "
    "Over Near Beyond Through Across Into Onto Upon Despite Although Because If Unless Until "
    "Still Even Only Just Also Finally".split()
)


def extract_entities(text: str, glossary: dict[str, str] | None = None) -> list[str]:
    """Proper names in a narrative (capitalised runs that are not sentence openers), plus
    any glossary terms it mentions. Deterministic: the world's memory should not depend on
    a model's mood."""
    found: dict[str, None] = {}
    for match in _NAME.finditer(text):
        # "Tamsin's" names Tamsin; "She's" names nobody
        words = [re.sub(r"['’](s|re|ll|d|ve|m)$", "", w) for w in match.group(0).split()]
        while words and words[0] in _NOT_NAMES:
            words = words[1:]
        name = " ".join(words).strip(" '’-")
        if len(name) > 1 and name not in _NOT_NAMES:
            found.setdefault(name, None)
    lowered = text.casefold()
    for term in glossary or {}:
        if term.casefold() in lowered:
            found.setdefault(term, None)
    return list(found)


def _sentence_with(text: str, name: str) -> str:
    for sentence in re.split(r"(?<=[.!?])\s+", text):
        if name in sentence:
            return sentence.strip()
    return ""


class WorldUpdate:
    def __call__(self, state: dict[str, Any]) -> dict[str, Any]:
        world = state["world"]
        key = state["episode_key"]
        outcome = state["block5"]["text"]
        entities = extract_entities(outcome, world.glossary())
        world.put_episode(
            key,
            {
                "episode": state["episode"],
                "key": key,
                "intent": state["block1"]["text"],
                "config": state["block2"],
                "artifacts": state["block3"]["items"],
                "descriptions": state["block4"]["items"],
                "outcome": outcome,
                "entities": entities,
            },
        )
        for name in entities:
            world.note_entity(name, key, _sentence_with(outcome, name))
        return {}
