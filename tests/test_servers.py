"""The stand-ins must be at least as strict as the services they replace.

Every rejection here is one the real service makes; if one of these tests starts
passing a bad request, product tests built on the stand-in stop meaning anything.
"""

from __future__ import annotations

import concurrent.futures
import time
from typing import Any

import pytest
import requests

from tests.servers import ado_spec
from tests.servers._jwt import decode_claims
from tests.servers.ado import ADO_RESOURCE, AdoServer, PipelineDef
from tests.servers.identity import IdentityServer
from tests.servers.keyvault import KEYVAULT_RESOURCE, KeyVaultServer
from tests.servers.pytest_plugin import DEFAULT_PAT

GOOD_BODY: dict[str, Any] = {
    "resources": {"repositories": {"self": {"refName": "refs/heads/main"}}},
    "templateParameters": {"modelName": "sklearn_regression_model"},
    "variables": {"AML_RUN_ID": {"value": "run-1", "isSecret": False}},
}


def runs_url(server: AdoServer, query: str = "api-version=7.1", project: str = "mlops", pid: str = "12") -> str:
    return f"{server.org_url}/{project}/_apis/pipelines/{pid}/runs?{query}"


def post(server: AdoServer, body: Any = None, *, query: str = "api-version=7.1", timeout: float = 5,
         **kwargs: Any) -> requests.Response:
    kwargs.setdefault("auth", ("", DEFAULT_PAT))
    if "data" not in kwargs:
        kwargs["json"] = GOOD_BODY if body is None else body
    return requests.post(runs_url(server, query), timeout=timeout, **kwargs)


