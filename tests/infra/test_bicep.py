"""Offline checks of infra/: parse, conventions, checkov, and property names against the Azure SDK models."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest

from .conftest import INFRA, REPO, SDK_MODELS, infra_tool

# Keys Bicep adds to a resource body that are not part of the REST payload.
BICEP_KEYS = {"name", "parent", "scope", "dependsOn"}
# Microsoft.Web/connections is in no Python SDK; its documented body (ARM template reference
# https://learn.microsoft.com/azure/templates/microsoft.web/2016-06-01/connections), kept narrow.
WEB_CONNECTION = {
    "fields": {
        "location": None, "tags": None, "etag": None,
        "properties": {"fields": {
            "displayName": None, "api": {"fields": {"id": None, "name": None, "displayName": None,
                                                     "type": None}},
            "parameterValues": "dict", "parameterValueSet": "dict", "customParameterValues": "dict",
            "nonSecretParameterValues": "dict", "testLinks": "list", "statuses": "list",
        }},
    }
}
HANDLED_ELSEWHERE = {"Microsoft.MachineLearningServices/workspaces"}  # only ever `existing`


def test_every_bicep_file_parses_with_pycep_051(bicep: dict[str, Any]) -> None:
    assert bicep["errors"] == {}
    names = set(bicep["files"])
    assert "main.bicep" in names
    for module in ("storage", "automation", "event-grid", "logic-app", "key-vault", "role-assignments"):
        assert f"modules/{module}/main.bicep" in names
        assert (INFRA / "modules" / module / "README.md").is_file(), f"modules/{module} has no README.md"


def _decorators(item: dict[str, Any]) -> dict[str, Any]:
    return {d["type"]: d.get("argument") for d in item.get("decorators", [])}


def test_every_parameter_is_described_required_or_optional(bicep: dict[str, Any]) -> None:
    problems = []
    for path, doc in bicep["files"].items():
        for name, param in doc.get("parameters", {}).items():
            decorators = _decorators(param)
            text = decorators.get("description")
            if not isinstance(text, str) or not re.match(r"^(Required|Optional)\. ", text):
                problems.append(f"{path}: param {name}: description must start with 'Required. ' or 'Optional. '")
                continue
            has_default = "default" in param and param["default"] is not None
            if text.startswith("Required.") and has_default:
                problems.append(f"{path}: param {name} is described Required but has a default")
            if text.startswith("Optional.") and not has_default:
                problems.append(f"{path}: param {name} is described Optional but has no default")
            if "secure" in decorators and has_default and param["default"] not in ("", {}):
                problems.append(f"{path}: secure param {name} has a non-empty default")
        for name, output in doc.get("outputs", {}).items():
            if "description" not in _decorators(output):
                problems.append(f"{path}: output {name} has no description")
    assert problems == []


def test_no_secret_is_an_output(bicep: dict[str, Any]) -> None:
    text = "\n".join(p.read_text(encoding="utf-8") for p in INFRA.rglob("*.bicep"))
    for line in text.splitlines():
        if line.startswith("output "):
            assert not re.search(r"webhookUri|endpointUrl|listCallbackUrl|PackageUri|listKeys", line), line


def test_no_hard_coded_cloud_hosts() -> None:
    hosts = re.compile(r"core\.windows\.net|vault\.azure\.net|azure-automation\.net"
                       r"|management\.azure\.com/(?!providers/Microsoft\.Logic/schemas)")
    for path in INFRA.rglob("*.bicep"):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.lstrip().startswith("//") or "@description" in line:
                continue
            assert not hosts.search(line), f"{path}:{number}: hard-coded cloud host: {line.strip()}"


def test_checkov_reports_no_failed_check_and_every_skip_is_justified() -> None:
    checkov = infra_tool("checkov")
    done = subprocess.run(
        [str(checkov), "-d", str(INFRA), "--framework", "bicep", "--compact", "--skip-download", "--quiet",
         "--output", "json"],
        capture_output=True, text=True, check=False, timeout=180,
    )
    report = json.loads(done.stdout)
    summary = report["summary"]
    assert summary["failed"] == 0, json.dumps(report["results"].get("failed_checks", []), indent=1)[:4000]
    assert summary["parsing_errors"] == 0
    assert summary["passed"] > 0
    for path in INFRA.rglob("*.bicep"):
        for line in path.read_text(encoding="utf-8").splitlines():
            if "checkov:skip=" in line:
                assert re.search(r"checkov:skip=CKV2?_[A-Z]+_\d+:\S.{20,}", line), f"unjustified skip: {line.strip()}"


# ------------------------------------------------------------------------------------------ fidelity

def _is_expression(node: Any) -> bool:
    return isinstance(node, dict) and len(node) == 1 and next(iter(node)) in {"operator", "function"}


def _body(resource: dict[str, Any]) -> dict[str, Any]:
    config = resource["config"]
    while "config" in config and ("loop_type" in config or "condition" in config):
        config = config["config"]
    body: dict[str, Any] = config
    return body


def _check(node: Any, model: str | None, sdk: dict[str, Any], where: str, problems: list[str],
           top: bool = True) -> None:
    if model is None or not isinstance(node, dict) or _is_expression(node):
        return
    node = {k.strip("'"): v for k, v in node.items()}  # quoted Bicep keys ('odata.type') come with quotes
    schema = sdk["models"][model]
    discriminator = (schema.get("discriminator") or "").replace("\\.", ".")  # msrest escapes dots in keys
    if discriminator and isinstance(node.get(discriminator), str) and node[discriminator] in schema["subtypes"]:
        schema = sdk["models"][schema["subtypes"][node[discriminator]]]
    for key, value in node.items():
        if key in BICEP_KEYS and top:
            continue
        ref = schema["fields"].get(key)
        if ref is None:
            problems.append(f"{where}.{key}: not a property of {model} ({', '.join(sorted(schema['fields']))})")
            continue
        if ref["kind"] == "model":
            _check(value, ref["name"], sdk, f"{where}.{key}", problems, False)
        elif ref["kind"] == "list" and isinstance(value, list) and ref["item"]["kind"] == "model":
            for index, item in enumerate(value):
                _check(item, ref["item"]["name"], sdk, f"{where}.{key}[{index}]", problems, False)


def _check_static(node: Any, schema: Any, where: str, problems: list[str], top: bool = True) -> None:
    if not isinstance(node, dict) or _is_expression(node) or not isinstance(schema, dict):
        return
    for key, value in node.items():
        if key in BICEP_KEYS and top:
            continue
        if key not in schema["fields"]:
            problems.append(f"{where}.{key}: not a documented property")
            continue
        _check_static(value, schema["fields"][key], f"{where}.{key}", problems, False)


def _resources(bicep: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for path, doc in bicep["files"].items():
        for name, resource in doc.get("resources", {}).items():
            out.append((f"{path}:{name}", name, resource))
    return out


def test_resource_properties_exist_in_the_sdk_models(bicep: dict[str, Any], sdk: dict[str, Any]) -> None:
    problems: list[str] = []
    for where, _name, resource in _resources(bicep):
        kind = resource["type"]
        if resource.get("existing"):
            assert kind in SDK_MODELS or kind in HANDLED_ELSEWHERE, f"{where}: unknown type {kind}"
            continue
        if kind == "Microsoft.Web/connections":
            assert resource["api_version"] == "2016-06-01"
            _check_static(_body(resource), WEB_CONNECTION, where, problems)
            continue
        assert kind in SDK_MODELS, f"{where}: {kind} has no SDK model mapped in conftest.SDK_MODELS"
        root = sdk["roots"][SDK_MODELS[kind]]
        _check(_body(resource), root, sdk, where, problems)
    assert problems == []


def test_api_versions_are_the_ones_the_sdks_know(bicep: dict[str, Any], sdk: dict[str, Any]) -> None:
    for where, _name, resource in _resources(bicep):
        kind = resource["type"]
        if kind in SDK_MODELS:
            assert resource["api_version"] == sdk["api_versions"][SDK_MODELS[kind]], where


def test_fidelity_check_catches_a_misplaced_property(sdk: dict[str, Any]) -> None:
    problems: list[str] = []
    root = sdk["roots"][SDK_MODELS["Microsoft.EventGrid/systemTopics/eventSubscriptions"]]
    body = {"name": "x", "properties": {"destination": {"endpointType": "WebHook", "properties": {
        "endpointUrl": "u", "maxEventsPerBatch": 1}}, "maxEventsPerBatch": 1,
        "retryPolicy": {"maxDeliveryAttemps": 3}}}
    _check(body, root, sdk, "probe", problems)
    assert len(problems) == 2, problems


def test_fidelity_check_reaches_into_the_journal_destination(sdk: dict[str, Any]) -> None:
    """The journal's properties (deliveryWithResourceIdentity -> StorageQueue) are checked as deeply."""
    root = sdk["roots"][SDK_MODELS["Microsoft.EventGrid/systemTopics/eventSubscriptions"]]
    good = {"properties": {"deliveryWithResourceIdentity": {"identity": {"type": "SystemAssigned"}, "destination": {
        "endpointType": "StorageQueue", "properties": {"resourceId": "r", "queueName": "q",
                                                       "queueMessageTimeToLiveInSeconds": -1}}}}}
    problems: list[str] = []
    _check(good, root, sdk, "probe", problems)
    assert problems == []
    bad = json.loads(json.dumps(good).replace("queueMessageTimeToLiveInSeconds", "messageTimeToLive")
                     .replace('"queueName"', '"endpointUrl"'))
    _check(bad, root, sdk, "probe", problems)
    assert len(problems) == 2, problems  # a webhook property and a misnamed TTL, both under StorageQueue


