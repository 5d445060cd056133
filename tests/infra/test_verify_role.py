"""The role verification against AML needs (issue #7): built-in Reader, on each allowed workspace only.

Reader's definition (``*/read`` actions, no data actions) covers the control-plane reads the verifier makes:
``workspaces/jobs/read`` (Jobs_Get), ``workspaces/models/versions/read`` (ModelVersions_Get) and
``workspaces/read``; it is the narrowest *built-in* role that does (the AML roles add writes)."""

from __future__ import annotations

from typing import Any

READER = "acdd72a7-3385-48ef-bd42-f606fba81ae7"  # built-in Reader, the same id in every cloud


def test_the_handler_gets_reader_on_the_workspace_only(bicep: dict[str, Any]) -> None:
    doc = bicep["files"]["modules/role-assignments/workspace-reader.bicep"]
    assert doc["variables"]["readerRoleId"]["value"] == READER
    assert doc["resources"]["workspace"]["existing"]
    assert doc["resources"]["workspace"]["type"] == "Microsoft.MachineLearningServices/workspaces"
    [assignment] = [r for r in doc["resources"].values() if r["type"] == "Microsoft.Authorization/roleAssignments"]
    body = assignment["config"]
    assert body["scope"] == "workspace"  # not the resource group, not the subscription
    assert body["properties"]["principalId"] == "handlerPrincipalId"
    assert body["properties"]["roleDefinitionId"]["function"]["parameters"]["resource_name_1"] == "readerRoleId"


def test_main_grants_it_for_every_allowed_workspace_when_verification_is_on(bicep: dict[str, Any]) -> None:
    main = bicep["files"]["main.bicep"]
    assert main["parameters"]["verifyEvents"]["default"] is True
    module = main["modules"]["workspaceReaders"]
    assert module["detail"]["path"] == "modules/role-assignments/workspace-reader.bicep"
    assert module["config"]["loop_type"]["detail"]["array_name"] == "verifiedWorkspaceIds"
    scope = module["config"]["config"]["scope"]["function"]
    assert scope["type"] == "resource_group"  # each workspace's own group and subscription
    assert scope["parameters"]["subscription_id"]["function"]["index"] == 2
    assert scope["parameters"]["resource_group_name"]["function"]["index"] == 4
