"""The Logic App behaves like the runbook, by execution: for the same delivery, the same ADO requests, the
same ledger rows and the same answer to Event Grid (see tests/logicapp_stack.py for the two sides)."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from amlrelay.events import parse_events
from amlrelay.relay import AMBIGUOUS
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


@pytest.mark.parametrize("tags", [{}, {"branch": ""}, {"branch": None}, {"branch": "release/2"}],
                         ids=["missing", "empty", "null", "present"])
def test_a_branch_tag_with_a_fallback_starts_the_same_run(both: Pair, tags: dict[str, Any]) -> None:
    """routes.json's ``{{ runTags.branch | main }}``: a missing, null or empty tag starts the run on main
    in both handlers, never on 'refs/heads/'."""
    event = sample("event-grid-schema", "run_completed")
    event["data"]["runTags"] = tags
    runbook, logicapp = both.deliver(body(event))
    same(logicapp, runbook)
    [sent] = logicapp.requests
    assert sent["body"]["resources"]["repositories"]["self"]["refName"] == f"refs/heads/{tags.get('branch') or 'main'}"


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
    (body(42, "text", [1], sample("event-grid-schema", "model_deployed")), 200),
    (body({**sample("cloud-events-schema", "model_registered"), "data": ""}), 200),
    (body({**sample("event-grid-schema", "run_completed"), "subject": 63}), 200),
    (body({**sample("cloud-events-schema", "run_completed"), "time": True}), 200),
    (body(dict(sample("event-grid-schema", "run_status_changed"),
               data={**sample("event-grid-schema", "run_status_changed")["data"], "experimentName": 7})), 200),
    (body(dict(sample("event-grid-schema", "model_registered"),
               data={**sample("event-grid-schema", "model_registered")["data"], "ModelTags": "area"})), 200),
    (b"[{not json", 400),
    (b'"a string"', 400),
    (b"42", 400),
], ids=["foreign-topic", "no-runId", "no-runType", "no-eventTime", "no-topic", "mixed-schemas", "not-aml",
        "null-data", "validation", "empty-batch", "foreign-beside-good", "non-objects-beside-good",
        "data-not-object", "subject-number", "time-boolean", "experiment-number", "tags-not-object", "not-json",
        "string", "number"])
def test_refused_and_skipped_input_triggers_nothing_it_should_not(both: Pair, delivery: bytes, status: int) -> None:
    runbook, logicapp = both.deliver(delivery)
    same(logicapp, runbook)
    assert logicapp.status == status


def test_the_handshake_is_answered_with_the_validation_code(both: Pair) -> None:
    result = both.logicapp.workflow.post(body(VALIDATION))  # type: ignore[union-attr]
    assert (result.response.status, result.response.body) == (200, {"validationResponse":
                                                                      VALIDATION["data"]["validationCode"]})


@pytest.mark.parametrize("fault", ["400", "403", "404", "429-once", "429-always", "503-once", "502", "timeout",
                                   "203-signin", "429-then-203-signin"])
def test_ado_faults(both: Pair, fault: str) -> None:
    delivery = body(sample("event-grid-schema", "model_deployed"))
    for side in (both.runbook, both.logicapp):
        ado = side.stack.ado
        if fault == "timeout":
            ado.delay(2.5)  # longer than both handlers' 2 s timeout; ADO still queues the run afterwards
        elif fault == "429-always":
            ado.fail(429, retry_after=1, times=5)
        elif fault == "203-signin":  # how ADO answers a credential it does not accept: a failure, never a 200
            ado.signin_page()
        elif fault == "429-then-203-signin":
            ado.fail(429, retry_after=1, times=1)
            ado.signin_page()
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


def test_pat_mode_reads_the_pat_with_the_identity_and_hides_it(azurite: str, table_name: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    with pair(azurite, table_name, pat=True) as p:
        for name, value in p.env.items():
            monkeypatch.setenv(name, value)
        runbook, logicapp = p.deliver(body(sample("event-grid-schema", "model_registered")))
        same(logicapp, runbook)
        assert logicapp.status == 200
        [sent] = p.logicapp.stack.ado.run_requests
        assert sent.headers["Authorization"].startswith("Basic ")  # the PAT, never a bearer token
        secured = [a for a in p.logicapp.workflow.definition["actions"].values()  # type: ignore[union-attr]
                   if a.get("type") == "Http"]
        assert [a["runtimeConfiguration"]["secureData"]["properties"] for a in secured] == [["inputs", "outputs"]]


def replay_with_relay(both: Pair, **env: str) -> Any:
    """``amlrelay replay --failed`` over the Logic App's ledger (settled at once) and its ADO."""
    from amlrelay.runbook import build_relay
    from amlrelay.settings import resolve

    settings = resolve({}, env={**both.env, "AMLRELAY_ADO_BASE_URL": both.logicapp.stack.ado.url,
                                "AMLRELAY_LEDGER_TABLE": both.logicapp.table.table_name,
                                "AMLRELAY_SETTLE_AFTER": "0", **env})
    relay = build_relay(settings, both.routes)
    assert relay.ledger is not None
    [record] = relay.ledger.recent(10, state="failed")
    assert (record.reason or "").startswith(AMBIGUOUS)
    event = json.loads(record.event_json or "null")
    return relay.handle(parse_events([event]), raw=[event])