def test_journal_subscriptions_deliver_to_the_queue_with_the_topic_identity(bicep: dict[str, Any]) -> None:
    doc = bicep["files"]["modules/event-grid/main.bicep"]
    journal = doc["resources"]["journal"]
    assert journal["config"]["condition"] == {"operator": {"type": "not", "operands": {"bool_value": {"function": {
        "type": "empty", "parameters": {"item_to_test": "journalStorageAccountId"}}}}}}  # !empty(...)
    body = _body(journal)["properties"]
    delivery = body["deliveryWithResourceIdentity"]
    assert delivery["identity"] == {"type": "SystemAssigned"}
    assert delivery["destination"]["endpointType"] == "StorageQueue"
    assert delivery["destination"]["properties"]["queueName"] == "journalQueueName"
    ttl = delivery["destination"]["properties"]["queueMessageTimeToLiveInSeconds"]
    assert ttl == {"operator": {"type": "minus", "operands": {"integer_value": 1}}}  # -1: never expires
    assert "destination" not in body  # only the identity-based delivery: no key or SAS anywhere
    assert body["retryPolicy"]["maxDeliveryAttempts"] == "journalMaxDeliveryAttempts"
    assert doc["parameters"]["journalMaxDeliveryAttempts"]["default"] == 30
    assert doc["parameters"]["journalEventTimeToLiveInMinutes"]["default"] == 1440
    assert body["deadLetterWithResourceIdentity"]["deadLetterDestination"]["endpointType"] == "StorageBlob"
    main = bicep["files"]["main.bicep"]
    params = main["modules"]["eventGrid"]["config"]["params"]
    assert "journalSubscriptions" in params
    assert "journalStorageAccountId" in params
    assert main["variables"]["journalEnabled"]["value"] == {"operator": {"type": "equals", "operands": {
        "operand_1": "handler", "operand_2": "runbook"}}}
    settings = main["variables"]["baseSettings"]["value"]
    assert settings["AMLRELAY_JOURNAL_QUEUE"] == "journalQueueName"
    # scripts/deploy deletes amlrelay-labelled subscriptions missing from this output: the journal's are in it.
    assert "journalSubscriptionNames" in json.dumps(main["outputs"]["subscriptionNames"])


