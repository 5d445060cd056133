"""The amlrelay demo: the whole flow on local services, no Azure needed.

Starts loopback stand-ins for ADO, the managed-identity endpoint and AML (the relay verifies each event
against it, as AMLRELAY_VERIFY does by default), and uses Azurite for the ledger when
AMLRELAY_LEDGER_CONNECTION_STRING is set, as scripts/demo does. Then delivers Microsoft's sample AML events
to the runbook exactly as Event Grid and an Automation webhook would: one job per delivery, the WEBHOOKDATA
split across argv. Prints what each delivery started in ADO, and what it refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.stack import Stack, local_stack  # noqa: E402

from amlrelay.record import table  # noqa: E402

EXAMPLES = ROOT / "tests" / "fixtures" / "eventgrid" / "examples"
NAMES = ("run_completed", "run_status_changed", "model_registered", "model_deployed", "dataset_drift_detected")


def webhook_argv(events: list[dict[str, Any]]) -> list[str]:
    """WEBHOOKDATA as Automation serialises it for a Python runbook, split on whitespace."""
    body = json.dumps(events, indent=2)
    return (f"{{WebhookName:amlrelay-demo,RequestBody:{body},"
            "RequestHeader:{Connection:Keep-Alive,Aeg-Event-Type:Notification}}").split()


def deliver(stack: Stack, label: str, events: list[dict[str, Any]], env: dict[str, str]) -> list[dict[str, Any]]:
    started = time.monotonic()
    done = subprocess.run(stack.runbook_command(*webhook_argv(events)), env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    elapsed = time.monotonic() - started
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    for record in records:
        record.update(delivery=label, exit=done.returncode, seconds=elapsed)
    if not records:
        print(done.stdout + done.stderr)
    return records


def load(schema: str, name: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EXAMPLES / schema / f"{name}.json").read_text())
    return event


def renamed(event: dict[str, Any], suffix: str) -> dict[str, Any]:
    """The event as another AML outcome: its ids get ``suffix`` and the subject names them, as AML's would."""
    event["data"] = {k: (f"{v}{suffix}" if k.lower() in {"runid", "modelversion", "servicename", "datadriftid"}
                         else v) for k, v in event["data"].items()}
    low = {k.lower(): v for k, v in event["data"].items()}
    if "experimentid" in low:
        event["subject"] = f"experiments/{low['experimentid']}/runs/{low['runid']}"
    elif "modelversion" in low:
        event["subject"] = f"models/{low['modelname']}:{low['modelversion']}"
    elif "servicename" in low:
        event["subject"] = f"endpoints/{low['servicename']}"
    return event


def main() -> int:
    with local_stack(verify=True) as stack:
        env = stack.env()
        ledger = os.environ.get("AMLRELAY_LEDGER_CONNECTION_STRING")
        if ledger:
            env.update(AMLRELAY_LEDGER="true", AMLRELAY_LEDGER_CONNECTION_STRING=ledger,
                       AMLRELAY_LEDGER_TABLE=f"demo{int(time.time())}")
        deliveries: list[tuple[str, list[dict[str, Any]]]] = []
        for schema in ("event-grid-schema", "cloud-events-schema"):
            short = "EG" if schema == "event-grid-schema" else "CE"
            for name in NAMES:
                event = load(schema, name)
                # The samples share ids: make each AML outcome distinct (the failed-run sample reuses the
                # completed run's id, which one real run cannot be: AML would refute one of the two).
                suffix = ("-ce" if schema == "cloud-events-schema" else "") + (
                    "-failed" if name == "run_status_changed" else "")
                if suffix:
                    event = renamed(event, suffix)
                deliveries.append((f"{short} {name}", [event]))
        redelivered = load("event-grid-schema", "run_completed")
        status = load("event-grid-schema", "run_status_changed")
        status["id"], status["data"]["runStatus"] = "second-delivery", "Completed"
        foreign = load("event-grid-schema", "model_registered")
        foreign["topic"] = foreign["topic"].replace("{workspace-name}", "someone-elses-workspace")
        deliveries += [("EG run_completed (redelivered)", [redelivered]),
                       ("EG RunStatusChanged(Completed), same run", [status])]
        stack.emitted([event for _, events in deliveries for event in events])  # what AML really holds
        forged = renamed(load("event-grid-schema", "run_completed"), "-never-ran")  # allowed topic, no such run
        forged["id"] = "forged"
        deliveries += [("EG model_registered, foreign topic", [foreign]),
                       ("EG run_completed, forged (AML has no such run)", [forged])]
        records: list[dict[str, Any]] = []
        for label, events in deliveries:
            records += deliver(stack, label, events, env)
        rows = [(r["delivery"], r.get("route") or "-", r["outcome"], str(r.get("ado_run_id") or "-"),
                 str(r["exit"]), _detail(stack, r)) for r in records]
        print("amlrelay demo: sample AML events delivered to runbooks/trigger_ado_pipeline.py via WEBHOOKDATA")
        print(f"ADO stand-in: {stack.ado.org_url}   ledger: {'Azurite' if ledger else 'off'}   "
              "verification against AML: on (AML stand-in)\n")
        print(table(rows, ("delivery", "route", "outcome", "ado run", "job exit", "pipeline / reason"), width=64))
        runs = stack.ado.runs
        print(f"\n{len(runs)} ADO runs started for {len(deliveries)} deliveries; "
              f"{sum(1 for r in records if r['outcome'] == 'duplicate')} duplicates recognised, "
              f"{sum(1 for r in records if r['outcome'] == 'rejected')} rejected.")
        if runs:
            first = runs[0]
            print("\nThe first run as ADO recorded it:")
            print(json.dumps({k: first.get(k) for k in ("id", "state", "pipeline", "resources", "templateParameters",
                                                         "variables")}, indent=2)[:1500])
        expected_runs = 10 if ledger else 12
        refused = {r["delivery"] for r in records if r["outcome"] == "rejected"}
        return 0 if len(runs) == expected_runs and not stack.ado.errors and len(refused) == 2 else 1


def _detail(stack: Stack, record: dict[str, Any]) -> str:
    if record.get("ado_run_id"):
        run = next((r for r in stack.ado.runs if r["id"] == record["ado_run_id"]), None)
        if run:
            return f"{run['pipeline']['name']} (pipeline {run['pipeline']['id']})"
    return str(record.get("reason") or "")


if __name__ == "__main__":
    sys.exit(main())
