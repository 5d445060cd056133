"""The Logic App handler: a Consumption workflow generated from the routes file, and the tools that keep it
honest offline — a WDL expression evaluator and a small executor that runs the generated workflow against
the same stand-ins as the runbook.

Public surface: :func:`generate` (the definition), :class:`Workflow` (run it), :func:`evaluate_expression`.
"""

from ._expressions import evaluate_value
from ._generate import SCHEMA, TRIGGER, generate
from ._run import HttpAnswer, RunResult, Workflow, check_expressions
from ._static import StaticContext
from ._wdl import ExpressionError, parse_expression, parse_template

__all__ = ["SCHEMA", "TRIGGER", "ExpressionError", "HttpAnswer", "RunResult", "StaticContext", "Workflow",
           "check_expressions", "evaluate_value", "generate", "parse_expression", "parse_template"]
