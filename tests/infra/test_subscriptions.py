"""Routes file <-> generated Event Grid subscriptions: Event Grid must deliver to a route exactly the events
the runbook's router accepts for it.

``eventgrid_matches`` evaluates a subscription the way Event Grid documents it in
https://learn.microsoft.com/azure/event-grid/event-filtering (MicrosoftDocs/azure-docs
``articles/event-grid/event-filtering.md``, sections "Advanced filtering", "Operators", "OR and AND"):
advanced filters are AND-ed, the values of one filter OR-ed (``Not`` operators: the key matches none);
string comparisons are not case-sensitive; key values of another data type than the filter's are ignored;
a key missing from the event is "not matched" for every string operator except ``StringNotIn`` (matched);
``IsNullOrUndefined`` holds for a missing or null key, ``IsNotNull`` otherwise. Assumption, not stated in
the docs (so also in AZURE-FACTS.md): *key names* match case-insensitively (Microsoft's own AML samples send
``data.ModelName`` where the schema says ``modelName``).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from amlrelay.events import parse_event
from amlrelay.models import AmlEvent
from amlrelay.router import select
from amlrelay.routes import Routes, load_routes, parse_routes
from amlrelay.subscriptions import subscriptions_for

from .conftest import REPO

EXAMPLES = REPO / "tests" / "fixtures" / "eventgrid" / "examples" / "event-grid-schema"

_MISSING = object()


def _lookup(event: dict[str, Any], key: str, *, exact_keys: bool = False) -> Any:
    node: Any = event
    for part in key.split("."):
        if not isinstance(node, dict):
            return _MISSING
        by_lower = {str(k): k for k in node} if exact_keys else {str(k).lower(): k for k in node}
        wanted = part if exact_keys else part.lower()
        if wanted not in by_lower:
            return _MISSING
        node = node[by_lower[wanted]]
    return node


def _string_op(operator: str, value: str, wanted: str) -> bool:
    if operator in ("StringIn", "StringNotIn"):
        return value == wanted
    if operator in ("StringBeginsWith", "StringNotBeginsWith"):
        return value.startswith(wanted)
    if operator in ("StringEndsWith", "StringNotEndsWith"):
        return value.endswith(wanted)
    assert operator in ("StringContains", "StringNotContains"), operator
    return wanted in value


def advanced_filter_matches(event: dict[str, Any], spec: dict[str, Any], *, exact_keys: bool = False) -> bool:
    operator, value = spec["operatorType"], _lookup(event, spec["key"], exact_keys=exact_keys)
    if operator == "IsNullOrUndefined":
        return bool(value is _MISSING or value is None)
    if operator == "IsNotNull":
        return bool(value is not _MISSING and value is not None)
    negated: bool = operator.startswith("StringNot")
    if value is _MISSING:
        return bool(operator == "StringNotIn")
    if not isinstance(value, str):  # other data types are ignored by string operators
        return negated
    hit = any(_string_op(operator, value.lower(), w.lower()) for w in spec["values"])
    return not hit if negated else hit


def eventgrid_matches(event: dict[str, Any], subscription: dict[str, Any], *, exact_keys: bool = False) -> bool:
    """``exact_keys``: the other reading of the undocumented key matching, case-sensitive."""
    included = [t.lower() for t in subscription["filter"]["includedEventTypes"]]
    if event["eventType"].lower() not in included:
        return False
    return all(advanced_filter_matches(event, f, exact_keys=exact_keys)
               for f in subscription["filter"]["advancedFilters"])


def _router_routes(routes: Routes, event: dict[str, Any]) -> set[str]:
    parsed = parse_event(event)
    assert isinstance(parsed, AmlEvent), parsed
    matched, _ = select(routes, parsed)
    return {r.name for r in matched}


def assert_agreement(routes: Routes, events: list[dict[str, Any]], *, exact_keys: bool = False) -> None:
    """pushDownFilters all: Event Grid delivers to a route exactly what the router takes; safe and none: at
    least that (the router drops the rest), never less. The journal subscriptions select the same events."""
    for handler in ("runbook", "logicapp", "journal"):
        subscriptions = subscriptions_for(routes, handler=handler)
        for event in events:
            hits = [s for s in subscriptions if eventgrid_matches(event, s, exact_keys=exact_keys)]
            by_route = [r for s in hits for r in _receivers(routes, s, event)]
            wanted = _router_routes(routes, event)
            if routes.push_down_filters == "all":
                assert set(by_route) == wanted, (json.dumps(event)[:600], hits)
            else:
                assert set(by_route) >= wanted, (json.dumps(event)[:600], hits)
            assert len(by_route) == len(set(by_route)), f"a route would get the event twice: {by_route}"


def _receivers(routes: Routes, subscription: dict[str, Any], event: dict[str, Any]) -> list[str]:
    """The routes a delivery through ``subscription`` is *for*: those it lists whose events include the
    event's type (a merged subscription unites the types of routes with identical filters)."""
    short = event["eventType"].rsplit(".", 1)[1].lower()
    listed = subscription["routes"]
    assert subscription["route"] == ",".join(listed)  # the Event Grid label names every route
    return [r.name for r in routes.routes if r.name in listed and short in {t.lower() for t in r.events}]