@pytest.mark.parametrize("fault", ["500-nothing-created", "reset-after-create", "500-after-create"])
def test_ambiguous_answers_are_never_resent_and_replay_settles_them(both: Pair, fault: str) -> None:
    """The documented difference: the runbook searches the pipeline's runs at once (and resends after a
    500 that created nothing); the workflow records ``[ambiguous]``, answers 500, and the Python replay
    reconciles it. Either way the outcome ends with exactly one run."""
    ado = both.logicapp.stack.ado
    {"500-nothing-created": lambda: ado.fail(500), "reset-after-create": lambda: ado.reset(after_create=True),
     "500-after-create": lambda: ado.accept_then_fail(500)}[fault]()
    assert both.logicapp.workflow is not None  # its Wait really waits here: the ledger's clock must not run ahead
    both.logicapp.workflow = dataclasses.replace(both.logicapp.workflow, sleep=time.sleep)
    logicapp = both.deliver_logicapp(body(sample("event-grid-schema", "model_registered")))
    assert (logicapp.status, len(logicapp.requests), [r["reason"] for r in logicapp.rows]) == (500, 1, ["ambiguous"])
    [outcome] = replay_with_relay(both)
    assert outcome.outcome in ("triggered", "duplicate")
    assert len(ado.runs) == 1
    again = both.deliver_logicapp(body(sample("event-grid-schema", "model_registered")))
    assert (again.status, again.requests, again.rows[0]["state"]) == (200, [], "triggered")


@pytest.mark.parametrize("first", ["runbook", "logicapp"])
def test_both_handlers_share_one_ledger(both: Pair, first: str) -> None:
    """The contract in ledger.table_address and AmlEvent.outcome_key: either handler's record stops the other."""
    assert both.logicapp.workflow is not None
    shared = dataclasses.replace(both.logicapp.workflow, parameters={
        **both.logicapp.workflow.parameters, "ledgerTable": both.runbook.table.table_name})
    run_completed, status_changed = sample("event-grid-schema", "run_completed"), completed_status_change()
    if first == "runbook":
        assert both.deliver_runbook(body(run_completed)).status == 200
        result = shared.post(body(status_changed))
        assert (result.response.status, both.logicapp.stack.ado.run_requests) == (200, [])
    else:
        assert shared.post(body(run_completed)).response.status == 200
        assert len(both.logicapp.stack.ado.runs) == 1
        runbook = both.deliver_runbook(body(status_changed))  # reads the workflow's row with the Python ledger
        assert (runbook.status, runbook.requests) == (200, [])
        [row] = runbook.rows
        assert (row["state"], row["ado_run_id"]) == ("triggered", 1)


def claim_row(both: Pair, side: str, event: dict[str, Any], *, minutes_ago: float) -> None:
    """A claim another holder wrote ``minutes_ago`` and never finished (as a job that died would leave it)."""
    from datetime import datetime, timedelta, timezone

    from amlrelay.events import parse_event
    from amlrelay.ledger import table_address
    from amlrelay.models import AmlEvent

    parsed = parse_event(event)
    assert isinstance(parsed, AmlEvent)
    key = f"{parsed.outcome_key()}|deploy-registered-model"
    pk, rk = table_address(key)
    when = datetime.now(timezone.utc) - timedelta(minutes=minutes_ago)
    table = (both.runbook if side == "runbook" else both.logicapp).table
    table.create_entity({"PartitionKey": pk, "RowKey": rk, "schema": 1, "key": key,
                         "route": "deploy-registered-model", "event_id": "earlier", "event_type": "ModelRegistered",
                         "state": "claimed", "claimed_at": when, "updated_at": when, "attempts": 1,
                         "holder": "a-job-that-died", "claim_id": "c0ffee", "event_json": json.dumps(event),
                         "event_json_truncated": False})


