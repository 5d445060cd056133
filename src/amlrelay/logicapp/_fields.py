"""The event side of the generated workflow: WDL expressions for an event's fields, its validity, route
matching, templates and the ledger key, built from the same parsed routes the router uses.

Every expression here is evaluated for *every* event (``if`` evaluates both branches), so each one is
null-safe: ``?[`` on every hop and ``coalesce`` before any function that would fail on null.
The mapping to the Python side, field by field:

* ``data`` keys: the runbook matches any case; here camelCase and PascalCase (the two shapes Azure ML and
  Microsoft's samples send). Tag/property keys: as written in the route, or lower-case.
* validity: the envelope fields each schema requires, the data fields each event type requires
  (:data:`REQUIRED`, checked against the Python parser by the tests), and the source allow-list.
* filters: :func:`amlrelay.router.condition_holds` — case-insensitive, a missing field fails all but the
  ``not*`` operators.
* the ledger key: :meth:`amlrelay.models.AmlEvent.outcome_key` + ``|route``, addressed like
  :func:`amlrelay.ledger.table_address` (URL-safe base64).
"""

from __future__ import annotations

from ..models import AML_PREFIX, DATA_MODELS, MODEL_DEPLOYED, MODEL_REGISTERED, RUN_COMPLETED, RUN_STATUS_CHANGED
from ..routes import NEGATED, Filter, Route
from ..templating import Template

EVENT = "item()"
"""The event: ``item()`` is the event in the event loop (where the ``Event`` Compose evaluates it), and the
route loop's items are copies of the event carrying the route's name (:data:`MARK`), so inside the route
loop ``item()`` is the event too. A short name matters: expressions are capped at 8,192 characters."""
MARK = "amlrelayRoute"
ROUTE = f"item()?['{MARK}']"
FACTS = "Event"
"""The per-event Compose (:mod:`._event`): what is computed once per event, one property per piece."""
ABSENT = "'~absent~'"

REQUIRED: dict[str, tuple[str, ...]] = {
    "RunCompleted": ("experimentId", "experimentName", "runId"),
    "RunStatusChanged": ("experimentId", "experimentName", "runId", "runStatus"),
    "ModelRegistered": ("modelName", "modelVersion"),
    "ModelDeployed": ("serviceName", "serviceComputeType", "modelIds"),
    "DatasetDriftDetected": ("dataDriftId",),
}
"""Data fields an event type must carry, non-empty (models.py ``required=True``); ``runType`` must be
present but may be null (:data:`PRESENT`)."""
PRESENT: dict[str, tuple[str, ...]] = {"RunCompleted": ("runType",), "RunStatusChanged": ("runType",)}


def q(text: str) -> str:
    """A WDL string literal."""
    return "'" + text.replace("'", "''") + "'"


def call(name: str, *args: str) -> str:
    return f"{name}({', '.join(args)})"


def fact(name: str) -> str:
    """A property of the per-event Compose, from anywhere inside the event loop."""
    return f"outputs('{FACTS}')[{q(name)}]"


def all_of(parts: list[str]) -> str:
    return "true" if not parts else parts[0] if len(parts) == 1 else call("and", *parts)


def any_of(parts: list[str]) -> str:
    return "false" if not parts else parts[0] if len(parts) == 1 else call("or", *parts)


def present(expr: str) -> str:
    """True when ``expr`` is not null. A sentinel, because comparisons treat null as ''."""
    return call("not", call("equals", call("coalesce", expr, ABSENT), ABSENT))


def nonempty(expr: str, *, strip: bool = False) -> str:
    text = call("string", expr)
    return call("not", call("equals", call("trim", text) if strip else text, "''"))


def _variants(name: str) -> list[str]:
    out = [name, name[:1].upper() + name[1:]]
    return list(dict.fromkeys(out))


def _first_of(exprs: list[str]) -> str:
    return exprs[0] if len(exprs) == 1 else call("coalesce", *exprs)


def data_key(name: str) -> str:
    return _first_of([f"{EVENT}?['data']?[{q(v)}]" for v in _variants(name)])


