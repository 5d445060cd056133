"""Shared fixtures for the offline infra tests.

The Bicep parser (pycep-parser 0.5.1, the version checkov pins), checkov, shellcheck and the Azure
management SDKs live in a separate venv, ``.venv-infra`` (``scripts/setup-infra-tools``), because
checkov pins its own dependency set. The tests run in the project venv and call that venv through
subprocesses. Without it the tests are skipped locally and fail under CI (CI=true).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
HERE = Path(__file__).resolve().parent
VENV = Path(os.environ.get("AMLRELAY_INFRA_VENV", REPO / ".venv-infra"))


def infra_tool(name: str) -> Path:
    tool = VENV / "bin" / name
    if not tool.exists():
        message = f"{tool} is missing: run scripts/setup-infra-tools"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return tool


def run_json(args: list[str]) -> Any:
    done = subprocess.run(args, capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


@pytest.fixture(scope="session")
def bicep() -> dict[str, Any]:
    """Every .bicep file under infra/, parsed by pycep-parser 0.5.1."""
    parsed: dict[str, Any] = run_json([str(infra_tool("python")), str(HERE / "bicep_probe.py"), str(INFRA)])
    return parsed


# Resource type -> the SDK model of its PUT body (module:Class).
SDK_MODELS = {
    "Microsoft.EventGrid/systemTopics": "azure.mgmt.eventgrid.models:SystemTopic",
    "Microsoft.EventGrid/systemTopics/eventSubscriptions": "azure.mgmt.eventgrid.models:EventSubscription",
    "Microsoft.Automation/automationAccounts": "azure.mgmt.automation.models:AutomationAccountCreateOrUpdateParameters",
    "Microsoft.Automation/automationAccounts/runtimeEnvironments": "azure.mgmt.automation.models:RuntimeEnvironment",
    "Microsoft.Automation/automationAccounts/runtimeEnvironments/packages":
        "azure.mgmt.automation.models:PackageCreateOrUpdateParameters",
    "Microsoft.Automation/automationAccounts/runbooks": "azure.mgmt.automation.models:RunbookCreateOrUpdateParameters",
    "Microsoft.Automation/automationAccounts/variables":
        "azure.mgmt.automation.models:VariableCreateOrUpdateParameters",
    "Microsoft.Automation/automationAccounts/webhooks": "azure.mgmt.automation.models:WebhookCreateOrUpdateParameters",
    "Microsoft.Automation/automationAccounts/schedules":
        "azure.mgmt.automation.models:ScheduleCreateOrUpdateParameters",
    "Microsoft.Automation/automationAccounts/jobSchedules": "azure.mgmt.automation.models:JobScheduleCreateParameters",
    "Microsoft.Logic/workflows": "azure.mgmt.logic.models:Workflow",
    "Microsoft.Insights/diagnosticSettings":
        "azure.mgmt.monitor.v2021_05_01_preview.models:DiagnosticSettingsResource",
    "Microsoft.Insights/metricAlerts": "azure.mgmt.monitor.v2018_03_01.models:MetricAlertResource",
    "Microsoft.Storage/storageAccounts": "azure.mgmt.storage.models:StorageAccountCreateParameters",
    "Microsoft.Storage/storageAccounts/blobServices": "azure.mgmt.storage.models:BlobServiceProperties",
    "Microsoft.Storage/storageAccounts/blobServices/containers": "azure.mgmt.storage.models:BlobContainer",
    "Microsoft.Storage/storageAccounts/tableServices": "azure.mgmt.storage.models:TableServiceProperties",
    "Microsoft.Storage/storageAccounts/tableServices/tables": "azure.mgmt.storage.models:Table",
    "Microsoft.Storage/storageAccounts/queueServices": "azure.mgmt.storage.models:QueueServiceProperties",
    "Microsoft.Storage/storageAccounts/queueServices/queues": "azure.mgmt.storage.models:StorageQueue",
    "Microsoft.KeyVault/vaults": "azure.mgmt.keyvault.models:VaultCreateOrUpdateParameters",
    "Microsoft.Authorization/roleAssignments":
        "azure.mgmt.authorization.v2022_04_01.models:RoleAssignmentCreateParameters",
}


@pytest.fixture(scope="session")
def sdk() -> dict[str, Any]:
    """REST shapes and API versions of the SDK models in SDK_MODELS."""
    schema: dict[str, Any] = run_json(
        [str(infra_tool("python")), str(HERE / "sdk_schema.py"), *sorted(set(SDK_MODELS.values()))]
    )
    return schema
