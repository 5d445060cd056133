"""The executor's semantics, on small hand-written workflows: runAfter and Skipped propagation, scopes,
Until's last-iteration status (the loops article), the HTTP action's retry policies (EXC) and managed
identity, Response, and billing (PRICE: executed actions count, Skipped do not)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from amlrelay.logicapp import SCHEMA, Workflow
from tests.servers.ado import ADO_RESOURCE, AdoServer
from tests.servers.identity import IdentityServer
from tests.servers.pytest_plugin import DEFAULT_PIPELINE, DEFAULT_PIPELINE_ID, DEFAULT_PROJECT


@pytest.fixture
def ado() -> Iterator[AdoServer]:
    token = IdentityServer().token_for(ADO_RESOURCE)
    with AdoServer("contoso", pipelines={(DEFAULT_PROJECT, DEFAULT_PIPELINE_ID): DEFAULT_PIPELINE},
                   bearer_tokens={token}) as server:
        yield server


def workflow(actions: dict[str, Any], **parameters: Any) -> Workflow:
    definition = {"$schema": SCHEMA, "contentVersion": "1.0.0.0",
                  "parameters": {n: {"type": "String"} for n in parameters},
                  "triggers": {"manual": {"type": "Request", "kind": "Http", "inputs": {"method": "POST"}}},
                  "actions": actions}
    return Workflow(definition, parameters, lambda audience: IdentityServer().token_for(audience))


def respond(after: dict[str, list[str]], status: str = "200", body: Any = None) -> dict[str, Any]:
    return {"type": "Response", "kind": "Http", "runAfter": after, "inputs": {"statusCode": status, "body": body}}


def post(url: str, after: dict[str, list[str]] | None = None, policy: dict[str, Any] | None = None) -> dict[str, Any]:
    inputs: dict[str, Any] = {"method": "POST", "uri": url, "body": {}, "headers": {"Content-Type": "application/json"},
                              "authentication": {"type": "ManagedServiceIdentity", "audience": ADO_RESOURCE}}
    if policy is not None:
        inputs["retryPolicy"] = policy
    return {"type": "Http", "runAfter": after or {}, "inputs": inputs}


def runs_url(ado: AdoServer) -> str:
    return f"{ado.org_url}/{DEFAULT_PROJECT}/_apis/pipelines/{DEFAULT_PIPELINE_ID}/runs?api-version=7.1"


def test_run_after_skips_and_skipped_propagates(ado: AdoServer) -> None:
    result = workflow({
        "Call": post(runs_url(ado), policy={"type": "none"}),
        "On_failure": {"type": "Compose", "runAfter": {"Call": ["Failed"]}, "inputs": "failed"},
        "After_failure_handler": {"type": "Compose", "runAfter": {"On_failure": ["Succeeded"]}, "inputs": 1},
        "Answer": respond({"Call": ["Succeeded"]}, "@{outputs('Call')?['statusCode']}"),
    }).post(b"[]")
    assert result.actions == [("Call", "Succeeded"), ("On_failure", "Skipped"), ("Answer", "Succeeded"),
                              ("After_failure_handler", "Skipped")]
    assert result.response.status == 200
    assert result.billable == 3  # trigger, Call, Answer: skipped actions are free
    assert len(ado.run_requests) == 1
    assert ado.run_requests[0].headers["Authorization"] == "Bearer " + IdentityServer().token_for(ADO_RESOURCE)


def test_default_retry_policy_resends_after_5xx_and_none_does_not(ado: AdoServer) -> None:
    ado.fail(500)
    default = workflow({"Call": post(runs_url(ado)), "Answer": respond({"Call": ["Succeeded", "Failed"]})})
    assert default.post(b"[]").statuses("Call") == ["Succeeded"]
    assert len(ado.run_requests) == 2  # EXC: 5xx is retried by default, which is why amlrelay opts out
    ado.fail(500)
    none = workflow({"Call": post(runs_url(ado), policy={"type": "none"}),
                     "Answer": respond({"Call": ["Succeeded", "Failed"]})})
    assert none.post(b"[]").statuses("Call") == ["Failed"]
    assert len(ado.run_requests) == 3
    ado.fail(400)
    assert default.post(b"[]").statuses("Call") == ["Failed"]  # other 4xx are never retried
    assert len(ado.run_requests) == 4


def test_until_takes_the_status_of_its_last_iteration(ado: AdoServer) -> None:
    ado.fail(429, times=2)
    loop = {"type": "Until", "runAfter": {}, "limit": {"count": 5, "timeout": "PT1H"},
            "expression": "@not(equals(outputs('Call')?['statusCode'], 429))",
            "actions": {"Call": post(runs_url(ado), policy={"type": "none"})}}
    result = workflow({"Loop": loop, "Answer": respond({"Loop": ["Succeeded"]})}).post(b"[]")
    assert result.statuses("Call") == ["Failed", "Failed", "Succeeded"]
    assert result.statuses("Loop") == ["Succeeded"]  # earlier failed iterations do not fail the loop
    assert result.billable == 1 + 1 + 3 + 1
    ado.fail(429, times=5)
    failed = workflow({"Loop": {**loop, "limit": {"count": 2}}, "Answer": respond({"Loop": ["Failed"]})}).post(b"[]")
    assert failed.statuses("Loop") == ["Failed"]
    assert failed.response.status == 200


def test_foreach_and_if_fail_when_an_inner_action_fails_and_items_are_scoped() -> None:
    actions = {
        "Init": {"type": "InitializeVariable", "runAfter": {},
                 "inputs": {"variables": [{"name": "seen", "type": "array", "value": []}]}},
        "Each": {"type": "Foreach", "runAfter": {"Init": ["Succeeded"]}, "foreach": "@triggerBody()",
                 "actions": {"Check": {"type": "If", "runAfter": {}, "expression": "@equals(item(), 2)",
                                       "actions": {"Bad": {"type": "Compose", "runAfter": {},
                                                           "inputs": "@json('not json')"}},
                                       "else": {"actions": {"Note": {"type": "AppendToArrayVariable", "runAfter": {},
                                                                     "inputs": {"name": "seen",
                                                                                "value": "@items('Each')"}}}}}}},
        "Answer": respond({"Each": ["Succeeded", "Failed"]}, "200", "@variables('seen')"),
    }
    result = workflow(actions).post(json.dumps([1, 2, 3]).encode())
    assert result.response.body == [1, 3]
    assert result.statuses("Check") == ["Succeeded", "Failed", "Succeeded"]
    assert result.statuses("Each") == ["Failed"]
    assert result.billable == 1 + 1 + 1 + 3 + 3 + 1  # trigger, Init, Each, 3 x Check, Note/Bad/Note, Answer


def test_without_a_response_the_caller_gets_no_answer_and_a_second_response_fails() -> None:
    assert workflow({"Nothing": {"type": "Compose", "runAfter": {}, "inputs": 1}}).post(b"[]").response.status == 504
    twice = workflow({"One": respond({}, "200"), "Two": respond({"One": ["Succeeded"]}, "500")}).post(b"[]")
    assert (twice.response.status, twice.statuses("Two")) == (200, ["Failed"])


def test_an_expression_error_fails_the_action_not_the_run() -> None:
    result = workflow({"Bad": {"type": "Compose", "runAfter": {}, "inputs": "@triggerBody()['missing']"},
                       "Answer": respond({"Bad": ["Failed"]}, "500")}).post(b"{}")
    assert result.response.status == 500
    assert result.failures[0][0] == "Bad"
