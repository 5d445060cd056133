"""The typed ``data`` of each AML event type: what is accepted, what is refused (with the field named and the
JSON kind of the value), and the flat field view routes filter and template on."""

from __future__ import annotations

import re
from typing import Any

import pytest

from amlrelay.errors import InvalidEventError
from amlrelay.events import parse_events
from amlrelay.models import (
    ENVELOPE_FIELDS,
    MAX_FIELD_LENGTH,
    AmlEvent,
    DatasetDriftData,
    ModelDeployedData,
    ModelRegisteredData,
    RunEventData,
    json_kind,
    parse_data,
)
from tests.conftest import ROOT, SAMPLE_WORKSPACE, SCHEMAS, sample

HINT = "Only events shaped like Azure ML's Event Grid events can be relayed."
RUN = {"experimentId": "e1", "experimentName": "train", "runId": "r1", "runType": None, "runStatus": "Failed"}
MODEL = {"modelName": "m", "modelVersion": "3"}
DEPLOYED = {"serviceName": "svc", "serviceComputeType": "ACI", "modelIds": "m:1,m:2"}
DRIFT = {"dataDriftId": "d1"}


def refused(event_type: str, data: Any) -> str:
    with pytest.raises(InvalidEventError) as caught:
        parse_data(event_type, data)
    assert caught.value.hint == HINT
    return caught.value.message


@pytest.mark.parametrize(("value", "kind"), [
    (None, "null"), (True, "true"), (False, "false"), (5, "the number 5"), (1.5, "the number 1.5"),
    ("x", "a string"), ({}, "an object"), ([], "an array"), ((), "an array"), (object(), "a value that is not JSON"),
    (10**80, ("the number " + str(10**80))[:60]),
])
def test_json_kinds_are_named_in_jsons_words(value: Any, kind: str) -> None:
    assert json_kind(value) == kind


@pytest.mark.parametrize(("event_type", "data", "message"), [
    ("RunCompleted", "x", "RunCompleted event: data must be a JSON object, got a string."),
    ("RunStatusChanged", {**RUN, "runId": 5}, "RunStatusChanged event: data.runId must be a string (as in the event "
     "schema), got the number 5."),
    ("RunStatusChanged", {k: v for k, v in RUN.items() if k != "runStatus"},
     "RunStatusChanged event: data.runStatus is missing."),
    ("RunStatusChanged", {k: v for k, v in RUN.items() if k != "runType"},
     "RunStatusChanged event: data.runType is missing."),
    ("RunCompleted", {**RUN, "experimentName": "  "}, "RunCompleted event: data.experimentName is empty."),
    ("RunCompleted", {**RUN, "runId": "x" * (MAX_FIELD_LENGTH + 1)},
     f"RunCompleted event: data.runId is longer than {MAX_FIELD_LENGTH} characters."),
    ("RunCompleted", {**RUN, "runId": "\ud800"},
     "RunCompleted event: data.runId is not valid Unicode text (it holds a lone surrogate)."),
    ("RunCompleted", {**RUN, "runTags": []}, "RunCompleted event: data.runTags must be an object, got an array."),
    ("RunCompleted", {**RUN, "runTags": {"k": "v" * (MAX_FIELD_LENGTH + 1)}},
     f"RunCompleted event: data.runTags.k is longer than {MAX_FIELD_LENGTH} characters."),
    ("ModelRegistered", {**MODEL, "modelVersion": True}, "ModelRegistered event: data.modelVersion must be a string "
     "or an integer (as in the event schema), got true."),
    ("ModelRegistered", {**MODEL, "modelVersion": 1.5}, "ModelRegistered event: data.modelVersion must be a string "
     "or an integer (as in the event schema), got the number 1.5."),
    ("ModelDeployed", {**DEPLOYED, "modelIds": None}, "ModelDeployed event: data.modelIds is missing."),
    ("DatasetDriftDetected", {"runId": "r1"}, "DatasetDriftDetected event: data.dataDriftId is missing."),
    ("DatasetDriftDetected", {"dataDriftId": " "}, "DatasetDriftDetected event: data.dataDriftId is empty."),
    ("DatasetDriftDetected", {**DRIFT, "driftCoefficient": "high"},
     "DatasetDriftDetected event: data.driftCoefficient must be a number, got 'high'."),
    ("DatasetDriftDetected", {**DRIFT, "driftCoefficient": True},
     "DatasetDriftDetected event: data.driftCoefficient must be a number, got true."),
    ("DatasetDriftDetected", {**DRIFT, "driftCoefficient": [1]},
     "DatasetDriftDetected event: data.driftCoefficient must be a number, got an array."),
])
def test_refusals_name_the_field_and_what_arrived(event_type: str, data: Any, message: str) -> None:
    assert refused(event_type, data) == message


