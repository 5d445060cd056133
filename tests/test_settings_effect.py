"""Settings reach what they configure: a value that is parsed but then ignored is a guarantee gone.

tests/test_settings_contract.py pins how each setting is read; this file pins, for the settings whose effect is
not already exercised by a feature's own tests through the setting's name, that the value changes behaviour.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from amlrelay.runbook import open_ledger
from amlrelay.settings import resolve

WS = "/subscriptions/x/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/ws"
@pytest.mark.parametrize(("stale_after", "silent_for", "second_job"), [
    (None, timedelta(minutes=31), "retry"),  # the default, 1800 s: a holder silent for 31 min is presumed dead
    ("3600", timedelta(minutes=31), "busy"),  # AMLRELAY_LEDGER_STALE_AFTER=3600: it is still waited for
    ("3600", timedelta(minutes=60), "retry"),
])
def test_the_stale_window_decides_when_a_silent_claim_is_taken_over(azurite: str, table_name: str,
                                                                     clock: Callable[[timedelta], object],
                                                                     stale_after: str | None, silent_for: timedelta,
                                                                     second_job: str) -> None:
    env = {"AMLRELAY_ADO_ORGANIZATION": "contoso", "AMLRELAY_ROUTES": "routes.json",
           "AMLRELAY_ALLOWED_WORKSPACES": WS, "AMLRELAY_LEDGER_CONNECTION_STRING": azurite,
           "AMLRELAY_LEDGER_TABLE": table_name}
    if stale_after is not None:
        env["AMLRELAY_LEDGER_STALE_AFTER"] = stale_after
    first, second = open_ledger(resolve({}, env=env)), open_ledger(resolve({}, env=env))
    first.ensure_table()
    key = f"{WS}|run|r1|completed|deploy"
    clock(timedelta(0))
    event = {"route": "deploy", "event_id": "e1", "event_type": "RunCompleted", "event_json": None}
    assert first.claim(key, **event).status == "claimed"
    clock(silent_for)
    assert second.claim(key, **event).status == second_job
