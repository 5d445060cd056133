"""The webhook boundary, measured: no event lost, none doubled, whatever happens after the webhook's 202.

An Automation webhook answers 202 when the job is *queued*; Event Grid then counts the event delivered. This
bench delivers events through a model of Event Grid (bench/_boundary_eventgrid.py: retries, no-retry codes,
dead letters, on a virtual clock) to a loopback Automation webhook (tests/servers/automation.py) whose jobs
run the real runbook as subprocesses and fail at each point a real job can:

  before-imports  the runtime environment's packages are not importable yet (after a deploy)
  bad-settings    a required setting is missing (AMLRELAY_ALLOWED_WORKSPACES)
  before-claim    the sandbox dies before the ledger claim
  after-claim     ... after the claim, before calling ADO
  after-ado       ... after ADO started the run, before the ledger recorded it
  webhook-expired the webhook answers 400 (expired): Event Grid does not retry, it dead-letters
  webhook-deleted the webhook answers 404 (rotated away): Event Grid retries for 24 h, then dead-letters
  throttled       Automation answers 429 twice per event: Event Grid retries (10 s, 30 s)
  ado-refuses     ADO answers 404 for the pipeline: nothing can succeed; the event must be *reported*
  arm-lags        ARM shows the runs' new status only after their webhook jobs ran (longer than the job's
                  AMLRELAY_VERIFY_LAG): verification fails them "not yet", and the sweep confirms them later
  none            the control: nothing fails

Verification against AML is on (AMLRELAY_VERIFY, the deployed default): every job and sweep reads each
event's run or model version back from an AML stand-in that holds what AML emitted.

Every event is also journaled to an Azurite Storage queue (once per matching journal subscription, Base64 and
plain JSON alternately, as Event Grid's encoding is documented both ways). Then the scheduled replay runbook
runs on the virtual clock, every --sweep-interval minutes (infra/: sweepIntervalMinutes, 15 by default):
`amlrelay sweep`, then `amlrelay replay --stale --failed` — in process, with the ledger's clock moved forward
(nothing sleeps). The schedule is put at its *worst phase* for each fault: its first run comes 1 minute before
the lost event can be taken (its journal message is still inside the grace period, or the dead job's claim is
not stale yet), so the first run must leave it and the next run, one interval later, must recover it. The
delay measured is that run's time; the bound is interval + grace (or + the stale window when the dead job
held a claim). Messages the sweep hides (kept for a retry, deferred for the grace period) are hidden on the
virtual clock too: a hide no longer than the interval has run out by the next run (the bench refuses longer
ones, which would skip a run). Finally, 25 h later, every dead letter has been written and replay runs again.

Figures per fault: outcomes with exactly one ADO run, doubled, lost, reported with a reason; what recovered
them; the recovery delay (measured at the worst phase, and its bound); and, as the baseline in the same run,
how many would have been lost without the journal (no run, no dead letter, no ledger record for replay to
find). Then the schedule's cost: replay-runbook jobs per month at this interval, and Automation job minutes.

Usage: .venv/bin/python bench/boundary.py [--quick] [--events N] [--sweep-interval {15,20,30,60}]
Exit status: 0 every requirement holds, 1 one does not, 2 the bench could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _boundary_eventgrid import EventGrid  # noqa: E402
from _exactly_once_common import (  # noqa: E402
    CONN_VAR,
    PAT_KEYS,
    BenchError,
    Verdict,
    apply_env,
    clear_faults,
    no_delay,
    note,
    say,
)
from _exactly_once_events import KINDS, SCHEMAS, bench_routes, identity, make_event, run_identity  # noqa: E402
from azure.storage.blob import ContainerClient  # noqa: E402
from azure.storage.queue import QueueClient  # noqa: E402
from exactly_once import azurite  # noqa: E402
from tests.infra.test_subscriptions import eventgrid_matches  # noqa: E402
from tests.servers.automation import AutomationServer  # noqa: E402
from tests.stack import RUNBOOK, Stack, local_stack  # noqa: E402

from amlrelay import ledger as ledger_module  # noqa: E402
from amlrelay.cli import main as cli  # noqa: E402
from amlrelay.journal import poison_name, sweep  # noqa: E402
from amlrelay.ledger import Ledger  # noqa: E402
from amlrelay.routes import load_routes  # noqa: E402
from amlrelay.runbook import build_relay  # noqa: E402
from amlrelay.settings import resolve  # noqa: E402
from amlrelay.subscriptions import subscriptions_for  # noqa: E402

INTERVALS = (15, 20, 30, 60)  # infra/: sweepIntervalMinutes (60 / N offset hourly Automation schedules)
HOURS_PER_MONTH = 730
# Automation's price for job run time: NOT verified from an authoritative stored copy (see README "Across the
# webhook boundary"). The 500 free minutes per month are in a Microsoft-published cost estimate (2020); the
# per-minute price is an assumption, as is one billed minute per job (sandbox start + a short sweep).
FREE_JOB_MINUTES = 500
PRICE_PER_JOB_MINUTE = 0.002  # USD, ASSUMED
BILLED_MINUTES_PER_JOB = 1.0  # ASSUMED: the sandbox start cannot be measured here


class VirtualHides:
    """The journal queue as the sweep sees it on the virtual clock: a message the sweep hides (kept for a
    retry, deferred until the grace period is over) is hidden for virtual time, which has passed by the next
    scheduled run. Azurite's real visibility timeout would still hide it (seconds of real time pass, not
    minutes). A hide longer than the interval would skip a run in Azure: refused, the bench would lie."""

    def __init__(self, queue: QueueClient, interval: timedelta) -> None:
        self._queue, self._interval = queue, interval
        self.longest = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queue, name)

    def update_message(self, message: Any, *, visibility_timeout: int, content: Any = None) -> Any:
        self.longest = max(self.longest, float(visibility_timeout))
        if visibility_timeout > self._interval.total_seconds():
            raise BenchError(f"the sweep hid a message for {visibility_timeout} s, longer than the "
                             f"{self._interval.total_seconds():.0f} s interval: it would miss the next run")
        return self._queue.update_message(message, visibility_timeout=0, content=content)


@dataclass(frozen=True)
class Fault:
    name: str
    job: str = "none"
    webhook: str = ""  # expired | deleted | throttled
    ado_refuses: bool = False
    claims: bool = False  # the dead job left a claim: the sweep must wait until it is stale
    arm_lags: bool = False  # ARM shows the runs' new status only after the webhook jobs (verification "not yet")


FAULTS = (
    Fault("none"), Fault("before-imports", job="before-imports"), Fault("bad-settings", job="bad-settings"),
    Fault("before-claim", job="before-claim"), Fault("after-claim", job="after-claim", claims=True),
    Fault("after-ado", job="after-ado", claims=True), Fault("webhook-expired", webhook="expired"),
    Fault("webhook-deleted", webhook="deleted"), Fault("throttled", webhook="throttled"),
    Fault("ado-refuses", ado_refuses=True), Fault("arm-lags", arm_lags=True),
)


FAULT_BY_NAME = {f.name: f for f in FAULTS}


@dataclass
class Row:
    fault: str
    events: int
    answers: str
    jobs: str
    lost_without_journal: int
    once: int = 0
    doubled: int = 0
    lost: int = 0
    reported: int = 0
    recovered_by: str = ""
    delay: str = ""
    final_once: int = 0
    measured: float | None = None  # minutes: the scheduled run that recovered (or recorded) the last event
    bound: float | None = None


@contextlib.contextmanager
def later(offset: timedelta) -> Iterator[datetime]:
    """The ledger's clock moved ``offset`` forward (as if the scheduled run came then); yields that time."""
    original = ledger_module._now
    ledger_module._now = lambda: original() + offset
    try:
        yield datetime.now(timezone.utc) + offset
    finally:
        ledger_module._now = original


