"""Exactly-once ledger in Azure Table Storage.

Event Grid delivers at least once and several webhook jobs can run at the same moment, so before amlrelay
calls ADO it *claims* the outcome's key here, atomically, and afterwards records the ADO run (or the
failure) on that claim. One key = one AML outcome + one route = at most one ADO run.

Why Table Storage: it is the cheapest store that gives the two primitives the protocol needs, and both
work against Azurite locally and with a managed identity in Azure:

* insert-if-absent (``create_entity``: 409 when the row exists) for the first claim;
* compare-and-swap on the ETag (``If-Match``: 412 when someone wrote in between) for taking over a failed
  or stale claim and for recording the result, so exactly one of several concurrent takers wins and a
  holder that lost its claim finds out instead of overwriting the winner.

Every claim carries a random ``claim_id``. It is what "ours" means: the SDK retries a write whose response
was lost, and that retry sees 409/412 for the row it just wrote; comparing claim ids tells it so.

The row format (records, claims, entity mapping, text hygiene) lives in :mod:`._ledger_rows`; this module
stays the import path for it (the ``X as X`` imports are explicit re-exports). What a storage failure is
reported as, and what it tells the reader to check, is :mod:`._ledger_errors`.
"""

from __future__ import annotations

import heapq
import logging
import os
import socket
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