def event_type() -> str:
    return call("coalesce", f"{EVENT}?['eventType']", f"{EVENT}?['type']", "''")


def event_type_lower() -> str:
    return call("toLower", event_type())


def short_type() -> str:
    return call("last", call("split", event_type(), "'.'"))


def source() -> str:
    return call("coalesce", f"{EVENT}?['topic']", f"{EVENT}?['source']", "''")


def trim_slash(expr: str) -> str:
    """``rstrip('/')`` of one trailing slash (ARM ids have none; a hand-made event may have one)."""
    cut = call("substring", expr, "0", call("sub", call("length", expr), call("if", call("equals", expr, "''"), "0",
                                                                              "1")))
    return call("if", call("endsWith", expr, "'/'"), cut, expr)


def is_type(short: str) -> str:
    return call("equals", event_type_lower(), q((AML_PREFIX + short).lower()))


def _event_time() -> str:
    """The event's time as the runbook renders it. A time without a 'T' is never parsed (``formatDateTime``
    would throw and fail the whole ``Event`` Compose): such an event is invalid (:func:`_time_shape`), so
    nothing is started with the stand-in, and the event is rejected as the runbook rejects it."""
    time = call("coalesce", f"{EVENT}?['eventTime']", f"{EVENT}?['time']", "''")
    safe = call("if", call("contains", call("toLower", call("string", time)), "'t'"), time, "'0001-01-01T00:00:00Z'")
    return call("formatDateTime", safe, q("yyyy-MM-ddTHH:mm:ss.ffffffzzz"))


def field(name: str) -> str:
    """The value of a route field for the current event, null when the event lacks it."""
    lower = name.lower()
    envelope = {
        "eventid": f"{EVENT}?['id']",
        "eventtype": short_type(),
        "subject": call("coalesce", f"{EVENT}?['subject']", "''"),
        "eventtime": _event_time(),
        "workspaceid": source(),
        "workspacename": call("last", call("split", trim_slash(source()), "'/'")),
    }
    if lower in envelope:
        return envelope[lower]
    if lower == "runstatus":
        return call("if", is_type(RUN_COMPLETED), "'Completed'", data_key("runStatus"))
    if lower == "modelids":
        return call("replace", call("string", data_key("modelIds")), "' '", "''")
    head, dot, tail = name.partition(".")
    if dot:
        maps = [f"{EVENT}?['data']?[{q(m)}]" for m in _variants(head)]
        keys = list(dict.fromkeys([tail, tail.lower()]))
        return _first_of([f"{m}?[{q(k)}]" for m in maps for k in keys])
    return data_key(name)


def condition(cond: Filter) -> str:
    """:func:`amlrelay.router.condition_holds` as a WDL expression."""
    value = field(cond.field)
    if cond.operator == "exists":
        return present(value)
    text = call("toLower", call("string", value))
    wanted = [q(v.lower()) for v in cond.values]
    op = cond.operator.removeprefix("not")
    op = op[0].lower() + op[1:]
    if op == "in":
        hit = call("contains", call("createArray", *wanted), text)
    else:
        function = {"beginsWith": "startsWith", "endsWith": "endsWith", "contains": "contains"}[op]
        hit = any_of([call(function, text, w) for w in wanted])
    positive = all_of([present(value), hit])
    return call("not", positive) if cond.operator in NEGATED else positive


def _head(expr: str) -> str:
    """The first characters of ``[x]`` as JSON: ``["`` a string, ``[{`` an object, ``[t``/``[f`` a boolean,
    ``[[`` an array, ``[n`` null, else a number. WDL has no type function, and ``equals`` is lenient."""
    return call("string", call("createArray", expr))


def is_string(expr: str, *, nullable: bool = True) -> str:
    return call("contains", "'\"n'" if nullable else "'\"'", call("substring", _head(expr), "1", "1"))


def is_scalar(expr: str) -> str:
    """A string, a number or null (models._Data.text refuses booleans, objects and arrays)."""
    return call("not", call("contains", "'{[tf'", call("substring", _head(expr), "1", "1")))