def test_run_events_accept_real_payloads_and_view_flat_fields() -> None:
    data = parse_data("RunStatusChanged", {"ExperimentId": "e1", "experimentname": "train", "RUNID": "r1",
                                           "runType": "azureml.scriptrun", "runStatus": "Failed",
                                           "runTags": {"stage": "x", "n": None, "nested": {"a": 1}, "num": 5},
                                           "runProperties": {"p": "v"}})
    assert isinstance(data, RunEventData)
    assert data.fields() == {"experimentId": "e1", "experimentName": "train", "runId": "r1", "runStatus": "Failed",
                             "runType": "azureml.scriptrun", "runTags.stage": "x", "runTags.n": "", "runTags.num": "5",
                             "runProperties.p": "v"}
    completed = parse_data("RunCompleted", {**RUN, "runStatus": "Failed"})
    assert isinstance(completed, RunEventData)
    assert completed.run_status == "Completed"  # a RunCompleted is a run that completed, whatever it says
    assert "runType" not in completed.fields()  # null runType: absent for routing, not "None"


def test_model_events() -> None:
    registered = parse_data("ModelRegistered", {"ModelName": "m", "ModelVersion": 3, "ModelTags": {"t": "1"},
                                                "ModelProperties": {"p": "2"}})
    assert isinstance(registered, ModelRegisteredData)
    assert registered.fields() == {"modelName": "m", "modelVersion": "3", "modelTags.t": "1", "modelProperties.p": "2"}
    deployed = parse_data("ModelDeployed", {**DEPLOYED, "modelIds": " m:1 ,, m:2 ", "serviceTags": {"t": "1"},
                                            "serviceProperties": {"p": "2"}})
    assert isinstance(deployed, ModelDeployedData)
    assert deployed.model_ids == ("m:1", "m:2")
    assert deployed.fields() == {"serviceName": "svc", "serviceComputeType": "ACI", "modelIds": "m:1,m:2",
                                 "serviceTags.t": "1", "serviceProperties.p": "2"}


def test_drift_events_keep_only_what_is_present() -> None:
    drift = parse_data("DatasetDriftDetected", {**DRIFT, "driftCoefficient": "0.5", "runId": "r", "startTime": "s"})
    assert isinstance(drift, DatasetDriftData)
    assert drift.fields() == {"dataDriftId": "d1", "runId": "r", "driftCoefficient": "0.5", "startTime": "s"}
    bare = parse_data("DatasetDriftDetected", DRIFT)
    assert bare.fields() == {"dataDriftId": "d1"}
    assert bare.outcome_key() == ("drift", "d1", "")


def test_identity_fields_per_type() -> None:
    assert RunEventData.identity_fields == ("runId",)
    assert ModelRegisteredData.identity_fields == ("modelName", "modelVersion")
    assert ModelDeployedData.identity_fields == ("serviceName", "modelIds")
    assert DatasetDriftData.identity_fields == ("dataDriftId", "runId")


def documented_fields() -> dict[str, tuple[set[str], set[str]]]:
    """The README's "Fields for filters and templates" table: per event type, its field names and its maps
    (``runTags.<tag>``), the envelope's row added to each type."""
    text = (ROOT / "README.md").read_text(encoding="utf-8").split("Fields for filters and templates:", 1)[1]
    rows = [line for line in text.strip().split("\n\n", 1)[0].splitlines() if line.startswith("| ")][1:]
    table: dict[str, tuple[set[str], set[str]]] = {}
    envelope: set[str] = set()
    for row in rows:
        types, names = row.strip("|").split("|")
        fields = set(re.findall(r"`([^`]+)`", names))
        plain, maps = {f for f in fields if "<" not in f}, {f.split(".")[0] for f in fields if "<" in f}
        if types.strip() == "all":
            envelope = plain
        for event_type in (t.strip() for t in types.split(",")):
            table[event_type] = (plain, maps)
    return {t: (plain | envelope, maps) for t, (plain, maps) in table.items() if t != "all"}


FULL = {"RunCompleted": ("run_completed", {"runType": "azureml.scriptrun", "runTags": {"t": "1"}}),
        "RunStatusChanged": ("run_status_changed", {"runType": "azureml.scriptrun", "runTags": {"t": "1"}}),
        "ModelRegistered": ("model_registered", {}), "ModelDeployed": ("model_deployed", {}),
        "DatasetDriftDetected": ("dataset_drift_detected", {})}


@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize("event_type", list(FULL))
def test_an_event_offers_every_documented_field_under_its_documented_name(schema: str, event_type: str) -> None:
    """Routes are written from the README's table; an event carrying every value offers exactly those names
    (and its tag and property maps), each spelled as documented."""
    name, extra = FULL[event_type]
    raw = sample(schema, name)
    raw["data"] = {**raw["data"], **extra}
    [event] = parse_events([raw])
    assert isinstance(event, AmlEvent), event
    plain, maps = documented_fields()[event_type]
    offered = event.fields()
    assert {k for k in offered if "." not in k} == plain
    assert {k.split(".")[0] for k in offered if "." in k} == maps


def test_the_envelope_fields_carry_the_deliverys_values() -> None:
    event = parse_events([sample("cloud-events-schema", "model_registered")])[0]
    assert isinstance(event, AmlEvent)
    assert event.time is not None
    envelope = {k: v for k, v in event.fields().items() if k in ENVELOPE_FIELDS}
    assert envelope == {"eventId": event.id, "eventType": "ModelRegistered", "subject": event.subject,
                        "eventTime": event.time.isoformat(), "workspaceId": SAMPLE_WORKSPACE,
                        "workspaceName": "{workspace-name}"}


