"""Open the journal queue and its poison queue from settings: Azurite/local by connection string, Azure by
the account's queue endpoint and the handler's managed identity (the same identity as the ledger's)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import SettingsError

if TYPE_CHECKING:
    from azure.storage.queue import QueueClient

    from ..settings import Settings

POISON_SUFFIX = "-poison"
_CLIENT: dict[str, Any] = {"retry_total": 3, "connection_timeout": 10, "read_timeout": 30}


def poison_name(queue: str) -> str:
    """``<queue>-poison``, shortened to the 63 characters a queue name may have."""
    return queue[: 63 - len(POISON_SUFFIX)].rstrip("-") + POISON_SUFFIX


def open_queue(settings: Settings, name: str) -> QueueClient:
    """A client for queue ``name`` in the journal's account. Messages are read and written as text, untouched:
    Event Grid's encoding is detected per message (see :func:`amlrelay.journal.decode_message`)."""
    from azure.storage.queue import QueueClient

    if settings.ledger_connection_string and not settings.journal_queue_url:
        return QueueClient.from_connection_string(settings.ledger_connection_string, name, **_CLIENT)
    url = settings.queue_account_url
    if not url:
        raise SettingsError(["AMLRELAY_JOURNAL_QUEUE_URL is missing (https://<account>.queue.core.windows.net; by "
                             "default it is derived from AMLRELAY_LEDGER_TABLE_URL)"])
    from ..auth import managed_identity

    credential = managed_identity(settings.managed_identity_client_id, kind=settings.credential)
    return QueueClient(url, name, credential=credential, **_CLIENT)
