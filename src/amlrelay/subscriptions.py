"""Event Grid event subscriptions generated from the routes file, selecting what the router accepts.

One route becomes one or more subscriptions on the workspace's system topic. Each subscription is a filter
(``includedEventTypes`` + ``advancedFilters``) that Event Grid evaluates with the semantics documented in
https://learn.microsoft.com/azure/event-grid/event-filtering (MicrosoftDocs/azure-docs
``articles/event-grid/event-filtering.md``):

* advanced filters of one subscription are AND-ed, the values of one filter OR-ed (for the ``Not``
  operators: the key must match none), and string comparisons ignore case;
* a key missing from the event fails every string operator **except** ``StringNotIn`` -- in particular
  ``StringNotBeginsWith``, ``StringNotEndsWith`` and ``StringNotContains`` fail on a missing key, whereas
  :func:`amlrelay.router.condition_holds` lets every ``not*`` condition pass a missing field;
* at most 25 advanced filters and 25 filter values per subscription, 512 characters per value.

To select *exactly* what :func:`amlrelay.router.select` accepts, the generator

1. evaluates a ``runStatus`` condition statically for ``RunCompleted`` (the router gives that event an
   implicit status ``Completed``, but the real event has no ``data.runStatus``): a condition that holds is
   dropped for RunCompleted, one that fails removes RunCompleted from the route;
2. groups the route's event types by identical filters (advanced filters apply to every included type);
3. turns each ``notBeginsWith``/``notEndsWith``/``notContains`` on a field the event may lack into two
   mutually exclusive alternatives, one subscription each: ``IsNullOrUndefined``, or ``IsNotNull`` plus the
   ``StringNot*`` filter (a field every valid event of the group carries needs no split).

**What is pushed down** (routes file ``pushDownFilters``): whether Event Grid matches advanced-filter
*keys* case-sensitively is not documented, and AML's own sample events send ``data.ModelName`` where the
schema says ``modelName``. A filter on a ``data.*`` key could therefore drop an event silently, before
any amlrelay code sees it. So by default (``safe``) only what cannot depend on key casing goes to Event
Grid: the event types and filters on the envelope's ``subject``; every other condition is applied by the
router alone, which reads keys case-insensitively. ``all`` pushes down every filter (fewer deliveries and
jobs, at that risk); ``none`` pushes down the event types only. In every mode the router stays the
authority: Event Grid may deliver more than a route takes, never less (tests/infra/test_subscriptions.py).

**The journal** (``document()["journal"]``): the same filters once more, for the subscriptions that copy
every routed event into the Storage queue the sweeper drains (``amlrelay sweep``), so an event whose
webhook job died is still found (see :mod:`amlrelay.journal`).

**Merged across routes.** Subscriptions of different routes with identical ``advancedFilters`` become one
subscription whose ``includedEventTypes`` is the union of theirs (``routes`` lists them; the Event Grid
label is ``route:<a>,<b>``). Every route's selection stays exactly what it was (the same filters per
type), and since the handler and the sweeper evaluate *every* route for each event they receive, an event
taken by several routes is still delivered once per handler and journaled once: without merging, under
``safe`` push-down (event types only) every RunStatusChanged of every AML job (Queued, Running ...) was
delivered once per route listing that type — one Automation job and one queue message each.

Usage: ``python -m amlrelay.subscriptions routes.json > infra/generated/subscriptions.json``
(``--check FILE`` exits 1 when FILE is stale, for CI).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import RoutesError
from .models import (
    AML_PREFIX,
    DATASET_DRIFT_DETECTED,
    MODEL_DEPLOYED,
    MODEL_REGISTERED,
    RUN_COMPLETED,
    RUN_STATUS_CHANGED,
)
from .router import condition_holds
from .routes import NEGATED, STRING_OPERATORS, Filter, Route, Routes, load_routes

HANDLERS = ("runbook", "logicapp")
JOURNAL = "journal"  # the Storage-queue subscriptions: same filters, no batching (one event per message)
JOURNAL_SUFFIX = "-jr"
SAFE_KEYS = frozenset({"subject"})  # envelope keys: their spelling is fixed by the schema, not by AML
EXISTS_OPERATOR = "IsNotNull"
MISSING_OPERATOR = "IsNullOrUndefined"
MAX_ADVANCED_FILTERS = 25  # per subscription (event-filtering.md, "Limitations")
MAX_FILTER_VALUES = 25  # across all advanced filters of a subscription (same section)
MAX_ALTERNATIVES = 8  # subscriptions one route group may expand to (3 split conditions)
NAME_MAX = 64  # event subscription names: 3-64 characters, letters, digits and hyphens
NAME_MIN = 3
# Runbook webhook: one event per POST, so one job per event and far below the 512 KB webhook payload limit.
RUNBOOK_DELIVERY = {"maxEventsPerBatch": 1, "preferredBatchSizeInKilobytes": 64}

# Fields every *valid* event of a type carries with a non-null value (the router rejects an event without
# them), so a negated filter on them needs no "missing" alternative. runType is nullable: not listed.
_ALWAYS_PRESENT: dict[str, frozenset[str]] = {
    RUN_COMPLETED: frozenset({"subject", "experimentid", "experimentname", "runid"}),
    RUN_STATUS_CHANGED: frozenset({"subject", "experimentid", "experimentname", "runid", "runstatus"}),
    MODEL_REGISTERED: frozenset({"subject", "modelname", "modelversion"}),
    MODEL_DEPLOYED: frozenset({"subject", "servicename", "servicecomputetype", "modelids"}),
    DATASET_DRIFT_DETECTED: frozenset({"subject", "datadriftid"}),
}
# AML sends these as JSON numbers (ModelVersion 20 in Microsoft's sample; driftCoefficient is a double).
# Event Grid ignores key values whose type differs from the filter's, so a string operator on them cannot
# be expressed exactly; ``exists`` (IsNotNull) can.
_NUMERIC_FIELDS = frozenset({"modelversion", "driftcoefficient"})
_SHORT = {
    RUN_COMPLETED: "rc",
    RUN_STATUS_CHANGED: "rsc",
    MODEL_REGISTERED: "mr",
    MODEL_DEPLOYED: "md",
    DATASET_DRIFT_DETECTED: "dd",
}


def filter_key(field: str) -> str:
    """The Event Grid advanced-filter key of a route field: ``subject`` or ``data.<field>``."""
    return "subject" if field.lower() == "subject" else f"data.{field}"


def _advanced_filter(condition: Filter) -> dict[str, Any]:
    key = filter_key(condition.field)
    if condition.operator == "exists":
        return {"operatorType": EXISTS_OPERATOR, "key": key}
    return {"operatorType": STRING_OPERATORS[condition.operator], "key": key, "values": list(condition.values)}


def _filters_for(route: Route, event_type: str) -> tuple[Filter, ...] | None:
    """The route's conditions as Event Grid must see them for one event type; None: never matches."""
    kept: list[Filter] = []
    for condition in route.filters:
        if event_type == RUN_COMPLETED and condition.field.lower() == "runstatus":
            if not condition_holds(condition, {"runStatus": "Completed"}, {"runstatus": "runStatus"}):
                return None
            continue
        kept.append(condition)
    return tuple(kept)