def test_an_event_without_a_time_offers_an_empty_event_time() -> None:
    """``time`` is optional in CloudEvents; a template using ``eventTime`` then renders empty, not 'None'."""
    raw = sample("cloud-events-schema", "model_registered")
    del raw["time"]
    [event] = parse_events([raw])
    assert isinstance(event, AmlEvent)
    assert event.fields()["eventTime"] == ""


def test_a_drift_event_offers_every_value_it_carries() -> None:
    [event] = parse_events([sample("event-grid-schema", "dataset_drift_detected")])
    assert isinstance(event, AmlEvent)
    assert event.data.fields() == {
        "dataDriftId": "01d29aa4-e6a4-470a-9ef3-66660d21f8ef", "dataDriftName": "myDriftMonitor",
        "runId": "01d29aa4-e6a4-470a-9ef3-66660d21f8ef_1571590300380",
        "baseDatasetId": "3c56d136-0f64-4657-a0e8-5162089a88a3",
        "targetDatasetId": "d7e74d2e-c972-4266-b5fb-6c9c182d2a74", "driftCoefficient": "0.8350349068479208",
        "startTime": "2019-07-04T00:00:00+00:00", "endTime": "2019-07-05T00:00:00+00:00"}


VALID: dict[str, dict[str, Any]] = {"RunCompleted": RUN, "RunStatusChanged": RUN, "ModelRegistered": MODEL,
                                    "ModelDeployed": DEPLOYED, "DatasetDriftDetected": DRIFT}
REQUIRED = [("RunCompleted", f) for f in ("experimentId", "experimentName", "runId", "runType")] + [
    ("RunStatusChanged", "runStatus"), ("ModelRegistered", "modelName"), ("ModelRegistered", "modelVersion"),
    ("ModelDeployed", "serviceName"), ("ModelDeployed", "serviceComputeType"), ("ModelDeployed", "modelIds"),
    ("DatasetDriftDetected", "dataDriftId")]
MAPS = [("RunCompleted", "runTags"), ("RunCompleted", "runProperties"), ("ModelRegistered", "modelTags"),
        ("ModelRegistered", "modelProperties"), ("ModelDeployed", "serviceTags"),
        ("ModelDeployed", "serviceProperties")]
TEXTS = [(t, f) for t, f in REQUIRED if f != "modelVersion"] + [
    ("DatasetDriftDetected", f) for f in ("dataDriftName", "runId", "baseDatasetId", "targetDatasetId", "startTime",
                                          "endTime")]


@pytest.mark.parametrize(("event_type", "field"), REQUIRED)
def test_each_required_field_is_required_and_named_as_the_schema_spells_it(event_type: str, field: str) -> None:
    data = {k: v for k, v in VALID[event_type].items() if k != field}
    assert refused(event_type, data) == f"{event_type} event: data.{field} is missing."


@pytest.mark.parametrize(("event_type", "field"), TEXTS)
def test_a_text_field_of_another_json_type_is_named_as_the_schema_spells_it(event_type: str, field: str) -> None:
    data: dict[str, Any] = {**VALID[event_type], field.upper(): ["x"]}  # the key's case does not matter
    data = {k: v for k, v in data.items() if k != field}
    assert refused(event_type, data) == (f"{event_type} event: data.{field} must be a string (as in the event "
                                         "schema), got an array.")


@pytest.mark.parametrize(("event_type", "field"), MAPS)
def test_a_tag_or_property_map_must_be_an_object_and_is_read_whatever_its_case(event_type: str, field: str) -> None:
    assert refused(event_type, {**VALID[event_type], field: "x"}) == (f"{event_type} event: data.{field} must be "
                                                                     "an object, got a string.")
    parsed = parse_data(event_type, {**VALID[event_type], field.upper(): {"k": "v"}})
    assert parsed.fields()[f"{field}.k"] == "v"


def test_values_up_to_the_length_limit_are_kept_and_one_more_character_is_refused() -> None:
    """AML ids, names, tag keys and tag values all fit; a value one character over the limit is hostile."""
    limit = "x" * MAX_FIELD_LENGTH
    data = parse_data("RunCompleted", {**RUN, "runId": limit, "runTags": {limit: limit}})
    assert data.fields()["runId"] == limit
    assert data.fields()[f"runTags.{limit}"] == limit
    over = limit + "x"
    assert refused("RunCompleted", {**RUN, "runTags": {over: "v"}}) == (
        f"RunCompleted event: data.runTags.{over} is longer than {MAX_FIELD_LENGTH} characters.")


def test_a_coefficient_that_is_not_a_number_is_quoted_up_to_40_characters() -> None:
    text = "high: " + "0123456789" * 5
    assert refused("DatasetDriftDetected", {**DRIFT, "driftCoefficient": text}) == (
        f"DatasetDriftDetected event: data.driftCoefficient must be a number, got {text[:40]!r}.")