from azure.core import MatchConditions
from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential, TokenCredential
from azure.core.exceptions import (
    AzureError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import TableClient, TableEntity, UpdateMode

from ._ledger_errors import NoStorageToken, StorageToken, no_token, storage_error
from ._ledger_rows import _SECRETISH, _check_table_name, _mask, _same_result, _to_entity, _with_event
from ._ledger_rows import PARTITION as PARTITION
from ._ledger_rows import SCHEMA as SCHEMA
from ._ledger_rows import Claim as Claim
from ._ledger_rows import LedgerRecord as LedgerRecord
from ._ledger_rows import State as State
from ._ledger_rows import Status as Status
from ._ledger_rows import _clean as _clean
from ._ledger_rows import _from_entity as _from_entity
from ._ledger_rows import _redact as _redact
from ._ledger_rows import _split_kw as _split_kw
from ._ledger_rows import _utc as _utc
from ._ledger_rows import table_address as table_address
from .errors import LedgerError

log = logging.getLogger(__name__)

DEFAULT_TABLE = "amlrelayledger"
MIN_RETENTION = timedelta(days=2)
_TAKE_TRIES = 8


class LostClaimError(LedgerError):
    """A holder tried to record a result on a claim that someone else has since taken over."""

    def __init__(self, message: str, *, current: LedgerRecord | None, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.current = current


def _now() -> datetime:
    return datetime.now(timezone.utc)


def default_holder() -> str:
    """host/pid/random: unique per process, readable in ``amlrelay status``."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


class Ledger:
    """The exactly-once ledger over one table. Thread-safe as far as ``TableClient`` is."""

    def __init__(
        self, table_client: TableClient, *, stale_after: timedelta = timedelta(minutes=15), holder: str | None = None
    ) -> None:
        self._table = table_client
        self.stale_after = stale_after
        self.holder = holder or default_holder()
        self._where = f"table '{table_client.table_name}' at {table_client.url.split('?', 1)[0]}"

    # ---- construction -------------------------------------------------------------------------------

    @classmethod
    def from_connection_string(cls, conn_str: str, table: str = DEFAULT_TABLE, **kw: Any) -> Ledger:
        """Local use (Azurite) or an account key / SAS. The connection string is never echoed."""
        _check_table_name(table)
        ledger_kw, client_kw = _split_kw(kw)
        try:
            client = TableClient.from_connection_string(conn_str, table_name=table, **client_kw)
        except ValueError:
            raise LedgerError(
                "The ledger connection string is malformed.",
                hint="Set AMLRELAY_LEDGER_CONNECTION_STRING to a storage connection string "
                '(locally: eval "$(scripts/azurite env)").',
            ) from None
        return cls(client, **ledger_kw)

    @classmethod
    def from_table_url(
        cls,
        account_table_url: str,
        credential: TokenCredential | AzureNamedKeyCredential | AzureSasCredential,
        table: str = DEFAULT_TABLE,
        *,
        identity_client_id: str | None = None,
        **kw: Any,
    ) -> Ledger:
        """In Azure: ``https://<account>.table.core.windows.net`` with a managed identity credential.
        ``identity_client_id``: the user-assigned identity that credential is, named when it gives no token."""
        _check_table_name(table)
        token = isinstance(credential, TokenCredential)
        if not account_table_url.startswith(("https://",) if token else ("https://", "http://")):
            raise LedgerError(
                f"Ledger table URL must start with https://, got {_clean(account_table_url, 80)!r}.",
                hint="Set AMLRELAY_LEDGER_TABLE_URL to the storage account's table endpoint, e.g. "
                "https://<account>.table.core.windows.net (a managed identity's token is only sent over HTTPS).",
            )
        ledger_kw, client_kw = _split_kw(kw)
        if isinstance(credential, TokenCredential):  # a missing token is then the identity's problem, not storage's
            credential = StorageToken(credential, identity_client_id)
        client = TableClient(endpoint=account_table_url, table_name=table, credential=credential, **client_kw)
        return cls(client, **ledger_kw)

    def ensure_table(self) -> None:
        """Create the table if missing (needs the same data role; no control-plane rights)."""
        with self._errors("create the ledger table"), suppress(ResourceExistsError):
            self._table.create_table()

    # ---- the protocol -------------------------------------------------------------------------------

    def claim(self, key: str, *, route: str, event_id: str, event_type: str, event_json: str | None) -> Claim:
        """Claim ``key`` for this holder, or say why not. Never blocks; never returns ``owned`` to two
        holders whose claims overlap in time."""
        pk, rk = table_address(key)
        claim_id = uuid.uuid4().hex
        now = _now()
        ids = (_clean(key), _clean(route), _clean(event_id), _clean(event_type))
        new = LedgerRecord(*ids, "claimed", None, None, None, now, now, 1, self.holder, claim_id, None, row_key=rk)
        new = _with_event(new, event_json)
        tried_over: LedgerRecord | None = None  # the record our last takeover attempt replaced
        with self._errors("claim an event"):
            for _ in range(_TAKE_TRIES):
                try:
                    meta = self._table.create_entity(_to_entity(pk, rk, new))
                    return Claim("claimed", new, str(meta["etag"]))
                except ResourceExistsError:
                    pass
                except ResourceNotFoundError:  # the table itself is missing (first use, Azurite)
                    self.ensure_table()
                    continue
                try:
                    current, etag = self._read(pk, rk)
                except ResourceNotFoundError:
                    continue  # deleted in between (purge): insert again
                if current.claim_id == claim_id:  # our own write, whose response was lost and retried
                    status: Status = "retry" if tried_over is not None else "claimed"
                    return Claim(status, current, etag, previous=tried_over)
                if current.state == "triggered":
                    return Claim("duplicate", current, etag)
                if current.state == "claimed" and now - current.updated_at < self.stale_after:
                    return Claim("busy", current, etag)
                taken = replace(new, attempts=current.attempts + 1)
                if event_json is None:  # keep the event we have, so the record stays replayable
                    taken = replace(
                        taken, event_json=current.event_json, event_json_truncated=current.event_json_truncated
                    )
                tried_over = current
                try:
                    meta = self._table.update_entity(
                        _to_entity(pk, rk, taken),
                        mode=UpdateMode.REPLACE,
                        etag=etag,
                        match_condition=MatchConditions.IfNotModified,
                    )
                except ResourceModifiedError:
                    continue  # someone else wrote first: look again (they are busy, or done)
                except ResourceNotFoundError:
                    continue
                log.info(
                    "ledger: took over %s key %s from holder %s (attempt %d)",
                    current.state,
                    current.key[:200],
                    current.holder,
                    taken.attempts,
                )
                return Claim("retry", taken, str(meta["etag"]), previous=current)
            # Only reachable under pathological churn on one key: report it as someone else's.
            current, etag = self._read(pk, rk)
            return Claim("busy", current, etag)

    def renew(self, claim: Claim) -> Claim:
        """Heartbeat: push ``updated_at`` forward so a slow holder (ADO throttling) is not seen as dead."""
        record = self._write(claim, replace(claim.record, updated_at=_now()), "renew a claim")
        return replace(claim, record=record[0], etag=record[1])

    def mark_triggered(self, claim: Claim, *, run_id: int, run_url: str | None,
                       tag_target: str | None = None) -> LedgerRecord:
        """Record the ADO run started for this claim. Raises :class:`LostClaimError` if the claim was
        taken over meanwhile (the caller's run may then be a second one: it must be reported).
        ``tag_target``: tag-back is still to do (recorded in the same write, so a crash before tagging
        leaves it pending for :meth:`untagged`, never forgotten)."""
        done = replace(
            claim.record,
            state="triggered",
            ado_run_id=int(run_id),
            ado_run_url=_clean(run_url) if run_url else None,
            reason=None,
            updated_at=_now(),
            tag_target=tag_target,
            tagged=False if tag_target else None,
        )
        return self._write(claim, done, "record the ADO run")[0]

    def mark_failed(self, claim: Claim, reason: str) -> LedgerRecord:
        """Record why this attempt failed; the key can then be retried by the next delivery or a replay."""
        reason = _SECRETISH.sub(_mask, _clean(reason or "unknown"))  # never persist one
        failed = replace(claim.record, state="failed", reason=reason, updated_at=_now())
        return self._write(claim, failed, "record a failure")[0]

    # ---- reading ------------------------------------------------------------------------------------

    def get(self, key: str) -> LedgerRecord | None:
        pk, rk = table_address(key)
        with self._errors("read the ledger"):
            try:
                return self._read(pk, rk)[0]
            except ResourceNotFoundError:
                return None

    def recent(
        self, limit: int = 50, *, state: State | None = None, since: datetime | None = None
    ) -> list[LedgerRecord]:
        """Newest ``limit`` records by ``updated_at``. Table Storage has no secondary index, so this scans
        the table (server-side filtered by ``state``/``since``): fine for a ledger that is purged."""
        clauses: list[str] = []
        params: dict[str, Any] = {}
        if state is not None:
            clauses.append("state eq @state")
            params["state"] = state
        if since is not None:
            clauses.append("updated_at ge @since")
            params["since"] = since
        return heapq.nlargest(limit, self._query(clauses, params), key=lambda r: r.updated_at)

    def purge(self, older_than: timedelta, *, include_failed: bool = False) -> int:
        """Delete finished records last written more than ``older_than`` ago; returns how many this call
        deleted (one someone else deleted meanwhile is not counted). Claims are never deleted (their holder
        may be alive, or they need a replay), failed records only when asked, and a record written meanwhile
        is kept (the delete is conditional on its ETag). Table Storage has no TTL,
        so this is how the table stays small. Never earlier than :data:`MIN_RETENTION`: Event Grid may still
        redeliver an event for 24 hours, and without its record that copy would start a second run."""
        if older_than < MIN_RETENTION:
            raise LedgerError(f"Refusing to purge records younger than {MIN_RETENTION.days} days.",
                              hint="Event Grid redelivers for up to 24 h; keep records longer than that.")
        cutoff = _now() - older_than
        deleted = 0
        with self._errors("purge old ledger records"):
            for state in ("triggered", "failed") if include_failed else ("triggered",):
                found = self._entities(["state eq @state", "updated_at lt @cutoff"], {"state": state, "cutoff": cutoff})
                deleted += sum(self._delete_unchanged(entity) for entity in found)
        return deleted

    def stale_claims(self) -> list[LedgerRecord]:
        """Claims whose holder has not written for ``stale_after``: each is an event whose holder died,
        possibly after starting the ADO run. Reconcile them (look the run up in ADO), then replay."""
        cutoff = _now() - self.stale_after
        found = self._query(["state eq @state", "updated_at lt @cutoff"], {"state": "claimed", "cutoff": cutoff})
        return sorted(found, key=lambda r: r.updated_at)

    def set_tagged(self, record: LedgerRecord) -> None:
        """Tag-back done for a triggered record. A merge of that one property, without an ETag: a triggered
        record is final (nobody else writes it), and a record purged meanwhile needs nothing."""
        with self._errors("record a tag-back"), suppress(ResourceNotFoundError):
            self._table.update_entity({"PartitionKey": PARTITION, "RowKey": record.row_key, "tagged": True},
                                      mode=UpdateMode.MERGE)

    def record_tag_failure(self, record: LedgerRecord, error: str, *, attempts: int, give_up: bool) -> None:
        """Tag-back retry failed: count it, keep why, and (``give_up``) stop retrying it. A merge, like
        :meth:`set_tagged`; the tag stays owed (``tagged`` False) so it remains visible."""
        with self._errors("record a tag-back failure"), suppress(ResourceNotFoundError):
            self._table.update_entity({"PartitionKey": PARTITION, "RowKey": record.row_key, "tag_attempts": attempts,
                                       "tag_error": _clean(error, limit=2000), "tag_gave_up": give_up},
                                      mode=UpdateMode.MERGE)

    def untagged(self, *, include_given_up: bool = False) -> list[LedgerRecord]:
        """Triggered records whose tag-back has not been written yet, for the sweeper: least-tried first,
        then oldest, so a few permanently refused tags cannot starve the rest; given-up ones left out."""
        found = self._query(["state eq @state", "tagged eq @tagged"], {"state": "triggered", "tagged": False})
        kept = [r for r in found if include_given_up or not r.tag_gave_up]
        return sorted(kept, key=lambda r: (r.tag_attempts or 0, r.updated_at))

    # ---- internals ----------------------------------------------------------------------------------

    def _delete_unchanged(self, entity: TableEntity) -> bool:
        """Delete a row unless written since it was read; True only if this call deleted it. A row someone
        else deleted meanwhile answers 404, which azure-data-tables returns like a success (it never raises
        ResourceNotFoundError here), so the success is seen through ``cls``, which the SDK calls for a 204 only."""
        replies: list[tuple[Any, ...]] = []
        with suppress(ResourceModifiedError):
            self._table.delete_entity(entity["PartitionKey"], entity["RowKey"], etag=entity.metadata["etag"],
                                      match_condition=MatchConditions.IfNotModified,
                                      cls=lambda *reply: replies.append(reply))
        return bool(replies)

    def _read(self, pk: str, rk: str) -> tuple[LedgerRecord, str]:
        entity = self._table.get_entity(pk, rk)
        return _from_entity(entity), str(entity.metadata["etag"])

    def _entities(self, clauses: Sequence[str], params: Mapping[str, Any]) -> Iterator[TableEntity]:
        """The ledger's rows matching every clause. Always scoped to the ledger's partition: Azure then
        scans one partition, not the table, and a table shared with other rows only yields ours."""
        flt = " and ".join(("PartitionKey eq @partition", *clauses))
        for entity in self._table.query_entities(flt, parameters={**params, "partition": PARTITION}):
            if "claim_id" in entity:  # skip rows that are not ledger records
                yield entity

    def _query(self, clauses: Sequence[str], params: Mapping[str, Any]) -> Iterator[LedgerRecord]:
        with self._errors("list ledger records"):
            yield from map(_from_entity, self._entities(clauses, params))

    def _write(self, claim: Claim, record: LedgerRecord, action: str) -> tuple[LedgerRecord, str]:
        if not claim.owned or claim.etag is None:
            raise LedgerError(f"Cannot {action} on a '{claim.status}' claim.", hint="Only claimed/retry own the key.")
        pk, rk = PARTITION, claim.record.row_key
        with self._errors(action):
            try:
                meta = self._table.update_entity(
                    _to_entity(pk, rk, record),
                    mode=UpdateMode.REPLACE,
                    etag=claim.etag,
                    match_condition=MatchConditions.IfNotModified,
                )
                return record, str(meta["etag"])
            except (ResourceModifiedError, ResourceNotFoundError):
                try:
                    current, etag = self._read(pk, rk)
                except ResourceNotFoundError:
                    current, etag = None, ""
            if current is not None and current.claim_id == claim.record.claim_id and _same_result(current, record):
                return current, etag  # our own write, retried by the SDK after a lost response
            if current is not None and current.claim_id == claim.record.claim_id:
                what = f"this claim was already recorded as {current.state}"
            elif current is not None:
                what = (
                    f"it was taken over by holder {current.holder} (state {current.state}, attempt {current.attempts})"
                )
            else:
                what = "its record was deleted"
            raise LostClaimError(
                f"Lost the ledger claim on {claim.record.key[:200]!r}: {what} before this holder could {action}.",
                current=current,
                hint="If this holder started an ADO run, it may duplicate the current holder's: report it, do not "
                "retry. A holder that can take longer than stale_after must renew() its claim.",
            )

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Turn storage failures into LedgerError saying what to check (see :mod:`._ledger_errors`)."""
        try:
            yield
        except NoStorageToken as exc:
            raise no_token(exc.cause, exc.client_id, action, self._where) from None
        except LedgerError:
            raise
        except AzureError as exc:
            token = hasattr(self._table.credential, "get_token")
            raise storage_error(exc, action, self._where, token=token) from None

