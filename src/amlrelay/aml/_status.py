"""AML job statuses, taken verbatim from the REST spec (``JobStatus`` in mfe.json 2025-09-01), and what each
one means for a waiter.

The spec marks the enum ``modelAsString``: the service may add values, so :func:`parse_status` maps an
unknown string to ``UNKNOWN`` instead of failing, and the caller keeps the original text for the log.
The grouping below is amlrelay's decision, explained per status in AML-JOBS.md: the SDK calls
``NotResponding`` and ``Paused`` terminal, but the spec says ``NotResponding`` may return to any earlier
state, so a waiter that stopped there would report a failure for a job that later succeeds.
"""

from __future__ import annotations

from enum import Enum

from azure.core import CaseInsensitiveEnumMeta


class JobStatus(str, Enum, metaclass=CaseInsensitiveEnumMeta):
    """``JobStatus`` of the AML REST API (same values in stable 2025-09-01 and 2025-12-01)."""

    NOT_STARTED = "NotStarted"
    STARTING = "Starting"
    PROVISIONING = "Provisioning"
    PREPARING = "Preparing"
    QUEUED = "Queued"
    RUNNING = "Running"
    FINALIZING = "Finalizing"
    CANCEL_REQUESTED = "CancelRequested"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELED = "Canceled"
    NOT_RESPONDING = "NotResponding"
    PAUSED = "Paused"
    UNKNOWN = "Unknown"

    def __str__(self) -> str:
        return self.value


QUEUE_STATES = frozenset({JobStatus.NOT_STARTED, JobStatus.STARTING, JobStatus.PROVISIONING,
                          JobStatus.PREPARING, JobStatus.QUEUED})
"""Waiting for compute: the queue deadline applies."""

RUN_STATES = frozenset({JobStatus.RUNNING, JobStatus.FINALIZING, JobStatus.CANCEL_REQUESTED,
                        JobStatus.NOT_RESPONDING, JobStatus.PAUSED, JobStatus.UNKNOWN})
"""Past the queue (or unclear): the run deadline applies. NotResponding may still recover (spec), Paused is
a user's decision on labeling jobs, Unknown is an unmapped status: none of them is an outcome yet."""

FINAL_STATES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED})
"""Outcomes: the only states a job never leaves."""


def parse_status(text: object) -> JobStatus:
    """The status for ``text`` (any case); unknown or missing values are ``UNKNOWN`` (the enum is extensible)."""
    if isinstance(text, str):
        try:
            return JobStatus(text)
        except ValueError:
            pass
        for member in JobStatus:
            if member.value.lower() == text.lower():
                return member
    return JobStatus.UNKNOWN
