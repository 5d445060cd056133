"""The typed ``data`` of each AML event type: what is accepted, what is refused (with the field named and the
JSON kind of the value), and the flat field view routes filter and template on."""

from __future__ import annotations

from typing import Any

import pytest

from amlrelay.errors import InvalidEventError
from amlrelay.models import (
    MAX_FIELD_LENGTH,
    DatasetDriftData,
    ModelDeployedData,
    ModelRegisteredData,
    RunEventData,
    json_kind,
    parse_data,
)

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
