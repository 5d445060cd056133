"""A context for evaluating WDL expressions outside a workflow run: tests, the function reference's
examples, and anything that needs ``parameters()``/``triggerBody()`` without an executor."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from ._wdl import ExpressionError


class StaticContext:
    """A context for evaluating expressions outside a run (tests, the function-reference examples)."""

    def __init__(self, *, trigger: Mapping[str, Any] | None = None, parameters: Mapping[str, Any] | None = None,
                 now: datetime | None = None) -> None:
        self._trigger = dict(trigger or {})
        self._parameters = dict(parameters or {})
        self._now = now or datetime(2025, 1, 1, tzinfo=timezone.utc)

    def trigger_outputs(self) -> dict[str, Any]:
        return self._trigger

    def parameter(self, name: str) -> Any:
        if name not in self._parameters:
            raise ExpressionError(f"the workflow parameter '{name}' is not found")
        return self._parameters[name]

    def variable(self, name: str) -> Any:
        raise ExpressionError(f"the variable '{name}' is not initialized")

    def action(self, name: str) -> dict[str, Any]:
        raise ExpressionError(f"the action '{name}' is not defined or has not run")

    def loop_item(self, name: str | None) -> Any:
        raise ExpressionError("items()/item() is only valid inside a For each")

    def workflow(self) -> dict[str, Any]:
        return {"name": "amlrelay", "run": {"name": "08585000000000000000000000000CU00"}}

    def now(self) -> datetime:
        return self._now

