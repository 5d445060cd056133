"""Exactly once, end to end: the relay with a real ledger (Azurite) and the strict ADO stand-in.

Each test ends in one of two states and asserts which: the outcome's pipeline run exists exactly once, or
the event is recorded failed with a reason (and the job exits non-zero). Never two runs, never silence.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from amlrelay.events import parse_events
from amlrelay.ledger import Ledger
from amlrelay.models import AmlEvent
from amlrelay.record import exit_code
from amlrelay.relay import AMBIGUOUS, Relay
from amlrelay.routes import load_routes, parse_routes
from amlrelay.runbook import build_relay
from amlrelay.settings import resolve
from tests import secret_guard
from tests.conftest import ROUTES_FILE, SAMPLE_WORKSPACE, sample
from tests.servers.ado import PipelineDef
from tests.stack import Stack, local_stack
from tests.test_tagback import RecordedTags
from tests.test_webhook import argv_forms


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    with local_stack() as s:
        for name, value in s.env().items():  # the relay runs in process here: same environment as a job
            monkeypatch.setenv(name, value)
        yield s


@pytest.fixture
def ledger_env(azurite: str, table_name: str) -> dict[str, str]:
    return {"AMLRELAY_LEDGER": "true", "AMLRELAY_LEDGER_CONNECTION_STRING": azurite,
            "AMLRELAY_LEDGER_TABLE": table_name}


def relay_for(stack: Stack, ledger_env: dict[str, str], routes: Any = None, **overrides: str) -> Relay:
    env = {**stack.env(), **ledger_env, **overrides}
    settings = resolve({}, env=env)
    relay = build_relay(settings, routes or load_routes(ROUTES_FILE))
    assert relay.ledger is not None
    relay.ledger.ensure_table()
    return relay


def deliver(relay: Relay, *events: dict[str, Any]) -> list[Any]:
    return relay.handle(parse_events(list(events)), raw=list(events))


def completed_status_change() -> dict[str, Any]:
    event = sample("cloud-events-schema", "run_status_changed")
    event["id"], event["data"]["runStatus"] = "another-delivery", "Completed"
    return event


def test_redelivery_and_completed_status_change_start_one_run(stack: Stack, ledger_env: dict[str, str]) -> None:
    relay = relay_for(stack, ledger_env)
    first = deliver(relay, sample("event-grid-schema", "run_completed"))
    again = deliver(relay, sample("event-grid-schema", "run_completed"), completed_status_change())
    assert [o.outcome for o in first + again] == ["triggered", "duplicate", "duplicate"]
    assert {o.ado_run_id for o in first + again} == {stack.ado.runs[0]["id"]}
    assert {o.ado_run_url for o in first + again} == {stack.ado.runs[0]["_links"]["web"]["href"]}
    assert [o.reason for o in again] == ["already triggered", "already triggered"]
    assert len(stack.ado.runs) == 1


def test_duplicate_across_processes_as_automation_runs_them(stack: Stack, ledger_env: dict[str, str]) -> None:
    argv = argv_forms([sample("event-grid-schema", "model_registered")])["hashtable-split"]
    outputs = []
    for _ in range(2):
        done = subprocess.run(stack.runbook_command(*argv), env={**stack.env(), **ledger_env}, capture_output=True,
                              text=True, timeout=60, check=False)
        secret_guard.record("runbook stdout", done.stdout + done.stderr)
        outputs.append((done.returncode, json.loads(done.stdout.splitlines()[0])))
    assert [(code, out["outcome"]) for code, out in outputs] == [(0, "triggered"), (0, "duplicate")]
    assert outputs[1][1]["ado_run_id"] == outputs[0][1]["ado_run_id"]
    assert len(stack.ado.runs) == 1


@pytest.mark.parametrize("fault", ["accept_then_500", "accept_then_502", "reset_after_create"])
def test_ado_queued_the_run_but_the_answer_was_lost(stack: Stack, ledger_env: dict[str, str], fault: str) -> None:
    relay = relay_for(stack, ledger_env)
    if fault.startswith("accept_then_"):
        stack.ado.accept_then_fail(int(fault[-3:]))
    else:
        stack.ado.reset(after_create=True)
    [outcome] = deliver(relay, sample("event-grid-schema", "model_registered"))
    assert outcome.outcome == "triggered"
    assert len(stack.ado.runs) == 1  # found and adopted, not sent again
    assert outcome.ado_run_id == stack.ado.runs[0]["id"]


def test_a_500_that_created_nothing_is_resent_once(stack: Stack, ledger_env: dict[str, str]) -> None:
    relay = relay_for(stack, ledger_env)
    stack.ado.fail(500)  # ADO's application answered: a run it had queued would be visible, and none is
    [outcome] = deliver(relay, sample("event-grid-schema", "model_deployed"))
    assert outcome.outcome == "triggered"
    assert len(stack.ado.runs) == 1


@pytest.mark.parametrize("fault", ["slow_answer", "reset_before_create"])
def test_an_unsettled_answer_is_not_resent_until_ado_had_time(stack: Stack, ledger_env: dict[str, str],
                                                              fault: str) -> None:
    relay = relay_for(stack, ledger_env, AMLRELAY_TIMEOUT="1", AMLRELAY_SETTLE_AFTER="2")
    if fault == "slow_answer":
        stack.ado.delay(1.5)  # ADO queues the run after our timeout: a look right away finds nothing
    else:
        stack.ado.reset()
    event = sample("event-grid-schema", "model_registered")
    [first] = deliver(relay, event)
    assert first.outcome == "failed"
    assert (first.reason or "").startswith(AMBIGUOUS)
    assert "nothing is sent again now" in (first.reason or "")
    [early] = deliver(relay_for(stack, ledger_env, AMLRELAY_SETTLE_AFTER="2"), event)  # a redelivery too soon
    assert early.outcome == "failed"
    assert re.fullmatch(re.escape(AMBIGUOUS) + r"An earlier attempt's request may still be in ADO's hands \([01] s "
                        r"ago\)\. The next delivery or `amlrelay replay --failed` \(scheduled in Automation\) looks "
                        r"for the run again and sends only if it is not there\.", early.reason or ""), early.reason
    time.sleep(2.2)
    [settled] = deliver(relay_for(stack, ledger_env, AMLRELAY_SETTLE_AFTER="2"), event)
    expected = ("duplicate", 1) if fault == "slow_answer" else ("triggered", 1)
    assert (settled.outcome, len(stack.ado.runs)) == expected  # adopted the slow run, or sent the lost one
    time.sleep(0.5)
    assert len(stack.ado.runs) == 1


def test_holder_died_between_ado_call_and_ledger_write(stack: Stack, ledger_env: dict[str, str]) -> None:
    relay = relay_for(stack, ledger_env)
    assert relay.ledger is not None
    event = sample("event-grid-schema", "run_completed")
    parsed = parse_events([event])[0]
    key = f"{parsed.outcome_key()}|evaluate-trained-model"  # type: ignore[union-attr]
    claim = relay.ledger.claim(key, route="evaluate-trained-model", event_id="x", event_type="RunCompleted",
                               event_json=json.dumps(event))
    assert claim.status == "claimed"
    from amlrelay.router import build_request

    assert relay.trigger is not None
    assert isinstance(parsed, AmlEvent)
    relay.trigger.run_pipeline(build_request(load_routes(ROUTES_FILE).by_name("evaluate-trained-model"), parsed))
    # ... and the process dies here. Much later, Event Grid or a replay delivers the event again:
    relay.ledger = Ledger.from_connection_string(ledger_env["AMLRELAY_LEDGER_CONNECTION_STRING"],
                                                 table=ledger_env["AMLRELAY_LEDGER_TABLE"],
                                                 stale_after=timedelta(seconds=0))
    [outcome] = deliver(relay, event)
    assert outcome.outcome == "duplicate"
    assert outcome.reason == "started by an earlier attempt that could not record it"
    assert (outcome.ado_run_id, outcome.ado_run_url) == (stack.ado.runs[0]["id"],
                                                         stack.ado.runs[0]["_links"]["web"]["href"])
    assert len(stack.ado.runs) == 1
    record = relay.ledger.get(key)
    assert record is not None
    assert record.state == "triggered"
    assert record.ado_run_id == stack.ado.runs[0]["id"]


def test_unreconcilable_route_fails_loudly_instead_of_guessing(stack: Stack, ledger_env: dict[str, str]) -> None:
    routes = parse_routes(json.dumps({"version": 1, "routes": [{
        "name": "no-fingerprint", "events": ["ModelRegistered"], "pipeline": {"project": "mlops", "id": 20}}]}))
    relay = relay_for(stack, ledger_env, routes=routes)
    stack.ado.accept_then_fail(500)
    [outcome] = deliver(relay, sample("event-grid-schema", "model_registered"))
    assert outcome.outcome == "failed"
    assert outcome.reason.startswith(AMBIGUOUS)
    assert "cannot tell whether an earlier attempt" in outcome.reason
    [again] = deliver(relay, sample("event-grid-schema", "model_registered"))  # a redelivery does not guess
    assert again.outcome == "failed"
    assert len(stack.ado.runs) == 1
    assert exit_code([outcome]) == 1


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda s: s.identity.fail(500, times=20), "No Entra token"),
        (lambda s: s.ado.fail(403), "HTTP 403"),
        (lambda s: s.ado.fail(429, retry_after=0, times=20), "throttling"),
        (lambda s: s.ado.fail(503, times=20), "unavailable"),
    ],
)
def test_a_failure_is_recorded_and_the_next_delivery_triggers_once(stack: Stack, ledger_env: dict[str, str],
                                                                   break_it: Any, message: str) -> None:
    relay = relay_for(stack, ledger_env, AMLRELAY_MAX_RETRIES="2")
    break_it(stack)
    [failed] = deliver(relay, sample("event-grid-schema", "dataset_drift_detected"))
    assert failed.outcome == "failed"
    assert message in (failed.reason or "")
    assert stack.ado.runs == []
    stack.identity.reset_state()
    stack.ado.reset_state()
    relay = relay_for(stack, ledger_env)  # the redelivery is a new job: a new process and credential
    [retried] = deliver(relay, sample("event-grid-schema", "dataset_drift_detected"))
    assert retried.outcome == "triggered", retried.reason
    assert len(stack.ado.runs) == 1


def test_unreachable_ledger_triggers_nothing(stack: Stack, ledger_env: dict[str, str]) -> None:
    broken = {**ledger_env, "AMLRELAY_LEDGER_CONNECTION_STRING": ledger_env["AMLRELAY_LEDGER_CONNECTION_STRING"]
              .replace("127.0.0.1:", "127.0.0.1:1")}
    settings = resolve({}, env={**stack.env(), **broken})
    relay = build_relay(settings, load_routes(ROUTES_FILE))
    [outcome] = deliver(relay, sample("event-grid-schema", "model_registered"))
    assert outcome.outcome == "failed"
    assert (outcome.reason or "").startswith("nothing triggered")
    assert stack.ado.requests == []


def test_foreign_workspace_never_reaches_the_ledger(stack: Stack, ledger_env: dict[str, str]) -> None:
    relay = relay_for(stack, ledger_env)
    event = sample("event-grid-schema", "model_registered")
    event["topic"] = SAMPLE_WORKSPACE.replace("{workspace-name}", "other")
    [outcome] = deliver(relay, event)
    assert outcome.outcome == "rejected"
    assert relay.ledger is not None
    assert relay.ledger.recent() == []


def test_a_resend_that_fails_too_is_recorded_on_the_renewed_claim(stack: Stack, ledger_env: dict[str, str]) -> None:
    relay = relay_for(stack, ledger_env, AMLRELAY_SETTLE_AFTER="0")
    stack.ado.fail(500, times=2)  # ambiguous, nothing created; the one resend meets the same
    event = sample("event-grid-schema", "model_deployed")
    [outcome] = deliver(relay, event)
    assert outcome.outcome == "failed"
    assert (outcome.reason or "").startswith(AMBIGUOUS)
    assert "could not record" not in (outcome.reason or "")
    assert relay.ledger is not None
    [record] = relay.ledger.recent()
    assert record.state == "failed"
    assert len(stack.ado.run_requests) == 2
    assert stack.ado.runs == []
    [retried] = deliver(relay_for(stack, ledger_env, AMLRELAY_SETTLE_AFTER="0"), event)  # reconciles, sends
    assert retried.outcome == "triggered"
    assert len(stack.ado.runs) == 1


def test_reconciling_never_adopts_another_outcomes_run(stack: Stack, ledger_env: dict[str, str]) -> None:
    """Two drift outcomes of one monitor: a route that sends only the monitor's name cannot tell their runs
    apart, so after an answer lost it fails the second outcome instead of adopting the first one's run."""
    vague = parse_routes(json.dumps({"version": 1, "routes": [{
        "name": "retrain", "events": ["DatasetDriftDetected"],
        "pipeline": {"project": "mlops", "id": 30, "variables": {"AML_DRIFT_MONITOR": "{{ dataDriftName }}"}}}]}))
    first = sample("event-grid-schema", "dataset_drift_detected")
    second = json.loads(json.dumps(first))
    second["id"], second["data"]["RunId"], second["data"]["DataDriftId"] = "other-delivery", "run-2", "drift-2"
    stack.ado.add_pipeline("mlops", 30, PipelineDef("retrain", variables_settable_at_queue_time=frozenset(
        {"AML_DRIFT_MONITOR", "AML_DRIFT_ID", "AML_DRIFT_RUN_ID", "AML_WORKSPACE", "AML_EVENT_ID",
         "AML_DRIFT_COEFFICIENT"})))
    relay = relay_for(stack, ledger_env, routes=vague)
    [one] = deliver(relay, first)
    stack.ado.fail(500)
    [two] = deliver(relay, second)
    assert one.outcome == "triggered"
    assert two.outcome == "failed"
    assert (two.reason or "").startswith(AMBIGUOUS)
    assert two.ado_run_id is None
    shipped = relay_for(stack, ledger_env)  # routes.json sends dataDriftId and runId: the runs are told apart
    stack.ado.fail(500)
    third = json.loads(json.dumps(second))
    third["data"]["DataDriftId"] = "drift-3"
    [three] = deliver(shipped, third)
    assert three.outcome == "triggered"
    assert three.ado_run_id != one.ado_run_id
    assert len(stack.ado.runs) == 2


