"""Every documented setting is read, parsed as the README says, and changes what amlrelay does.

A setting that is silently ignored (a typo in its name, a parser that drops it) is a guarantee gone: each
test here fails if the value given does not reach the behaviour it controls, and each refusal names the
variable and what is wrong with the value.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

import amlrelay.settings
from amlrelay.auth import ADO_RESOURCE
from amlrelay.errors import SettingsError
from amlrelay.settings import CLOCK_SKEW, Settings, automation_lookup, env_name, resolve

WS = "/subscriptions/x/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/ws"
WS2 = WS.replace("/ws", "/ws2")
BASE = {"AMLRELAY_ADO_ORGANIZATION": "contoso", "AMLRELAY_ROUTES": "routes.json",
        "AMLRELAY_ALLOWED_WORKSPACES": WS, "AMLRELAY_LEDGER_TABLE_URL": "https://acct.table.core.windows.net"}


def settings(**env: str) -> Settings:
    return resolve({}, env={**BASE, **{env_name(k): v for k, v in env.items()}})


def refusal(**env: str) -> str:
    with pytest.raises(SettingsError) as caught:
        settings(**env)
    return " | ".join(caught.value.problems)


def test_defaults_are_the_documented_ones() -> None:
    s = settings()
    assert (s.ado_base_url, s.auth, s.managed_identity_client_id, s.ado_resource) == (
        "https://dev.azure.com", "managed-identity", None, ADO_RESOURCE)
    assert ADO_RESOURCE == "499b84ac-1321-427f-aa17-267ca6975798"
    assert (s.pat_secret_name, s.ledger_table, s.ledger, s.ledger_stale_after, s.settle_after) == (
        "ado-pat", "amlrelayledger", True, 1800.0, 300.0)
    assert (s.deadletter_container, s.credential, s.dry_run) == ("deadletters", "managed-identity", False)
    assert (s.timeout, s.max_retries, s.backoff, s.max_retry_after) == (30.0, 4, 1.0, 60.0)
    assert (s.journal, s.journal_queue, s.journal_grace, s.journal_max_dequeues, s.journal_retry_after) == (
        True, "amlrelay-journal", 600.0, 5, 600.0)
    assert (s.tag_back, s.aml_region, s.mlflow_url, s.arm_url, s.arm_audience) == (
        False, None, "https://{region}.api.azureml.ms", "https://management.azure.com", None)
    assert (s.verify, s.verify_lag) == (True, 120.0)
    assert s.org_url == "https://dev.azure.com/contoso"


@pytest.mark.parametrize(("name", "text", "attribute", "value"), [
    ("ado_base_url", "https://ado.contoso.local/tfs/", "ado_base_url", "https://ado.contoso.local/tfs"),
    ("auth", "PAT", "auth", "pat"),
    ("managed_identity_client_id", "33333333-3333-3333-3333-333333333333", "managed_identity_client_id",
     "33333333-3333-3333-3333-333333333333"),
    ("ado_resource", "https://app.vssps.visualstudio.com", "ado_resource", "https://app.vssps.visualstudio.com"),
    ("pat_secret_name", "my-pat", "pat_secret_name", "my-pat"),
    ("ledger_table", "ledger2", "ledger_table", "ledger2"),
    ("ledger", "off", "ledger", False),
    ("ledger_stale_after", "7200", "ledger_stale_after", 7200.0),
    ("settle_after", "0", "settle_after", 0.0),
    ("deadletter_container", "dl", "deadletter_container", "dl"),
    ("blob_url", "https://other.blob.core.windows.net/", "blob_url", "https://other.blob.core.windows.net"),
    ("credential", "Default", "credential", "default"),
    ("dry_run", "1", "dry_run", True),
    ("timeout", "2.5", "timeout", 2.5),
    ("max_retries", "0", "max_retries", 0),
    ("backoff", "0", "backoff", 0.0),
    ("max_retry_after", "5", "max_retry_after", 5.0),
    ("routes", "routes/prod.json", "routes", "routes/prod.json"),
    ("key_vault_url", "https://kv.vault.azure.net/", "key_vault_url", "https://kv.vault.azure.net"),
    ("ledger_table_url", "http://127.0.0.1:10002/devstoreaccount1/", "ledger_table_url",
     "http://127.0.0.1:10002/devstoreaccount1"),
    ("journal", "no", "journal", False),
    ("journal_queue", "relay-journal-2", "journal_queue", "relay-journal-2"),
    ("journal_queue_url", "https://q.queue.core.windows.net/", "journal_queue_url", "https://q.queue.core.windows.net"),
    ("journal_grace", "90", "journal_grace", 90.0),
    ("journal_max_dequeues", "2", "journal_max_dequeues", 2),
    ("journal_retry_after", "30.5", "journal_retry_after", 30.5),
    ("aml_region", " West Europe ", "aml_region", "westeurope"),
    ("mlflow_url", "https://{region}.api.ml.azure.us/", "mlflow_url", "https://{region}.api.ml.azure.us"),
    ("arm_url", "https://management.usgovcloudapi.net/", "arm_url", "https://management.usgovcloudapi.net"),
    ("arm_audience", "https://management.core.windows.net/", "arm_audience", "https://management.core.windows.net"),
    ("verify", "off", "verify", False),
    ("verify_lag", "0", "verify_lag", 0.0),
])
def test_each_setting_is_read_from_its_variable_and_parsed(name: str, text: str, attribute: str, value: Any) -> None:
    extra = {"key_vault_url": "https://kv.vault.azure.net"} if name == "auth" else {}
    assert getattr(settings(**{name: text}, **extra), attribute) == value


@pytest.mark.parametrize(("text", "value"), [("1", True), ("true", True), ("YES", True), ("on", True),
                                             ("0", False), ("False", False), ("no", False), ("OFF", False)])
def test_booleans(text: str, value: bool) -> None:
    assert settings(dry_run=text).dry_run is value


def test_a_bad_boolean_number_choice_or_url_is_named_with_its_value() -> None:
    text = refusal(dry_run="maybe", timeout="-1", max_retries="many", auth="password", credential="cli",
                   ado_base_url="dev.azure.com", blob_url="ftp://x")
    assert "AMLRELAY_DRY_RUN must be true or false, got 'maybe'" in text
    assert "AMLRELAY_TIMEOUT must not be negative, got '-1'" in text
    assert "AMLRELAY_MAX_RETRIES must be a number, got 'many'" in text
    assert "AMLRELAY_AUTH must be one of managed-identity, pat, got 'password'" in text
    assert "AMLRELAY_CREDENTIAL must be one of managed-identity, default, got 'cli'" in text
    assert "AMLRELAY_ADO_BASE_URL must be an http(s) URL, got 'dev.azure.com'" in text
    assert "AMLRELAY_BLOB_URL must be an http(s) URL, got 'ftp://x'" in text


def test_workspaces_are_separated_by_commas_semicolons_or_lines() -> None:
    s = settings(allowed_workspaces=f" {WS}/ ;{WS2}\n{WS},")
    assert s.allowed_workspaces == (WS, WS2, WS)
    text = refusal(allowed_workspaces=f"{WS},/subscriptions/x/resourceGroups/rg/providers/Microsoft.Storage/a")
    assert ("AMLRELAY_ALLOWED_WORKSPACES must list Azure ML workspace resource ids (/subscriptions/.../providers/"
            "Microsoft.MachineLearningServices/workspaces/NAME), got /subscriptions/x/resourceGroups/rg/providers/"
            "Microsoft.Storage/a") in text
    assert "got none" in refusal(allowed_workspaces=" , ;")


def test_missing_required_settings_are_named_with_what_to_give() -> None:
    with pytest.raises(SettingsError) as caught:
        resolve({}, env={})
    problems = caught.value.problems
    assert "AMLRELAY_ADO_ORGANIZATION is missing (the ADO organization name, e.g. contoso)" in problems
    assert "AMLRELAY_ROUTES is missing (path to routes.json or its JSON content)" in problems
    assert ("AMLRELAY_ALLOWED_WORKSPACES is missing (comma-separated resource ids of the AML workspaces whose "
            "events may trigger runs)") in problems
    assert any(p.startswith("AMLRELAY_LEDGER_TABLE_URL is missing (https://<account>.table.core.windows.net")
               for p in problems)


def test_an_invalid_required_setting_is_reported_once() -> None:
    problems = refusal(ado_organization="a/b").split(" | ")
    assert [p for p in problems if p.startswith("AMLRELAY_ADO_ORGANIZATION")] == [
        "AMLRELAY_ADO_ORGANIZATION must be the organization (or ADO Server collection) name; put the host in "
        "AMLRELAY_ADO_BASE_URL"]


def test_blank_values_count_as_unset_and_values_are_trimmed() -> None:
    s = resolve({}, env={**BASE, "AMLRELAY_ADO_ORGANIZATION": " /contoso/ "})
    assert s.ado_organization == "contoso"
    assert s.org_url == "https://dev.azure.com/contoso"
    assert "AMLRELAY_ADO_ORGANIZATION is missing" in refusal(ado_organization="   ")


def test_a_dry_run_needs_no_ledger_and_a_connection_string_replaces_the_url() -> None:
    env = {k: v for k, v in BASE.items() if k != "AMLRELAY_LEDGER_TABLE_URL"}
    assert resolve({"dry_run": "true"}, env=env).dry_run is True
    s = resolve({"ledger_connection_string": "UseDevelopmentStorage=true"}, env=env)
    assert s.ledger_table_url is None


def test_dead_letters_and_journal_live_in_the_ledger_account_unless_told_otherwise() -> None:
    s = settings()
    assert s.blob_account_url == "https://acct.blob.core.windows.net"
    assert settings(blob_url="https://dl.blob.core.windows.net").blob_account_url == "https://dl.blob.core.windows.net"
    assert resolve({"ledger": "false"}, env={k: v for k, v in BASE.items()
                                             if k != "AMLRELAY_LEDGER_TABLE_URL"}).blob_account_url is None
    assert s.queue_account_url == "https://acct.queue.core.windows.net"
    assert settings(journal_queue_url="https://q.queue.core.windows.net").queue_account_url == (
        "https://q.queue.core.windows.net")
    sovereign = settings(ledger_table_url="https://acct.table.core.usgovcloudapi.net")
    assert (sovereign.blob_account_url, sovereign.queue_account_url) == (
        "https://acct.blob.core.usgovcloudapi.net", "https://acct.queue.core.usgovcloudapi.net")
    assert resolve({"ledger": "false"}, env={k: v for k, v in BASE.items()
                                             if k != "AMLRELAY_LEDGER_TABLE_URL"}).queue_account_url is None


def test_the_stale_window_must_exceed_the_longest_attempt_plus_clock_skew() -> None:
    # timeout 1, 0 retries: one call = 1 s; attempt = 2 * 1 + 2 * 1 + 60 = 64 s; plus 300 s of skew
    assert CLOCK_SKEW == 300.0
    assert settings(timeout="1", max_retries="0", ledger_stale_after="364.5").ledger_stale_after == 364.5
    text = refusal(timeout="1", max_retries="0", ledger_stale_after="364")
    assert "(364 s with these timeout/retry settings)" in text
    # defaults: one call = 5 * 30 + 4 * 60 = 390 s; attempt = 780 + 60 + 60 = 900 s; + 300 = 1200 s
    assert "(1200 s with these timeout/retry settings)" in refusal(ledger_stale_after="1200")
    # a Retry-After cap below 30 s still waits urllib3's 30 s backoff cap: 2 * (2 * 10 + 1 * 30) + 20 + 60
    assert "(480 s with" in refusal(timeout="10", max_retries="1", max_retry_after="5", ledger_stale_after="10")


def test_parameters_beat_automation_variables_beat_the_environment() -> None:
    automation = {"AMLRELAY_TIMEOUT": "7", "AMLRELAY_BACKOFF": "3"}.get
    s = resolve({"timeout": "9"}, env={**BASE, "AMLRELAY_TIMEOUT": "5", "AMLRELAY_BACKOFF": "2",
                                       "AMLRELAY_MAX_RETRIES": "1"}, automation=automation)
    assert (s.timeout, s.backoff, s.max_retries) == (9.0, 3.0, 1)


def test_automation_variables_are_only_looked_up_inside_automation() -> None:
    assert automation_lookup() is None  # no automationassets module outside Azure Automation


def test_the_redacted_view_keeps_everything_but_the_connection_string() -> None:
    s = resolve({"ledger_connection_string": "AccountKey=c2VjcmV0"}, env=BASE)
    shown = s.redacted()
    assert shown["ledger_connection_string"] == "(set)"
    assert shown["ado_organization"] == "contoso"
    assert "c2VjcmV0" not in repr(s)
    assert settings().redacted()["ledger_connection_string"] is None


def test_a_url_keeps_everything_but_its_trailing_slashes() -> None:
    """ADO Server collections, proxies and workspace names may end in any letter: only slashes are trimmed."""
    s = settings(ado_base_url="https://ado.contoso.local/XBOX//", key_vault_url="http://127.0.0.1:8443/X/")
    assert s.ado_base_url == "https://ado.contoso.local/XBOX"
    assert s.key_vault_url == "http://127.0.0.1:8443/X"
    assert "AMLRELAY_KEY_VAULT_URL must be an http(s) URL, got 'https:///vault'" in refusal(key_vault_url="https:///vault")


def test_an_organization_name_may_start_and_end_with_any_letter_but_holds_no_path() -> None:
    assert settings(ado_organization="/XLabsX/").org_url == "https://dev.azure.com/XLabsX"
    assert "AMLRELAY_ADO_ORGANIZATION must be the organization" in refusal(ado_organization="contoso/X")


def test_an_allowed_workspace_keeps_its_whole_name() -> None:
    """The allow-list compares whole resource ids: trimming a trailing letter would trust a look-alike."""
    upper = WS.replace("/ws", "/MLX")
    assert settings(allowed_workspaces=f"{upper}/").allowed_workspaces == (upper,)


def test_every_bad_workspace_is_named() -> None:
    text = refusal(allowed_workspaces=f"{WS},/subscriptions/x/a,/subscriptions/x/b")
    assert text.endswith("workspaces/NAME), got /subscriptions/x/a, /subscriptions/x/b")


@pytest.mark.parametrize("name", ["abc", "a" * 63, "a-b", "q1-journal-2"])
def test_a_storage_queue_name_is_accepted(name: str) -> None:
    assert settings(journal_queue=name).journal_queue == name


@pytest.mark.parametrize("name", ["ab", "a" * 64, "a--b", "-abc", "abc-", "Journal", "a_b"])
def test_a_bad_storage_queue_name_is_refused_with_the_rules(name: str) -> None:
    assert (f"AMLRELAY_JOURNAL_QUEUE must be a storage queue name (3-63 lowercase letters, digits, single hyphens), "
            f"got {name!r}") in refusal(journal_queue=name)


@pytest.mark.parametrize("text", ["1west", "eu", "west-europe", "w" + "x" * 41])
def test_a_bad_region_is_refused_with_an_example(text: str) -> None:
    assert (f"AMLRELAY_AML_REGION must be an Azure region name such as westeurope, got {text!r}"
            in refusal(aml_region=text))


@pytest.mark.parametrize(("text", "value"), [
    ("azureml://westeurope.api.azureml.ms/mlflow/v1.0" + WS.replace("/ws", "/MLX") + "/",
     "azureml://westeurope.api.azureml.ms/mlflow/v1.0" + WS.replace("/ws", "/MLX")),
    ("AzureML://westeurope.api.azureml.ms/mlflow/v1.0" + WS, "AzureML://westeurope.api.azureml.ms/mlflow/v1.0" + WS),
    ("http://127.0.0.1:5000/{region}", "http://127.0.0.1:5000/{region}"),
])
def test_an_mlflow_url_may_be_a_tracking_uri_or_a_region_template(text: str, value: str) -> None:
    assert settings(mlflow_url=text).mlflow_url == value


@pytest.mark.parametrize("text", ["ftp://{region}.api.azureml.ms", "azureml://", "westeurope.api.azureml.ms"])
def test_a_bad_mlflow_url_is_refused(text: str) -> None:
    assert "AMLRELAY_MLFLOW_URL must be an http(s) URL, got " in refusal(mlflow_url=text)


def test_tag_back_needs_a_region_only_for_a_url_with_a_region_in_it() -> None:
    assert refusal(tag_back="true") == (
        "AMLRELAY_AML_REGION is missing (required when AMLRELAY_TAG_BACK=true: the region of the AML workspaces, "
        "e.g. westeurope, for their MLflow endpoint; or set AMLRELAY_MLFLOW_URL to the workspace's "
        "mlflow_tracking_uri)")
    assert "AMLRELAY_AML_REGION is missing" in refusal(tag_back="true", mlflow_url="https://{region}.api.ml.azure.us")
    assert settings(tag_back="true", aml_region="westeurope").aml_region == "westeurope"
    assert settings(tag_back="true", mlflow_url="https://mlflow.contoso.local").tag_back is True
    assert settings(aml_region="westeurope").tag_back is False  # a region alone turns nothing on
    assert settings(mlflow_url="https://{region}.api.ml.azure.us").tag_back is False  # nor a template


def test_pat_mode_names_the_missing_vault() -> None:
    assert refusal(auth="pat") == "AMLRELAY_KEY_VAULT_URL is missing (required when AMLRELAY_AUTH=pat)"
    assert settings(auth="pat", key_vault_url="https://kv.vault.azure.net").auth == "pat"


def test_a_missing_ledger_says_how_to_accept_duplicates() -> None:
    env = {k: v for k, v in BASE.items() if k != "AMLRELAY_LEDGER_TABLE_URL"}
    with pytest.raises(SettingsError) as caught:
        resolve({}, env=env)
    assert caught.value.problems == [
        "AMLRELAY_LEDGER_TABLE_URL is missing (https://<account>.table.core.windows.net; the ledger is what stops a "
        "redelivered event from starting a pipeline twice. Set AMLRELAY_LEDGER=false only to accept duplicate runs)"]


def test_the_default_stale_window_is_checked_too() -> None:
    # timeout 360 s, no retries: 2 * 360 + 2 * 360 + 60 = 1500 s per attempt, + 300 s skew = the default 1800 s
    text = refusal(timeout="360", max_retries="0")
    assert text == ("AMLRELAY_LEDGER_STALE_AFTER must exceed the longest possible ADO attempt plus 300 s of clock "
                    "skew (1800 s with these timeout/retry settings), or a slow job's claim could be taken over "
                    "while its request is still on the way")
    assert settings(timeout="359.9", max_retries="0").ledger_stale_after == 1800.0


def test_a_ledger_only_command_needs_no_pipeline_settings() -> None:
    """``amlrelay status`` reads the ledger: no organization, routes or workspaces needed, and none invented."""
    s = resolve({}, env={"AMLRELAY_LEDGER_TABLE_URL": "https://acct.table.core.windows.net"}, ledger_only=True)
    assert (s.ado_organization, s.routes, s.allowed_workspaces) == ("", "", ())
    assert s.ledger_table_url == "https://acct.table.core.windows.net"
    with pytest.raises(SettingsError) as caught:
        resolve({}, env={"AMLRELAY_LEDGER_TABLE": "t"}, ledger_only=True)
    assert [p.split(" (")[0] for p in caught.value.problems] == ["AMLRELAY_LEDGER_TABLE_URL is missing"]
    with pytest.raises(SettingsError) as full:
        resolve({}, env={"AMLRELAY_LEDGER_TABLE_URL": "https://acct.table.core.windows.net"})
    assert len(full.value.problems) == 3


def test_the_process_environment_is_read_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in BASE.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AMLRELAY_TIMEOUT", "7")
    assert resolve({}).timeout == 7.0


class _AutomationAssets(types.ModuleType):
    """Automation's sandbox module: variables come back typed (JSON), an unknown one raises a bare Exception."""

    def __init__(self, variables: dict[str, object]) -> None:
        super().__init__("automationassets")
        self.variables = variables
        self.asked: list[str] = []

    def get_automation_variable(self, name: str) -> object:
        self.asked.append(name)
        if name not in self.variables:
            raise Exception(f"Variable {name} not found")  # what the sandbox module raises
        return self.variables[name]


