"""Verification against AML (issue #7): what it costs per event, and what it stops, in one run.

* **Cost**: genuine events (each run held by the AML stand-in) through the relay a webhook job builds
  (``runbook.build_relay``), one event per delivery as Event Grid sends them, with ``AMLRELAY_VERIFY=false``
  (the baseline) and ``true``, interleaved per round; medians of ms per event and their ratio. Each verified
  event costs one ARM read (Jobs_Get or ModelVersions_Get) on loopback, so on Azure the absolute cost is
  one ARM round trip (tens of ms) — the ratio says how much of the relay's own work it adds.
* **Stopped**: forged events with an allowed topic, each shaped to take a route (unknown runs, models,
  versions and drift runs, another final status, another experiment, a deployment of an unknown model):
  how many were rejected, and how many ADO calls they caused.

Usage: .venv/bin/python bench/verify.py [--events N] [--forged N] [--rounds N]
No Azurite needed: the ledger is off here, so the figure isolates verification (the ledger's cost is in
bench/exactly_once.py).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import sample  # noqa: E402
from tests.servers.identity import CONFLICTING_ENV  # noqa: E402
from tests.stack import Stack, local_stack  # noqa: E402

from amlrelay.events import parse_events  # noqa: E402
from amlrelay.record import table  # noqa: E402
from amlrelay.routes import load_routes  # noqa: E402
from amlrelay.runbook import build_relay  # noqa: E402
from amlrelay.settings import resolve  # noqa: E402

EXPERIMENT = "automl-local-regression"


def genuine(n: int, tag: str) -> list[dict[str, Any]]:
    """RunCompleted and ModelRegistered events AML really sent (the stand-in is told to hold them)."""
    out = []
    for i in range(n):
        if i % 2:
            event = sample("event-grid-schema", "run_completed")
            event["data"]["runId"] = f"train_{tag}_{i}"
            event["subject"] = f"experiments/{event['data']['experimentId']}/runs/train_{tag}_{i}"
        else:
            event = sample("cloud-events-schema", "model_registered")
            event["data"]["ModelName"], event["data"]["ModelVersion"] = f"sklearn_{tag}", str(i)
            event["subject"] = f"models/sklearn_{tag}:{i}"
        event["id"] = f"{tag}-{i}"
        out.append(event)
    return out


def forged(n: int, rng: random.Random) -> list[dict[str, Any]]:
    """Events with an allowed topic that AML does not confirm (see tests/test_forged_events.py)."""
    out = []
    for i in range(n):
        kind = i % 6
        ghost = f"ghost_{rng.randrange(10**9)}"
        if kind == 0:
            event = sample("event-grid-schema", "run_completed")
            event["data"]["runId"] = ghost
        elif kind == 1:  # a real run that Failed, claimed Completed
            event = sample("cloud-events-schema", "run_completed")
            event["data"]["runId"] = "held_failed"
        elif kind == 2:  # a real run, claimed in another experiment
            event = sample("event-grid-schema", "run_completed")
            event["data"]["runId"], event["data"]["experimentName"] = "held_completed", ghost
        elif kind == 3:
            event = sample("event-grid-schema", "model_registered")
            event["data"]["ModelName"], event["data"]["ModelVersion"] = f"sklearn_{ghost}", "1"
        elif kind == 4:
            event = sample("cloud-events-schema", "model_deployed")
            event["data"]["ModelIds"] = f"sklearn_held:1,sklearn_{ghost}:2"
        else:
            event = sample("event-grid-schema", "dataset_drift_detected")
            event["data"]["RunId"] = ghost
        if "runId" in event["data"]:
            event["subject"] = f"experiments/{event['data']['experimentId']}/runs/{event['data']['runId']}"
        elif "ModelName" in event["data"]:
            event["subject"] = f"models/{event['data']['ModelName']}:{event['data']['ModelVersion']}"
        event["id"] = f"forged-{i}"
        out.append(event)
    return out


def per_event_ms(stack: Stack, events: list[dict[str, Any]], verify: bool) -> float:
    env = {**stack.env(), "AMLRELAY_VERIFY": "true" if verify else "false"}
    relay = build_relay(resolve({}, env=env), load_routes(ROOT / "routes.json"))
    before = len(stack.ado.run_requests)
    started = time.perf_counter()
    for event in events:  # one delivery per event, as Event Grid posts by default
        [outcome] = relay.handle(parse_events([event]), raw=[event])
        if outcome.outcome != "triggered":
            raise SystemExit(f"a genuine event was not triggered: {outcome}")
    elapsed = time.perf_counter() - started
    assert len(stack.ado.run_requests) - before == len(events)
    return elapsed * 1000 / len(events)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=400, help="genuine events per variant and round")
    parser.add_argument("--forged", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(7)
    with local_stack(verify=True) as stack:
        for name in CONFLICTING_ENV:
            os.environ.pop(name, None)
        os.environ.update(stack.identity.env())  # the relay's managed identity, in this process
        assert stack.aml is not None
        stack.aml.add_job("held_failed", "Failed", experiment_name=EXPERIMENT)
        stack.aml.add_job("held_completed", "Completed", experiment_name=EXPERIMENT)
        stack.aml.add_model_version("sklearn_held", "1")
        samples: dict[bool, list[float]] = {False: [], True: []}
        for round_ in range(args.rounds):
            for verify in (False, True):
                events = genuine(args.events, f"r{round_}{'v' if verify else 'b'}")
                stack.emitted(events)
                samples[verify].append(per_event_ms(stack, events, verify))
        reads_before = len(stack.aml.requests)
        ado_before = len(stack.ado.requests)
        env = stack.env()
        relay = build_relay(resolve({}, env=env), load_routes(ROOT / "routes.json"))
        outcomes = [o for event in forged(args.forged, rng)
                    for o in relay.handle(parse_events([event]), raw=[event])]
        rejected = sum(o.outcome == "rejected" for o in outcomes)
        ado_calls = len(stack.ado.requests) - ado_before
        arm_reads = len(stack.aml.requests) - reads_before
    base, verified = statistics.median(samples[False]), statistics.median(samples[True])
    ratios = [v / b for b, v in zip(samples[False], samples[True], strict=True)]
    print(f"Verification against AML: {args.events} genuine events x {args.rounds} rounds per variant, "
          "one per delivery, relay in process, loopback ADO/identity/AML, ledger off.")
    print(table([
        ("AMLRELAY_VERIFY=false (baseline)", f"{base:.2f}", "1.00", "-"),
        ("AMLRELAY_VERIFY=true", f"{verified:.2f}", f"{verified / base:.2f}",
         f"{min(ratios):.2f}-{max(ratios):.2f}"),
    ], ("variant", "ms/event (median)", "ratio", "ratio range (rounds)")))
    print(f"Forged events: {len(outcomes)} delivered, {rejected} rejected "
          f"({100 * rejected / max(len(outcomes), 1):.1f} %), {ado_calls} ADO calls, {arm_reads} ARM reads.")
    ok = rejected == len(outcomes) == args.forged and ado_calls == 0
    print("OK" if ok else "FAILED: a forged event was not rejected, or reached ADO")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
