"""Verification against AML (AMLRELAY_VERIFY, issue #7 item 3): every event type, every refusal reason, and
AML's errors, against the ARM/AML stand-in with the real azure-identity credential; then the relay and the
runbook: a refused event makes no ADO call, manual starts and dry runs, replays and sweeps."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from amlrelay.events import parse_events
from amlrelay.models import AmlEvent
from amlrelay.routes import load_routes
from amlrelay.runbook import build_relay
from amlrelay.settings import resolve
from amlrelay.verify import (
    MAX_MODEL_IDS,
    AmlVerifier,
    Held,
    Read,
    Refusal,
    claimed_status,
    fields_read,
    judge_job,
    judge_values,
    plan,
)
from tests import secret_guard
from tests.conftest import ROUTES_FILE, all_samples, sample
from tests.servers.aml import ARM_RESOURCE, AmlServer
from tests.servers.identity import CONFLICTING_ENV, IdentityServer
from tests.stack import Stack, local_stack
from tests.test_webhook import hashtable_form

RUN_ID = "AutoML_ad912b2d-6467-4f32-a616-dbe4af6dd8fc_5"
EXPERIMENT = "automl-local-regression"


def event_in(workspace: str, name: str, schema: str = "event-grid-schema", **data: Any) -> AmlEvent:
    """A sample event moved to ``workspace``, with ``data`` fields replaced (matched case-insensitively)."""
    raw = sample(schema, name)
    raw["topic" if "topic" in raw else "source"] = workspace
    for field, value in data.items():
        key = next((k for k in raw["data"] if k.lower() == field.lower()), field)
        raw["data"][key] = value
    raw["subject"] = coherent_subject(name, raw["data"], raw["subject"])
    [event] = parse_events([raw])
    assert isinstance(event, AmlEvent), event
    return event


def coherent_subject(name: str, data: dict[str, Any], subject: str) -> str:
    """The subject AML would send with this data (a careful forger keeps the two in step)."""
    low = {k.lower(): v for k, v in data.items()}
    if name.startswith("run_"):
        return f"experiments/{low['experimentid']}/runs/{low['runid']}"
    if name == "model_registered":
        return f"models/{low['modelname']}:{low['modelversion']}"
    if name == "model_deployed":
        return f"endpoints/{low['servicename']}"
    return subject


# --- pure decisions ----------------------------------------------------------------------------------------

WS = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/mlw"
JOB_ID = f"{WS}/jobs/{RUN_ID}"


@pytest.mark.parametrize(
    ("name", "status", "current", "expected"),
    [
        ("run_completed", None, "Completed", None),
        ("run_completed", None, "Failed", "rejected"),  # a final status never changes
        ("run_completed", None, "Canceled", "rejected"),
        ("run_completed", None, "Finalizing", "failed"),  # ahead of AML: not confirmed yet, tried again later
        ("run_completed", None, "Running", "failed"),
        ("run_status_changed", "failed", "Failed", None),  # any case, as the sample sends it
        ("run_status_changed", "Failed", "Completed", "rejected"),
        ("run_status_changed", "Failed", "Running", "failed"),
        ("run_status_changed", "Canceled", "CancelRequested", "failed"),
        ("run_status_changed", "Running", "Running", None),
        ("run_status_changed", "Running", "Completed", None),  # the job moved on since the event
        ("run_status_changed", "Running", "Failed", None),
        ("run_status_changed", "Running", "Finalizing", None),
        ("run_status_changed", "Running", "NotResponding", None),
        ("run_status_changed", "Running", "Queued", "failed"),
        ("run_status_changed", "Queued", "Starting", "failed"),
        ("run_status_changed", "Queued", "Running", None),
        ("run_status_changed", "Running", "SomethingNewer", "failed"),  # modelAsString: cannot compare
        ("run_status_changed", "Completed", "Completed", None),  # RunStatusChanged(Completed) is RunCompleted
    ],
)
def test_job_status_rules(name: str, status: str | None, current: str, expected: str | None) -> None:
    event = event_in(WS, name, **({"runStatus": status} if status else {}))
    refusal = judge_job(event, current, EXPERIMENT, JOB_ID)
    assert (refusal.outcome if refusal else None) == expected, refusal


def test_run_completed_claims_completed_and_status_changed_claims_its_status() -> None:
    assert claimed_status(event_in(WS, "run_completed")) == "Completed"
    assert claimed_status(event_in(WS, "run_status_changed", runStatus="cancelrequested")) == "CancelRequested"
    refusal = plan(event_in(WS, "run_status_changed", runStatus="Exploded")).refusal
    assert refusal == Refusal("rejected", "runStatus 'Exploded' is not an AML job status a run can be confirmed in")
    unknown = plan(event_in(WS, "run_status_changed", runStatus="Unknown")).refusal  # the spec's catch-all
    assert unknown is not None
    assert unknown.outcome == "rejected"


def test_another_experiment_or_another_workspace_refutes_a_run() -> None:
    event = event_in(WS, "run_completed")
    other = judge_job(event, "Completed", "another-experiment", JOB_ID)
    assert other is not None
    assert other.outcome == "rejected"
    assert "experiment 'another-experiment'" in other.reason
    elsewhere = judge_job(event, "Completed", EXPERIMENT, JOB_ID.replace("/mlw/", "/other/"))
    assert elsewhere is not None
    assert "not in the event's workspace" in elsewhere.reason
    assert judge_job(event, "Completed", EXPERIMENT.upper(), JOB_ID.upper()) is None  # ARM ids: any case


@pytest.mark.parametrize(
    ("name", "data", "subject", "reason"),
    [
        ("run_completed", {}, "experiments/0fa9dfaa-cba3-4fa7-b590-23e48548f5c1/runs/other_run", "another run"),
        ("run_completed", {}, "experiments/x/runs/" + RUN_ID, "another run"),
        ("model_registered", {}, "models/sklearn_regression_model:21", "another model version"),
        ("model_deployed", {}, "endpoints/other-service", "another service"),
        ("run_completed", {"runId": "has space"}, "", "is not a name AML gives a run"),
        ("run_completed", {"runId": "../../subscriptions"}, "", "is not a name AML gives a run"),
        ("model_registered", {"modelName": "a/b"}, "", "not a model name and version"),
        ("model_deployed", {"modelIds": "no-version"}, "", "is not 'name:version'"),
        ("model_deployed", {"modelIds": ",".join(f"m:{i}" for i in range(MAX_MODEL_IDS + 1))}, "",
         f"at most {MAX_MODEL_IDS}"),
        ("dataset_drift_detected", {"runId": None}, "datadrifts/x/runs/y", "names no runId"),
    ],
)
def test_what_aml_could_never_have_sent_is_refused_before_any_read(name: str, data: dict[str, Any], subject: str,
                                                                   reason: str) -> None:
    raw = sample("event-grid-schema", name)
    raw["topic"], raw["subject"] = WS, subject
    for field, value in data.items():
        key = next(k for k in raw["data"] if k.lower() == field.lower())
        raw["data"][key] = value
    [event] = parse_events([raw])
    assert isinstance(event, AmlEvent)
    planned = plan(event)
    assert planned.reads == ()
    assert planned.refusal is not None
    assert planned.refusal.outcome == "rejected"
    assert reason in planned.refusal.reason


@pytest.mark.parametrize(("name", "subject"), [
    ("run_completed", ""), ("run_completed", "runs/" + RUN_ID), ("run_status_changed", "experiments/x"),
    ("model_registered", "sklearn_regression_model:20"), ("model_deployed", "services/my-sklearn-service"),
    ("dataset_drift_detected", "drift/x")])
def test_a_subject_not_in_amls_shape_is_rejected_when_verifying(name: str, subject: str) -> None:
    raw = sample("event-grid-schema", name)
    raw["topic"], raw["subject"] = WS, subject
    [event] = parse_events([raw])
    assert isinstance(event, AmlEvent)
    refusal = plan(event).refusal
    assert refusal is not None
    assert refusal.outcome == "rejected"
    assert "is not in the shape AML sends" in refusal.reason


def test_the_fields_routes_read_are_their_filters_and_templates() -> None:
    routes = load_routes(ROUTES_FILE).routes
    evaluate = next(r for r in routes if r.name == "evaluate-trained-model")
    read = fields_read([evaluate])
    assert {"runStatus", "runTags.amlrelay-started-by", "runTags.branch", "runId", "experimentName",
            "workspaceName", "eventId"} <= set(read)
    assert "modelTags.area" in fields_read(routes)


def test_every_tag_and_property_a_route_reads_must_be_amls() -> None:
    event = event_in(WS, "run_completed", runTags={"branch": "evil", "Stage": "prod"},
                     runProperties={"owner": "me"})
    read = Read("job", RUN_ID)
    held = Held("Completed", EXPERIMENT, JOB_ID, {"stage": "prod"}, {"owner": "me"})
    assert judge_values(event, read, held, ["runTags.stage", "runProperties.owner", "runId"]) is None  # key case
    refusal = judge_values(event, read, held, ["runTags.branch"])
    assert refusal == Refusal("rejected", f"AML has runTags.branch absent for run {RUN_ID!r}, but the event says "
                                          "'evil'; a route reads it, so the event is not acted on")
    dropped = judge_values(event, read, Held("Completed", EXPERIMENT, JOB_ID, {"amlrelay-started-by": "ado"}),
                           ["runTags.amlrelay-started-by"])
    assert dropped is not None
    assert "AML has runTags.amlrelay-started-by 'ado'" in dropped.reason
    assert "the event says absent" in dropped.reason
    other = judge_values(event, read, Held("Completed", EXPERIMENT, JOB_ID, {}, {"owner": "you"}),
                         ["runProperties.owner"])
    assert other is not None
    assert other.outcome == "rejected"
    assert judge_values(event, read, held, ["runTags.unread"]) is None  # what no route reads is not compared
    model = event_in(WS, "model_registered")
    version = Read("model", "sklearn_regression_model", "20")
    assert judge_values(model, version, Held("", "", "", {"area": "diabetes"}), ["modelTags.area"]) is None
    forged = judge_values(model, version, Held("", "", "", {"area": "finance"}), ["modelTags.area"])
    assert forged is not None
    assert "modelTags.area 'finance'" in forged.reason


def test_what_each_event_type_reads() -> None:
    assert plan(event_in(WS, "run_completed")).reads == (Read("job", RUN_ID),)
    assert plan(event_in(WS, "model_registered")).reads == (Read("model", "sklearn_regression_model", "20"),)
    assert plan(event_in(WS, "model_deployed")).reads == (Read("model", "sklearn_regression_model", "1"),
                                                          Read("model", "sklearn_regression_model", "2"))
    assert plan(event_in(WS, "dataset_drift_detected")).reads == (
        Read("job", "01d29aa4-e6a4-470a-9ef3-66660d21f8ef_1571590300380"),)
    assert plan(event_in(WS, "run_completed", schema="cloud-events-schema")).reads == (Read("job", RUN_ID),)


# --- against the stand-in ------------------------------------------------------------------------------------

@pytest.fixture
def credential(aml_credential: Any) -> Any:
    """The real ManagedIdentityCredential against the identity stand-in (``tests.aml_waiting``)."""
    return aml_credential


@pytest.fixture
def verifier(aml_server: AmlServer, credential: Any) -> AmlVerifier:
    return AmlVerifier(credential, arm_url=aml_server.arm_url, audience=ARM_RESOURCE, backoff=0, retries=2,
                       max_retry_after=0)


def hold_samples(aml: AmlServer) -> None:
    """The workspace state the five samples report (RunStatusChanged's run is set per test)."""
    aml.add_job(RUN_ID, "Completed", experiment_name=EXPERIMENT)
    aml.add_job("01d29aa4-e6a4-470a-9ef3-66660d21f8ef_1571590300380", "Completed", experiment_name="datadrift")
    for version in ("1", "2", "20"):
        aml.add_model_version("sklearn_regression_model", version)


@pytest.mark.parametrize(("schema", "name"), [s for s in all_samples() if s[1] != "run_status_changed"])
def test_every_event_type_is_confirmed_when_aml_holds_it(aml_server: AmlServer, verifier: AmlVerifier,
                                                         schema: str, name: str) -> None:
    hold_samples(aml_server)
    assert verifier.check(event_in(aml_server.workspace_id, name, schema)) is None
    assert verifier.reads >= 1
    assert all(r.method == "GET" and r.query["api-version"] == "2025-09-01" for r in aml_server.requests)


def test_a_failed_run_is_confirmed_by_a_failed_job(aml_server: AmlServer, verifier: AmlVerifier) -> None:
    aml_server.add_job(RUN_ID, "Failed", experiment_name=EXPERIMENT)
    assert verifier.check(event_in(aml_server.workspace_id, "run_status_changed")) is None
    refusal = verifier.check(event_in(aml_server.workspace_id, "run_completed"))
    assert refusal == Refusal("rejected", f"AML says run {RUN_ID!r} ended Failed, not Completed as the event says "
                                          "(a final status never changes)")


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("run_completed", {"runId": "ghost_run_1"}, "AML has no run 'ghost_run_1' in workspace 'mlw-contoso'"),
        ("model_registered", {"modelVersion": "21"},
         "AML has no model version sklearn_regression_model:21 in workspace 'mlw-contoso'"),
        ("model_deployed", {"modelIds": "sklearn_regression_model:1,sklearn_regression_model:9"},
         "AML has no model version sklearn_regression_model:9"),
        ("dataset_drift_detected", {"runId": "drift_ghost"}, "AML has no run 'drift_ghost'"),
        ("run_completed", {"experimentName": "other"}, "in experiment 'automl-local-regression', not 'other'"),
    ],
)
def test_what_aml_does_not_hold_is_rejected(aml_server: AmlServer, verifier: AmlVerifier, name: str,
                                            data: dict[str, Any], reason: str) -> None:
    hold_samples(aml_server)
    event = event_in(aml_server.workspace_id, name, **data)
    refusal = verifier.check(event)
    assert refusal is not None
    assert refusal.outcome == "rejected"
    assert reason in refusal.reason
    assert not any(leak in refusal.reason for leak in ("None", "<class", "NoneType"))


