"""The journal: a Storage queue Event Grid writes every routed event to, and the sweep that drains it.

It closes the one gap the ledger cannot: an Automation webhook answers 202 when the job is queued, so an
event whose job dies before claiming the ledger would be lost silently. See README, "Across the webhook
boundary". Command: ``amlrelay sweep`` (module :mod:`amlrelay.journal._cli`).
"""

from ._message import POISON_KEY, JournalMessageError, decode_message, poison_wrapper
from ._queue import open_queue, poison_name
from ._sweep import FINAL, JournalError, MessageResult, SweepReport, finished, sweep

__all__ = [
    "FINAL",
    "POISON_KEY",
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
