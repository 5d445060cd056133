"""Generate the Logic App (Consumption) workflow definition from the routes file.

Shape, and why (billable action executions on each path are counted by ``bench/logicapp_cost.py``):

* **Request trigger, answered by a Response after the work.** Event Grid retries a 5xx and dead-letters a
  400, so nothing is acknowledged before its events are handled. The subscription-validation handshake is
  answered by the same Response (``validationResponse``), so it costs no extra action.
* **For each event** (sequential), the ``Event`` Compose (:mod:`._event`) computes once, one JSON property
  per piece (WDL caps *one* expression at 8,192 characters), whether the event is valid and allowed, which
  routes take it and their request bodies; then **for each matching route** (a constant-size expression
  over the Compose's ``routes``). The workflow grows by route, never into one expression of every route.
* **Claim → Start → Record**, branched with ``runAfter`` instead of conditions: the ledger insert fails
  with 409 when the key exists, and only then does the duplicate branch (Read, Decide) run. That per-route
  graph and its expressions live in :mod:`._actions`; this module lays the workflow out around it.
* **ADO retries** only on 429/503: the HTTP action's own retry policy would also resend after 500/502/504
  and timeouts (EXC: it retries 408, 429 and 5xx), which could start a second run, so its policy is
  ``none`` and an ``Until`` loop repeats the call while ADO answers 429/503, waiting ``Retry-After``.
  After an ambiguous answer (500, 502, 504, timeout, reset) nothing is resent: the failure is recorded
  ``[ambiguous]`` and ``amlrelay replay --failed`` (which can search the pipeline's runs) reconciles it.
* A ``failures`` array variable collects what failed; the Response answers 500 when it is not empty.
  Every action whose failure would otherwise end in a 200 has a successor that notes it (the ``Event``
  Compose: :func:`._event.failure_path`).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from ..errors import RoutesError
from ..models import ENVELOPE_FIELDS
from ..router import API_VERSION
from ..routes import NEGATED, Route, Routes
from . import _event, _verify
from . import _fields as f
from ._actions import Builder, msi
from ._fields import FACTS, call, q
from ._wdl import MAX_EXPRESSION

SCHEMA = "https://schema.management.azure.com/providers/Microsoft.Logic/schemas/2016-06-01/workflowdefinition.json#"
TRIGGER = "When_an_AML_event_is_received"
VAULT_AUDIENCE = "https://vault.azure.net"
_VALIDATION = "microsoft.eventgrid.subscriptionvalidationevent"
MAX_BODY_BYTES = 1024 * 1024 + 1024
"""Event Grid events are at most 1 MB and each delivery is an array of one event ("Azure Event Grid event
schema", MS Learn), so a larger body is not from Event Grid: answered 400 (dead-lettered at once if it
were), read from the Request trigger's Content-Length (its own limit is 100 MB, LOGICAPPS.md §5). 1 KiB of
margin for the array and whichever "MB" Event Grid means. The runbook refuses above 512 KB because
Automation's webhooks do; between the two the workflow handles events the runbook can never receive."""


