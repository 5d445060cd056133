"""The routes file's contract with its author, problem line by problem line.

A routes file is checked completely before a single event is handled, and each problem is one line that
names the place (document, route, field) and says what is expected: that line is all a route author sees in
the Automation job stream or from ``amlrelay check-routes``, so the lines are pinned here word for word.
The accepted shapes are pinned by what they do: defaults that apply, a single filter value, event types with
their ``Microsoft.MachineLearningServices.`` prefix, Event Grid's limits reached but not exceeded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from amlrelay.errors import RoutesError
from amlrelay.events import parse_events
from amlrelay.models import AmlEvent
from amlrelay.router import build_request, select
from amlrelay.routes import Filter, Routes, load_routes, parse_routes
from tests.conftest import sample

ALL_TYPES = "RunCompleted, RunStatusChanged, ModelRegistered, ModelDeployed, DatasetDriftDetected"
OPERATORS = "in, notIn, beginsWith, notBeginsWith, endsWith, notEndsWith, contains, notContains, exists"
HINT = "See README 'Routes' and the JSON schema amlrelay/schemas/routes.schema.json."
NAME_RULE = ("name must be 1-40 letters, digits or hyphens, starting with a letter or digit (it names the Event "
             "Grid subscription and the ledger records)")
ENVELOPE = ("envelope fields cannot be filtered here (use 'events'; workspaces are restricted by the "
            "allowed-workspaces setting)")
PIPELINE_ID = "must be the pipeline's positive integer id (see its URL: definitionId=N)"


def route(**fields: Any) -> dict[str, Any]:
    """A valid route for RunCompleted; ``fields`` replace its keys (``pipeline`` entries are merged in)."""
    base: dict[str, Any] = {"name": "r1", "events": ["RunCompleted"], "pipeline": {"project": "mlops", "id": 1}}
    pipeline = fields.pop("pipeline", {})
    return {**base, **fields, "pipeline": {**base["pipeline"], **pipeline} if pipeline is not None else None}


def doc(*routes: Any, **top: Any) -> dict[str, Any]:
    return {"version": 1, "routes": list(routes) or [route()], **top}


def refusal(document: Any, *, source: str = "routes.json") -> RoutesError:
    with pytest.raises(RoutesError) as info:
        parse_routes(json.dumps(document), source=source)
    return info.value


def refusal_of_text(text: str, *, source: str | None = None) -> RoutesError:
    with pytest.raises(RoutesError) as info:
        parse_routes(text) if source is None else parse_routes(text, source=source)
    return info.value


def problem_lines(document: Any) -> list[str]:
    """The problems as the author reads them, after checking the header counts them."""
    error = refusal(document)
    header, *lines = error.message.split("\n  - ")
    assert header == f"routes.json: {len(lines)} problem(s):"
    assert error.hint == HINT
    return lines


def run_completed(**data: Any) -> AmlEvent:
    raw = sample("event-grid-schema", "run_completed")
    raw["data"].update(data)
    [event] = parse_events([raw])
    assert isinstance(event, AmlEvent)
    return event


@pytest.mark.parametrize(("document", "lines"), [
    # the document
    ([], ["document: must be a JSON object with 'version' and 'routes'"]),
    (doc(extra=1), ["document: unknown key 'extra' (allowed: $schema, defaults, pushDownFilters, routes, version)"]),
    (doc(version="1"), ["version: must be 1"]),
    (doc(pushDownFilters="some"), ["pushDownFilters: must be one of safe, all, none"]),
    (doc(pushDownFilters="SAFE"), ["pushDownFilters: must be one of safe, all, none"]),
    (doc(defaults=["mlops"]), ["defaults: must be an object"]),
    (doc(defaults={"project": "p", "pipeline": 1}),
     ["defaults: unknown key 'pipeline' (allowed: branch, project, templateParameters, variables)"]),
    ({"version": 1, "routes": []}, ["routes: must be a non-empty array"]),
    ({"version": 1, "routes": {"r1": route()}}, ["routes: must be a non-empty array"]),
    ({"version": 1}, ["routes: must be a non-empty array"]),
    # a route
    (doc("r1"), ["routes[0]: must be an object"]),
    (doc({k: v for k, v in route().items() if k != "name"}), [f"routes[0]: {NAME_RULE}"]),
    (doc(route(name=7)), [f"routes[0]: {NAME_RULE}"]),
    (doc(route(name="-r1")), [f"route '-r1': {NAME_RULE}"]),
    (doc(route(name="r" * 41)), [f"route '{'r' * 41}': {NAME_RULE}"]),
    (doc(route(on="RunCompleted")),
     ["route 'r1': unknown key 'on' (allowed: description, events, filters, name, pipeline)"]),
    (doc(route(description=["x"])), ["route 'r1'.description: must be a string"]),
    # events
    (doc(route(events="RunCompleted")), [f"route 'r1'.events: must be a non-empty array of {ALL_TYPES}"]),
    (doc(route(events=[])), [f"route 'r1'.events: must be a non-empty array of {ALL_TYPES}"]),
    (doc(route(events=["RunFinished", 3])),
     [f"route 'r1'.events: unknown event type 'RunFinished' (known: {ALL_TYPES})",
      f"route 'r1'.events: unknown event type 3 (known: {ALL_TYPES})"]),
    # filters
    (doc(route(filters=[{"runStatus": {"in": ["Failed"]}}])),
     ["route 'r1'.filters: must be an object mapping a field to its conditions"]),
    (doc(route(filters={"runTags.stage": ["prod"]})),
     [f"route 'r1'.filters.runTags.stage: must be an object with one or more of {OPERATORS}"]),
    (doc(route(filters={"runTags.stage": {}})),
     [f"route 'r1'.filters.runTags.stage: must be an object with one or more of {OPERATORS}"]),
    (doc(route(filters={"runTags.stage": {"equals": ["x"]}})),
     [f"route 'r1'.filters.runTags.stage.equals: unknown operator (known: {OPERATORS})"]),
    (doc(route(filters={"runTags.stage": {"exists": "yes"}})),
     ["route 'r1'.filters.runTags.stage.exists: must be true ('exists': true); use 'notIn' to exclude values"]),
    (doc(route(filters={"runTags.stage": {"in": [], "notIn": [1], "contains": 2}})),
     ["route 'r1'.filters.runTags.stage.in: must be a string or a non-empty array of strings",
      "route 'r1'.filters.runTags.stage.notIn: must be a string or a non-empty array of strings",
      "route 'r1'.filters.runTags.stage.contains: must be a string or a non-empty array of strings"]),
    (doc(route(filters={"runTags.stage": {"in": ["x" * 513]}})),
     ["route 'r1'.filters.runTags.stage.in: values must be at most 512 characters (Event Grid limit)"]),
    (doc(route(events=["RunCompleted", "RunStatusChanged"], filters={"modelName": {"in": "m"}})),
     ["route 'r1'.filters.modelName: field 'modelName' is not carried by RunCompleted, RunStatusChanged events"]),
    (doc(route(filters={"runId.part": {"in": "m"}, "experiment.name": {"in": "m"}})),
     ["route 'r1'.filters.runId.part: field 'runId.part' is not carried by RunCompleted events",
      "route 'r1'.filters.experiment.name: field 'experiment.name' is not carried by RunCompleted events"]),
    (doc(route(filters={"runTags.a": {"in": [str(i) for i in range(26)]}})),
     ["route 'r1'.filters: 26 filter values; Event Grid allows 25"]),
    (doc(route(filters={"runTags.a": {"in": [str(i) for i in range(25)]}, "runTags.b": {"exists": True}})),
     ["route 'r1'.filters: 26 filter values; Event Grid allows 25"]),
    # the pipeline
    (doc(route(pipeline=None)),
     ["route 'r1'.pipeline: must be an object with at least 'project' (or defaults.project) and 'id'"]),
    (doc(route(pipeline={"definitionId": 4})),
     ["route 'r1'.pipeline: unknown key 'definitionId' (allowed: branch, id, project, stagesToSkip, "
      "templateParameters, variables, version)"]),
    (doc(route(pipeline={"project": " "})), ["route 'r1'.pipeline.project: is required (here or in defaults.project)"]),
    (doc(route(pipeline={"id": 0})), [f"route 'r1'.pipeline.id: {PIPELINE_ID}"]),
    (doc(route(pipeline={"id": -3})), [f"route 'r1'.pipeline.id: {PIPELINE_ID}"]),
    (doc(route(pipeline={"id": True})), [f"route 'r1'.pipeline.id: {PIPELINE_ID}"]),
    (doc(route(pipeline={"id": 1.0})), [f"route 'r1'.pipeline.id: {PIPELINE_ID}"]),
    (doc(route(pipeline={"version": 0})), ["route 'r1'.pipeline.version: must be a positive integer when given"]),
    (doc(route(pipeline={"version": True})), ["route 'r1'.pipeline.version: must be a positive integer when given"]),
    (doc(route(pipeline={"version": "3"})), ["route 'r1'.pipeline.version: must be a positive integer when given"]),
    (doc(route(pipeline={"branch": "{{ runId"})),
     ["route 'r1'.pipeline.branch: unbalanced '{{' or '}}' in '{{ runId'"]),
    (doc(route(pipeline={"branch": ["main"]})), ["route 'r1'.pipeline.branch: must be a string"]),
    (doc(route(pipeline={"variables": {"AML RUN": "x", "V": {"value": "x", "secret": True}}})),
     ["route 'r1'.pipeline.variables.AML RUN: is not a valid ADO variable name",
      "route 'r1'.pipeline.variables.V: unknown key 'secret' (allowed: isSecret, value)"]),
    (doc(route(pipeline={"variables": {"V": {"value": "x", "isSecret": "yes"}}})),
     ["route 'r1'.pipeline.variables.V.isSecret: must be true or false"]),
    (doc(route(pipeline={"variables": {"A": True, "B": None, "C": ["x"], "D": {"isSecret": True}}})),
     ["route 'r1'.pipeline.variables.A: must be a string", "route 'r1'.pipeline.variables.B: must be a string",
      "route 'r1'.pipeline.variables.C: must be a string", "route 'r1'.pipeline.variables.D: must be a string"]),
    (doc(route(pipeline={"variables": {"M": "{{ modelName }}"}})),
     ["route 'r1'.pipeline.variables.M: field 'modelName' is not carried by RunCompleted events"]),
    (doc(route(pipeline={"templateParameters": {"m": "{{ modelName }}", "f": False}})),
     ["route 'r1'.pipeline.templateParameters.m: field 'modelName' is not carried by RunCompleted events",
      "route 'r1'.pipeline.templateParameters.f: must be a string"]),
    (doc(route(pipeline={"variables": ["V"], "templateParameters": "t"})),
     ["route 'r1'.pipeline.variables: must be an object", "route 'r1'.pipeline.templateParameters: must be an object"]),
    (doc(route(pipeline={"stagesToSkip": "Production"})),
     ["route 'r1'.pipeline.stagesToSkip: must be an array of stage names"]),
    (doc(route(pipeline={"stagesToSkip": ["Production", ""]})),
     ["route 'r1'.pipeline.stagesToSkip: must be an array of stage names"]),
    (doc(route(pipeline={"stagesToSkip": [2]})), ["route 'r1'.pipeline.stagesToSkip: must be an array of stage names"]),
])
def test_each_problem_is_one_line_naming_its_place_and_the_rule(document: Any, lines: list[str]) -> None:
    assert problem_lines(document) == lines


@pytest.mark.parametrize("field", ["eventId", "eventType", "eventTime", "workspaceId", "workspaceName",
                                   "EVENTTYPE", "eventType.x"])
def test_envelope_fields_cannot_be_filtered_in_a_route(field: str) -> None:
    """Event types are chosen with ``events``, workspaces by the allowed-workspaces setting: a filter on them
    here would be a second, weaker trust rule (and the id and time differ between deliveries anyway)."""
    assert problem_lines(doc(route(filters={field: {"in": ["x"]}}))) == [f"route 'r1'.filters.{field}: {ENVELOPE}"]


def test_subject_is_not_an_envelope_field_and_may_be_filtered() -> None:
    routes = parse_routes(json.dumps(doc(route(filters={"subject": {"beginsWith": "experiment/"}}))))
    assert routes.routes[0].filters == (Filter("subject", "beginsWith", ("experiment/",)),)


def test_one_bad_part_does_not_hide_the_problems_after_it() -> None:
    """Every problem at once: a bad route, filter or condition never stops the check of the next one."""
    lines = problem_lines(doc(
        "r0",
        route(name="r1", filters={"eventType": {"in": ["x"]}, "runTags.a": 1, "runTags.b": {"exists": False},
                                  "modelName": {"in": "m"}}),
        route(name="r2", events=["Nope"]),
    ))
    assert lines == [
        "routes[0]: must be an object",
        f"route 'r1'.filters.eventType: {ENVELOPE}",
        f"route 'r1'.filters.runTags.a: must be an object with one or more of {OPERATORS}",
        "route 'r1'.filters.runTags.b.exists: must be true ('exists': true); use 'notIn' to exclude values",
        "route 'r1'.filters.modelName: field 'modelName' is not carried by RunCompleted events",
        f"route 'r2'.events: unknown event type 'Nope' (known: {ALL_TYPES})",
    ]


def test_duplicate_names_ignore_case_and_a_dropped_route_is_not_also_a_duplicate() -> None:
    assert problem_lines(doc(route(name="deploy"), route(name="Deploy"))) == [
        "route 'Deploy': duplicate route name (names are case-insensitive)"]
    # the first 'deploy' is refused for its own problem and not kept, so the second is not reported again
    assert problem_lines(doc(route(name="deploy", events=["Nope"]), route(name="deploy"))) == [
        f"route 'deploy'.events: unknown event type 'Nope' (known: {ALL_TYPES})"]
    assert problem_lines(doc(route(name="deploy", pipeline={"id": "1"}), route(name="deploy"))) == [
        f"route 'deploy'.pipeline.id: {PIPELINE_ID}"]


@pytest.mark.parametrize(("count", "shown", "more"), [(20, 20, None), (21, 20, "... and 1 more"),
                                                      (23, 20, "... and 3 more")])
def test_a_long_report_shows_twenty_problems_and_counts_the_rest(count: int, shown: int, more: str | None) -> None:
    document = doc(route(**{f"extra{i:02}": 1 for i in range(count)}))
    error = refusal(document)
    header, *lines = error.message.split("\n  - ")
    assert header == f"routes.json: {count} problem(s):"
    assert lines[:shown] == [f"route 'r1': unknown key 'extra{i:02}' (allowed: description, events, filters, name, "
                             "pipeline)" for i in range(shown)]
    assert lines[shown:] == ([more] if more else [])
    assert error.hint == HINT


def test_invalid_json_says_so_with_the_source_and_the_fix() -> None:
    error = refusal_of_text("{ not json", source="routes.json")
    assert error.message.startswith("routes.json: not valid JSON (Expecting property name")
    assert error.hint == "Fix the JSON syntax."


def test_without_a_source_the_document_is_called_routes() -> None:
    assert refusal_of_text("[]").message.startswith("<routes>: 1 problem(s):")
    assert parse_routes(json.dumps(doc())).source == "<routes>"


@pytest.mark.parametrize(("given", "mode"), [({}, "safe"), ({"pushDownFilters": "safe"}, "safe"),
                                             ({"pushDownFilters": "all"}, "all"),
                                             ({"pushDownFilters": "none"}, "none")])
def test_push_down_filters_is_kept_and_defaults_to_safe(given: dict[str, str], mode: str) -> None:
    assert parse_routes(json.dumps(doc(**given))).push_down_filters == mode


# --- loading -------------------------------------------------------------------------------------------

def test_inline_json_may_start_with_blank_lines_as_an_automation_variable_does() -> None:
    routes = load_routes("\n  \t" + json.dumps(doc()) + "\n")
    assert (routes.source, [r.name for r in routes.routes]) == ("<inline routes>", ["r1"])


def test_a_file_saved_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    """Windows editors and PowerShell's Out-File write UTF-8 with a BOM."""
    path = tmp_path / "routes.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(doc()).encode())
    assert [r.name for r in load_routes(path).routes] == ["r1"]


