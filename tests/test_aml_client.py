"""The AML jobs client (amlrelay.aml) against the ARM/AML stand-in, with real azure-identity credentials.

Also checks that the stand-in follows the official spec excerpt (JobStatus enum, job body keys, cancel
answers), so neither the client nor the fake can drift from the contract unnoticed.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests

from amlrelay.aml import (
    FINAL_STATES,
    QUEUE_STATES,
    RUN_STATES,
    AmlError,
    AmlNotFoundError,
    JobsClient,
    JobStatus,
    Workspace,
    parse_status,
)
from tests.conftest import FIXTURES
from tests.servers.aml import ARM_RESOURCE, AmlServer, spec_job_statuses
from tests.servers.identity import IdentityServer

SPEC = json.loads((FIXTURES / "aml" / "mfe.2025-09-01.jobs-excerpt.json").read_text(encoding="utf-8"))



@pytest.fixture
def client(aml_server: AmlServer, aml_credential: Any) -> JobsClient:
    return JobsClient(aml_server.workspace_id, aml_credential, arm_url=aml_server.arm_url, audience=ARM_RESOURCE,
                     backoff=0)


# -- the enum is the spec's ----------------------------------------------------------------------------------
def test_job_status_enum_is_the_spec_enum_in_order() -> None:
    assert [s.value for s in JobStatus] == SPEC["definitions"]["JobStatus"]["enum"]
    assert [s.value for s in JobStatus] == list(spec_job_statuses())


def test_every_status_has_exactly_one_waiter_group() -> None:
    for status in JobStatus:
        assert [status in QUEUE_STATES, status in RUN_STATES, status in FINAL_STATES].count(True) == 1, status
    assert {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED} == FINAL_STATES


def test_unknown_status_strings_are_tolerated_because_the_enum_is_extensible() -> None:
    assert SPEC["definitions"]["JobStatus"]["x-ms-enum"]["modelAsString"] is True
    assert parse_status("Hibernating") is JobStatus.UNKNOWN
    assert parse_status(None) is JobStatus.UNKNOWN
    assert parse_status("completed") is JobStatus.COMPLETED


# -- workspace ids -------------------------------------------------------------------------------------------
def test_workspace_parse_is_case_insensitive_on_fixed_segments() -> None:
    ws = Workspace.parse("/SUBSCRIPTIONS/sub-1/resourcegroups/rg-a/providers/microsoft.machinelearningservices/"
                         "Workspaces/mlw-a")
    assert (ws.subscription, ws.resource_group, ws.name) == ("sub-1", "rg-a", "mlw-a")
    assert ws.arm_path == ("/subscriptions/sub-1/resourceGroups/rg-a/providers/Microsoft.MachineLearningServices/"
                           "workspaces/mlw-a")


@pytest.mark.parametrize("bad", [
    "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/st",
    "/subscriptions/s/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/ws/jobs/j",
    "mlw-contoso", "", "/subscriptions/s/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/-x",
])
def test_workspace_parse_refuses_other_ids(bad: str) -> None:
    with pytest.raises(AmlError, match="workspace") as info:
        Workspace.parse(bad)
    assert info.value.hint


# -- jobs ----------------------------------------------------------------------------------------------------
def test_get_job_reads_status_tags_and_studio_link(aml_server: AmlServer, identity_server: IdentityServer,
                                                   client: JobsClient) -> None:
    aml_server.add_job("train-1", "Running", experiment_name="toy", tags={"branch": "main"})
    job = client.get_job("train-1")
    assert (job.name, job.status, job.experiment_name, job.tags) == ("train-1", JobStatus.RUNNING, "toy",
                                                                     {"branch": "main"})
    assert job.studio_url.startswith("https://ml.azure.com/runs/train-1?wsid=")
    # the token was asked for ARM and it is the one ARM got
    (token_request,) = identity_server.token_requests
    assert token_request.query["resource"] == ARM_RESOURCE
    (get,) = aml_server.job_gets()
    assert get.headers["Authorization"] == f"Bearer {identity_server.token_for(ARM_RESOURCE)}"
    assert get.query == {"api-version": "2025-09-01"}


def test_studio_link_falls_back_to_the_sdk_format(aml_server: AmlServer, client: JobsClient) -> None:
    aml_server.add_job("j2", "Queued", studio=False)
    assert client.get_job("j2").studio_url == (
        f"https://ml.azure.com/runs/j2?wsid=/subscriptions/{aml_server.subscription}/resourcegroups/"
        f"{aml_server.resource_group}/workspaces/{aml_server.workspace}")


def test_job_names_are_case_sensitive_but_the_workspace_path_is_not(aml_server: AmlServer, aml_credential: Any) -> None:
    aml_server.add_job("train-1", "Completed")
    upper = JobsClient(aml_server.workspace_id.upper().replace("SUBSCRIPTIONS", "subscriptions"), aml_credential,
                       arm_url=aml_server.arm_url, audience=ARM_RESOURCE, backoff=0)
    assert upper.get_job("train-1").status is JobStatus.COMPLETED
    with pytest.raises(AmlNotFoundError) as info:
        upper.get_job("Train-1")
    assert info.value.status == 404


def test_invalid_job_name_is_refused_before_any_request(aml_server: AmlServer, client: JobsClient) -> None:
    with pytest.raises(AmlError, match="not a valid AML job name"):
        client.get_job("../workspaces/other")
    assert aml_server.requests == []


def test_unknown_workspace_is_not_found_with_arm_code(aml_server: AmlServer, aml_credential: Any) -> None:
    other = aml_server.workspace_id.replace("mlw-contoso", "mlw-other")
    with pytest.raises(AmlNotFoundError) as info:
        JobsClient(other, aml_credential, arm_url=aml_server.arm_url, audience=ARM_RESOURCE).get_job("x")
    assert info.value.code == "ResourceNotFound"


def test_a_token_for_another_audience_is_refused(aml_server: AmlServer, aml_credential: Any) -> None:
    aml_server.add_job("j", "Running")
    wrong = JobsClient(aml_server.workspace_id, aml_credential, arm_url=aml_server.arm_url,
                       audience="499b84ac-1321-427f-aa17-267ca6975798")  # ADO's audience
    with pytest.raises(AmlError) as info:
        wrong.get_job("j")
    assert (info.value.status, info.value.code) == (401, "InvalidAuthenticationTokenAudience")
    assert "service connection or managed identity" in info.value.hint


def test_no_role_is_a_403_naming_the_action(aml_server: AmlServer, identity_server: IdentityServer,
                                             client: JobsClient) -> None:
    aml_server.add_job("j", "Running")
    aml_server.forbid(identity_server.object_id)
    with pytest.raises(AmlError) as info:
        client.get_job("j")
    assert info.value.status == 403
    assert "Microsoft.MachineLearningServices/workspaces/jobs/read" in info.value.hint


def test_throttling_and_outages_are_retried(aml_server: AmlServer, client: JobsClient) -> None:
    aml_server.add_job("j", "Running")
    aml_server.fail(503, times=2)
    aml_server.fail(429, times=1, retry_after=0)
    assert client.get_job("j").status is JobStatus.RUNNING
    assert len(aml_server.job_gets("j")) == 4


def test_an_outage_that_lasts_is_a_retryable_error(aml_server: AmlServer, aml_credential: Any) -> None:
    aml_server.add_job("j", "Running")
    aml_server.fail(503, times=10)
    quick = JobsClient(aml_server.workspace_id, aml_credential, arm_url=aml_server.arm_url, audience=ARM_RESOURCE,
                       retries=1, backoff=0)
    with pytest.raises(AmlError) as info:
        quick.get_job("j")
    assert (info.value.status, info.value.retryable) == (503, True)


def test_unsupported_api_version_is_refused(aml_server: AmlServer, aml_credential: Any) -> None:
    aml_server.add_job("j", "Running")
    old = JobsClient(aml_server.workspace_id, aml_credential, arm_url=aml_server.arm_url, audience=ARM_RESOURCE,
                     api_version="2019-01-01")
    with pytest.raises(AmlError) as info:
        old.get_job("j")
    assert (info.value.status, info.value.code) == (400, "NoRegisteredProviderFound")


def test_no_answer_is_a_retryable_error(aml_server: AmlServer, aml_credential: Any) -> None:
    url = aml_server.arm_url
    aml_server.down()
    quick = JobsClient(aml_server.workspace_id, aml_credential, arm_url=url, audience=ARM_RESOURCE, retries=0)
    with pytest.raises(AmlError, match="No answer from ARM") as info:
        quick.get_job("j")
    assert info.value.retryable
    assert info.value.status is None


def test_identity_endpoint_failure_is_explained(identity_server: IdentityServer, aml_server: AmlServer,
                                                client: JobsClient) -> None:
    identity_server.fail(400, times=10)  # 5xx would be retried by azure-identity for seconds
    with pytest.raises(AmlError, match="No token for ARM") as info:
        client.get_job("j")
    assert "AzureCLI@2" in info.value.hint
    assert aml_server.requests == []


# -- cancel --------------------------------------------------------------------------------------------------
def test_cancel_goes_through_cancel_requested_to_canceled(aml_server: AmlServer, client: JobsClient) -> None:
    aml_server.add_job("j", "Running")
    client.cancel_job("j")
    (cancel,) = aml_server.cancels()
    assert cancel.body == b""
    assert client.get_job("j").status is JobStatus.CANCEL_REQUESTED
    assert client.get_job("j").status is JobStatus.CANCELED


def test_cancel_answers_follow_the_spec() -> None:
    cancel = SPEC["paths"][next(p for p in SPEC["paths"] if p.endswith("/cancel"))]["post"]
    assert set(cancel["responses"]) == {"200", "202", "default"}
    retry_after = cancel["responses"]["202"]["headers"]["Retry-After"]
    with AmlServer() as server:
        server.add_job("j", "Running")
        from tests.servers._jwt import mint_token

        headers = {"Authorization": f"Bearer {mint_token(ARM_RESOURCE)}"}
        answer = requests.post(f"{server.url}{server.workspace_id}/jobs/j/cancel",
                               params={"api-version": "2025-09-01"}, headers=headers, timeout=5)
        assert answer.status_code == 202
        assert retry_after["minimum"] <= int(answer.headers["Retry-After"]) <= retry_after["maximum"]
        assert answer.headers["Location"].endswith("/jobs/j")


def test_cancelling_a_final_job_changes_nothing(aml_server: AmlServer, client: JobsClient) -> None:
    aml_server.add_job("done", "Completed")
    client.cancel_job("done")
    assert client.get_job("done").status is JobStatus.COMPLETED


# -- models and workspace ------------------------------------------------------------------------------------
def test_model_version_tags(aml_server: AmlServer, client: JobsClient) -> None:
    aml_server.add_model_version("sklearn-model", 3, tags={"stage": "candidate"})
    model = client.get_model_version("sklearn-model", 3)
    assert (model.name, model.version, model.tags) == ("sklearn-model", "3", {"stage": "candidate"})
    with pytest.raises(AmlNotFoundError):
        client.get_model_version("sklearn-model", 4)


def test_workspace_gives_the_mlflow_tracking_uri(aml_server: AmlServer, client: JobsClient) -> None:
    assert client.get_workspace()["properties"]["mlFlowTrackingUri"].startswith("azureml://")


# -- the stand-in keeps to the contract -----------------------------------------------------------------------
def test_stand_in_job_body_uses_only_spec_fields(aml_server: AmlServer) -> None:
    aml_server.add_job("j", "Running")
    from tests.servers._jwt import mint_token

    body = requests.get(f"{aml_server.url}{aml_server.workspace_id}/jobs/j", params={"api-version": "2025-09-01"},
                        headers={"Authorization": f"Bearer {mint_token(ARM_RESOURCE)}"}, timeout=5).json()
    example = json.loads((FIXTURES / "aml" / "command_job_get.json").read_text())["responses"]["200"]["body"]
    allowed = set(SPEC["definitions"]["JobBase"]["properties"]) | set(SPEC["definitions"]["ResourceBase"][
        "properties"]) | set(example["properties"])
    assert set(body["properties"]) <= allowed
    assert set(body) <= set(example)
    assert body["properties"]["jobType"] in SPEC["definitions"]["JobType"]["enum"]
    for service in body["properties"]["services"].values():
        assert set(service) <= set(SPEC["definitions"]["JobService"]["properties"])


@pytest.mark.parametrize(("headers", "params", "code"), [
    ({}, {"api-version": "2025-09-01"}, "AuthenticationFailed"),
    ({"Authorization": "Basic abc"}, {"api-version": "2025-09-01"}, "AuthenticationFailed"),
    ({"Authorization": "Bearer not.a.token"}, {"api-version": "2025-09-01"}, "InvalidAuthenticationToken"),
    (None, {}, "MissingApiVersionParameter"),
])
def test_stand_in_refuses_what_arm_refuses(aml_server: AmlServer, headers: dict[str, str] | None,
                                           params: dict[str, str], code: str) -> None:
    from tests.servers._jwt import mint_token

    aml_server.add_job("j", "Running")
    sent = headers if headers is not None else {"Authorization": f"Bearer {mint_token(ARM_RESOURCE)}"}
    answer = requests.get(f"{aml_server.url}{aml_server.workspace_id}/jobs/j", params=params, headers=sent,
                          timeout=5)
    assert answer.status_code in (400, 401)
    assert answer.json()["error"]["code"] == code


def test_stand_in_refuses_status_typos(aml_server: AmlServer) -> None:
    with pytest.raises(ValueError, match="JobStatus"):
        aml_server.add_job("j", "Complete")
    aml_server.add_job("j", "Running")
    aml_server.set_status("j", "Hibernating", allow_unknown=True)  # modelAsString: new values may appear
    assert aml_server.status("j") == "Hibernating"


def test_stand_in_put_follows_jobs_create_or_update(aml_server: AmlServer) -> None:
    from tests.servers._jwt import mint_token

    url = f"{aml_server.url}{aml_server.workspace_id}/jobs"
    headers = {"Authorization": f"Bearer {mint_token(ARM_RESOURCE)}"}
    params = {"api-version": "2025-09-01"}
    body = {"properties": {"jobType": "Command", "command": "echo", "tags": {"a": "1", "b": "2"}}}
    created = requests.put(f"{url}/job-1", json=body, params=params, headers=headers, timeout=5)
    assert (created.status_code, created.json()["properties"]["status"]) == (201, "NotStarted")
    body["properties"]["tags"] = {"c": "3"}
    updated = requests.put(f"{url}/job-1", json=body, params=params, headers=headers, timeout=5)
    assert updated.status_code == 200
    assert aml_server.job_tags("job-1") == {"c": "3"}  # the spec: tags sent on update replace the old ones
    pattern = SPEC["paths"][next(p for p in SPEC["paths"] if p.endswith("/jobs/{id}"))]["put"]["parameters"]
    assert any(p.get("pattern") for p in pattern)
    bad_name = requests.put(f"{url}/-starts-with-dash", json=body, params=params, headers=headers, timeout=5)
    no_type = requests.put(f"{url}/job-2", json={"properties": {}}, params=params, headers=headers, timeout=5)
    assert (bad_name.status_code, no_type.status_code) == (400, 400)
    assert "job-2" not in aml_server.job_names()