def is_object(expr: str, *, nullable: bool = True) -> str:
    return call("contains", "'{n'" if nullable else "'{'", call("substring", _head(expr), "1", "1"))


def _typed(name: str) -> str:
    """models._Data: text fields are strings (modelVersion may be an integer), driftCoefficient a number
    or a numeric string; absent is fine here (required ones are checked separately)."""
    value = data_key(name)
    if name == "driftCoefficient":  # a number, or a numeric string (not '' or blank)
        return call("and", is_scalar(value), call("or", call("not", is_string(value, nullable=False)),
                                                  nonempty(value, strip=True)))
    if name == "modelVersion":
        return call("or", is_string(value), call("and", is_scalar(value),
                                                 call("not", call("contains", call("string", value), "'.'"))))
    return is_string(value)


def valid_for(short: str) -> str:
    """What models.py requires of a ``short`` event's data: the required fields present and non-empty, every
    scalar field a string or number, every tag/property map an object (else the runbook rejects it)."""
    model = DATA_MODELS[short]
    parts = [nonempty(data_key(f), strip=True) for f in REQUIRED[short]]
    data = call("coalesce", f"{EVENT}?['data']", "json('{}')")
    parts += [any_of([call("contains", data, q(v)) for v in _variants(f)]) for f in PRESENT.get(short, ())]
    parts += [call("or", call("not", present(data_key(f))), nonempty(data_key(f), strip=True))
              for f in PRESENT.get(short, ())]  # null, or a non-empty string
    parts += [_typed(f) for f in model.field_names if f != "runStatus"]
    parts += [is_object(data_key(m)) for m in model.map_names]
    return all_of(parts)


def route_matches(route: Route) -> str:
    """:func:`amlrelay.router.mismatch` is None, for an event already known to be valid and allowed."""
    types = any_of([is_type(t) for t in route.events])
    return all_of([types, *(condition(c) for c in route.filters)])


def _untrimmed_time(expr: str) -> str:
    """A timestamp with spaces around it does not parse in the SDKs the runbook uses (the workflow does not
    parse timestamps, it only refuses what the runbook surely cannot parse: :func:`_time_shape`)."""
    text = call("string", expr)
    return call("equals", call("trim", text), text)


def _time_shape(expr: str, *, cloud: bool) -> str:
    """A time the runbook's SDK parser would not even try: Event Grid's needs ``dddd-dd-ddTdd:dd:dd`` (the
    'T' at index 10, any case), CloudEvents' ``strptime('%Y-%m-%dT%H:%M:%S')`` a 'T' somewhere. Only what
    the runbook surely rejects is refused here (a 'T' in place is no promise that the time parses), so
    ``1/2/2024``, ``2024-01-01`` or ``garbage`` are invalid events, rejected as the runbook rejects them,
    before a route's ``{{ eventTime }}`` (``formatDateTime``, which throws) can fail the ``Event`` Compose.
    Implies non-empty. Kept short: it is part of the longest expression of the workflow."""
    text = call("toLower", call("string", expr))
    if cloud:
        return call("contains", text, "'t'")
    return call("equals", call("substring", call("concat", text, q(" " * 11)), "10", "1"), "'t'")