def test_a_workspace_arm_does_not_know_is_a_failure_not_a_rejection(aml_server: AmlServer,
                                                                   verifier: AmlVerifier) -> None:
    gone = aml_server.workspace_id.replace("mlw-contoso", "mlw-deleted")
    refusal = verifier.check(event_in(gone, "run_completed"))
    assert refusal is not None
    assert refusal.outcome == "failed"
    assert "workspace 'mlw-deleted' is not found" in refusal.reason


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (lambda aml, identity: aml.forbid(identity.object_id), "'Reader' role on the workspace"),
        (lambda aml, identity: aml.fail(429, times=5, retry_after=0), "HTTP 429"),
        (lambda aml, identity: aml.fail(500, times=5), "HTTP 500"),
        (lambda aml, identity: aml.fail(503, times=5), "throttling or unavailable"),
        (lambda aml, identity: identity.fail(500, times=10), "identity endpoint failed with HTTP 500"),
    ],
)
def test_aml_trouble_is_a_failure_never_a_rejection(aml_server: AmlServer, identity_server: IdentityServer,
                                                    verifier: AmlVerifier, fault: Any, reason: str) -> None:
    hold_samples(aml_server)
    fault(aml_server, identity_server)
    refusal = verifier.check(event_in(aml_server.workspace_id, "run_completed"))
    assert refusal is not None
    assert refusal.outcome == "failed"
    assert reason in refusal.reason
    assert refusal.reason.startswith("not verified: ")
    assert not any(leak in refusal.reason for leak in ("None", "<class", "NoneType", "Traceback"))


