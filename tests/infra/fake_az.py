"""A fake ``az`` for the script tests: it refuses what the real CLI refuses, then models an Azure world.

Every invocation is first checked against the command table of the real azure-cli (tests/fixtures/az/
command-table.json, written by scripts/gen-az-command-table): an unknown command (an extension's, say), an
unknown option, a missing required option or a value outside an enum fails with exit 2, as ``az`` does.
``az rest`` calls to Azure Resource Manager are checked against the operations of the management SDK
(method, path template, api-version: tests/infra/arm_routes.py); calls to any other host (the Azure DevOps
stand-in) are forwarded there with a bearer token, so ADO's own rules answer them.

Then a small world answers, kept in a JSON state file between invocations: deployments and their outputs,
packages whose import takes several polls, a role assignment that needs a few upload attempts to
propagate, soft-deleted vaults, webhooks, schedules, event subscriptions and tagged resources. It records
violations of Azure's ordering rules (a webhook or subscription going live before the runtime packages
are imported or the runbook is published) for the tests to assert on.

Environment: FAKE_AZ_TABLE, FAKE_AZ_ROUTES (JSON list of routes), FAKE_AZ_STATE (JSON world, updated),
FAKE_AZ_LOG (one JSON argv per line). Run with an interpreter that has ``jmespath`` (the infra venv).
"""

from __future__ import annotations

import base64
import json
import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

ARM = "https://management.azure.com"
ADO_RESOURCE = "499b84ac-1321-427f-aa17-267ca6975798"
PACKAGE_STEPS = ["Creating", "ContentDownloaded", "ContentValidated", "Succeeded"]
WORKSPACE = ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-ml/providers/"
             "Microsoft.MachineLearningServices/workspaces/ws")
TOPIC_ID = ("/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.EventGrid/systemTopics/{name}")


