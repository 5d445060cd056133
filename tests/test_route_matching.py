"""Route matching and request building, operator by operator, and the reason shown when a route does not match."""

from __future__ import annotations

import json
from typing import Any

import pytest

from amlrelay.events import parse_events
from amlrelay.models import AmlEvent
from amlrelay.router import API_VERSION, PipelineRunRequest, build_request, normalize_ref, select
from amlrelay.routes import parse_routes
from tests.conftest import sample


def drift(**data: Any) -> AmlEvent:
    raw = sample("cloud-events-schema", "dataset_drift_detected")
    raw["data"].update(data)
    [event] = parse_events([raw])
    assert isinstance(event, AmlEvent)
    return event


def route(filters: dict[str, Any] | None = None, events: tuple[str, ...] = ("DatasetDriftDetected",),
          **pipeline: Any) -> Any:
    return parse_routes(json.dumps({"version": 1, "routes": [{
        "name": "r", "events": list(events), "filters": filters or {},
        "pipeline": {"project": "p", "id": 1, **pipeline}}]}))


# dataDriftName is 'myDriftMonitor' in the sample
@pytest.mark.parametrize(("operator", "values", "matches"), [
    ("in", ["MYDRIFTMONITOR"], True), ("in", ["myDrift"], False), ("in", ["x", "mydriftmonitor"], True),
    ("notIn", ["mydriftmonitor"], False), ("notIn", ["x", "y"], True),
    ("beginsWith", ["MYDRIFT"], True), ("beginsWith", ["monitor"], False), ("beginsWith", ["x", "my"], True),
    ("notBeginsWith", ["my"], False), ("notBeginsWith", ["monitor"], True),
    ("endsWith", ["MONITOR"], True), ("endsWith", ["my"], False), ("endsWith", ["x", "tor"], True),
    ("notEndsWith", ["monitor"], False), ("notEndsWith", ["drift"], True),
    ("contains", ["DRIFT"], True), ("contains", ["model"], False), ("contains", ["x", "ftmo"], True),
    ("notContains", ["drift"], False), ("notContains", ["model", "run"], True),
    ("in", ["x", "y"], False), ("notIn", ["x", "MyDriftMonitor"], False),  # the reason names every value
])
def test_each_operator_ignores_case_and_any_value_may_match(operator: str, values: list[str], matches: bool) -> None:
    matched, reasons = select(route({"dataDriftName": {operator: values}}), drift())
    assert bool(matched) is matches
    if not matches:
        assert reasons == [f"r: dataDriftName 'myDriftMonitor' fails {operator} [{', '.join(values)}]"]


@pytest.mark.parametrize(("operator", "matches"), [("in", False), ("beginsWith", False), ("endsWith", False),
                                                   ("contains", False), ("exists", False), ("notIn", True),
                                                   ("notBeginsWith", True), ("notEndsWith", True),
                                                   ("notContains", True)])
def test_an_absent_field_fails_every_condition_but_the_negated_ones(operator: str, matches: bool) -> None:
    condition: Any = True if operator == "exists" else ["x"]
    matched, reasons = select(route({"targetDatasetId": {operator: condition}}), drift(targetDatasetId=None))
    assert bool(matched) is matches
    if not matches:
        values = "" if operator == "exists" else " [x]"
        assert reasons == [f"r: targetDatasetId absent fails {operator}{values}"]


def test_the_event_type_is_checked_first_and_named() -> None:
    matched, reasons = select(route({"modelName": {"in": ["nope"]}}, events=("ModelRegistered",)), drift())
    assert (matched, reasons) == ([], ["r: not for DatasetDriftDetected"])


def test_field_names_in_filters_ignore_case() -> None:
    matched, _ = select(route({"DATADRIFTNAME": {"in": ["mydriftmonitor"]}}), drift())
    assert matched


def test_the_request_body_has_only_what_the_route_sets() -> None:
    request = build_request(route().routes[0], drift())
    assert request == PipelineRunRequest("r", "p", 1, None, {}, {})
    full = build_request(route(branch=" {{ dataDriftName }} ", version=3, stagesToSkip=["a", "b"],
                               variables={"V": "{{ runId }}"},
                               templateParameters={"t": "{{ dataDriftId }}"}).routes[0], drift())
    assert full.pipeline_version == 3
    assert full.body == {
        "resources": {"repositories": {"self": {"refName": "refs/heads/myDriftMonitor"}}},
        "variables": {"V": {"value": "01d29aa4-e6a4-470a-9ef3-66660d21f8ef_1571590300380", "isSecret": False}},
        "templateParameters": {"t": "01d29aa4-e6a4-470a-9ef3-66660d21f8ef"},
        "stagesToSkip": ["a", "b"],
    }
    assert full.fingerprint == {"variables.V": "01d29aa4-e6a4-470a-9ef3-66660d21f8ef_1571590300380",
                                "templateParameters.t": "01d29aa4-e6a4-470a-9ef3-66660d21f8ef"}
    assert full.query() == {"api-version": API_VERSION, "pipelineVersion": "3"}
    assert API_VERSION == "7.1"


def test_values_templated_from_the_delivery_are_not_identity() -> None:
    """The event id, type, subject and time differ between two deliveries of one outcome: never a fingerprint."""
    r = route(variables={"ID": "{{ eventId }}", "T": "{{ eventTime }}", "S": "{{ subject }}",
                         "K": "{{ eventType }}", "C": "constant", "D": "{{ dataDriftId }}", "R": "{{ runId }}"})
    assert build_request(r.routes[0], drift()).fingerprint == {
        "variables.D": "01d29aa4-e6a4-470a-9ef3-66660d21f8ef",
        "variables.R": "01d29aa4-e6a4-470a-9ef3-66660d21f8ef_1571590300380"}
    mixed = route(variables={"X": "{{ dataDriftId }}-{{ eventId }}", "R": "{{ runId }}"})
    assert build_request(mixed.routes[0], drift()).fingerprint == {}  # identity incomplete: not reconcilable


def test_refs() -> None:
    assert normalize_ref("main") == "refs/heads/main"
    assert normalize_ref("release/1") == "refs/heads/release/1"
    assert normalize_ref("refs/tags/v1") == "refs/tags/v1"
    assert normalize_ref("refs-x") == "refs/heads/refs-x"


def test_redaction_touches_only_secret_values() -> None:
    request = PipelineRunRequest("r", "p", 1, None, {"variables": {
        "A": {"value": "plain", "isSecret": False}, "B": {"value": "hush", "isSecret": True}, "C": {"value": "c"}},
        "templateParameters": {"t": "x"}})
    assert request.redacted_body() == {"variables": {
        "A": {"value": "plain", "isSecret": False}, "B": {"value": "***", "isSecret": True}, "C": {"value": "c"}},
        "templateParameters": {"t": "x"}}
    assert request.body["variables"]["B"]["value"] == "hush"  # the body itself is untouched
    assert PipelineRunRequest("r", "p", 1, None, {}).redacted_body() == {}


def test_the_run_url_keeps_every_character_of_the_organization_url_but_trailing_slashes() -> None:
    """Only the slashes that end an organization URL are dropped: a name ending in letters (here ``X``) stays."""
    request = build_request(route().routes[0], drift())
    for org in ("https://dev.azure.com/contosoX", "https://dev.azure.com/contosoX/", "https://dev.azure.com/contosoX//"):
        assert request.url(org) == "https://dev.azure.com/contosoX/p/_apis/pipelines/1/runs"
