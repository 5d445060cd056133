"""Validate: act only on events from AML workspaces this relay was set up for.

Anyone who learns a webhook URL can post to it, and the body is not signed, so the event's own claim
about its origin (``topic`` / ``source``) is checked against an allow-list of workspace resource ids.
ARM ids are case-insensitive; the comparison is too.
"""

from __future__ import annotations

from collections.abc import Iterable

from .errors import UntrustedSourceError
from .models import AmlEvent


def normalize_resource_id(resource_id: str) -> str:
    return resource_id.strip().rstrip("/").lower()


class SourcePolicy:
    def __init__(self, allowed_workspaces: Iterable[str]) -> None:
        self._allowed = {normalize_resource_id(w) for w in allowed_workspaces}

    def check(self, event: AmlEvent) -> None:
        if normalize_resource_id(event.source) not in self._allowed:
            raise UntrustedSourceError(
                f"Event {event.id} comes from {event.source[:300]!r}, which is not an allowed workspace.",
                hint="If this workspace should trigger pipelines, add its resource id to "
                "AMLRELAY_ALLOWED_WORKSPACES; otherwise someone is posting to the webhook: rotate it.",
            )
