"""Verification against AML in the workflow (``generate(verify=True)``): the judgement is
``amlrelay.verify``'s for every pair of job statuses, and by execution the workflow refuses, fails and
confirms the same deliveries as the runbook with AMLRELAY_VERIFY=true."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from amlrelay.cli import main
from amlrelay.errors import RoutesError
from amlrelay.events import parse_event
from amlrelay.logicapp import ExpressionError, evaluate_value, generate
from amlrelay.logicapp import _verify as wdl
from amlrelay.models import AmlEvent
from amlrelay.routes import parse_routes
from amlrelay.verify import judge_job, plan
from tests.conftest import SAMPLE_WORKSPACE, all_samples, sample
from tests.logicapp_stack import Pair, pair
from tests.test_forged_events import EXPERIMENT, MODEL_TAGS
from tests.test_forged_events import event as forged_event
from tests.test_logicapp_equivalence import same

STATUSES = ["NotStarted", "Starting", "Provisioning", "Preparing", "Queued", "Running", "NotResponding", "Paused",
            "Finalizing", "CancelRequested", "Completed", "Failed", "Canceled"]


class _Judged:
    """Just enough of a run for the verification expressions: the event, the event's side of the checks
    (the per-event Compose ``Event``, for routes that read no tags) and AML's answer (``Verify``)."""

    def __init__(self, event: dict[str, Any], job: dict[str, Any]) -> None:
        self.event, self.job = event, job
        self.facts: Any = None
        self.facts = evaluate_value(wdl.facts(()), self)

    def trigger_outputs(self) -> dict[str, Any]:
        return {}

    def parameter(self, name: str) -> Any:
        if name == "jobStatusRanks":
            return wdl.RANKS
        raise ExpressionError(name)

    def variable(self, name: str) -> Any:
        raise ExpressionError(name)

    def action(self, name: str) -> dict[str, Any]:
        if name == "Event":
            if self.facts is None:
                raise ExpressionError("the Event Compose has not run")
            return {"status": "Succeeded", "outputs": self.facts}
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


# --- the tag/property values the matched routes read, and the subject's shape (verify.judge_values, plan) ---

SUBJECTS = {
    "run_completed": ["experiments/{e}/runs/{r}", "", "runs/{r}", "experiments/{e}", "experiments/{e}/runs/{r}/x",
                      "experiments/{e}/runs/", "Experiments/{e}/runs/{r}", "experiments/x/runs/{r}",
                      "experiments/{e}/run/{r}"],
    "model_registered": ["models/{n}:{v}", "models/{n}", "models/{n}:{v}:1", "models/{n}:{v}/x", "model/{n}:{v}",
                         "models/other:{v}", "", "models/{n}:{v} "],
    "model_deployed": ["endpoints/{s}", "endpoints/{s}/x", "endpoint/{s}", "endpoints/", "endpoints/other"],
    "dataset_drift_detected": ["datadrifts/a/runs/b", "datadrift/a/run/b", "datadrifts//runs/", "datadrifts/a/runs",
                               "datadrifts/a/runs/b/c", "DataDrifts/a/runs/b", "drifts/a/runs/b", "datadrifts/a/job/b"],
}


@pytest.mark.parametrize("schema", ["event-grid-schema", "cloud-events-schema"])
@pytest.mark.parametrize(("name", "subject"), [(n, s) for n, subjects in SUBJECTS.items() for s in subjects])
def test_the_subject_is_judged_like_verify_plan(schema: str, name: str, subject: str) -> None:
    raw = sample(schema, name)
    low = {k.lower(): v for k, v in raw["data"].items()}
    raw["subject"] = subject.format(e=low.get("experimentid"), r=low.get("runid"), n=low.get("modelname"),
                                    v=low.get("modelversion"), s=low.get("servicename"))
    event = parse_event(raw)
    assert isinstance(event, AmlEvent)
    wrong = evaluate_value("@" + wdl._subject_wrong(), _Judged(raw, {}))
    assert wrong is (plan(event).refusal is not None), (subject, plan(event).refusal)


