"""The routes file: the shipped example and schema agree; a bad file names file, route and field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from amlrelay.errors import RoutesError
from amlrelay.routes import load_routes, parse_routes
from tests.conftest import ROOT, ROUTES_FILE

SCHEMA = json.loads((ROOT / "src/amlrelay/schemas/routes.schema.json").read_text())


def doc(**route: Any) -> dict[str, Any]:
    base = {"name": "r1", "events": ["RunCompleted"], "pipeline": {"project": "mlops", "id": 1}}
    return {"version": 1, "routes": [{**base, **route}]}


def problems(document: Any) -> str:
    with pytest.raises(RoutesError) as info:
        parse_routes(json.dumps(document), source="routes.json")
    return str(info.value)


def test_shipped_routes_file_loads_and_validates_against_its_schema() -> None:
    routes = load_routes(ROUTES_FILE)
    assert [r.name for r in routes.routes][:2] == ["evaluate-trained-model", "triage-failed-run"]
    jsonschema.validate(json.loads(ROUTES_FILE.read_text()), SCHEMA)


def test_inline_json_is_accepted_for_automation_variables() -> None:
    routes = load_routes(ROUTES_FILE.read_text())
    assert routes.source == "<inline routes>"


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (doc(events=["RunFinished"]), "route 'r1'.events: unknown event type 'RunFinished'"),
        (doc(filters={"modelName": {"in": ["x"]}}), "field 'modelName' is not carried by RunCompleted"),
        (doc(filters={"runTags.stage": {"equals": ["x"]}}), "unknown operator"),
        (doc(filters={"runTags.stage": {"in": []}}), "non-empty array of strings"),
        (doc(filters={"runTags.stage": {"exists": False}}), "must be true"),
        (doc(filters={"eventType": {"in": ["x"]}}), "envelope fields cannot be filtered"),
        (doc(pipeline={"project": "p", "id": "12"}), "pipeline.id: must be the pipeline's positive integer id"),
        (doc(pipeline={"id": 3}), "pipeline.project: is required"),
        (doc(pipeline={"project": "p", "id": 3, "variables": {"X": "{{ modelName }}"}}),
         "pipeline.variables.X: field 'modelName' is not carried by RunCompleted"),
        (doc(pipeline={"project": "p", "id": 3, "templateParameters": {"x": "{{ run Id }}"}}), "is not a field name"),
        (doc(pipeline={"project": "p", "id": 3, "branch": "{{ runId"}), "unbalanced"),
        (doc(pipeline={"project": "p", "id": 3, "bogus": 1}), "unknown key 'bogus'"),
        (doc(name="has space"), "name must be"),
        ({"version": 2, "routes": []}, "version: must be 1"),
        ({"version": 1, "routes": [doc()["routes"][0], doc()["routes"][0]]}, "duplicate route name"),
    ],
)
def test_bad_routes_are_reported_with_route_and_field(document: Any, expected: str) -> None:
    message = problems(document)
    assert message.startswith("routes.json:")
    assert expected in message


def test_every_problem_is_reported_at_once() -> None:
    message = problems(doc(events=["Nope"], filters={"x": 1}, pipeline={"id": -1}))
    assert message.count("\n  - ") >= 3


def test_the_schema_rejects_what_the_loader_rejects() -> None:
    for bad in (doc(events=["RunFinished"]), doc(filters={"runTags.stage": {"equals": ["x"]}}),
                doc(pipeline={"project": "p", "id": "12"}), doc(pipeline={"project": "p", "id": 3, "bogus": 1})):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, SCHEMA)
        with pytest.raises(RoutesError):
            parse_routes(json.dumps(bad))


def test_unreadable_and_invalid_json_files(tmp_path: Path) -> None:
    with pytest.raises(RoutesError, match="Cannot read routes file"):
        load_routes(tmp_path / "missing.json")
    bad = tmp_path / "routes.json"
    bad.write_text("{ not json")
    with pytest.raises(RoutesError, match="not valid JSON"):
        load_routes(bad)
