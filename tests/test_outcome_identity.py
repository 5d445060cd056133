"""Which deliveries are the same AML outcome (one ADO run) and which are different (one run each).

The outcome key is a contract with every handler that claims the ledger (the Logic App computes it too), so
the exact string is pinned per event type; then, per event type, each field that must make two deliveries
*different* outcomes and each that must *not* (delivery id, time, schema, case, tags, order of the batch).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from amlrelay.events import parse_events
from amlrelay.models import AmlEvent
from tests.conftest import SCHEMAS, sample

WS = ("/subscriptions/{subscription-id}/resourcegroups/{resource-group-name}/providers/"
      "microsoft.machinelearningservices/workspaces/{workspace-name}")
KEYS = {
    "run_completed": f"{WS}|run|automl_ad912b2d-6467-4f32-a616-dbe4af6dd8fc_5|completed",
    "run_status_changed": f"{WS}|run|automl_ad912b2d-6467-4f32-a616-dbe4af6dd8fc_5|failed",
    "model_registered": f"{WS}|model|sklearn_regression_model|20",
    "model_deployed": f"{WS}|deployment|my-sklearn-service|sklearn_regression_model:1,sklearn_regression_model:2",
    "dataset_drift_detected": f"{WS}|drift|01d29aa4-e6a4-470a-9ef3-66660d21f8ef|"
                              "01d29aa4-e6a4-470a-9ef3-66660d21f8ef_1571590300380",
}


def key_of(raw: dict[str, Any]) -> str:
    [event] = parse_events([raw])
    assert isinstance(event, AmlEvent), event
    return event.outcome_key()


def changed(schema: str, name: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads(json.dumps(sample(schema, name)))
    change(raw)
    return raw


def data_set(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(raw: dict[str, Any]) -> None:
        data = raw["data"]
        existing = next((k for k in data if k.lower() == field.lower()), field)
        data[existing] = value
    return apply


def envelope_set(eg: str, ce: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(raw: dict[str, Any]) -> None:
        raw[eg if "topic" in raw else ce] = value
    return apply


@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize("name", list(KEYS))
def test_the_outcome_key_is_the_documented_contract(schema: str, name: str) -> None:
    assert key_of(sample(schema, name)) == KEYS[name]


SAME: dict[str, list[tuple[str, Callable[[dict[str, Any]], None]]]] = {
    name: [
        ("another delivery id", envelope_set("id", "id", "another-delivery")),
        ("another event time", envelope_set("eventTime", "time", "2030-01-01T00:00:00Z")),
        ("another subject", envelope_set("subject", "subject", "elsewhere/x")),
        ("workspace id in upper case with a trailing slash",
         lambda raw: raw.__setitem__("topic" if "topic" in raw else "source",
                                     raw["topic" if "topic" in raw else "source"].upper() + "/")),
    ] for name in KEYS
}
SAME["run_completed"] += [("run id in another case",
                           data_set("runId", "AUTOML_AD912B2D-6467-4F32-A616-DBE4AF6DD8FC_5")),
                          ("other tags", data_set("runTags", {"stage": "x"})),
                          ("another experiment name", data_set("experimentName", "other"))]
SAME["run_status_changed"] += [("status in another case", data_set("runStatus", "FAILED"))]
SAME["model_registered"] += [("model name in another case", data_set("modelName", "SKLEARN_Regression_Model")),
                             ("version as a number", data_set("modelVersion", 20)),
                             ("other tags", data_set("modelTags", {"stage": "prod"}))]
SAME["model_deployed"] += [("model ids with spaces", data_set("modelIds", " sklearn_regression_model:1 , "
                                                              "sklearn_regression_model:2 ")),
                           ("another compute type", data_set("serviceComputeType", "AKS")),
                           ("service name in another case", data_set("serviceName", "My-Sklearn-Service"))]
SAME["dataset_drift_detected"] += [("another coefficient", data_set("driftCoefficient", 0.1)),
                                   ("another monitor name", data_set("dataDriftName", "renamed")),
                                   ("drift id in another case", data_set("dataDriftId",
                                                                         "01D29AA4-E6A4-470A-9EF3-66660D21F8EF"))]

DIFFERENT: dict[str, list[tuple[str, Callable[[dict[str, Any]], None]]]] = {
    name: [("another workspace", lambda raw: raw.__setitem__(
        "topic" if "topic" in raw else "source", raw["topic" if "topic" in raw else "source"] + "-2")),
           ("a workspace whose name only adds a trailing X", lambda raw: raw.__setitem__(
        "topic" if "topic" in raw else "source", raw["topic" if "topic" in raw else "source"] + "X"))]
    for name in KEYS
}
DIFFERENT["run_completed"] += [("another run", data_set("runId", "run-2"))]
DIFFERENT["run_status_changed"] += [("another run", data_set("runId", "run-2")),
                                    ("another status of the run", data_set("runStatus", "Canceled"))]
DIFFERENT["model_registered"] += [("another version", data_set("modelVersion", "21")),
                                  ("another model", data_set("modelName", "other_model"))]
DIFFERENT["model_deployed"] += [("another service", data_set("serviceName", "other-service")),
                                ("another model version deployed", data_set("modelIds", "sklearn_regression_model:3")),
                                ("one model fewer", data_set("modelIds", "sklearn_regression_model:1"))]
DIFFERENT["dataset_drift_detected"] += [("another monitor", data_set("dataDriftId", "drift-2")),
                                        ("another drift run of the monitor", data_set("runId", "run-2")),
                                        ("no drift run", data_set("runId", None))]


@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize(("name", "what", "change"), [(n, w, c) for n, cases in SAME.items() for w, c in cases])
def test_a_redelivery_is_the_same_outcome(schema: str, name: str, what: str,
                                          change: Callable[[dict[str, Any]], None]) -> None:
    assert key_of(changed(schema, name, change)) == key_of(sample(schema, name)), what


@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize(("name", "what", "change"), [(n, w, c) for n, cases in DIFFERENT.items() for w, c in cases])
def test_a_different_outcome_has_another_key(schema: str, name: str, what: str,
                                             change: Callable[[dict[str, Any]], None]) -> None:
    assert key_of(changed(schema, name, change)) != key_of(sample(schema, name)), what


def test_run_completed_and_its_completed_status_change_are_one_outcome_in_either_schema() -> None:
    status = changed("cloud-events-schema", "run_status_changed", data_set("runStatus", "completed"))
    assert key_of(status) == key_of(sample("event-grid-schema", "run_completed")) == KEYS["run_completed"]


def test_deployed_model_ids_keep_their_order() -> None:
    """The Logic App cannot sort, so the key keeps AML's order (two orders are two keys, never a collision)."""
    swapped = changed("event-grid-schema", "model_deployed",
                      data_set("modelIds", "sklearn_regression_model:2,sklearn_regression_model:1"))
    assert key_of(swapped).endswith("|sklearn_regression_model:2,sklearn_regression_model:1")


@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize(("name", "field", "value"), [
    ("run_status_changed", "runId", "Run-A"), ("run_status_changed", "runStatus", "Canceled"),
    ("model_registered", "modelName", "Model-A"), ("model_registered", "modelVersion", "Preview-2"),
    ("model_deployed", "serviceName", "Service-A"), ("model_deployed", "modelIds", "Model-A:1,Model-B:2"),
    ("dataset_drift_detected", "dataDriftId", "Drift-A"), ("dataset_drift_detected", "runId", "Drift-A_1"),
])
def test_every_part_of_the_key_is_lower_cased_as_every_handler_computes_it(schema: str, name: str, field: str,
                                                                         value: str) -> None:
    """The Logic App claims the ledger with ``toLower(concat(...))``: a key with an upper-case letter left in it
    would be another outcome to it, and the same AML outcome would start two runs."""
    key = key_of(changed(schema, name, data_set(field, value)))
    assert key == key.lower()
    assert f"|{value.lower()}" in key
