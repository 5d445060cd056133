"""scripts/teardown against the fake `az` world: it removes amlrelay and nothing that is not amlrelay's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import requests

from tests.servers import AdoServer
from tests.servers._ado_rules import PipelineDef

from .test_scripts import FakeAz

WORKSPACE = ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-amlrelay/providers/"
             "Microsoft.MachineLearningServices/workspaces/contoso-ml")
HANDLER = "11111111-1111-1111-1111-111111111111"


def _deployed(tmp_path: Path, **state: Any) -> FakeAz:
    """A world after scripts/deploy: tagged resources, amlrelay's subscriptions, and a deployment record."""
    fake = FakeAz(tmp_path, **state)
    params = tmp_path / "p.json"
    params.write_text(json.dumps({"parameters": {"webhookUri": {"value": "https://x"}}}))
    done = fake.az("deployment", "group", "create", "-g", "rg-amlrelay", "-n", "amlrelay-handler-1",
                   "--template-file", "main.bicep", "--parameters", f"@{params}")
    assert done.returncode == 0, done.stderr
    world = fake.world
    world["topic"]["tags"] = {"amlrelay-handler": "runbook"}
    fake.state_path.write_text(json.dumps(world))
    return fake


def test_refuses_to_delete_a_group_that_holds_the_workspace(tmp_path: Path) -> None:
    fake = _deployed(tmp_path, foreign_resources=[{"id": WORKSPACE, "type": "x", "tags": {}}])
    done = fake.script("teardown", "-g", "rg-amlrelay", "--delete-resource-group", "--yes")
    assert done.returncode != 0
    assert "refusing to delete resource group rg-amlrelay" in done.stderr
    assert WORKSPACE in done.stderr
    assert fake.world["deleted"] == []


def test_removes_only_amlrelays_resources_and_subscriptions(tmp_path: Path) -> None:
    fake = _deployed(tmp_path, foreign_resources=[{"id": WORKSPACE, "type": "x", "tags": {}}])
    done = fake.script("teardown", "-g", "rg-amlrelay", "--yes")
    assert done.returncode == 0, done.stderr[-3000:]
    world = fake.world
    assert sorted(r.rsplit("/", 1)[-1] for r in world["deleted"]) == ["amlr-aa-123", "amlrst123"]
    assert WORKSPACE not in world["deleted"]
    # amlrelay's subscriptions went; someone else's stayed, so did the topic they use.
    assert [s["name"] for s in world["subscriptions"]] == ["someone-elses"]
    assert world["topic"]["exists"]
    assert "2 other subscription" not in done.stderr
    assert "keeping system topic ws-amlrelay: 1 other subscription(s) use it" in done.stderr


def test_deletes_the_topic_it_created_when_nothing_else_uses_it(tmp_path: Path) -> None:
    fake = _deployed(tmp_path, subscriptions=[{"name": "old", "labels": ["amlrelay"]}])
    done = fake.script("teardown", "-g", "rg-amlrelay", "--delete-resource-group", "--yes")
    assert done.returncode == 0, done.stderr[-3000:]
    assert fake.world["deleted"] == ["topic:ws-amlrelay", "group:rg-amlrelay"]


def test_keeps_a_topic_amlrelay_did_not_create(tmp_path: Path) -> None:
    fake = _deployed(tmp_path, subscriptions=[])
    world = fake.world
    world["topic"]["tags"] = {}
    fake.state_path.write_text(json.dumps(world))
    done = fake.script("teardown", "-g", "rg-amlrelay", "--yes")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "amlrelay did not create it" in done.stderr
    assert fake.world["topic"]["exists"]


def test_asks_and_refuses_without_a_terminal(tmp_path: Path) -> None:
    fake = _deployed(tmp_path)
    done = fake.script("teardown", "-g", "rg-amlrelay", stdin="")
    assert done.returncode != 0
    assert "pass --yes" in done.stderr
    assert fake.world["deleted"] == []


def test_removes_the_ado_entitlement_it_granted(tmp_path: Path) -> None:
    token, admin = "mi", "admin"
    with AdoServer("contoso", pipelines={("mlops", 12): PipelineDef(name="p")}, bearer_tokens={token, admin}) as ado:
        ado.permissions.register_identity(token, HANDLER)
        ado.permissions.add_admin(admin)
        granted = requests.post(f"{ado.org_url}/_apis/serviceprincipalentitlements?api-version=7.1-preview.1",
                                json={"accessLevel": {"accountLicenseType": "express"}, "servicePrincipal": {
                                    "origin": "aad", "originId": HANDLER, "subjectKind": "servicePrincipal"}},
                                headers={"Authorization": f"Bearer {admin}"}, timeout=10)
        assert granted.json()["isSuccess"]
        fake = _deployed(tmp_path, ado_token=admin)
        done = fake.script("teardown", "-g", "rg-amlrelay", "--remove-ado-access", "--organization", "contoso",
                           "--ado-base-url", ado.url, "--yes")
        assert done.returncode == 0, done.stderr[-3000:]
        assert "removing the Azure DevOps entitlement" in done.stderr
        assert not ado.permissions.identity(HANDLER).entitled
        again = requests.post(f"{ado.org_url}/mlops/_apis/pipelines/12/runs?api-version=7.1", json={},
                              headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert again.status_code == 401
