"""The in-process dataflow engine: `Graph` and its executor (levels.md §3).

Tensors stay in memory here; LangGraph starts at the Stage level.
"""

from worldgen.engine.auto_connect import Ambiguity, AmbiguityPolicy, AutoConnectResult, auto_connect, plan_auto_edges
from worldgen.engine.executor import AFTER, BEFORE, LOOP_END, LOOP_START, Callback, MissingInputError, run_graph
from worldgen.engine.graph import BlockSpec, Graph
from worldgen.engine.nodes import Edge, ExposedPort, Node
from worldgen.engine.plan import ExecutionPlan, PlanStep, strongly_connected_components
from worldgen.engine.templates import graph_from_template, graph_templates, register_graph_template
from worldgen.engine.validation import GraphValidationError, ValidationIssue, ValidationResult

__all__ = [
    "AFTER", "BEFORE", "LOOP_END", "LOOP_START",
    "Ambiguity", "AmbiguityPolicy", "AutoConnectResult", "BlockSpec", "Callback", "Edge",
    "ExecutionPlan", "ExposedPort", "Graph", "GraphValidationError", "MissingInputError", "Node",
    "PlanStep", "ValidationIssue", "ValidationResult", "auto_connect", "graph_from_template",
    "graph_templates", "plan_auto_edges", "register_graph_template", "run_graph",
    "strongly_connected_components",
]
