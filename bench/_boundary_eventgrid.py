"""Event Grid's delivery semantics, modelled for bench/boundary.py on a virtual clock (nothing sleeps).

From MicrosoftDocs/azure-docs ``articles/event-grid/delivery-and-retry.md`` (see AZURE-FACTS.md §3):

* a webhook delivery succeeds on 200-204 only (an Automation webhook answers 202);
* 400, 413, 401 and 403 from a webhook are not retried: the event is dead-lettered (when dead-lettering is
  configured, as infra/ does), after a delay of about 5 minutes;
* any other answer (404, 429, 5xx, no answer in 30 s) is retried on the schedule 10 s, 30 s, 1 min, 5 min,
  10 min, 30 min, 1 h, 3 h, 6 h, then every 12 h, until ``maxDeliveryAttempts`` (30) or the event's time to
  live (1,440 min) runs out, whichever comes first; then it is dead-lettered;
* the journal subscription writes one event per message to the Storage queue (its destination is healthy in
  this model: a queue outage would make Event Grid retry and dead-letter it the same way).

Dead letters are written to Azurite in Event Grid's format (the original events plus ``deadLetterReason``,
``deliveryAttempts``, ``lastDeliveryOutcome``, ``lastHttpStatusCode``…), where ``amlrelay replay`` reads them.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from typing import Any

import requests

NO_RETRY = frozenset({400, 401, 403, 413})
SCHEDULE = (0, 10, 30, 60, 300, 600, 1800, 3600, 10800, 21600)  # seconds after publishing, then every 12 h
TWELVE_HOURS = 43200
DEAD_LETTER_DELAY = 300


@dataclass
class Delivery:
    """What Event Grid did with one event for the webhook subscription (virtual seconds after publishing)."""

    event_id: str
    attempts: int
    statuses: tuple[int, ...]
    delivered_at: float | None  # the 2xx answer
    dead_lettered_at: float | None
    reason: str | None


def attempt_times(max_attempts: int = 30, ttl_minutes: int = 1440) -> list[int]:
    times = list(SCHEDULE)
    while times[-1] + TWELVE_HOURS <= ttl_minutes * 60:
        times.append(times[-1] + TWELVE_HOURS)
    return [t for t in times if t <= ttl_minutes * 60][:max_attempts]


class EventGrid:
    """One system topic: the webhook subscription of the runbook handler and the journal subscription."""

    def __init__(self, webhook_url: str, journal: Any, dead_letters: Any, *, max_attempts: int = 30,
                 ttl_minutes: int = 1440) -> None:
        self.webhook_url = webhook_url
        self.journal = journal  # azure.storage.queue.QueueClient
        self.dead_letters = dead_letters  # azure.storage.blob.ContainerClient
        self.times = attempt_times(max_attempts, ttl_minutes)
        self.session = requests.Session()
        self.journaled = 0
        self._pending: list[tuple[float, str, bytes]] = []  # dead letters not yet written (virtual time)

    def publish(self, event: dict[str, Any], *, journal_copies: int, base64_message: bool) -> Delivery:
        """Journal the event (once per matching journal subscription), then deliver it to the webhook with
        Event Grid's retries."""
        text = json.dumps(event)
        for _ in range(journal_copies):
            self.journal.send_message(base64.b64encode(text.encode()).decode() if base64_message else text)
            self.journaled += 1
        body = json.dumps([event], indent=2)  # one event per delivery (maxEventsPerBatch 1): still an array
        statuses: list[int] = []
        for at in self.times:
            status = self._post(body)
            statuses.append(status)
            if 200 <= status <= 204:
                return Delivery(event["id"], len(statuses), tuple(statuses), float(at), None, None)
            if status in NO_RETRY:
                return self._dead_letter(event, statuses, at, "DeliveryFailed")
        return self._dead_letter(event, statuses, self.times[-1], "MaxDeliveryAttemptsExceeded")

    def _post(self, body: str) -> int:
        try:
            answer = self.session.post(self.webhook_url, data=body.encode(), timeout=30, headers={
                "Content-Type": "application/json", "aeg-event-type": "Notification"})
        except requests.RequestException:
            return 408  # no answer: retried like a timeout
        return answer.status_code

    def _dead_letter(self, event: dict[str, Any], statuses: list[int], at: float, reason: str) -> Delivery:
        record = {**event, "deadLetterReason": reason, "deliveryAttempts": len(statuses),
                  "lastDeliveryOutcome": "BadRequest" if statuses[-1] == 400 else "NotFound"
                  if statuses[-1] == 404 else f"Http{statuses[-1]}", "lastHttpStatusCode": statuses[-1],
                  "publishTime": "2026-12-01T00:00:00.0000000Z", "lastDeliveryAttemptTime": "2026-12-01T00:00:00Z"}
        self._pending.append((at + DEAD_LETTER_DELAY, f"AMLWS/AMLRELAY-BENCH/2026/12/01/00/{uuid.uuid4()}.json",
                              json.dumps([record]).encode()))
        return Delivery(event["id"], len(statuses), tuple(statuses), None, at + DEAD_LETTER_DELAY,
                        f"{reason} after HTTP {statuses[-1]}")

    def flush_dead_letters(self, until: float) -> int:
        """Write the dead letters due by virtual time ``until``; returns how many."""
        due = [p for p in self._pending if p[0] <= until]
        self._pending = [p for p in self._pending if p[0] > until]
        for _, name, content in due:
            self.dead_letters.upload_blob(name, content)
        return len(due)
