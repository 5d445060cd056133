"""The ledger's rows: what one record is, how it maps to a Table entity and back, and the text hygiene
applied to everything stored (hostile input arrives here from Event Grid payloads and ADO answers).

Why a module of its own: this is the storage *format* — the row address the other handlers (the Logic App)
reproduce, the chunking of the event JSON, the redaction of secrets — and it is pure (no I/O), so it can be
read and tested without the claim protocol in :mod:`amlrelay.ledger`, which is the public import path for
all of it (``from amlrelay.ledger import LedgerRecord, table_address``).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Literal

from .errors import LedgerError

State = Literal["claimed", "triggered", "failed"]
Status = Literal["claimed", "duplicate", "busy", "retry"]

SCHEMA = 1
PARTITION = "outcomes"
_MAX_ROW_KEY = 1024
_TABLE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]{2,62}$")
_CHUNK = 32_000  # a string property holds 64 KiB = 32 Ki UTF-16 units; keep a margin
_EVENT_CHUNKS = 4  # event JSON up to 128,000 chars (an AML event is ~2 KB); beyond that, truncated
_MAX_TEXT = 8_000  # key, reason, url ... are cut to this for display; the row key hashes the full key
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SECRETISH = re.compile(
    r"(?i)\b(sig=|accountkey=|sharedaccesssignature=|token=)[^&;\s'\"]+|\b(bearer\s+|basic\s+)[\w.~+/-]{16,}=*"
)
_CLIENT_DEFAULTS: dict[str, Any] = {"retry_total": 3, "connection_timeout": 10, "read_timeout": 30}


@dataclass(frozen=True)
class LedgerRecord:
    """One outcome+route as stored. ``event_json`` is the first (or latest taking-over) delivery, kept so
    a stale claim can be replayed; ``event_json_truncated`` says it was too large to keep whole."""

    key: str
    route: str
    event_id: str
    event_type: str
    state: State
    ado_run_id: int | None
    ado_run_url: str | None
    reason: str | None
    claimed_at: datetime
    updated_at: datetime
    attempts: int
    holder: str
    claim_id: str
    event_json: str | None
    event_json_truncated: bool = False
    row_key: str = ""
    """The Table RowKey (see :func:`table_address`). ``key`` is the display form (control characters
    escaped, cut at 8,000 characters), so this is the address."""
    tag_target: str | None = None
    """Tag-back (AMLRELAY_TAG_BACK): the AML run or model version to tag with the ADO run, as JSON."""
    tagged: bool | None = None
    """Tag-back: False until the tag is written (the sweeper retries it), then True; None when off."""
    tag_attempts: int | None = None
    """Tag-back: failed retries so far (None: none yet). The sweeper tries the least-tried first."""
    tag_error: str | None = None
    """Tag-back: why the last retry failed."""
    tag_gave_up: bool | None = None
    """Tag-back: True once a permanent refusal (403, 404, 400) repeated too often: no longer retried."""


@dataclass(frozen=True)
class Claim:
    """Result of :meth:`Ledger.claim`.

    * ``claimed``: the key was new and is ours: call ADO, then :meth:`Ledger.mark_triggered`/``mark_failed``.
    * ``retry``: ours after taking over a ``failed`` record or a stale ``claimed`` one; ``previous`` is the
      record as it was. If ``previous.state == "claimed"`` its holder may have started the ADO run and died
      before recording it: look for that run in ADO before starting another (see :meth:`Ledger.stale_claims`).
    * ``duplicate``: already triggered; ``record.ado_run_id``/``ado_run_url`` name the run.
    * ``busy``: another holder claimed it less than ``stale_after`` ago and is presumably working on it.
    """

    status: Status
    record: LedgerRecord
    etag: str | None
    previous: LedgerRecord | None = None

    @property
    def owned(self) -> bool:
        return self.status in ("claimed", "retry")


def table_address(key: str) -> tuple[str, str]:
    """(PartitionKey, RowKey) for a ledger key.

    Table keys forbid ``/ \\ # ?`` and control characters and are capped at 1 KiB, and AML ids contain
    slashes, so the row key is the key's UTF-8 bytes in URL-safe base64. That choice is a contract with the
    other handlers: a Logic App computes the same address with its own expression language,
    ``replace(replace(base64(key), '/', '_'), '+', '-')``, which has no hash function, and so claims the same
    record. A key too long for that (only hostile input gets there) is stored under ``sha256-<hex>`` instead,
    which cannot collide with base64 (a base64 string's length is a multiple of 4; this one's is 71). One
    partition: AML outcomes arrive at a few per second, far below a partition's 2,000 entities/s.
    """
    raw = key.encode("utf-8", "surrogatepass")
    encoded = base64.urlsafe_b64encode(raw).decode("ascii")
    if len(encoded) <= _MAX_ROW_KEY:
        return PARTITION, encoded
    return PARTITION, "sha256-" + hashlib.sha256(raw).hexdigest()


def _clean(text: str, limit: int | None = _MAX_TEXT) -> str:
    """Make arbitrary (hostile) text storable and printable: no lone surrogates, no control characters."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"


