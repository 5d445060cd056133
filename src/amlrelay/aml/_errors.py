"""Errors of the AML client: what ARM or AML answered, and what the operator must do about it."""

from __future__ import annotations

from ..errors import AmlRelayError


class AmlError(AmlRelayError):
    """AML (through ARM) refused or failed a request, or no token for ARM could be obtained.

    ``status`` is the HTTP status (None when no answer came back); ``code`` is ARM's ``error.code``.
    ``retryable`` says whether asking again later can help (throttling, outages, no answer).
    """

    def __init__(self, message: str, *, status: int | None, hint: str = "", code: str | None = None,
                 retryable: bool = False) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.code = code
        self.retryable = retryable


class AmlNotFoundError(AmlError):
    """The workspace, job or model version does not exist (or the identity cannot see it: ARM says 404)."""


class ComponentError(AmlRelayError):
    """The trigger component's inputs or environment are wrong: nothing was sent (exit 2)."""
