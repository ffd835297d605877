"""Task roles: abstract blocks with fixed ports (levels.md §2), plus small concrete ones.

A role fixes port names so that graphs can be wired by rule (`worldgen.blocks.rules`) and
implementations can be swapped: any ``backbone/*`` fits where a backbone fits. Roles are
hints, never constraints: a graph may hold any number of any role, or none.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from worldgen.blocks.base import Block
from worldgen.blocks.ports import Port, PortType, input_port, output_port
from worldgen.blocks.registry import BlockRegistry

__all__ = [
    "ALL_ROLES",
    "KNOWN_ROLES",
    "Adapter",
    "Agent",
    "Backbone",
    "ClassifierFreeGuidance",
    "IDENTITY_STUBS",
    "Codec",
    "Conditioner",
    "Guidance",
    "LLM",
    "RoleBlock",
    "Solver",
    "Tokenizer",
    "Tool",
    "block_role",
    "register_builtin_blocks",
    "register_task_node_stubs",
    "role_from_block_type",
]

T, ANY, TEXT, IMAGE, DICT = PortType.TENSOR, PortType.ANY, PortType.TEXT, PortType.IMAGE, PortType.DICT

KNOWN_ROLES: tuple[str, ...] = (
    "backbone", "solver", "codec", "conditioner", "tokenizer", "adapter", "guidance",
)
#: Core roles plus the extension roles (llm, vlm, agent, tool, position_embedder).
ALL_ROLES: tuple[str, ...] = (*KNOWN_ROLES, "position_embedder", "llm", "vlm", "agent", "tool")


def role_from_block_type(block_type: str | None) -> str | None:
    """The role named by a block type: ``"Backbone/UNet2D"`` → backbone, ``"solver_ddim"`` →
    solver, ``"foo"`` → None. Case-insensitive; matches ``role``, ``role/…`` and ``role_…``."""
    if not block_type:
        return None
    lowered = block_type.lower()
    for role in ALL_ROLES:
        if lowered == role or lowered.startswith((role + "/", role + "_")):
            return role
    return None


def block_role(block: Block) -> str | None:
    """A block's role: its role class if it has one, else the one its `block_type` names."""
    role = getattr(block, "role", None)
    return role if isinstance(role, str) else role_from_block_type(block.block_type)


class RoleBlock(Block):
    """A block whose ports are fixed by its role (`PORTS`).

    `IDENTITY` maps each output port to the input it copies in the `<role>/identity` stub.
    """

    role: ClassVar[str]
    PORTS: ClassVar[tuple[Port, ...]] = ()
    IDENTITY: ClassVar[Mapping[str, str]] = {}

    def declare_ports(self) -> list[Port]:
        return list(self.PORTS)


class Backbone(RoleBlock):
    """One model prediction (noise / x0 / v) for a latent at a timestep."""

    block_type = role = "backbone"
    PORTS = (
        input_port("latent", T), input_port("timestep", T), input_port("condition", ANY, optional=True),
        output_port("pred", T),
    )
    IDENTITY = {"pred": "latent"}


class Solver(RoleBlock):
    """One denoising step; also owns the noise schedule. Usually weightless."""

    block_type = role = "solver"
    PORTS = (
        input_port("latent", T), input_port("timestep", T), input_port("pred", T),
        output_port("next_latent", T), output_port("next_timestep", T),
    )
    IDENTITY = {"next_latent": "latent", "next_timestep": "timestep"}


class Codec(RoleBlock):
    """Image ↔ latent (e.g. a VAE): encodes and/or decodes, whichever inputs are present."""

    block_type = role = "codec"
    PORTS = (
        input_port("encode_image", IMAGE, optional=True), input_port("decode_latent", T, optional=True),
        output_port("encode_latent", T, optional=True), output_port("decode_image", IMAGE, optional=True),
    )
    IDENTITY = {"encode_latent": "encode_image", "decode_image": "decode_latent"}


class Conditioner(RoleBlock):
    """Encodes the condition (token ids, text or image) into embeddings."""

    block_type = role = "conditioner"
    PORTS = (input_port("input", ANY), output_port("embedding", T), output_port("pooled", T, optional=True))
    IDENTITY = {"embedding": "input"}


