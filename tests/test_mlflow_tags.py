"""MLflow tagging (amlrelay.aml._mlflow) against the MLflow stand-in, with a real ManagedIdentityCredential
asking the identity stand-in for an ARM token: the URL AML serves, the bodies MLflow documents, what MLflow
refuses and how each failure reads."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from amlrelay.aml._errors import AmlError
from amlrelay.aml._mlflow import MlflowClient, MlflowError, tracking_url
from tests.servers._jwt import decode_claims
from tests.servers.ado import ADO_RESOURCE
from tests.servers.identity import CONFLICTING_ENV, IdentityServer
from tests.servers.mlflow import ARM_RESOURCE, MlflowServer
from tests.servers.tls import TlsMaterial

WORKSPACE = ("/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-contoso/providers/"
             "Microsoft.MachineLearningServices/workspaces/contoso-ml")


@pytest.fixture
def mlflow_server() -> Iterator[MlflowServer]:
    with MlflowServer(WORKSPACE) as server:
        yield server


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch, identity_server: IdentityServer,
           mlflow_server: MlflowServer) -> MlflowClient:
    from azure.identity import ManagedIdentityCredential

    for name in CONFLICTING_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in identity_server.env().items():
        monkeypatch.setenv(name, value)
    return MlflowClient(mlflow_server.tracking_url, ManagedIdentityCredential(), timeout=5, backoff=0)


# ---- the tracking URL ---------------------------------------------------------------------------------

def test_tracking_url_from_region_is_the_documented_shape() -> None:
    assert tracking_url(WORKSPACE, region="westeurope") == (
        "https://westeurope.api.azureml.ms/mlflow/v2.0/subscriptions/00000000-0000-0000-0000-000000000001/"
        "resourceGroups/rg-contoso/providers/Microsoft.MachineLearningServices/workspaces/contoso-ml")


def test_tracking_url_base_is_configurable_for_other_clouds() -> None:
    url = tracking_url(WORKSPACE, region="ChinaEast2", base="https://{region}.api.ml.azure.cn/")
    assert url.startswith("https://chinaeast2.api.ml.azure.cn/mlflow/v2.0/subscriptions/")


def test_a_full_mlflow_tracking_uri_is_used_for_its_own_workspace_only_on_the_v2_path() -> None:
    """AML advertises ``…/mlflow/v1.0/<workspace>``; the REST calls go to ``/mlflow/v2.0/`` (azureml-mlflow's
    rewrite with mlflow >= 2): the host (private link) is kept, the prefix normalised."""
    uri = "azureml://privatelink.contoso.example/mlflow/v1.0" + WORKSPACE
    assert tracking_url(WORKSPACE, base=uri) == "https://privatelink.contoso.example/mlflow/v2.0" + WORKSPACE
    assert tracking_url(WORKSPACE, base=uri.replace("v1.0", "v2.0") + "/") == (
        "https://privatelink.contoso.example/mlflow/v2.0" + WORKSPACE)
    other = WORKSPACE.replace("contoso-ml", "other-ws")
    with pytest.raises(MlflowError, match="another workspace"):
        tracking_url(other, base=uri)


@pytest.mark.parametrize(("workspace", "region", "message"), [
    (WORKSPACE, None, "region is missing"),
    (WORKSPACE, "west europe", "invalid"),
    ("/subscriptions/x/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/a", "westeurope",
     "not the resource id of an AML workspace"),
])
def test_tracking_url_refuses_what_it_cannot_build(workspace: str, region: str | None, message: str) -> None:
    with pytest.raises(AmlError, match=message):
        tracking_url(workspace, region=region)


# ---- tagging ------------------------------------------------------------------------------------------

def test_run_tag_is_written_with_mlflow_body_and_an_arm_token(client: MlflowClient,
                                                              mlflow_server: MlflowServer) -> None:
    mlflow_server.add_run("Train_42", {"existing": "kept"})
    client.set_run_tag("Train_42", "amlrelay.ado_run_id", "1001")
    assert mlflow_server.run_tags("Train_42") == {"existing": "kept", "amlrelay.ado_run_id": "1001"}
    [request] = mlflow_server.tag_requests
    assert request.path == f"/mlflow/v2.0{WORKSPACE}/api/2.0/mlflow/runs/set-tag"
    assert request.json == {"run_id": "Train_42", "run_uuid": "Train_42", "key": "amlrelay.ado_run_id",
                            "value": "1001"}
    claims = decode_claims(request.headers["Authorization"].removeprefix("Bearer "))
    assert claims is not None
    assert claims["aud"] == ARM_RESOURCE


def test_model_version_tag_sends_the_version_as_a_string(client: MlflowClient, mlflow_server: MlflowServer) -> None:
    mlflow_server.add_model_version("churn", "3")
    client.set_model_version_tag("churn", 3, "amlrelay.ado_run_url", "https://dev.azure.com/contoso/p/_build?b=1")
    assert mlflow_server.model_version_tags("churn", 3) == {
        "amlrelay.ado_run_url": "https://dev.azure.com/contoso/p/_build?b=1"}
    assert mlflow_server.tag_requests[0].json == {"name": "churn", "version": "3", "key": "amlrelay.ado_run_url",
                                                  "value": "https://dev.azure.com/contoso/p/_build?b=1"}


def test_unknown_run_is_resource_does_not_exist(client: MlflowClient) -> None:
    with pytest.raises(MlflowError) as caught:
        client.set_run_tag("nope", "k", "v")
    assert (caught.value.status, caught.value.code, caught.value.retryable) == (404, "RESOURCE_DOES_NOT_EXIST", False)
    assert "Run with id=nope not found" in caught.value.message


def test_run_ids_are_case_sensitive(client: MlflowClient, mlflow_server: MlflowServer) -> None:
    mlflow_server.add_run("Train_42")
    with pytest.raises(MlflowError, match="404"):
        client.set_run_tag("train_42", "k", "v")


def test_throttling_and_5xx_are_retried_because_a_tag_is_idempotent(client: MlflowClient,
                                                                     mlflow_server: MlflowServer) -> None:
    mlflow_server.add_run("r1")
    mlflow_server.fail(503, times=2)
    client.set_run_tag("r1", "k", "v")
    assert mlflow_server.run_tags("r1") == {"k": "v"}
    assert len(mlflow_server.tag_requests) == 3


def test_a_server_that_keeps_failing_is_a_retryable_error(client: MlflowClient, mlflow_server: MlflowServer) -> None:
    mlflow_server.add_run("r1")
    mlflow_server.fail(500, times=10)
    with pytest.raises(MlflowError) as caught:
        client.set_run_tag("r1", "k", "v")
    assert caught.value.status == 500
    assert caught.value.retryable
    assert mlflow_server.run_tags("r1") == {}


def test_a_server_that_is_down_is_a_retryable_error_naming_the_host(client: MlflowClient,
                                                                    mlflow_server: MlflowServer) -> None:
    mlflow_server.down()
    with pytest.raises(MlflowError) as caught:
        client.set_run_tag("r1", "k", "v")
    assert caught.value.status is None
    assert caught.value.retryable
    assert "127.0.0.1" in caught.value.hint


def test_client_refuses_oversized_or_bad_tags_without_a_call(client: MlflowClient,
                                                             mlflow_server: MlflowServer) -> None:
    for key, value in (("k" * 251, "v"), ("k", "v" * 5001), ("../escape", "v"), ("bad*key", "v")):
        with pytest.raises(MlflowError):
            client.set_run_tag("r1", key, value)
    assert mlflow_server.requests == []


# ---- the stand-in refuses what MLflow refuses (raw requests, so the client's own checks cannot help) ---------

def _raw(server: MlflowServer, call: str, body: object, *, token: str, content_type: str = "application/json",
         ) -> requests.Response:
    import json

    return requests.post(f"{server.tracking_url}/api/2.0/mlflow/{call}", data=json.dumps(body), timeout=5,
                         headers={"Authorization": f"Bearer {token}", "Content-Type": content_type})


@pytest.mark.parametrize(("call", "body", "status", "code", "message"), [
    ("model-versions/set-tag", {"name": "m", "version": 3, "key": "k", "value": "v"}, 400,
     "INVALID_PARAMETER_VALUE", "Invalid value 3 for parameter 'version' supplied. Hint: Value was of type 'int'"),
    ("runs/set-tag", {"run_id": "r1", "value": "v"}, 400, "INVALID_PARAMETER_VALUE",
     "Missing value for required parameter 'key'"),
    ("runs/set-tag", {"key": "k", "value": "v"}, 400, "INVALID_PARAMETER_VALUE",
     "Missing value for required parameter 'run_id'"),
    ("runs/set-tag", {"run_id": "r1", "key": "k" * 251, "value": "v"}, 400, "INVALID_PARAMETER_VALUE",
     "exceeded length limit of 250"),
    ("runs/set-tag", {"run_id": "r1", "key": "k", "value": "v" * 5001}, 400, "INVALID_PARAMETER_VALUE",
     "exceeded length limit of 5000"),
    ("model-versions/set-tag", {"name": "m", "version": "9", "key": "k", "value": "v"}, 404,
     "RESOURCE_DOES_NOT_EXIST", "Model Version (name=m, version=9) not found"),
])
def test_stand_in_refuses_like_mlflow(mlflow_server: MlflowServer, identity_server: IdentityServer, call: str,
                                     body: object, status: int, code: str, message: str) -> None:
    mlflow_server.add_run("r1")
    mlflow_server.add_model_version("m", "3")
    response = _raw(mlflow_server, call, body, token=identity_server.token_for(ARM_RESOURCE))
    assert response.status_code == status
    assert response.json()["error_code"] == code
    assert message in response.json()["message"]
    assert mlflow_server.run_tags("r1") == {}
    assert mlflow_server.model_version_tags("m", "3") == {}


def test_stand_in_ignores_unknown_fields_and_answers_an_empty_object(mlflow_server: MlflowServer,
                                                                    identity_server: IdentityServer) -> None:
    mlflow_server.add_run("r1")
    response = _raw(mlflow_server, "runs/set-tag", {"run_id": "r1", "key": "k", "value": "v", "extra": 1},
                    token=identity_server.token_for(ARM_RESOURCE))
    assert (response.status_code, response.json()) == (200, {})


@pytest.mark.parametrize("case", ["ado-audience", "no-token", "form-body"])
def test_stand_in_refuses_wrong_token_audience_and_non_json(mlflow_server: MlflowServer,
                                                            identity_server: IdentityServer, case: str) -> None:
    mlflow_server.add_run("r1")
    body = {"run_id": "r1", "key": "k", "value": "v"}
    if case == "ado-audience":
        response = _raw(mlflow_server, "runs/set-tag", body, token=identity_server.token_for(ADO_RESOURCE))
        assert response.status_code == 401
    elif case == "no-token":
        response = requests.post(f"{mlflow_server.tracking_url}/api/2.0/mlflow/runs/set-tag", json=body, timeout=5)
        assert response.status_code == 401
    else:
        response = _raw(mlflow_server, "runs/set-tag", body, token=identity_server.token_for(ARM_RESOURCE),
                        content_type="application/x-www-form-urlencoded")
        assert response.status_code == 400
    assert mlflow_server.run_tags("r1") == {}


def test_client_sees_a_token_for_another_audience_refused(monkeypatch: pytest.MonkeyPatch,
                                                          identity_server: IdentityServer,
                                                          mlflow_server: MlflowServer) -> None:
    from azure.identity import ManagedIdentityCredential

    for name in CONFLICTING_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in identity_server.env().items():
        monkeypatch.setenv(name, value)
    mlflow_server.add_run("r1")
    wrong = MlflowClient(mlflow_server.tracking_url, ManagedIdentityCredential(), arm_url="https://vault.azure.net",
                         backoff=0)
    with pytest.raises(MlflowError) as caught:
        wrong.set_run_tag("r1", "k", "v")
    assert caught.value.status == 401
    assert "AzureML Data Scientist" in caught.value.hint


# ---- the URI AML advertises, and an identity without a role ----------------------------------------------

def test_the_workspaces_own_tracking_uri_reaches_the_v2_endpoint(monkeypatch: pytest.MonkeyPatch,
                                                                  identity_server: IdentityServer,
                                                                  loopback_tls: TlsMaterial) -> None:
    """Configured with what AML advertises (``azureml://…/mlflow/v1.0/…``, HTTPS), the client tags through
    the v2.0 path; the stand-in serves only v2.0, so calling the advertised path unchanged would be a 404."""
    from azure.identity import ManagedIdentityCredential

    for name in CONFLICTING_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in identity_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(loopback_tls.cert_file))
    with MlflowServer(WORKSPACE, tls=loopback_tls) as server:
        server.add_run("r1")
        uri = server.workspace_tracking_uri
        assert uri.startswith("azureml://")
        assert "/mlflow/v1.0/subscriptions/" in uri
        advertised = "https" + uri[len("azureml"):]
        stale = requests.post(f"{advertised}/api/2.0/mlflow/runs/set-tag", json={"run_id": "r1", "key": "k"},
                              timeout=5, headers={"Authorization": f"Bearer {identity_server.token_for(ARM_RESOURCE)}"})
        assert stale.status_code == 404  # the stand-in does not serve the v1.0 prefix
        MlflowClient(uri, ManagedIdentityCredential(), timeout=5, backoff=0).set_run_tag("r1", "k", "v")
        MlflowClient(tracking_url(WORKSPACE, base=uri), ManagedIdentityCredential(), timeout=5,
                     backoff=0).set_run_tag("r1", "k2", "v2")
        assert server.run_tags("r1") == {"k": "v", "k2": "v2"}
        assert all("/mlflow/v2.0/" in r.path for r in server.tag_requests[1:])


def test_an_identity_without_a_role_is_403_not_retried_and_says_which_role(client: MlflowClient,
                                                                           identity_server: IdentityServer,
                                                                           mlflow_server: MlflowServer) -> None:
    mlflow_server.add_run("r1")
    mlflow_server.forbid(identity_server.object_id)
    with pytest.raises(MlflowError) as caught:
        client.set_run_tag("r1", "k", "v")
    assert (caught.value.status, caught.value.code, caught.value.retryable) == (403, "PERMISSION_DENIED", False)
    assert "AzureML Data Scientist" in caught.value.hint
    assert len(mlflow_server.tag_requests) == 1  # a permanent refusal is not retried
    assert mlflow_server.run_tags("r1") == {}
