"""The sweep: drain the journal queue through the same relay as the webhook job.

Why this exists: an Automation webhook answers 202 as soon as the job is *queued*, so Event Grid counts the
event delivered even when the job then dies before it claims the ledger (packages still importing, a
missing setting, a sandbox failure, an expired webhook, throttling). Every routed event is therefore also
written by Event Grid to a Storage queue (the journal), and this sweep hands each message to the relay:

* an event the webhook job already handled is a ledger ``duplicate`` and its message is deleted;
* one that was lost is triggered now, and its message deleted;
* ``skipped`` and ``rejected`` are final too (the reason is reported); a message with a ``rejected`` event is
  not deleted but moved aside with the reason (a durable trace: a genuine event AML did not confirm, e.g. a
  v1 run Jobs_Get does not return, can be triggered later with ``amlrelay sweep --poison`` and
  AMLRELAY_VERIFY=false, once an operator has checked it);
* a message whose event ``failed``, or whose claim another job still holds (:data:`amlrelay.relay.BUSY`),
  stays in the queue, hidden for ``retry_after`` seconds; a failure is counted in the message itself
  (:data:`._message.FAILURES_KEY`; waiting — grace, a held claim — is not a failure, though the queue's
  dequeue count counts it), and the ``max_dequeues``-th *failed* attempt *moves it aside* to the poison
  queue with the reason, and reports it — never deleted unseen;
* a message younger than ``grace`` is left (hidden until it is old enough) so that the sweep does not race
  the webhook job needlessly. Correctness does not depend on it: the ledger claim decides who triggers.

Deleting only after the relay returned means a sweep that dies midway leaves its messages in the queue, and
the next sweep sees them again (the ledger makes that harmless).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Literal

from ..errors import AmlRelayError
from ..events import parse_events
from ..record import Outcome, exit_code
from ..relay import BUSY, Relay
from ._message import JournalMessageError, decode_message, failures_of, poison_wrapper, with_failures

if TYPE_CHECKING:
    from azure.storage.queue import QueueClient, QueueMessage

Action = Literal["deleted", "kept", "deferred", "moved-aside", "dry-run"]
FINAL = frozenset({"triggered", "duplicate", "skipped", "rejected"})
LEASE = 900  # seconds a received message stays hidden while its event is handled (longer than one attempt)
TAKEN_OVER = "handled, but another sweep holds the message now"
"""Reason of a message this sweep handled whose lease ran out before the delete: the other sweep that holds
it finds a ledger duplicate and deletes it. Not a failure (overlapping sweeps)."""
REJECTED = "rejected, kept for review"
"""Reason prefix of a message moved aside because an event in it was rejected (see the module docstring)."""
Later = tuple["QueueMessage", float, "str | None"]  # a kept message: hide it this long, with this content


class JournalError(AmlRelayError):
    """The journal queue itself cannot be used (not the fault of one message)."""


@dataclass(frozen=True)
class MessageResult:
    message_id: str
    inserted_on: datetime | None
    dequeue_count: int
    action: Action
    outcomes: tuple[Outcome, ...] = ()
    reason: str | None = None


@dataclass
class SweepReport:
    queue: str
    results: list[MessageResult] = field(default_factory=list)

    def count(self, action: Action) -> int:
        return sum(1 for r in self.results if r.action == action)

    @property
    def outcomes(self) -> list[Outcome]:
        return [o for r in self.results for o in r.outcomes]

    def exit_code(self) -> int:
        """As a runbook job's: 1 when an event failed or a message had to be moved aside, else the outcomes'."""
        if self.count("moved-aside") or any(r.action == "kept" and r.reason not in (BUSY, TAKEN_OVER)
                                            for r in self.results):
            return max(1, exit_code(self.outcomes))
        return exit_code(self.outcomes)

    def summary(self) -> str:
        parts = [f"{self.count('deleted')} done and deleted", f"{self.count('kept')} kept for a retry",
                 f"{self.count('deferred')} left to the webhook job (younger than the grace period)",
                 f"{self.count('moved-aside')} moved aside"]
        if self.count("dry-run"):
            parts = [f"{self.count('dry-run')} shown (dry run: nothing sent, nothing deleted)"]
        return f"journal {self.queue}: {len(self.results)} messages: " + ", ".join(parts)


def finished(outcomes: list[Outcome]) -> bool:
    """Every event of the message reached a final outcome (a held claim is not final: its holder may die)."""
    return all(o.outcome in FINAL and not (o.outcome == "duplicate" and (o.reason or "").startswith(BUSY))
               and not (o.outcome == "triggered" and o.reason) for o in outcomes)


def sweep(queue: QueueClient, relay: Relay, *, poison: QueueClient | None, grace: timedelta = timedelta(minutes=10),
          max_dequeues: int = 5, retry_after: float = 600.0, limit: int | None = None,
          now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> SweepReport:
    """Drain ``queue`` once (see the module docstring). ``limit`` caps the messages handled in this run."""
    report = SweepReport(queue.queue_name)
    seen: set[str] = set()
    if relay.dry_run:
        for message in _call(queue, "peek at", lambda: queue.peek_messages(max_messages=32)):
            report.results.append(_preview(relay, message))
        return report
    later: list[Later] = []  # kept messages stay leased until the run ends, so none
    try:                                            # comes back (and is dequeued again) within one run
        while limit is None or len(report.results) < limit:
            message = _call(queue, "receive from", lambda: queue.receive_message(visibility_timeout=LEASE))
            if message is None or message.id in seen:  # seen: our lease ran out in a very long run
                break
            seen.add(message.id)
            report.results.append(_one(queue, poison, relay, message, later, grace=grace,
                                       max_dequeues=max_dequeues, retry_after=retry_after, now=now()))
    finally:
        for message, seconds, content in later:
            _hide(queue, message, seconds, content)
    return report


def _one(queue: QueueClient, poison: QueueClient | None, relay: Relay, message: QueueMessage,
         later: list[Later], *,
         grace: timedelta, max_dequeues: int, retry_after: float, now: datetime) -> MessageResult:
    inserted = message.inserted_on
    count = int(message.dequeue_count or 0)
    age = now - inserted if inserted is not None else grace
    if age < grace:
        later.append((message, (grace - age).total_seconds(), None))
        return MessageResult(message.id, inserted, count, "deferred")
    try:
        events = decode_message(message.content)
    except JournalMessageError as exc:
        return _move_aside(queue, poison, message, reason=exc.message)
    outcomes = relay.handle(parse_events(events), raw=events)
    if finished(outcomes):
        refused = [o for o in outcomes if o.outcome == "rejected"]
        if refused and poison is not None:
            why = "; ".join(f"{o.route or o.event_type}: {o.reason}" for o in refused)
            moved = _move_aside(queue, poison, message, reason=f"{REJECTED}: {why}")
            return MessageResult(moved.message_id, inserted, count, moved.action, tuple(outcomes), moved.reason)
        return _delete(queue, message, outcomes)
    failing = [o for o in outcomes if o.outcome not in FINAL or (o.outcome == "triggered" and o.reason)]
    if not failing:  # only held claims: their holder finishes, or the claim goes stale and is taken over
        later.append((message, retry_after, None))
        return MessageResult(message.id, inserted, count, "kept", tuple(outcomes), BUSY)
    reason = "; ".join(f"{o.route or o.event_type}: {o.outcome}: {o.reason}" for o in failing)
    failures, original = failures_of(message.content)
    failures += 1
    counted = with_failures(original, failures, reason)
    if len(counted.encode("utf-8")) > _MAX_MESSAGE:  # no room to count in the message: count dequeues
        failures = max(failures, count)
    if failures >= max_dequeues:
        moved = _move_aside(queue, poison, message, reason=f"still failing after {failures} failed attempts "
                                                           f"({count} dequeues): {reason}")
        return MessageResult(moved.message_id, inserted, count, moved.action, tuple(outcomes), moved.reason)
    later.append((message, retry_after, counted))
    return MessageResult(message.id, inserted, count, "kept", tuple(outcomes), reason)


def _preview(relay: Relay, message: Any) -> MessageResult:
    try:
        events = decode_message(message.content)
    except JournalMessageError as exc:
        return MessageResult(message.id, message.inserted_on, int(message.dequeue_count or 0), "dry-run",
                             reason=exc.message)
    outcomes = relay.handle(parse_events(events), raw=events)
    return MessageResult(message.id, message.inserted_on, int(message.dequeue_count or 0), "dry-run",
                         tuple(outcomes))


def _delete(queue: QueueClient, message: QueueMessage, outcomes: list[Outcome]) -> MessageResult:
    try:
        queue.delete_message(message)
    except Exception as exc:
        if not _taken_over(exc):
            raise _queue_error(queue, "delete a message from", exc) from None
        # our lease ran out and another sweep received it (or deleted it): it finds a ledger duplicate
        return MessageResult(message.id, message.inserted_on, int(message.dequeue_count or 0), "kept",
                             tuple(outcomes), TAKEN_OVER)
    return MessageResult(message.id, message.inserted_on, int(message.dequeue_count or 0), "deleted",
                         tuple(outcomes))


def _move_aside(queue: QueueClient, poison: QueueClient | None, message: QueueMessage, *,
                reason: str) -> MessageResult:
    """Copy the message, untouched, to the poison queue with the reason; delete the original only after."""
    count = int(message.dequeue_count or 0)
    if poison is None:
        _hide(queue, message, LEASE)
        return MessageResult(message.id, message.inserted_on, count, "kept", (), f"{reason} (no poison queue)")
    failures, original = failures_of(message.content)
    wrapped = poison_wrapper(
        original, failedAttempts=failures,
        reason=reason[:2000], queue=queue.queue_name, messageId=message.id, dequeueCount=count,
        insertedOn=message.inserted_on.isoformat() if message.inserted_on else None,
        movedAt=datetime.now(timezone.utc).isoformat())
    try:
        _call(poison, "write to", lambda: poison.send_message(wrapped, time_to_live=-1))
    except JournalError as exc:  # e.g. the wrapper is over the 64 KB a message may hold: keep the original
        return MessageResult(message.id, message.inserted_on, count, "kept", (),
                             f"{reason} (and it could not be moved aside: {exc.message})")
    result = _delete(queue, message, [])
    if result.action != "deleted":
        return result
    return MessageResult(message.id, message.inserted_on, count, "moved-aside", (),
                         f"moved to {poison.queue_name}: {reason}")


def _hide(queue: QueueClient, message: QueueMessage, seconds: float, content: str | None = None) -> None:
    """Hide a kept message; ``content``: rewrite it too (its failure count), unless that would exceed what a
    message may hold (then :func:`_one` counts its dequeues instead), in which case it is hidden unchanged."""
    timeout = max(0, min(604_800, math.ceil(seconds)))
    if content is not None and len(content.encode("utf-8")) <= _MAX_MESSAGE:
        try:
            queue.update_message(message, content=content, visibility_timeout=timeout)
            return
        except Exception as exc:
            if _taken_over(exc):
                return
            # otherwise (e.g. the service refuses the larger content): hide it unchanged below
    try:
        queue.update_message(message, visibility_timeout=timeout)
    except Exception as exc:
        if not _taken_over(exc):  # else: our lease ran out and another sweep holds it now
            raise _queue_error(queue, "update a message in", exc) from None


def _taken_over(exc: Exception) -> bool:
    """The message is gone (404) or another receive gave it a new pop receipt (400 PopReceiptMismatch):
    another sweep holds it now."""
    from azure.core.exceptions import ResourceNotFoundError

    return isinstance(exc, ResourceNotFoundError) or getattr(exc, "error_code", None) == "PopReceiptMismatch"


_MAX_MESSAGE = 64 * 1024 - 1024  # a queue message holds 64 KiB; leave room for the request's own encoding


def _call(queue: QueueClient, what: str, action: Callable[[], Any]) -> Any:
    try:
        return action()
    except Exception as exc:
        raise _queue_error(queue, what, exc) from None


def _queue_error(queue: QueueClient, what: str, exc: Exception) -> JournalError:
    from azure.core.exceptions import AzureError

    if not isinstance(exc, AzureError):
        raise exc
    code = getattr(exc, "error_code", None) or getattr(exc, "status_code", None)
    text = (str(exc).strip().splitlines() or [""])[0][:300]
    hint = ("Check AMLRELAY_JOURNAL_QUEUE (and AMLRELAY_JOURNAL_QUEUE_URL), that infra/ deployed the journal, and "
            "that the handler's identity has 'Storage Queue Data Contributor' on the journal queue and 'Storage "
            "Queue Data Message Sender' on its poison queue. Without a journal, set AMLRELAY_JOURNAL=false.")
    return JournalError(f"Cannot {what} journal queue {queue.queue_name!r} ({code or type(exc).__name__}: {text}).",
                        hint=hint)
