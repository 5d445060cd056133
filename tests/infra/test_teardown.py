"""scripts/teardown against the fake `az` world: it removes amlrelay and nothing that is not amlrelay's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import requests

from tests.servers import AdoServer
from tests.servers._ado_rules import PipelineDef

from .test_scripts import FakeAz, _deploy

WORKSPACE = ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-amlrelay/providers/"
             "Microsoft.MachineLearningServices/workspaces/contoso-ml")
HANDLER = "11111111-1111-1111-1111-111111111111"


def _deployed(tmp_path: Path, handler: str = "runbook", **state: Any) -> FakeAz:
    """A world after scripts/deploy: tagged resources, amlrelay's subscriptions, and a deployment record."""
    fake = FakeAz(tmp_path, **state)
    params = tmp_path / "p.json"
    params.write_text(json.dumps({"parameters": {"webhookUri": {"value": "https://x"}, "handler": {"value": handler}}}))
    done = fake.az("deployment", "group", "create", "-g", "rg-amlrelay", "-n", "amlrelay-handler-1",
                   "--template-file", "main.bicep", "--parameters", f"@{params}")
    assert done.returncode == 0, done.stderr
    assert fake.world["topic"]["tags"]["amlrelay-created-topic"] == "true"
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
    # r1: the handler's Reader role assignment on the workspace (outside the group)
    assert sorted(r.rsplit("/", 1)[-1] for r in world["deleted"]) == ["amlr-aa-123", "amlrst123", "r1"]
    assert WORKSPACE not in world["deleted"]
    # This deployment's subscriptions went; someone else's and another amlrelay deployment's (label
    # amlrelay:rg-other) stayed, so did the topic they use.
    assert [s["name"] for s in world["subscriptions"]] == ["someone-elses", "other-deployment"]
    assert world["topic"]["exists"]
    assert "keeping system topic ws-amlrelay: 2 other subscription(s) use it" in done.stderr


def test_deletes_the_topic_it_created_when_nothing_else_uses_it(tmp_path: Path) -> None:
    fake = _deployed(tmp_path, subscriptions=[{"name": "old", "labels": ["amlrelay:rg-amlrelay"]}])
    done = fake.script("teardown", "-g", "rg-amlrelay", "--delete-resource-group", "--yes")
    assert done.returncode == 0, done.stderr[-3000:]
    deleted = fake.world["deleted"]
    assert [deleted[0], deleted[-1]] == ["topic:ws-amlrelay", "group:rg-amlrelay"]
    assert deleted[1].endswith("/roleAssignments/r1")


OWNED_TOPIC = {"name": "ws-ml-events", "resourceGroup": "rg-ml", "exists": True, "tags": {"owner": "ml-team"},
               "identity": "SystemAssigned, UserAssigned"}


