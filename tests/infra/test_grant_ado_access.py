"""scripts/grant-ado-access against the ADO stand-in, which enforces ADO's permission rules
(tests/servers/_ado_permissions.py): the script's REST calls go through the fake `az rest` (checked against
the real CLI's command table) to the stand-in (checked against the vendored REST spec excerpt), and the
handler's identity can then do exactly what the runbook does -- and nothing works when the grant is short."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.servers import AdoServer
from tests.servers._ado_permissions import BUILD_NAMESPACE, token_path
from tests.servers._ado_rules import PipelineDef

from .test_scripts import FakeAz

HANDLER = "11111111-1111-1111-1111-111111111111"
MI_TOKEN, ADMIN_TOKEN, REPLAY_TOKEN = "handler-mi-token", "pca-admin-token", "replay-mi-token"
TRAIN = PipelineDef(name="train", folder="\\ml\\train", variables_settable_at_queue_time=frozenset(
    {"AML_RUN_ID", "AML_EXPERIMENT", "AML_WORKSPACE", "AML_EVENT_ID"}),
    template_parameters=frozenset({"runId", "experimentName"}))
TRIAGE = PipelineDef(name="triage", variables_settable_at_queue_time=frozenset({"AML_RUN_ID"}))
QUIET = PipelineDef(name="quiet", template_parameters=frozenset({"mode"}), parameter_values={"mode": frozenset({"a"})})
ROUTES = {"version": 1, "defaults": {"project": "mlops"}, "routes": [
    {"name": "evaluate", "events": ["RunCompleted"], "pipeline": {"id": 12, "variables": {"AML_RUN_ID": "x"},
                                                                  "templateParameters": {"runId": "x"}}},
    {"name": "quiet", "events": ["RunCompleted"], "pipeline": {"id": 14}}]}


@pytest.fixture
def ado() -> Any:
    with AdoServer("contoso", pipelines={("mlops", 12): TRAIN, ("mlops", 13): TRIAGE, ("mlops", 14): QUIET},
                   bearer_tokens={MI_TOKEN, ADMIN_TOKEN, REPLAY_TOKEN}) as server:
        server.permissions.register_identity(MI_TOKEN, HANDLER)
        server.permissions.add_admin(ADMIN_TOKEN)
        yield server


def _fake(tmp_path: Path, ado: AdoServer, routes: dict[str, Any] | None = None, handler: str = "runbook") -> FakeAz:
    fake = FakeAz(tmp_path, ado_token=ADMIN_TOKEN)
    params = tmp_path / "p.json"
    params.write_text(json.dumps({"parameters": {"handler": {"value": handler}}}))
    done = fake.az("deployment", "group", "create", "-g", "rg-amlrelay", "-n", "amlrelay-infra-1",
                   "--template-file", "main.bicep", "--parameters", f"@{params}")
    assert done.returncode == 0, done.stderr
    # not routes.json: FakeAz keeps the ARM routes of the Automation SDK there
    (tmp_path / "amlrelay-routes.json").write_text(json.dumps(routes or ROUTES))
    return fake


def _grant(fake: FakeAz, ado: AdoServer, *pipelines: str) -> Any:
    ids = [a for p in pipelines for a in ("--pipeline-id", p)]
    return fake.script("grant-ado-access", "-g", "rg-amlrelay", "--project", "mlops", *ids, "--organization",
                       "contoso", "--ado-base-url", ado.url, "--routes", str(fake.tmp / "amlrelay-routes.json"))


def _run(ado: AdoServer, pid: int, body: dict[str, Any] | None = None) -> requests.Response:
    return requests.post(f"{ado.org_url}/mlops/_apis/pipelines/{pid}/runs?api-version=7.1", json=body or {},
                         headers={"Authorization": f"Bearer {MI_TOKEN}"}, timeout=10)


def _runs(ado: AdoServer, pid: int) -> requests.Response:
    return requests.get(f"{ado.org_url}/mlops/_apis/pipelines/{pid}/runs?api-version=7.1",
                        headers={"Authorization": f"Bearer {MI_TOKEN}"}, timeout=10)


WITH_VARIABLES = {"variables": {"AML_RUN_ID": {"value": "r1", "isSecret": False}},
                  "templateParameters": {"runId": "r1"}}


def test_the_grant_lets_the_handler_do_exactly_what_the_runbook_does(tmp_path: Path, ado: AdoServer) -> None:
    # Before the grant the identity is not in the organization.
    assert _run(ado, 12, WITH_VARIABLES).status_code == 401
    done = _grant(_fake(tmp_path, ado), ado, "12", "14")
    assert done.returncode == 0, done.stderr[-3000:]
    project_id = ado.project_id("mlops")
    # Folder-aware token; the bits the routes need, and the summary says so.
    assert f"token {project_id}/ml/train/12" in done.stdout
    assert "Edit queue build configuration (routes evaluate" in done.stdout
    assert f"token {project_id}/14): View builds, Queue builds\n" in done.stdout
    assert "member of Readers" in done.stdout
    ident = ado.permissions.identity(HANDLER)
    assert ident.project_groups == {project_id: "projectReader"}
    assert ado.permissions.acl[f"{project_id}/ml/train/12"][ident.descriptor] == 1 | 128 | 65536
    assert ado.permissions.acl[f"{project_id}/14"][ident.descriptor] == 1 | 128
    assert _run(ado, 12, WITH_VARIABLES).status_code == 200
    assert _runs(ado, 12).status_code == 200
    # A pipeline the routes do not name stays closed; the Readers group lets it be seen, not queued.
    closed = _run(ado, 13, {"variables": {"AML_RUN_ID": {"value": "r1"}}})
    assert closed.status_code == 403
    assert "Queue builds" in closed.json()["message"]
    # Idempotent: a second run changes nothing and still succeeds.
    (tmp_path / "again").mkdir()
    assert _grant(_fake(tmp_path / "again", ado), ado, "12", "14").returncode == 0
    assert ado.permissions.acl[f"{project_id}/ml/train/12"][ident.descriptor] == 1 | 128 | 65536


def test_parameters_inherited_from_defaults_get_edit_queue_build_configuration(tmp_path: Path,
                                                                               ado: AdoServer) -> None:
    """The relay merges defaults.templateParameters into every route (amlrelay.routes): so must the grant."""
    inherited = {"version": 1, "defaults": {"project": "mlops", "templateParameters": {"runId": "x"}},
                 "routes": [{"name": "evaluate", "events": ["RunCompleted"], "pipeline": {"id": 12}}]}
    done = _grant(_fake(tmp_path, ado, inherited), ado, "12")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Edit queue build configuration (routes evaluate" in done.stdout
    assert _run(ado, 12, {"templateParameters": {"runId": "r1"}}).status_code == 200


def test_an_invalid_routes_file_stops_the_grant(tmp_path: Path, ado: AdoServer) -> None:
    broken = {"version": 1, "routes": [{"name": "evaluate", "events": ["RunCompleted"], "pipeline": {"id": 12}}]}
    done = _grant(_fake(tmp_path, ado, broken), ado, "12")
    assert done.returncode != 0
    assert "project" in done.stderr
    assert "nothing was granted" in done.stderr
    assert not ado.permissions.identity(HANDLER).entitled


def _entitle_only(ado: AdoServer, group: bool = True) -> tuple[str, str]:
    """Entitle the identity as the grant does, but set ACEs by hand (a short grant)."""
    project_id = ado.project_id("mlops")
    body: dict[str, Any] = {"accessLevel": {"accountLicenseType": "express"}, "servicePrincipal": {
        "origin": "aad", "originId": HANDLER, "subjectKind": "servicePrincipal"}}
    if group:
        body["projectEntitlements"] = [{"group": {"groupType": "projectReader"}, "projectRef": {"id": project_id}}]
    answer = requests.post(f"{ado.org_url}/_apis/serviceprincipalentitlements?api-version=7.1-preview.1",
                           json=body, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)
    assert answer.status_code == 200, answer.text
    return project_id, ado.permissions.identity(HANDLER).descriptor


def _ace(ado: AdoServer, token: str, descriptor: str, allow: int) -> None:
    answer = requests.post(f"{ado.org_url}/_apis/accesscontrolentries/{BUILD_NAMESPACE}?api-version=7.1",
                           json={"token": token, "merge": True, "accessControlEntries": [
                               {"descriptor": descriptor, "allow": allow, "deny": 0}]},
                           headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)
    assert answer.status_code == 200, answer.text


def test_queue_builds_alone_refuses_variables(ado: AdoServer) -> None:
    project_id, descriptor = _entitle_only(ado)
    _ace(ado, f"{project_id}/ml/train/12", descriptor, 128)  # the old grant: Queue builds only
    refused = _run(ado, 12, WITH_VARIABLES)
    assert refused.status_code == 403
    assert "Edit queue build configuration" in refused.json()["message"]
    assert _run(ado, 12).status_code == 200  # no variables, no free-text parameters: Queue builds is enough


def test_a_root_token_gives_nothing_on_a_pipeline_in_a_folder(ado: AdoServer) -> None:
    project_id, descriptor = _entitle_only(ado)
    _ace(ado, f"{project_id}/12", descriptor, 1 | 128 | 65536)  # the old, folder-blind token
    refused = _run(ado, 12, WITH_VARIABLES)
    assert refused.status_code == 403
    assert "Queue builds" in refused.json()["message"]


def test_reading_runs_needs_view_builds(ado: AdoServer) -> None:
    project_id, descriptor = _entitle_only(ado, group=False)
    ado.permissions.identity(HANDLER).project_groups[project_id] = "custom"  # project read without Readers' bits
    _ace(ado, f"{project_id}/ml/train/12", descriptor, 128)
    assert _runs(ado, 12).status_code == 404
    _ace(ado, f"{project_id}/ml", descriptor, 1)  # inherited from the folder
    assert _runs(ado, 12).status_code == 200


def test_without_project_read_ado_answers_vs800075(ado: AdoServer) -> None:
    project_id, descriptor = _entitle_only(ado, group=False)
    _ace(ado, project_id, descriptor, 1 | 128 | 65536)
    refused = _run(ado, 12)
    assert refused.status_code == 404  # ProjectDoesNotExistException: ADO hides the project (assumed status)
    assert refused.json()["message"].startswith("VS800075")


def test_free_text_parameters_need_edit_but_listed_values_do_not(ado: AdoServer) -> None:
    project_id, descriptor = _entitle_only(ado)
    _ace(ado, project_id, descriptor, 128)
    assert _run(ado, 14, {"templateParameters": {"mode": "a"}}).status_code == 200
    assert _run(ado, 12, {"templateParameters": {"runId": "r"}}).status_code == 403


def test_the_admin_calls_are_checked_against_the_spec(ado: AdoServer) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    wrong_version = requests.post(f"{ado.org_url}/_apis/serviceprincipalentitlements?api-version=7.1", json={},
                                  headers=headers, timeout=10)
    assert wrong_version.status_code == 400
    bad_body = requests.post(f"{ado.org_url}/_apis/serviceprincipalentitlements?api-version=7.1-preview.1",
                             json={"accessLevel": {"accountLicenseType": "basic"}}, headers=headers, timeout=10)
    assert bad_body.status_code == 400
    assert "accountLicenseType" in bad_body.json()["message"]
    not_admin = requests.get(f"{ado.org_url}/_apis/projects/mlops?api-version=7.1",
                             headers={"Authorization": f"Bearer {MI_TOKEN}"}, timeout=10)
    assert not_admin.status_code == 403


def test_token_path_is_folder_aware() -> None:
    assert token_path("p", "\\", 7) == ["p", "p/7"]
    assert token_path("p", "\\a\\b", 7) == ["p", "p/a", "p/a/b", "p/a/b/7"]


def test_stand_in_answers_are_checked_against_the_spec_schemas() -> None:
    from tests.servers._ado_permissions import _body_errors

    ims = "ims/7.1/identities.json"
    good = {"id": "81fa6389-0872-6fdd-a451-7ba7880f566a", "isActive": True,
            "descriptor": "Microsoft.IdentityModel.Claims.ClaimsIdentity;tenant\\someone"}
    assert _body_errors(ims, "Identity", good) == []
    assert _body_errors(ims, "Identity", {**good, "isActive": "yes"}) != []
    # The generic `result` of an entitlement operation is an object on the wire (the spec's example).
    mem = "memberEntitlementManagement/7.1/memberEntitlementManagement.json"
    assert _body_errors(mem, "ServicePrincipalEntitlementsPostResponse",
                        {"isSuccess": True, "operationResult": {"isSuccess": True, "result": {"id": "x"}}}) == []


def test_beside_a_logic_app_the_replay_runbooks_identity_gets_the_same_grant(tmp_path: Path, ado: AdoServer) -> None:
    """The Logic App deployment's Automation account replays (starts runs) with its own identity."""
    from .fake_az import REPLAY_PRINCIPAL

    ado.permissions.register_identity(REPLAY_TOKEN, REPLAY_PRINCIPAL)
    done = _grant(_fake(tmp_path, ado, handler="logicapp"), ado, "12")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Granted to {HANDLER}" in done.stdout
    assert f"Granted to {REPLAY_PRINCIPAL}" in done.stdout
    project_id = ado.project_id("mlops")
    for who in (HANDLER, REPLAY_PRINCIPAL):
        ident = ado.permissions.identity(who)
        assert ado.permissions.acl[f"{project_id}/ml/train/12"][ident.descriptor] == 1 | 128 | 65536
    replayed = requests.post(f"{ado.org_url}/mlops/_apis/pipelines/12/runs?api-version=7.1", json=WITH_VARIABLES,
                             headers={"Authorization": f"Bearer {REPLAY_TOKEN}"}, timeout=10)
    assert replayed.status_code == 200


def test_teardown_removes_exactly_the_entitlement_the_grant_recorded(tmp_path: Path, ado: AdoServer) -> None:
    """Review SHOULD 14: the grant keeps the entitlement id (Automation variable, a PUT checked against the
    Automation SDK's operations); teardown deletes by it instead of rebuilding an identity descriptor."""
    fake = _fake(tmp_path, ado)
    done = _grant(fake, ado, "12")
    assert done.returncode == 0, done.stderr[-3000:]
    variable = fake.world["variables"][f"amlrelay-ado-entitlement-{HANDLER}"]
    entitlement = json.loads(variable["properties"]["value"])
    assert f"(entitlement {entitlement})" in done.stdout
    assert ado.permissions.identity(HANDLER).entitled
    torn = fake.script("teardown", "-g", "rg-amlrelay", "--remove-ado-access", "--organization", "contoso",
                       "--ado-base-url", ado.url, "--yes")
    assert torn.returncode == 0, torn.stderr[-3000:]
    assert f"entitlement {entitlement} of {HANDLER}: recorded by scripts/grant-ado-access" in torn.stderr
    assert not ado.permissions.identity(HANDLER).entitled
    assert not [c for c in fake.calls() if any("_apis/identities?descriptors=" in a for a in c)]
