"""What one journal message holds, whichever way Event Grid encoded it.

Event Grid's StorageQueue destination writes one event per message. Whether the text is the event's JSON or
its Base64 is not documented consistently: the docs once said "plain text" (MicrosoftDocs/azure-docs#69702,
2021) and users later saw Base64 (MicrosoftDocs/azure-docs#102923, 2022). Both are accepted, and an array is
accepted too, so a message written by hand (or by a future batching destination) is not lost either.
A message the sweeper moved aside (:data:`POISON_KEY`) is unwrapped, so the poison queue can be drained
with the same command once its cause is fixed; so is one whose failed attempts the sweeper counts in it
(:data:`FAILURES_KEY`).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from ..errors import AmlRelayError

POISON_KEY = "amlrelayPoison"
"""Key of the wrapper the sweeper puts around a message it moves aside (why, when, how often dequeued)."""
FAILURES_KEY = "amlrelayFailures"
"""Key of the wrapper a kept message carries: how many of its attempts *failed*. The queue's dequeue count
also counts receives that were only waiting (a young message left to the webhook job, a claim another job
holds), so it cannot decide when a message is moved aside."""


class JournalMessageError(AmlRelayError):
    """A journal message that holds no Event Grid event: it is moved aside, never deleted."""


def decode_message(content: Any) -> list[dict[str, Any]]:
    """The events of one message (JSON object or array, as text or as Base64 of that text)."""
    if isinstance(content, bytes):
        content = content.decode("utf-8", "replace")
    text = str(content or "").strip()
    if not text:
        raise JournalMessageError("The journal message is empty.", hint=_HINT)
    if not text.startswith(("{", "[")):
        try:
            text = base64.b64decode(text, validate=True).decode("utf-8").strip()
        except (binascii.Error, ValueError):
            raise JournalMessageError("The journal message is neither JSON nor Base64-encoded JSON.",
                                      hint=_HINT) from None
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise JournalMessageError(f"The journal message is not valid JSON ({exc}).", hint=_HINT) from None
    if isinstance(payload, dict) and (POISON_KEY in payload or FAILURES_KEY in payload) \
            and isinstance(payload.get("content"), str):
        return decode_message(payload["content"])
    items = payload if isinstance(payload, list) else [payload]
    events = [item for item in items if isinstance(item, dict)]
    if not events or len(events) != len(items):
        raise JournalMessageError("The journal message holds something other than Event Grid events.", hint=_HINT)
    return events


def poison_wrapper(content: str, **why: Any) -> str:
    """The text a moved-aside message is stored as: the original, untouched, plus why it was moved."""
    return json.dumps({POISON_KEY: why, "content": content}, separators=(",", ":"))


def failures_of(content: Any) -> tuple[int, str]:
    """(failed attempts counted so far, the original content Event Grid wrote)."""
    text = content.decode("utf-8", "replace") if isinstance(content, bytes) else str(content or "")
    if text.lstrip().startswith("{"):
        try:
            payload = json.loads(text)
        except ValueError:
            return 0, text
        if isinstance(payload, dict) and isinstance(payload.get(FAILURES_KEY), dict) \
                and isinstance(payload.get("content"), str):
            count = payload[FAILURES_KEY].get("count")
            return (count if isinstance(count, int) and count >= 0 else 0), payload["content"]
    return 0, text


def with_failures(original: str, count: int, reason: str) -> str:
    """The content a kept message is rewritten to: the original, untouched, and its failed attempts."""
    return json.dumps({FAILURES_KEY: {"count": count, "last": reason[:1000]}, "content": original},
                      separators=(",", ":"))


_HINT = ("Only Event Grid's journal subscriptions should write to this queue; the message was moved aside "
         "(see `amlrelay sweep --poison`), not deleted.")