def _pushed_down(filters: tuple[Filter, ...], mode: str) -> tuple[Filter, ...]:
    """The conditions Event Grid gets in push-down ``mode``; the router applies all of them anyway."""
    if mode == "all":
        return filters
    if mode == "none":
        return ()
    return tuple(f for f in filters if f.field.lower() in SAFE_KEYS)


def _needs_split(condition: Filter, event_types: Sequence[str]) -> bool:
    if condition.operator not in NEGATED or condition.operator == "notIn":
        return False  # StringNotIn matches a missing key, like the router
    field = condition.field.lower()
    return not all(field in _ALWAYS_PRESENT[t] for t in event_types)


def _alternatives(filters: tuple[Filter, ...], event_types: Sequence[str]) -> list[list[dict[str, Any]]]:
    options: list[list[list[dict[str, Any]]]] = []
    for condition in filters:
        if condition.field.lower() in _NUMERIC_FIELDS and condition.operator != "exists":
            raise RoutesError(
                f"{condition.field} {condition.operator}: AML sends {condition.field} as a number, and Event "
                "Grid string filters ignore numbers, so this condition cannot be expressed as a subscription.",
                hint="Filter on the subject instead (e.g. subject endsWith ':3'), or use 'exists'.",
            )
        option = _advanced_filter(condition)
        if _needs_split(condition, event_types):
            # Exclusive alternatives: the key is missing or null | it has a value that passes the filter.
            options.append([[{"operatorType": MISSING_OPERATOR, "key": option["key"]}],
                            [{"operatorType": EXISTS_OPERATOR, "key": option["key"]}, option]])
        else:
            options.append([[option]])
    combos = itertools.product(*options) if options else iter([()])
    return [[f for part in combo for f in part] for combo in combos]


def _name(route: str, group_suffix: str, alternative: int | None, kind: str = "") -> str:
    name = route + group_suffix + ("" if alternative is None else f"-a{alternative}") + kind
    if len(name) < NAME_MIN:
        name += "-eg"
    if len(name) > NAME_MAX:
        raise RoutesError(f"route {route!r}: subscription name {name!r} is longer than {NAME_MAX} characters.",
                          hint="Shorten the route name.")
    return name


