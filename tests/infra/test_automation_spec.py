"""The Automation webhook, schedule and package calls of scripts/deploy against vendored REST spec excerpts
(tests/fixtures/automation/*-2024-10-23-excerpt.json, from Azure/azure-rest-api-specs): the fake `az`
resolves each `az rest` URL through the management SDK's request builders (tests/infra/arm_routes.py); this
checks that those routes are the spec's (path template, method, api-version), so neither the SDK-derived
routes nor the scripts can drift from the published contract for the operations issue 9 was about."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from .arm_routes import sdk_routes, site_packages
from .conftest import REPO, VENV, infra_tool
from .fake_az import PACKAGE_STEPS, AzError, arm_operation

SPEC = json.loads((REPO / "tests" / "fixtures" / "automation" / "webhook-2024-10-23-excerpt.json").read_text())
SCHEDULES = json.loads((REPO / "tests" / "fixtures" / "automation" / "schedule-2024-10-23-excerpt.json").read_text())
PACKAGES = json.loads((REPO / "tests" / "fixtures" / "automation" / "package-2024-10-23-excerpt.json").read_text())
ACCOUNT = ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-amlrelay/providers/"
           "Microsoft.Automation/automationAccounts/amlr-aa-123")


def _spec_operations() -> dict[tuple[str, str], str]:
    """(METHOD, path template with {name} placeholders normalised) -> operationId."""
    return {(method.upper(), re.sub(r"\{\w+\}", "{}", path)): op["operationId"]
            for path, ops in SPEC["paths"].items() for method, op in ops.items()}


def _script_webhook_calls() -> list[tuple[str, str]]:
    """(method, URL) of every webhook call scripts/deploy makes, read from the script itself."""
    text = (REPO / "scripts" / "deploy").read_text()
    calls = re.findall(r'rest --method (\w+) --url "\$account_id/(webhooks[^"?]*)\?api-version=\$AUTOMATION_API"',
                       text)
    if re.search(r"(?m)^\s*stale_items webhooks ", text):  # stale_items KIND: GET $account_id/KIND
        calls.append(("get", "webhooks"))
    assert len(calls) >= 3, "scripts/deploy's webhook calls changed shape: update this test"
    version = re.search(r'AUTOMATION_API="([^"]+)"', (REPO / "scripts" / "lib" / "common.sh").read_text())
    assert version
    urls = []
    for method, path in calls:
        concrete = path.replace("$old", "amlrelay-eventgrid-20200101000000")
        urls.append((method, f"{ACCOUNT}/{concrete}?api-version={version.group(1)}"))
    return urls


def test_the_pinned_api_version_is_the_specs() -> None:
    common = (REPO / "scripts" / "lib" / "common.sh").read_text()
    assert f'AUTOMATION_API="{SPEC["info"]["version"]}"' in common


def test_every_webhook_call_of_deploy_is_a_spec_operation() -> None:
    infra_tool("python")
    routes = [{k: str(v) for k, v in r.items()} for r in sdk_routes(site_packages(VENV), "automation")]
    spec = _spec_operations()
    seen = set()
    for method, url in _script_webhook_calls():
        operation, _ = arm_operation(method, url, routes)
        route = next(r for r in routes if r["operation"] == operation)
        key = (route["method"], re.sub(r"\{\w+\}", "{}", route["template"]))
        assert key in spec, f"{method} {url}: the SDK route {key} is not in the REST spec excerpt"
        assert route["api_version"] == SPEC["info"]["version"]
        seen.add(spec[key])
    assert {"Webhook_GenerateUri", "Webhook_ListByAutomationAccount", "Webhook_Delete"} <= seen


def test_a_call_outside_the_spec_is_refused() -> None:
    infra_tool("python")
    routes = [{k: str(v) for k, v in r.items()} for r in sdk_routes(site_packages(VENV), "automation")]
    with pytest.raises(AzError):
        arm_operation("post", f"{ACCOUNT}/webhooks/regenerateUri?api-version=2024-10-23", routes)
    assert not [key for key in _spec_operations() if key[1].endswith("/regenerateUri")]


def test_the_excerpt_names_its_source() -> None:
    source = SPEC["_source"]
    assert source["repository"] == "Azure/azure-rest-api-specs"
    assert re.fullmatch(r"[0-9a-f]{40}", source["commit"])
    assert Path(source["file"]).name == "webhook.json"


def test_the_package_poll_is_the_specs_list_operation_and_its_states_are_the_specs() -> None:
    """scripts/deploy waits for provisioningState Succeeded and stops on Failed/Canceled; the fake walks an
    import through intermediate states: all of them must be values the spec's enum has."""
    infra_tool("python")
    routes = [{k: str(v) for k, v in r.items()} for r in sdk_routes(site_packages(VENV), "automation")]
    url = f"{ACCOUNT}/runtimeEnvironments/amlrelay-python310/packages?api-version={PACKAGES['info']['version']}"
    operation, _ = arm_operation("get", url, routes)
    route = next(r for r in routes if r["operation"] == operation)
    spec_paths = {re.sub(r"\{\w+\}", "{}", p): ops for p, ops in PACKAGES["paths"].items()}
    assert spec_paths[re.sub(r"\{\w+\}", "{}", route["template"])]["get"]["operationId"] == \
        "Package_ListByRuntimeEnvironment"
    states = set(PACKAGES["definitions"]["PackageProperties"]["properties"]["provisioningState"]["enum"])
    assert set(PACKAGE_STEPS) <= states
    deploy = (REPO / "scripts" / "deploy").read_text()
    assert 'states[n] in ("Failed", "Canceled")' in deploy
    assert {"Succeeded", "Failed", "Canceled"} <= states
    assert 'packages_url="$account_id/runtimeEnvironments/$runtime_env/packages?api-version=$AUTOMATION_API"' \
        in deploy


def test_the_schedule_rotation_calls_are_spec_operations() -> None:
    """Deploy lists amlrelay-replay-* schedules and deletes the older ones (stale_items schedules)."""
    infra_tool("python")
    routes = [{k: str(v) for k, v in r.items()} for r in sdk_routes(site_packages(VENV), "automation")]
    deploy = (REPO / "scripts" / "deploy").read_text()
    assert re.search(r"(?m)^\s*stale_items schedules ", deploy)
    assert 'rest --method delete --url "$account_id/schedules/$old?api-version=$AUTOMATION_API"' in deploy
    spec = {(m.upper(), re.sub(r"\{\w+\}", "{}", p)): op["operationId"]
            for p, ops in SCHEDULES["paths"].items() for m, op in ops.items()}
    seen = set()
    for method, tail in (("get", "schedules"), ("delete", "schedules/amlrelay-replay-20200101000000")):
        operation, _ = arm_operation(method, f"{ACCOUNT}/{tail}?api-version={SCHEDULES['info']['version']}", routes)
        route = next(r for r in routes if r["operation"] == operation)
        seen.add(spec[(route["method"], re.sub(r"\{\w+\}", "{}", route["template"]))])
    assert seen == {"Schedule_ListByAutomationAccount", "Schedule_Delete"}
