"""Route: Event Grid filter semantics, templates and the exact ADO request body for each sample."""

from __future__ import annotations

import json
from typing import Any

import pytest

from amlrelay.errors import TemplateError
from amlrelay.events import parse_events
from amlrelay.models import AmlEvent
from amlrelay.router import build_request, select
from amlrelay.routes import load_routes, parse_routes
from tests.conftest import ROUTES_FILE, SCHEMAS, sample


def event(schema: str, name: str, **data: Any) -> AmlEvent:
    raw = sample(schema, name)
    raw["data"].update(data)
    parsed = parse_events([raw])[0]
    assert isinstance(parsed, AmlEvent)
    return parsed


def one_route(filters: dict[str, Any], events: list[str] | None = None) -> Any:
    document = {"version": 1, "routes": [{"name": "r", "events": events or ["RunCompleted", "RunStatusChanged"],
                                          "filters": filters, "pipeline": {"project": "p", "id": 1}}]}
    return parse_routes(json.dumps(document))


EXPECTED_ROUTE = {
    "run_completed": "evaluate-trained-model",
    "run_status_changed": "triage-failed-run",
    "model_registered": "deploy-registered-model",
    "model_deployed": "smoke-test-endpoint",
    "dataset_drift_detected": "retrain-on-drift",
}


@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize("name", list(EXPECTED_ROUTE))
def test_each_sample_takes_exactly_its_route(schema: str, name: str) -> None:
    matched, _ = select(load_routes(ROUTES_FILE), event(schema, name))
    assert [r.name for r in matched] == [EXPECTED_ROUTE[name]]


def test_request_body_for_registered_model_is_exactly_what_ado_needs() -> None:
    routes = load_routes(ROUTES_FILE)
    request = build_request(routes.by_name("deploy-registered-model"), event("event-grid-schema", "model_registered"))
    assert request.url("https://dev.azure.com/contoso") == "https://dev.azure.com/contoso/mlops/_apis/pipelines/20/runs"
    assert request.query() == {"api-version": "7.1"}
    assert request.body == {
        "resources": {"repositories": {"self": {"refName": "refs/heads/main"}}},
        "variables": {
            "AML_WORKSPACE": {"value": "{workspace-name}", "isSecret": False},
            "AML_EVENT_ID": {"value": "831e1650-001e-001b-66ab-eeb76e069631", "isSecret": False},
        },
        "templateParameters": {"modelName": "sklearn_regression_model", "modelVersion": "20", "area": "diabetes"},
        "stagesToSkip": ["Production"],
    }


def test_branch_comes_from_a_run_tag_with_a_fallback() -> None:
    route = load_routes(ROUTES_FILE).by_name("evaluate-trained-model")
    tagged = build_request(route, event("event-grid-schema", "run_completed", runTags={"branch": "release/2"}))
    plain = build_request(route, event("event-grid-schema", "run_completed"))
    empty = build_request(route, event("event-grid-schema", "run_completed", runTags={"branch": ""}))
    assert tagged.body["resources"]["repositories"]["self"]["refName"] == "refs/heads/release/2"
    assert plain.body["resources"]["repositories"]["self"]["refName"] == "refs/heads/main"
    assert empty.body["resources"]["repositories"]["self"]["refName"] == "refs/heads/main"  # never 'refs/heads/'


def test_loop_guard_refuses_runs_the_pipeline_started_itself() -> None:
    routes = load_routes(ROUTES_FILE)
    own = event("event-grid-schema", "run_completed", runTags={"amlrelay-started-by": "ADO"})
    matched, reasons = select(routes, own)
    assert matched == []
    assert any("amlrelay-started-by 'ADO' fails notIn [ado]" in r for r in reasons)


@pytest.mark.parametrize(
    ("filters", "data", "matches"),
    [
        ({"runStatus": {"in": ["completed"]}}, {}, True),  # case-insensitive; RunCompleted is Completed
        ({"experimentName": {"beginsWith": ["AUTOML"]}}, {}, True),
        ({"experimentName": {"endsWith": ["-regression"]}}, {}, True),
        ({"experimentName": {"contains": ["local"]}}, {}, True),
        ({"experimentName": {"notContains": ["local"]}}, {}, False),
        ({"experimentName": {"notBeginsWith": ["automl"]}}, {}, False),
        ({"experimentName": {"notEndsWith": ["x", "y"]}}, {}, True),
        ({"runTags.stage": {"in": ["candidate"]}}, {}, False),  # missing key fails positive operators
        ({"runTags.stage": {"notIn": ["candidate"]}}, {}, True),  # ... and passes negated ones
        ({"runTags.stage": {"exists": True}}, {}, False),
        ({"runTags.stage": {"exists": True}}, {"runTags": {"Stage": "x"}}, True),  # tag names ignore case too
        ({"runType": {"in": ["automl"]}}, {}, False),  # runType is null in the sample
        ({"runType": {"in": ["automl"]}}, {"runType": "AutoML"}, True),
        ({"experimentName": {"in": ["a", "automl-local-regression"]}, "runStatus": {"in": ["Failed"]}}, {}, False),
    ],
)
def test_filters_follow_event_grid_semantics(filters: dict[str, Any], data: dict[str, Any], matches: bool) -> None:
    matched, _ = select(one_route(filters), event("event-grid-schema", "run_completed", **data))
    assert bool(matched) is matches