def test_identity_in_a_secret_variable_is_not_reconcilable(stack: Stack, ledger_env: dict[str, str]) -> None:
    """ADO never echoes a secret variable's value in a run, so a run cannot be recognised by it: a route whose
    outcome identity sits only in secret variables must fail an ambiguous answer rather than send again."""
    hidden = parse_routes(json.dumps({"version": 1, "routes": [{
        "name": "secret-identity", "events": ["ModelRegistered"],
        "pipeline": {"project": "mlops", "id": 31, "variables": {
            "AML_MODEL": {"value": "{{ modelName }}", "isSecret": True},
            "AML_MODEL_VERSION": {"value": "{{ modelVersion }}", "isSecret": True}}}}]}))
    stack.ado.add_pipeline("mlops", 31, PipelineDef("secret-identity", variables_settable_at_queue_time=frozenset(
        {"AML_MODEL", "AML_MODEL_VERSION"})))
    relay = relay_for(stack, ledger_env, routes=hidden)
    stack.ado.accept_then_fail(500)  # ADO queued the run, the answer was lost
    [outcome] = deliver(relay, sample("event-grid-schema", "model_registered"))
    assert len(stack.ado.runs) == 1  # never a second run for one outcome
    assert outcome.outcome == "failed"
    assert (outcome.reason or "").startswith(AMBIGUOUS)
    assert "cannot tell whether an earlier attempt" in (outcome.reason or "")