def envelope_valid() -> str:
    """What events.py requires of either envelope (present, non-empty, strings where it says so) and of the
    data of the event's type; evaluated once per event."""
    ev = EVENT
    spec = call("coalesce", f"{ev}?['specversion']", f"{ev}?['specVersion']")
    cloud = all_of([call("equals", call("string", spec), "'1.0'"), nonempty(f"{ev}?['id']"),
                    nonempty(f"{ev}?['source']"), nonempty(f"{ev}?['type']"),
                    call("not", present(f"{ev}?['eventType']")), call("not", present(f"{ev}?['topic']")),
                    call("or", call("not", present(f"{ev}?['time']")), _time_shape(f"{ev}?['time']", cloud=True)),
                    _untrimmed_time(f"{ev}?['time']"),
                    *(is_string(f"{ev}?['{k}']") for k in ("id", "source", "type", "subject", "time"))])
    grid = all_of([nonempty(f"{ev}?['id']"), nonempty(f"{ev}?['eventType']"), _untrimmed_time(f"{ev}?['eventTime']"),
                   _time_shape(f"{ev}?['eventTime']", cloud=False), present(f"{ev}?['subject']"),
                   nonempty(f"{ev}?['topic']"),
                   *(is_string(f"{ev}?['{k}']") for k in ("id", "eventType", "subject", "topic", "eventTime"))])
    run = call("or", is_type(RUN_COMPLETED), is_type(RUN_STATUS_CHANGED))
    data = [call("or", call("not", run), valid_for(RUN_COMPLETED))]  # RunStatusChanged adds runStatus:
    data += [call("or", call("not", is_type(RUN_STATUS_CHANGED)),
                  call("and", nonempty(data_key("runStatus"), strip=True), is_string(data_key("runStatus"))))]
    data += [call("or", call("not", is_type(t)), valid_for(t)) for t in DATA_MODELS if not t.startswith("Run")]
    return all_of([is_object(f"{ev}?['data']", nullable=False), call("if", present(spec), cloud, grid), *data])


def allowed() -> str:
    """validate.SourcePolicy: the workspace id, stripped, without a trailing slash, lower-cased, among the
    comma-separated ``allowedWorkspaces`` (AMLRELAY_ALLOWED_WORKSPACES' format), normalised the same way."""
    joined = call("concat", "parameters('allowedWorkspaces')", "','")
    listed = call("split", call("toLower", call("replace", call("replace", joined, "' '", "''"), "'/,'", "','")), "','")
    return call("contains", listed, call("toLower", trim_slash(call("trim", source()))))


def event_json() -> str:
    """The event as delivered (without the route mark), for the ledger's ``event_json``."""
    return call("string", call("removeProperty", EVENT, q(MARK)))


def render(template: Template) -> str:
    """:meth:`amlrelay.templating.Template.render`; the generator proved every field without a fallback is
    present whenever the route matches, so no branch here can meet a missing field.

    A fallback covers a missing (null) field and an empty one alike: ``if(empty(string(v)), 'x', string(v))``.
    ``coalesce`` alone would keep ``''``. ``string(null)`` is ``''`` (LOGICAPPS.md §2), so ``empty`` never
    sees null (whose ``empty`` the docs leave open), and an integer or boolean tag renders as the runbook's
    ``str()`` does (``5``, ``True``). The field is written twice and no more: each template is one
    8,192-character expression (:mod:`._event`)."""
    parts: list[str] = []
    for literal, placeholder in zip(template.literals, (*template.placeholders, None), strict=True):
        if literal:
            parts.append(q(literal))
        if placeholder is not None:
            text = call("string", field(placeholder.field))
            if placeholder.default is not None:
                text = call("if", call("empty", text), q(placeholder.default), text)
            parts.append(text)
    if not parts:
        return "''"
    return parts[0] if len(parts) == 1 else call("concat", *parts)


def outcome_key() -> str:
    """``AmlEvent.outcome_key()`` + ``|route``, lower-cased (the ledger key)."""
    def s(name: str) -> str:
        return call("string", call("coalesce", field(name), "''"))

    run = call("concat", "'run|'", s("runId"), "'|'", s("runStatus"))
    model = call("concat", "'model|'", s("modelName"), "'|'", s("modelVersion"))
    deployed = call("concat", "'deployment|'", s("serviceName"), "'|'", field("modelIds"))
    drift = call("concat", "'drift|'", s("dataDriftId"), "'|'", s("runId"))
    kind = call("if", any_of([is_type(RUN_COMPLETED), is_type(RUN_STATUS_CHANGED)]), run,
                call("if", is_type(MODEL_REGISTERED), model, call("if", is_type(MODEL_DEPLOYED), deployed, drift)))
    return call("toLower", call("concat", trim_slash(source()), "'|'", kind, "'|'", ROUTE))


def row_key() -> str:
    """``ledger.table_address``: the key's UTF-8 bytes in URL-safe base64."""
    return call("replace", call("replace", call("base64", outcome_key()), "'+'", "'-'"), "'/'", "'_'")
