"""The per-event Compose action (``Event``): everything the workflow computes once per event, one JSON
property per piece, so that the size of a routes file is spread over many expressions instead of a few.

Why: WDL caps *one* expression at 8,192 characters (LOGICAPPS.md §1, LIM), and a Compose's ``inputs`` is
a JSON value in which every ``@``-string is its own expression (WDL: any JSON string value starting with
``@`` is evaluated, the result keeps its type). Packing every route's match and request body into one
``if(...)``/``setProperty`` chain capped the workflow at about five routes of routes.json's shape; here
each route's match is one expression and each of its templates another, so what is capped is one route
(or one template), not the sum of them.

* ``valid``: the event as ``events.py``/``models.py`` would accept it (:func:`._fields.envelope_valid`);
  ``allowed``: its workspace is on the allow-list.
* ``routes``: per route, the event marked with the route's name if the route takes it, else ``'-'``. The
  route loop iterates ``skip(union(createArray('-'), routes), 1)``: ``union`` keeps the first of equal items
  in order (FN's example: ``union(createArray(1, 2, 3), createArray(1, 2, 10, 101))`` is
  ``[1, 2, 3, 10, 101]``), so every ``'-'`` collapses into the leading one that ``skip`` drops, and the
  matched routes stay in file order (``router.select``) — an expression of constant size.
* ``bodies``: per route, its RunPipelineParameters as JSON whose leaves are the templates' expressions;
  ``Start`` sends ``outputs('Event')['bodies'][<route>]``.
* with verification, the event's side of the checks (:func:`._verify.facts`).

The Compose also replaces the one-item validity loop that gated routing (same billable count per event:
one action, then the route loop). If it fails (an expression threw), :func:`failure_path` decides: an
invalid event is rejected as the runbook rejects it, any other answered 500, never dropped with a 200.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ..errors import RoutesError
from ..routes import Route, Routes
from . import _fields as f
from . import _verify
from ._fields import EVENT, FACTS, MARK, call, fact, q
from ._wdl import MAX_EXPRESSION

SKIPPED = "'-'"
"""What ``routes`` holds for a route that does not take the event (never equal to a marked event)."""


def pick(route: Route) -> str:
    """The event marked with ``route``'s name if the route takes it, else :data:`SKIPPED`."""
    return call("if", f.route_matches(route), call("setProperty", EVENT, q(MARK), q(route.name)), SKIPPED)


def route_items() -> str:
    """The route loop's ``foreach``: the matched routes' marked events, in file order."""
    picked = call("skip", call("union", call("createArray", SKIPPED), fact("routes")), "1")
    return call("if", call("and", fact("valid"), fact("allowed")), picked, call("createArray"))


def action(routes: Routes, *, verify: bool) -> dict[str, Any]:
    """The ``Event`` Compose (first in the event loop; the route loop runs after it succeeded)."""
    inputs: dict[str, Any] = {
        "valid": "@" + f.envelope_valid(),
        "allowed": "@" + f.allowed(),
        "routes": ["@" + pick(r) for r in routes.routes],
        "bodies": {r.name: body(r) for r in routes.routes},
    }
    if verify:
        inputs.update(_verify.facts(routes.routes))
    action: dict[str, Any] = {"type": "Compose", "runAfter": {}, "inputs": inputs}
    if has_secrets(routes):
        action["runtimeConfiguration"] = secure_inputs()
    return action


def secure_inputs() -> dict[str, Any]:
    """Hide an action's inputs from run history. On a Compose it hides its outputs too; Compose has no
    "outputs" setting (SEC, "Secure data in run history by using obfuscation")."""
    return {"secureData": {"properties": ["inputs"]}}


def has_secrets(routes: Routes) -> bool:
    """Some route sends an ``isSecret`` variable: then the ``Event`` Compose (which holds every route's
    request body) and ``Start`` (which sends one) hide their inputs from run history. Not always: that
    hides which routes took an event and why not, the first thing to read in a run that started nothing,
    and an action reading a secured Compose's outputs is *not* hidden by it (SEC), so Start needs its own."""
    return any(v.is_secret for r in routes.routes for v in r.pipeline.variables.values())