def test_automation_variables_are_read_inside_automation(monkeypatch: pytest.MonkeyPatch) -> None:
    assets = _AutomationAssets({"AMLRELAY_ADO_ORGANIZATION": "from-automation", "AMLRELAY_DRY_RUN": True,
                                "AMLRELAY_MAX_RETRIES": 2, "AMLRELAY_ROUTES": None})
    monkeypatch.setitem(sys.modules, "automationassets", assets)
    lookup = automation_lookup()
    assert lookup is not None
    assert lookup("AMLRELAY_ADO_ORGANIZATION") == "from-automation"
    assert lookup("AMLRELAY_NOPE") is None
    assert assets.asked == ["AMLRELAY_ADO_ORGANIZATION", "AMLRELAY_NOPE"]
    s = resolve({}, env=BASE, automation=lookup)
    assert (s.ado_organization, s.dry_run, s.max_retries) == ("from-automation", True, 2)
    assert s.routes == "routes.json"  # a variable without a value does not hide the environment


_FRESH_JOB = """
import json, sys
from amlrelay.errors import SettingsError
from amlrelay.settings import resolve
try:
    s = resolve({}, env=json.loads(sys.argv[1]))
except SettingsError as exc:
    print(json.dumps({"problems": exc.problems}))
else:
    print(json.dumps({"auth": s.auth, "credential": s.credential, "backoff": s.backoff, "max_retries": s.max_retries,
                      "verify_lag": s.verify_lag}))
"""