def aml_world(p: Pair, *, jobs: dict[str, dict[str, str]] | None = None,
              models: dict[str, dict[str, str]] | None = None) -> None:
    """Both sides' AML hold these runs (Completed, tags) and sklearn_churn versions (tags)."""
    for side in (p.runbook, p.logicapp):
        assert side.stack.aml is not None
        for run_id, tags in (jobs or {}).items():
            side.stack.aml.add_job(run_id, "Completed", experiment_name=EXPERIMENT, tags=tags)
        for version, tags in (models or {}).items():
            side.stack.aml.add_model_version("sklearn_churn", version, tags=tags, properties={"type": "test"})


LOOP_GUARD = {"amlrelay-started-by": "ado", "branch": "main"}


def forged_values(kind: str, p: Pair) -> dict[str, Any]:
    """The tests/test_forged_events.py forgeries of the values a route reads."""
    topic = SAMPLE_WORKSPACE
    if kind == "loop-guard tag dropped, branch chosen":  # AML: ADO started it; the event hides that
        aml_world(p, jobs={"train_by_ado_1": LOOP_GUARD})
        return forged_event("event-grid-schema", "run_completed", topic, runId="train_by_ado_1",
                            experimentName=EXPERIMENT, runTags={"branch": "attacker"})
    if kind == "branch tag added":  # AML's run has no tags: the route would fall back to main
        aml_world(p, jobs={"train_completed_1": {}})
        return forged_event("cloud-events-schema", "run_completed", topic, runId="train_completed_1",
                            experimentName=EXPERIMENT, runTags={"branch": "attacker"})
    if kind == "model tag changed":
        aml_world(p, models={"7": MODEL_TAGS})
        return forged_event("event-grid-schema", "model_registered", topic, modelName="sklearn_churn",
                            modelVersion="7", modelTags={**MODEL_TAGS, "area": "attacker"})
    if kind == "model tag dropped":  # the template falls back to 'general'
        aml_world(p, models={"7": MODEL_TAGS})
        return forged_event("event-grid-schema", "model_registered", topic, modelName="sklearn_churn",
                            modelVersion="7", modelTags={"type": "regression"})
    assert kind == "subject of another shape"
    aml_world(p, jobs={"train_completed_1": {}})
    raw = forged_event("event-grid-schema", "run_completed", topic, runId="train_completed_1",
                       experimentName=EXPERIMENT, runTags={})
    raw["subject"] = "runs/train_completed_1"
    return raw


VALUE_FORGERIES = ["loop-guard tag dropped, branch chosen", "branch tag added", "model tag changed",
                   "model tag dropped", "subject of another shape"]


@pytest.mark.parametrize("kind", VALUE_FORGERIES)
def test_forged_values_are_rejected_like_the_runbook_with_no_ado_call(verified: Pair, kind: str) -> None:
    runbook, logicapp = verified.deliver(body(forged_values(kind, verified)))
    same(logicapp, runbook)
    assert (logicapp.status, logicapp.requests, logicapp.rows) == (200, [], [])


@pytest.mark.parametrize(("aml_tags", "event_tags", "branch"), [
    ({"branch": "feature-x"}, {"branch": "feature-x"}, "refs/heads/feature-x"),
    ({}, {}, "refs/heads/main"),
])
def test_values_aml_holds_are_triggered_like_the_runbook(verified: Pair, aml_tags: dict[str, str],
                                                         event_tags: dict[str, str], branch: str) -> None:
    aml_world(verified, jobs={"train_completed_1": aml_tags})
    raw = forged_event("event-grid-schema", "run_completed", SAMPLE_WORKSPACE, runId="train_completed_1",
                       experimentName=EXPERIMENT, runTags=event_tags)
    runbook, logicapp = verified.deliver(body(raw))
    same(logicapp, runbook)
    assert (logicapp.status, len(logicapp.requests)) == (200, 1)
    assert branch in json.dumps(logicapp.requests[0])


def test_a_tag_key_aml_spells_otherwise_than_the_event_is_refused_by_the_workflow_only(verified: Pair) -> None:
    """The known difference (README): the runbook looks AML's tag keys up in any case, the workflow as the
    route spells them or lower-cased, so an event whose key casing differs from AML's is confirmed by the
    runbook but refused by the workflow: stricter, never a run the runbook would not start."""
    aml_world(verified, jobs={"train_completed_1": {"BRANCH": "feature-x"}})
    raw = forged_event("event-grid-schema", "run_completed", SAMPLE_WORKSPACE, runId="train_completed_1",
                       experimentName=EXPERIMENT, runTags={"branch": "feature-x"})
    runbook, logicapp = verified.deliver(body(raw))
    assert (len(runbook.requests), runbook.status) == (1, 200)
    assert (logicapp.requests, logicapp.rows, logicapp.status) == ([], [], 200)