def test_a_file_with_problems_is_named_by_its_path(tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    path.write_text(json.dumps(doc(version=2)), encoding="utf-8")
    with pytest.raises(RoutesError) as info:
        load_routes(path)
    assert info.value.message == f"{path}: 1 problem(s):\n  - version: must be 1"


def test_a_valid_file_keeps_its_path_as_source(tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    path.write_text(json.dumps(doc()), encoding="utf-8")
    assert load_routes(path).source == str(path)


def test_an_unreadable_routes_file_says_which_setting_to_fix(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    with pytest.raises(RoutesError) as info:
        load_routes(missing)
    assert info.value.message == f"Cannot read routes file {missing}: No such file or directory."
    assert info.value.hint == "Set AMLRELAY_ROUTES to the path of a routes file or to its JSON."


# --- looking a route up --------------------------------------------------------------------------------

def test_a_route_is_found_by_name_ignoring_case_and_an_unknown_name_lists_the_known_ones() -> None:
    routes = parse_routes(json.dumps(doc(route(name="deploy-model"), route(name="Retrain"))), source="routes.json")
    assert routes.by_name("DEPLOY-MODEL").name == "deploy-model"
    assert routes.by_name("retrain").name == "Retrain"
    with pytest.raises(RoutesError) as info:
        routes.by_name("deploy")
    assert info.value.message == "routes.json: there is no route named 'deploy'."
    assert info.value.hint == "Known routes: deploy-model, Retrain."


# --- what accepted shapes mean -------------------------------------------------------------------------

def test_event_types_may_carry_the_aml_prefix_and_repeat() -> None:
    prefixed = [f"Microsoft.MachineLearningServices.{t}" for t in ("RunCompleted", "RunStatusChanged")]
    routes = parse_routes(json.dumps(doc(route(events=[prefixed[0], "runcompleted", prefixed[1]]))))
    assert routes.routes[0].events == ("RunCompleted", "RunStatusChanged")


def test_a_single_string_is_one_filter_value() -> None:
    routes = parse_routes(json.dumps(doc(route(filters={"runTags.stage": {"in": "candidate"}}))))
    assert routes.routes[0].filters == (Filter("runTags.stage", "in", ("candidate",)),)
    matched, _ = select(routes, run_completed(runTags={"stage": "Candidate"}))
    assert [r.name for r in matched] == ["r1"]


def test_event_grid_limits_can_be_reached() -> None:
    """25 values per route (``exists`` counts as one), 512 characters per value: allowed, as in Event Grid."""
    longest = "x" * 512
    routes = parse_routes(json.dumps(doc(route(filters={
        "runTags.a": {"in": [longest] + [str(i) for i in range(23)]}, "runTags.b": {"exists": True}}))))
    assert [len(f.values) for f in routes.routes[0].filters] == [24, 0]
    exists_only = parse_routes(json.dumps(doc(route(filters={f"runTags.t{i}": {"exists": True} for i in range(25)}))))
    assert len(exists_only.routes[0].filters) == 25


def test_tag_names_may_hold_dots() -> None:
    routes = parse_routes(json.dumps(doc(route(filters={"runTags.release.channel": {"in": "beta"}},
                                               pipeline={"variables": {"C": "{{ runTags.release.channel }}"}}))))
    event = run_completed(runTags={"release.channel": "beta"})
    [taken], _ = select(routes, event)
    assert build_request(taken, event).body["variables"]["C"] == {"value": "beta", "isSecret": False}


def test_a_variable_is_secret_only_when_it_says_so() -> None:
    """``{"value": ...}`` without ``isSecret`` is a plain variable: shown in previews, part of the identity."""
    routes = parse_routes(json.dumps(doc(route(pipeline={"variables": {
        "R": {"value": "{{ runId }}"}, "E": "{{ experimentName }}", "S": {"value": "{{ runId }}", "isSecret": True},
        "P": {"value": "{{ runId }}", "isSecret": False}}}))))
    request = build_request(routes.routes[0], run_completed())
    run_id = request.body["variables"]["R"]["value"]
    assert {name: spec["isSecret"] for name, spec in request.body["variables"].items()} == {
        "R": False, "E": False, "S": True, "P": False}
    assert request.redacted_body()["variables"]["R"] == {"value": run_id, "isSecret": False}
    assert request.redacted_body()["variables"]["S"] == {"value": "***", "isSecret": True}
    assert set(request.fingerprint) == {"variables.R", "variables.E", "variables.P"}


def test_numbers_are_accepted_as_literal_values() -> None:
    routes = parse_routes(json.dumps(doc(route(pipeline={"variables": {"N": 3}, "templateParameters": {"f": 0.5}}))))
    body = build_request(routes.routes[0], run_completed()).body
    assert (body["variables"]["N"]["value"], body["templateParameters"]["f"]) == ("3", "0.5")


def test_defaults_apply_to_every_route_and_a_route_overrides_them_key_by_key() -> None:
    document = doc(
        {"name": "plain", "events": ["RunCompleted"], "pipeline": {"id": 1}},
        route(name="own", pipeline={"project": "Other ", "branch": "release", "variables": {"A": "own"},
                                    "templateParameters": {"p": "own"}}),
        defaults={"project": "mlops", "branch": "main", "variables": {"A": "a", "B": "b"},
                  "templateParameters": {"p": "p", "q": "q"}})
    routes = parse_routes(json.dumps(document))
    event = run_completed()
    plain, own = (build_request(r, event) for r in routes.routes)
    assert plain.project == "mlops"
    assert plain.body["resources"]["repositories"]["self"]["refName"] == "refs/heads/main"
    assert plain.body["variables"] == {"A": {"value": "a", "isSecret": False}, "B": {"value": "b", "isSecret": False}}
    assert plain.body["templateParameters"] == {"p": "p", "q": "q"}
    assert own.project == "Other"
    assert own.body["resources"]["repositories"]["self"]["refName"] == "refs/heads/release"
    assert own.body["variables"] == {"A": {"value": "own", "isSecret": False}, "B": {"value": "b", "isSecret": False}}
    assert own.body["templateParameters"] == {"p": "own", "q": "q"}


def test_the_smallest_pipeline_version_and_id_are_one() -> None:
    routes = parse_routes(json.dumps(doc(route(pipeline={"id": 1, "version": 1}))))
    assert (routes.routes[0].pipeline.pipeline_id, routes.routes[0].pipeline.pipeline_version) == (1, 1)


def test_a_description_is_kept_as_written() -> None:
    routes: Routes = parse_routes(json.dumps(doc(route(name="a", description="Evaluate a trained model"),
                                                 route(name="b"))))
    assert [r.description for r in routes.routes] == ["Evaluate a trained model", ""]


def test_defaults_variables_and_parameters_must_be_objects() -> None:
    """An array in ``defaults`` (ADO's YAML shape for variables) was silently ignored, so every route's runs
    started without those values; the schema refuses it, and so does the loader now."""
    assert problem_lines(doc(defaults={"variables": [{"name": "A", "value": "x"}], "templateParameters": "p"})) == [
        "defaults.variables: must be an object", "defaults.templateParameters: must be an object"]