def test_journal_roles_are_scoped_to_the_queues(bicep: dict[str, Any]) -> None:
    doc = bicep["files"]["modules/role-assignments/main.bicep"]
    roles = doc["variables"]["roles"]["value"]
    assert roles["storageQueueDataMessageSender"] == "c6a89b2d-59bc-44d0-9896-0f6e12d7b80a"
    assert roles["storageQueueDataContributor"] == "974c5e8b-45b9-4653-ba55-5f855dd0fb88"
    expected = {"eventGridJournal": ("journalQueue", "eventGridPrincipalId", "roles.storageQueueDataMessageSender"),
                "handlerJournal": ("journalQueue", "handlerPrincipalId", "roles.storageQueueDataContributor"),
                "handlerJournalPoison": ("journalPoisonQueue", "handlerPrincipalId",
                                         "roles.storageQueueDataContributor")}
    for name, (scope, principal, role) in expected.items():
        resource = doc["resources"][name]["config"]
        assert resource["condition"] == "journal"
        body = resource["config"]
        assert body["scope"] == scope
        assert body["properties"]["principalId"] == principal
        assert _accessor(body["properties"]["roleDefinitionId"]["function"]["parameters"]["resource_name_1"]) == role
    for name in ("journalQueue", "journalPoisonQueue"):
        assert doc["resources"][name]["existing"]
    storage = bicep["files"]["modules/storage/main.bicep"]["resources"]
    assert storage["journalPoisonQueue"]["config"]["name"] == "${journalQueueName}-poison"


