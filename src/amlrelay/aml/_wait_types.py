"""What a wait is configured with and what it returns: the options, the clock seam, one result per job and the
whole wait's result. Apart from the poller (``_wait``) so the command line and the hand-off can name these
types without the poller's machinery, and so each module stays readable.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ._contract import EXIT_CODES, WaitOutcome
from ._errors import AmlError
from ._status import JobStatus


class Clock(Protocol):
    def time(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


@dataclass(frozen=True)
class WaitOptions:
    queue_timeout: float | None = None
    run_timeout: float | None = None
    handoff_after: float | None = None
    poll_min: float = 5.0
    poll_max: float = 30.0
    backoff: float = 1.5
    heartbeat: float = 60.0
    cancel_on_timeout: bool = False
    cancel_grace: float = 300.0
    fail_fast: bool = False
    cancel_on_fail_fast: bool = False
    not_responding_timeout: float | None = 1800.0
    paused_is_final: bool = False
    handoff_from: float | None = None
    """Epoch seconds the hand-off budget counts from (the agent job's start); default: when the poller is
    built, which is after installing and submitting, minutes the agent's limit has already used."""

    def check(self) -> None:
        problems = [f"{name} must be more than 0 s" for name in
                    ("queue_timeout", "run_timeout", "handoff_after", "not_responding_timeout")
                    if (getattr(self, name) is not None and getattr(self, name) <= 0)]
        if not 0 < self.heartbeat <= 60:
            problems.append("the heartbeat must be between 0 and 60 s (a line at least every minute)")
        if not 0 < self.poll_min <= self.poll_max:
            problems.append("poll intervals need 0 < poll-min <= poll-max")
        if self.backoff < 1:
            problems.append("backoff must be at least 1")
        if problems:
            raise AmlError("Invalid wait options: " + "; ".join(problems) + ".", status=None,
                           hint="See 'amlrelay aml wait --help'.")


@dataclass
class JobResult:
    name: str
    status: JobStatus = JobStatus.UNKNOWN
    status_text: str = ""
    outcome: WaitOutcome | None = None
    reason: str = ""
    studio_url: str = ""
    experiment_name: str = ""
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WaitResult:
    outcome: WaitOutcome
    jobs: list[JobResult]
    token: str
    elapsed: float
    polls: int

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.outcome]


Report = Callable[[str, str, "JobResult | None"], None]
"""``report(kind, message, job)``: kind is found, status, heartbeat, warning, timeout, cancel or handoff."""


def quiet(kind: str, message: str, job: JobResult | None) -> None:
    """The default reporter: say nothing."""
