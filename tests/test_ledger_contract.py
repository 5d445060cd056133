"""Ledger details a user relies on: addresses another handler can compute, text that is safe to store and
print, secrets masked out of storage errors, a table name and URL checked before use, purges that never
delete what a redelivery still needs. Storage behaviour runs against Azurite."""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime, timedelta, timezone

import pytest

from amlrelay.errors import LedgerError
from amlrelay.ledger import (
    MIN_RETENTION,
    PARTITION,
    Ledger,
    _clean,
    _from_entity,
    _redact,
    _split_kw,
    _utc,
    table_address,
)


def test_row_keys_are_url_safe_base64_up_to_1024_characters_then_a_hash() -> None:
    key = "/subscriptions/x|model|m?/#\\|1|route"
    assert table_address(key) == (PARTITION, base64.urlsafe_b64encode(key.encode()).decode())
    fits = "k" * 768  # 768 bytes -> exactly 1024 base64 characters
    assert table_address(fits)[1] == base64.urlsafe_b64encode(fits.encode()).decode()
    too_long = "k" * 769
    address = table_address(too_long)[1]
    assert address == "sha256-" + hashlib.sha256(too_long.encode()).hexdigest()
    assert len(address) == 71


def test_text_is_made_storable_and_printable() -> None:
    assert _clean("a\x00b\x1fc\x7fd\te\nf\rg") == "a\\x00b\\x1fc\\x7fd\te\nf\rg"  # tab/newline/CR are kept
    assert _clean("x\ud800y") == "x\\ud800y"
    assert _clean("abcdef", 4) == "abc…"
    assert _clean("abcd", 4) == "abcd"
    assert _clean("x" * 9000) == "x" * 7999 + "…"
    assert _clean("x" * 9000, None) == "x" * 9000


@pytest.mark.parametrize(("text", "shown"), [
    ("https://a.table.core.windows.net/t?sv=1&sig=abcdEFGH1234%2B&se=2", "https://a.table.core.windows.net/t?sv=1&sig=***&se=2"),
    ("DefaultEndpointsProtocol=https;AccountKey=c2VjcmV0a2V5;x=1", "DefaultEndpointsProtocol=https;AccountKey=***;x=1"),
    ("SharedAccessSignature=sv=1&sig=zz;", "SharedAccessSignature=***&sig=***;"),
    ("failed with Authorization: Bearer eyJ0eXAiOiJKV1Qi.abc.def now", "failed with Authorization: Bearer *** now"),
    ("Basic OmxvbmctcGF0LXZhbHVlLXh5eg== refused", "Basic *** refused"),
    ("token=abc123&x=1", "token=***&x=1"),
    ("Bearer short", "Bearer short"),
    ("first line\nsecond line sig=secret", "first line"),
    ("y" * 400, "y" * 300),
])
def test_storage_errors_never_show_a_key_sas_or_token(text: str, shown: str) -> None:
    assert _redact(text) == shown


def test_the_table_name_and_url_are_checked_before_use() -> None:
    with pytest.raises(LedgerError) as caught:
        Ledger.from_table_url("https://acct.table.core.windows.net", credential=None, table="1bad")  # type: ignore[arg-type]
    assert caught.value.message == "Invalid ledger table name '1bad'."
    assert caught.value.hint == "Use 3-63 letters and digits, starting with a letter."
    with pytest.raises(LedgerError, match="Invalid ledger table name"):
        Ledger.from_connection_string("UseDevelopmentStorage=true", table="ab")
    with pytest.raises(LedgerError) as url:
        Ledger.from_table_url("acct.table.core.windows.net", credential=None)  # type: ignore[arg-type]
    assert url.value.message == "Ledger table URL must start with https://, got 'acct.table.core.windows.net'."


def test_client_options_default_to_bounded_retries_and_timeouts() -> None:
    ledger_kw, client_kw = _split_kw({"stale_after": timedelta(1), "holder": "h", "retry_total": 0})
    assert ledger_kw == {"stale_after": timedelta(1), "holder": "h"}
    assert client_kw == {"retry_total": 0, "connection_timeout": 10, "read_timeout": 30}


def test_rows_written_by_hand_or_by_strangers_are_refused_clearly() -> None:
    with pytest.raises(LedgerError) as caught:
        _from_entity({"RowKey": "rk", "state": "done"})
    assert caught.value.message == "Ledger row rk has unknown state 'done'."
    with pytest.raises(LedgerError, match="non-datetime timestamp: 'yesterday'"):
        _utc("yesterday")
    aware = _utc(datetime(2026, 1, 2, 3, 4, 5, 6))
    assert aware == datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc)


def test_purge_never_deletes_what_a_redelivery_may_still_need(azurite: str, table_name: str) -> None:
    assert timedelta(days=2) == MIN_RETENTION
    ledger = Ledger.from_connection_string(azurite, table=table_name)
    ledger.ensure_table()
    with pytest.raises(LedgerError) as caught:
        ledger.purge(timedelta(days=1, hours=23))
    assert caught.value.message == "Refusing to purge records younger than 2 days."
    done = ledger.claim("k-done", route="r", event_id="e", event_type="ModelRegistered", event_json=None)
    ledger.mark_triggered(done, run_id=1, run_url=None)
    failed = ledger.claim("k-failed", route="r", event_id="e", event_type="ModelRegistered", event_json=None)
    ledger.mark_failed(failed, "x")
    ledger.claim("k-held", route="r", event_id="e", event_type="ModelRegistered", event_json=None)
    assert ledger.purge(MIN_RETENTION) == 0  # all are new
    assert sorted(r.key for r in ledger.recent()) == ["k-done", "k-failed", "k-held"]
