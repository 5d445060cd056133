"""Waiting for AML jobs: a poller over :class:`JobsClient` with backoff, two deadlines, heartbeats, cancel
on timeout, fail-fast over several jobs, hand-off, and a continuation token.

Why each rule:

* **Two deadlines.** Time waiting for compute (NotStarted..Queued) says nothing about the training; a job
  stuck 3 h in the queue of a busy cluster and a job that trains 3 h need different limits, so
  ``queue_timeout`` limits the time a job spends in queue states, summed over its queue spells (a job
  preempted on low-priority compute goes back to Queued after hours of training; counting from its first
  queue spell would cancel it at once), and ``run_timeout`` counts from the first time it is seen past the
  queue (so time re-queued after a preemption counts against the run deadline too). Both are stored (as
  wall-clock epochs) in the continuation token, so a wait
  resumed by a later ADO job keeps counting instead of starting over.
* **Backoff with a cap.** The interval grows by ``backoff`` while nothing changes (a 6 h training needs no
  5 s polling) and drops back to ``poll_min`` on every status change, because a change (Running ->
  Finalizing) means the end may be near. Sleeps are cut short for heartbeats, deadlines and the hand-off.
* **Heartbeat.** A line at least every ``heartbeat`` s (<= 60), independent of the poll interval: a silent
  step looks hung, and the person watching the ADO log wants the status, the elapsed time and the next poll.
* **Statuses.** Only Completed, Failed and Canceled end a job. NotResponding may return to any earlier state
  (spec), so it is waited on, up to ``not_responding_timeout``; Paused only ends the wait with
  ``paused_is_final``; Unknown (or a status newer than the spec) is logged and waited on.
* **Transient errors** (throttling, 5xx, no answer) are reported and polled through; the deadlines still
  apply. Anything else (401, 403, 404) is raised: waiting cannot fix it.
* **Hand-off** is a decision of this agent job (``handoff_after`` counts from this invocation): the jobs
  keep running and the async relay takes over; the caller tags them (see ``_handoff``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._client import Job, JobsClient, check_job_name
from ._contract import WaitOutcome
from ._errors import AmlError
from ._status import FINAL_STATES, QUEUE_STATES, JobStatus
from ._token import JobClock, WaitState, decode, encode
from ._wait_types import Clock, JobResult, Report, SystemClock, WaitOptions, WaitResult, quiet
from ._workspace import Workspace

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

_SEVERITY = (WaitOutcome.FAILED, WaitOutcome.CANCELED, WaitOutcome.TIMED_OUT, WaitOutcome.HANDED_OFF,
             WaitOutcome.COMPLETED)
_FINAL_OUTCOME = {JobStatus.COMPLETED: WaitOutcome.COMPLETED, JobStatus.FAILED: WaitOutcome.FAILED,
                  JobStatus.CANCELED: WaitOutcome.CANCELED}


@dataclass
class _Live:
    clock: JobClock
    result: JobResult
    not_responding_since: float | None = None
    timed_out: str = ""
    cancel_until: float | None = None


class WaitPoller:
    """Waits on the jobs of one :class:`WaitState`; ``result()`` blocks, ``poll()`` does one round."""

    def __init__(self, client: JobsClient, state: WaitState, options: WaitOptions, *, clock: Clock,
                 report: Report = quiet) -> None:
        options.check()
        self._client, self._state, self._options, self._clock, self._report = client, state, options, clock, report
        self._live = [_Live(c, JobResult(c.name)) for c in state.jobs]
        now = clock.time()
        self._session_start = min(options.handoff_from, now) if options.handoff_from is not None else now
        self._interval = options.poll_min
        self._polls = 0
        self._done = False
        self._handed_off = False

    # -- azure-core poller surface --------------------------------------------------------------------------
    def continuation_token(self) -> str:
        return encode(self._state)

    def done(self) -> bool:
        return self._done

    def status(self) -> str:
        return str(self._outcome()) if self._done else "waiting"

    def result(self) -> WaitResult:
        last_beat = self._clock.time()
        fresh = self._polls > 0  # the caller has just polled (e.g. to publish the token): no second GET
        while True:
            if not fresh:
                self.poll()  # also a last look before handing off: the job may have just finished
            fresh = False
            if self._done:
                break
            if self._handoff_due(self._clock.time()):
                self._hand_off()
                break
            now = self._clock.time()
            wake = min([now + self._interval, *self._alarms(now)])
            while (now := self._clock.time()) < wake:
                if now - last_beat >= self._options.heartbeat - 1e-9:
                    self._heartbeat(now, wake)
                    last_beat = now
                self._clock.sleep(max(0.0, min(wake, last_beat + self._options.heartbeat) - now))
        now = self._clock.time()
        return WaitResult(self._outcome(), [live.result for live in self._live], self.continuation_token(),
                          now - self._state.started, self._polls)

    # -- one round ------------------------------------------------------------------------------------------
    def poll(self) -> None:
        if self._done:
            return
        self._polls += 1
        changed = errored = False
        for live in self._pending():
            try:
                job = self._client.get_job(live.clock.name)
            except AmlError as exc:
                if not exc.retryable:
                    raise
                errored = True
                self._report("warning", f"{live.clock.name}: could not read the status ({exc.message}); "
                             "polling on", live.result)
                self._check_deadlines(live, self._clock.time())
                continue
            changed |= self._observe(live, job, self._clock.time())
        if errored:
            self._interval = min(self._interval * 2, self._options.poll_max)
        elif changed:
            self._interval = self._options.poll_min
        else:
            self._interval = min(self._interval * self._options.backoff, self._options.poll_max)
        decided = [live.result.outcome for live in self._live if live.result.outcome is not None]
        failed = self._options.fail_fast and any(o is not WaitOutcome.COMPLETED for o in decided)
        if failed and self._options.cancel_on_fail_fast:
            self._cancel_pending()
        if not self._pending() or failed:
            self._done = True

    def _cancel_pending(self) -> None:
        """Fail-fast gave up on the other jobs: without a cancel they would train on, unwatched, for nothing."""
        for live in self._pending():
            try:
                self._client.cancel_job(live.clock.name)
            except AmlError as exc:
                self._report("warning", f"{live.clock.name}: cancel failed: {exc.message}; it keeps running",
                             live.result)
                continue
            live.result.outcome = WaitOutcome.CANCELED
            live.result.reason = "canceled by amlrelay: another job did not complete (--fail-fast)"
            self._report("cancel", f"{live.clock.name}: cancel requested ({live.result.reason})", live.result)

    def _observe(self, live: _Live, job: Job, now: float) -> bool:
        res, clock = live.result, live.clock
        first = not res.studio_url
        res.studio_url, res.experiment_name, res.tags = job.studio_url, job.experiment_name, job.tags
        changed = job.status_text != clock.last_status or first
        res.status, res.status_text, clock.last_status = job.status, job.status_text, job.status_text
        if first:
            self._report("found", f"{job.name}: {job.status_text or 'no status'} in experiment "
                         f"{job.experiment_name} - {job.studio_url}", res)
        elif changed:
            self._report("status", f"{job.name}: {job.status_text} after {_span(now - self._state.started)}", res)
        if job.status in QUEUE_STATES:
            clock.queued_since = clock.queued_since if clock.queued_since is not None else now
        else:
            if clock.queued_since is not None:  # a queue spell ended: keep its length, start none until re-queued
                clock.queued_before, clock.queued_since = clock.queued_for(now), None
            if job.status not in FINAL_STATES:
                clock.running_since = clock.running_since if clock.running_since is not None else now
        if job.status is JobStatus.UNKNOWN and changed:
            self._report("warning", f"{job.name}: status {job.status_text or '(none)'!r} is not one amlrelay knows;"
                         " waiting on", res)
        live.not_responding_since = (live.not_responding_since or now) if job.status is \
            JobStatus.NOT_RESPONDING else None
        if job.status in FINAL_STATES:
            res.outcome = WaitOutcome.TIMED_OUT if live.timed_out else _FINAL_OUTCOME[job.status]
            res.reason = f"{live.timed_out}; then {job.status}" if live.timed_out else str(job.status)
        elif job.status is JobStatus.PAUSED and self._options.paused_is_final and not live.timed_out:
            res.outcome, res.reason = WaitOutcome.FAILED, "Paused (--paused-is-final)"
        else:
            self._check_deadlines(live, now)
        return changed

    def _check_deadlines(self, live: _Live, now: float) -> None:
        if live.timed_out:
            if live.cancel_until is None or now >= live.cancel_until:
                live.result.outcome = WaitOutcome.TIMED_OUT
                live.result.reason = live.timed_out + ("; cancel requested, not confirmed within "
                                                      f"{_span(self._options.cancel_grace)}"
                                                      if live.cancel_until is not None else "")
            return
        reason = self._overdue(live, now)
        if not reason:
            return
        live.timed_out = reason
        self._report("timeout", f"{live.clock.name}: {reason}", live.result)
        if self._options.cancel_on_timeout and live.result.status is not JobStatus.CANCEL_REQUESTED:
            try:
                self._client.cancel_job(live.clock.name)
            except AmlError as exc:
                self._report("warning", f"{live.clock.name}: cancel failed: {exc.message}", live.result)
                live.result.outcome, live.result.reason = WaitOutcome.TIMED_OUT, f"{reason}; cancel failed"
                return
            live.timed_out += "; canceled by amlrelay"
            live.cancel_until = now + self._options.cancel_grace
            self._interval = self._options.poll_min
            self._report("cancel", f"{live.clock.name}: cancel requested", live.result)
        else:
            live.result.outcome, live.result.reason = WaitOutcome.TIMED_OUT, reason

    def _overdue(self, live: _Live, now: float) -> str:
        opts, clock, status = self._options, live.clock, live.result.status
        qt, rt = self._state.queue_timeout, self._state.run_timeout
        if status in QUEUE_STATES and qt is not None and clock.queued_since is not None \
                and clock.queued_for(now) >= qt:
            return f"still {status} after {_span(clock.queued_for(now))} in the queue (queue deadline {_span(qt)})"
        if status not in QUEUE_STATES and rt is not None and clock.running_since is not None \
                and now - clock.running_since >= rt:
            return f"still {status} after {_span(now - clock.running_since)} running (run deadline {_span(rt)})"
        if live.not_responding_since is not None and opts.not_responding_timeout is not None \
                and now - live.not_responding_since >= opts.not_responding_timeout:
            return f"NotResponding for {_span(now - live.not_responding_since)}"
        return ""

    # -- scheduling -----------------------------------------------------------------------------------------
    def _pending(self) -> list[_Live]:
        return [live for live in self._live if live.result.outcome is None]

    def _alarms(self, now: float) -> list[float]:
        """Moments worth waking up for before the next regular poll."""
        times: list[float] = []
        if self._options.handoff_after is not None:
            times.append(self._session_start + self._options.handoff_after)
        for live in self._pending():
            c = live.clock
            if self._state.queue_timeout is not None and c.queued_since is not None \
                    and live.result.status in QUEUE_STATES:
                times.append(c.queued_since + self._state.queue_timeout - c.queued_before)
            if self._state.run_timeout is not None and c.running_since is not None:
                times.append(c.running_since + self._state.run_timeout)
            if live.cancel_until is not None:
                times.append(live.cancel_until)
        return [t for t in times if t > now]

    def _handoff_due(self, now: float) -> bool:
        after = self._options.handoff_after
        return after is not None and now - self._session_start >= after and bool(self._pending())

    def _hand_off(self) -> None:
        now = self._clock.time()
        for live in self._pending():
            live.result.outcome = WaitOutcome.HANDED_OFF
            live.result.reason = f"still {live.result.status_text or live.result.status} after " \
                                 f"{_span(now - self._session_start)} on this agent"
            self._report("handoff", f"{live.clock.name}: {live.result.reason}; handing off", live.result)
        self._handed_off = self._done = True

    def _heartbeat(self, now: float, wake: float) -> None:
        parts = []
        for live in self._pending():
            c = live.clock
            phase = f"queued {_span(c.queued_for(now))}" if c.queued_since is not None else (
                f"running {_span(now - c.running_since)}" if c.running_since is not None else "not seen yet")
            parts.append(f"{c.name} {live.result.status_text or '?'} ({phase})")
        self._report("heartbeat", f"waiting {_span(now - self._state.started)}: " + ", ".join(parts)
                     + f"; next poll in {_span(max(0.0, wake - now))}", None)

    def _outcome(self) -> WaitOutcome:
        outcomes = {live.result.outcome for live in self._live if live.result.outcome is not None}
        if self._handed_off and not outcomes - {WaitOutcome.COMPLETED, WaitOutcome.HANDED_OFF}:
            return WaitOutcome.HANDED_OFF
        return next((o for o in _SEVERITY if o in outcomes), WaitOutcome.TIMED_OUT)


WAITER_TIMEOUT = 20.0
"""Seconds one GET may take. With the 60 s heartbeat, a hung connection must not eat more than a third of it."""


def waiter_client(workspace: str | Workspace, credential: TokenCredential, **options: Any) -> JobsClient:
    """A :class:`JobsClient` for a waiter: no retries inside a request, a short timeout.

    Why: the session's retries (:func:`amlrelay.trigger.make_session`) sleep on the real clock inside one
    ``get_job``, honouring ``Retry-After`` up to 60 s, four times: under ARM throttling one poll could block
    for minutes with no heartbeat and overrun ``--handoff-after``. The poller already treats 429/5xx as "poll
    again later" with its own backoff, deadlines and heartbeats, so the retries belong there, not in urllib3.
    """
    return JobsClient(workspace, credential, retries=0, timeout=WAITER_TIMEOUT, **options)


def begin_wait(client: JobsClient, names: Sequence[str] = (), options: WaitOptions | None = None, *,
               continuation_token: str | None = None, clock: Clock | None = None,
               report: Report = quiet) -> WaitPoller:
    """Start (``names``) or resume (``continuation_token``) a wait; nothing is sent until ``poll``/``result``."""
    options = options or WaitOptions()
    clock = clock or SystemClock()
    if continuation_token:
        state = decode(continuation_token)
        if state.workspace.arm_path.lower() != client.workspace.arm_path.lower():
            raise AmlError(f"The continuation token is for workspace {state.workspace.arm_path}, not "
                           f"{client.workspace.arm_path}.", status=None,
                           hint="Resume with the same --workspace the wait started with.")
        extra = [n for n in names if n not in {j.name for j in state.jobs}]
        if extra:
            raise AmlError(f"Jobs {', '.join(extra)} are not in the continuation token.", status=None,
                           hint="Resume with the token alone; start a new wait for other jobs.")
        state.resumes += 1
    else:
        unique = list(dict.fromkeys(check_job_name(n) for n in names))
        if not unique:
            raise AmlError("No job to wait for.", status=None, hint="Name at least one job, or pass --resume TOKEN.")
        state = WaitState(client.workspace, [JobClock(n) for n in unique], clock.time())
    state.queue_timeout = options.queue_timeout if options.queue_timeout is not None else state.queue_timeout
    state.run_timeout = options.run_timeout if options.run_timeout is not None else state.run_timeout
    return WaitPoller(client, state, options, clock=clock, report=report)


def _span(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