def test_a_fresh_claim_of_another_holder_is_a_duplicate(both: Pair) -> None:
    event = sample("event-grid-schema", "model_registered")
    for side in ("runbook", "logicapp"):
        claim_row(both, side, event, minutes_ago=1)
    runbook, logicapp = both.deliver(body(event))
    same(logicapp, runbook)
    assert (logicapp.status, logicapp.requests) == (200, [])


def test_a_stale_claim_is_left_to_replay_and_replay_settles_it(both: Pair) -> None:
    """Documented difference: the runbook takes a stale claim over at once (searching the pipeline's runs
    first); the workflow cannot search, answers 500 and leaves it to ``amlrelay replay --stale``."""
    event = sample("event-grid-schema", "model_registered")
    claim_row(both, "logicapp", event, minutes_ago=45)
    logicapp = both.deliver_logicapp(body(event))
    assert (logicapp.status, logicapp.requests, logicapp.rows[0]["state"]) == (500, [], "claimed")
    from amlrelay.runbook import build_relay
    from amlrelay.settings import resolve

    relay = build_relay(resolve({}, env={**both.env, "AMLRELAY_ADO_BASE_URL": both.logicapp.stack.ado.url,
                                         "AMLRELAY_LEDGER_TABLE": both.logicapp.table.table_name}), both.routes)
    assert relay.ledger is not None
    [stale] = relay.ledger.stale_claims()
    events = [json.loads(stale.event_json or "null")]
    [outcome] = relay.handle(parse_events(events), raw=events)
    assert (outcome.outcome, len(both.logicapp.stack.ado.runs)) == ("triggered", 1)
    again = both.deliver_logicapp(body(event))
    assert (again.status, again.requests) == (200, [])


def test_an_event_too_long_for_one_table_property_is_claimed_and_flagged(both: Pair) -> None:
    event = sample("event-grid-schema", "model_registered")
    event["data"]["ModelProperties"] = {f"p{i}": "x" * 1000 for i in range(40)}  # ~40,000 characters
    runbook, logicapp = both.deliver(body(event))
    assert (logicapp.status, len(logicapp.requests)) == (runbook.status, len(runbook.requests)) == (200, 1)
    [row] = both.logicapp.table.list_entities()
    assert row["event_json_truncated"] is True
    assert len(row["event_json"]) == 32_000


def test_the_workflow_never_starts_a_run_the_runbook_refuses_on_mutated_events(both: Pair) -> None:
    """60 sample events, each with one random mutation (tests/logicapp_mutants.py), through both handlers.
    The documented exception: an upper-case CloudEvents attribute name, which azure-core refuses as an
    extension and the workflow does not read."""
    from tests.logicapp_mutants import agreement

    agree, split = agreement(both, 60, seed=3)
    started = [c for c in split["workflow started a run the runbook refused"] if not c.startswith("case/cloud")]
    assert started == []
    assert agree >= 50


def padded(size: int) -> bytes:
    """One model_registered event padded (in a model property) to a body of about ``size`` bytes."""
    event = sample("event-grid-schema", "model_registered")
    event["data"]["ModelProperties"] = {"pad": ""}
    event["data"]["ModelProperties"]["pad"] = "x" * (size - len(body(event)))
    return body(event)


def test_a_body_larger_than_any_event_grid_delivery_is_refused_by_both(both: Pair) -> None:
    """Over 1 MB (+1 KiB) no Event Grid delivery can be (one event of at most 1 MB each): 400, nothing
    claimed or started, by both handlers (the runbook refuses from 512 KB, Automation's webhook limit)."""
    from amlrelay.logicapp._generate import MAX_BODY_BYTES

    runbook, logicapp = both.deliver(padded(MAX_BODY_BYTES + 1))
    same(logicapp, runbook)
    assert (logicapp.status, logicapp.requests, logicapp.rows) == (400, [], [])


def test_an_event_between_512_kb_and_1_mb_is_handled_by_the_workflow_only(both: Pair) -> None:
    """The documented difference: Event Grid may deliver such an event (up to 1 MB), Automation's webhook
    cannot take it (the runbook answers 400, as Automation would refuse it); the workflow handles it, with
    its ledger copy cut and flagged (so only Event Grid's retries can redeliver it)."""
    delivery = padded(600 * 1024)
    runbook, logicapp = both.deliver(delivery)
    assert (runbook.status, runbook.requests) == (400, [])
    assert (logicapp.status, len(logicapp.requests), [r["event"] for r in logicapp.rows]) == (200, 1, ["truncated"])
