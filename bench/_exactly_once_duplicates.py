"""Figure 1 of bench/exactly_once.py: duplicates over spawned worker processes racing for the ledger claim."""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from typing import Any

from _exactly_once_common import (
    Bench,
    BenchError,
    RunArchive,
    apply_env,
    azurite_cpu,
    build,
    note,
    quiet_sdk_logging,
    say,
)
from _exactly_once_events import KINDS, SCHEMAS, Identity, identity, make_event

from amlrelay.events import parse_events
from amlrelay.record import table


@dataclass
class DuplicatePlan:
    outcomes: dict[Identity, str]  # identity -> ledger key
    rows: list[list[tuple[int, list[dict[str, Any]]] | None]]  # per worker: one slot per row
    lockstep: list[bool]  # per row: do all workers start it together (it holds copies of an outcome)?
    delivery_outcome: dict[int, Identity]
    copies: Counter[str]


def plan_duplicates(bench: Bench) -> DuplicatePlan:
    cfg, rng = bench.cfg, bench.rng
    total, workers = cfg.deliveries, cfg.workers
    extra = round(total * cfg.duplicate_share)
    unique = total - extra
    triples = extra // 10
    pairs = extra - 2 * triples
    if pairs + triples > unique:
        raise BenchError("too many duplicates for the number of deliveries")
    sizes = [3] * triples + [2] * pairs + [1] * (unique - pairs - triples)
    rng.shuffle(sizes)
    kinds = rng.choices(KINDS, weights=[40, 10, 20, 15, 15], k=unique)
    copies: Counter[str] = Counter()
    groups: list[tuple[Identity, list[dict[str, Any]]]] = []
    outcomes: dict[Identity, str] = {}
    for n, (kind, size) in enumerate(zip(kinds, sizes, strict=True)):
        ident = identity(kind, "dup", n)
        first = make_event(ident, rng.choice(SCHEMAS))
        events = [first]
        for _ in range(size - 1):
            if kind == "run_completed" and rng.random() < 0.5:
                events.append(make_event(ident, rng.choice(SCHEMAS), status_change=True))
                copies["RunCompleted + RunStatusChanged(Completed) of one run"] += 1
            elif rng.random() < 0.75:
                events.append(json.loads(json.dumps(first)))
                copies["plain redelivery (same event id)"] += 1
            else:
                events.append(make_event(ident, "cloud-events-schema" if "source" in first else "event-grid-schema"))
                copies["same outcome, new event id"] += 1
        groups.append((ident, events))
        outcomes[ident] = bench.ledger_key(first)
    # Rows of `workers` slots. All copies of an outcome go into one row, so into different workers, and a row
    # holding copies is a lock-step row: every worker starts it at the same moment (a barrier), so the copies
    # race for the ledger claim. Rows of single deliveries run freely in between.
    bins: list[list[tuple[Identity, dict[str, Any]]]] = []
    for ident, events in sorted((g for g in groups if len(g[1]) > 1), key=lambda g: -len(g[1])):
        target = next((b for b in bins if len(b) + len(events) <= workers), None)
        if target is None:
            target = []
            bins.append(target)
        target += [(ident, e) for e in events]
    sync = [True] * len(bins)
    singles = [(ident, events[0]) for ident, events in groups if len(events) == 1]
    for row in bins:
        while len(row) < workers and singles:
            row.append(singles.pop())
    while singles:
        bins.append([singles.pop() for _ in range(min(workers, len(singles)))])
        sync.append(False)
    order = list(range(len(bins)))
    rng.shuffle(order)
    per_worker: list[list[tuple[int, list[dict[str, Any]]] | None]] = [[] for _ in range(workers)]
    delivery_outcome: dict[int, Identity] = {}
    index = 0
    for position in order:
        slots = bins[position]
        assigned = rng.sample(range(workers), len(slots))
        by_worker: dict[int, tuple[int, list[dict[str, Any]]]] = {}
        for worker, (ident, event) in zip(assigned, slots, strict=True):
            by_worker[worker] = (index, [event])
            delivery_outcome[index] = ident
            index += 1
        for worker in range(workers):
            per_worker[worker].append(by_worker.get(worker))
    assert index == total
    lockstep = [sync[p] for p in order]
    return DuplicatePlan(outcomes, per_worker, lockstep, delivery_outcome, copies)


def duplicates_worker(number: int, env: dict[str, str], rows: list[tuple[int, list[dict[str, Any]]] | None],
                      lockstep: list[bool], barrier: Any, results: Any) -> None:
    """One worker process = one long-running job: builds its relay from the environment and handles its
    deliveries, one lock-step row at a time."""
    out: list[tuple[int, list[tuple[str, str | None, int | None, str]] | None, str]] = []
    started = ended = cpu = 0.0
    error = ""
    try:
        apply_env(env)
        quiet_sdk_logging()
        relay = build(env)
        barrier.wait(timeout=300)
        started = time.time()
        cpu0 = time.process_time()
        for slot, together in zip(rows, lockstep, strict=True):
            if together:
                barrier.wait(timeout=300)
            if slot is None:
                continue
            index, body = slot
            try:
                outcomes = relay.handle(parse_events(body), raw=body)
                out.append((index, [(o.outcome, o.route, o.ado_run_id, (o.reason or "")[:300]) for o in outcomes],
                            ""))
            except Exception as exc:  # a crash is a finding: keep going, report it
                out.append((index, None, f"{type(exc).__name__}: {exc}"[:300]))
        ended = time.time()
        cpu = time.process_time() - cpu0
    except Exception:
        error = traceback.format_exc()[-2000:]
        with contextlib.suppress(Exception):
            barrier.abort()
    results.put((number, out, started, ended, error, cpu))


