"""A platform team's routes file: 30 routes (every event type, filters, fallbacks, branches, stages to skip)
build into a workflow whose every expression fits WDL's 8,192 characters, and the workflow starts the same
ADO runs with the same bodies as the runbook for events several of those routes take; a route that could
not fit on its own is refused by name, size, limit and what to do."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from amlrelay.cli import main
from amlrelay.errors import RoutesError
from amlrelay.logicapp import check_expressions, generate
from amlrelay.logicapp._wdl import MAX_EXPRESSION, expressions_in
from amlrelay.routes import load_routes
from tests.conftest import ROUTES_FILE, all_samples, sample
from tests.logicapp_stack import Pair, pair
from tests.test_logicapp_equivalence import same

ROUTES = 30


def route(i: int) -> dict[str, Any]:
    """Route ``i``: the event type cycles through all five; every other route's filter misses the samples."""
    hit = i % 2 == 0
    kind = i % 5
    name = f"route-{i:02d}-{['train', 'status', 'register', 'deploy', 'drift'][kind]}"
    if kind == 0:
        return {"name": name, "events": ["RunCompleted"],
                "filters": {"experimentName": {"beginsWith": ["automl" if hit else f"other-{i}"]},
                            "runTags.amlrelay-started-by": {"notIn": ["ado"]}},
                "pipeline": {"id": 100 + i, "branch": "{{ runTags.branch | main }}",
                             "variables": {"AML_RUN_ID": "{{ runId }}",
                                           "LABEL": f"route {i}: {{{{ experimentName }}}}"},
                             "templateParameters": {"stage": "{{ runTags.stage | none }}", "run": "{{ runId }}"}}}
    if kind == 1:
        return {"name": name, "events": ["RunStatusChanged"],
                "filters": {"runStatus": {"in": ["Failed", "Canceled"] if hit else ["Completed"]}},
                "pipeline": {"id": 100 + i, "variables": {"AML_RUN_ID": "{{ runId }}",
                                                          "AML_RUN_STATUS": "{{ runStatus }}"}}}
    if kind == 2:
        return {"name": name, "events": ["ModelRegistered"],
                "filters": {"modelName": {"beginsWith" if hit else "contains": ["sklearn" if hit else "xgboost"]}},
                "pipeline": {"id": 100 + i, "branch": f"release/{i}",
                             "templateParameters": {"modelName": "{{ modelName }}",
                                                    "modelVersion": "{{ modelVersion }}",
                                                    "area": "{{ modelTags.area | general }}"},
                             "stagesToSkip": ["Production", f"Canary-{i}"]}}
    if kind == 3:
        return {"name": name, "events": ["ModelDeployed"],
                "filters": {"serviceName": {"endsWith": ["-service" if hit else "-nothing"]}},
                "pipeline": {"id": 100 + i, "variables": {"AML_SERVICE": "{{ serviceName }}",
                                                          "AML_MODEL_IDS": {"value": "{{ modelIds }}",
                                                                            "isSecret": True}}}}
    return {"name": name, "events": ["DatasetDriftDetected"],
            "filters": {} if hit else {"dataDriftName": {"in": ["another-monitor"]}},
            "pipeline": {"id": 100 + i, "variables": {"AML_DRIFT_ID": "{{ dataDriftId }}",
                                                      "AML_DRIFT_COEFFICIENT": "{{ driftCoefficient | unknown }}"}}}


def routes_file(path: Path, routes: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps({"version": 1, "defaults": {
        "project": "mlops", "branch": "main",
        "variables": {"AML_WORKSPACE": "{{ workspaceName }}", "AML_EVENT_ID": "{{ eventId }}"}},
        "routes": routes}), encoding="utf-8")
    return path


@pytest.fixture
def thirty(tmp_path: Path) -> Path:
    return routes_file(tmp_path / "routes.json", [route(i) for i in range(ROUTES)])


def largest_expression(definition: dict[str, Any]) -> int:
    """The longest expression anywhere in the definition (a whole interpolated string counted as one)."""
    return max(len(e) for e in expressions_in(definition))


