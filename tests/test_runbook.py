"""The runbook exactly as Automation starts it: a subprocess whose argv is WEBHOOKDATA or portal parameters,
talking to loopback ADO, managed identity and Key Vault. Every official sample, both schemas."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests import secret_guard
from tests.conftest import all_samples, sample
from tests.stack import PAT, Stack, local_stack
from tests.test_webhook import argv_forms

EXPECTED = {  # sample -> (route, pipeline id, a variable or parameter the body must carry)
    "run_completed": ("evaluate-trained-model", 12, ("variables", "AML_RUN_ID",
                                                     "AutoML_ad912b2d-6467-4f32-a616-dbe4af6dd8fc_5")),
    "run_status_changed": ("triage-failed-run", 13, ("variables", "AML_RUN_STATUS", "failed")),
    "model_registered": ("deploy-registered-model", 20, ("templateParameters", "modelVersion", "20")),
    "model_deployed": ("smoke-test-endpoint", 21, ("variables", "AML_SERVICE", "my-sklearn-service")),
    "dataset_drift_detected": ("retrain-on-drift", 30, ("variables", "AML_DRIFT_MONITOR", "myDriftMonitor")),
}


@pytest.fixture
def stack() -> Iterator[Stack]:
    with local_stack(verify=True) as s:  # AMLRELAY_VERIFY is on, as in Automation
        yield s


def run(stack: Stack, argv: list[str], **env: str) -> tuple[int, list[dict[str, Any]], list[str]]:
    stack.emitted_argv(argv)  # genuine deliveries: AML holds what they report (forged ones: test_forged_events)
    done = subprocess.run(stack.runbook_command(*argv), env=stack.env(**env), capture_output=True, text=True,
                          timeout=60, check=False)
    secret_guard.record("runbook stdout", done.stdout)
    secret_guard.record("runbook stderr", done.stderr)
    assert done.stderr == "", done.stderr  # Automation's Python sandbox drops stderr: nothing may go there
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    human = [line for line in done.stdout.splitlines() if not line.startswith("{")]
    return done.returncode, records, human


def webhook_argv(events: list[dict[str, Any]]) -> list[str]:
    return argv_forms(events)["hashtable-split"]


@pytest.mark.parametrize(("schema", "name"), all_samples())
def test_each_sample_event_starts_its_pipeline_once(stack: Stack, schema: str, name: str) -> None:
    code, records, _ = run(stack, webhook_argv([sample(schema, name)]))
    route, pipeline_id, (section, key, value) = EXPECTED[name]
    assert code == 0
    assert [(r["outcome"], r["route"]) for r in records] == [("triggered", route)]
    [request] = stack.ado.run_requests
    assert request.path == f"/contoso/mlops/_apis/pipelines/{pipeline_id}/runs"
    assert request.headers["Authorization"] == f"Bearer {stack.token}"
    body = request.json
    assert body is not None
    got = body[section][key]
    assert (got["value"] if section == "variables" else got) == value
    assert records[0]["ado_run_id"] == stack.ado.runs[0]["id"]
    assert records[0]["ado_run_url"] == stack.ado.runs[0]["_links"]["web"]["href"]
    assert stack.aml is not None
    assert [r.method for r in stack.aml.requests] == ["GET"] * len(stack.aml.requests) != []  # verified first


@pytest.mark.parametrize("form", list(argv_forms([{}]).keys()))
def test_every_webhookdata_form_is_understood(stack: Stack, form: str) -> None:
    argv = argv_forms([sample("event-grid-schema", "model_registered")])[form]
    code, records, _ = run(stack, argv)
    assert code == 0
    assert [r["outcome"] for r in records] == ["triggered"]


def test_a_batch_reports_each_event_and_fails_the_job_when_one_fails(stack: Stack) -> None:
    foreign = sample("event-grid-schema", "model_registered")
    foreign["topic"] = "/subscriptions/x/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/evil"
    unknown = {**sample("event-grid-schema", "run_completed"), "eventType": "Microsoft.MachineLearningServices.New"}
    broken = sample("cloud-events-schema", "run_completed")
    del broken["data"]["experimentName"]
    good = sample("cloud-events-schema", "model_deployed")
    code, records, human = run(stack, webhook_argv([foreign, unknown, broken, good]))
    assert [r["outcome"] for r in records] == ["rejected", "skipped", "rejected", "triggered"]
    assert "not an allowed workspace" in records[0]["reason"]
    assert "data.experimentName is missing" in records[2]["reason"]
    assert code == 2
    assert len(stack.ado.run_requests) == 1  # nothing but the good event reached ADO
    assert any(line.startswith("ERROR: ") and "evil" in line for line in human)


def test_pat_from_key_vault_is_used_and_never_printed() -> None:
    with local_stack(pat=True, verify=True) as stack:
        code, records, human = run(stack, webhook_argv([sample("event-grid-schema", "model_deployed")]))
        assert code == 0, human
        assert records[0]["outcome"] == "triggered"
        [request] = stack.ado.run_requests
        assert request.headers["Authorization"].startswith("Basic ")
        assert stack.vault is not None
        assert len(stack.vault.requests) >= 1
        assert PAT not in json.dumps(records) + "".join(human)


def test_manual_start_from_the_portal_with_name_value_boxes(stack: Stack) -> None:
    code, records, _ = run(stack, ["model_name=sklearn_churn", "model_version=7", "--tag", "area=churn"])
    assert code == 0
    assert records[0]["route"] == "deploy-registered-model"
    body = stack.ado.run_requests[0].json
    assert body is not None
    assert body["templateParameters"] == {"modelName": "sklearn_churn", "modelVersion": "7", "area": "churn"}


def test_manual_start_can_pick_route_pipeline_and_branch(stack: Stack) -> None:
    code, records, _ = run(stack, ["--run-id", "r-42", "--experiment-name", "train", "--run-status", "Failed",
                                   "--route", "triage-failed-run", "--branch", "hotfix/1"])
    assert code == 0, records
    body = stack.ado.run_requests[0].json
    assert body is not None
    assert body["resources"]["repositories"]["self"]["refName"] == "refs/heads/hotfix/1"


def test_dry_run_shows_the_exact_request_and_sends_nothing(stack: Stack) -> None:
    code, records, _ = run(stack, ["--dry-run", "--model-name", "sklearn_x", "--model-version", "3"])
    assert code == 0
    assert records[0]["outcome"] == "dry-run"
    assert records[0]["request"]["url"] == f"{stack.ado.org_url}/mlops/_apis/pipelines/20/runs"
    assert records[0]["request"]["body"]["templateParameters"]["modelName"] == "sklearn_x"
    assert stack.ado.requests == []
    assert stack.identity.requests == []


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["{WebhookName:x,RequestBody:[{oops"], {}, "unbalanced brackets"),
        (["--model-name"], {}, "expected one argument"),
        (["--model-name", "m"], {"AMLRELAY_ROUTES": "/nonexistent/routes.json"}, "Cannot read routes file"),
        (["--model-name", "m"], {"AMLRELAY_ADO_ORGANIZATION": "", "AMLRELAY_AUTH": "token"},
         "AMLRELAY_AUTH must be one of managed-identity, pat, got 'token'; AMLRELAY_ADO_ORGANIZATION is missing"),
        (["--model-name", "m"], {"AMLRELAY_ROUTES": '{"version": 1, "routes": [{"name": "x"}]}'},
         "route 'x'.events: must be a non-empty array"),
    ],
)
def test_bad_input_and_settings_fail_clearly_before_any_call(stack: Stack, argv: list[str], env: dict[str, str],
                                                            message: str) -> None:
    code, records, human = run(stack, argv, **env)
    assert code == 2
    assert records == []
    assert any(message in line for line in human), human
    assert all(line.startswith("ERROR: ") for line in human)
    assert "Traceback" not in "".join(human)
    assert stack.ado.requests == []


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda s: s.ado.forbid(s.token), "may not queue|Queue builds"),
        (lambda s: s.ado.fail(404), "found no pipeline 12"),
        (lambda s: s.identity.fail(500, times=10), "managed identity endpoint failed with HTTP 500"),
        (lambda s: s.ado.fail(401), "Add this identity to the ADO organization"),
    ],
)
def test_refusals_name_the_identity_or_pipeline_and_fail_the_job(stack: Stack, setup: Any, message: str) -> None:
    import re

    setup(stack)
    code, records, human = run(stack, webhook_argv([sample("event-grid-schema", "run_completed")]))
    assert code == 1
    assert records[0]["outcome"] == "failed"
    assert re.search(message, records[0]["reason"]), records[0]["reason"]
    assert stack.token not in json.dumps(records) + "".join(human)