def test_generated_subscription_filters_fit_the_sdk_model(sdk: dict[str, Any]) -> None:
    generated = json.loads((INFRA / "generated" / "subscriptions.json").read_text(encoding="utf-8"))
    root = sdk["roots"][SDK_MODELS["Microsoft.EventGrid/systemTopics/eventSubscriptions"]]
    problems: list[str] = []
    for handler, items in generated["handlers"].items():
        for item in items:
            body = {"properties": {"filter": item["filter"], "destination": {"endpointType": "WebHook",
                    "properties": {k: v for k, v in item.items() if k in ("maxEventsPerBatch",
                                                                          "preferredBatchSizeInKilobytes")}}}}
            _check(body, root, sdk, f"{handler}:{item['name']}", problems)
            assert re.fullmatch(r"[A-Za-z0-9-]{3,64}", item["name"]), item["name"]
    assert generated["journal"]
    for item in generated["journal"]:
        body = {"properties": {"filter": item["filter"], "deliveryWithResourceIdentity": {
            "identity": {"type": "SystemAssigned"},
            "destination": {"endpointType": "StorageQueue", "properties": {"queueName": "q"}}}}}
        _check(body, root, sdk, f"journal:{item['name']}", problems)
        assert re.fullmatch(r"[A-Za-z0-9-]{3,64}", item["name"]), item["name"]
    assert problems == []


def test_generated_subscriptions_are_up_to_date() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "amlrelay.subscriptions", str(REPO / "routes.json"), "--check",
         str(INFRA / "generated" / "subscriptions.json")],
        capture_output=True, text=True, check=False, cwd=REPO,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("name", ["dev", "prod"])
def test_parameter_files_name_only_declared_parameters(bicep: dict[str, Any], name: str) -> None:
    declared = set(bicep["files"]["main.bicep"]["parameters"])
    text = (INFRA / "env" / f"{name}.bicepparam").read_text(encoding="utf-8")
    assert "using '../main.bicep'" in text
    used = set(re.findall(r"^param (\w+) =", text, flags=re.MULTILINE))
    assert used
    assert used <= declared, used - declared
    required = {n for n, p in bicep["files"]["main.bicep"]["parameters"].items() if p.get("default") is None}
    assert required <= used, required - used


# ------------------------------------------------------------------------------------------ replay runbook

def _accessor(node: Any) -> str | None:
    """`a.b` as 'a.b' (pycep's property_accessor), else None."""
    if isinstance(node, dict) and "operator" in node and node["operator"]["type"] == "property_accessor":
        operands = node["operator"]["operands"]
        inner = _accessor(operands["operand_2"])
        return f"{operands['operand_1']}.{inner or operands['operand_2']}"
    return None