def generate(routes: Routes, *, auth: str = "managed-identity", throttle_retries: int = 4,
             max_retry_after: int = 60, ado_timeout: str = "PT30S", stale_after: int = 1800,
             verify: bool = False) -> dict[str, Any]:
    """The workflow definition for ``routes``. Raises RoutesError for a route the workflow cannot render.
    ``verify``: read the run or model version back from AML before claiming (see :mod:`._verify`)."""
    if auth not in ("managed-identity", "pat"):
        raise ValueError("auth must be 'managed-identity' or 'pat'")
    _check_renderable(routes)
    _event.check_sizes(routes)
    if verify:
        _verify.check_fits(routes.routes, routes.source)
    per_route = {r.name: {"path": _path(r)} for r in routes.routes}
    params: dict[str, Any] = {
        "adoOrganizationUrl": {"type": "String", "metadata": {"description": "e.g. https://dev.azure.com/contoso"}},
        "allowedWorkspaces": {"type": "String", "metadata": {"description": "workspace resource ids, comma-separated"}},
        "ledgerTableUrl": {"type": "String", "metadata": {"description": "https://<account>.table.core.windows.net"}},
        "ledgerTable": {"type": "String", "defaultValue": "amlrelayledger"},
        "routes": {"type": "Object", "defaultValue": per_route},
    }
    first = "Initialize_failures"
    actions: dict[str, Any] = {
        first: {"type": "InitializeVariable", "runAfter": {},
                "inputs": {"variables": [{"name": "failures", "type": "array", "value": []}]}},
    }
    if auth == "pat":
        params["keyVaultUrl"] = {"type": "String"}
        params["patSecretName"] = {"type": "String", "defaultValue": "ado-pat"}
        actions["Get_PAT"] = {
            "type": "Http", "runAfter": {first: ["Succeeded"]},
            "inputs": {"method": "GET", "uri": "@{parameters('keyVaultUrl')}/secrets/@{parameters('patSecretName')}"
                       "?api-version=7.4", "authentication": msi(VAULT_AUDIENCE), "retryPolicy": {"type": "none"}},
            "runtimeConfiguration": {"secureData": {"properties": ["inputs", "outputs"]}},
        }
        first = "Get_PAT"
    if verify:
        params["armUrl"] = {"type": "String", "defaultValue": "https://management.azure.com"}
        params["armAudience"] = {"type": "String", "defaultValue": "https://management.azure.com/"}
        params["jobStatusRanks"] = {"type": "Object", "defaultValue": _verify.RANKS}
    ctx = Builder(routes, auth, throttle_retries, max_retry_after, ado_timeout, stale_after)
    actions["For_each_event"] = {
        "type": "Foreach", "runAfter": {first: ["Succeeded"]}, "operationOptions": "Sequential",
        "foreach": "@" + call("if", _TOO_LARGE, call("createArray"), call(
            "if", _IS_ARRAY, "triggerBody()",
            call("if", _IS_OBJECT, call("createArray", "triggerBody()"), call("createArray")))),
        "actions": {
            FACTS: _event.action(routes, verify=verify),  # validity, the routes taking the event, their bodies
            **_event.failure_path(Builder.note_for),  # only if Event failed: never a 200 for an unseen event
            "For_each_route": {
                "type": "Foreach", "runAfter": {FACTS: ["Succeeded"]}, "operationOptions": "Sequential",
                "foreach": "@" + _event.route_items(),
                "actions": _verified(ctx.route_actions(), routes.routes) if verify else ctx.route_actions(),
            },
        },
    }
    batch = call("if", _IS_ARRAY, "triggerBody()", call("createArray"))
    lead = f"first({batch})"  # an object, or {} (``?[`` on a number or string would fail the Response itself)
    is_object = call("and", call("startsWith", call("string", lead), "'{'"),
                     call("not", call("equals", call("string", lead), lead)))
    head = call("json", call("if", is_object, call("string", lead), "'{}'"))
    validation = call("equals", call("toLower", call("string", f"{head}?['eventType']")), q(_VALIDATION))
    actions["Respond"] = {
        "type": "Response", "kind": "Http",
        "runAfter": {"For_each_event": ["Succeeded", "Failed", "Skipped", "TimedOut"]},
        "inputs": {
            "statusCode": "@" + call("if", call("and", call("not", _TOO_LARGE), call("or", _IS_ARRAY, _IS_OBJECT)),
                                     call("if", call("empty", "variables('failures')"), "200", "500"), "400"),
            "headers": {"Content-Type": "application/json"},
            "body": "@" + call("if", _TOO_LARGE,
                               call("setProperty", "json('{}')", "'error'", q(
                                   f"the request body is over {MAX_BODY_BYTES} bytes: Event Grid sends one event "
                                   "of at most 1 MB per delivery, so it is not an Event Grid delivery")),
                               call("if", validation,
                                    call("setProperty", "json('{}')", "'validationResponse'",
                                         _safe_object(f"{head}?['data']") + "?['validationCode']"),
                                    call("setProperty", "json('{}')", "'failures'", "variables('failures')"))),
        },
    }
    definition = {
        "$schema": SCHEMA,
        "contentVersion": "1.0.0.0",
        "parameters": params,
        "triggers": {TRIGGER: {"type": "Request", "kind": "Http", "inputs": {"method": "POST"}}},
        "actions": actions,
        "outputs": {},
    }
    too_long = list(_event.oversized(definition))
    if too_long:  # check_sizes and check_fits name the route; this is the guard for anything they miss
        raise RoutesError(f"{routes.source}: the generated workflow has {len(too_long)} expression(s) over WDL's "
                          f"{MAX_EXPRESSION}-character limit: " + "; ".join(f"{w} ({n})" for w, n in too_long),
                          hint="Report this as a bug in amlrelay; meanwhile use the runbook handler.")
    return definition


_B = "triggerBody()"
_IS_ARRAY = call("and", call("startsWith", call("string", _B), "'['"),
                 call("not", call("equals", call("string", _B), _B)))
_IS_OBJECT = call("and", call("startsWith", call("string", _B), "'{'"),
                  call("not", call("equals", call("string", _B), _B)))
