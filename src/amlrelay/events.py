"""Event in: turn a webhook body into typed AML events, one result per event.

Event Grid posts a JSON array (one event by default, up to 5,000), in the Event Grid schema or in
CloudEvents 1.0, depending on the subscription. The envelopes are parsed with the Azure SDK
(``azure.eventgrid.EventGridEvent``, ``azure.core.messaging.CloudEvent``), but the schema is detected here:
``EventGridEvent.from_dict`` happily "parses" a CloudEvent into an object full of ``None``.

A batch is never all-or-nothing: each item becomes an :class:`AmlEvent`, a :class:`Skipped` (subscription
validation, a non-AML or unknown event type) or an :class:`Invalid` carrying the reason, so one bad event
cannot hide the good ones next to it, and none is dropped without a word.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from azure.core.messaging import CloudEvent
from azure.eventgrid import EventGridEvent

from .errors import InvalidEventError
from .models import AML_PREFIX, EVENT_TYPES, AmlEvent, json_kind, parse_data

MAX_BODY_BYTES = 512 * 1024
"""Azure Automation refuses webhook payloads over 512 KB; a larger body is not from Event Grid via a webhook."""

EVENT_GRID_SCHEMA = "EventGridSchema"
CLOUD_EVENT_SCHEMA = "CloudEventSchemaV1_0"
_VALIDATION_TYPES = {
    "microsoft.eventgrid.subscriptionvalidationevent",
    "microsoft.eventgrid.subscriptiondeletedevent",
}
_HINT = "Send Event Grid schema or CloudEvents 1.0 events from an Azure ML system topic."
VALIDATION_TYPE = "Microsoft.EventGrid.SubscriptionValidationEvent"


def _validation_reason(data: Any) -> str:
    """Event Grid's handshake. Automation webhooks answer it themselves, so it reaching a job means it was
    delivered where auto-validation does not apply (a sovereign cloud, a relay in between): the operator can
    still validate by hand with a GET on ``validationUrl`` within 5 minutes, so the URL is shown."""
    fields = {str(k).lower(): v for k, v in data.items()} if isinstance(data, Mapping) else {}
    url, code = fields.get("validationurl"), fields.get("validationcode")
    what = "Event Grid subscription validation (the handshake Automation webhooks normally answer themselves)"
    if isinstance(url, str) and url.startswith("https://"):
        coded = f" (validation code {code[:100]})" if isinstance(code, str) and code else ""
        return (f"{what}. If the subscription stays 'AwaitingManualAction', validate it by hand within 5 minutes "
                f"of the event: open {url[:2000]}{coded} with an HTTP GET.")
    return f"{what}. The event carries no https validationUrl, so it cannot be validated by hand."


@dataclass(frozen=True)
class Skipped:
    """An event we deliberately do not act on (not an error: the job still succeeds)."""

    id: str
    type: str
    subject: str
    reason: str


@dataclass(frozen=True)
class Invalid:
    """An item that is not a valid AML event; reported as ``rejected`` and never sent to ADO."""

    id: str
    type: str
    subject: str
    error: InvalidEventError


Parsed = AmlEvent | Skipped | Invalid


def load_body(body: str | bytes) -> Any:
    """Decode a webhook body to JSON, refusing what Automation itself would never deliver."""
    size = len(utf8(body, "The request body"))
    if size > MAX_BODY_BYTES:
        raise InvalidEventError(
            f"The request body is {size} bytes; Azure Automation webhooks accept at most {MAX_BODY_BYTES}.",
            hint="Lower the subscription's maxEventsPerBatch / preferredBatchSizeInKilobytes.",
        )
    try:
        return json.loads(body)
    except RecursionError:
        raise InvalidEventError("The request body is nested too deeply to be an event.", hint=_HINT) from None
    except ValueError as exc:
        raise InvalidEventError(f"The request body is not valid JSON ({exc}).", hint=_HINT) from None


def utf8(text: str | bytes, what: str) -> bytes:
    """``text`` as UTF-8 bytes, or a clear refusal. Event Grid sends UTF-8 JSON (RFC 8259 requires it); bytes
    that are not UTF-8 reach a runbook's argv as lone surrogates (Python's ``surrogateescape``), and would
    otherwise surface much later as an unexplained ``UnicodeEncodeError``."""
    if isinstance(text, bytes):
        try:
            text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _not_utf8(what, exc.start, text[exc.start]) from None
        return text
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        char = ord(text[exc.start])
        raise _not_utf8(what, exc.start, char - 0xDC00 if 0xDC80 <= char <= 0xDCFF else None) from None


def _not_utf8(what: str, position: int, byte: int | None) -> InvalidEventError:
    detail = f"byte 0x{byte:02x} at position {position}" if byte is not None else \
        f"a lone surrogate at position {position}"
    return InvalidEventError(
        f"{what} is not UTF-8 ({detail}): Event Grid always sends UTF-8 JSON, so this did not come from it.",
        hint="Send the events as UTF-8 JSON; if this job was started by hand, retype the parameters.",
    )


def parse_events(payload: Any) -> list[Parsed]:
    """Parse a decoded body: a list of events (as Event Grid posts them) or a single event object."""
    if isinstance(payload, Mapping):
        payload = [payload]
    if not isinstance(payload, list):
        raise InvalidEventError(
            f"The request body must be a JSON array of events or one event object, got {_kind(payload)}.",
            hint=_HINT,
        )
    return [parse_event(item) for item in payload]


def parse_event(item: Any) -> Parsed:
    """Parse one envelope; never raises for bad input, returns :class:`Invalid` instead."""
    if not isinstance(item, Mapping):
        return Invalid("", "", "", InvalidEventError(f"An event must be a JSON object, got {_kind(item)}.",
                                                     hint=_HINT))
    ident = _text(item, "id")
    etype = _text(item, "eventType") or _text(item, "type")
    subject = _text(item, "subject")
    try:
        if not _valid_unicode(item):
            raise InvalidEventError("The event holds text that is not valid Unicode (a lone surrogate such as "
                                    "\\udc80).", hint=_HINT)
        return _parse_mapping(item)
    except InvalidEventError as exc:
        return Invalid(ident, etype, subject, exc)


def _parse_mapping(item: Mapping[str, Any]) -> AmlEvent | Skipped:
    lower = {str(k).lower(): k for k in item}
    if "specversion" in lower:
        if "eventtype" in lower or "topic" in lower:
            raise InvalidEventError(
                "The event mixes CloudEvents fields (specversion) with Event Grid schema fields "
                "(eventType/topic).",
                hint=_HINT,
            )
        return _from_cloud_event(item, lower)
    if "eventtype" in lower:
        return _from_event_grid(item)
    raise InvalidEventError(
        "The object is neither an Event Grid event (no eventType) nor a CloudEvent (no specversion).",
        hint=_HINT,
    )


def _from_event_grid(item: Mapping[str, Any]) -> AmlEvent | Skipped:
    missing = [f for f in ("id", "eventType", "eventTime", "data") if item.get(f) in (None, "")]
    missing += [] if item.get("subject") is not None else ["subject"]  # present, may be empty
    if missing:
        raise InvalidEventError(f"Event Grid event is missing {', '.join(missing)}.", hint=_HINT)
    _require_strings(item, ("id", "eventType", "subject", "topic"), "Event Grid event")
    try:
        event = EventGridEvent.from_dict(dict(item))
    except Exception as exc:  # the SDK raises several types (DeserializationError, ValueError, ...)
        raise InvalidEventError(f"Event Grid event could not be parsed: {_short(exc)}.", hint=_HINT) from None
    return _build(
        ident=str(event.id),
        full_type=str(event.event_type),
        source=str(event.topic or ""),
        subject=str(event.subject),
        time=event.event_time,
        data=event.data,
        schema=EVENT_GRID_SCHEMA,
    )


def _from_cloud_event(item: Mapping[str, Any], lower: Mapping[str, Any]) -> AmlEvent | Skipped:
    # Some samples spell it "specVersion"; CloudEvents attribute names are lower-case by spec.
    normalized = dict(item)
    normalized["specversion"] = normalized.pop(lower["specversion"])
    if str(normalized["specversion"]) != "1.0":
        raise InvalidEventError(
            f"CloudEvents specversion {normalized['specversion']!r} is not supported (only 1.0).", hint=_HINT
        )
    missing = [f for f in ("id", "source", "type") if normalized.get(f) in (None, "")]
    if missing:
        raise InvalidEventError(f"CloudEvent is missing {', '.join(missing)}.", hint=_HINT)
    _require_strings(normalized, ("id", "source", "type", "subject"), "CloudEvent")
    try:
        event: CloudEvent[Any] = CloudEvent.from_dict(normalized)
    except Exception as exc:  # IndexError/ValueError on bad times, among others
        raise InvalidEventError(f"CloudEvent could not be parsed: {_short(exc)}.", hint=_HINT) from None
    if "data" not in normalized and normalized.get("data_base64") is not None:  # the SDK decodes it into bytes
        raise InvalidEventError("CloudEvent carries data_base64; AML events carry JSON data.", hint=_HINT)
    return _build(
        ident=str(event.id),
        full_type=str(event.type),
        source=str(event.source),
        subject=str(event.subject or ""),
        time=event.time,
        data=event.data,
        schema=CLOUD_EVENT_SCHEMA,
    )


def _build(*, ident: str, full_type: str, source: str, subject: str, time: Any, data: Any,
           schema: str) -> AmlEvent | Skipped:
    if full_type.lower() == VALIDATION_TYPE.lower():
        return Skipped(ident, full_type, subject, _validation_reason(data))
    if full_type.lower() in _VALIDATION_TYPES:
        return Skipped(ident, full_type, subject, "Event Grid subscription lifecycle event: nothing to relay.")
    if not full_type.lower().startswith(AML_PREFIX.lower()):
        return Skipped(ident, full_type, subject, "not an Azure Machine Learning event type")
    short = full_type[len(AML_PREFIX):]
    canonical = next((t for t in EVENT_TYPES if t.lower() == short.lower()), None)
    if canonical is None:
        return Skipped(ident, full_type, subject,
                       f"unknown AML event type (amlrelay knows {', '.join(EVENT_TYPES)})")
    if not source:
        raise InvalidEventError(f"{canonical} event has no topic/source, so its workspace is unknown.",
                                hint=_HINT)
    return AmlEvent(id=ident, type=canonical, source=source, subject=subject, time=time, schema=schema,
                    data=parse_data(canonical, data))


def _require_strings(item: Mapping[str, Any], keys: tuple[str, ...], what: str) -> None:
    """Envelope attributes are strings in both schemas; an object in ``id`` is hostile, not an id."""
    wrong = [k for k in keys if k in item and item[k] is not None and not isinstance(item[k], str)]
    if wrong:
        raise InvalidEventError(f"{what}: {', '.join(wrong)} must be a string.", hint=_HINT)


def _text(item: Mapping[str, Any], key: str) -> str:
    value = item.get(key)
    return value[:200] if isinstance(value, str) else ""


def _valid_unicode(item: Mapping[str, Any]) -> bool:
    """Every key and string in the event encodes to UTF-8 (JSON's ``\\ud800`` escapes decode to lone
    surrogates that no output stream, ledger key or HTTP body can carry)."""
    try:
        json.dumps(item, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    except (TypeError, ValueError, RecursionError):
        return True  # not JSON-serialisable: the parser below says what is wrong with it
    return True


def _kind(value: Any) -> str:
    return json_kind(value)


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def manual_event(event_type: str, workspace: str, data: Mapping[str, Any], *, subject: str = "") -> AmlEvent:
    """An event built from portal parameters: validated exactly like a delivered one, so a hand-started
    job routes, templates and claims the ledger the same way (a run already triggered stays a duplicate)."""
    import uuid
    from datetime import datetime, timezone

    canonical = next((t for t in EVENT_TYPES if t.lower() == event_type.lower()), None)
    if canonical is None:
        raise InvalidEventError(f"Unknown event type {event_type!r}.", hint=f"Use one of {', '.join(EVENT_TYPES)}.")
    return AmlEvent(id=f"manual-{uuid.uuid4()}", type=canonical, source=workspace, subject=subject,
                    time=datetime.now(timezone.utc), schema="Manual", data=parse_data(canonical, data))
