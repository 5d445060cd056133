"""The Logic App handler's bill and latency, from executing the generated workflow (issue #8).

* **Billable executions per delivery** on each path (success, duplicate, no route, foreign topic,
  handshake, ADO throttled once, ADO refusal, takeover of a failed record), counted by the executor the
  way Consumption meters them (LOGICAPPS.md §7, PRICE: every executed trigger and action, Skipped ones
  not, a loop once plus its inner actions per iteration), and the price per 1,000 events at the only
  per-action price the references hold ($0.000025 per built-in action, a 2020 transcription of the
  pricing page, not verified: use the Azure pricing calculator for yours).
* **Time of the success path**: one event per delivery (as the generated subscriptions send them),
  through the executor against loopback ADO/identity and Azurite behind the Entra gateway, next to the
  runbook's relay in process on its own identical stand-ins (the baseline, same run), as medians and a
  ratio; and the margin to Event Grid's 30 s response timeout (AZURE-FACTS §3, from
  articles/event-grid/delivery-and-retry.md; LOGICAPPS.md §3 EGV: the handshake within 30 s too).
  Loopback times are not Azure's: each Logic App action adds service overhead the executor does not
  model, so read the figure as the workflow's own work, and the action count as what scales on Azure.

Usage: .venv/bin/python bench/logicapp_cost.py [--events N] [--rounds N]
Starts a private Azurite unless AMLRELAY_LEDGER_CONNECTION_STRING is set.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from exactly_once import azurite  # noqa: E402
from tests.conftest import sample  # noqa: E402
from tests.logicapp_mutants import agreement  # noqa: E402
from tests.logicapp_stack import Pair, pair  # noqa: E402

PRICE_PER_ACTION = 0.000025  # USD, LOGICAPPS.md §7 (2020 transcription of the pricing page; not verified)
EVENT_GRID_TIMEOUT = 30.0  # s, AZURE-FACTS §3 (delivery-and-retry.md)


def model_event(version: int) -> dict[str, Any]:
    event = sample("event-grid-schema", "model_registered")
    event["id"], event["data"]["ModelVersion"] = str(uuid.uuid4()), version
    event["subject"] = f"models/{event['data']['ModelName']}:{version}"  # as AML sends it (verification checks)
    return event


def body(*events: Any) -> bytes:
    return json.dumps(list(events)).encode()


def paths(p: Pair) -> list[tuple[str, int, int, int]]:
    """(path, billable executions incl. the trigger, actions, HTTP answer) per delivery of one event."""
    assert p.logicapp.workflow is not None
    workflow, ado = p.logicapp.workflow, p.logicapp.stack.ado
    rows: list[tuple[str, int, int, int]] = []

    def deliver(name: str, delivery: bytes) -> None:
        p.emitted(json.loads(delivery))  # AML holds what the events report (when verification is on)
        result = workflow.post(delivery)
        rows.append((name, result.billable, result.billable - 1, result.response.status))

    first = model_event(900)
    deliver("success (claim, ADO, record)", body(first))
    deliver("duplicate (redelivery)", body(first))
    running = sample("event-grid-schema", "run_status_changed")
    running["data"]["runStatus"] = "Running"
    deliver("no route matches", body(running))
    foreign = model_event(901)
    foreign["topic"] = foreign["topic"].replace("{workspace-name}", "elsewhere")
    deliver("foreign topic (rejected)", body(foreign))
    deliver("validation handshake", body({"id": "v", "topic": "t", "subject": "", "eventTime": "2025-01-01T00:00:00Z",
                                          "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
                                          "data": {"validationCode": "c"}}))
    ado.fail(429, retry_after=1)
    deliver("ADO 429 once, then started", body(model_event(902)))
    ado.fail(400)
    refused = model_event(903)
    deliver("ADO refuses (400): recorded failed", body(refused))
    deliver("redelivery takes the failure over", body(refused))
    ado.signin_page()  # how ADO answers a credential it does not accept: 203 with a sign-in page
    deliver("ADO 203 sign-in page: recorded failed", body(model_event(904)))
    return rows


def timings(p: Pair, events: int, start: int) -> tuple[float, float]:
    """Median ms per event through the workflow and through the runbook's relay (same events)."""
    la: list[float] = []
    rb: list[float] = []
    for i in range(events):
        delivery = body(model_event(start + i))
        t0 = time.perf_counter()
        assert p.deliver_runbook(delivery).status == 200
        t1 = time.perf_counter()
        assert p.deliver_logicapp(delivery).status == 200
        t2 = time.perf_counter()
        rb.append((t1 - t0) * 1000)
        la.append((t2 - t1) * 1000)
    return statistics.median(la), statistics.median(rb)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--events", type=int, default=40, help="events per round for the timing (default 40)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--mutants", type=int, default=300, help="mutated events for figure 3 (default 300)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    with azurite() as (conn, where):
        print(f"ledger: {where}", file=sys.stderr)
        print("1. BILLABLE EXECUTIONS PER DELIVERY OF ONE EVENT (Consumption metering, LOGICAPPS.md §7)")
        for verify in (False, True):
            with pair(conn, "bench" + uuid.uuid4().hex[:12], verify=verify) as p:
                os.environ.update(p.env)
                rows = paths(p)
            print(f"\nverification against AML {'on (the default deployment)' if verify else 'off'}:")
            print(f"{'path':40} {'executions':>10} {'actions':>8} {'answer':>7} {'USD / 1,000':>12}")
            for name, billable, actions, status in rows:
                print(f"{name:40} {billable:>10} {actions:>8} {status:>7} {billable * PRICE_PER_ACTION * 1000:>12.4f}")
        print(f"\n(executions = the Request trigger + actions; ${PRICE_PER_ACTION} per execution is the 2020 "
              "transcription in LOGICAPPS.md §7, unverified; the first 4,000 built-in actions a month are free)")
        with pair(conn, "bench" + uuid.uuid4().hex[:12]) as p:
            os.environ.update(p.env)  # the runbook's relay runs in process, as in a job
            la_ms: list[float] = []
            rb_ms: list[float] = []
            for r in range(args.rounds):
                la, rb = timings(p, args.events, 1000 + r * args.events)
                la_ms.append(la)
                rb_ms.append(rb)
            ratios = [a / b for a, b in zip(la_ms, rb_ms, strict=True)]
            print(f"\n2. SUCCESS PATH TIME, {args.events} events x {args.rounds} rounds, one event per delivery\n")
            print(f"runbook relay (baseline), median ms/event per round: {', '.join(f'{x:.1f}' for x in rb_ms)}")
            print(f"Logic App in the executor, median ms/event per round: {', '.join(f'{x:.1f}' for x in la_ms)}")
            print(f"ratio executor/runbook: {min(ratios):.2f}-{max(ratios):.2f}")
            worst = max(la_ms) / 1000
            print(f"Event Grid waits {EVENT_GRID_TIMEOUT:.0f} s for the answer: the success path uses "
                  f"{worst / EVENT_GRID_TIMEOUT:.2%} of it here (+ Azure's per-action overhead, not modelled)")
            agree, split = agreement(p, args.mutants, args.seed)
            print(f"\n3. AGREEMENT ON {args.mutants} MUTATED SAMPLE EVENTS (seed {args.seed}; "
                  "same answer and ADO requests)\n")
            print(f"agree: {agree}/{args.mutants} ({agree / args.mutants:.1%})")
            for direction, cases in split.items():
                shown = ", ".join(sorted(set(cases))[:8]) + (" ..." if len(set(cases)) > 8 else "")
                print(f"{direction}: {len(cases)}{' (' + shown + ')' if cases else ''}")
            print(f"throttled worst case: up to 5 ADO attempts waiting Retry-After (capped 60 s): the "
                  f"Until loop can outlast the {EVENT_GRID_TIMEOUT:.0f} s window; Event Grid then retries "
                  "and the ledger makes the retry a duplicate or a takeover, never a second run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
