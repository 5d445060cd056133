"""infra/modules/logic-app deploys the workflow `amlrelay logicapp build` generated, wired like the runbook:
the same settings, the ledger table role only, the callback URL only as a secure input."""

from __future__ import annotations

import json
from typing import Any

from amlrelay.logicapp import TRIGGER

from .conftest import INFRA, REPO


def _functions(value: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(value, dict):
        if "function" in value:
            found.append(value["function"])
        for item in value.values():
            found += _functions(item)
    elif isinstance(value, list):
        for item in value:
            found += _functions(item)
    return found


def test_the_module_deploys_the_generated_definitions(bicep: dict[str, Any]) -> None:
    doc = bicep["files"]["modules/logic-app/main.bicep"]
    loaded = {f["parameters"]["file_path"] for f in _functions(doc["variables"]["definitions"])
              if f["type"] == "load_json_content"}
    assert loaded == {f"../../../logicapps/workflow{variant}.json"
                      for variant in ("", "-pat", "-unverified", "-pat-unverified")}
    for path in loaded:
        definition = json.loads((INFRA / "modules" / "logic-app" / path).resolve().read_text(encoding="utf-8"))
        assert list(definition["triggers"]) == [TRIGGER]
        optional = {"keyVaultUrl", "patSecretName", "armUrl", "armAudience", "jobStatusRanks"}
        assert set(definition["parameters"]) - optional == {
            "adoOrganizationUrl", "allowedWorkspaces", "ledgerTableUrl", "ledgerTable", "routes"}
        assert ("pat" in path) == ("keyVaultUrl" in definition["parameters"])
        assert ("unverified" in path) != ("armUrl" in definition["parameters"])
    body = doc["resources"]["workflow"]["config"]
    assert body["identity"] == {"type": "SystemAssigned"}
    assert doc["outputs"]["triggerName"]["value"] == TRIGGER
    assert "Microsoft.Web/connections" not in {r["type"] for r in doc["resources"].values()}  # Request trigger only


def test_failed_runs_reach_log_analytics_when_a_workspace_is_given(bicep: dict[str, Any]) -> None:
    doc = bicep["files"]["modules/logic-app/main.bicep"]
    diagnostics = doc["resources"]["diagnostics"]["config"]
    assert diagnostics["config"]["scope"] == "workflow"
    assert diagnostics["config"]["properties"]["logs"] == [{"category": "WorkflowRuntime", "enabled": True}]
    main = bicep["files"]["main.bicep"]
    params = main["modules"]["logicApp"]["config"]["config"]["params"]
    # one parameter name for every module's Log Analytics workspace; the deprecated alias still wins when set
    chosen = params["logAnalyticsWorkspaceId"]["operator"]["operands"]
    assert (chosen["true_value"], chosen["false_value"]) == ("logAnalyticsWorkspaceId", "logicAppDiagnosticWorkspaceId")
    assert "diagnosticWorkspaceId" not in doc["parameters"]
    assert "logAnalyticsWorkspaceId" in bicep["files"]["modules/monitoring/main.bicep"]["parameters"]
    deprecated = main["parameters"]["logicAppDiagnosticWorkspaceId"]["decorators"][0]["argument"]
    assert deprecated.startswith("Optional. Deprecated")


def test_main_wires_the_workflow_like_the_runbook(bicep: dict[str, Any]) -> None:
    main = bicep["files"]["main.bicep"]
    params = main["modules"]["logicApp"]["config"]["config"]["params"]
    assert params["auth"] == "auth"
    assert params["adoOrganizationUrl"] == "${adoBaseUrl}/${adoOrganization}"
    assert params["ledgerTableName"] == "ledgerTableName"
    assert params["verifyEvents"] == "verifyEvents"  # the same switch as the runbook's AMLRELAY_VERIFY
    callback = [f for f in _functions(main["modules"]["eventGrid"])
                if f["type"] == "list_func" and f["parameters"]["func_name"] == "listCallbackUrl"]
    assert callback, "the subscriptions must point at the trigger's callback URL"
    trigger = callback[0]["parameters"]["resource_identifier"]["function"]["parameters"]
    assert trigger["resource_type"] == "Microsoft.Logic/workflows/triggers"
    assert main["variables"][trigger["resource_name_2"]]["value"] == TRIGGER
    grid = (INFRA / "modules" / "event-grid" / "main.bicep").read_text(encoding="utf-8")
    assert "@secure()\nparam endpointUrl string" in grid  # a secret input, never an output
    outputs = [o["value"] for o in main["outputs"].values()]
    outputs += [o["value"] for o in bicep["files"]["modules/logic-app/main.bicep"]["outputs"].values()]
    assert "listcallbackurl" not in json.dumps(outputs).lower()
    assert (REPO / "logicapps" / "workflow.json").is_file()


def test_the_logic_app_deployment_also_schedules_replay_with_its_own_identity(bicep: dict[str, Any]) -> None:
    """handler = 'logicapp' answers 500 for [ambiguous] failures and stale claims until `amlrelay replay`
    settles them, and Event Grid gives up after 24 h: the Automation account (replay runbook and schedules
    only, no webhook, no trigger runbook) is deployed for it too, and its identity gets the replay's roles."""
    main = bicep["files"]["main.bicep"]
    automation = main["modules"]["automation"]["config"]
    assert "condition" not in automation  # both handlers
    params = automation["params"]
    for gated, value in (("webhookUri", "webhookUri"), ("runbookContentUri", "runbookContentUri")):
        chosen = params[gated]["operator"]["operands"]["operand_2"]["operator"]["operands"]
        assert (chosen["condition"], chosen["true_value"], chosen["false_value"]) == ("runbook", value, "")
    assert "replayScheduleName" in params
    assert "replayRunbookContentUri" in params
    assert "handler" not in json.dumps(main["outputs"]["automationAccountName"]["value"])
    assert "automation" in json.dumps(main["outputs"]["replayPrincipalId"]["value"])
    replay = main["modules"]["roleAssignmentsForTopic"]["config"]["params"]["replayPrincipalId"]
    assert "logicapp" in json.dumps(replay)
    assert "automation" in json.dumps(replay)
    roles = bicep["files"]["modules/role-assignments/main.bicep"]["resources"]
    scopes = {name: roles[name]["config"]["config"]["scope"] for name in ("replayLedger", "replayDeadLetters",
                                                                          "replaySecrets")}
    assert scopes == {"replayLedger": "ledgerTable", "replayDeadLetters": "deadLetterContainer",
                      "replaySecrets": "vault"}
    assert "verifiedWorkspaceIds" in json.dumps(main["modules"]["replayWorkspaceReaders"])