def test_replay_runbook_is_scheduled_with_a_fresh_job_schedule(bicep: dict[str, Any]) -> None:
    doc = bicep["files"]["modules/automation/main.bicep"]
    resources = doc["resources"]
    # Only ever PUT with its content (published from a hashed link in the same request).
    assert resources["replayRunbook"]["config"]["condition"]["operator"]["type"] == "not"
    runbook = resources["replayRunbook"]["config"]["config"]
    assert runbook["properties"]["runbookType"] == "Python"
    link = runbook["properties"]["publishContentLink"]
    assert link["uri"] == "replayRunbookContentUri"
    assert link["contentHash"]["algorithm"] == "SHA256"
    assert _accessor(runbook["properties"]["runtimeEnvironment"]) == "runtimeEnvironment.name"
    assert doc["parameters"]["replayRunbookName"]["default"] == "replay_dead_letters"

    schedule = resources["replaySchedules"]["config"]
    job = resources["replayJobSchedules"]["config"]
    # Automation schedules recur at most hourly: one hourly schedule per offset, a loop over the slots.
    for loop in (schedule, job):
        assert loop["loop_type"] == {"type": "range", "detail": {
            "item_name": None, "index_name": "i", "start_index": 0, "count": "replaySlots"}}
        assert loop["condition"] == "replayScheduled"
    assert doc["variables"]["replaySlots"]["value"] == {"operator": {"type": "divide", "operands": {
        "operand_1": 60, "operand_2": "sweepIntervalMinutes"}}}
    assert _decorators(doc["parameters"]["sweepIntervalMinutes"])["allowed"] == [15, 20, 30, 60]  # divide 60
    assert doc["parameters"]["sweepIntervalMinutes"]["default"] == 15
    condition = doc["variables"]["replayScheduled"]["value"]["operator"]
    assert condition["type"] == "and"
    assert condition["operands"]["operand_1"] == "replayScheduleEnabled"
    assert schedule["config"]["name"].endswith("-m${i * sweepIntervalMinutes}")  # deploy keeps <name>-*
    properties = schedule["config"]["properties"]
    assert properties["frequency"] == "Hour"
    # replayIntervalHours applies only to a single schedule (60 minutes); offset schedules recur hourly.
    assert properties["interval"] == {"operator": {"type": "conditional", "operands": {
        "condition": {"operator": {"type": "equals", "operands": {"operand_1": "sweepIntervalMinutes",
                                                                  "operand_2": 60}}},
        "true_value": "replayIntervalHours", "false_value": 1}}}
    assert doc["parameters"]["replayIntervalHours"]["default"] == 1
    # Slot i starts 15 + i * interval minutes after the deployment time (Automation wants at least 5
    # minutes ahead), never a fixed date.
    start = properties["startTime"]["function"]
    assert start["type"] == "date_time_add"
    assert start["parameters"]["base"] == "baseTime"
    assert start["parameters"]["duration"] == "PT${15 + i * sweepIntervalMinutes}M"
    assert doc["parameters"]["baseTime"]["default"]["function"]["type"] == "utc_now"

    # A job schedule's name is a GUID that must change with the (rotated) schedule name.
    slot_name = {"operator": {"type": "property_accessor", "operands": {"operand_1": {"operator": {
        "type": "index_accessor", "operands": {"operand_1": "replaySchedules", "operand_2": "i"}}},
        "operand_2": "name"}}}
    name = job["config"]["name"]["function"]
    assert name["type"] == "guid"
    assert slot_name in name["parameters"].values()
    links = job["config"]["properties"]
    assert links["runbook"]["name"] == "replayRunbookName"
    assert links["schedule"]["name"] == slot_name


def test_main_passes_the_replay_settings(bicep: dict[str, Any]) -> None:
    main = bicep["files"]["main.bicep"]
    settings = main["variables"]["baseSettings"]["value"]
    assert settings["AMLRELAY_DEADLETTER_CONTAINER"] == "deadLetterContainerName"
    assert main["variables"]["deadLetterContainerName"]["value"] == "deadletters"
    params = main["modules"]["automation"]["config"]["params"]  # unconditional: both handlers replay
    for name in ("replayScheduleEnabled", "replayScheduleName", "replayIntervalHours", "sweepIntervalMinutes"):
        assert params[name] == name
    assert main["parameters"]["replayScheduleEnabled"]["default"] is True
    assert main["parameters"]["replayScheduleName"]["default"] == ""  # no job schedule before publishing
    roles = main["modules"]["roleAssignmentsForTopic"]["config"]["params"]
    assert roles["handlerReadsDeadLetters"] == {"operator": {"type": "equals", "operands": {
        "operand_1": "handler", "operand_2": "runbook"}}}


def test_handler_reads_dead_letters_on_the_container_only(bicep: dict[str, Any]) -> None:
    doc = bicep["files"]["modules/role-assignments/main.bicep"]
    blob_contributor = doc["variables"]["roles"]["value"]["storageBlobDataContributor"]
    assert blob_contributor == "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
    assignment = doc["resources"]["handlerDeadLetters"]["config"]
    assert assignment["condition"] == "handlerReadsDeadLetters"
    body = assignment["config"]
    assert body["scope"] == "deadLetterContainer"
    assert body["properties"]["principalId"] == "handlerPrincipalId"
    role = body["properties"]["roleDefinitionId"]["function"]["parameters"]["resource_name_1"]
    assert _accessor(role) == "roles.storageBlobDataContributor"
    container = doc["resources"]["deadLetterContainer"]
    assert container["existing"]
    assert container["config"]["name"] == "deadLetterContainerName"
    # Nothing of the handler's is scoped to the whole storage account.
    for name, resource in doc["resources"].items():
        config = _body(resource)
        if resource["type"] == "Microsoft.Authorization/roleAssignments" and config["scope"] == "account":
            assert config["properties"]["principalId"] != "handlerPrincipalId", name


