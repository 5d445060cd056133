"""The role tag-back needs (issue #11): AzureML Data Scientist on each allowed workspace, and only when
tag-back is on with the runbook handler (the Logic App does not tag back).

MLflow tracking needs ``Microsoft.MachineLearningServices/workspaces/experiments/*`` and the model registry
``.../models/*/*`` (azure-docs how-to-use-mlflow-configure-tracking); Reader (verification) has no writes."""

from __future__ import annotations

from typing import Any

DATA_SCIENTIST = "f6c7c914-8db3-469d-8ca1-694a8f32e121"  # built-in AzureML Data Scientist, the same id in every cloud


def test_the_handler_gets_data_scientist_on_the_workspace_only(bicep: dict[str, Any]) -> None:
    doc = bicep["files"]["modules/role-assignments/workspace-tagger.bicep"]
    assert doc["variables"]["dataScientistRoleId"]["value"] == DATA_SCIENTIST
    assert doc["resources"]["workspace"]["existing"]
    assert doc["resources"]["workspace"]["type"] == "Microsoft.MachineLearningServices/workspaces"
    [assignment] = [r for r in doc["resources"].values() if r["type"] == "Microsoft.Authorization/roleAssignments"]
    body = assignment["config"]
    assert body["scope"] == "workspace"
    assert body["properties"]["principalId"] == "handlerPrincipalId"
    assert body["properties"]["roleDefinitionId"]["function"]["parameters"]["resource_name_1"] == "dataScientistRoleId"


def test_main_grants_it_only_when_tag_back_is_on_and_sets_the_settings(bicep: dict[str, Any]) -> None:
    main = bicep["files"]["main.bicep"]
    assert main["parameters"]["tagBack"]["default"] is False  # off by default, as AMLRELAY_TAG_BACK
    module = main["modules"]["workspaceTaggers"]
    assert module["detail"]["path"] == "modules/role-assignments/workspace-tagger.bicep"
    assert module["config"]["loop_type"]["detail"]["array_name"] == "taggedWorkspaceIds"
    scope = module["config"]["config"]["scope"]["function"]
    assert scope["type"] == "resource_group"
    settings = main["variables"]["baseSettings"]["value"]
    assert {"AMLRELAY_TAG_BACK", "AMLRELAY_AML_REGION"} <= set(settings)
    condition = str(main["variables"]["taggedWorkspaceIds"]["value"])
    assert "tagBack" in condition
    assert "runbook" in condition
