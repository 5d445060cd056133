"""Every documented setting is read, parsed as the README says, and changes what amlrelay does.

A setting that is silently ignored (a typo in its name, a parser that drops it) is a guarantee gone: each
test here fails if the value given does not reach the behaviour it controls, and each refusal names the
variable and what is wrong with the value.
"""

from __future__ import annotations

from typing import Any

import pytest

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