@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize("auth", ["managed-identity", "pat"])
def test_thirty_routes_build_and_every_expression_fits(thirty: Path, tmp_path: Path, auth: str, verify: bool,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "workflow.json"
    args = ["logicapp", "build", "--routes", str(thirty), "--output", str(output), "--auth", auth,
            "--verify", str(verify).lower()]
    assert main(args) == 0, capsys.readouterr().err
    definition = json.loads(output.read_text(encoding="utf-8"))
    assert check_expressions(definition) > 100
    assert largest_expression(definition) <= MAX_EXPRESSION
    assert main([*args, "--check"]) == 0


def test_the_workflow_does_not_grow_into_one_expression_of_every_route(tmp_path: Path) -> None:
    """The largest expression is the same for 6 routes and for 30 (it is the event's validity, which does
    not depend on the routes at all)."""
    six = generate(load_routes(routes_file(tmp_path / "six.json", [route(i) for i in range(6)])), verify=True)
    thirty = generate(load_routes(routes_file(tmp_path / "thirty.json", [route(i) for i in range(ROUTES)])),
                      verify=True)
    assert largest_expression(six) == largest_expression(thirty)


@pytest.mark.parametrize("verify", ["true", "false"])
def test_routes_json_plus_one_more_route_builds(tmp_path: Path, verify: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """The report that started this: routes.json and a copy of its first route (``extra-0``)."""
    spec = json.loads(ROUTES_FILE.read_text(encoding="utf-8"))
    spec["routes"].append({**spec["routes"][0], "name": "extra-0"})
    path = tmp_path / "routes.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    output = tmp_path / "wf.json"
    assert main(["logicapp", "build", "--routes", str(path), "--output", str(output), "--auth", "managed-identity",
                 "--verify", verify]) == 0, capsys.readouterr().err
    assert largest_expression(json.loads(output.read_text(encoding="utf-8"))) <= MAX_EXPRESSION


@pytest.fixture
def both(azurite: str, table_name: str, thirty: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pair]:
    with pair(azurite, table_name, routes_path=thirty) as p:
        for name, value in p.env.items():
            monkeypatch.setenv(name, value)
        yield p


def delivery(*events: Any) -> bytes:
    return json.dumps(list(events)).encode()


def test_thirty_routes_start_the_same_runs_with_the_same_bodies_as_the_runbook(both: Pair) -> None:
    events = [sample(schema, name) for schema, name in all_samples()]
    for event in events:
        runbook, logicapp = both.deliver(delivery(event))
        same(logicapp, runbook)
        assert logicapp.status == 200
    started = {row["route"] for row in both.logicapp.observe(200).rows if row["state"] == "triggered"}
    # the even routes take the samples (the odd ones' filters miss), of every event type
    assert started == {route(i)["name"] for i in range(ROUTES) if i % 2 == 0}
    assert len(both.logicapp.stack.ado.runs) == len(started)


def test_thirty_routes_with_verification_behave_like_the_runbook(azurite: str, table_name: str, thirty: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    with pair(azurite, table_name, routes_path=thirty, verify=True) as p:
        for name, value in p.env.items():
            monkeypatch.setenv(name, value)
        events = [sample("event-grid-schema", name) for _, name in all_samples()[:5]]
        status_change = events.pop(1)  # the same run as run_completed, in another status: delivered after it
        for batch in (events, [status_change]):
            p.emitted(batch)  # AML holds them, tags and all: genuine events
            runbook, logicapp = p.deliver(delivery(*batch))
            same(logicapp, runbook)
            assert logicapp.status == 200
        started = {row["route"] for row in p.logicapp.observe(200).rows if row["state"] == "triggered"}
        assert started == {route(i)["name"] for i in range(ROUTES) if i % 2 == 0}


def test_a_route_that_cannot_fit_on_its_own_is_refused_by_name(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    guards = {f"runTags.guard-{n:02d}-{'x' * 40}": {"notIn": ["ado"]} for n in range(20)}  # within Event Grid's 25
    wide = {**route(0), "name": "too-many-names", "filters": guards}
    long = {**route(5), "name": "long-label"}
    long["pipeline"] = {**long["pipeline"], "variables": {"LABEL": "x" * 9000 + " {{ runId }}"}}
    path = routes_file(tmp_path / "routes.json", [route(i) for i in range(4)] + [wide, long])
    with pytest.raises(RoutesError) as caught:
        generate(load_routes(path), verify=False)
    assert "'too-many-names': its events and filters" in caught.value.message
    assert "'long-label': its pipeline.variables.LABEL.value template" in caught.value.message
    output = tmp_path / "wf.json"
    assert main(["logicapp", "build", "--routes", str(path), "--output", str(output), "--verify", "false"]) != 0
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: ")
    assert "8192 characters" in err[0]
    problems = [line for line in err if "too-many-names" in line or "long-label" in line]
    assert len(problems) == 2
    assert all(" characters" in line for line in problems)
    assert any(line.startswith("what to do: Split a route") for line in err)
    assert not any("Traceback" in line for line in err)
    assert not output.exists()
