"""Route: decide which routes an event matches and build the exact ADO request for each. Pure functions.

Matching follows Event Grid's advanced-filter semantics, so the subscription filters generated from the
same routes file and this router agree: string comparisons ignore case, a condition with several values
holds when any value matches (for the ``not*`` operators: when none does), every condition of a route
must hold, and a field the event lacks fails every condition except the ``not*`` ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from .models import DATA_MODELS, AmlEvent
from .routes import NEGATED, Filter, Route, Routes
from .templating import Template

API_VERSION = "7.1"


@dataclass(frozen=True)
class PipelineRunRequest:
    """Everything needed to call ADO "Runs - Run Pipeline"; the body follows ``RunPipelineParameters``."""

    route: str
    project: str
    pipeline_id: int
    pipeline_version: int | None
    body: dict[str, Any]
    fingerprint: dict[str, str] = field(default_factory=dict)
    """Values in the body that identify the AML outcome (templated from data fields, not from the delivery's
    id or time): how :mod:`amlrelay.reconcile` recognises, among a pipeline's runs, one this request started."""

    def url(self, org_url: str) -> str:
        return f"{org_url.rstrip('/')}/{quote(self.project, safe='')}/_apis/pipelines/{self.pipeline_id}/runs"

    def query(self) -> dict[str, str]:
        query = {"api-version": API_VERSION}
        if self.pipeline_version is not None:
            query["pipelineVersion"] = str(self.pipeline_version)
        return query

    def redacted_body(self) -> dict[str, Any]:
        """The body with secret variable values masked, for dry runs and logs."""
        body = dict(self.body)
        if "variables" in body:
            body["variables"] = {
                name: ({**spec, "value": "***"} if spec.get("isSecret") else spec)
                for name, spec in body["variables"].items()
            }
        return body


def condition_holds(condition: Filter, fields: dict[str, str], index: dict[str, str]) -> bool:
    key = index.get(condition.field.lower())
    if key is None:
        return condition.operator in NEGATED
    if condition.operator == "exists":
        return True
    value = fields[key].lower()
    wanted = [v.lower() for v in condition.values]
    op = condition.operator.removeprefix("not")
    op = op[0].lower() + op[1:]
    if op == "in":
        hit = value in wanted
    elif op == "beginsWith":
        hit = any(value.startswith(w) for w in wanted)
    elif op == "endsWith":
        hit = any(value.endswith(w) for w in wanted)
    else:  # contains
        hit = any(w in value for w in wanted)
    return not hit if condition.operator in NEGATED else hit


def mismatch(route: Route, event: AmlEvent, fields: dict[str, str], index: dict[str, str]) -> str | None:
    """Why ``route`` does not take ``event`` (``None`` when it does): shown in the skipped outcome."""
    if event.type not in route.events:
        return f"{route.name}: not for {event.type}"
    for condition in route.filters:
        if not condition_holds(condition, fields, index):
            key = index.get(condition.field.lower())
            actual = repr(fields[key]) if key else "absent"
            values = f" [{', '.join(condition.values)}]" if condition.values else ""
            return f"{route.name}: {condition.field} {actual} fails {condition.operator}{values}"
    return None


def select(routes: Routes, event: AmlEvent) -> tuple[list[Route], list[str]]:
    """All routes that take the event (an event may start several pipelines), and why the others don't."""
    fields = event.fields()
    index = {k.lower(): k for k in fields}
    matched: list[Route] = []
    reasons: list[str] = []
    for route in routes.routes:
        reason = mismatch(route, event, fields, index)
        if reason is None:
            matched.append(route)
        else:
            reasons.append(reason)
    return matched, reasons


def build_request(route: Route, event: AmlEvent) -> PipelineRunRequest:
    """Render the route's templates with the event's fields; raises TemplateError for a missing field."""
    fields = event.fields()
    index = {k.lower(): k for k in fields}
    target = route.pipeline
    body: dict[str, Any] = {}
    if target.branch is not None:
        ref = target.branch.render(fields, lower_index=index).strip()
        body["resources"] = {"repositories": {"self": {"refName": normalize_ref(ref)}}}
    if target.variables:
        body["variables"] = {
            name: {"value": var.value.render(fields, lower_index=index), "isSecret": var.is_secret}
            for name, var in target.variables.items()
        }
    if target.template_parameters:
        body["templateParameters"] = {
            name: template.render(fields, lower_index=index) for name, template in target.template_parameters.items()
        }
    if target.stages_to_skip:
        body["stagesToSkip"] = list(target.stages_to_skip)
    fingerprint: dict[str, str] = {}
    if reconcilable(route, event.type):
        fingerprint = {f"variables.{name}": body["variables"][name]["value"]
                       for name, var in target.variables.items() if not var.is_secret and _stable(var.value)}
        fingerprint |= {f"templateParameters.{name}": body["templateParameters"][name]
                        for name, template in target.template_parameters.items() if _stable(template)}
    return PipelineRunRequest(route.name, target.project, target.pipeline_id, target.pipeline_version, body,
                              fingerprint)


_PER_DELIVERY = frozenset({"eventid", "eventtype", "subject", "eventtime"})


def _stable(template: Template) -> bool:
    """Templated from the outcome, not from the delivery (whose id and time differ between copies)."""
    fields = [f.lower() for f in template.fields]
    return bool(fields) and not any(f in _PER_DELIVERY for f in fields)


def reconcilable(route: Route, event_type: str) -> bool:
    """Whether a run this route started for an ``event_type`` outcome can be told apart from the runs of
    other outcomes: its variables and parameters must carry every field the outcome key is made of
    (e.g. modelName *and* modelVersion), or reconciling could adopt another outcome's run. Secret variables
    do not count: ADO never returns their values when a run is read, so a run cannot be recognised by them
    (counting them would find nothing after a lost answer, and the request would be sent a second time)."""
    target = route.pipeline
    templates = [v.value for v in target.variables.values() if not v.is_secret]
    templates += list(target.template_parameters.values())
    carried = {f.lower() for t in templates if _stable(t) for f in t.fields}
    return all(f.lower() in carried for f in DATA_MODELS[event_type].identity_fields)


def normalize_ref(ref: str) -> str:
    """``main`` means ``refs/heads/main``; a full ref (``refs/tags/v1``) is kept as given."""
    return ref if ref.startswith("refs/") else f"refs/heads/{ref}"
