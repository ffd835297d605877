"""The block contract: ports, blocks, the registry and task roles (levels.md §1–§2).

`TorchBlock` lives in `worldgen.blocks.torch_block` so that this package imports without
torch.
"""

from worldgen.blocks.base import Block, StateDictError, StateLoadResult
from worldgen.blocks.ports import Port, PortAggregation, PortDirection, PortType, input_port, output_port
from worldgen.blocks.registry import BlockFactory, BlockRegistry, global_registry, register_block
from worldgen.blocks.roles import (
    ALL_ROLES,
    IDENTITY_STUBS,
    KNOWN_ROLES,
    LLM,
    Adapter,
    Agent,
    Backbone,
    ClassifierFreeGuidance,
    Codec,
    Conditioner,
    Guidance,
    RoleBlock,
    Solver,
    Tokenizer,
    Tool,
    block_role,
    register_task_node_stubs,
    role_from_block_type,
)
from worldgen.blocks.rules import ROLE_RULES, RoleRule, get_rule_edges, suggest_edges_for_new_node

__all__ = [
    "ALL_ROLES", "IDENTITY_STUBS", "KNOWN_ROLES", "LLM", "ROLE_RULES",
    "Adapter", "Agent", "Backbone", "Block", "BlockFactory", "BlockRegistry",
    "ClassifierFreeGuidance", "Codec", "Conditioner", "Guidance", "Port", "PortAggregation",
    "PortDirection", "PortType", "RoleBlock", "RoleRule", "Solver", "StateDictError",
    "StateLoadResult", "Tokenizer", "Tool", "block_role", "get_rule_edges", "global_registry",
    "input_port", "output_port", "register_block", "register_task_node_stubs",
    "role_from_block_type", "suggest_edges_for_new_node",
]
