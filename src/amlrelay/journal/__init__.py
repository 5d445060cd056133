"""The journal: a Storage queue Event Grid writes every routed event to, and the sweep that drains it.

It closes the one gap the ledger cannot: an Automation webhook answers 202 when the job is queued, so an
event whose job dies before claiming the ledger would be lost silently. See README, "Across the webhook
boundary". Command: ``amlrelay sweep`` (module :mod:`amlrelay.journal._cli`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import exports

if TYPE_CHECKING:
    from ._message import POISON_KEY, JournalMessageError, decode_message, poison_wrapper
    from ._queue import open_queue, poison_name
    from ._sweep import FINAL, TAKEN_OVER, JournalError, MessageResult, SweepReport, finished, sweep

_EXPORTS: dict[str, tuple[str, str]] = {
    **{name: ("._message", name) for name in ("POISON_KEY", "JournalMessageError", "decode_message",
                                              "poison_wrapper")},
    **{name: ("._queue", name) for name in ("open_queue", "poison_name")},
    **{name: ("._sweep", name) for name in ("FINAL", "TAKEN_OVER", "JournalError", "MessageResult", "SweepReport",
                                            "finished", "sweep")},
}
"""Imported on first use: ``amlrelay --help`` registers ``sweep`` without loading the relay and the queue SDK."""

__all__ = [
    "FINAL",
    "POISON_KEY",
    "TAKEN_OVER",
    "JournalError",
    "JournalMessageError",
    "MessageResult",
    "SweepReport",
    "decode_message",
    "finished",
    "open_queue",
    "poison_name",
    "poison_wrapper",
    "sweep",
]

__getattr__, __dir__ = exports(__name__, _EXPORTS)
