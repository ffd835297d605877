"""The in-process dataflow engine: `Graph`, `Pipeline` (a DAG of graphs) and their shared
executor (levels.md §3, §4).

Tensors stay in memory here; LangGraph starts at the Stage level.
"""

from worldgen.engine.auto_connect import Ambiguity, AmbiguityPolicy, AutoConnectResult, auto_connect, plan_auto_edges
from worldgen.engine.executor import AFTER, BEFORE, LOOP_END, LOOP_START, Callback, MissingInputError, run_graph
from worldgen.engine.graph import BlockSpec, Graph
from worldgen.engine.graph_block import GraphBlock, graph_run_options
from worldgen.engine.nodes import Edge, ExposedPort, Node
from worldgen.engine.pipeline import Pipeline, PipelineEdge, PipelineValidationError
from worldgen.engine.plan import ExecutionPlan, PlanStep, strongly_connected_components
from worldgen.engine.templates import (
    graph_from_template,
    graph_templates,
    pipeline_from_template,
    pipeline_templates,
    register_graph_template,
    register_pipeline_template,
)
from worldgen.engine.validation import GraphValidationError, ValidationIssue, ValidationResult

__all__ = [
    "AFTER", "BEFORE", "LOOP_END", "LOOP_START",
    "Ambiguity", "AmbiguityPolicy", "AutoConnectResult", "BlockSpec", "Callback", "Edge",
    "ExecutionPlan", "ExposedPort", "Graph", "GraphBlock", "GraphValidationError", "MissingInputError",
    "Node", "Pipeline", "PipelineEdge", "PipelineValidationError", "PlanStep", "ValidationIssue",
    "ValidationResult", "auto_connect", "graph_from_template", "graph_run_options", "graph_templates",
    "pipeline_from_template", "pipeline_templates", "plan_auto_edges", "register_graph_template",
    "register_pipeline_template", "run_graph", "strongly_connected_components",
]