def runs_per_identity(stack: Stack) -> Counter[tuple[str, ...]]:
    return Counter(ident for run in stack.ado.runs if (ident := run_identity(run)) is not None)


def replay_cli(*args: str) -> tuple[int, list[dict[str, Any]]]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli(["replay", "--json", *args])
    return code, [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]


def run_fault(fault: Fault, stack: Stack, conn: str, routes_path: Path, per_fault: int, section: int,
              verdict: Verdict, interval: timedelta, run_seconds: list[float]) -> Row:
    tag = f"b{section}{uuid.uuid4().hex[:6]}"
    table, queue_name, container = f"bd{tag}", f"bj-{tag}", f"bdl{tag}"
    Ledger.from_connection_string(conn, table=table).ensure_table()
    journal = QueueClient.from_connection_string(conn, queue_name)
    poison = QueueClient.from_connection_string(conn, poison_name(queue_name))
    dead = ContainerClient.from_connection_string(conn, container)
    journal.create_queue()
    poison.create_queue()
    dead.create_container()
    env = {k: v for k, v in stack.env().items() if k not in PAT_KEYS}
    env.update({"AMLRELAY_LEDGER": "true", CONN_VAR: conn, "AMLRELAY_LEDGER_TABLE": table, "AMLRELAY_TIMEOUT": "30",
                "AMLRELAY_JOURNAL_QUEUE": queue_name, "AMLRELAY_DEADLETTER_CONTAINER": container})
    routes = load_routes(routes_path)
    journal_subs = subscriptions_for(routes, handler="journal")
    events = [make_event(identity(KINDS[n % len(KINDS)], tag, n), SCHEMAS[n % 2]) for n in range(per_fault)]
    idents = [identity(KINDS[n % len(KINDS)], tag, n) for n in range(per_fault)]
    assert stack.aml is not None
    stack.emitted(events)  # AML holds what it emitted: verification confirms every genuine event
    lagging = [i for i in idents if fault.arm_lags and i[0] in ("run_completed", "run_failed")]
    for ident in lagging:  # the event beat ARM, by longer than the job's AMLRELAY_VERIFY_LAG
        stack.aml.set_status(ident[1], "Running")
    with AutomationServer(RUNBOOK, lambda: dict(env), workers=2) as automation:
        grid = EventGrid(automation.webhook_url, journal, dead)
        if fault.ado_refuses:
            stack.ado.fail(404, times=1_000_000)
        automation.expired = fault.webhook == "expired"
        automation.deleted = fault.webhook == "deleted"
        if fault.job != "none":
            automation.job_fault(fault.job, times=per_fault)
        deliveries = []
        for n, event in enumerate(events):
            if fault.webhook == "throttled":
                automation.throttle(2)
            as_eg = {**event, "eventType": event.get("eventType") or event.get("type")}  # CloudEvents: type
            copies = sum(1 for s in journal_subs if eventgrid_matches(as_eg, s))
            deliveries.append(grid.publish(event, journal_copies=copies, base64_message=n % 2 == 0))
        automation.wait()
        for ident in lagging:  # ARM has caught up by the time the sweep runs
            stack.aml.set_status(ident[1], "Completed" if ident[0] == "run_completed" else ident[2])
        jobs = Counter(str(j.exit_code) for j in automation.jobs)
        failed = next((j for j in automation.jobs if j.exit_code != 0), None)
        if fault.job == "none" and not fault.ado_refuses and not fault.arm_lags and failed is not None:
            note(f"unexpected job failure: {(failed.stdout + failed.stderr)[-800:]}")
    answers = Counter(str(d.statuses[-1]) for d in deliveries)
    before = runs_per_identity(stack)
    ledger = Ledger.from_connection_string(conn, table=table)
    recorded = {r.event_id for r in ledger.recent(10_000)}
    dead_lettered = {d.event_id for d in deliveries if d.dead_lettered_at is not None}
    lost_without = sum(1 for ident, event in zip(idents, events, strict=True) if before[ident] == 0
                       and event["id"] not in recorded and event["id"] not in dead_lettered)
    # The scheduled replay runbook (sweep the journal, then replay) at its worst phase for this fault: the
    # first run 1 minute before the lost events can be taken, the next one interval later.
    apply_env(env)
    settings = resolve({}, env=env)
    relay = build_relay(settings, routes)
    grace, stale = timedelta(seconds=settings.journal_grace), timedelta(seconds=settings.ledger_stale_after)
    window = stale if fault.claims else grace
    first = window - timedelta(minutes=1)
    hiding = VirtualHides(journal, interval)
    report = None
    done_before = {e for e, state in _states(ledger).items() if state == "triggered"}
    pending = [e["id"] for e in events if e["id"] not in done_before]  # lost, or claimed by a dead job
    recorded_at: dict[str, timedelta] = {}
    swept: set[str] = set()
    replay_code, replayed = 0, list[dict[str, Any]]()
    for tick in (first, first + interval):
        with later(tick) as at:
            grid.flush_dead_letters(tick.total_seconds())
            began = time.perf_counter()
            report = sweep(hiding, relay, poison=poison, grace=grace,  # type: ignore[arg-type]
                           max_dequeues=settings.journal_max_dequeues, retry_after=settings.journal_retry_after,
                           now=_clock(at))
            replay_code, replayed = replay_cli("--stale", "--failed")
            run_seconds.append(time.perf_counter() - began)
        states = _states(ledger)
        for event_id in pending:
            if states.get(event_id) == "triggered" and event_id not in recorded_at:
                recorded_at[event_id] = tick
        swept |= {o.event_id for o in report.outcomes if o.outcome == "triggered"}
        if tick == first:  # the worst phase: the sweep may take nothing yet (too young, or claim not stale);
            # only replay of a dead letter Event Grid wrote by now (a 400 is not retried) may recover one.
            verdict.require(not swept, f"{fault.name}: the sweep took an event before it could be taken")
    assert report is not None
    after = runs_per_identity(stack)
    failing = {o.event_id: o.reason for o in report.outcomes if o.outcome in ("failed", "rejected")}
    kept = int(journal.get_queue_properties().approximate_message_count or 0)
    kept += int(poison.get_queue_properties().approximate_message_count or 0)
    row = Row(fault.name, per_fault, _fmt(answers), _fmt(jobs), lost_without)
    for ident, event in zip(idents, events, strict=True):
        runs = after[ident]
        if runs == 1:
            row.once += 1
        elif runs > 1:
            row.doubled += 1
        elif event["id"] in failing and kept > 0:
            row.reported += 1  # still in the journal (or moved aside), with the reason in the sweep's report
        else:
            row.lost += 1
    recovered_webhook = sum(1 for i in idents if before[i] == 1)
    recovered_later = row.once - recovered_webhook
    bound = (interval + window).total_seconds() / 60
    measured = max(recorded_at.values(), default=timedelta(0)).total_seconds() / 60
    retried = max((d.delivered_at or 0) for d in deliveries)
    parts = []
    if recovered_webhook and fault.claims:  # the job started the run and died: the sweep adopted it
        parts.append(f"job started, sweep recorded {recovered_webhook}")
    elif recovered_webhook:
        parts.append(f"webhook job {recovered_webhook}" + (f" (Event Grid retry, +{retried:.0f} s)" if retried else ""))
    by_sweep = sum(1 for e in events if e["id"] in swept and e["id"] in pending)
    if by_sweep:
        parts.append(f"sweep {by_sweep}")
    if recovered_later - by_sweep > 0:
        parts.append(f"dead-letter replay {recovered_later - by_sweep}")
    row.recovered_by = ", ".join(parts) or "-"
    row.delay = "-"
    if recovered_later:
        row.delay = f"{measured:.0f} min (bound {bound:.0f})"
    elif row.once:
        row.delay = f"{retried:.0f} s" + (f" (recorded at {measured:.0f} min, bound {bound:.0f})" if fault.claims
                                          else "")
    if recorded_at:
        verdict.require(measured <= bound, f"{fault.name}: recovered after {measured:.0f} min > {bound:.0f}")
        row.measured = measured
        row.bound = bound
    # 25 h later: every dead letter written (the deleted webhook's after 24 h), replayed again: still once.
    with later(timedelta(hours=25)):
        grid.flush_dead_letters(float("inf"))
        replay_cli("--stale")
    final = runs_per_identity(stack)
    row.final_once = sum(1 for i in idents if final[i] == 1)
    verdict.require(row.lost == 0, f"{fault.name}: {row.lost} lost")
    verdict.require(row.doubled == 0 and all(final[i] <= 1 for i in idents), f"{fault.name}: doubled")
    expected = per_fault if not fault.ado_refuses else 0
    verdict.require(row.once == expected and row.final_once == expected,
                    f"{fault.name}: {row.once} exactly once after the sweep, {row.final_once} at the end")
    if fault.ado_refuses:
        verdict.require(row.reported == per_fault, f"{fault.name}: {row.reported} reported")
        clear_faults(stack.ado)
    if fault.name in ("none", "throttled"):
        verdict.require(recovered_webhook == per_fault, f"{fault.name}: {recovered_webhook} started by the job")
    note(f"{fault.name}: sweep {report.summary()}; replay exit {replay_code}, {len(replayed)} outcomes")
    for client in (journal, poison):
        client.delete_queue()
    dead.delete_container()
    return row


