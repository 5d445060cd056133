"""Verification against AML in the workflow (``generate(verify=True)``): the judgement is
``amlrelay.verify``'s for every pair of job statuses, and by execution the workflow refuses, fails and
confirms the same deliveries as the runbook with AMLRELAY_VERIFY=true."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest

from amlrelay.events import parse_event
from amlrelay.logicapp import ExpressionError, evaluate_value
from amlrelay.logicapp import _verify as wdl
from amlrelay.models import AmlEvent
from amlrelay.verify import judge_job
from tests.conftest import SAMPLE_WORKSPACE, all_samples, sample
from tests.logicapp_stack import Pair, pair
from tests.test_logicapp_equivalence import same

STATUSES = ["NotStarted", "Starting", "Provisioning", "Preparing", "Queued", "Running", "NotResponding", "Paused",
            "Finalizing", "CancelRequested", "Completed", "Failed", "Canceled"]


class _Judged:
    """Just enough of a run for the verification expressions: the event and AML's answer."""

    def __init__(self, event: dict[str, Any], job: dict[str, Any]) -> None:
        self.event, self.job = event, job

    def trigger_outputs(self) -> dict[str, Any]:
        return {}

    def parameter(self, name: str) -> Any:
        if name == "jobStatusRanks":
            return wdl.RANKS
        raise ExpressionError(name)

    def variable(self, name: str) -> Any:
        raise ExpressionError(name)

    def action(self, name: str) -> dict[str, Any]:
        return {"status": "Succeeded", "outputs": {"statusCode": 200, "body": self.job}}

    def loop_item(self, name: str | None) -> Any:
        return self.event

    def workflow(self) -> dict[str, Any]:
        return {}

    def now(self) -> datetime:
        return datetime.now(timezone.utc)


def run_event(claimed: str) -> dict[str, Any]:
    event = sample("event-grid-schema", "run_status_changed")
    event["data"]["runStatus"] = claimed
    return event


@pytest.mark.parametrize("claimed", STATUSES)
@pytest.mark.parametrize("current", STATUSES)
def test_every_status_pair_is_judged_like_verify_judge_job(claimed: str, current: str) -> None:
    raw = run_event(claimed)
    event = parse_event(raw)
    assert isinstance(event, AmlEvent)
    job_id = f"{SAMPLE_WORKSPACE}/jobs/{raw['data']['runId']}"
    job = {"id": job_id, "properties": {"status": current, "experimentName": raw["data"]["experimentName"]}}
    refusal = judge_job(event, current, raw["data"]["experimentName"], job_id)
    ctx = _Judged(raw, job)
    confirmed = evaluate_value("@" + wdl.confirmed(), ctx)
    refuted = evaluate_value("@" + wdl.refuted(), ctx)
    expected = "confirmed" if refusal is None else refusal.outcome
    assert ("confirmed" if confirmed else "rejected" if refuted else "failed") == expected


@pytest.fixture
def verified(azurite: str, table_name: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pair]:
    with pair(azurite, table_name, verify=True) as p:
        for name, value in p.env.items():
            monkeypatch.setenv(name, value)
        yield p


def body(*events: Any) -> bytes:
    return json.dumps(list(events)).encode()


def test_genuine_samples_are_confirmed_and_triggered(verified: Pair) -> None:
    events = [sample(schema, name) for schema, name in all_samples()]
    verified.emitted(events)
    runbook, logicapp = verified.deliver(body(*events))
    same(logicapp, runbook)
    assert len(logicapp.requests) == 4


def forged(kind: str, p: Pair) -> dict[str, Any]:
    event = sample("event-grid-schema", "run_completed")
    run_id, experiment = event["data"]["runId"], event["data"]["experimentName"]
    for side in (p.runbook, p.logicapp):
        aml = side.stack.aml
        assert aml is not None
        if kind == "ended-otherwise":
            aml.add_job(run_id, "Failed", experiment_name=experiment)
        elif kind == "not-yet":
            aml.add_job(run_id, "Running", experiment_name=experiment)
        elif kind == "other-experiment":
            aml.add_job(run_id, "Completed", experiment_name="another")
    if kind == "unknown-model":
        return sample("event-grid-schema", "model_registered")
    if kind == "subject-mismatch":
        p.emitted([event])
        event["subject"] = "experiments/someone/runs/else"
    return event


@pytest.mark.parametrize(("kind", "status"), [("unknown-run", 200), ("ended-otherwise", 200), ("not-yet", 500),
                                              ("other-experiment", 200), ("unknown-model", 200),
                                              ("subject-mismatch", 200)])
def test_forged_or_early_events_start_nothing(verified: Pair, kind: str, status: int) -> None:
    runbook, logicapp = verified.deliver(body(forged(kind, verified)))
    same(logicapp, runbook)
    assert (logicapp.status, logicapp.requests, logicapp.rows) == (status, [], [])


def test_aml_trouble_fails_the_event(verified: Pair) -> None:
    event = sample("event-grid-schema", "model_registered")
    verified.emitted([event])
    for side in (verified.runbook, verified.logicapp):
        assert side.stack.aml is not None
        side.stack.aml.fail(403, times=10)
    runbook, logicapp = verified.deliver(body(event))
    same(logicapp, runbook)
    assert (logicapp.status, logicapp.requests) == (500, [])




@pytest.mark.parametrize("workspace", ["exists", "deleted"])
def test_a_404_refutes_only_when_the_workspace_exists(verified: Pair, workspace: str) -> None:
    """As verify._reader: AML has no such model version -> rejected (200) if the workspace answers, but
    failed (500, Event Grid retries) if the workspace itself is not found (a wrong ARM URL, a deleted
    workspace): refusing every event for ever would hide the misconfiguration."""
    event = sample("event-grid-schema", "model_registered")  # never emitted: AML has no such model version
    if workspace == "deleted":
        for side in (verified.runbook, verified.logicapp):
            assert side.stack.aml is not None
            side.stack.aml.workspace = "mlw-deleted"  # every read of the event's workspace now answers 404
    runbook, logicapp = verified.deliver(body(event))
    same(logicapp, runbook)
    assert (logicapp.status, logicapp.requests, logicapp.rows) == (200 if workspace == "exists" else 500, [], [])