def test_deploy_over_a_pre_existing_topic_leaves_it_alone_and_teardown_keeps_it(tmp_path: Path) -> None:
    """Review MUST 5: the workspace's own topic (found by its source) is referenced, never PUT -- its tags and
    identity survive -- and teardown, seeing no amlrelay-created-topic tag, keeps it even with no other
    subscription left."""
    fake = FakeAz(tmp_path, topic=dict(OWNED_TOPIC), subscriptions=[])
    done = _deploy(fake)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ws-ml-events already exists (not amlrelay's)" in done.stderr
    world = fake.world
    assert world["violations"] == []
    infra = world["params"][0]
    assert infra["systemTopicExists"]["value"] is True
    assert infra["systemTopicName"]["value"] == "ws-ml-events"  # found by source, whatever the default name
    assert world["topic"]["tags"] == {"owner": "ml-team"}
    assert world["topic"]["identity"] == "SystemAssigned, UserAssigned"
    assert [s["labels"][0] for s in world["subscriptions"]] == ["amlrelay:rg-amlrelay"]
    done = fake.script("teardown", "-g", "rg-amlrelay", "--yes")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "keeping system topic ws-ml-events: amlrelay did not create it" in done.stderr
    assert fake.world["topic"]["exists"]
    assert fake.world["subscriptions"] == []
    assert not [d for d in fake.world["deleted"] if d.startswith("topic:")]


def test_the_fake_records_a_put_over_someone_elses_topic(tmp_path: Path) -> None:
    """The check above can fail: deploying without systemTopicExists over an owned topic is a violation."""
    fake = FakeAz(tmp_path, topic=dict(OWNED_TOPIC))
    params = tmp_path / "p.json"
    params.write_text(json.dumps({"parameters": {"systemTopicName": {"value": "ws-ml-events"}}}))
    done = fake.az("deployment", "group", "create", "-g", "rg-amlrelay", "-n", "x", "--template-file", "main.bicep",
                   "--parameters", f"@{params}")
    assert done.returncode == 0, done.stderr
    assert "PUT over the workspace's existing topic ws-ml-events" in fake.world["violations"][0]


def test_deploy_refuses_a_pre_existing_topic_without_its_system_identity(tmp_path: Path) -> None:
    fake = FakeAz(tmp_path, topic={**OWNED_TOPIC, "identity": "UserAssigned"})
    done = _deploy(fake)
    assert done.returncode != 0
    assert "system-assigned identity is off" in done.stderr
    assert "amlrelay never changes someone else's topic" in done.stderr
    assert fake.world["deployments"] == []
    assert fake.world["topic"]["identity"] == "UserAssigned"


def test_a_topic_tagged_only_amlrelay_handler_is_kept(tmp_path: Path) -> None:
    """Earlier versions tagged any topic they PUT, theirs or not, with amlrelay-handler: that tag proves nothing."""
    fake = _deployed(tmp_path, subscriptions=[])
    world = fake.world
    world["topic"]["tags"] = {"amlrelay-handler": "runbook"}
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


def test_refuses_while_the_storage_account_holds_unseen_events(tmp_path: Path) -> None:
    """Review SHOULD 7: the journal, its poison queue and unreplayed dead letters go with the storage account."""
    blobs = [{"name": "a.json", "metadata": {"amlrelayreplayed": "2026-01-01"}}, {"name": "b.json", "metadata": {}}]
    fake = _deployed(tmp_path, queues={"amlrelay-journal-poison": [{"id": "m1"}]}, deadletter_blobs=blobs)
    done = fake.script("teardown", "-g", "rg-amlrelay", "--yes")
    assert done.returncode != 0
    assert "0 message(s) in queue amlrelay-journal\n" in done.stderr
    assert "1 message(s) in queue amlrelay-journal-poison" in done.stderr
    assert "1 dead-lettered event blob(s) not replayed in deadletters" in done.stderr
    assert "--force" in done.stderr
    assert fake.world["deleted"] == []
    forced = fake.script("teardown", "-g", "rg-amlrelay", "--yes", "--force")
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert any(d.endswith("/amlrst123") for d in fake.world["deleted"])


def test_cannot_count_unseen_events_without_data_plane_read(tmp_path: Path) -> None:
    fake = _deployed(tmp_path, storage_data_403=True)
    done = fake.script("teardown", "-g", "rg-amlrelay", "--yes")
    assert done.returncode != 0
    assert "unknown message(s) in queue amlrelay-journal" in done.stderr
    assert fake.world["deleted"] == []


def test_removes_the_handlers_role_assignments_on_the_workspace(tmp_path: Path) -> None:
    """Review SHOULD 8: Reader (verify) on the workspace lives outside RG; someone else's assignment stays."""
    fake = _deployed(tmp_path)
    done = fake.script("teardown", "-g", "rg-amlrelay", "--yes")
    assert done.returncode == 0, done.stderr[-3000:]
    assert [a["principalId"] for a in fake.world["role_assignments"]] == ["55555555-5555-5555-5555-555555555555"]
    assert "deleting role assignment of 11111111-1111-1111-1111-111111111111" in done.stderr


def test_beside_a_logic_app_removes_the_replay_identitys_entitlement_too(tmp_path: Path) -> None:
    from .fake_az import REPLAY_PRINCIPAL

    admin = "admin"
    with AdoServer("contoso", pipelines={("mlops", 12): PipelineDef(name="p")}, bearer_tokens={"mi", "replay", admin}
                   ) as ado:
        ado.permissions.add_admin(admin)
        for token, who in (("mi", HANDLER), ("replay", REPLAY_PRINCIPAL)):
            ado.permissions.register_identity(token, who)
            granted = requests.post(f"{ado.org_url}/_apis/serviceprincipalentitlements?api-version=7.1-preview.1",
                                    json={"accessLevel": {"accountLicenseType": "express"}, "servicePrincipal": {
                                        "origin": "aad", "originId": who, "subjectKind": "servicePrincipal"}},
                                    headers={"Authorization": f"Bearer {admin}"}, timeout=10)
            assert granted.json()["isSuccess"]
        fake = _deployed(tmp_path, handler="logicapp", ado_token=admin)
        done = fake.script("teardown", "-g", "rg-amlrelay", "--remove-ado-access", "--organization", "contoso",
                           "--ado-base-url", ado.url, "--yes")
        assert done.returncode == 0, done.stderr[-3000:]
        assert not ado.permissions.identity(HANDLER).entitled
        assert not ado.permissions.identity(REPLAY_PRINCIPAL).entitled