def _mask(match: re.Match[str]) -> str:
    return (match.group(1) or match.group(2)) + "***"


def _redact(text: str) -> str:
    first = (text.strip().splitlines() or [""])[0]
    return _SECRETISH.sub(_mask, first)[:300]


def _utc(value: Any) -> datetime:
    if not isinstance(value, datetime):
        raise LedgerError(f"Ledger row has a non-datetime timestamp: {value!r}.",
                          hint="Someone edited the ledger table by hand: delete or fix that row.")
    # TablesEntityDatetime is a datetime subclass; give callers a plain aware datetime.
    return datetime(*value.timetuple()[:6], value.microsecond, tzinfo=timezone.utc)


def _same_result(a: LedgerRecord, b: LedgerRecord) -> bool:
    return (a.state, a.ado_run_id, a.reason) == (b.state, b.ado_run_id, b.reason)


def _check_table_name(table: str) -> None:
    if not _TABLE_NAME.match(table):
        raise LedgerError(
            f"Invalid ledger table name {_clean(table, 80)!r}.",
            hint="Use 3-63 letters and digits, starting with a letter.",
        )


def _split_kw(kw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    ledger_kw: dict[str, Any] = {k: kw.pop(k) for k in ("stale_after", "holder") if k in kw}
    return ledger_kw, {**_CLIENT_DEFAULTS, **kw}


def _with_event(record: LedgerRecord, event_json: str | None) -> LedgerRecord:
    if event_json is None:
        return record
    text = _clean(event_json, limit=None)
    cap = _CHUNK * _EVENT_CHUNKS
    return replace(record, event_json=text[:cap], event_json_truncated=len(text) > cap)


_PLAIN = ("key", "route", "event_id", "event_type", "state", "claimed_at", "updated_at", "attempts", "holder",
          "claim_id", "event_json_truncated", "ado_run_id", "ado_run_url", "reason",
          "tag_target", "tagged", "tag_attempts", "tag_error", "tag_gave_up")  # fmt: skip


def _to_entity(pk: str, rk: str, r: LedgerRecord) -> dict[str, Any]:
    entity: dict[str, Any] = {"PartitionKey": pk, "RowKey": rk, "schema": SCHEMA}
    entity.update((name, getattr(r, name)) for name in _PLAIN if getattr(r, name) is not None)
    if r.event_json is not None:
        for i in range(0, max(len(r.event_json), 1), _CHUNK):
            entity["event_json" if i == 0 else f"event_json_{i // _CHUNK}"] = r.event_json[i : i + _CHUNK]
    return entity


def _from_entity(e: Mapping[str, Any]) -> LedgerRecord:
    if e.get("state") not in ("claimed", "triggered", "failed"):
        raise LedgerError(
            f"Ledger row {e.get('RowKey')} has unknown state {e.get('state')!r}.",
            hint="It was written by a newer or foreign writer; do not share the table.",
        )
    v: dict[str, Any] = {name: e.get(name) for name in _PLAIN}
    for name in ("key", "route", "event_id", "event_type", "holder", "claim_id"):
        v[name] = str(v[name] or "")
    parts = [e.get("event_json")] + [e.get(f"event_json_{i}") for i in range(1, _EVENT_CHUNKS)]
    v.update(
        claimed_at=_utc(v["claimed_at"]),
        updated_at=_utc(v["updated_at"]),
        attempts=int(v["attempts"] or 1),
        event_json_truncated=bool(v["event_json_truncated"]),
        ado_run_id=None if v["ado_run_id"] is None else int(v["ado_run_id"]),
        event_json="".join(p for p in parts if p) if parts[0] is not None else None,
        row_key=str(e.get("RowKey", "")),
        tagged=None if v["tagged"] is None else bool(v["tagged"]),
        tag_attempts=None if v["tag_attempts"] is None else int(v["tag_attempts"]),
        tag_gave_up=None if v["tag_gave_up"] is None else bool(v["tag_gave_up"]),
    )
    return LedgerRecord(**v)