def test_identity_also_sent_in_the_clear_reconciles(stack: Stack, ledger_env: dict[str, str]) -> None:
    """A secret copy of the identity does no harm when the plain values travel too: the run is found by those."""
    mixed = parse_routes(json.dumps({"version": 1, "routes": [{
        "name": "mixed-identity", "events": ["ModelRegistered"],
        "pipeline": {"project": "mlops", "id": 32, "variables": {
            "AML_MODEL_SECRET": {"value": "{{ modelName }}:{{ modelVersion }}", "isSecret": True}},
            "templateParameters": {"modelName": "{{ modelName }}", "modelVersion": "{{ modelVersion }}"}}}]}))
    stack.ado.add_pipeline("mlops", 32, PipelineDef("mixed-identity", variables_settable_at_queue_time=frozenset(
        {"AML_MODEL_SECRET"}), template_parameters=frozenset({"modelName", "modelVersion"})))
    relay = relay_for(stack, ledger_env, routes=mixed)
    stack.ado.accept_then_fail(500)
    [outcome] = deliver(relay, sample("event-grid-schema", "model_registered"))
    assert (outcome.outcome, len(stack.ado.runs)) == ("triggered", 1)
    assert outcome.ado_run_id == stack.ado.runs[0]["id"]


def test_a_ledger_that_refuses_the_claim_fails_the_route_it_names(stack: Stack) -> None:
    """In process, no storage: a claim the ledger refuses (throttled, no role) sends nothing and the failure
    names the route, so the operator knows which pipeline did not start."""
    from amlrelay.errors import LedgerError

    class Refusing(Ledger):
        def claim(self, key: str, **kw: Any) -> Any:
            raise LedgerError("the table is throttling writes")

    relay = build_relay(resolve({}, env=stack.env()), load_routes(ROUTES_FILE))
    relay.ledger = Refusing.from_connection_string("UseDevelopmentStorage=true", table="refusing")
    [outcome] = deliver(relay, sample("event-grid-schema", "model_registered"))
    assert (outcome.outcome, outcome.route) == ("failed", "deploy-registered-model")
    assert outcome.reason == "nothing triggered: the table is throttling writes"
    assert stack.ado.requests == []