def _in_a_fresh_process(**env: str) -> Any:
    """Settings as a new job process reads them (Automation starts one per job): the parsers are built when the
    module is imported, so they are checked there too, not only in this long-lived test process."""
    package = str(Path(amlrelay.settings.__file__).resolve().parents[1])
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("AMLRELAY_")}
    child_env["PYTHONPATH"] = package
    variables = {**BASE, **{env_name(k): v for k, v in env.items()}}
    done = subprocess.run([sys.executable, "-c", _FRESH_JOB, json.dumps(variables)], env=child_env,
                          capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout)


def test_a_fresh_job_process_parses_choices_and_numbers_alike() -> None:
    assert _in_a_fresh_process(auth="PAT", key_vault_url="https://kv.vault.azure.net", credential="Default",
                               backoff="0", max_retries="0", verify_lag="0.5") == {
        "auth": "pat", "credential": "default", "backoff": 0.0, "max_retries": 0, "verify_lag": 0.5}
    refused = _in_a_fresh_process(auth="password", backoff="-1", max_retries="many")
    assert refused == {"problems": ["AMLRELAY_AUTH must be one of managed-identity, pat, got 'password'",
                                    "AMLRELAY_MAX_RETRIES must be a number, got 'many'",
                                    "AMLRELAY_BACKOFF must not be negative, got '-1'"]}