def test_a_forged_value_on_a_job_not_yet_in_the_claimed_status_fails_first(verified: Pair) -> None:
    """verify.judge_job before judge_values: AML behind the claim is 'not yet' (500, Event Grid retries)."""
    for side in (verified.runbook, verified.logicapp):
        assert side.stack.aml is not None
        side.stack.aml.add_job("train_running_1", "Running", experiment_name=EXPERIMENT, tags=LOOP_GUARD)
    raw = forged_event("event-grid-schema", "run_completed", SAMPLE_WORKSPACE, runId="train_running_1",
                       experimentName=EXPERIMENT, runTags={"branch": "attacker"})
    runbook, logicapp = verified.deliver(body(raw))
    same(logicapp, runbook)
    assert (logicapp.status, logicapp.requests) == (500, [])


def two_routes(tmp_path: Path) -> Path:
    """Two routes take every RunCompleted; only the first reads a tag."""
    path = tmp_path / "routes.json"
    path.write_text(json.dumps({"version": 1, "routes": [
        {"name": "by-branch", "events": ["RunCompleted"], "pipeline": {"project": "mlops", "id": 12,
                                                                          "branch": "{{ runTags.branch | main }}"}},
        {"name": "no-tags", "events": ["RunCompleted"], "pipeline": {"project": "mlops", "id": 13}}]}))
    return path


@pytest.mark.parametrize("held", [{"branch": "main"}, {"branch": "attacker"}])
def test_one_matched_routes_forged_value_refuses_every_route_like_the_runbook(
        azurite: str, table_name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, held: dict[str, str]) -> None:
    """The runbook checks the union of the matched routes' fields once per event, so a forged tag that one
    route reads refuses the other route too (and a genuine one triggers both)."""
    with pair(azurite, table_name, routes_path=two_routes(tmp_path), verify=True) as p:
        for name, value in p.env.items():
            monkeypatch.setenv(name, value)
        aml_world(p, jobs={"train_completed_1": held})
        raw = forged_event("event-grid-schema", "run_completed", SAMPLE_WORKSPACE, runId="train_completed_1",
                           experimentName=EXPERIMENT, runTags={"branch": "attacker"})
        runbook, logicapp = p.deliver(body(raw))
        same(logicapp, runbook)
        assert len(logicapp.requests) == (2 if held["branch"] == "attacker" else 0)


def many_tag_routes(count: int, routes: int = 1) -> str:
    """``routes`` routes, each guarding on ``count`` tags of its own (long keys)."""
    return json.dumps({"version": 1, "routes": [
        {"name": f"guarded-{k}", "events": ["RunCompleted"], "pipeline": {"project": "p", "id": 1},
         "filters": {f"runTags.guard-{k}-{i:03d}-{'x' * 40}": {"notIn": ["ado"]} for i in range(count)}}
        for k in range(routes)]})


def test_routes_whose_value_check_does_not_fit_one_expression_are_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each distinct field read is one term of the check (its value is computed once per event), so what is
    limited is the number of distinct tag/property fields, not of routes: 36 long-named ones do not fit."""
    generate(parse_routes(many_tag_routes(1, routes=20)), verify=True)  # 20 of these fields fit
    routes = parse_routes(many_tag_routes(12, routes=3))
    with pytest.raises(RoutesError, match=r"over WDL's 8192-character limit .*36 distinct fields; routes reading "
                                          r"tags or properties: guarded-0, guarded-1, guarded-2"):
        generate(routes, verify=True)
    generate(routes, verify=False)  # nothing is verified then, so nothing is cut short
    path = tmp_path / "routes.json"
    path.write_text(many_tag_routes(12, routes=3))
    assert main(["logicapp", "build", "--routes", str(path), "--output", str(tmp_path / "w.json")]) != 0
    err = capsys.readouterr().err
    assert "8192-character limit" in err
    assert "--verify false" in err
    assert not (tmp_path / "w.json").exists()
