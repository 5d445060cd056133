"""Exceptions that say what went wrong *and what to do about it*.

Every error amlrelay raises on purpose derives from :class:`AmlRelayError` and carries a ``hint``: the
runbook prints ``message`` and ``hint`` instead of a traceback, because the person reading an Automation
job stream needs the next step, not the call stack.
"""

from __future__ import annotations


class AmlRelayError(Exception):
    """Base class: a failure amlrelay understands and can explain."""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}".strip()


class InvalidEventError(AmlRelayError):
    """The event (or the webhook body carrying it) is malformed or not an AML event we understand."""


class UntrustedSourceError(AmlRelayError):
    """The event comes from a topic that is not an allowed AML workspace."""


class RoutesError(AmlRelayError):
    """The routes file is missing or invalid; raised at load time so nothing is triggered from it."""


class TemplateError(AmlRelayError):
    """A route's template refers to an event field the event does not carry."""


class SettingsError(AmlRelayError):
    """One or more settings are missing or invalid. ``problems`` lists every one of them at once."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(
            "Invalid settings: " + "; ".join(problems) + ".",
            hint="Set them as runbook parameters, Automation variables or AMLRELAY_* environment variables "
            "(see README, 'Settings').",
        )
        self.problems = problems


class AuthError(AmlRelayError):
    """No credential for ADO could be obtained (identity endpoint or Key Vault refused or unreachable)."""


class AdoError(AmlRelayError):
    """ADO refused or failed the pipeline run request."""

    def __init__(self, message: str, *, status: int | None, hint: str = "", retryable: bool = False,
                 ambiguous: bool = False, settled: bool = False) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.retryable = retryable
        self.ambiguous = ambiguous  # the request was sent and ADO may have queued the run
        self.settled = settled  # ADO itself answered (500): a run it queued is visible now, not later


class LedgerError(AmlRelayError):
    """The exactly-once ledger could not be read or written."""
