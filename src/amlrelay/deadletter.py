"""Dead letters: events Event Grid gave up delivering, read back from the blob container it wrote them to.

Event Grid writes each dead-lettered delivery as a blob (``{TOPIC}/{SUBSCRIPTION}/{yyyy}/{MM}/{dd}/{HH}/
{guid}.json``) holding a JSON array of the original events, each with delivery metadata added at the top
level (``deadLetterReason``, ``deliveryAttempts``, ``lastDeliveryOutcome``, ``lastHttpStatusCode``,
``publishTime``, ``lastDeliveryAttemptTime``). Replaying them goes through the same relay and ledger as a
live delivery, so an event that did start its run meanwhile is reported as a duplicate, not run again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import AmlRelayError

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

METADATA_FIELDS = frozenset({"deadletterreason", "deliveryattempts", "lastdeliveryoutcome", "lasthttpstatuscode",
                             "publishtime", "lastdeliveryattempttime", "deadletterreasondescription"})
REPLAYED_MARK = "amlrelayreplayed"


@dataclass(frozen=True)
class DeadLetter:
    blob: str
    events: list[dict[str, Any]]  # the original events, metadata removed
    reasons: list[str]  # deadLetterReason / lastDeliveryOutcome per event, for the report
    replayed: str | None  # when amlrelay last replayed this blob


def strip_metadata(event: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The original event (CloudEvents would reject ``deadLetterReason`` as an extension name) and why it
    was dead-lettered."""
    reason = " / ".join(str(event[k]) for k in ("deadLetterReason", "lastDeliveryOutcome") if k in event)
    return {k: v for k, v in event.items() if k.lower() not in METADATA_FIELDS}, reason


def parse_blob(name: str, content: bytes, replayed: str | None = None) -> DeadLetter:
    try:
        payload = json.loads(content)
    except ValueError as exc:
        raise AmlRelayError(f"Dead-letter blob {name} is not JSON ({exc}).",
                            hint="Only Event Grid's dead-letter blobs belong in this container.") from None
    items = payload if isinstance(payload, list) else [payload]
    events, reasons = [], []
    for item in items:
        if isinstance(item, dict):
            event, reason = strip_metadata(item)
            events.append(event)
            reasons.append(reason)
    return DeadLetter(name, events, reasons, replayed)


def read_container(container: ContainerClient, *, prefix: str | None = None,
                   include_replayed: bool = False) -> Iterator[DeadLetter]:
    """Dead-letter blobs in name order (which is time order within a subscription)."""
    from azure.core.exceptions import AzureError

    try:
        for blob in container.list_blobs(name_starts_with=prefix, include=["metadata"]):
            replayed = (blob.metadata or {}).get(REPLAYED_MARK)
            if replayed and not include_replayed:
                continue
            content = container.download_blob(blob.name).readall()
            yield parse_blob(blob.name, content, replayed)
    except AzureError as exc:
        raise AmlRelayError(f"Cannot read dead letters from container {container.container_name!r}: "
                            f"{str(exc).splitlines()[0][:300]}",
                            hint="Check AMLRELAY_DEADLETTER_CONTAINER and that the identity has 'Storage Blob Data "
                            "Reader' (and 'Contributor' to mark replays) on it.") from None


def mark_replayed(container: ContainerClient, blob: str, when: str) -> None:
    client = container.get_blob_client(blob)
    metadata = dict(client.get_blob_properties().metadata or {})
    metadata[REPLAYED_MARK] = when
    client.set_blob_metadata(metadata)
