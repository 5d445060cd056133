"""The routes file: which AML events start which ADO pipeline, declared once for every handler.

The runbook routes with it, the Bicep event subscriptions are generated from it and the Logic App will be
too, so it stays declarative: event types, filters with Event Grid's operators, and a pipeline target
whose values are ``{{ field }}`` templates. It is checked completely at load time, and every problem is
reported with the file, the route and the field, before a single event is handled.

Schema for editors: ``amlrelay/schemas/routes.schema.json``. Field names: see :mod:`amlrelay.models`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import RoutesError
from .models import AML_PREFIX, DATA_MODELS, ENVELOPE_FIELDS, EVENT_TYPES
from .templating import Template, parse_template

# Operators mirror Event Grid advanced filters (case-insensitive string comparison) so the subscription
# filters generated from a route select exactly what the router accepts.
STRING_OPERATORS = {
    "in": "StringIn",
    "notIn": "StringNotIn",
    "beginsWith": "StringBeginsWith",
    "notBeginsWith": "StringNotBeginsWith",
    "endsWith": "StringEndsWith",
    "notEndsWith": "StringNotEndsWith",
    "contains": "StringContains",
    "notContains": "StringNotContains",
}
NEGATED = {"notIn", "notBeginsWith", "notEndsWith", "notContains"}
OPERATORS = (*STRING_OPERATORS, "exists")
MAX_FILTER_VALUES = 25  # Event Grid: 25 advanced-filter values per subscription
MAX_FILTER_VALUE_LENGTH = 512  # Event Grid: string filter values up to 512 characters

_ROUTE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,39}$")
_VARIABLE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,256}$")
_TOP_KEYS = {"$schema", "version", "defaults", "routes", "pushDownFilters"}
PUSH_DOWN = ("safe", "all", "none")
"""Which route filters the generated Event Grid subscriptions carry (see amlrelay.subscriptions)."""
_ROUTE_KEYS = {"name", "description", "events", "filters", "pipeline"}
_PIPELINE_KEYS = {"project", "id", "version", "branch", "variables", "templateParameters", "stagesToSkip"}
_DEFAULT_KEYS = {"project", "branch", "variables", "templateParameters"}


@dataclass(frozen=True)
class Filter:
    field: str
    operator: str  # a key of STRING_OPERATORS, or "exists"
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class Variable:
    value: Template
    is_secret: bool = False


@dataclass(frozen=True)
class PipelineTarget:
    project: str
    pipeline_id: int
    pipeline_version: int | None = None
    branch: Template | None = None
    variables: Mapping[str, Variable] = field(default_factory=dict)
    template_parameters: Mapping[str, Template] = field(default_factory=dict)
    stages_to_skip: tuple[str, ...] = ()


@dataclass(frozen=True)
class Route:
    name: str
    events: tuple[str, ...]  # short names, e.g. "RunCompleted"
    filters: tuple[Filter, ...]
    pipeline: PipelineTarget
    description: str = ""


@dataclass(frozen=True)
class Routes:
    routes: tuple[Route, ...]
    source: str = "<routes>"
    push_down_filters: str = "safe"  # what Event Grid may filter; the router decides either way

    def by_name(self, name: str) -> Route:
        for route in self.routes:
            if route.name.lower() == name.lower():
                return route
        raise RoutesError(f"{self.source}: there is no route named {name!r}.",
                          hint="Known routes: " + ", ".join(r.name for r in self.routes) + ".")


def fields_of(event_type: str) -> tuple[set[str], tuple[str, ...]]:
    """Field names an event type can carry, and the prefixes of its free-form maps (tags, properties)."""
    model = DATA_MODELS[event_type]
    return set(ENVELOPE_FIELDS) | set(model.field_names), model.map_names


def carries(event_type: str, name: str) -> bool:
    names, maps = fields_of(event_type)
    lower = name.lower()
    if lower in {n.lower() for n in names}:
        return True
    head, _, tail = name.partition(".")
    return bool(tail) and head.lower() in {m.lower() for m in maps}


def load_routes(location: str | Path) -> Routes:
    """Load a routes file, or inline JSON (an Automation variable can hold the whole document)."""
    text = str(location)
    if text.lstrip().startswith("{"):
        return parse_routes(text, source="<inline routes>")
    path = Path(text)
    try:
        content = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise RoutesError(f"Cannot read routes file {path}: {exc.strerror}.",
                          hint="Set AMLRELAY_ROUTES to the path of a routes file or to its JSON.") from None
    return parse_routes(content, source=str(path))


def parse_routes(content: str, *, source: str = "<routes>") -> Routes:
    try:
        document = json.loads(content)
    except ValueError as exc:
        raise RoutesError(f"{source}: not valid JSON ({exc}).", hint="Fix the JSON syntax.") from None
    problems: list[str] = []
    routes = _Loader(problems).document(document)
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise RoutesError(
            f"{source}: {len(problems)} problem(s):\n  - " + "\n  - ".join(shown),
            hint="See README 'Routes' and the JSON schema amlrelay/schemas/routes.schema.json.",
        )
    push_down = document.get("pushDownFilters", "safe") if isinstance(document, dict) else "safe"
    return Routes(tuple(routes), source=source, push_down_filters=push_down)


class _Loader:
    """Collects every problem instead of stopping at the first, so one edit fixes the whole file."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems

    def fail(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    def unknown_keys(self, where: str, value: Mapping[str, Any], allowed: set[str]) -> None:
        for key in sorted(set(value) - allowed):
            self.fail(where, f"unknown key {key!r} (allowed: {', '.join(sorted(allowed))})")

    def document(self, document: Any) -> list[Route]:
        if not isinstance(document, dict):
            self.fail("document", "must be a JSON object with 'version' and 'routes'")
            return []
        self.unknown_keys("document", document, _TOP_KEYS)
        if document.get("version") != 1:
            self.fail("version", "must be 1")
        if document.get("pushDownFilters", "safe") not in PUSH_DOWN:
            self.fail("pushDownFilters", f"must be one of {', '.join(PUSH_DOWN)}")
        defaults = document.get("defaults", {})
        if not isinstance(defaults, dict):
            self.fail("defaults", "must be an object")
            defaults = {}
        self.unknown_keys("defaults", defaults, _DEFAULT_KEYS)
        for key in ("variables", "templateParameters"):  # not merged into any route when not an object
            if key in defaults and not isinstance(defaults[key], dict):
                self.fail(f"defaults.{key}", "must be an object")
        raw_routes = document.get("routes")
        if not isinstance(raw_routes, list) or not raw_routes:
            self.fail("routes", "must be a non-empty array")
            return []
        routes: list[Route] = []
        seen: set[str] = set()
        for index, raw in enumerate(raw_routes):
            name = raw.get("name") if isinstance(raw, dict) else None
            where = f"route {name!r}" if isinstance(name, str) else f"routes[{index}]"
            route = self.route(where, raw, defaults)
            if route is None:
                continue
            if route.name.lower() in seen:
                self.fail(where, "duplicate route name (names are case-insensitive)")
            seen.add(route.name.lower())
            routes.append(route)
        return routes

    def route(self, where: str, raw: Any, defaults: Mapping[str, Any]) -> Route | None:
        if not isinstance(raw, dict):
            self.fail(where, "must be an object")
            return None
        self.unknown_keys(where, raw, _ROUTE_KEYS)
        name = raw.get("name")
        if not isinstance(name, str) or not _ROUTE_NAME.match(name):
            self.fail(where, "name must be 1-40 letters, digits or hyphens, starting with a letter or digit "
                             "(it names the Event Grid subscription and the ledger records)")
            return None
        events = self.events(where, raw.get("events"))
        filters = self.filters(where, raw.get("filters", {}), events)
        pipeline = self.pipeline(where, raw.get("pipeline"), defaults, events)
        description = raw.get("description", "")
        if not isinstance(description, str):
            self.fail(f"{where}.description", "must be a string")
        if pipeline is None or not events:
            return None
        return Route(name, events, filters, pipeline, description if isinstance(description, str) else "")

    def events(self, where: str, raw: Any) -> tuple[str, ...]:
        if not isinstance(raw, list) or not raw:
            self.fail(f"{where}.events", f"must be a non-empty array of {', '.join(EVENT_TYPES)}")
            return ()
        out: list[str] = []
        for item in raw:
            short = item[len(AML_PREFIX):] if isinstance(item, str) and item.startswith(AML_PREFIX) else item
            match = next((t for t in EVENT_TYPES if isinstance(short, str) and t.lower() == short.lower()), None)
            if match is None:
                self.fail(f"{where}.events", f"unknown event type {item!r} (known: {', '.join(EVENT_TYPES)})")
            elif match not in out:
                out.append(match)
        return tuple(out)

    def check_field(self, where: str, name: str, events: tuple[str, ...]) -> bool:
        lacking = [t for t in events if not carries(t, name)]
        if lacking:
            self.fail(where, f"field {name!r} is not carried by {', '.join(lacking)} events")
        return not lacking

    def filters(self, where: str, raw: Any, events: tuple[str, ...]) -> tuple[Filter, ...]:
        if not isinstance(raw, dict):
            self.fail(f"{where}.filters", "must be an object mapping a field to its conditions")
            return ()
        out: list[Filter] = []
        for name, conditions in raw.items():
            at = f"{where}.filters.{name}"
            if name.split(".")[0].lower() in {"eventid", "eventtype", "eventtime", "workspaceid",
                                               "workspacename"}:
                self.fail(at, "envelope fields cannot be filtered here (use 'events'; workspaces are "
                              "restricted by the allowed-workspaces setting)")
                continue
            self.check_field(at, name, events)
            if not isinstance(conditions, dict) or not conditions:
                self.fail(at, f"must be an object with one or more of {', '.join(OPERATORS)}")
                continue
            for operator, values in conditions.items():
                parsed = self.condition(f"{at}.{operator}", name, operator, values)
                if parsed is not None:
                    out.append(parsed)
        total = sum(len(f.values) or 1 for f in out)
        if total > MAX_FILTER_VALUES:
            self.fail(f"{where}.filters", f"{total} filter values; Event Grid allows {MAX_FILTER_VALUES}")
        return tuple(out)

    def condition(self, at: str, name: str, operator: str, values: Any) -> Filter | None:
        if operator == "exists":
            if values is not True:
                self.fail(at, "must be true ('exists': true); use 'notIn' to exclude values")
                return None
            return Filter(name, "exists")
        if operator not in STRING_OPERATORS:
            self.fail(at, f"unknown operator (known: {', '.join(OPERATORS)})")
            return None
        if isinstance(values, str):
            values = [values]
        if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
            self.fail(at, "must be a string or a non-empty array of strings")
            return None
        if any(len(v) > MAX_FILTER_VALUE_LENGTH for v in values):
            self.fail(at, f"values must be at most {MAX_FILTER_VALUE_LENGTH} characters (Event Grid limit)")
        return Filter(name, operator, tuple(values))

    def template(self, at: str, raw: Any, events: tuple[str, ...]) -> Template | None:
        if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
            self.fail(at, "must be a string")
            return None
        try:
            template = parse_template(str(raw))
        except ValueError as exc:
            self.fail(at, str(exc))
            return None
        for name in template.fields:
            self.check_field(at, name, events)
        return template

    def pipeline(self, where: str, raw: Any, defaults: Mapping[str, Any],
                 events: tuple[str, ...]) -> PipelineTarget | None:
        at = f"{where}.pipeline"
        if not isinstance(raw, dict):
            self.fail(at, "must be an object with at least 'project' (or defaults.project) and 'id'")
            return None
        self.unknown_keys(at, raw, _PIPELINE_KEYS)
        project = raw.get("project", defaults.get("project"))
        if not isinstance(project, str) or not project.strip():
            self.fail(f"{at}.project", "is required (here or in defaults.project)")
        pipeline_id = raw.get("id")
        if not isinstance(pipeline_id, int) or isinstance(pipeline_id, bool) or pipeline_id <= 0:
            self.fail(f"{at}.id", "must be the pipeline's positive integer id (see its URL: definitionId=N)")
        version = raw.get("version")
        if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version <= 0):
            self.fail(f"{at}.version", "must be a positive integer when given")
        branch_raw = raw.get("branch", defaults.get("branch"))
        branch = None if branch_raw is None else self.template(f"{at}.branch", branch_raw, events)
        variables: dict[str, Variable] = {}
        merged_vars = {**_as_dict(defaults.get("variables")), **_as_dict(raw.get("variables"))}
        for name, spec in merged_vars.items():
            vat = f"{at}.variables.{name}"
            if not _VARIABLE_NAME.match(name):
                self.fail(vat, "is not a valid ADO variable name")
            secret = False
            if isinstance(spec, dict):
                self.unknown_keys(vat, spec, {"value", "isSecret"})
                secret = spec.get("isSecret", False)
                if not isinstance(secret, bool):
                    self.fail(f"{vat}.isSecret", "must be true or false")
                spec = spec.get("value")
            value = self.template(vat, spec, events)
            if value is not None:
                variables[name] = Variable(value, bool(secret))
        parameters: dict[str, Template] = {}
        merged_params = {**_as_dict(defaults.get("templateParameters")), **_as_dict(raw.get("templateParameters"))}
        for name, spec in merged_params.items():
            value = self.template(f"{at}.templateParameters.{name}", spec, events)
            if value is not None:
                parameters[name] = value
        stages = raw.get("stagesToSkip", [])
        if not isinstance(stages, list) or not all(isinstance(s, str) and s for s in stages):
            self.fail(f"{at}.stagesToSkip", "must be an array of stage names")
            stages = []
        for key in ("variables", "templateParameters"):
            if key in raw and not isinstance(raw[key], dict):
                self.fail(f"{at}.{key}", "must be an object")
        if not isinstance(project, str) or not isinstance(pipeline_id, int):
            return None
        return PipelineTarget(project.strip(), pipeline_id, version if isinstance(version, int) else None,
                              branch, variables, parameters, tuple(stages))


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
