"""Forged events (issue #7): whoever holds the webhook URL can post events with an allowed ``topic`` and any
``data``. With verification on, an event naming a run or model version AML does not have, a run whose
final status differs, or a run of another experiment is rejected: 100 % rejected, 0 ADO calls.

The forgeries are generated (hypothesis, derandomized, so CI is reproducible) from the official samples,
keeping every field the routes filter on, so each forged event *would* start a pipeline without
verification (checked: the same events with AML holding them are triggered). Forged values count too: a
real run or model version with the tags a route reads changed (the branch, the loop-guard tag dropped) or a
subject not in AML's shape is rejected (review MUST 1)."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amlrelay.events import parse_events
from amlrelay.relay import Relay
from amlrelay.routes import load_routes
from amlrelay.runbook import build_relay
from amlrelay.settings import resolve
from tests import secret_guard
from tests.conftest import ROUTES_FILE, SAMPLE_WORKSPACE, sample
from tests.servers.identity import CONFLICTING_ENV
from tests.stack import Stack, local_stack
from tests.test_webhook import hashtable_form

EXPERIMENT = "automl-local-regression"
WORLD_RUNS = {"train_completed_1": "Completed", "train_failed_1": "Failed", "train_canceled_1": "Canceled",
              "train_running_1": "Running"}
WORLD_MODELS = {("sklearn_churn", "1"), ("sklearn_churn", "2"), ("sklearn_regression_model", "20")}
DRIFT_RUN = "drift_run_1"
ADO_RUN = "train_by_ado_1"  # a Completed run ADO started: the loop guard skips its genuine event
MODEL_TAGS = {"area": "diabetes", "type": "regression"}  # what the official ModelRegistered sample carries
MODEL_PROPERTIES = {"type": "test"}

names = st.from_regex(re.compile(r"[a-z][a-z0-9_-]{2,40}", re.ASCII), fullmatch=True)
versions = st.integers(min_value=1, max_value=10_000).map(str)
schemas = st.sampled_from(["event-grid-schema", "cloud-events-schema"])
topics = st.sampled_from([SAMPLE_WORKSPACE, SAMPLE_WORKSPACE.upper(), SAMPLE_WORKSPACE.lower() + "/"])


def hold_world(stack: Stack) -> None:
    assert stack.aml is not None
    for run_id, status in WORLD_RUNS.items():
        stack.aml.add_job(run_id, status, experiment_name=EXPERIMENT)
    stack.aml.add_job(DRIFT_RUN, "Completed", experiment_name="datadrift")
    stack.aml.add_job(ADO_RUN, "Completed", experiment_name=EXPERIMENT,
                      tags={"amlrelay-started-by": "ado", "branch": "main"})
    for name, version in WORLD_MODELS:
        stack.aml.add_model_version(name, version, tags=MODEL_TAGS, properties=MODEL_PROPERTIES)


def event(schema: str, name: str, topic: str, **data: Any) -> dict[str, Any]:
    """A sample event with ``data`` replaced and a subject that agrees with it (a careful forger's)."""
    raw = sample(schema, name)
    raw["topic" if "topic" in raw else "source"] = topic
    for field, value in data.items():
        key = next((k for k in raw["data"] if k.lower() == field.lower()), field)
        raw["data"][key] = value
    low = {k.lower(): v for k, v in raw["data"].items()}
    if name.startswith("run_"):
        raw["subject"] = f"experiments/{low['experimentid']}/runs/{low['runid']}"
    elif name == "model_registered":
        raw["subject"] = f"models/{low['modelname']}:{low['modelversion']}"
    return raw


@st.composite
def forged(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """(the kind of forgery, the event)."""
    schema, topic = draw(schemas), draw(topics)
    kind = draw(st.sampled_from(["unknown run", "other final status", "other experiment", "unknown model",
                                 "unknown model version", "deployment of an unknown model", "unknown drift run",
                                 "loop-guard tag dropped, branch chosen", "branch tag added", "model tag changed",
                                 "subject of another shape"]))
    unknown = draw(names.filter(lambda n: n not in WORLD_RUNS and n != DRIFT_RUN))
    if kind == "unknown run":
        status = draw(st.sampled_from([None, "Failed", "Canceled", "Completed", "failed"]))
        if status is None:
            return kind, event(schema, "run_completed", topic, runId=unknown)
        return kind, event(schema, "run_status_changed", topic, runId=unknown, runStatus=status)
    if kind == "other final status":
        run_id, actual = draw(st.sampled_from([(r, s) for r, s in WORLD_RUNS.items() if s != "Running"]))
        claim = draw(st.sampled_from([s for s in ("Completed", "Failed", "Canceled") if s != actual]))
        if claim == "Completed" and draw(st.booleans()):
            return kind, event(schema, "run_completed", topic, runId=run_id, experimentName=EXPERIMENT)
        return kind, event(schema, "run_status_changed", topic, runId=run_id, runStatus=claim,
                           experimentName=EXPERIMENT)
    if kind == "other experiment":
        return kind, event(schema, "run_completed", topic, runId="train_completed_1", experimentName=unknown)
    if kind == "unknown model":
        return kind, event(schema, "model_registered", topic, modelName=f"sklearn_{unknown}",
                           modelVersion=draw(versions))
    if kind == "unknown model version":
        version = draw(versions.filter(lambda v: ("sklearn_churn", v) not in WORLD_MODELS))
        return kind, event(schema, "model_registered", topic, modelName="sklearn_churn", modelVersion=version)
    if kind == "deployment of an unknown model":
        ghost = f"sklearn_{unknown}:{draw(versions)}"
        ids = draw(st.permutations(["sklearn_churn:1", ghost]))
        return kind, event(schema, "model_deployed", topic, modelIds=",".join(ids))
    if kind == "loop-guard tag dropped, branch chosen":
        return kind, event(schema, "run_completed", topic, runId=ADO_RUN, experimentName=EXPERIMENT,
                           runTags={"branch": unknown})
    if kind == "branch tag added":  # AML's run has no tags at all: the route would fall back to main
        return kind, event(schema, "run_completed", topic, runId="train_completed_1", experimentName=EXPERIMENT,
                           runTags={"branch": unknown})
    if kind == "model tag changed":
        version = draw(st.sampled_from(sorted(v for n, v in WORLD_MODELS if n == "sklearn_churn")))
        return kind, event(schema, "model_registered", topic, modelName="sklearn_churn", modelVersion=version,
                           modelTags={**MODEL_TAGS, "area": unknown})
    if kind == "subject of another shape":
        raw = event(schema, "run_completed", topic, runId="train_completed_1", experimentName=EXPERIMENT)
        raw["subject"] = draw(st.sampled_from(["", "runs/train_completed_1", f"experiments/{unknown}",
                                               "experiments/x/runs/train_completed_1/extra"]))
        return kind, raw
    return kind, event(schema, "dataset_drift_detected", topic, runId=unknown)


@contextmanager
def relay_against_aml(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Stack, Relay]]:
    """The relay a webhook job builds (runbook.build_relay, AMLRELAY_VERIFY on), in process."""
    with local_stack(verify=True) as stack:
        hold_world(stack)
        for name in CONFLICTING_ENV:
            monkeypatch.delenv(name, raising=False)
        env = stack.env()
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        yield stack, build_relay(resolve({}, env=env), load_routes(ROUTES_FILE))


def test_forged_events_are_all_rejected_and_never_reach_ado(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, int] = {}
    with relay_against_aml(monkeypatch) as (stack, relay):

        @settings(max_examples=200, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
        @given(forged())
        def deliver(case: tuple[str, dict[str, Any]]) -> None:
            kind, raw = case
            outcomes = relay.handle(parse_events(json.loads(json.dumps([raw]))), raw=[raw])
            assert [o.outcome for o in outcomes] == ["rejected"], (kind, outcomes)
            assert outcomes[0].reason
            seen[kind] = seen.get(kind, 0) + 1

        deliver()
        assert stack.ado.requests == []  # 0 ADO calls, whatever was forged
        assert stack.aml is not None
        assert {r.method for r in stack.aml.requests} == {"GET"}
    assert len(seen) == 11, seen  # every kind of forgery was tried
    assert sum(seen.values()) >= 150


def test_the_same_events_are_triggered_when_aml_holds_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """Control: the forgeries above are shaped to take a route, so verification is what stops them."""
    with relay_against_aml(monkeypatch) as (stack, relay):
        genuine = [event("event-grid-schema", "run_completed", SAMPLE_WORKSPACE, runId="train_completed_1",
                         experimentName=EXPERIMENT),
                   event("cloud-events-schema", "run_status_changed", SAMPLE_WORKSPACE, runId="train_failed_1",
                         runStatus="Failed", experimentName=EXPERIMENT),
                   event("event-grid-schema", "model_registered", SAMPLE_WORKSPACE, modelName="sklearn_churn",
                         modelVersion="2"),
                   event("cloud-events-schema", "model_deployed", SAMPLE_WORKSPACE,
                         modelIds="sklearn_churn:1,sklearn_churn:2"),
                   event("event-grid-schema", "dataset_drift_detected", SAMPLE_WORKSPACE, runId=DRIFT_RUN),
                   event("event-grid-schema", "run_status_changed", SAMPLE_WORKSPACE, runId="train_running_1",
                         runStatus="Failed", experimentName=EXPERIMENT)]  # not yet Failed: tried again later
        genuine.append(event("event-grid-schema", "run_completed", SAMPLE_WORKSPACE, runId=ADO_RUN,
                             experimentName=EXPERIMENT, runTags={"amlrelay-started-by": "ado", "branch": "main"}))
        outcomes = relay.handle(parse_events(genuine), raw=genuine)
        assert [o.outcome for o in outcomes] == ["triggered"] * 5 + ["failed", "skipped"]
        assert "not yet Failed" in str(outcomes[5].reason)
        assert "amlrelay-started-by" in str(outcomes[6].reason)  # the loop guard, before any AML read
        assert len(stack.ado.run_requests) == 5
        # A tag AML does hold is confirmed, and the pipeline runs on the branch AML says.
        assert stack.aml is not None
        stack.aml.add_job("train_on_branch_1", "Completed", experiment_name=EXPERIMENT,
                          tags={"branch": "feature-x"})
        tagged = [event("event-grid-schema", "run_completed", SAMPLE_WORKSPACE, runId="train_on_branch_1",
                        experimentName=EXPERIMENT, runTags={"branch": "feature-x"})]
        [outcome] = relay.handle(parse_events(tagged), raw=tagged)
        assert outcome.outcome == "triggered", outcome
        body = stack.ado.run_requests[-1].json
        assert body["resources"]["repositories"]["self"]["refName"] == "refs/heads/feature-x"


def test_a_forged_batch_through_the_runbook_exits_2_with_no_ado_call() -> None:
    with local_stack(verify=True) as stack:
        hold_world(stack)
        batch = [event("event-grid-schema", "run_completed", SAMPLE_WORKSPACE, runId="train_failed_1",
                       experimentName=EXPERIMENT),
                 event("event-grid-schema", "model_registered", SAMPLE_WORKSPACE, modelName="sklearn_churn",
                       modelVersion="99"),
                 event("cloud-events-schema", "run_completed", SAMPLE_WORKSPACE, runId="never_ran")]
        done = subprocess.run(stack.runbook_command(*hashtable_form(json.dumps(batch)).split()), env=stack.env(),
                              capture_output=True, text=True, timeout=60, check=False)
        secret_guard.record("runbook stdout", done.stdout)
        records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        assert done.returncode == 2
        assert [r["outcome"] for r in records] == ["rejected"] * 3
        assert "ended Failed, not Completed" in records[0]["reason"]
        assert "AML has no model version sklearn_churn:99" in records[1]["reason"]
        assert "AML has no run 'never_ran'" in records[2]["reason"]
        assert stack.ado.requests == []