def _with_push_down(document: dict[str, Any], mode: str) -> Routes:
    return parse_routes(json.dumps({**document, "pushDownFilters": mode}))


def _samples() -> list[dict[str, Any]]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(EXAMPLES.glob("*.json"))]


def _variants() -> list[dict[str, Any]]:
    """Synthetic events: statuses and tags present, absent, in other cases; camelCase and PascalCase."""
    base = {e["eventType"].rsplit(".", 1)[1]: e for e in _samples()}
    out: list[dict[str, Any]] = []
    run_tags = [{}, {"stage": "prod"}, {"STAGE": "Test-2"}, {"amlrelay-started-by": "ado"},
                {"AmlRelay-Started-By": "ADO", "stage": "x"}, {"amlrelay-started-by": "someone"}]
    for tags in run_tags:
        for status in ("Completed", "completed", "Failed", "FAILED", "Canceled", "Running"):
            event = copy.deepcopy(base["RunStatusChanged"])
            event["data"].update({"runStatus": status, "runTags": tags})
            out.append(event)
        for run_type in (None, "azureml.PipelineRun", "AutoML"):
            event = copy.deepcopy(base["RunCompleted"])
            event["data"].update({"runTags": tags, "runType": run_type})
            event["data"].pop("runStatus", None)
            out.append(event)
        event = copy.deepcopy(base["RunCompleted"])
        event["data"]["experimentName"] = "TMP-scratch"
        event["data"]["runTags"] = tags
        out.append(event)
    for name in ("sklearn_regression_model", "SKLearn-x", "xgboost"):
        for tags in ({}, {"area": "Diabetes", "type": "regression"}, {"area": "cancer", "type": "classification"}):
            event = copy.deepcopy(base["ModelRegistered"])
            event["data"] = {"ModelName": name, "ModelVersion": 3, "ModelTags": tags, "ModelProperties": {}}
            out.append(event)
            camel = copy.deepcopy(event)
            camel["data"] = {"modelName": name, "modelVersion": "20", "modelTags": tags}
            camel["subject"] = f"models/{name}:20"
            out.append(camel)
    for compute in ("AKS", "aci", "Managed"):
        event = copy.deepcopy(base["ModelDeployed"])
        data = event["data"]
        data[next(k for k in data if k.lower() == "servicecomputetype")] = compute
        out.append(event)
    for drift_name in ("myDriftMonitor", "other"):
        event = copy.deepcopy(base["DatasetDriftDetected"])
        event["data"]["DataDriftName"] = drift_name
        out.append(event)
    event = copy.deepcopy(base["DatasetDriftDetected"])
    del event["data"]["DataDriftName"]
    out.append(event)
    return out