class AzError(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# ----------------------------------------------------------------------------------------- validation

def parse(args: list[str], table: dict[str, Any]) -> tuple[str, dict[str, list[str]]]:
    """Split argv into the command and its options, refusing what azure-cli's parser would refuse."""
    commands: dict[str, Any] = table["commands"]
    words: list[str] = []
    for arg in args:
        if arg.startswith("-"):
            break
        words.append(arg)
    name = ""
    for end in range(len(words), 0, -1):
        if " ".join(words[:end]) in commands:
            name = " ".join(words[:end])
            break
    if not name:
        raise AzError(f"'{' '.join(words)}' is not a command of azure-cli {table['azure-cli']} (core commands "
                      "only: amlrelay's scripts need no extension). See 'az --help'.", 2)
    spec = commands[name]
    known = set(spec.get("options", [])) | set(table["global"])
    flags = set(spec.get("flags", [])) | {"--debug", "--help", "-h", "--only-show-errors", "--verbose"}
    multi = set(spec.get("multi", []))
    optional = set(spec.get("optional_value", []))
    choices: dict[str, list[str]] = {**table.get("global_choices", {}), **spec.get("choices", {})}
    options: dict[str, list[str]] = {}
    rest = args[len(name.split()):]
    index = 0
    while index < len(rest):
        token = rest[index]
        if not token.startswith("-"):
            raise AzError(f"unrecognized arguments: {token}", 2)
        option, eq, inline = token.partition("=")
        if option not in known:
            raise AzError(f"unrecognized arguments: {token}", 2)
        values: list[str] = []
        index += 1
        if eq:
            values = [inline]
        elif option in flags:
            values = []
        elif option in multi:
            while index < len(rest) and not rest[index].startswith("--"):
                values.append(rest[index])
                index += 1
            if not values:
                raise AzError(f"argument {option}: expected at least one argument", 2)
        elif option in optional:
            if index < len(rest) and not rest[index].startswith("-"):
                values = [rest[index]]
                index += 1
        else:
            if index >= len(rest):
                raise AzError(f"argument {option}: expected one argument", 2)
            values = [rest[index]]
            index += 1
        allowed = choices.get(option)
        if allowed:
            for value in values:
                if value.lower() not in {c.lower() for c in allowed}:
                    raise AzError(f"argument {option}: invalid choice: '{value}' (choose from "
                                  f"{', '.join(repr(c) for c in allowed)})", 2)
        options.setdefault(option, []).extend(values)
    missing = [r for r in spec.get("required", []) if not set(r.split("/")) & set(options)]
    if missing:
        raise AzError(f"the following arguments are required: {', '.join(missing)}", 2)
    return name, options


def arm_operation(method: str, url: str, routes: list[dict[str, str]]) -> tuple[str, dict[str, str]]:
    """The SDK operation an ARM URL addresses; refuses unknown paths, methods and api-versions."""
    parts = urlsplit(url if "://" in url else ARM + url)
    version = (parse_qs(parts.query).get("api-version") or [""])[0]
    for route in routes:
        names = re.findall(r"\{(\w+)\}", route["template"])
        pattern = re.escape(route["template"])
        for key in names:
            pattern = pattern.replace(re.escape("{" + key + "}"), "([^/]+)")
        match = re.fullmatch(pattern, parts.path, flags=re.IGNORECASE)
        if not match or route["method"] != method.upper():
            continue
        if version != route["api_version"]:
            # ARM serves older api-versions too; what the fake refuses is drift from the version the Bicep
            # and the scripts pin (a test-suite rule, not an ARM answer).
            raise AzError(f"api-version '{version}' of {route['operation']} is not the pinned api-version "
                          f"{route['api_version']} (the SDK's and infra/modules/automation's)")
        return route["operation"], dict(zip(names, match.groups(), strict=False))
    raise AzError(f"Not Found({{\"error\":{{\"code\":\"InvalidResourceType\",\"message\":\"{method.upper()} "
                  f"{parts.path} is no operation of the management SDK.\"}}}})")


# ----------------------------------------------------------------------------------------------- world

def _one(options: dict[str, list[str]], *names: str) -> str:
    for name in names:
        if options.get(name):
            return options[name][0]
    return ""


def _body(options: dict[str, list[str]]) -> Any:
    raw = _one(options, "--body", "-b")
    if raw.startswith("@"):
        raw = Path(raw[1:]).read_text()
    return json.loads(raw) if raw else None


REPLAY_PRINCIPAL = "22222222-2222-2222-2222-222222222222"  # the Logic App handler's Automation account


def _outputs(state: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    def value(name: str, default: Any) -> Any:
        return params.get(name, {}).get("value", default)

    handler = value("handler", "runbook")
    auth = value("auth", "managed-identity")
    schedule = value("replayScheduleName", "")
    if not value("replayScheduleEnabled", True):
        schedule = ""
    out = {
        "handler": handler, "storageAccountName": "amlrst123", "packagesContainerName": "packages",
        # both handlers have the Automation account: the Logic App's runs only the replay runbook
        "automationAccountName": "amlr-aa-123",
        "runbookName": "trigger-ado-pipeline" if handler == "runbook" else "",
        "replayRunbookName": "replay_dead_letters",
        "replayScheduleName": schedule,
        "runtimeEnvironmentName": "amlrelay-python310",
        "systemTopicName": state["topic"]["name"], "systemTopicResourceGroup": state["topic"]["resourceGroup"],
        "subscriptionLabel": f"amlrelay:{state['rg']}",
        "handlerPrincipalId": state["handler_principal"], "systemAssignedMIPrincipalId": state["handler_principal"],
        "replayPrincipalId": state["handler_principal"] if handler == "runbook" else REPLAY_PRINCIPAL,
        "keyVaultName": state["vault_name"] if auth == "pat" else "",
        "subscriptionNames": list(state["generated_subscriptions"]),
        "settings": {"AMLRELAY_ADO_ORGANIZATION": "contoso", "AMLRELAY_JOURNAL_QUEUE": "amlrelay-journal",
                     "AMLRELAY_DEADLETTER_CONTAINER": "deadletters", "AMLRELAY_ALLOWED_WORKSPACES": (
            "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-ml/providers/"
            "Microsoft.MachineLearningServices/workspaces/ws")},
    }
    return {k: {"type": "String", "value": v} for k, v in out.items()}


def deploy(state: dict[str, Any], options: dict[str, list[str]]) -> Any:
    """What one deployment of infra/main.bicep does to the world, as the template is written."""
    rg = _one(options, "--resource-group", "-g")
    name = _one(options, "--name", "-n")
    params: dict[str, Any] = {}
    for item in options.get("--parameters", []):
        if item.startswith("@"):
            params.update(json.loads(Path(item[1:]).read_text())["parameters"])

    def value(key: str, default: Any) -> Any:
        return params.get(key, {}).get("value", default)

    deployer = value("deployerPrincipalId", "")
    if deployer:
        actual = state["principal_types"].get(deployer, "User")
        wanted = value("deployerPrincipalType", "User")
        if actual != wanted:
            raise AzError(f"{{\"code\": \"UnmatchedPrincipalType\", \"message\": \"The PrincipalId '{deployer}' "
                          f"has type '{actual}', which is different from specified PrincipalType '{wanted}'.\"}}")
    if value("auth", "managed-identity") == "pat":
        deleted = [v for v in state["deleted_vaults"] if v["name"] == state["vault_name"]]
        if deleted and value("keyVaultCreateMode", "default") != "recover":
            raise AzError("{\"code\": \"ConflictError\", \"message\": \"Exist soft deleted vault with the same "
                          "name.\"}")
        if deleted:
            state["deleted_vaults"].remove(deleted[0])
            state["recovered_vaults"].append(state["vault_name"])
        _add_resource(state, rg, "Microsoft.KeyVault/vaults", state["vault_name"])
    for kind, res in (("Microsoft.Storage/storageAccounts", "amlrst123"),
                      ("Microsoft.Automation/automationAccounts", "amlr-aa-123")):
        _add_resource(state, rg, kind, res)
    _deploy_topic(state, name, value("systemTopicName", state["topic"]["name"]), value("systemTopicExists", False))
    packages = [p["name"] for p in value("runbookPackages", [])]
    if value("amlrelayPackageUri", ""):
        packages.append("amlrelay")
    for package in packages:
        state["packages"][package] = 0  # index into PACKAGE_STEPS; advances on every poll
    # main.bicep passes the trigger runbook's content and the webhook URI to Automation with the runbook
    # handler only: beside the Logic App the account runs the replay runbook alone
    runbook_handler = value("handler", "runbook") == "runbook"
    for param, runbook in (("runbookContentUri", "trigger-ado-pipeline"),
                           ("replayRunbookContentUri", "replay_dead_letters")):
        if value(param, "") and (runbook_handler or runbook == "replay_dead_letters"):
            state["published"].append(runbook)
    ready = all(PACKAGE_STEPS[i] == "Succeeded" for i in state["packages"].values()) and state["packages"]
    if value("webhookUri", "") and runbook_handler:
        if not ready:
            state["violations"].append(f"{name}: webhook live before every runtime package was imported")
        if "trigger-ado-pipeline" not in state["published"]:
            state["violations"].append(f"{name}: webhook live on an unpublished runbook")
        state["webhooks"].append(value("webhookName", "amlrelay-eventgrid"))
        for sub in state["generated_subscriptions"]:
            if sub not in [s["name"] for s in state["subscriptions"]]:
                state["subscriptions"].append({"name": sub, "labels": [f"amlrelay:{rg}", f"route:{sub}"]})
    schedule = value("replayScheduleName", "")
    if schedule and value("replayScheduleEnabled", True):
        if "replay_dead_letters" not in state["published"]:
            state["violations"].append(f"{name}: job schedule on an unpublished replay runbook")
        # infra/modules/automation: one hourly schedule per offset, <name>-m0 ... (60 / sweepIntervalMinutes).
        every = int(value("sweepIntervalMinutes", 15))
        state["schedules"].extend(f"{schedule}-m{i * every}" for i in range(60 // every))
    state["params"].append(params)
    state["clock"] += 1
    record = {"name": name, "properties": {"provisioningState": "Succeeded", "outputs": _outputs(state, params),
                                           "timestamp": f"2026-01-01T00:00:{state['clock']:02d}Z"}}
    state["deployments"].append(record)
    return record


def _deploy_topic(state: dict[str, Any], deployment: str, name: str, exists: bool) -> None:
    """modules/event-grid as written: an existing topic is only referenced (its identity must be on); otherwise
    the topic is PUT with amlrelay's tags and a system-assigned identity -- which, over someone else's topic,
    replaces their tags and identity: recorded as a violation."""
    topic = state["topic"]
    if name != topic["name"]:
        raise AzError(f"the fake world's topic is {topic['name']}, the deployment names {name}")
    if exists:
        if not topic.get("exists"):
            raise AzError(f"{{\"code\": \"ResourceNotFound\", \"message\": \"The Resource "
                          f"'Microsoft.EventGrid/systemTopics/{name}' was not found.\"}}")
        if "SystemAssigned" not in topic.get("identity", "None"):
            raise AzError("{\"code\": \"InvalidTemplate\", \"message\": \"The language expression property "
                          "'principalId' doesn't exist.\"}")
        return
    if topic.get("exists") and "amlrelay-created-topic" not in topic.get("tags", {}):
        state["violations"].append(f"{deployment}: PUT over the workspace's existing topic {name} (tags "
                                   f"{topic.get('tags')}, identity {topic.get('identity')} replaced)")
    topic.update(exists=True, tags={"amlrelay-handler": "runbook", "amlrelay-created-topic": "true"},
                 identity="SystemAssigned")


def _add_resource(state: dict[str, Any], rg: str, kind: str, name: str) -> None:
    rid = f"/subscriptions/{state['account']['id']}/resourceGroups/{rg}/providers/{kind}/{name}"
    if rid not in [r["id"] for r in state["resources"]]:
        state["resources"].append({"id": rid, "name": name, "type": kind, "tags": {"amlrelay-handler": "runbook"}})


def rest(state: dict[str, Any], options: dict[str, list[str]], routes: list[dict[str, str]]) -> Any:
    method = (_one(options, "--method", "-m") or "get").upper()
    url = _one(options, "--url", "--uri", "-u")
    if url.startswith("/") or url.startswith(ARM):
        operation, where = arm_operation(method, url, routes)
        return arm(state, operation, where, _body(options))
    return forward(state, method, url, options)


def arm(state: dict[str, Any], operation: str, where: dict[str, str], body: Any) -> Any:
    if operation == "package_list_by_runtime_environment":
        value = []
        for name, step in sorted(state["packages"].items()):
            status = "Failed" if name == state.get("failing_package") and step >= 1 else PACKAGE_STEPS[step]
            item: dict[str, Any] = {"name": name, "properties": {"provisioningState": status}}
            if status == "Failed":
                item["properties"]["error"] = {"code": "PackageImportFailed", "message": "wheel is not cp310"}
            value.append(item)
            state["packages"][name] = min(step + 1, len(PACKAGE_STEPS) - 1)
        return {"value": value}
    if operation == "variable_create_or_update":
        unknown = sorted(set(body["properties"]) - {"value", "description", "isEncrypted"})  # the SDK's model
        if unknown or not isinstance(body["properties"].get("value"), str):
            raise AzError(f"Bad Request: variable properties {unknown or 'value must be a JSON-encoded string'}")
        json.loads(body["properties"]["value"])  # Automation stores the value JSON-encoded
        state.setdefault("variables", {})[where["variableName"]] = body
        return {"name": where["variableName"], "properties": body["properties"]}
    if operation == "variable_get":
        found = state.setdefault("variables", {}).get(where["variableName"])
        if found is None:
            raise AzError("Not Found({\"code\":\"NotFound\",\"message\":\"Variable not found.\"})", 3)
        return {"name": where["variableName"], "properties": found["properties"]}
    if operation == "webhook_generate_uri":
        return state["webhook_uri"]
    if operation == "webhook_list_by_automation_account":
        return {"value": [{"name": n, "properties": {"isEnabled": True}} for n in state["webhooks"]]}
    if operation == "webhook_delete":
        state["webhooks"].remove(where["webhookName"])
        return None
    if operation == "schedule_list_by_automation_account":
        return {"value": [{"name": n, "properties": {"frequency": "Hour", "interval": 1}} for n in state["schedules"]]}
    if operation == "schedule_delete":
        state["schedules"].remove(where["scheduleName"])
        return None
    if operation == "job_create":
        props = body["properties"]
        unknown = sorted(set(props) - {"runbook", "parameters", "runOn"})  # JobCreateProperties of the SDK
        if unknown:
            raise AzError(f"Bad Request: unknown job properties {unknown}")
        state["jobs"].append({"name": where["jobName"], "runbook": props["runbook"]["name"]})
        return {"name": where["jobName"], "properties": {"status": "New"}}
    if operation == "job_get":
        return {"name": where["jobName"], "properties": {"status": "Completed"}}
    if operation == "job_get_output":
        return "route triage-failed-run: started run 7"
    raise AzError(f"the fake has no answer for {operation}")


def forward(state: dict[str, Any], method: str, url: str, options: dict[str, list[str]]) -> Any:
    """A non-ARM URL: the ADO stand-in on loopback. az sends a token for --resource; so does this."""
    if not url.startswith("http://127.0.0.1:"):
        raise AzError(f"the fake only forwards to loopback stand-ins, not {url}")
    headers = {"Content-Type": "application/json"}
    if _one(options, "--resource") == ADO_RESOURCE:
        headers["Authorization"] = f"Bearer {state['ado_token']}"
    body = _body(options)
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            text = answer.read().decode()
    except urllib.error.HTTPError as exc:
        reason = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found"}.get(exc.code, "Error")
        raise AzError(f"{reason}({exc.read().decode()})") from exc
    return json.loads(text) if text else None


def run(name: str, options: dict[str, list[str]], state: dict[str, Any], routes: list[dict[str, str]]) -> Any:
    rg = _one(options, "--resource-group", "-g")
    if name == "account show":
        return state["account"]
    if name == "ad signed-in-user show":
        return {"id": state["signed_in_user"], "userPrincipalName": "deployer@contoso.example"}
    if name == "account get-access-token":
        # A JWT with the claims the world sets (an ARM token of the signed-in principal; not signed here).
        def part(doc: dict[str, Any]) -> str:
            return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")
        header, claims = part({"alg": "RS256", "typ": "JWT"}), part(state.get("token_claims", {}))
        return {"accessToken": f"{header}.{claims}.SECRET-SIG",
                "tokenType": "Bearer", "subscription": state["account"]["id"]}
    if name == "ad sp show":
        sp = state["service_principals"].get(_one(options, "--id"))
        if sp is None:
            raise AzError(f"Service principal '{_one(options, '--id')}' doesn't exist", 3)
        return sp
    if name == "bicep build-params":
        parameters = {"namePrefix": {"value": "amlr"}, "workspaceName": {"value": "ws"},
                      "workspaceResourceGroupName": {"value": "rg-ml"}, **state["build_params"]}
        Path(_one(options, "--outfile")).write_text(json.dumps({"contentVersion": "1.0.0.0",
                                                                 "parameters": parameters}))
        return None
    if name == "keyvault list-deleted":
        return state["deleted_vaults"]
    if name == "deployment group what-if":
        return "Resource changes: 12 to create."
    if name == "deployment group create":
        return deploy(state, options)
    if name == "deployment group list":
        return [d for d in state["deployments"] if rg == state["rg"]]
    if name == "deployment group show":
        found = [d for d in state["deployments"] if d["name"] == _one(options, "--name", "-n")]
        if not found:
            raise AzError("DeploymentNotFound", 3)
        return found[0]
    if name == "storage blob upload":
        if state["upload_403"] > 0:
            state["upload_403"] -= 1
            raise AzError("This request is not authorized to perform this operation using this permission.\n"
                          "RequestId:00000000-0000-0000-0000-000000000000\nErrorCode:AuthorizationPermissionMismatch")
        state["blobs"].append(_one(options, "--name", "-n"))
        return {"etag": "\"0x1\""}
    if name in ("storage message peek", "storage blob list") and state.get("storage_data_403"):
        raise AzError("This request is not authorized to perform this operation using this permission.\n"
                      "ErrorCode:AuthorizationPermissionMismatch")
    if name == "storage message peek":
        return state["queues"].get(_one(options, "--queue-name", "-q"), [])[:int(_one(options, "--num-messages")
                                                                              or 1)]
    if name == "storage blob list":
        return state["deadletter_blobs"] if _one(options, "--container-name", "-c") == "deadletters" else []
    if name == "role assignment list":
        return [a for a in state["role_assignments"] if a["principalId"] == _one(options, "--assignee-object-id")
                and a["scope"].lower().startswith(_one(options, "--scope").lower())]
    if name == "role assignment delete":
        ids = options.get("--ids", [])
        state["role_assignments"] = [a for a in state["role_assignments"] if a["id"] not in ids]
        state["deleted"].extend(ids)
        return None
    if name == "storage blob generate-sas":
        if "--as-user" not in options or _one(options, "--auth-mode") != "login":
            raise AzError("shared key is off on the amlrelay account: sign a user-delegation SAS (--as-user)")
        return f"{state['sas_prefix']}/{_one(options, '--name', '-n')}?sv=x&sig=SECRET-SIG"
    if name == "rest":
        return rest(state, options, routes)
    if name == "eventgrid system-topic event-subscription list":
        return state["subscriptions"]
    if name == "eventgrid system-topic event-subscription delete":
        state["subscriptions"] = [s for s in state["subscriptions"] if s["name"] != _one(options, "--name", "-n")]
        return None
    if name == "eventgrid system-topic list":
        topic = state["topic"]
        if not topic.get("exists"):
            return []
        workspace = (f"/subscriptions/{state['account']['id']}/resourceGroups/{topic['resourceGroup']}/providers/"
                     f"Microsoft.MachineLearningServices/workspaces/{topic.get('workspace', 'ws')}")
        return [{"name": topic["name"], "resourceGroup": topic["resourceGroup"], "tags": topic.get("tags", {}),
                 "source": workspace.lower() if topic.get("lowercase_source") else workspace,
                 "topicType": "Microsoft.MachineLearningServices.Workspaces",
                 "identity": {"type": topic.get("identity", "None")},
                 "id": TOPIC_ID.format(sub=state["account"]["id"], rg=topic["resourceGroup"], name=topic["name"])}]
    if name == "eventgrid system-topic show":
        topic = state["topic"]
        if not topic.get("exists"):
            raise AzError("ResourceNotFound", 3)
        return {"name": topic["name"], "tags": topic.get("tags", {}),
                "id": TOPIC_ID.format(sub=state["account"]["id"], rg=topic["resourceGroup"], name=topic["name"])}
    if name == "eventgrid system-topic delete":
        state["topic"]["exists"] = False
        state["deleted"].append("topic:" + _one(options, "--name", "-n"))
        return None
    if name == "resource list":
        return [r for r in state["resources"] if f"/resourceGroups/{rg}/" in r["id"]] + state["foreign_resources"]
    if name == "resource delete":
        for rid in options.get("--ids", []):
            state["resources"] = [r for r in state["resources"] if r["id"] != rid]
            state["deleted"].append(rid)
        return None
    if name == "group delete":
        state["deleted"].append("group:" + _one(options, "--name", "-n"))
        return None
    raise AzError(f"the fake has no answer for '{name}'")


def emit(value: Any, options: dict[str, list[str]]) -> None:
    query = _one(options, "--query")
    if query:
        import jmespath  # type: ignore[import-not-found,import-untyped,unused-ignore]  # azure-cli's query engine

        value = jmespath.search(query, value)
    if value is None:
        return
    if _one(options, "--output", "-o") == "tsv":
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, dict):
                print("\t".join(str(v) for v in item.values() if not isinstance(v, (dict, list))))
            else:
                print(item)
    else:
        print(json.dumps(value))


def main() -> int:
    args = sys.argv[1:]
    with open(os.environ["FAKE_AZ_LOG"], "a", encoding="utf-8") as log:
        log.write(json.dumps(args) + "\n")
    table = json.loads(Path(os.environ["FAKE_AZ_TABLE"]).read_text())
    routes = json.loads(Path(os.environ["FAKE_AZ_ROUTES"]).read_text())
    state_path = Path(os.environ["FAKE_AZ_STATE"])
    state = json.loads(state_path.read_text())
    try:
        name, options = parse(args, table)
        result = run(name, options, state, routes)
    except AzError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        state_path.write_text(json.dumps(state))
        return exc.code
    state_path.write_text(json.dumps(state))
    emit(result, options)
    return 0


def initial_state(**overrides: Any) -> dict[str, Any]:
    """A world with an empty resource group next to an AML workspace, signed in as a user."""
    state: dict[str, Any] = {
        "rg": "rg-amlrelay", "account": {"id": "00000000-0000-0000-0000-000000000000",
                                         "tenantId": "00000000-0000-0000-0000-0000000000aa",
                                         "user": {"name": "deployer@contoso.example", "type": "user"}},
        "signed_in_user": "22222222-2222-2222-2222-222222222222", "service_principals": {},
        "principal_types": {"22222222-2222-2222-2222-222222222222": "User"},
        "handler_principal": "11111111-1111-1111-1111-111111111111",
        "build_params": {}, "deployments": [], "params": [], "clock": 0, "resources": [], "foreign_resources": [],
        "deleted": [], "deleted_vaults": [], "recovered_vaults": [], "vault_name": "amlr-kv-123",
        "packages": {}, "failing_package": None, "published": [], "webhooks": ["amlrelay-eventgrid-20200101000000",
                                                                                "manual-hook"],
        "schedules": ["amlrelay-replay-20200101000000", "nightly-report"], "jobs": [], "blobs": [],
        "subscriptions": [{"name": "old-route", "labels": ["amlrelay:rg-amlrelay"]},
                          {"name": "someone-elses", "labels": []},
                          # another deployment's (on the same workspace topic), labelled by an older amlrelay too:
                          # the shared label 'amlrelay' let deployments delete each other's subscriptions
                          {"name": "other-deployment", "labels": ["amlrelay", "amlrelay:rg-other"]}],
        "generated_subscriptions": ["triage-failed-run"],
        "topic": {"name": "ws-amlrelay", "resourceGroup": "rg-ml"},
        "upload_403": 0, "violations": [], "queues": {}, "deadletter_blobs": [],
        "role_assignments": [
            {"id": f"{WORKSPACE}/providers/Microsoft.Authorization/roleAssignments/r1", "scope": WORKSPACE,
             "principalId": "11111111-1111-1111-1111-111111111111", "roleDefinitionName": "Reader"},
            {"id": f"{WORKSPACE}/providers/Microsoft.Authorization/roleAssignments/r2", "scope": WORKSPACE,
             "principalId": "55555555-5555-5555-5555-555555555555", "roleDefinitionName": "Owner"}],
        "webhook_uri": "https://0000.webhook.we.azure-automation.net/webhooks?token=SECRET-TOKEN",
        "sas_prefix": "https://amlrst123.blob.core.windows.net/packages", "ado_token": "",
    }
    state.update(overrides)
    return state


if __name__ == "__main__":
    sys.exit(main())
