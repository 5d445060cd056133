"""What real ADO and Entra do that the relay must survive, expressed with the stand-ins (issue 12, item 4).

* pipelines declared by the test (queue-time variables, YAML parameters with types and allowed values), so a
  route can trip ADO's rules;
* run history: runs seeded for other outcomes and back-dated runs, 504 answers, ADO's clock off the client's;
* Entra: tokens with real lifetimes (refreshed as expiry nears, an expired one refused), unknown resources
  refused with AADSTS500011, the user-assigned identity chosen by client id or ARM resource id.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from amlrelay.events import parse_events
from amlrelay.models import AmlEvent
from amlrelay.reconcile import find_started_run
from amlrelay.record import Outcome, exit_code
from amlrelay.relay import AMBIGUOUS, Relay
from amlrelay.router import build_request
from amlrelay.routes import load_routes, parse_routes
from amlrelay.runbook import build_relay
from amlrelay.settings import resolve
from tests.conftest import ROUTES_FILE, sample
from tests.servers._jwt import decode_claims
from tests.servers.ado import ADO_RESOURCE, PipelineDef
from tests.servers.identity import IdentityServer
from tests.stack import Stack, local_stack

UA_CLIENT = "33333333-3333-3333-3333-333333333333"
UA_OBJECT = "44444444-4444-4444-4444-444444444444"
UA_RESOURCE_ID = ("/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-ml/providers/"
                  "Microsoft.ManagedIdentity/userAssignedIdentities/id-amlrelay")

DEPLOY = {"version": 1, "routes": [{
    "name": "deploy", "events": ["ModelRegistered"],
    "pipeline": {"project": "mlops", "id": 40,
                 "variables": {"AML_MODEL_NAME": "{{ modelName }}"},
                 "templateParameters": {"modelVersion": "{{ modelVersion }}",
                                        "environment": "{{ modelTags.stage | staging }}"}}}]}
DEPLOY_PIPELINE = PipelineDef("deploy", variables_settable_at_queue_time=frozenset({"AML_MODEL_NAME"}),
                              template_parameters=frozenset({"modelVersion", "environment"}),
                              parameter_types={"modelVersion": "number"},
                              parameter_values={"environment": frozenset({"staging", "production"})})



def relay_in(stack: Stack, monkeypatch: pytest.MonkeyPatch, routes: Any = None, **env: str) -> Relay:
    """A relay built from settings exactly as a job builds it (ledger off: these tests are about ADO/Entra)."""
    full = stack.env(**env)
    for name, value in full.items():
        monkeypatch.setenv(name, value)
    return build_relay(resolve({}, env=full), routes or load_routes(ROUTES_FILE))


def deliver(relay: Relay, *events: dict[str, Any]) -> list[Outcome]:
    return relay.handle(parse_events(list(events)), raw=list(events))


def registered(version: str = "3", stage: str | None = None) -> dict[str, Any]:
    event = sample("event-grid-schema", "model_registered")
    event["data"]["modelVersion"] = version
    if stage is not None:
        event["data"]["modelTags"] = {"stage": stage}
    return event


@pytest.fixture
def deploy_stack() -> Iterator[Stack]:
    with local_stack(pipelines={("mlops", 40): DEPLOY_PIPELINE}) as stack:
        yield stack


# --- pipelines declared by the test -----------------------------------------------------------------------

def test_a_parameter_value_the_pipeline_does_not_allow_is_refused_by_ado(deploy_stack: Stack,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    relay = relay_in(deploy_stack, monkeypatch, parse_routes(json.dumps(DEPLOY)))
    [ok] = deliver(relay, registered("3"))
    [refused] = deliver(relay, registered("4", stage="qa"))
    assert ok.outcome == "triggered", ok.reason
    assert refused.outcome == "failed"
    assert "HTTP 400" in (refused.reason or "")
    assert "The 'environment' parameter value 'qa' is not a valid value." in (refused.reason or "")
    assert len(deploy_stack.ado.runs) == 1


def test_a_parameter_of_the_wrong_type_and_an_unsettable_variable_are_refused(deploy_stack: Stack,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    document = json.loads(json.dumps(DEPLOY))
    document["routes"][0]["pipeline"]["templateParameters"]["modelVersion"] = "v{{ modelVersion }}"
    relay = relay_in(deploy_stack, monkeypatch, parse_routes(json.dumps(document)))
    [wrong_type] = deliver(relay, registered("3"))
    assert "The 'modelVersion' parameter is not a valid Number." in (wrong_type.reason or "")
    document = json.loads(json.dumps(DEPLOY))
    document["routes"][0]["pipeline"]["variables"]["AML_EXTRA"] = "x"
    relay = relay_in(deploy_stack, monkeypatch, parse_routes(json.dumps(document)))
    [unsettable] = deliver(relay, registered("3"))
    assert "You can't set the following variables (AML_EXTRA)" in (unsettable.reason or "")
    assert [wrong_type.outcome, unsettable.outcome] == ["failed", "failed"]
    assert deploy_stack.ado.runs == []
    assert exit_code([wrong_type]) == 1


# --- run history: seeded and back-dated runs, 504, clock offset ------------------------------------------

def _request(version: str = "3") -> tuple[Any, AmlEvent]:
    route = parse_routes(json.dumps(DEPLOY)).routes[0]
    [event] = parse_events([registered(version)])
    assert isinstance(event, AmlEvent)
    return build_request(route, event), event


def _client(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Any:
    relay = relay_in(stack, monkeypatch, parse_routes(json.dumps(DEPLOY)))
    return relay.trigger


def test_reconciling_skips_other_outcomes_runs_and_runs_older_than_the_attempt(
        deploy_stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    ado = deploy_stack.ado
    now = ado.now()
    model = {"AML_MODEL_NAME": "sklearn_regression_model"}
    ado.seed_run("mlops", 40, created=now - timedelta(hours=3), variables=model,
                 template_parameters={"modelVersion": "3", "environment": "staging"})  # same outcome, long ago
    ado.seed_run("mlops", 40, created=now - timedelta(minutes=1), variables=model,
                 template_parameters={"modelVersion": "4", "environment": "staging"})  # another version
    request, _ = _request("3")
    client = _client(deploy_stack, monkeypatch)
    assert find_started_run(client, request, since=datetime.now(timezone.utc)) is None
    recent = ado.seed_run("mlops", 40, created=ado.now() - timedelta(minutes=4),
                          variables={"AML_MODEL_NAME": "sklearn_regression_model"},
                          template_parameters={"modelVersion": "3", "environment": "staging"})
    found = find_started_run(client, request, since=datetime.now(timezone.utc))
    assert found is not None
    assert found.id == recent["id"]  # within the 5-minute clock-skew margin: this attempt's run


@pytest.mark.parametrize(("offset_minutes", "found"), [(-4, True), (4, True), (-6, False)])
def test_ado_clock_off_the_clients_within_five_minutes_still_finds_the_run(
        deploy_stack: Stack, monkeypatch: pytest.MonkeyPatch, offset_minutes: int, found: bool) -> None:
    deploy_stack.ado.clock_offset = timedelta(minutes=offset_minutes)
    relay = relay_in(deploy_stack, monkeypatch, parse_routes(json.dumps(DEPLOY)))
    sent = datetime.now(timezone.utc)
    assert relay.trigger is not None
    request, _ = _request("3")
    run = relay.trigger.run_pipeline(request)
    match = find_started_run(relay.trigger, request, since=sent)
    assert (match is not None) is found  # beyond the margin the run is out of the window (README: a limit)
    if found:
        assert match is not None
        assert match.id == run.id


def test_a_504_is_ambiguous_never_resent_at_once(deploy_stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    relay = relay_in(deploy_stack, monkeypatch, parse_routes(json.dumps(DEPLOY)))
    deploy_stack.ado.fail(504)  # the gateway gave up; ADO may still be creating the run
    [lost] = deliver(relay, registered("3"))
    assert lost.outcome == "failed"
    assert (lost.reason or "").startswith(AMBIGUOUS)
    assert "HTTP 504" in (lost.reason or "")
    assert len(deploy_stack.ado.run_requests) == 1  # no blind resend, no urllib3 retry of the POST
    deploy_stack.ado.accept_then_fail(504)  # this time the run was created before the gateway answered
    [adopted] = deliver(relay, registered("5"))
    assert adopted.outcome == "triggered"
    assert len(deploy_stack.ado.runs) == 1
    assert adopted.ado_run_id == deploy_stack.ado.runs[0]["id"]


# --- Entra: lifetimes and refresh, unknown resources, user-assigned identities ---------------------------

@pytest.mark.parametrize(("lifetime", "token_requests"), [(3600, 1), (240, 3)])
def test_tokens_are_reused_while_fresh_and_refreshed_before_expiry(monkeypatch: pytest.MonkeyPatch, lifetime: int,
                                                                   token_requests: int) -> None:
    """azure-identity treats a token within 5 minutes of expiry as expired: an hour-long token serves three
    calls, a 4-minute one is fetched anew for each; ADO accepts every one (none was sent expired)."""
    with local_stack(identity=IdentityServer(lifetime=lifetime)) as stack:
        relay = relay_in(stack, monkeypatch)
        outcomes = deliver(relay, sample("event-grid-schema", "model_registered"),
                           sample("event-grid-schema", "model_deployed"),
                           sample("event-grid-schema", "dataset_drift_detected"))
        assert [o.outcome for o in outcomes] == ["triggered"] * 3, [o.reason for o in outcomes]
        assert len(stack.identity.token_requests) == token_requests
        sent = [r.headers["authorization"].removeprefix("Bearer ") for r in stack.ado.run_requests]
        assert len(set(sent)) == token_requests
        issued = {t.token: t.expires_on for t in stack.identity.issued}
        assert all(issued[token] > stack.ado.now().timestamp() for token in sent)


def test_an_expired_token_is_refused_by_ado(monkeypatch: pytest.MonkeyPatch) -> None:
    with local_stack(identity=IdentityServer(lifetime=3600)) as stack:
        stack.ado.clock_offset = timedelta(hours=2)  # by ADO's clock the token expired an hour ago
        relay = relay_in(stack, monkeypatch)
        [outcome] = deliver(relay, sample("event-grid-schema", "model_registered"))
        assert outcome.outcome == "failed"
        assert "HTTP 401" in (outcome.reason or "")
        assert stack.ado.runs == []


def test_a_token_for_an_unknown_resource_is_refused_as_entra_refuses_it(monkeypatch: pytest.MonkeyPatch) -> None:
    with local_stack() as stack:
        relay = relay_in(stack, monkeypatch, AMLRELAY_ADO_RESOURCE="https://ado.contoso.invalid")
        [outcome] = deliver(relay, sample("event-grid-schema", "model_registered"))
        assert outcome.outcome == "failed"
        assert "No Entra token for ADO" in (outcome.reason or "")
        assert "AADSTS500011" in (outcome.reason or "")
        assert [r.query["resource"] for r in stack.identity.token_requests][:1] == ["https://ado.contoso.invalid"]
        assert stack.ado.requests == []


def test_the_ado_resource_setting_is_the_tokens_audience(monkeypatch: pytest.MonkeyPatch) -> None:
    with local_stack(identity=IdentityServer(lifetime=3600)) as stack:
        relay = relay_in(stack, monkeypatch, AMLRELAY_ADO_RESOURCE=f"api://{ADO_RESOURCE}")
        [outcome] = deliver(relay, sample("event-grid-schema", "model_registered"))
        assert [r.query["resource"] for r in stack.identity.token_requests] == [f"api://{ADO_RESOURCE}"]
        assert outcome.outcome == "failed"  # Entra has no resource by that name: the setting was used
        assert "AADSTS500011" in (outcome.reason or "")


def test_the_user_assigned_identity_is_the_one_ado_sees(monkeypatch: pytest.MonkeyPatch) -> None:
    identity = IdentityServer(lifetime=3600, user_assigned={UA_CLIENT: UA_OBJECT})
    with local_stack(identity=identity) as stack:
        relay = relay_in(stack, monkeypatch, AMLRELAY_MANAGED_IDENTITY_CLIENT_ID=UA_CLIENT)
        [outcome] = deliver(relay, sample("event-grid-schema", "model_registered"))
        assert outcome.outcome == "triggered", outcome.reason
        assert [r.query.get("client_id") for r in stack.identity.token_requests] == [UA_CLIENT]
        token = stack.ado.run_requests[0].headers["authorization"].removeprefix("Bearer ")
        claims = decode_claims(token)
        assert claims is not None
        assert (claims["oid"], claims["appid"], claims["aud"]) == (UA_OBJECT, UA_CLIENT, ADO_RESOURCE)
        stack.ado.forbid(token)
        [refused] = deliver(relay, sample("event-grid-schema", "model_deployed"))
        assert f"the user-assigned managed identity {UA_CLIENT} (object id {UA_OBJECT}" in (refused.reason or "")


def test_an_identity_the_sandbox_does_not_have_gets_no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    with local_stack() as stack:
        relay = relay_in(stack, monkeypatch, AMLRELAY_MANAGED_IDENTITY_CLIENT_ID=UA_CLIENT)
        [outcome] = deliver(relay, sample("event-grid-schema", "model_registered"))
        assert outcome.outcome == "failed"
        assert f"No Entra token for ADO from the user-assigned managed identity {UA_CLIENT}" in (outcome.reason or "")
        assert stack.ado.requests == []


def test_a_user_assigned_identity_can_be_chosen_by_its_resource_id(monkeypatch: pytest.MonkeyPatch) -> None:
    from azure.identity import ManagedIdentityCredential

    identity = IdentityServer(lifetime=3600, user_assigned={UA_CLIENT: UA_OBJECT},
                              resource_ids={UA_RESOURCE_ID: UA_CLIENT})
    with identity:
        for name, value in identity.env().items():
            monkeypatch.setenv(name, value)
        credential = ManagedIdentityCredential(identity_config={"resource_id": UA_RESOURCE_ID})
        claims = decode_claims(credential.get_token(f"{ADO_RESOURCE}/.default").token)
        assert claims is not None
        assert claims["oid"] == UA_OBJECT
        unknown = ManagedIdentityCredential(identity_config={"resource_id": UA_RESOURCE_ID + "-other"})
        from azure.core.exceptions import ClientAuthenticationError

        with pytest.raises(ClientAuthenticationError):
            unknown.get_token(f"{ADO_RESOURCE}/.default")
