"""Role rules: which port of one role feeds which port of another (levels.md §2).

The table is data, so it can be read, extended and shown; `worldgen.engine.auto_connect`
turns it into edges for a whole graph.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["ROLE_RULES", "RoleRule", "get_rule_edges", "suggest_edges_for_new_node"]


@dataclass(frozen=True, slots=True)
class RoleRule:
    """`src_role.src_port → dst_role.dst_port`.

    When several sources compete for one single-edge input, only those whose rule has the
    highest `priority` stay (the more specific source: an adapter over a conditioner for
    `backbone.condition`, guidance over a backbone for `solver.pred`).
    """

    src_role: str
    src_port: str
    dst_role: str
    dst_port: str
    priority: int = 0


ROLE_RULES: tuple[RoleRule, ...] = (
    RoleRule("tokenizer", "token_ids", "conditioner", "input"),
    RoleRule("conditioner", "embedding", "backbone", "condition"),
    RoleRule("backbone", "pred", "solver", "pred"),
    RoleRule("solver", "next_latent", "backbone", "latent"),
    RoleRule("solver", "next_timestep", "backbone", "timestep"),
    RoleRule("codec", "encode_latent", "solver", "latent"),
    RoleRule("solver", "next_latent", "codec", "decode_latent"),
    RoleRule("conditioner", "embedding", "adapter", "condition"),
    RoleRule("adapter", "adapted", "backbone", "condition", priority=1),
    RoleRule("backbone", "pred", "guidance", "pred_cond"),
    RoleRule("guidance", "pred_guided", "solver", "pred", priority=1),
)


def get_rule_edges(
    src_role: str, dst_role: str, rules: Iterable[RoleRule] = ROLE_RULES
) -> list[tuple[str, str]]:
    """``[(src_port, dst_port)]`` the rules allow from `src_role` to `dst_role`."""
    return [(r.src_port, r.dst_port) for r in rules if (r.src_role, r.dst_role) == (src_role, dst_role)]


def suggest_edges_for_new_node(
    new_id: str,
    role: str,
    existing: Iterable[tuple[str, str]],
    rules: Iterable[RoleRule] = ROLE_RULES,
) -> list[tuple[str, str, str, str]]:
    """Every rule edge between a new node and existing ``(node_id, role)`` pairs, both ways,
    as ``(src, src_port, dst, dst_port)``; no conflict resolution (see `auto_connect`)."""
    rules = tuple(rules)
    edges: list[tuple[str, str, str, str]] = []
    for other_id, other_role in existing:
        if other_id == new_id:
            continue
        edges += [(new_id, s, other_id, d) for s, d in get_rule_edges(role, other_role, rules)]
        edges += [(other_id, s, new_id, d) for s, d in get_rule_edges(other_role, role, rules)]
    return edges