# ------------------------------------------------------------------------------------------ naming

# Resource name rules (Learn: azure-resource-manager/management/resource-name-rules):
# Microsoft.MachineLearningServices/workspaces: 3-33 characters, alphanumerics, hyphens and underscores,
# starting with an alphanumeric; Microsoft.EventGrid/systemTopics: 3-128 characters, alphanumerics and hyphens.
WORKSPACE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{2,32}")
SYSTEM_TOPIC_NAME = re.compile(r"[A-Za-z0-9-]{3,128}")


def _default_topic_name(workspace: str) -> str:
    """Python twin of main.bicep's default: '${replace(workspaceName, '_', '-')}-amlrelay'."""
    return f"{workspace.replace('_', '-')}-amlrelay"


def test_default_system_topic_name_is_the_sanitised_workspace_name(bicep: dict[str, Any]) -> None:
    default = bicep["files"]["main.bicep"]["parameters"]["systemTopicName"]["default"]
    # pycep 0.5.1 keeps an interpolated string as written.
    assert default == "${replace(workspaceName, '_', '-')}-amlrelay"


@pytest.mark.parametrize("workspace", ["ml_ws_dev", "abc", "a" * 33, "ML-Prod_2024", "x__y", "9_lives", "ws-_-"])
def test_every_valid_workspace_name_gives_a_valid_topic_name(workspace: str) -> None:
    assert WORKSPACE_NAME.fullmatch(workspace)
    assert SYSTEM_TOPIC_NAME.fullmatch(_default_topic_name(workspace)), _default_topic_name(workspace)


def test_the_unsanitised_name_would_be_refused() -> None:
    assert not SYSTEM_TOPIC_NAME.fullmatch("ml_ws_dev-amlrelay")


def test_fidelity_check_reaches_metric_alert_criteria(sdk: dict[str, Any]) -> None:
    problems: list[str] = []
    root = sdk["roots"][SDK_MODELS["Microsoft.Insights/metricAlerts"]]
    body = {"location": "global", "properties": {"criteria": {
        "'odata.type'": "Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria",
        "allOf": [{"criterionType": "StaticThresholdCriterion", "metricName": "DeadLetteredCount",
                   "treshold": 0}]}}}
    _check(body, root, sdk, "probe", problems)
    assert len(problems) == 1
    assert "treshold" in problems[0]


# ------------------------------------------------------------------------------------------ azd

def test_azd_parameters_map_the_environment_onto_declared_parameters(bicep: dict[str, Any]) -> None:
    declared = bicep["files"]["main.bicep"]["parameters"]
    doc = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))
    params = doc["parameters"]
    assert set(params) <= set(declared), set(params) - set(declared)
    required = {n for n, p in declared.items() if p.get("default") is None}
    assert required <= set(params), required - set(params)
    assert params["deployerPrincipalId"]["value"] == "${AZURE_PRINCIPAL_ID}"
    assert params["location"]["value"] == "${AZURE_LOCATION}"
    for name, item in params.items():
        text = json.dumps(item["value"])
        assert re.search(r"\$\{[A-Z_]+(=[^}]*)?\}", text), f"{name} is not taken from the azd environment"
    # Defaults given to azd must satisfy the parameter's own rules.
    assert params["namePrefix"]["value"] == "${AMLRELAY_NAME_PREFIX=amlr}"
    assert params["deployerPrincipalType"]["value"] == "${AZURE_PRINCIPAL_TYPE=User}"


# ------------------------------------------------------------------------------------------ hygiene