def run_duplicates(bench: Bench) -> None:
    cfg = bench.cfg
    note(f"duplicates: planning {cfg.deliveries:,} deliveries")
    plan = plan_duplicates(bench)
    table_name = bench.table("dup")
    env = bench.job_env(table_name)
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(cfg.workers)
    results = ctx.Queue()
    procs = [ctx.Process(target=duplicates_worker, args=(i, env, plan.rows[i], plan.lockstep, barrier, results),
                         daemon=True) for i in range(cfg.workers)]
    note(f"duplicates: {cfg.workers} worker processes (spawn) handling them in lock-step rows")
    with RunArchive(bench.stack.ado) as archive:
        for proc in procs:
            proc.start()
        parent_cpu = time.process_time()
        az_cpu = azurite_cpu()
        collected = []
        try:
            for _ in procs:
                collected.append(results.get(timeout=1800))
        finally:
            for proc in procs:
                proc.join(timeout=30)
                if proc.is_alive():
                    proc.terminate()
    errors = [c[4] for c in collected if c[4]]
    note(f"worker cpu {sum(c[5] for c in collected):.1f} s, parent cpu {time.process_time() - parent_cpu:.1f} s, "
         f"azurite cpu {azurite_cpu() - az_cpu:.1f} s")
    if errors:
        raise BenchError("a duplicates worker failed:\n" + errors[0])
    starts = [c[2] for c in collected]
    ends = [c[3] for c in collected]
    wall = max(ends) - min(starts)
    per_delivery: dict[int, Any] = {}
    crashes: list[str] = []
    for _, out, *_ in collected:
        for index, outcomes, crash in out:
            per_delivery[index] = outcomes
            if crash:
                crashes.append(crash)

    counts, run_ids, unattributed = bench.runs_by_identity(archive)
    ledger = bench.ledger(table_name)
    records = {r.key: r for r in ledger.recent(limit=10 * len(plan.outcomes) + 100)}
    expected = plan.outcomes
    exactly_one = sum(1 for i in expected if counts[i] == 1)
    doubled = sum(1 for i in expected if counts[i] > 1)
    no_run = [i for i in expected if counts[i] == 0]
    failed_keys = {k for k, r in records.items() if r.state == "failed"}
    lost = [i for i in no_run if expected[i] not in failed_keys]
    recorded_ok = sum(1 for i, key in expected.items() if counts[i] == 1 and key in records
                      and records[key].state == "triggered" and records[key].ado_run_id == run_ids[i][0])
    kinds: Counter[str] = Counter()
    wrong_run = 0
    for index, outcomes in per_delivery.items():
        if outcomes is None:
            kinds["crashed"] += 1
            continue
        ident = plan.delivery_outcome[index]
        for kind, _, run_id, reason in outcomes:
            if kind == "duplicate":
                kind = "duplicate (busy: raced)" if reason.startswith("another job") else "duplicate (already done)"
                if run_id is not None and run_ids.get(ident) and run_id != run_ids[ident][0]:
                    wrong_run += 1
            kinds[kind] += 1
    extra = cfg.deliveries - len(expected)
    v = bench.verdict
    v.require(exactly_one == len(expected), f"duplicates: {len(expected) - exactly_one} outcomes without exactly 1 run")
    v.require(not lost, f"duplicates: {len(lost)} events lost")
    v.require(doubled == 0, f"duplicates: {doubled} outcomes doubled")
    v.require(unattributed == 0 and not crashes, "duplicates: unattributed runs or crashes")
    v.require(wrong_run == 0, f"duplicates: {wrong_run} duplicates named another run than the one started")

    copy_text = ", ".join(f"{n:,} {label}" for label, n in plan.copies.most_common())
    say(f"1. DUPLICATES  {cfg.deliveries:,} deliveries = {len(expected):,} unique AML outcomes + {extra:,} "
        f"duplicates ({extra / cfg.deliveries:.0%}: {copy_text})")
    say(f"   {cfg.workers} worker processes (spawn), each a job with its own relay; every copy of an outcome is in a "
        f"different process, in the same row, and the {sum(plan.lockstep):,} rows (of {len(plan.lockstep):,}) that "
        "hold copies start in lock-step (a barrier), so the copies race for the ledger claim.\n")
    rows = [
        ("unique AML outcomes", f"{len(expected):,}", ""),
        ("outcomes with exactly 1 ADO run", f"{exactly_one:,}", f"= {len(expected):,}"),
        ("events lost (no run and no failed record)", f"{len(lost):,}", "0"),
        ("outcomes doubled (more than 1 run)", f"{doubled:,}", "0"),
        ("ADO runs matching no outcome", f"{unattributed:,}", "0"),
        ("ADO runs in total", f"{sum(counts.values()) + unattributed:,}", f"= {len(expected):,}"),
        ("ledger records 'triggered' with that run's id", f"{recorded_ok:,}", f"= {len(expected):,}"),
        ("crashes in workers", f"{len(crashes):,}", "0"),
        ("duplicates naming a different run", f"{wrong_run:,}", "0"),
    ]
    rows += [(f"delivery outcome: {k}", f"{n:,}", "") for k, n in sorted(kinds.items())]
    rows.append(("wall time / deliveries per second", f"{wall:.1f} s / {cfg.deliveries / wall:,.0f}", ""))
    say(table(rows, ("duplicates", "value", "required"), width=60))
    say("   'busy: raced' = the copy found the claim of another process that was still calling ADO at that moment.")
    if crashes:
        say(f"   first crash: {crashes[0]}")
    say()