def _clock(at: datetime) -> Callable[[], datetime]:
    return lambda: at


def _states(ledger: Ledger) -> dict[str, str]:
    """event id -> ledger state (an event taken by two routes shows one of its records' states)."""
    return {r.event_id: r.state for r in ledger.recent(10_000)}


def _fmt(counter: Counter[str]) -> str:
    return " ".join(f"{k}x{v}" for k, v in sorted(counter.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/boundary.py", description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="2 events per fault (the test suite's version)")
    parser.add_argument("--events", type=int, help="events per fault (default 20; 2 with --quick)")
    parser.add_argument("--sweep-interval", type=int, choices=INTERVALS, default=15, metavar="MINUTES",
                        help="minutes between replay-runbook runs, as infra/'s sweepIntervalMinutes "
                             f"({', '.join(map(str, INTERVALS))}; default 15)")
    args = parser.parse_args(argv)
    interval = timedelta(minutes=args.sweep_interval)
    run_seconds: list[float] = []
    per_fault = args.events or (2 if args.quick else 20)
    verdict = Verdict()
    began = time.perf_counter()
    rows: list[Row] = []
    try:
        with tempfile.TemporaryDirectory(prefix="amlrelay-boundary-") as tmp, azurite() as (conn, where):
            routes_path = Path(tmp) / "routes.json"
            routes_path.write_text(json.dumps(bench_routes(), indent=2), encoding="utf-8")
            with local_stack(routes_path, verify=True) as stack:  # AMLRELAY_VERIFY on, as deployed
                no_delay(stack)
                say(f"amlrelay boundary bench: {per_fault} events per fault, {len(FAULTS)} faults; storage: {where}")
                say("Event Grid: modelled (retries, 400/401/403/413 not retried, dead letters); Automation webhook: "
                    "tests/servers/automation.py (202 when queued, the runbook as a subprocess);")
                say(f"replay runbook (sweep + replay --stale --failed) every {args.sweep_interval} min on a virtual "
                    "clock, at its worst phase; settings: journal grace 10 min, claims stale after 30 min; "
                    "verification against AML on (AML stand-in holding the events' runs and models).\n")
                for section, fault in enumerate(FAULTS):
                    rows.append(run_fault(fault, stack, conn, routes_path, per_fault, section, verdict, interval,
                                          run_seconds))
                if stack.ado.errors:
                    raise BenchError("the ADO stand-in crashed:\n" + stack.ado.errors[0][-1500:])
    except BenchError as exc:
        say(f"BENCH ERROR: {exc}")
        return 2
    headers = ("fault", "events", "webhook answers", "job exits", "lost w/o journal", "once", "doubled", "lost",
               "reported", "recovered by", "recovery delay", "once at +25 h")
    table = [(r.fault, str(r.events), r.answers, r.jobs, str(r.lost_without_journal), str(r.once), str(r.doubled),
              str(r.lost), str(r.reported), r.recovered_by, r.delay, str(r.final_once)) for r in rows]
    from amlrelay.record import table as render

    say(render(table, headers, width=60))
    total = sum(r.events for r in rows)
    without = sum(r.lost_without_journal for r in rows)
    say(f"\nbaseline, same run: without the journal {without} of {total} events would be lost silently "
        f"({100 * without / total:.0f} %); with it: {sum(r.lost for r in rows)} lost, "
        f"{sum(r.doubled for r in rows)} doubled, {sum(r.reported for r in rows)} reported with a reason.")
    lost_rows = [r for r in rows if r.measured is not None and not FAULT_BY_NAME[r.fault].claims]
    claim_rows = [r for r in rows if r.measured is not None and FAULT_BY_NAME[r.fault].claims]
    for label, group in (("lost before its claim", lost_rows), ("the dead job held a claim", claim_rows)):
        if group:
            say(f"recovery delay at {args.sweep_interval}-min sweeps, worst phase, {label}: "
                f"{max(r.measured or 0 for r in group):.0f} min measured, "
                f"bound {max(r.bound or 0 for r in group):.0f} min")
    jobs_month = HOURS_PER_MONTH * 60 / args.sweep_interval
    minutes = jobs_month * BILLED_MINUTES_PER_JOB
    cost = max(0.0, minutes - FREE_JOB_MINUTES) * PRICE_PER_JOB_MINUTE
    schedules = f"{60 // args.sweep_interval} hourly schedule" + ("s" if args.sweep_interval < 60 else "")
    say(f"schedule cost: {jobs_month:.0f} replay-runbook jobs a month ({schedules}); "
        f"in-process sweep + replay per run {min(run_seconds):.2f}-{max(run_seconds):.2f} s (sandbox start not "
        f"included); at an ASSUMED {BILLED_MINUTES_PER_JOB:.0f} billed minute per job: {minutes:.0f} job minutes, "
        f"{FREE_JOB_MINUTES} free, ${cost:.2f} a month at an ASSUMED ${PRICE_PER_JOB_MINUTE}/min")
    elapsed = time.perf_counter() - began
    if verdict.failures:
        say(f"FAIL ({elapsed:.0f} s): " + "; ".join(verdict.failures))
        return 1
    say(f"PASS ({elapsed:.0f} s): 0 lost, 0 doubled; every event triggered exactly once or reported with a reason")
    return 0


if __name__ == "__main__":
    sys.exit(main())
