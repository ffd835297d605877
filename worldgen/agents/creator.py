"""Creator: realises block 2's slots as artifacts (block 3).

Image slots go through a text-to-image generator; text slots through the chat model. Every
artifact is written to the world's ArtifactStore and the block holds only references.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.tools import BaseTool, StructuredTool
from pydantic import Field, create_model

from worldgen.agents.agentic import AgentTransition
from worldgen.agents.base import ask_text
from worldgen.state import ArtifactRef, GenerationConfig, Slot

_TOOL_NAME = re.compile(r"[^a-zA-Z0-9_]+")

SYSTEM = "You are the Creator. Write exactly what is asked, in two to four sentences. No preamble."


def slot_seed(prompt: str, params: dict[str, Any]) -> int:
    """A slot's seed: given in params, else derived from the prompt (stable across runs)."""
    if "seed" in params:
        return int(params["seed"])
    return int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "big")


class Creator:
    def __init__(self, llm: BaseChatModel | None, text_to_image: Any):
        self.llm = llm
        self.text_to_image = text_to_image

    def __call__(self, state: dict[str, Any]) -> dict[str, Any]:
        config = GenerationConfig.model_validate(state["block2"])
        store = state["world"].artifacts
        refs = [self.make(slot, store) for slot in config.slots]
        return {"block3": {"items": [r.model_dump(mode="json") for r in refs]}}

    def make(self, slot: Slot, store: Any, renderer: Any = None, meta: dict[str, Any] | None = None) -> ArtifactRef:
        """One slot's artifact, written to ``store``: an image through ``renderer`` (default
        the Creator's), a text through the chat model."""
        params = dict(slot.params)
        if slot.kind == "image":
            renderer = renderer or self.text_to_image
            seed = slot_seed(slot.prompt, params)
            size = {k: int(params.pop(k)) for k in ("width", "height") if k in params}
            params.pop("seed", None)
            image = renderer(slot.prompt, seed=seed, **size, **params)
            info = {"generator": renderer_name(renderer), "seed": seed, "prompt": slot.prompt, **(meta or {})}
            return store.put_image(image, slot=slot.name, meta=info)
        if slot.kind == "text":
            if self.llm is None:
                raise ValueError(f"slot {slot.name!r} is a text slot but the world has no chat model")
            text = ask_text(self.llm, "creator", SYSTEM, slot.prompt, max_sentences=4)
            return store.put_text(text, slot=slot.name, meta={"prompt": slot.prompt, **(meta or {})})
        raise ValueError(f"slot {slot.name!r} has kind {slot.kind!r}; the Creator makes image and text slots")


def renderer_name(renderer: Any) -> str:
    return getattr(renderer, "name", type(renderer).__name__)


AGENT_SYSTEM = (
    "You are the Creator. Make every slot listed by calling one tool per slot: a render tool "
    "for an image slot, write_text for a text slot. When every slot is made, answer done."
)


class AgentCreator(AgentTransition):
    """Creator as an agent that picks a generator per slot (ARCHITECTURE §6).

    Its tools: one ``render_<renderer>`` per available text-to-image renderer (image slots)
    and ``write_text`` (text slots), each taking the slot's name. A slot the agent did not
    make is made by the default generator, so block 3 always realises every slot of block 2;
    each artifact's ``meta["chosen_by"]`` says which happened ("agent" or "default").
    ``max_steps`` defaults to the number of slots + 2.
    """

    transition = "creator"

    def __init__(self, llm: BaseChatModel | None, text_to_image: Any, *, renderers: Mapping[str, Any] | None = None,
                 max_steps: int | None = None):
        from worldgen.tools.text_to_image import resolve_text_to_image

        super().__init__(llm, max_steps=max_steps or 0)  # type: ignore[arg-type]
        text_to_image = resolve_text_to_image(text_to_image)  # an object, or a spec ("procedural")
        self.default = Creator(llm, text_to_image)
        self.renderers = ({name: resolve_text_to_image(r) for name, r in renderers.items()} if renderers
                          else {renderer_name(text_to_image): text_to_image})

    def __call__(self, state: dict[str, Any]) -> dict[str, Any]:
        config = GenerationConfig.model_validate(state["block2"])
        store = state["world"].artifacts
        made: dict[str, ArtifactRef] = {}
        slots = {s.name: s for s in config.slots}
        result = None
        tools = self.tools(slots, made, store)
        if self.llm is not None and tools:
            listing = "\n".join(f"- {s.name} ({s.kind}): {s.prompt}" for s in slots.values())
            steps = self.max_steps or len(slots) + 2
            result = self.run_agent(tools, AGENT_SYSTEM, f"Slots to make:\n{listing}", max_steps=steps)
        refs, defaulted = [], []
        for slot in config.slots:
            ref = made.pop(slot.name, None)
            if ref is None:
                ref = self.default.make(slot, store, meta={"chosen_by": "default"})
                defaulted.append(slot.name)
            refs.append(ref)
        if result is not None:
            self.record(result, f"default generator for {', '.join(defaulted)}" if defaulted else None)
        return {"block3": {"items": [r.model_dump(mode="json") for r in refs]}}

    def tools(self, slots: Mapping[str, Slot], made: dict[str, ArtifactRef], store: Any) -> list[BaseTool]:
        """The generators as tools over this call's slots (a slot argument is one of their names)."""
        images = [n for n, s in slots.items() if s.kind == "image"]
        texts = [n for n, s in slots.items() if s.kind == "text"]
        tools = []
        if images:
            for i, (name, renderer) in enumerate(self.renderers.items()):
                tool_name = f"render_{_TOOL_NAME.sub('_', name)[:40]}"
                if any(t.name == tool_name for t in tools):  # two names alike once sanitised
                    tool_name += f"_{i}"
                tools.append(self._tool(tool_name, slots, images, made, store, renderer,
                                        f"Render an image slot with the {name} text-to-image generator."))
        if texts and self.llm is not None:
            tools.append(self._tool("write_text", slots, texts, made, store, None,
                                    "Write a text slot with the chat model."))
        return tools

    def _tool(self, tool_name: str, slots: Mapping[str, Slot], names: list[str], made: dict[str, ArtifactRef],
              store: Any, renderer: Any, description: str) -> BaseTool:
        slot_type = Literal[tuple(names)]  # type: ignore[valid-type]
        args = create_model(f"{tool_name}_args", slot=(slot_type, Field(description="the slot to make")))

        def make(slot: str) -> str:
            if slot in made:
                return f"{slot} is already made; make another slot or answer done."
            ref = self.default.make(slots[slot], store, renderer, meta={"chosen_by": "agent", "tool": tool_name})
            made[slot] = ref
            return f"made {slot}: {ref.uri}"

        return StructuredTool.from_function(make, name=tool_name, description=description, args_schema=args)