def subscriptions_for(routes: Routes, *, handler: str) -> list[dict[str, Any]]:
    """Per route, the Event Grid subscription(s) whose filters select exactly the events the router gives
    that route. Each item: ``name``, ``route``, ``filter`` (``includedEventTypes``, ``advancedFilters``) and,
    for the runbook handler, batching (one event per delivery)."""
    if handler not in (*HANDLERS, JOURNAL):
        raise ValueError(f"handler must be one of {', '.join((*HANDLERS, JOURNAL))}, not {handler!r}")
    mode = routes.push_down_filters
    out: list[dict[str, Any]] = []
    for route in routes.routes:
        groups: dict[tuple[Filter, ...], list[str]] = {}
        for event_type in route.events:
            filters = _filters_for(route, event_type)
            if filters is not None:
                groups.setdefault(_pushed_down(filters, mode), []).append(event_type)
        for filters, event_types in groups.items():
            suffix = "" if len(groups) == 1 else "-" + "-".join(_SHORT[t] for t in event_types)
            alternatives = _alternatives(filters, event_types)
            if len(alternatives) > MAX_ALTERNATIVES:
                raise RoutesError(
                    f"route {route.name!r}: {len(alternatives)} subscriptions needed for its negated filters on "
                    f"optional fields (at most {MAX_ALTERNATIVES}).",
                    hint="Use notIn, or fewer notBeginsWith/notEndsWith/notContains on tags.",
                )
            for index, advanced in enumerate(alternatives, start=1):
                values = sum(len(f.get("values", ())) or 1 for f in advanced)
                if len(advanced) > MAX_ADVANCED_FILTERS or values > MAX_FILTER_VALUES:
                    raise RoutesError(
                        f"route {route.name!r}: {len(advanced)} advanced filters with {values} values; Event Grid "
                        f"allows {MAX_ADVANCED_FILTERS} filters and {MAX_FILTER_VALUES} values per subscription.",
                        hint="Split the route.",
                    )
                subscription: dict[str, Any] = {
                    "name": _name(route.name, suffix, index if len(alternatives) > 1 else None,
                                  JOURNAL_SUFFIX if handler == JOURNAL else ""),
                    "route": route.name,
                    "routes": [route.name],
                    "filter": {
                        "includedEventTypes": [AML_PREFIX + t for t in event_types],
                        "advancedFilters": advanced,
                    },
                }
                if handler == "runbook":
                    subscription.update(RUNBOOK_DELIVERY)
                out.append(subscription)
    out = _merged(out, JOURNAL_SUFFIX if handler == JOURNAL else "")
    names = [s["name"].lower() for s in out]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RoutesError(f"subscription names collide: {', '.join(duplicates)}.", hint="Rename a route.")
    return out


def _merged(subscriptions: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """One subscription per distinct ``advancedFilters`` list: event types united, routes listed. A
    subscription of one route keeps its name; a merged one is named ``routes-<types>-<filters hash>``
    (stable while the filters are, unique per filter list)."""
    merged: dict[str, dict[str, Any]] = {}
    for sub in subscriptions:
        key = json.dumps(sub["filter"]["advancedFilters"], sort_keys=True)
        into = merged.get(key)
        if into is None:
            merged[key] = {**sub, "routes": list(sub["routes"]), "filter": {
                **sub["filter"], "includedEventTypes": list(sub["filter"]["includedEventTypes"])}}
            continue
        types = into["filter"]["includedEventTypes"]
        types += [t for t in sub["filter"]["includedEventTypes"] if t not in types]
        into["routes"] += [r for r in sub["routes"] if r not in into["routes"]]
        into["route"] = ",".join(into["routes"])
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:6]
        shorts = "-".join(_SHORT[t.removeprefix(AML_PREFIX)] for t in into["filter"]["includedEventTypes"])
        into["name"] = f"routes-{shorts}-{digest}{kind}"
    return list(merged.values())


def document(routes: Routes, source: str) -> dict[str, Any]:
    """The generated file: both handlers' subscriptions and the journal's, read by infra/main.bicep with
    loadJsonContent."""
    handlers = {handler: subscriptions_for(routes, handler=handler) for handler in HANDLERS}
    journal = subscriptions_for(routes, handler=JOURNAL)
    clash = sorted({s["name"].lower() for s in journal} & {s["name"].lower() for h in handlers.values() for s in h})
    if clash:  # one topic holds both: a route named like another's journal subscription
        raise RoutesError(f"subscription names collide with journal subscriptions: {', '.join(clash)}.",
                          hint=f"Rename the route; names ending in {JOURNAL_SUFFIX!r} are the journal's.")
    return {
        "$comment": f"Generated from {source} by 'python -m amlrelay.subscriptions'. Do not edit.",
        "pushDownFilters": routes.push_down_filters,
        "handlers": handlers,
        "journal": journal,
    }


def render(routes: Routes, source: str) -> str:
    return json.dumps(document(routes, source), indent=2) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m amlrelay.subscriptions",
        description="Generate the Event Grid event subscriptions (filters) for a routes file.",
    )
    parser.add_argument("routes", help="routes file (e.g. routes.json)")
    parser.add_argument("-o", "--output", help="write here instead of standard output")
    parser.add_argument("--check", metavar="FILE", help="exit 1 if FILE differs from what would be generated")
    parser.add_argument("--source-name", help="routes file name recorded in the output (default: as given)")
    args = parser.parse_args(argv)
    try:
        routes = load_routes(Path(args.routes))
        text = render(routes, args.source_name or Path(args.routes).name)
    except RoutesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        current = Path(args.check).read_text(encoding="utf-8") if Path(args.check).exists() else ""
        if current != text:
            print(f"{args.check} is stale: regenerate it with python -m amlrelay.subscriptions "
                  f"{args.routes} -o {args.check}", file=sys.stderr)
            return 1
        return 0
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