SYNTHETIC_ROUTES: dict[str, Any] = {
    "version": 1,
    "defaults": {"project": "mlops"},
    "routes": [
        {"name": "rc-completed", "events": ["RunCompleted"], "filters": {"runStatus": {"in": ["completed"]}},
         "pipeline": {"id": 1}},
        {"name": "failed-only", "events": ["RunCompleted", "RunStatusChanged"],
         "filters": {"runStatus": {"in": ["Failed"]}}, "pipeline": {"id": 2}},
        {"name": "not-running", "events": ["RunCompleted", "RunStatusChanged"],
         "filters": {"runStatus": {"notIn": ["Running"]}, "runTags.stage": {"notContains": ["test"]}},
         "pipeline": {"id": 3}},
        {"name": "stage-exists", "events": ["RunCompleted", "RunStatusChanged"],
         "filters": {"runTags.stage": {"exists": True}}, "pipeline": {"id": 4}},
        {"name": "sk", "events": ["ModelRegistered"], "filters": {"modelName": {"beginsWith": ["SKLEARN"]}},
         "pipeline": {"id": 5}},
        {"name": "v20", "events": ["ModelRegistered", "ModelDeployed"],
         "filters": {"subject": {"endsWith": [":20"], "notBeginsWith": ["endpoints/tmp"]}}, "pipeline": {"id": 6}},
        {"name": "aks", "events": ["ModelDeployed"], "filters": {"serviceComputeType": {"contains": ["ks"]}},
         "pipeline": {"id": 7}},
        {"name": "not-tmp", "events": ["RunCompleted", "RunStatusChanged"],
         "filters": {"experimentName": {"notBeginsWith": ["tmp"]}, "runType": {"notEndsWith": ["automl"]}},
         "pipeline": {"id": 8}},
        {"name": "area", "events": ["ModelRegistered"],
         "filters": {"modelTags.area": {"in": ["diabetes", "CANCER"]}, "modelTags.type": {"notIn": ["classification"]}},
         "pipeline": {"id": 9}},
        {"name": "drift", "events": ["DatasetDriftDetected"],
         "filters": {"dataDriftName": {"notContains": ["monitor"]}}, "pipeline": {"id": 10}},
        {"name": "ended", "events": ["RunStatusChanged", "RunCompleted"],
         "filters": {"runStatus": {"endsWith": ["ed"], "notEndsWith": ["failed"]}}, "pipeline": {"id": 11}},
    ],
}


def test_fixture_samples_are_present() -> None:
    assert len(_samples()) == 5


def test_project_routes_agree_with_router_on_samples_and_variants() -> None:
    routes = load_routes(REPO / "routes.json")
    assert_agreement(routes, _samples() + _variants())


@pytest.mark.parametrize("mode", ["safe", "all", "none"])
def test_synthetic_routes_agree_with_router_for_every_operator(mode: str) -> None:
    routes = _with_push_down(SYNTHETIC_ROUTES, mode)
    events = _samples() + _variants()
    assert_agreement(routes, events)
    # the suite exercises every route both ways
    taken: set[str] = set()
    for event in events:
        taken |= _router_routes(routes, event)
    assert taken == {r["name"] for r in SYNTHETIC_ROUTES["routes"]}


def test_safe_push_down_drops_nothing_even_if_event_grid_keys_were_case_sensitive() -> None:
    """The reason for the default: with case-sensitive key matching, pushing every filter down would lose
    Microsoft's own PascalCase samples before amlrelay sees them; 'safe' and 'none' lose nothing."""
    events = _samples() + _variants()
    for mode in ("safe", "none"):
        assert_agreement(_with_push_down(SYNTHETIC_ROUTES, mode), events, exact_keys=True)
    with pytest.raises(AssertionError):
        assert_agreement(_with_push_down(SYNTHETIC_ROUTES, "all"), events, exact_keys=True)


def test_push_down_modes_differ_as_documented() -> None:
    def keys(mode: str) -> set[str]:
        subs = subscriptions_for(_with_push_down(SYNTHETIC_ROUTES, mode), handler="runbook")
        return {f["key"] for s in subs for f in s["filter"]["advancedFilters"]}

    assert keys("none") == set()
    assert keys("safe") == {"subject"}
    assert {"data.runStatus", "data.modelName", "subject"} <= keys("all")
    assert load_routes(REPO / "routes.json").push_down_filters == "safe"  # the default
    from amlrelay.errors import RoutesError

    with pytest.raises(RoutesError, match="pushDownFilters: must be one of safe, all, none"):
        _with_push_down(SYNTHETIC_ROUTES, "some")


def test_journal_subscriptions_mirror_the_handler_ones() -> None:
    routes = load_routes(REPO / "routes.json")
    handler = subscriptions_for(routes, handler="logicapp")
    journal = subscriptions_for(routes, handler="journal")
    assert [s["name"] + "-jr" for s in handler] == [s["name"] for s in journal]
    assert [s["filter"] for s in handler] == [s["filter"] for s in journal]
    assert all("maxEventsPerBatch" not in s for s in journal)


