"""The relay: event in → validate → route → verify → trigger → record, for every event of a delivery.

This is the one place the steps meet; each step lives in its own module and knows nothing of the others.
Handlers (the runbook, later the AML component) build a :class:`Relay` and feed it parsed events.

Exactly-once: before ADO is called, the (workspace, AML outcome, route) key is claimed in the ledger;
a duplicate delivery finds the claim and reports the original ADO run instead of starting another.
Nothing is triggered without a claim, so a ledger that cannot be reached fails the event, loudly.

Verification (``amlrelay.verify``, AMLRELAY_VERIFY) comes after routing, so an event no route takes costs
no AML read, and it confirms every tag/property the matched routes read. Before it, a read-only ledger
lookup answers a route already ``triggered`` for this outcome as a ``duplicate`` with no AML read (a
webhook job's event swept again, a redelivery), so duplicates cost nothing and an AML outage cannot keep
them failing. Verification comes before the claim, so an event AML refutes claims nothing and an event AML
could not be asked about is retried whole (journal, replay), verification included.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Protocol

from .errors import AdoError, AmlRelayError, LedgerError, TemplateError, UntrustedSourceError
from .events import Invalid, Parsed, Skipped
from .models import AmlEvent
from .reconcile import CannotReconcileError, find_started_run
from .record import Outcome
from .router import PipelineRunRequest, build_request, select
from .routes import Route, Routes
from .trigger import PipelineRun
from .validate import SourcePolicy

if TYPE_CHECKING:
    from .ledger import Claim, Ledger, LedgerRecord  # imported by the runbook only when a ledger is configured
    from .verify import Refusal


class Trigger(Protocol):
    """What the relay needs from ADO: start a run, and read runs back to reconcile an ambiguous answer."""

    def run_pipeline(self, request: PipelineRunRequest) -> PipelineRun: ...

    def list_runs(self, project: str, pipeline_id: int) -> list[dict[str, Any]]: ...

    def get_run(self, project: str, pipeline_id: int, run_id: int) -> dict[str, Any]: ...


class Verifier(Protocol):
    """Verification against AML (``amlrelay.verify``): None when AML confirms the event, else the refusal
    (``outcome`` ``rejected`` or ``failed``, and ``reason``)."""

    def check(self, event: AmlEvent, fields: Collection[str] = ()) -> Refusal | None: ...


class TagBack(Protocol):
    """Tag-back (``amlrelay.aml._tagback``, AMLRELAY_TAG_BACK): what to tag for an event, and tagging once its
    run is recorded. Returns a warning, never raises: a tag can never undo or repeat a trigger."""

    def target(self, event: AmlEvent) -> str | None: ...

    def after_trigger(self, target: str, run_id: int, run_url: str | None, *, ledger: Ledger | None,
                      record: LedgerRecord | None) -> str | None: ...


AMBIGUOUS = "[ambiguous] "
"""Prefix of a ledger failure after which ADO may hold a run: the next attempt reconciles before sending."""
BUSY = "another job is starting it"
"""Reason of a ``duplicate`` whose claim is held but not finished: the journal keeps such an event until it is."""


@dataclass
class Relay:
    routes: Routes
    policy: SourcePolicy
    org_url: str
    trigger: Trigger | None  # None in a dry run: nothing can be sent
    ledger: Ledger | None = None
    dry_run: bool = False
    only_route: str | None = None  # a manual start may name the route to use
    settle_after: timedelta = timedelta(minutes=5)  # how long ADO may still act on a request left open
    tag_back: TagBack | None = None  # AMLRELAY_TAG_BACK: tag the AML run / model with the ADO run it started
    verifier: Verifier | None = None  # AMLRELAY_VERIFY: AML must confirm the event before anything is sent

    def handle(self, items: Iterable[Parsed], *, raw: list[Any] | None = None) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for index, item in enumerate(items):
            original = raw[index] if raw is not None and index < len(raw) else None
            if isinstance(item, Invalid):
                outcomes.append(Outcome(item.id, _short(item.type), item.subject, "rejected", reason=str(item.error)))
            elif isinstance(item, Skipped):
                outcomes.append(Outcome(item.id, _short(item.type), item.subject, "skipped", reason=item.reason))
            else:
                outcomes.extend(self.handle_event(item, original))
        return outcomes

    def handle_event(self, event: AmlEvent, original: Any = None) -> list[Outcome]:
        try:
            self.policy.check(event)
        except UntrustedSourceError as exc:
            return [self._outcome(event, None, "rejected", reason=str(exc))]
        routes = [self.routes.by_name(self.only_route)] if self.only_route else None
        if routes is None:
            routes, reasons = select(self.routes, event)
            if not routes:
                return [self._outcome(event, None, "skipped", reason="no route matches (" + "; ".join(reasons) + ")")]
        done: list[Outcome] = []
        if self.verifier is not None:  # after routing, so an event no route takes costs no AML read
            from .verify import fields_read

            done, routes = self._already_triggered(event, routes)
            if not routes:
                return done
            refusal = self.verifier.check(event, fields_read(routes))
            if refusal is not None:
                return [*done, self._outcome(event, None, refusal.outcome, reason=refusal.reason)]
        return done + [self._run_route(event, route, original) for route in routes]

    def _already_triggered(self, event: AmlEvent, routes: list[Route]) -> tuple[list[Outcome], list[Route]]:
        """Read-only ledger lookup before verification: a route whose record is ``triggered`` is a duplicate
        (exactly what its claim would answer), without an AML read. Anything else — no record, failed, held,
        the ledger unreadable — goes on to verification and the claim, which decide as before."""
        if self.ledger is None or self.dry_run or self.trigger is None:
            return [], routes
        done: list[Outcome] = []
        rest: list[Route] = []
        for route in routes:
            try:
                record = self.ledger.get(_key(event, route))
            except LedgerError:
                record = None
            if record is not None and record.state == "triggered":
                done.append(self._outcome(event, route, "duplicate", run_id=record.ado_run_id,
                                          run_url=record.ado_run_url, reason="already triggered"))
            else:
                rest.append(route)
        return done, rest

    def _run_route(self, event: AmlEvent, route: Route, original: Any) -> Outcome:
        try:
            request = build_request(route, event)
        except TemplateError as exc:
            return self._outcome(event, route, "failed", reason=f"route {route.name!r}: {exc}")
        if self.dry_run or self.trigger is None:
            preview = {"method": "POST", "url": request.url(self.org_url), "query": request.query(),
                       "body": request.redacted_body()}
            return self._outcome(event, route, "dry-run", request=preview)
        if self.ledger is None:
            return self._unrecorded(event, route, request)
        try:
            claim = self.ledger.claim(_key(event, route), route=route.name,
                                      event_id=event.id, event_type=event.type,
                                      event_json=json.dumps(original) if original is not None else None)
        except LedgerError as exc:
            return self._outcome(event, route, "failed", reason=f"nothing triggered: {exc}")
        if claim.status in ("duplicate", "busy"):
            record = claim.record
            reason = ("already triggered" if claim.status == "duplicate"
                      else f"{BUSY} (claimed {record.claimed_at:%Y-%m-%d %H:%M:%S} UTC)")
            return self._outcome(event, route, "duplicate", run_id=record.ado_run_id, run_url=record.ado_run_url,
                                 reason=reason)
        hold = _Hold(claim)
        try:
            run, adopted = self._start(request, hold)
        except AmlRelayError as exc:
            reason = (AMBIGUOUS if _ambiguous(exc) else "") + str(exc)
            try:
                self.ledger.mark_failed(hold.claim, reason[:4000])
            except LedgerError as ledger_exc:
                reason += f" (and the ledger could not record the failure: {ledger_exc})"
            return self._outcome(event, route, "failed", reason=reason)
        try:
            target = self.tag_back.target(event) if self.tag_back is not None else None
            record = self.ledger.mark_triggered(hold.claim, run_id=run.id, run_url=run.url, tag_target=target)
        except LedgerError as exc:
            return self._outcome(event, route, "triggered", run_id=run.id, run_url=run.url,
                                 reason=f"triggered, but the ledger could not record it: {exc}")
        warning = self._tag(target, run, record)
        if adopted:
            return self._outcome(event, route, "duplicate", run_id=run.id, run_url=run.url,
                                 reason="started by an earlier attempt that could not record it", warning=warning)
        return self._outcome(event, route, "triggered", run_id=run.id, run_url=run.url, warning=warning)

    def _start(self, request: PipelineRunRequest, hold: _Hold | None) -> tuple[PipelineRun, bool]:
        """Start the run, exactly once: ``(run, adopted)``, where ``adopted`` means an earlier attempt had
        started it. Whenever it is open whether ADO queued the run — the previous holder died mid-call, its
        answer was lost, or this call's answer is — the pipeline's runs are searched before sending, and a
        resend happens only when the run is certainly not there (and the claim is proven still ours)."""
        assert self.trigger is not None
        previous = hold.claim.previous if hold is not None else None
        if previous is not None and (previous.state == "claimed" or (previous.reason or "").startswith(AMBIGUOUS)):
            waited = datetime.now(timezone.utc) - previous.updated_at
            if previous.state == "failed" and waited < self.settle_after:  # a stale claim waited longer already
                raise AdoError(f"An earlier attempt's request may still be in ADO's hands ({waited.seconds} s ago).",
                               status=None, ambiguous=True, retryable=True, hint=_LATER)
            found = find_started_run(self.trigger, request, since=previous.claimed_at)
            if found is not None:
                return found, True
        sent_at = datetime.now(timezone.utc)
        try:
            return self.trigger.run_pipeline(request), False
        except AdoError as exc:
            if not exc.ambiguous:
                raise
            try:
                found = find_started_run(self.trigger, request, since=sent_at)
            except CannotReconcileError:
                raise
            except AmlRelayError as lookup:
                raise _still_open(exc, f"Looking for the run failed too: {lookup.message}") from None
            if found is not None:
                return found, False
            if not exc.settled:
                raise _still_open(exc, "No run found yet, but ADO may still be creating it, so nothing is sent "
                                       "again now.") from None
        if hold is not None and self.ledger is not None:
            hold.claim = self.ledger.renew(hold.claim)  # raises LostClaimError rather than send for another
        return self.trigger.run_pipeline(request), False

    def _unrecorded(self, event: AmlEvent, route: Route, request: PipelineRunRequest) -> Outcome:
        """Without a ledger (AMLRELAY_LEDGER=false): at least once, never exactly once."""
        try:
            run, _ = self._start(request, None)
        except AmlRelayError as exc:
            return self._outcome(event, route, "failed", reason=(AMBIGUOUS if _ambiguous(exc) else "") + str(exc))
        target = self.tag_back.target(event) if self.tag_back is not None else None
        return self._outcome(event, route, "triggered", run_id=run.id, run_url=run.url,
                             warning=self._tag(target, run, None))

    def _tag(self, target: str | None, run: PipelineRun, record: LedgerRecord | None) -> str | None:
        """Tag-back after the run is recorded; whatever goes wrong is a warning on a trigger that stands."""
        if self.tag_back is None or target is None:
            return None
        try:
            return self.tag_back.after_trigger(target, run.id, run.url, ledger=self.ledger, record=record)
        except Exception as exc:  # a bug in tagging must not turn a started run into a crash or a resend
            return f"tag-back failed unexpectedly ({type(exc).__name__}: {str(exc)[:200]}); the run stands"

    @staticmethod
    def _outcome(event: AmlEvent, route: Route | None, kind: Any, *, run_id: int | None = None,
                 run_url: str | None = None, reason: str | None = None,
                 request: dict[str, Any] | None = None, warning: str | None = None) -> Outcome:
        return Outcome(event.id, event.type, event.subject, kind, route.name if route else None, run_id, run_url,
                       reason, request, warning)


_LATER = ("The next delivery or `amlrelay replay --failed` (scheduled in Automation) looks for the run again "
          "and sends only if it is not there.")


def _still_open(exc: AdoError, what: str) -> AdoError:
    return AdoError(f"{exc.message} {what}", status=exc.status, ambiguous=True, retryable=True, hint=_LATER)


@dataclass
class _Hold:
    """The claim an attempt holds; renewing it changes its ETag, and every later write must use the newest."""

    claim: Claim


def _ambiguous(exc: AmlRelayError) -> bool:
    return (isinstance(exc, AdoError) and exc.ambiguous) or isinstance(exc, CannotReconcileError)


def _key(event: AmlEvent, route: Route) -> str:
    """The ledger key of an AML outcome taken by a route."""
    return f"{event.outcome_key()}|{route.name.lower()}"


def _short(event_type: str) -> str:
    return event_type.rsplit(".", 1)[-1] if event_type else "?"