_TOO_LARGE = call("greater", call("int", call("coalesce", "triggerOutputs()?['headers']?['Content-Length']", "'0'")),
                  str(MAX_BODY_BYTES))


def _safe_object(expr: str) -> str:
    """``expr`` if it is an object, else {}: ``?[`` on a string or number would fail the action."""
    text = call("string", expr)
    is_object = call("and", call("startsWith", text, "'{'"), call("not", call("equals", text, expr)))
    return call("json", call("if", is_object, text, "'{}'"))


def _verified(claim_graph: dict[str, Any], routes: tuple[Route, ...]) -> dict[str, Any]:
    """Read the event's run or model version from AML first; only a confirmed event reaches the claim."""
    note = Builder.note_for
    return {
        "Verify": {"type": "Http", "runAfter": {},
                   "inputs": {"method": "GET", "uri": _verify.uri(),
                              "authentication": {"type": "ManagedServiceIdentity",
                                                 "audience": "@parameters('armAudience')"}}},
        "Not_verified": {"type": "If", "runAfter": {"Verify": ["Failed", "TimedOut"]},
                         "expression": "@not(equals(outputs('Verify')?['statusCode'], 404))",
                         "actions": {"Note_not_verified": note({}, "@{concat('not verified: AML answered ', "
                                                                   "string(coalesce(outputs('Verify')?['statusCode'], "
                                                                   "'nothing')))}")},
                         # a 404 refutes only if the workspace itself exists (verify._reader._not_found)
                         "else": {"actions": {
                             "Read_workspace": {"type": "Http", "runAfter": {},
                                                "inputs": {"method": "GET", "uri": _verify.workspace_uri(),
                                                           "authentication": _ARM_MSI}},
                             "Note_workspace_missing": note(
                                 {"Read_workspace": ["Failed", "TimedOut"]},
                                 "@{concat('not verified: AML has no such run or model, and the workspace could not "
                                 "be read (HTTP ', string(coalesce(outputs('Read_workspace')?['statusCode'], "
                                 "'nothing')), '): a wrong armUrl, or the workspace was deleted')}")}}},
        "Confirmed": {"type": "If", "runAfter": {"Verify": ["Succeeded"]},
                      "expression": "@" + _verify.confirmed(routes),
                      "actions": claim_graph,
                      "else": {"actions": {"Not_yet": {
                          "type": "If", "runAfter": {}, "expression": "@" + _verify.not_yet(),
                          "actions": {"Note_not_yet": note({}, "AML does not show the event's status yet: tried "
                                                               "again later")}}}}},
    }


_ARM_MSI = {"type": "ManagedServiceIdentity", "audience": "@parameters('armAudience')"}


def _path(route: Route) -> str:
    target = route.pipeline
    query = f"api-version={API_VERSION}"
    if target.pipeline_version is not None:
        query += f"&pipelineVersion={target.pipeline_version}"
    return f"/{quote(target.project, safe='')}/_apis/pipelines/{target.pipeline_id}/runs?{query}"


def _check_renderable(routes: Routes) -> None:
    """A template field without a fallback must be present whenever the route matches: the runbook fails
    such an event (an empty value would start the wrong run), but a workflow cannot fail one route of an
    event without an extra billed action per event, so the generator proves it cannot happen instead."""
    problems: list[str] = []
    for route in routes.routes:
        filtered = {c.field.lower() for c in route.filters if c.operator not in NEGATED}
        target = route.pipeline
        templates = [("branch", target.branch)] if target.branch is not None else []
        templates += [(f"variables.{n}", v.value) for n, v in target.variables.items()]
        templates += [(f"templateParameters.{n}", t) for n, t in target.template_parameters.items()]
        for where, template in templates:
            assert template is not None
            for p in template.placeholders:
                name = p.field.lower()
                guaranteed = (name in {e.lower() for e in ENVELOPE_FIELDS} or name in filtered
                              or (name == "runstatus" and all(t.startswith("Run") for t in route.events))
                              or all(name in {r.lower() for r in f.REQUIRED[t]} for t in route.events))
                if p.default is None and not guaranteed:
                    problems.append(f"route {route.name!r}.pipeline.{where}: {{{{ {p.field} }}}} has no fallback and "
                                    f"the event may lack it")
    if problems:
        raise RoutesError(f"{routes.source}: the Logic App cannot render {len(problems)} template(s):\n  - "
                          + "\n  - ".join(problems),
                          hint="Add a fallback ('{{ field | none }}') or an 'exists' filter on the field.")