def test_an_event_can_start_several_pipelines() -> None:
    document = {"version": 1, "routes": [
        {"name": f"r{i}", "events": ["ModelRegistered"], "pipeline": {"project": "p", "id": i}} for i in (1, 2)]}
    matched, _ = select(parse_routes(json.dumps(document)), event("cloud-events-schema", "model_registered"))
    assert [r.pipeline.pipeline_id for r in matched] == [1, 2]


def test_a_missing_templated_tag_without_fallback_is_an_error_not_an_empty_string() -> None:
    document = {"version": 1, "routes": [{"name": "r", "events": ["ModelRegistered"], "pipeline": {
        "project": "p", "id": 1, "variables": {"STAGE": "{{ modelTags.stage }}"}}}]}
    route = parse_routes(json.dumps(document)).routes[0]
    with pytest.raises(TemplateError, match=r"no modelTags\.stage"):
        build_request(route, event("event-grid-schema", "model_registered"))


def test_secret_variables_are_masked_in_the_preview() -> None:
    document = {"version": 1, "routes": [{"name": "r", "events": ["ModelRegistered"], "pipeline": {
        "project": "p", "id": 1, "variables": {"S": {"value": "{{ modelName }}", "isSecret": True}}}}]}
    route = parse_routes(json.dumps(document)).routes[0]
    request = build_request(route, event("event-grid-schema", "model_registered"))
    assert request.body["variables"]["S"] == {"value": "sklearn_regression_model", "isSecret": True}
    assert request.redacted_body()["variables"]["S"]["value"] == "***"


def test_project_names_are_escaped_in_the_url() -> None:
    document = {"version": 1, "routes": [{"name": "r", "events": ["ModelRegistered"],
                                          "pipeline": {"project": "ML Ops/x", "id": 1, "version": 4}}]}
    route = parse_routes(json.dumps(document)).routes[0]
    request = build_request(route, event("event-grid-schema", "model_registered"))
    assert request.url("https://ado.contoso.local/tfs/DefaultCollection/") == (
        "https://ado.contoso.local/tfs/DefaultCollection/ML%20Ops%2Fx/_apis/pipelines/1/runs")
    assert request.query() == {"api-version": "7.1", "pipelineVersion": "4"}


def test_secret_variables_do_not_count_as_the_outcomes_identity(capsys: pytest.CaptureFixture[str],
                                                                tmp_path: Any) -> None:
    """ADO never returns a secret variable's value when a run is read, so identity carried only there cannot
    find a run: such a route is not reconcilable, its fingerprint leaves the secret out, check-routes says so."""
    from amlrelay.cli import main
    from amlrelay.router import reconcilable

    document = {"version": 1, "routes": [
        {"name": "hidden", "events": ["ModelRegistered"], "pipeline": {"project": "p", "id": 1, "variables": {
            "N": {"value": "{{ modelName }}", "isSecret": True}, "V": "{{ modelVersion }}"}}},
        {"name": "plain", "events": ["ModelRegistered"], "pipeline": {"project": "p", "id": 2, "variables": {
            "S": {"value": "{{ modelName }}", "isSecret": True}, "N": {"value": "{{ modelName }}", "isSecret": False},
            "V": "{{ modelVersion }}"}}}]}
    routes = parse_routes(json.dumps(document))
    registered = event("event-grid-schema", "model_registered")
    assert not reconcilable(routes.by_name("hidden"), "ModelRegistered")
    assert build_request(routes.by_name("hidden"), registered).fingerprint == {}
    assert reconcilable(routes.by_name("plain"), "ModelRegistered")
    assert build_request(routes.by_name("plain"), registered).fingerprint == {
        "variables.N": "sklearn_regression_model", "variables.V": "20"}
    path = tmp_path / "routes.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    assert main(["check-routes", str(path)]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert lines["hidden"].rstrip().endswith("no: ModelRegistered")
    assert lines["plain"].rstrip().endswith("yes")