def test_a_redelivery_soon_after_an_open_answer_waits_then_adopts_the_run(stack: Stack,
                                                                          ledger_env: dict[str, str]) -> None:
    """An earlier attempt's answer was lost (recorded failed, ambiguous) and ADO did queue its run. A redelivery
    within AMLRELAY_SETTLE_AFTER sends and reads nothing, and fails ambiguous again with what happens next; so
    the attempt after the settle time still looks for the run first, and adopts it instead of starting a second."""
    from amlrelay.router import build_request, select

    relay = relay_for(stack, ledger_env)
    raw = sample("event-grid-schema", "model_registered")
    [event] = parse_events([raw])
    assert isinstance(event, AmlEvent)
    [route], _ = select(relay.routes, event)
    assert relay.ledger is not None
    assert relay.trigger is not None
    claim = relay.ledger.claim(f"{event.outcome_key()}|{route.name.lower()}", route=route.name, event_id=event.id,
                               event_type="ModelRegistered", event_json=json.dumps(raw))
    relay.trigger.run_pipeline(build_request(route, event))  # ADO queued it, but the answer was lost:
    relay.ledger.mark_failed(claim, f"{AMBIGUOUS}ADO failed pipeline {route.pipeline.pipeline_id} (HTTP 502).")
    [early] = deliver(relay, raw)
    assert (early.outcome, early.route) == ("failed", route.name)
    assert re.fullmatch(re.escape(AMBIGUOUS) + r"An earlier attempt's request may still be in ADO's hands \([01] s "
                        r"ago\)\. The next delivery or `amlrelay replay --failed` \(scheduled in Automation\) looks "
                        r"for the run again and sends only if it is not there\.", early.reason or ""), early.reason
    assert len(stack.ado.requests) == 1  # only the first attempt's POST
    relay.settle_after = timedelta(0)  # ADO has had its time; the adopted run is tagged as any other
    relay.tag_back = tags = RecordedTags(answer="tagging failed: HTTP 403 (the tag is retried by `amlrelay sweep`)")
    [settled] = deliver(relay, raw)
    [run] = stack.ado.runs
    assert (settled.outcome, settled.route, settled.ado_run_id) == ("duplicate", route.name, run["id"])
    assert settled.reason == "started by an earlier attempt that could not record it"
    assert settled.warning == "tagging failed: HTTP 403 (the tag is retried by `amlrelay sweep`)"
    assert [(target["kind"], run_id) for target, run_id, _ in tags.written] == [("model", run["id"])]
