"""Figure 2 of bench/exactly_once.py: the fault matrix (each fault active, then healed and redelivered)."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from _exactly_once_common import (
    CONN_VAR,
    FOREVER,
    SETTLE_AFTER,
    SLOW_ADO,
    Bench,
    apply_env,
    build,
    clear_faults,
    free_port,
    no_delay,
    note,
    say,
)
from _exactly_once_events import KINDS, SCHEMAS, identity, make_event

from amlrelay.errors import AmlRelayError
from amlrelay.events import parse_events
from amlrelay.record import Outcome, exit_code, table
from amlrelay.relay import AMBIGUOUS


@dataclass
class Fault:
    name: str
    start: Callable[[Bench], None]
    heal: Callable[[Bench], None] = lambda b: None
    pat: bool = False
    settle: float = 0.0  # seconds to wait after the first pass for answers the stand-in still holds
    storage: bool = False


def _identity_up(bench: Bench) -> None:
    bench.stack.identity.up()
    no_delay(bench.stack)


def _accept_then_500_everywhere(bench: Bench) -> None:
    """ADO having a bad minute: the POST queues the run and answers 500, and the reads that would find it fail."""
    bench.stack.ado.accept_then_fail(500, times=FOREVER)
    bench.stack.ado.fail(500, times=FOREVER, method="GET")


def _no_retry_after(bench: Bench, on: bool) -> None:
    bench.no_retry_after = on
    if on:
        bench.stack.ado.fail(429, times=FOREVER)


FAULTS = [
    Fault("ADO 429 with Retry-After: 1", lambda b: b.stack.ado.fail(429, retry_after=1, times=FOREVER)),
    Fault("ADO 429 without Retry-After", lambda b: _no_retry_after(b, True), lambda b: _no_retry_after(b, False)),
    Fault("ADO 500 (run not created)", lambda b: b.stack.ado.fail(500, times=FOREVER)),
    Fault("ADO 502 (run not created)", lambda b: b.stack.ado.fail(502, times=FOREVER)),
    Fault("ADO 503", lambda b: b.stack.ado.fail(503, times=FOREVER)),
    Fault("reset before the run is created", lambda b: b.stack.ado.reset(times=FOREVER)),
    Fault("reset after the run is created", lambda b: b.stack.ado.reset(times=FOREVER, after_create=True)),
    Fault(f"timeout: ADO slow ({SLOW_ADO:g} s > timeout 1 s)", lambda b: b.stack.ado.delay(SLOW_ADO, times=FOREVER),
          settle=SLOW_ADO + 0.3),
    Fault("accept-then-500 (run created)", lambda b: b.stack.ado.accept_then_fail(500, times=FOREVER)),
    Fault("accept-then-500, reads 500 too", lambda b: _accept_then_500_everywhere(b)),
    Fault("identity endpoint down", lambda b: b.stack.identity.down(), _identity_up),
    Fault("Key Vault 403 (PAT mode)", lambda b: b.stack.vault.forbid() if b.stack.vault else None,
          lambda b: b.stack.vault.allow() if b.stack.vault else None, pat=True),
    Fault("ledger storage unreachable", lambda b: None, storage=True),
]


def job(env: dict[str, str], body: list[dict[str, Any]]) -> tuple[list[Outcome], int, str]:
    """One job: a fresh relay (new process, new credential, new clients) handling one delivery."""
    try:
        relay = build(env)
        outcomes = relay.handle(parse_events(body), raw=body)
        return outcomes, exit_code(outcomes), ""
    except AmlRelayError as exc:
        return [], 2, f"{type(exc).__name__}: {exc}"
    except Exception as exc:
        return [], 3, f"CRASH {type(exc).__name__}: {exc}"


def run_faults(bench: Bench) -> None:
    n = bench.cfg.fault_events
    table_name = bench.table("faults")
    ledger = bench.ledger(table_name)
    stack = bench.stack
    rows, reasons = [], []
    for number, fault in enumerate(FAULTS):
        note(f"faults: {fault.name}")
        stack.ado.reset_state()
        stack.identity.reset_state()
        if stack.vault is not None:
            stack.vault.reset_state()
        idents = [identity(KINDS[i % len(KINDS)], f"f{number}", i) for i in range(n)]
        events = [make_event(ident, SCHEMAS[(i // len(KINDS)) % 2]) for i, ident in enumerate(idents)]
        keys = [bench.ledger_key(e) for e in events]
        healthy = bench.job_env(table_name, pat=fault.pat, fast_failure=True)
        env = healthy
        if fault.storage:
            env = {**healthy, CONN_VAR: re.sub(r"TableEndpoint=http://127\.0\.0\.1:\d+",
                                               f"TableEndpoint=http://127.0.0.1:{free_port()}", bench.conn)}
        apply_env(healthy)
        fault.start(bench)
        began = time.perf_counter()
        with ThreadPoolExecutor(max_workers=n) as pool:  # N jobs at once, one event each
            first = list(pool.map(job, [env] * n, [[e] for e in events]))
        first_time = time.perf_counter() - began
        time.sleep(fault.settle)
        counts, run_ids, _ = bench.runs_by_identity()
        posts = len(stack.ado.run_requests)
        tally: Counter[str] = Counter()
        example = ""
        open_since: list[float] = []  # failures after which ADO may still act: a redelivery waits for them
        for ident, key, (outcomes, code, error) in zip(idents, keys, first, strict=True):
            record = ledger.get(key)
            if record is not None and record.state == "failed" and (record.reason or "").startswith(AMBIGUOUS):
                open_since.append(record.updated_at.timestamp())
            outcome = outcomes[0] if outcomes else None
            if outcome is not None and outcome.outcome == "failed" and not example:
                example = outcome.reason or ""
            if error.startswith("CRASH"):
                tally["crash"] += 1
            runs = counts[ident]
            if runs > 1:
                tally["doubled"] += 1
            elif runs == 1:
                ok = (outcome is not None and outcome.outcome in ("triggered", "duplicate") and record is not None
                      and record.state == "triggered" and record.ado_run_id == run_ids[ident][0])
                tally["triggered" if ok else "other"] += 1
            else:
                failed = outcome is not None and outcome.outcome == "failed" and code != 0
                recorded = (record is not None and record.state == "failed") or (
                    fault.storage and record is None and posts == 0)
                tally["failed-recorded" if failed and recorded else "lost"] += 1
        # heal, then Event Grid (or amlrelay replay) delivers every event again: a new job. After an ambiguous
        # answer the relay refuses to look again before AMLRELAY_SETTLE_AFTER, as Event Grid's retry schedule
        # (minutes) would also wait: the redelivery comes after it.
        if open_since:
            time.sleep(max(0.0, max(open_since) + SETTLE_AFTER + 0.3 - time.time()))
        fault.heal(bench)
        clear_faults(stack.ado)
        clear_faults(stack.identity)
        apply_env(healthy)
        outcomes, code, error = job(healthy, events)
        counts, run_ids, _ = bench.runs_by_identity()
        once = 0
        for ident, key in zip(idents, keys, strict=True):
            record = ledger.get(key)
            if counts[ident] == 1 and record is not None and record.state == "triggered" and \
                    record.ado_run_id == run_ids[ident][0]:
                once += 1
        again = Counter(o.outcome for o in outcomes)
        rows.append((fault.name, str(n), str(tally["triggered"]), str(tally["failed-recorded"]),
                     str(tally["lost"]), str(tally["doubled"]), str(tally["other"]), f"{once}/{n}",
                     " ".join(f"{k} {v}" for k, v in sorted(again.items())) or error[:40], f"{first_time:.1f}"))
        reasons.append((fault.name, example or "-"))
        v = bench.verdict
        v.require(tally["lost"] == 0, f"faults: {fault.name}: {tally['lost']} lost")
        v.require(tally["doubled"] == 0, f"faults: {fault.name}: {tally['doubled']} doubled in the first pass")
        v.require(tally["crash"] == 0 and not error, f"faults: {fault.name}: crash {error}")
        v.require(once == n, f"faults: {fault.name}: {n - once} not exactly once after redelivery")
    stack.ado.reset_state()
    say(f"2. FAULT MATRIX  per fault: {n} events delivered as {n} concurrent jobs with the fault active; then "
        "healed and all delivered again as one batch by a fresh relay (a new job).")
    say(f"   Settings: AMLRELAY_BACKOFF=0, AMLRELAY_MAX_RETRY_AFTER=1, AMLRELAY_TIMEOUT=1, AMLRELAY_MAX_RETRIES="
        f"{bench.cfg.fault_retries}, AMLRELAY_SETTLE_AFTER={SETTLE_AFTER:g} (the redelivery comes after it when the "
        "first pass left an ambiguous failure).")
    say("   Counts are per event, from the ADO stand-in's runs and the ledger.\n")
    say(table(rows, ("fault", "events", "triggered", "failed-recorded", "lost", "doubled", "other",
                     "exactly once after redelivery", "redelivery outcomes", "1st pass s"), width=44))
    say("   triggered = exactly 1 run and the ledger holds its id; failed-recorded = job reported 'failed', exit "
        "non-zero, ledger record 'failed' (storage: no ADO call at all); lost = no run and not failed-recorded;")
    say("   doubled = more than 1 run for the outcome (counted after the stand-in finished every answer it held); "
        "other = exactly 1 run, but reported failed (ambiguous answer): the redelivery must adopt it.\n")
    say(table(reasons, ("fault", "first-pass failure reason (as the job reports it)"), width=130))
    say()