def assert_ado_error(resp: requests.Response, status: int, fragment: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    assert set(body) == {"$id", "innerException", "message", "typeName", "typeKey", "errorCode", "eventId"}
    assert fragment in body["message"], body["message"]
    return body


# -- ADO: the happy path -------------------------------------------------------------------
def test_correct_request_gets_spec_valid_run(ado_server: AdoServer) -> None:
    resp = post(ado_server)
    assert resp.status_code == 200, resp.text
    run = resp.json()
    assert ado_spec.errors("Run", run) == []
    assert run["state"] == "inProgress"
    assert "result" not in run
    assert run["pipeline"]["id"] == 12
    assert run["pipeline"]["name"] == "deploy-model"
    assert run["resources"]["repositories"]["self"]["repository"] == {"type": "azureReposGit"}
    assert run["variables"] == {"AML_RUN_ID": {"value": "run-1", "isSecret": False}}
    assert set(run["_links"]) == {"self", "web", "pipeline.web", "pipeline"}
    project_id = AdoServer.project_id("mlops")
    assert run["_links"]["web"]["href"] == f"{ado_server.org_url}/{project_id}/_build/results?buildId={run['id']}"
    second = post(ado_server).json()
    assert second["id"] == run["id"] + 1
    assert [r["id"] for r in ado_server.runs] == [run["id"], second["id"]]
    assert ado_server.run_requests[0].json == GOOD_BODY
    assert ado_server.errors == []


def test_bearer_token_from_identity_is_accepted(ado_server: AdoServer) -> None:
    token = IdentityServer().token_for(ADO_RESOURCE)
    resp = post(ado_server, auth=None, headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.text
    assert ado_server.requests[-1].headers["authorization"] == f"Bearer {token}"


def test_get_and_list_runs(ado_server: AdoServer) -> None:
    created = post(ado_server).json()
    one = requests.get(f"{created['url']}?api-version=7.1", auth=("", DEFAULT_PAT), timeout=5)
    assert one.status_code == 200
    assert one.json() == created
    listed = requests.get(runs_url(ado_server), auth=("", DEFAULT_PAT), timeout=5).json()
    assert listed["count"] == 1
    assert listed["value"][0]["id"] == created["id"]
    assert "variables" not in listed["value"][0]
    assert ado_spec.errors("Run", listed["value"][0]) == []
    missing = requests.get(runs_url(ado_server).replace("/runs?", "/runs/999?"), auth=("", DEFAULT_PAT), timeout=5)
    assert missing.status_code == 404


def test_secret_variables_are_not_echoed(ado_server: AdoServer) -> None:
    body = {"variables": {"AML_EVENT_ID": {"value": "hush", "isSecret": True}}}
    run = post(ado_server, body).json()
    assert run["variables"] == {"AML_EVENT_ID": {"isSecret": True}}
    assert ado_server.secret_value(run["id"], "AML_EVENT_ID") == "hush"


def test_preview_run_creates_nothing(ado_server: AdoServer) -> None:
    resp = post(ado_server, {"previewRun": True, "templateParameters": {"modelName": "m"}})
    assert resp.status_code == 200
    assert "modelName: m" in resp.json()["finalYaml"]
    assert ado_server.runs == []


# -- ADO: rejections, in the order the service checks them -------------------------------------
def test_auth_rejections(ado_server: AdoServer) -> None:
    anonymous = post(ado_server, auth=None)
    assert_ado_error(anonymous, 401, "TF400813")
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer ")
    assert_ado_error(post(ado_server, auth=("", "wrong")), 401, "VS30063")
    assert_ado_error(post(ado_server, auth=None, headers={"Authorization": "Bearer nope"}), 401, "VS30063")
    ado_server.forbid(DEFAULT_PAT)
    assert_ado_error(post(ado_server), 403, "Access denied")
    assert ado_server.runs == []


@pytest.mark.parametrize(
    ("query", "status", "fragment"),
    [
        ("", 400, "No api-version was supplied"),
        ("api-version=7.0", 400, "7.0"),
        ("api-version=7.1-preview.1", 400, "7.1-preview.1"),
        ("api-version=banana", 400, "banana"),
        ("api-version=7.1&pipelineVersion=abc", 400, "pipelineVersion"),
        ("api-version=7.1&pipelineVersion=2", 404, "revision 2"),
    ],
)
def test_query_rejections(ado_server: AdoServer, query: str, status: int, fragment: str) -> None:
    assert_ado_error(post(ado_server, query=query), status, fragment)


def test_api_version_in_accept_header_is_honoured(ado_server: AdoServer) -> None:
    resp = post(ado_server, query="", headers={"Accept": "application/json; api-version=7.1"})
    assert resp.status_code == 200, resp.text


def test_unknown_org_project_pipeline(ado_server: AdoServer) -> None:
    auth = ("", DEFAULT_PAT)
    base = ado_server.url
    cases = [(f"{base}/fabrikam/mlops/_apis/pipelines/12/runs", "fabrikam"),
             (f"{base}/contoso/nope/_apis/pipelines/12/runs", "TF200016"),
             (f"{base}/contoso/mlops/_apis/pipelines/99/runs", "Pipeline with id 99 not found"),
             (f"{base}/contoso/mlops/_apis/pipelines/abc/runs", "not found"),
             (f"{base}/contoso/mlops/_apis/pipelines/99999999999/runs", "not found")]
    for url, fragment in cases:
        assert_ado_error(requests.post(f"{url}?api-version=7.1", json=GOOD_BODY, auth=auth, timeout=5), 404, fragment)
    by_id = f"{base}/contoso/{AdoServer.project_id('mlops')}/_apis/pipelines/12/runs?api-version=7.1"
    assert requests.post(by_id, json=GOOD_BODY, auth=auth, timeout=5).status_code == 200


def test_body_must_be_json(ado_server: AdoServer) -> None:
    resp = post(ado_server, data=b'{"variables": {}}', headers={"Content-Type": "text/plain"})
    assert_ado_error(resp, 415, "text/plain")
    resp = post(ado_server, data=b"{not json", headers={"Content-Type": "application/json"})
    assert_ado_error(resp, 400, "runParameters")
    assert_ado_error(post(ado_server, data=b"", headers={"Content-Type": "application/json"}), 400, "runParameters")


@pytest.mark.parametrize(
    "body",
    [
        {"variables": {"AML_RUN_ID": "plain-string"}},
        {"variables": {"AML_RUN_ID": {"value": 5}}},
        {"variables": {"AML_RUN_ID": {"value": "x", "isSecret": "yes"}}},
        {"templateParameters": {"modelName": 3}},
        {"stagesToSkip": "build"},
        {"resources": {"repositories": {"self": "refs/heads/main"}}},
        {"previewRun": "true"},
        ["not", "an", "object"],
    ],
)
def test_body_violating_the_swagger_is_rejected(ado_server: AdoServer, body: Any) -> None:
    assert_ado_error(post(ado_server, body), 400, "RunPipelineParameters")
    assert ado_server.runs == []


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"variables": {"UNDECLARED": {"value": "x"}}}, "You can't set the following variables (UNDECLARED)"),
        ({"templateParameters": {"surprise": "x"}}, "Unexpected parameter 'surprise'"),
        ({"stagesToSkip": ["lint"]}, "lint"),
        ({"resources": {"repositories": {"tools": {"refName": "refs/heads/main"}}}}, "'tools'"),
        ({"resources": {"repositories": {"self": {"refName": "main"}}}}, "refs/"),
        ({"resources": {"pipelines": {"upstream": {"version": "1"}}}}, "upstream"),
        ({"yamlOverride": "steps: []"}, "previewRun"),
    ],
)
def test_queue_time_rules_the_spec_does_not_state(ado_server: AdoServer, body: Any, fragment: str) -> None:
    assert_ado_error(post(ado_server, body), 400, fragment)
    assert ado_server.runs == []


