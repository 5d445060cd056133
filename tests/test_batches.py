"""Batches: every event of a delivery and every route that matches it is handled, in every WEBHOOKDATA form.

Event Grid batches events (up to its preferred batch size) and Automation hands the batch to the runbook in
one of several argv shapes; a relay that stops after the first event, or after the first matching route, or
that lets one bad event hide the others, loses outcomes silently. Dry runs in process: the routing and the
exact outcomes are what is checked, not ADO.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from amlrelay.runbook import main
from tests.conftest import ROUTES_FILE, SAMPLE_WORKSPACE, sample
from tests.test_webhook import argv_forms

EXPECTED_ROUTE = {
    "run_completed": "evaluate-trained-model",
    "run_status_changed": "triage-failed-run",
    "model_registered": "deploy-registered-model",
    "model_deployed": "smoke-test-endpoint",
    "dataset_drift_detected": "retrain-on-drift",
}
EXTRA_NAME = "notify-on-model"
EXTRA_ROUTE: dict[str, Any] = {"name": EXTRA_NAME, "events": ["ModelRegistered", "ModelDeployed"],
               "pipeline": {"project": "mlops", "id": 90, "variables": {"AML_EVENT": "{{ eventType }}"}}}


@pytest.fixture
def routes_with_a_second_match(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    document = json.loads(ROUTES_FILE.read_text(encoding="utf-8"))
    document["routes"].append(EXTRA_ROUTE)
    path = tmp_path / "routes.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    monkeypatch.setenv("AMLRELAY_ADO_ORGANIZATION", "contoso")
    monkeypatch.setenv("AMLRELAY_ROUTES", str(path))
    monkeypatch.setenv("AMLRELAY_ALLOWED_WORKSPACES", SAMPLE_WORKSPACE)
    monkeypatch.setenv("AMLRELAY_DRY_RUN", "true")
    monkeypatch.setenv("AMLRELAY_VERIFY", "false")
    return path


def run(argv: list[str]) -> tuple[int, list[dict[str, Any]]]:
    lines: list[str] = []
    code = main(["trigger_ado_pipeline.py", *argv], out=lines.append)
    return code, [json.loads(line) for line in lines if line.startswith("{")]


def batch(schema: str) -> list[dict[str, Any]]:
    return [sample(schema, name) for name in EXPECTED_ROUTE]


def expected(schema: str) -> list[tuple[str, str]]:
    out = []
    for name, route in EXPECTED_ROUTE.items():
        event_id = sample(schema, name)["id"]
        out.append((event_id, route))
        if name in ("model_registered", "model_deployed"):
            out.append((event_id, EXTRA_NAME))
    return out


@pytest.mark.usefixtures("routes_with_a_second_match")
@pytest.mark.parametrize("schema", ["event-grid-schema", "cloud-events-schema"])
@pytest.mark.parametrize("form", list(argv_forms([{}])))
def test_every_event_and_every_matching_route_in_every_form(schema: str, form: str) -> None:
    code, records = run(argv_forms(batch(schema))[form])
    assert code == 0
    assert [(r["event_id"], r["route"]) for r in records] == expected(schema)
    assert {r["outcome"] for r in records} == {"dry-run"}
    extra = [r for r in records if r["route"] == EXTRA_ROUTE["name"]]
    assert [r["request"]["body"]["variables"]["AML_EVENT"]["value"] for r in extra] == [
        "ModelRegistered", "ModelDeployed"]


@pytest.mark.usefixtures("routes_with_a_second_match")
@pytest.mark.parametrize("form", list(argv_forms([{}])))
def test_a_bad_event_in_the_middle_hides_nothing(form: str) -> None:
    events = batch("event-grid-schema")
    broken = json.loads(json.dumps(events[2]))
    broken["data"] = {k: v for k, v in broken["data"].items() if k.lower() != "modelversion"}
    foreign = json.loads(json.dumps(events[0]))
    foreign["topic"] = SAMPLE_WORKSPACE + "-evil"
    foreign["id"] = "foreign"
    code, records = run(argv_forms([events[0], broken, foreign, *events[3:]])[form])
    assert code == 2  # something was refused: the job says so
    assert [(r["event_id"], r["outcome"]) for r in records] == [
        (events[0]["id"], "dry-run"), (broken["id"], "rejected"), ("foreign", "rejected"),
        (events[3]["id"], "dry-run"), (events[3]["id"], "dry-run"), (events[4]["id"], "dry-run")]


@pytest.mark.usefixtures("routes_with_a_second_match")
def test_a_single_event_body_that_is_not_a_list_is_handled_too() -> None:
    code, records = run([json.dumps({"WebhookName": "w", "RequestBody": json.dumps(sample("cloud-events-schema",
                                                                                        "model_registered"))})])
    assert code == 0
    assert [r["route"] for r in records] == ["deploy-registered-model", EXTRA_ROUTE["name"]]
