"""Settings: parameters beat Automation variables beat environment; every problem is named at once."""

from __future__ import annotations

import pytest

from amlrelay.errors import SettingsError
from amlrelay.settings import resolve

WS = "/subscriptions/x/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/ws"
BASE = {"AMLRELAY_ADO_ORGANIZATION": "contoso", "AMLRELAY_ROUTES": "routes.json",
        "AMLRELAY_ALLOWED_WORKSPACES": WS, "AMLRELAY_LEDGER_TABLE_URL": "https://acct.table.core.windows.net"}


def test_precedence_parameters_then_automation_variables_then_environment() -> None:
    automation = {"AMLRELAY_ADO_ORGANIZATION": "from-automation", "AMLRELAY_AUTH": "pat",
                  "AMLRELAY_KEY_VAULT_URL": "https://kv.vault.azure.net"}
    settings = resolve({"ado_organization": "from-param"}, env=BASE, automation=automation.get)
    assert settings.ado_organization == "from-param"
    assert settings.auth == "pat"
    assert settings.routes == "routes.json"
    assert settings.org_url == "https://dev.azure.com/from-param"


def test_a_blank_parameter_or_variable_does_not_hide_the_next_source() -> None:
    automation = {"AMLRELAY_ADO_ORGANIZATION": "  ", "AMLRELAY_AUTH": ""}
    settings = resolve({"ado_organization": "", "routes": " "}, env={**BASE, "AMLRELAY_AUTH": "managed-identity"},
                       automation=automation.get)
    assert settings.ado_organization == "contoso"
    assert settings.routes == "routes.json"
    assert settings.auth == "managed-identity"


def test_ado_server_and_sovereign_hosts_are_settings() -> None:
    settings = resolve({"ado_base_url": "https://ado.contoso.local/tfs/", "ado_organization": "DefaultCollection"},
                       env=BASE)
    assert settings.org_url == "https://ado.contoso.local/tfs/DefaultCollection"


def test_every_missing_or_invalid_setting_is_reported_together() -> None:
    with pytest.raises(SettingsError) as info:
        resolve({"auth": "password", "timeout": "soon", "allowed_workspaces": "/subscriptions/x/storage"}, env={})
    problems = info.value.problems
    text = " ".join(problems)
    for expected in ("AMLRELAY_AUTH must be one of", "AMLRELAY_TIMEOUT must be a number",
                     "AMLRELAY_ALLOWED_WORKSPACES must list Azure ML workspace resource ids",
                     "AMLRELAY_ADO_ORGANIZATION is missing", "AMLRELAY_ROUTES is missing",
                     "AMLRELAY_LEDGER_TABLE_URL is missing"):
        assert expected in text
    assert "Automation variables" in str(info.value)


def test_pat_mode_needs_a_vault() -> None:
    with pytest.raises(SettingsError, match="AMLRELAY_KEY_VAULT_URL is missing"):
        resolve({"auth": "pat"}, env=BASE)


def test_the_ledger_can_only_be_switched_off_explicitly() -> None:
    env = {k: v for k, v in BASE.items() if k != "AMLRELAY_LEDGER_TABLE_URL"}
    with pytest.raises(SettingsError, match="LEDGER_TABLE_URL"):
        resolve({}, env=env)
    assert resolve({"ledger": "false"}, env=env).ledger is False
    assert resolve({"dry_run": "yes"}, env=env).dry_run is True


def test_an_organization_url_in_the_name_setting_is_explained() -> None:
    with pytest.raises(SettingsError, match="put the host in AMLRELAY_ADO_BASE_URL"):
        resolve({"ado_organization": "https://dev.azure.com/contoso"}, env=BASE)


def test_redacted_view_hides_the_connection_string() -> None:
    settings = resolve({"ledger_connection_string": "AccountKey=c2VjcmV0"}, env=BASE)
    assert "c2VjcmV0" not in repr(settings.redacted())


def test_a_stale_window_shorter_than_one_attempt_is_refused() -> None:
    with pytest.raises(SettingsError, match="AMLRELAY_LEDGER_STALE_AFTER must exceed the longest possible ADO attempt"):
        resolve({"ledger_stale_after": "60"}, env=BASE)
    quick = resolve({"ledger_stale_after": "400", "timeout": "1", "max_retries": "0"}, env=BASE)
    assert quick.ledger_stale_after == 400