def test_variable_names_are_case_insensitive_and_required_parameters_enforced(ado_server: AdoServer) -> None:
    assert post(ado_server, {"variables": {"aml_run_id": {"value": "x"}}}).status_code == 200
    strict = PipelineDef("p", template_parameters={"a"}, required_template_parameters={"a"})
    ado_server.add_pipeline("mlops", 13, strict)
    resp = requests.post(runs_url(ado_server, pid="13"), json={}, auth=("", DEFAULT_PAT), timeout=5)
    assert_ado_error(resp, 400, "'a' parameter must be provided")


# -- ADO: fault injection ------------------------------------------------------------------
def test_429_carries_rate_limit_headers_then_recovers(ado_server: AdoServer) -> None:
    ado_server.fail(429, retry_after=3)
    resp = post(ado_server)
    assert_ado_error(resp, 429, "TF400733:")
    assert resp.headers["Retry-After"] == "3"
    for name in ("X-RateLimit-Resource", "X-RateLimit-Delay", "X-RateLimit-Limit", "X-RateLimit-Remaining"):
        assert name in resp.headers
    assert int(resp.headers["X-RateLimit-Reset"]) >= int(time.time())
    assert ado_server.runs == []
    assert post(ado_server).status_code == 200


@pytest.mark.parametrize("status", [400, 401, 403, 404, 500, 502, 503])
def test_scripted_failures(ado_server: AdoServer, status: int) -> None:
    ado_server.fail(status, times=2)
    assert [post(ado_server).status_code for _ in range(3)] == [status, status, 200]
    assert len(ado_server.runs) == 1


def test_reset_and_reset_after_create(ado_server: AdoServer) -> None:
    ado_server.reset()
    with pytest.raises(requests.ConnectionError):
        post(ado_server)
    assert ado_server.runs == []
    ado_server.reset(after_create=True)
    with pytest.raises(requests.ConnectionError):
        post(ado_server)
    assert len(ado_server.runs) == 1
    assert len(ado_server.run_requests) == 2


def test_delay_times_out_client_but_still_queues(ado_server: AdoServer) -> None:
    ado_server.delay(0.4)
    with pytest.raises(requests.Timeout):
        post(ado_server, timeout=0.1)
    deadline = time.monotonic() + 3
    while not ado_server.runs and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(ado_server.runs) == 1