class Tokenizer(RoleBlock):
    """Text → token ids; its vocabulary is part of its state."""

    block_type = role = "tokenizer"
    PORTS = (
        input_port("text", TEXT),
        output_port("token_ids", T), output_port("attention_mask", T, optional=True),
    )
    IDENTITY = {"token_ids": "text"}


class Adapter(RoleBlock):
    """Turns a condition (control image, style, embedding) into what the backbone takes
    (LoRA, ControlNet, IP-Adapter)."""

    block_type = role = "adapter"
    PORTS = (input_port("condition", ANY), input_port("hidden", T, optional=True), output_port("adapted", ANY))
    IDENTITY = {"adapted": "condition"}


class Guidance(RoleBlock):
    """Combines conditional and unconditional predictions (CFG, PAG)."""

    block_type = role = "guidance"
    PORTS = (
        input_port("pred_cond", T), input_port("pred_uncond", T), input_port("scale", ANY, optional=True),
        output_port("pred_guided", T),
    )
    IDENTITY = {"pred_guided": "pred_cond"}


class LLM(RoleBlock):
    """A language model, local or behind an API, with the same ports either way."""

    block_type = role = "llm"
    PORTS = (
        input_port("prompt", TEXT), input_port("context", ANY, optional=True),
        input_port("system_prompt", TEXT, optional=True), input_port("params", DICT, optional=True),
        output_port("text", TEXT),
    )
    IDENTITY = {"text": "prompt"}


class Agent(RoleBlock):
    """An agent step: replies, or asks for tool calls whose results come back next call."""

    block_type = role = "agent"
    PORTS = (
        input_port("context", ANY), input_port("tool_results", ANY, optional=True),
        output_port("response", ANY), output_port("tool_calls", ANY, optional=True),
    )
    IDENTITY = {"response": "context"}


class Tool(RoleBlock):
    """Something an agent can call: arguments in, result out."""

    block_type = role = "tool"
    PORTS = (input_port("arguments", DICT), output_port("result", ANY))
    IDENTITY = {"result": "arguments"}


_ROLE_CLASSES: tuple[type[RoleBlock], ...] = (
    Backbone, Solver, Codec, Conditioner, Tokenizer, Adapter, Guidance, LLM, Agent, Tool,
)


class _IdentityStub:
    """Mixin for `<role>/identity`: copy inputs to outputs per the role's `IDENTITY` map."""

    IDENTITY: ClassVar[Mapping[str, str]]

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return {out: inputs[src] for out, src in self.IDENTITY.items() if src in inputs}


def _identity_stub(role_cls: type[RoleBlock]) -> type[RoleBlock]:
    name = f"{role_cls.__name__}Identity"
    return type(name, (_IdentityStub, role_cls), {"block_type": f"{role_cls.role}/identity"})


#: `<role>/identity` stub classes, e.g. ``IDENTITY_STUBS["backbone/identity"]``.
IDENTITY_STUBS: dict[str, type[RoleBlock]] = {
    f"{cls.role}/identity": _identity_stub(cls) for cls in _ROLE_CLASSES
}


def register_task_node_stubs(registry: BlockRegistry) -> None:
    """Register a `<role>/identity` stub for every role with fixed ports."""
    for block_type, cls in IDENTITY_STUBS.items():
        registry.register(block_type, cls)


class ClassifierFreeGuidance(Guidance):
    """``guidance/cfg``: pred_uncond + scale · (pred_cond − pred_uncond).

    The scale comes from the `scale` port, else ``config["guidance_scale"]`` (default 7.5).
    Works on anything with + − and scalar ·, tensors included; never modifies its inputs.
    """

    block_type = "guidance/cfg"

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        scale = inputs.get("scale", self.config.get("guidance_scale", 7.5))
        cond, uncond = inputs["pred_cond"], inputs["pred_uncond"]
        return {"pred_guided": uncond + scale * (cond - uncond)}


def register_builtin_blocks(registry: BlockRegistry) -> None:
    """Register the stubs and the concrete blocks of this module."""
    register_task_node_stubs(registry)
    registry.register(ClassifierFreeGuidance.block_type, ClassifierFreeGuidance)
