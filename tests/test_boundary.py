"""The webhook boundary: the Automation webhook stand-in keeps Automation's contract, and the fault matrix
(bench/boundary.py, one event per fault) ends with every event triggered exactly once or reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import requests

from amlrelay.ledger import Ledger
from tests.conftest import sample
from tests.servers.automation import AutomationServer
from tests.stack import ROOT, RUNBOOK, Stack, local_stack


@pytest.fixture
def stack() -> Iterator[Stack]:
    with local_stack() as s:
        yield s


def _post(url: str, events: list[dict[str, object]] | bytes) -> requests.Response:
    data = events if isinstance(events, bytes) else json.dumps(events, indent=2).encode()
    return requests.post(url, data=data, timeout=10, headers={"Content-Type": "application/json"})


def test_the_webhook_answers_202_when_the_job_is_queued_and_then_runs_it(stack: Stack) -> None:
    with AutomationServer(RUNBOOK, stack.env) as automation:
        answer = _post(automation.webhook_url, [sample("event-grid-schema", "model_registered")])
        assert answer.status_code == CONTRACT["accepted"]["status"]
        [job_id] = answer.json()["JobIds"]
        automation.wait()
        [job] = automation.jobs
    assert (job.id, job.status, job.exit_code) == (job_id, "Completed", 0)
    assert '"outcome":"triggered"' in job.stdout
    assert len(stack.ado.runs) == 1


CONTRACT = json.loads((ROOT / "tests" / "fixtures" / "automation" / "webhook-responses.json").read_text())


def test_the_webhook_refuses_as_automation_does(stack: Stack) -> None:
    refused, assumed = CONTRACT["refused"], CONTRACT["_assumed"]
    with AutomationServer(RUNBOOK, stack.env) as automation:
        body = [sample("event-grid-schema", "model_registered")]
        forged = automation.webhook_url.replace(automation.token, "forged")
        assert _post(forged, body).status_code == refused["invalid-token"]
        too_big = b"[" + b" " * CONTRACT["maxPayloadBytes"] + b"]"
        assert _post(automation.webhook_url, too_big).status_code == assumed["payload-too-large"]
        automation.throttle(1)
        assert _post(automation.webhook_url, body).status_code == assumed["throttled"]
        automation.expired = True
        assert _post(automation.webhook_url, body).status_code == refused["expired"]
        automation.deleted = True
        assert _post(automation.webhook_url, body).status_code == refused["webhook-not-found"]
        assert automation.jobs == []  # nothing refused was queued
    assert stack.ado.run_requests == []


@pytest.mark.parametrize(("fault", "exit_code", "claimed"), [
    ("before-imports", 1, False), ("bad-settings", 2, False), ("before-claim", 137, False),
    ("after-claim", 137, True), ("after-ado", 137, True)])
def test_a_job_fails_where_it_is_told_to_and_202_was_answered_anyway(
        stack: Stack, azurite: str, table_name: str, fault: str, exit_code: int, claimed: bool) -> None:
    env = {**stack.env(), "AMLRELAY_LEDGER": "true", "AMLRELAY_LEDGER_CONNECTION_STRING": azurite,
           "AMLRELAY_LEDGER_TABLE": table_name}
    Ledger.from_connection_string(azurite, table=table_name).ensure_table()
    with AutomationServer(RUNBOOK, lambda: dict(env)) as automation:
        automation.job_fault(fault)
        assert _post(automation.webhook_url, [sample("event-grid-schema", "model_deployed")]).status_code == 202
        automation.wait()
        [job] = automation.jobs
    assert job.exit_code == exit_code, job.stdout + job.stderr
    records = Ledger.from_connection_string(azurite, table=table_name).recent(10)
    assert [r.state for r in records] == (["claimed"] if claimed else [])
    assert len(stack.ado.runs) == (1 if fault == "after-ado" else 0)
    if fault == "before-imports":
        assert "No module named 'amlrelay'" in job.stderr


def test_the_fault_matrix_loses_nothing_and_doubles_nothing(azurite: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMLRELAY_")}
    env["AMLRELAY_LEDGER_CONNECTION_STRING"] = azurite  # the bench uses this Azurite instead of starting one
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "boundary.py"), "--events", "1"], env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "\nPASS (" in done.stdout
    rows = {line.split()[0]: line.split() for line in done.stdout.splitlines()
            if line.split() and line.split()[0] in ("before-claim", "after-claim", "webhook-expired", "ado-refuses",
                                                    "arm-lags")}
    assert set(rows) == {"before-claim", "after-claim", "webhook-expired", "ado-refuses", "arm-lags"}
    assert "0 lost, 0 doubled" in done.stdout
    # infra/'s default cadence (sweepIntervalMinutes = 15), at the schedule's worst phase: recovered by the
    # second run, within interval + grace (lost before the claim) or interval + stale window (claim held).
    assert "24 min (bound 25)" in " ".join(rows["before-claim"])
    assert "44 min (bound 45)" in " ".join(rows["after-claim"])
    assert "4 hourly schedules" in done.stdout
    # Verification on (review SHOULD 1): a run event that beat ARM fails its job and the sweep confirms it.
    assert "verification against AML on" in done.stdout
    assert rows["arm-lags"][3:5] == ["1x1", "1"]  # job exit 1, lost without the journal
    assert "24 min (bound 25)" in " ".join(rows["arm-lags"])