def test_accept_then_fail_is_ambiguous(ado_server: AdoServer) -> None:
    ado_server.accept_then_fail()
    assert post(ado_server).status_code == 500
    assert len(ado_server.runs) == 1


def test_throttle_warning_and_signin_page(ado_server: AdoServer) -> None:
    ado_server.throttle_warning(retry_after=2)
    resp = post(ado_server)
    assert resp.status_code == 200
    assert resp.headers["Retry-After"] == "2"
    ado_server.signin_page()
    resp = post(ado_server)
    assert resp.status_code == 203
    assert resp.headers["Content-Type"].startswith("text/html")
    assert len(ado_server.runs) == 1


def test_get_faults_do_not_consume_post_faults(ado_server: AdoServer) -> None:
    ado_server.fail(503, method="GET")
    assert post(ado_server).status_code == 200
    assert requests.get(runs_url(ado_server), auth=("", DEFAULT_PAT), timeout=5).status_code == 503
    ado_server.fail(500)
    ado_server.reset_state()
    assert ado_server.pending_faults == []
    assert ado_server.runs == []
    assert ado_server.requests == []


def test_concurrent_posts_get_distinct_ids(ado_server: AdoServer) -> None:
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda _: post(ado_server).json()["id"], range(24)))
    assert len(set(ids)) == 24
    assert len(ado_server.runs) == 24


# -- the spec conversion itself ------------------------------------------------------------------
def test_schemas_come_from_the_vendored_swagger() -> None:
    schema = ado_spec.schema_for("RunPipelineParameters")
    assert schema["$ref"] == "#/definitions/RunPipelineParameters"
    assert set(schema["definitions"]) == set(ado_spec.load_spec()["definitions"])
    assert ado_spec.errors("RunPipelineParameters", GOOD_BODY) == []
    assert ado_spec.errors("Run", {"id": 1, "state": "running"})  # enum from the spec
    assert ado_spec.errors("Run", {"id": 2**31})  # int32
    assert ado_spec.api_version_values() == {"7.1"}
    op = ado_spec.operation(ado_spec.RUN_PIPELINE_PATH, "post")
    assert op["responses"]["200"]["schema"] == {"$ref": "#/definitions/Run"}


# -- managed identity -----------------------------------------------------------------------------
def test_managed_identity_credential_end_to_end(identity_server: IdentityServer, azure_env: dict[str, str]) -> None:
    from azure.identity import ManagedIdentityCredential

    token = ManagedIdentityCredential().get_token(f"{ADO_RESOURCE}/.default")
    assert token.token == identity_server.token_for(ADO_RESOURCE)
    (request,) = identity_server.token_requests
    assert request.query == {"api-version": "2019-08-01", "resource": ADO_RESOURCE}
    assert request.headers["Metadata"] == "true"
    claims = decode_claims(token.token)
    assert claims is not None
    assert claims["aud"] == ADO_RESOURCE
    assert claims["tid"] == "00000000-0000-0000-0000-000000000000"
    assert {"oid", "appid", "exp"} <= claims.keys()


def test_identity_rejections(identity_server: IdentityServer) -> None:
    good = {"X-IDENTITY-HEADER": identity_server.identity_header, "Metadata": "true"}
    query = {"api-version": "2019-08-01", "resource": ADO_RESOURCE}

    def get(headers: dict[str, str], params: dict[str, str]) -> requests.Response:
        return requests.get(identity_server.endpoint, headers=headers, params=params, timeout=5)

    assert get(good, query).status_code == 200
    assert get({"Metadata": "true"}, query).status_code == 400
    assert get({**good, "X-IDENTITY-HEADER": "guess"}, query).status_code == 401
    assert get({"X-IDENTITY-HEADER": identity_server.identity_header}, query).status_code == 400
    assert get(good, {**query, "api-version": "2018-02-01"}).status_code == 400
    assert get(good, {"api-version": "2019-08-01"}).status_code == 400
    assert get(good, {"resource": ADO_RESOURCE}).status_code == 200  # the Automation tutorial sends none
    assert get(good, {**query, "client_id": "not-mine"}).json()["statusCode"] == 400
    identity_server.fail(500)
    assert get(good, query).status_code == 500
    identity_server.down()
    with pytest.raises(requests.ConnectionError):
        get(good, query)
    identity_server.up()
    assert get(good, query).status_code == 200
    identity_server.delay(5)
    with pytest.raises(requests.Timeout):
        requests.get(identity_server.endpoint, headers=good, params=query, timeout=0.1)