def test_every_tracked_resource_is_tagged(bicep: dict[str, Any]) -> None:
    """scripts/teardown deletes (and lets a resource group go) by the amlrelay-handler tag: every resource
    with a location must carry the tags (which always include amlrelay-handler, see main.bicep allTags)."""
    untagged = [where for where, _name, resource in _resources(bicep)
                if not resource.get("existing") and "location" in _body(resource) and "tags" not in _body(resource)]
    assert untagged == []
    all_tags = bicep["files"]["main.bicep"]["variables"]["allTags"]["value"]
    assert "amlrelay-handler" in json.dumps(all_tags)


def test_no_unused_parameters_variables_or_existing_resources() -> None:
    unused = []
    for path in INFRA.rglob("*.bicep"):
        text = re.sub(r"(?m)^\s*//.*$", "", path.read_text(encoding="utf-8"))
        declared = [(m.group(1), m.group(2)) for m in re.finditer(r"(?m)^(param|var|resource) (\w+)", text)]
        for kind, name in declared:
            if kind == "resource" and not re.search(rf"(?m)^resource {name} '[^']+' existing", text):
                continue  # a deployed resource needs no reference
            if len(re.findall(rf"(?<![\w.']){name}(?![\w'])", text)) < 2:
                unused.append(f"{path.relative_to(INFRA)}: {kind} {name}")
    assert unused == []


def test_an_existing_system_topic_is_referenced_never_put(bicep: dict[str, Any]) -> None:
    """MUST 5 of the review: PUTting a workspace's existing topic replaced its owner's tags and identity."""
    doc = bicep["files"]["modules/event-grid/main.bicep"]
    created, referenced = doc["resources"]["createdTopic"], doc["resources"]["systemTopic"]
    assert created["config"]["condition"] == {"operator": {"type": "not", "operands": {
        "bool_value": "systemTopicExists"}}}
    assert _body(created)["tags"]["function"]["parameters"]["arg_2"] == {"'amlrelay-created-topic'": "true"}
    assert referenced["existing"]
    for name in ("eventSubscriptions", "journal"):
        config = _body(doc["resources"][name])
        assert config["parent"] == "systemTopic"
        assert config["dependsOn"] == ["createdTopic"]
    assert doc["parameters"]["systemTopicExists"]["default"] is False
    main = bicep["files"]["main.bicep"]
    for module in ("eventGrid", "eventGridTopic"):
        params = main["modules"][module]["config"]["params"]
        assert params["systemTopicExists"] == "systemTopicExists"
        assert params["label"] == "subscriptionLabel"
    # Per-deployment label (review SHOULD 9): scripts/deploy and teardown read it from the outputs.
    assert main["variables"]["subscriptionLabel"]["value"] == "amlrelay:${resourceGroup().name}"
    assert "subscriptionLabel" in main["outputs"]


def test_queues_have_diagnostics_and_a_backlog_alert(bicep: dict[str, Any]) -> None:
    """Review SHOULD 12: the journal and poison queues were neither logged nor alerted on."""
    doc = bicep["files"]["modules/monitoring/main.bicep"]
    resources = doc["resources"]
    diagnostics = _body(resources["queueDiagnostics"])
    assert diagnostics["scope"] == "queueService"
    assert [log["category"] for log in diagnostics["properties"]["logs"]] == ["StorageRead", "StorageWrite",
                                                                                "StorageDelete"]
    alert = _body(resources["queueBacklogAlert"])
    criterion = alert["properties"]["criteria"]["allOf"][0]
    assert criterion["metricNamespace"] == "Microsoft.Storage/storageAccounts/queueServices"
    assert criterion["metricName"] == "QueueMessageCount"
    assert criterion["threshold"] == "queueBacklogThreshold"
    assert doc["parameters"]["queueBacklogThreshold"]["default"] == 100
    assert "amlrelay-queue-backlog" in json.dumps(doc["outputs"]["alertNames"])


def test_the_webhook_expiry_reaches_the_replay_runbook(bicep: dict[str, Any]) -> None:
    """The replay runbook's expiry check (tests/test_webhook_expiry.py) reads the webhook's own expiryTime."""
    main = bicep["files"]["main.bicep"]
    webhook = main["variables"]["webhookSettings"]["value"]
    assert "AMLRELAY_WEBHOOK_EXPIRES" in json.dumps(webhook)
    assert "webhookExpiryTime" in json.dumps(webhook)
    assert "webhookSettings" in json.dumps(main["variables"]["settings"]["value"])
    assert main["modules"]["automation"]["config"]["params"]["webhookExpiryTime"] == "webhookExpiryTime"
