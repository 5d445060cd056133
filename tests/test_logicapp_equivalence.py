"""The Logic App behaves like the runbook, by execution: for the same delivery, the same ADO requests, the
same ledger rows and the same answer to Event Grid (see tests/logicapp_stack.py for the two sides)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import all_samples, sample
from tests.logicapp_stack import Observed, Pair, pair


@pytest.fixture
def both(azurite: str, table_name: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pair]:
    with pair(azurite, table_name) as p:
        for name, value in p.env.items():  # the relay runs in process: the environment a job gets
            monkeypatch.setenv(name, value)
        yield p


def same(logicapp: Observed, runbook: Observed) -> None:
    assert logicapp.requests == runbook.requests
    assert logicapp.rows == runbook.rows
    assert logicapp.status == runbook.status


def body(*events: Any) -> bytes:
    return json.dumps(list(events)).encode()


@pytest.mark.parametrize(("schema", "name"), all_samples())
def test_each_sample_event(both: Pair, schema: str, name: str) -> None:
    runbook, logicapp = both.deliver(body(sample(schema, name)))
    same(logicapp, runbook)
    assert runbook.status == 200


def completed_status_change() -> dict[str, Any]:
    event = sample("cloud-events-schema", "run_status_changed")
    event["id"], event["data"]["runStatus"] = "another-delivery", "Completed"
    return event


def failed_status_change() -> dict[str, Any]:
    event = sample("event-grid-schema", "run_status_changed")
    event["data"]["runStatus"] = "Failed"
    return event


def test_redelivery_is_a_duplicate(both: Pair) -> None:
    delivery = body(sample("event-grid-schema", "model_registered"))
    same(*both.deliver(delivery)[::-1])
    runbook, logicapp = both.deliver(delivery)
    same(logicapp, runbook)
    assert (logicapp.status, logicapp.requests, len(both.logicapp.stack.ado.runs)) == (200, [], 1)


def test_run_completed_and_status_changed_completed_are_one_outcome(both: Pair) -> None:
    same(*both.deliver(body(sample("event-grid-schema", "run_completed")))[::-1])
    runbook, logicapp = both.deliver(body(completed_status_change()))
    same(logicapp, runbook)
    assert (logicapp.requests, len(both.logicapp.stack.ado.runs)) == ([], 1)


def test_a_batch_of_every_sample_both_schemas_and_a_triage_route(both: Pair) -> None:
    events = [sample(schema, name) for schema, name in all_samples()] + [failed_status_change()]
    runbook, logicapp = both.deliver(body(*events))
    same(logicapp, runbook)
    assert len(logicapp.requests) == 5  # EG and CE copies of one outcome start it once; triage starts another


def foreign() -> dict[str, Any]:
    event = sample("event-grid-schema", "model_registered")
    event["topic"] = event["topic"].replace("{workspace-name}", "someone-elses")
    return event


def without(key: str, *, data: bool = False) -> dict[str, Any]:
    event = sample("event-grid-schema", "run_completed")
    (event["data"] if data else event).pop(key)
    return event


VALIDATION: dict[str, Any] = {"id": "2d1781af-3a4c-4d7c-bd0c-e34b19da4e66", "topic": "/subscriptions/x", "subject": "",
              "data": {"validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6",
                       "validationUrl": "https://rp-eastus2.eventgrid.azure.net/eventsubscriptions/x/validate"},
              "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent", "eventTime": "2018-01-25T22:12:19Z",
              "metadataVersion": "1", "dataVersion": "1"}


@pytest.mark.parametrize(("delivery", "status"), [
    (body(foreign()), 200),
    (body(without("runId", data=True)), 200),
    (body(without("runType", data=True)), 200),
    (body(without("eventTime")), 200),
    (body(without("topic")), 200),
    (body({**sample("event-grid-schema", "model_registered"), "specversion": "1.0"}), 200),
    (body({**sample("event-grid-schema", "model_registered"), "eventType": "Microsoft.Storage.BlobCreated"}), 200),
    (body({**sample("event-grid-schema", "model_registered"), "data": None}), 200),
    (body(VALIDATION), 200),
    (body(), 200),
    (body(foreign(), sample("event-grid-schema", "model_deployed")), 200),
    (b"[{not json", 400),
    (b'"a string"', 400),
    (b"42", 400),
], ids=["foreign-topic", "no-runId", "no-runType", "no-eventTime", "no-topic", "mixed-schemas", "not-aml",
        "null-data", "validation", "empty-batch", "foreign-beside-good", "not-json", "string", "number"])
def test_refused_and_skipped_input_triggers_nothing_it_should_not(both: Pair, delivery: bytes, status: int) -> None:
    runbook, logicapp = both.deliver(delivery)
    same(logicapp, runbook)
    assert logicapp.status == status


def test_the_handshake_is_answered_with_the_validation_code(both: Pair) -> None:
    result = both.logicapp.workflow.post(body(VALIDATION))  # type: ignore[union-attr]
    assert (result.response.status, result.response.body) == (200, {"validationResponse":
                                                                      VALIDATION["data"]["validationCode"]})


@pytest.mark.parametrize("fault", ["400", "403", "404", "429-once", "429-always", "503-once", "502", "timeout"])
def test_ado_faults(both: Pair, fault: str) -> None:
    delivery = body(sample("event-grid-schema", "model_deployed"))
    for side in (both.runbook, both.logicapp):
        ado = side.stack.ado
        if fault == "timeout":
            ado.delay(2.5)  # longer than both handlers' 2 s timeout; ADO still queues the run afterwards
        elif fault == "429-always":
            ado.fail(429, retry_after=1, times=5)
        else:
            ado.fail(int(fault[:3]), times=1)
    runbook, logicapp = both.deliver(delivery)
    same(logicapp, runbook)
    expected = 200 if fault.endswith("-once") else 500
    assert logicapp.status == expected


def test_a_failure_is_taken_over_by_the_next_delivery(both: Pair) -> None:
    delivery = body(sample("event-grid-schema", "model_registered"))
    for side in (both.runbook, both.logicapp):
        side.stack.ado.fail(400)
    same(*both.deliver(delivery)[::-1])
    runbook, logicapp = both.deliver(delivery)
    same(logicapp, runbook)
    assert (logicapp.status, [r["attempts"] for r in logicapp.rows], len(both.logicapp.stack.ado.runs)) == (
        200, [2], 1)