def test_one_throttled_answer_is_retried_and_then_confirms(aml_server: AmlServer, verifier: AmlVerifier) -> None:
    hold_samples(aml_server)
    aml_server.fail(429, times=1, retry_after=0)
    assert verifier.check(event_in(aml_server.workspace_id, "run_completed")) is None
    assert len(aml_server.job_gets()) == 2


def test_a_token_for_an_unknown_audience_fails_with_the_setting_named(aml_server: AmlServer,
                                                                      credential: Any) -> None:
    hold_samples(aml_server)
    wrong = AmlVerifier(credential, arm_url=aml_server.arm_url, backoff=0)  # audience = the loopback URL
    refusal = wrong.check(event_in(aml_server.workspace_id, "run_completed"))
    assert refusal is not None
    assert refusal.outcome == "failed"
    assert "AADSTS500011" in refusal.reason
    assert "AMLRELAY_ARM_AUDIENCE" in refusal.reason
    assert aml_server.requests == []  # Entra refused the audience: ARM was never asked


def test_a_token_for_another_real_resource_is_refused_by_arm_and_fails(aml_server: AmlServer,
                                                                       credential: Any) -> None:
    hold_samples(aml_server)
    wrong = AmlVerifier(credential, arm_url=aml_server.arm_url, audience="https://vault.azure.net", backoff=0)
    refusal = wrong.check(event_in(aml_server.workspace_id, "run_completed"))
    assert refusal is not None
    assert refusal.outcome == "failed"
    assert "InvalidAuthenticationTokenAudience" in refusal.reason