# -- Key Vault ------------------------------------------------------------------------------------
def test_secret_client_through_challenge_and_identity(keyvault_server: KeyVaultServer,
                                                     identity_server: IdentityServer,
                                                     azure_env: dict[str, str]) -> None:
    from azure.identity import ManagedIdentityCredential
    from azure.keyvault.secrets import SecretClient

    first = keyvault_server.set_secret("ado-pat", "pat-v1")
    keyvault_server.set_secret("ado-pat", "pat-v2")
    client = SecretClient(keyvault_server.url, credential=ManagedIdentityCredential(),
                          verify_challenge_resource=False)
    assert client.get_secret("ado-pat").value == "pat-v2"
    assert client.get_secret("ADO-PAT", first).value == "pat-v1"
    challenge, authorised = keyvault_server.requests[:2]
    assert "authorization" not in challenge.headers
    token = identity_server.token_for(KEYVAULT_RESOURCE)
    assert authorised.headers["Authorization"] == f"Bearer {token}"
    assert keyvault_server.errors == []


def test_secret_client_errors(keyvault_server: KeyVaultServer, azure_env: dict[str, str]) -> None:
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
    from azure.identity import ManagedIdentityCredential
    from azure.keyvault.secrets import SecretClient

    client = SecretClient(keyvault_server.url, credential=ManagedIdentityCredential(),
                          verify_challenge_resource=False)
    with pytest.raises(ResourceNotFoundError, match="SecretNotFound"):
        client.get_secret("absent")
    keyvault_server.set_secret("off", "x", enabled=False)
    with pytest.raises(HttpResponseError, match="disabled"):
        client.get_secret("off")
    keyvault_server.set_secret("ado-pat", "x")
    keyvault_server.forbid()
    with pytest.raises(HttpResponseError) as info:
        client.get_secret("ado-pat")
    assert info.value.status_code == 403
    assert info.value.error is not None
    assert info.value.error.code == "Forbidden"


def test_keyvault_raw_contract(keyvault_server: KeyVaultServer) -> None:
    keyvault_server.set_secret("s", "v")
    url = f"{keyvault_server.url}/secrets/s"
    anon = requests.get(url, params={"api-version": "7.4"}, verify=keyvault_server.ca_file, timeout=5)
    assert anon.status_code == 401
    assert anon.headers["WWW-Authenticate"] == (
        'Bearer authorization="https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000", '
        'resource="https://vault.azure.net"')
    identity = IdentityServer()
    vault_auth = {"Authorization": f"Bearer {identity.token_for(KEYVAULT_RESOURCE)}"}
    ado_auth = {"Authorization": f"Bearer {identity.token_for(ADO_RESOURCE)}"}

    def get(headers: dict[str, str], params: dict[str, str]) -> requests.Response:
        return requests.get(url, headers=headers, params=params, verify=keyvault_server.ca_file, timeout=5)

    ok = get(vault_auth, {"api-version": "7.4"})
    assert ok.status_code == 200
    assert ok.json()["attributes"]["recoveryLevel"] == "Recoverable+Purgeable"
    assert ok.json()["id"].startswith(f"{keyvault_server.url}/secrets/s/")
    assert get(ado_auth, {"api-version": "7.4"}).json()["error"]["message"].startswith("AKV10022")
    assert get(vault_auth, {}).status_code == 400
    assert get(vault_auth, {"api-version": "1999-01-01"}).json()["error"]["code"] == "BadParameter"
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(url, params={"api-version": "7.4"}, timeout=5, verify=True)