def failure_path(note: Callable[[dict[str, list[str]], str], dict[str, Any]]) -> dict[str, Any]:
    """What runs only when the ``Event`` Compose failed (Skipped, so not billed, otherwise): one of its
    expressions threw, e.g. a route's ``{{ eventTime }}`` (``formatDateTime``) on a time that has the shape
    :func:`._fields.envelope_valid` checks but is no date (``2024-13-45T00:00:00Z``). Without this the route
    loop was skipped and Event Grid got 200: the event lost unseen. Now its validity is computed again on
    its own; an invalid or foreign event ends as the runbook ends it (rejected: 200, nothing recorded),
    any other is a failure: 500, so Event Grid retries it and finally dead-letters it, where
    ``amlrelay deadletter`` sees it. If the validity itself cannot be computed, the event or its ``data``
    is not an object (``?[`` on a string fails; every other hop is null-safe), which the runbook rejects
    too: nothing is noted (the equivalence tests' ``data-not-object``)."""
    check = "Event_check"
    reason = ("the event could not be evaluated (an expression of the Event action failed; is its time a real "
              "date?): nothing was started")
    return {
        check: {"type": "Compose", "runAfter": {FACTS: ["Failed", "TimedOut"]},
                "inputs": {"valid": "@" + f.envelope_valid(), "allowed": "@" + f.allowed()}},
        "Event_acceptable": {
            "type": "If", "runAfter": {check: ["Succeeded"]},
            "expression": "@" + call("and", f"outputs('{check}')['valid']", f"outputs('{check}')['allowed']"),
            "actions": {"Note_event_failed": note({}, reason)}, "else": {"actions": {}}},
    }


def _text(value: str) -> str:
    """A literal string as a JSON value that WDL leaves alone (``@`` at the start, or ``@{``, would be read
    as an expression)."""
    return "@" + q(value) if value.startswith("@") or "@{" in value else value


def body(route: Route) -> dict[str, Any]:
    """:func:`amlrelay.router.build_request`'s body: JSON whose leaves are one expression per template."""
    target = route.pipeline
    out: dict[str, Any] = {}
    if target.branch is not None:
        ref = call("trim", f.render(target.branch))  # router.normalize_ref; the ref written twice, not three times
        ref = call("concat", call("if", call("startsWith", ref, "'refs/'"), "''", "'refs/heads/'"), ref)
        out["resources"] = {"repositories": {"self": {"refName": "@" + ref}}}
    if target.variables:
        out["variables"] = {name: {"value": "@" + f.render(var.value), "isSecret": var.is_secret}
                            for name, var in target.variables.items()}
    if target.template_parameters:
        out["templateParameters"] = {n: "@" + f.render(t) for n, t in target.template_parameters.items()}
    if target.stages_to_skip:
        out["stagesToSkip"] = [_text(s) for s in target.stages_to_skip]
    return out


def _leaves(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{path}[{index}]")


def check_sizes(routes: Routes) -> None:
    """Refuse, by route and part, what would not fit one expression: a route's events and filters, or one
    of its templates (the rest of the workflow does not grow with the routes file)."""
    problems: list[str] = []
    for route in routes.routes:
        size = len(pick(route)) + 1
        if size > MAX_EXPRESSION:
            problems.append(f"route {route.name!r}: its events and filters ({len(route.filters)} filter(s)) "
                            f"would be one expression of {size} characters")
        for where, leaf in _leaves(body(route), ""):
            where = where.replace("resources.repositories.self.refName", "branch")
            if len(leaf) > MAX_EXPRESSION:
                problems.append(f"route {route.name!r}: its pipeline.{where} template would be one expression "
                                f"of {len(leaf)} characters")
    if problems:
        raise RoutesError(
            f"{routes.source}: {len(problems)} part(s) of routes would not fit the Logic App, whose every "
            f"expression is limited to {MAX_EXPRESSION} characters (WDL):\n  - " + "\n  - ".join(problems),
            hint="Split a route with many filters or long value lists into several routes (each route is one "
                 "expression on its own, however many routes there are), shorten a long template (fewer "
                 "placeholders and fallbacks, less literal text), or use the runbook handler, which has no such "
                 "limit.")


def oversized(value: Any, path: str = "") -> Iterator[tuple[str, int]]:
    """(where, size) of every expression of a definition over the limit (a whole interpolated string
    counted as one): the last guard before a workflow Azure would refuse is written (:func:`check_sizes`
    names the route; this names the action)."""
    if isinstance(value, str):
        size = len(value) if "@" in value and not value.startswith("@@") else 0  # as expressions_in counts
        if size > MAX_EXPRESSION:
            yield path, size
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from oversized(item, f"{path}/{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from oversized(item, f"{path}[{index}]")


__all__ = ["FACTS", "action", "body", "check_sizes", "failure_path", "has_secrets", "oversized", "pick", "route_items",
           "secure_inputs"]