def test_a_wrong_identity_header_fails_verification_with_the_401_named(
        aml_server: AmlServer, verifier: AmlVerifier, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDENTITY_HEADER", "not-this-sandbox")
    from azure.identity import ManagedIdentityCredential

    bad = AmlVerifier(ManagedIdentityCredential(), arm_url=aml_server.arm_url, audience=ARM_RESOURCE)
    refusal = bad.check(event_in(aml_server.workspace_id, "run_completed"))
    assert refusal is not None
    assert refusal.outcome == "failed"
    assert "HTTP 401" in refusal.reason
    assert aml_server.requests == []


def test_one_read_per_run_per_job_and_failures_are_asked_again(aml_server: AmlServer, verifier: AmlVerifier) -> None:
    hold_samples(aml_server)
    completed = event_in(aml_server.workspace_id, "run_completed")
    same_run = event_in(aml_server.workspace_id, "run_status_changed", runStatus="Completed")
    assert verifier.check(completed) is None
    assert verifier.check(same_run) is None
    assert len(aml_server.job_gets()) == 1
    aml_server.fail(500, times=5)
    other = event_in(aml_server.workspace_id, "dataset_drift_detected")
    failed = verifier.check(other)
    assert failed is not None
    assert failed.outcome == "failed"
    assert verifier.check(other) is None  # AML recovered: the failure was not cached


# --- the relay and the runbook --------------------------------------------------------------------------------

@pytest.fixture
def stack() -> Iterator[Stack]:
    with local_stack(verify=True) as s:
        yield s


def relay_env(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = stack.env()
    for name in CONFLICTING_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def test_the_relay_sends_nothing_for_a_refused_event(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    relay = build_relay(resolve({}, env=relay_env(stack, monkeypatch)), load_routes(ROUTES_FILE))
    genuine = sample("event-grid-schema", "model_deployed")
    stack.emitted([genuine])
    forged = sample("event-grid-schema", "model_registered")  # AML holds no sklearn_regression_model:20
    outcomes = relay.handle(parse_events([forged, genuine]))
    assert [(o.outcome, o.route) for o in outcomes] == [("rejected", None), ("triggered", "smoke-test-endpoint")]
    assert len(stack.ado.run_requests) == 1


def test_verification_is_on_by_default_and_replay_and_sweep_verify_too(stack: Stack,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    env = {k: v for k, v in relay_env(stack, monkeypatch).items() if k != "AMLRELAY_VERIFY"}
    monkeypatch.delenv("AMLRELAY_VERIFY")
    settings = resolve({}, env=env)
    assert settings.verify is True
    # `amlrelay replay` and `amlrelay sweep` build their relay with runbook.build_relay, as the job does
    relay = build_relay(settings, load_routes(ROUTES_FILE))
    assert relay.verifier is not None
    [outcome] = relay.handle(parse_events([sample("cloud-events-schema", "run_completed")]))
    assert outcome.outcome == "rejected"
    assert stack.ado.requests == []
    assert build_relay(resolve({}, env={**env, "AMLRELAY_DRY_RUN": "true"}), load_routes(ROUTES_FILE)).verifier is None
    assert build_relay(resolve({}, env={**env, "AMLRELAY_VERIFY": "false"}), load_routes(ROUTES_FILE)).verifier is None


def run(stack: Stack, argv: list[str]) -> tuple[int, list[dict[str, Any]]]:
    done = subprocess.run(stack.runbook_command(*argv), env=stack.env(), capture_output=True, text=True, timeout=60,
                          check=False)
    secret_guard.record("runbook stdout", done.stdout)
    assert done.stderr == "", done.stderr
    return done.returncode, [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_a_manual_start_is_verified_only_when_it_asks(stack: Stack) -> None:
    code, records = run(stack, ["--model-name", "sklearn_ghost", "--model-version", "3"])
    assert (code, records[0]["outcome"]) == (0, "triggered")
    assert stack.aml is not None
    assert stack.aml.requests == []
    code, records = run(stack, ["--model-name", "sklearn_ghost", "--model-version", "4", "--verify", "true"])
    assert (code, records[0]["outcome"]) == (2, "rejected")
    assert "AML has no model version sklearn_ghost:4" in records[0]["reason"]
    assert len(stack.ado.run_requests) == 1


def test_a_delivery_aml_cannot_be_asked_about_fails_the_job_with_exit_1(stack: Stack) -> None:
    assert stack.aml is not None
    stack.aml.fail(503, times=20)
    event = sample("event-grid-schema", "run_completed")
    stack.emitted([event])
    code, records = run(stack, hashtable_form(json.dumps([event])).split())
    assert code == 1
    assert records[0]["outcome"] == "failed"
    assert records[0]["reason"].startswith("not verified: ")
    assert stack.ado.requests == []


def test_with_the_ledger_a_refused_event_leaves_no_record_and_a_genuine_one_stays_exactly_once(
        stack: Stack, monkeypatch: pytest.MonkeyPatch, azurite: str, table_name: str) -> None:
    from amlrelay.ledger import Ledger

    env = {**relay_env(stack, monkeypatch), "AMLRELAY_LEDGER": "true", "AMLRELAY_LEDGER_CONNECTION_STRING": azurite,
           "AMLRELAY_LEDGER_TABLE": table_name}
    ledger = Ledger.from_connection_string(azurite, table=table_name)
    ledger.ensure_table()
    relay = build_relay(resolve({}, env=env), load_routes(ROUTES_FILE))
    genuine = sample("event-grid-schema", "run_completed")
    forged = sample("cloud-events-schema", "model_registered")  # AML holds no such model version
    stack.emitted([genuine])
    assert stack.aml is not None
    stack.aml.fail(503, times=10, method="GET")  # AML unreachable for the first delivery
    first = relay.handle(parse_events([genuine, forged]), raw=[genuine, forged])
    assert [o.outcome for o in first] == ["failed", "failed"]
    assert ledger.recent() == []  # nothing claimed: the journal or a replay retries the whole event
    second = relay.handle(parse_events([genuine, forged]), raw=[genuine, forged])
    reads = len(stack.aml.requests)
    relay = build_relay(resolve({}, env=env), load_routes(ROUTES_FILE))  # a new job: nothing cached
    third = relay.handle(parse_events([genuine]), raw=[genuine])  # a redelivery: the ledger answers
    assert [o.outcome for o in second + third] == ["triggered", "rejected", "duplicate"]
    assert [r.state for r in ledger.recent()] == ["triggered"]
    assert len(stack.ado.run_requests) == 1
    assert len(stack.aml.requests) == reads  # a triggered outcome costs no AML read (review SHOULD 3)
    stack.aml.fail(403, times=10, method="GET")  # and an ARM outage or a lost role cannot fail it
    fourth = relay.handle(parse_events([genuine]), raw=[genuine])
    assert [(o.outcome, o.reason) for o in fourth] == [("duplicate", "already triggered")]
    assert fourth[0].ado_run_id == third[0].ado_run_id is not None
    assert fourth[0].ado_run_url == third[0].ado_run_url is not None
    assert fourth[0].route == second[0].route is not None  # the lookup names the route it found triggered


# --- ARM lagging the event (review SHOULD 2) --------------------------------------------------------------------

def test_a_job_not_yet_in_the_claimed_status_is_read_again_before_the_event_fails(aml_server: AmlServer,
                                                                                   credential: Any) -> None:
    slept: list[float] = []

    def sleep(seconds: float) -> None:  # ARM catches up during the second wait
        slept.append(seconds)
        if len(slept) == 2:
            aml_server.set_status(RUN_ID, "Completed")

    lagging = AmlVerifier(credential, arm_url=aml_server.arm_url, audience=ARM_RESOURCE, backoff=0, retries=0,
                          sleep=sleep)
    aml_server.add_job(RUN_ID, "Finalizing", experiment_name=EXPERIMENT)
    assert lagging.check(event_in(aml_server.workspace_id, "run_completed")) is None
    assert slept == [5.0, 15.0]
    assert lagging.reads == 3


def test_a_job_that_never_catches_up_fails_after_bounded_waits_and_a_refutation_never_waits(
        aml_server: AmlServer, credential: Any) -> None:
    slept: list[float] = []
    lagging = AmlVerifier(credential, arm_url=aml_server.arm_url, audience=ARM_RESOURCE, backoff=0, retries=0,
                          sleep=slept.append, lag_budget=60)
    aml_server.add_job(RUN_ID, "Running", experiment_name=EXPERIMENT)
    refusal = lagging.check(event_in(aml_server.workspace_id, "run_completed"))
    assert refusal is not None
    assert (refusal.outcome, refusal.lagging) == ("failed", True)
    assert slept == [5.0, 15.0, 30.0]
    again = lagging.check(event_in(aml_server.workspace_id, "run_status_changed", runStatus="Completed"))
    assert again is not None
    assert slept == [5.0, 15.0, 30.0, 5.0]  # the job's budget (60 s) bounds the waits of a whole batch
    aml_server.set_status(RUN_ID, "Failed")
    fresh = AmlVerifier(credential, arm_url=aml_server.arm_url, audience=ARM_RESOURCE, backoff=0, retries=0,
                        sleep=slept.append)
    refuted = fresh.check(event_in(aml_server.workspace_id, "run_completed"))
    assert refuted is not None
    assert refuted.outcome == "rejected"
    assert len(slept) == 4  # a final status that differs is no lag


def test_the_job_s_lag_budget_is_a_setting(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    env = relay_env(stack, monkeypatch)
    assert resolve({}, env={k: v for k, v in env.items() if k != "AMLRELAY_VERIFY_LAG"}).verify_lag == 120.0
    relay = build_relay(resolve({}, env=env), load_routes(ROUTES_FILE))  # AMLRELAY_VERIFY_LAG=0: no wait
    assert stack.aml is not None
    stack.aml.add_job(RUN_ID, "Finalizing", experiment_name=EXPERIMENT)
    [outcome] = relay.handle(parse_events([sample("event-grid-schema", "run_completed")]))
    assert outcome.outcome == "failed"
    assert "not yet Completed" in str(outcome.reason)
    assert len(stack.aml.job_gets()) == 1