@pytest.mark.parametrize("handler", ["runbook", "logicapp", "journal"])
def test_routes_with_identical_filters_share_one_subscription(handler: str) -> None:
    """Review MUST 7: under the default ``safe`` push-down every shipped route filters on event types only,
    so each AML event was delivered (one Automation job, one journal message) once per route listing its
    type. Merged, every sample and variant event reaches each handler and the journal once."""
    routes = load_routes(REPO / "routes.json")
    subscriptions = subscriptions_for(routes, handler=handler)
    for event in _samples() + _variants():
        hits = [s["name"] for s in subscriptions if eventgrid_matches(event, s)]
        assert len(hits) == 1, (event["eventType"], hits)
    [merged] = subscriptions
    assert merged["routes"] == [r.name for r in routes.routes]
    # Filters that differ are not merged, and a route alone keeps its name.
    synthetic = subscriptions_for(_with_push_down(SYNTHETIC_ROUTES, "all"), handler=handler)
    assert len({json.dumps(s["filter"]["advancedFilters"], sort_keys=True) for s in synthetic}) == len(synthetic)
    alone = [s for s in synthetic if len(s["routes"]) == 1]
    assert alone
    assert all(s["name"].startswith(s["route"]) for s in alone)


def test_a_route_named_like_a_journal_subscription_is_refused() -> None:
    from amlrelay.errors import RoutesError
    from amlrelay.subscriptions import document

    routes = {"version": 1, "defaults": {"project": "p"}, "routes": [
        {"name": "x", "events": ["ModelRegistered"], "pipeline": {"id": 1}},
        {"name": "x-jr", "events": ["ModelRegistered"], "filters": {"subject": {"endsWith": [":1"]}},
         "pipeline": {"id": 2}}]}  # filters differ: not merged
    with pytest.raises(RoutesError, match="collide with journal subscriptions: x-jr"):
        document(parse_routes(json.dumps(routes)), "r.json")


def test_run_completed_never_gets_a_run_status_filter() -> None:
    routes = _with_push_down(SYNTHETIC_ROUTES, "all")
    for sub in subscriptions_for(routes, handler="runbook"):
        if any(t.endswith(".RunCompleted") for t in sub["filter"]["includedEventTypes"]):
            assert all(f["key"].lower() != "data.runstatus" for f in sub["filter"]["advancedFilters"]), sub
    names = {r for s in subscriptions_for(routes, handler="runbook") for r in s["routes"]
             if any(t.endswith(".RunCompleted") for t in s["filter"]["includedEventTypes"])}
    assert "failed-only" not in names
    assert {"rc-completed", "not-running", "ended"} <= names


def test_handler_sets_batching_and_names_are_valid() -> None:
    routes = load_routes(REPO / "routes.json")
    runbook = subscriptions_for(routes, handler="runbook")
    assert all(s["maxEventsPerBatch"] == 1 for s in runbook)
    assert all("maxEventsPerBatch" not in s for s in subscriptions_for(routes, handler="logicapp"))
    with pytest.raises(ValueError, match="handler"):
        subscriptions_for(routes, handler="function")


def test_numeric_fields_are_refused_for_string_operators() -> None:
    document = {"version": 1, "defaults": {"project": "p"}, "routes": [
        {"name": "v", "events": ["ModelRegistered"], "filters": {"modelVersion": {"in": ["3"]}},
         "pipeline": {"id": 1}}]}
    from amlrelay.errors import RoutesError

    with pytest.raises(RoutesError, match="number"):
        subscriptions_for(_with_push_down(document, "all"), handler="runbook")
    # Not pushed down (the default), the router alone applies it: nothing to refuse.
    [sub] = subscriptions_for(parse_routes(json.dumps(document)), handler="runbook")
    assert sub["filter"]["advancedFilters"] == []


def test_cli_writes_the_generated_file(tmp_path: Path) -> None:
    from amlrelay.subscriptions import main

    out = tmp_path / "subs.json"
    assert main([str(REPO / "routes.json"), "-o", str(out), "--source-name", "routes.json"]) == 0
    assert out.read_text() == (REPO / "infra" / "generated" / "subscriptions.json").read_text()
    assert main([str(REPO / "routes.json"), "--check", str(out)]) == 0
