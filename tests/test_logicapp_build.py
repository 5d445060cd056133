"""The generated definition: valid against the WDL schema written from the docs, every expression parses
with functions the evaluator implements, the checked-in file is current, and routes the workflow could not
render are refused at build time."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from amlrelay.cli import main
from amlrelay.errors import RoutesError
from amlrelay.logicapp import check_expressions, generate
from amlrelay.logicapp._wdl import MAX_EXPRESSION, expressions_in
from amlrelay.routes import load_routes, parse_routes
from tests.conftest import FIXTURES, ROOT, ROUTES_FILE

SCHEMA = json.loads((FIXTURES / "logicapps" / "workflowdefinition.schema.json").read_text(encoding="utf-8"))
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
CHECKED_IN = ROOT / "logicapps" / "workflow.json"


def actions_of(definition: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def walk(actions: dict[str, Any]) -> None:
        for name, action in actions.items():
            found[name + "#" + str(len(found))] = action
            walk(action.get("actions", {}))
            walk(action.get("else", {}).get("actions", {}))

    walk(definition["actions"])
    return found


@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize("auth", ["managed-identity", "pat"])
def test_definition_is_valid_wdl_and_every_expression_parses(auth: str, verify: bool) -> None:
    definition = generate(load_routes(ROUTES_FILE), auth=auth, verify=verify)
    assert list(VALIDATOR.iter_errors(definition)) == []
    assert check_expressions(definition) > 50
    assert max(len(e) for e in expressions_in(definition)) <= MAX_EXPRESSION


@pytest.mark.parametrize(("path", "bad"), [
    (("actions", "Initialize_failures", "runAfter"), {"x": ["Done"]}),
    (("triggers", "When_an_AML_event_is_received", "splitOn"), "@triggerBody()"),
    (("actions", "Respond", "kind"), "Api"),
    (("contentVersion",), "1.0"),
])
def test_the_schema_refuses_what_the_docs_refuse(path: tuple[str, ...], bad: Any) -> None:
    definition = copy.deepcopy(generate(load_routes(ROUTES_FILE)))
    target = definition
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = bad
    assert list(VALIDATOR.iter_errors(definition)) != []


def test_no_http_action_retries_by_itself() -> None:
    """The HTTP action's own policy would resend after 500/502/504 (EXC): every call opts out, and ADO's
    429/503 are repeated by an Until loop instead."""
    definition = generate(load_routes(ROUTES_FILE))
    http = [a for a in actions_of(definition).values() if a["type"] == "Http"]
    assert http
    assert all(a["inputs"]["retryPolicy"] == {"type": "none"} for a in http)
    untils = [a for a in actions_of(definition).values() if a["type"] == "Until"]
    assert [u["expression"] for u in untils] == [
        "@not(contains(createArray(429, 503), coalesce(outputs('Start_retry')?['statusCode'], 0)))",
        "@not(contains(createArray(429, 503), coalesce(outputs('Start_retry_again')?['statusCode'], 0)))"]
    names = {key.split("#")[0]: action for key, action in actions_of(definition).items()}
    assert names["After_failure"]["runAfter"] == {"Start": ["Failed", "TimedOut"]}  # no Until on the success path
    assert "Until_not_throttled" in names["After_failure"]["actions"]


def test_the_checked_in_workflows_are_current(capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the defaults: routes.json -> logicapps/workflow.json and workflow-pat.json
    assert main(["logicapp", "build", "--check"]) == 0
    assert capsys.readouterr().out.count("is up to date") == 4


def test_check_fails_on_a_stale_file_and_build_fixes_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stale = tmp_path / "workflow.json"
    stale.write_text(CHECKED_IN.read_text(encoding="utf-8").replace("evaluate-trained-model", "renamed"))
    args = ["logicapp", "build", "--routes", str(ROUTES_FILE), "--output", str(stale)]
    assert main([*args, "--check"]) == 1
    assert "stale" in capsys.readouterr().err
    assert main(args) == 0
    assert main([*args, "--check"]) == 0


def routes_with(template: str, filters: dict[str, Any] | None = None) -> str:
    return json.dumps({"version": 1, "routes": [{"name": "r", "events": ["RunCompleted"], "filters": filters or {},
                                                 "pipeline": {"project": "p", "id": 1,
                                                              "variables": {"V": template}}}]})


@pytest.mark.parametrize(("template", "filters", "ok"), [
    ("{{ runId }}", None, True),
    ("{{ runTags.stage | none }}", None, True),
    ("{{ runTags.stage }}", {"runTags.stage": {"exists": True}}, True),
    ("{{ runTags.stage }}", {"runTags.stage": {"in": ["a"]}}, True),
    ("{{ runTags.stage }}", None, False),
    ("{{ runTags.stage }}", {"runTags.stage": {"notIn": ["a"]}}, False),
    ("{{ runType }}", None, False),  # present but nullable
])
def test_templates_the_workflow_cannot_render_are_refused(template: str, filters: dict[str, Any] | None,
                                                         ok: bool) -> None:
    routes = parse_routes(routes_with(template, filters))
    if ok:
        generate(routes)
    else:
        with pytest.raises(RoutesError, match="no fallback"):
            generate(routes)
