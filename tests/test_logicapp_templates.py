"""Templates: the generated workflow sends the body the runbook sends, for a templated tag that is missing,
null, empty, a string, a number or a boolean, with and without a fallback — the workflow's own expressions
(the per-event Compose, route loop, Start body) evaluated by :mod:`amlrelay.logicapp` against the event, compared
with :func:`amlrelay.router.build_request`. (tests/test_logicapp_equivalence.py runs whole deliveries.)"""

from __future__ import annotations

import json
from typing import Any

import pytest

from amlrelay.events import parse_events
from amlrelay.logicapp import StaticContext, evaluate_value, generate
from amlrelay.models import AmlEvent
from amlrelay.router import build_request, select
from amlrelay.routes import Routes, parse_routes
from tests.conftest import SAMPLE_WORKSPACE, sample

WITH = {"name": "with-fallback", "events": ["RunCompleted"], "pipeline": {
    "project": "p", "id": 1, "branch": "{{ runTags.branch | main }}",
    "variables": {"BRANCH": "{{ runTags.branch | none }}", "LABEL": "run {{ runId }} on {{ runTags.branch | main }}"},
    "templateParameters": {"branch": "{{ runTags.branch | main }}", "empty": "{{ runTags.branch | }}"}}}
WITHOUT = {"name": "without-fallback", "events": ["RunCompleted"], "filters": {"runTags.branch": {"exists": True}},
           "pipeline": {"project": "p", "id": 2, "branch": "{{ runTags.branch }}",
                        "variables": {"BRANCH": "{{ runTags.branch }}"},
                        "templateParameters": {"label": "[{{ runTags.branch }}]"}}}
ROUTES = parse_routes(json.dumps({"version": 1, "routes": [WITH, WITHOUT]}))


class _Run(StaticContext):
    """One loop iteration: ``item()`` is the event (or, in the route loop, its copy marked with the route);
    ``outputs('Event')`` is the per-event Compose's result, once it has run."""

    def __init__(self, item: Any, event: dict[str, Any] | None = None) -> None:
        super().__init__(parameters={"allowedWorkspaces": SAMPLE_WORKSPACE})
        self.item, self.event = item, event

    def loop_item(self, name: str | None) -> Any:
        return self.item

    def action(self, name: str) -> dict[str, Any]:
        if name != "Event" or self.event is None:
            return super().action(name)
        return {"status": "Succeeded", "outputs": self.event}


def workflow_bodies(routes: Routes, raw: dict[str, Any]) -> dict[str, Any]:
    """Route name -> the RunPipelineParameters the generated workflow would POST for ``raw``."""
    definition = generate(routes)
    event_loop = definition["actions"]["For_each_event"]["actions"]
    route_loop = event_loop["For_each_route"]
    start = route_loop["actions"]["Start"]["inputs"]["body"]
    facts = evaluate_value(event_loop["Event"]["inputs"], _Run(raw))
    bodies: dict[str, Any] = {}
    for marked in evaluate_value(route_loop["foreach"], _Run(raw, facts)):
        bodies[marked["amlrelayRoute"]] = evaluate_value(start, _Run(marked, facts))
    return bodies


def runbook_bodies(routes: Routes, raw: dict[str, Any]) -> dict[str, Any]:
    [event] = parse_events([raw])
    assert isinstance(event, AmlEvent)
    matched, _ = select(routes, event)
    return {route.name: build_request(route, event).body for route in matched}


def run_completed(**tags: Any) -> dict[str, Any]:
    raw = sample("event-grid-schema", "run_completed")
    raw["data"]["runTags"] = {"area": "a", **tags}
    return raw


def ref(branch: str) -> dict[str, Any]:
    return {"repositories": {"self": {"refName": branch}}}


def with_fallback(branch: str, variable: str, empty: str = "") -> dict[str, Any]:
    run_id = sample("event-grid-schema", "run_completed")["data"]["runId"]
    return {"resources": ref(f"refs/heads/{branch}"),
            "variables": {"BRANCH": {"value": variable, "isSecret": False},
                          "LABEL": {"value": f"run {run_id} on {branch}", "isSecret": False}},
            "templateParameters": {"branch": branch, "empty": empty}}


def without_fallback(value: str) -> dict[str, Any]:
    return {"resources": ref(f"refs/heads/{value}"), "variables": {"BRANCH": {"value": value, "isSecret": False}},
            "templateParameters": {"label": f"[{value}]"}}


@pytest.mark.parametrize(("tags", "expected"), [
    ({}, {"with-fallback": with_fallback("main", "none")}),  # missing: the fallback; the 'exists' route is not taken
    ({"branch": ""}, {"with-fallback": with_fallback("main", "none"), "without-fallback": without_fallback("")}),
    ({"branch": "release/2"}, {"with-fallback": with_fallback("release/2", "release/2", "release/2"),
                               "without-fallback": without_fallback("release/2")}),
    ({"branch": 7}, {"with-fallback": with_fallback("7", "7", "7"), "without-fallback": without_fallback("7")}),
    ({"branch": 0}, {"with-fallback": with_fallback("0", "0", "0"), "without-fallback": without_fallback("0")}),
    ({"branch": False}, {"with-fallback": with_fallback("False", "False", "False"),
                         "without-fallback": without_fallback("False")}),
], ids=["missing", "empty", "present", "integer", "zero", "false"])
def test_the_workflow_renders_each_template_as_the_runbook_does(tags: dict[str, Any], expected: dict[str, Any]) -> None:
    raw = run_completed(**tags)
    assert runbook_bodies(ROUTES, raw) == expected
    assert workflow_bodies(ROUTES, raw) == expected


def test_a_null_tag_takes_the_fallback_in_both_handlers() -> None:
    """AML never sends a null tag, but a hand-made event may: the runbook reads it as '', the workflow as
    null, and a fallback covers both. (Without a fallback the two disagree on whether it exists.)"""
    raw = run_completed(branch=None)
    routes = parse_routes(json.dumps({"version": 1, "routes": [WITH]}))
    assert runbook_bodies(routes, raw) == workflow_bodies(routes, raw) == {
        "with-fallback": with_fallback("main", "none")}
