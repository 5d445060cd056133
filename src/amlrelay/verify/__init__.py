"""Verification against AML (``AMLRELAY_VERIFY``): before anything is sent to ADO, the run or model version
an event names is read back from its workspace with the handler's identity, and an event AML does not
confirm is ``rejected`` (AML refutes it) or ``failed`` (AML could not be asked, or does not show it yet).

Public surface: :class:`AmlVerifier` (the I/O), :func:`verifier_from_settings`, and the pure decisions
:func:`plan`, :func:`fields_read`, :func:`judge_job`, :func:`judge_model`,
:func:`judge_values`, :class:`Refusal`, :class:`Read`. See the README,
"Verification against AML", for what is and is not verified per event type.
"""

from __future__ import annotations

from ._decide import (
    FINAL,
    MAX_MODEL_IDS,
    Held,
    Plan,
    Read,
    Refusal,
    claimed_status,
    fields_read,
    judge_job,
    judge_model,
    judge_values,
    plan,
)
from ._reader import ROLE_HINT, AmlVerifier, verifier_from_settings

__all__ = [
    "FINAL",
    "MAX_MODEL_IDS",
    "ROLE_HINT",
    "AmlVerifier",
    "Held",
    "Plan",
    "Read",
    "Refusal",
    "claimed_status",
    "fields_read",
    "judge_job",
    "judge_model",
    "judge_values",
    "plan",
    "verifier_from_settings",
]
