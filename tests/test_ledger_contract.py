"""Ledger details a user relies on: addresses another handler can compute, text that is safe to store and
print, secrets masked out of storage errors, a table name and URL checked before use, purges that never
delete what a redelivery still needs. Storage behaviour runs against Azurite."""

from __future__ import annotations

import base64
import hashlib
import socket
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from azure.core.credentials import AzureNamedKeyCredential

from amlrelay.errors import LedgerError
from amlrelay.ledger import (
    MIN_RETENTION,
    PARTITION,
    Ledger,
    LostClaimError,
    _clean,
    _from_entity,
    _redact,
    _split_kw,
    _utc,
    table_address,
)
from tests.servers import RecordedRequest
from tests.servers._base import LoopbackServer, Reply


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
    from azure.identity import ManagedIdentityCredential

    with pytest.raises(LedgerError) as plain:  # the SDK would refuse it with a bare ValueError: a "bug" exit
        Ledger.from_table_url("http://acct.table.core.windows.net", ManagedIdentityCredential())
    assert plain.value.message == "Ledger table URL must start with https://, got 'http://acct.table.core.windows.net'."
    assert "AMLRELAY_LEDGER_TABLE_URL" in plain.value.hint
    key = AzureNamedKeyCredential("acct", "a2V5")
    local = Ledger.from_table_url("http://127.0.0.1:1/acct", key, holder="job-a", stale_after=timedelta(minutes=5))
    assert (local.holder, local.stale_after) == ("job-a", timedelta(minutes=5))  # Azurite, as named in `status`
    assert Ledger.from_table_url("https://contoso.table.core.windows.net", key)  # a key works over HTTPS too


def test_client_options_default_to_bounded_retries_and_timeouts() -> None:
    ledger_kw, client_kw = _split_kw({"stale_after": timedelta(1), "holder": "h", "retry_total": 0})
    assert ledger_kw == {"stale_after": timedelta(1), "holder": "h"}
    assert client_kw == {"retry_total": 0, "connection_timeout": 10, "read_timeout": 30}


def test_rows_written_by_hand_or_by_strangers_are_refused_clearly() -> None:
    with pytest.raises(LedgerError) as caught:
        _from_entity({"RowKey": "rk", "state": "done"})
    assert caught.value.message == "Ledger row rk has unknown state 'done'."
    assert caught.value.hint == "It was written by a newer or foreign writer; do not share the table."
    with pytest.raises(LedgerError) as edited:
        _utc("yesterday")
    assert edited.value.message == "Ledger row has a non-datetime timestamp: 'yesterday'."
    assert edited.value.hint == "Someone edited the ledger table by hand: delete or fix that row."
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


# ---- what a row records ------------------------------------------------------------------------------------

@pytest.fixture
def ledger(azurite: str, table_name: str) -> Ledger:
    made = Ledger.from_connection_string(azurite, table=table_name, holder="job-a", retry_total=0)
    made.ensure_table()
    made.ensure_table()  # idempotent: the runbook calls it on every cold start
    return made


def _row(ledger: Ledger, key: str) -> dict[str, Any]:
    return dict(ledger._table.get_entity(*table_address(key)))


def test_a_row_records_the_outcome_in_named_properties_and_no_secret(ledger: Ledger) -> None:
    """The row format is a contract with the Logic App handler (which writes and reads the same rows) and with
    whoever reads the table in the portal: these names, chunks of 32,000 characters for the event, no empty
    properties, and nothing a failure reason carried that could open something."""
    event = "{" + "e" * 69_998 + "}"
    held = ledger.claim("k1", route="deploy", event_id="e1", event_type="ModelRegistered", event_json=event)
    reason = ("ADO said 401 to Authorization: Bearer eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.x.y with "
              "https://acct.table.core.windows.net/t?sv=1&sig=c2lnbmF0dXJlc2VjcmV0 AccountKey=a2V5a2V5a2V5")
    failed = ledger.mark_failed(held, reason)
    row = _row(ledger, "k1")
    assert set(row) == {"PartitionKey", "RowKey", "schema", "key", "route", "event_id", "event_type", "state",
                        "claimed_at", "updated_at", "attempts", "holder", "claim_id", "event_json_truncated",
                        "reason", "event_json", "event_json_1", "event_json_2"}
    assert (row["PartitionKey"], row["RowKey"], row["schema"]) == ("outcomes", table_address("k1")[1], 1)
    assert (row["key"], row["route"], row["event_id"], row["event_type"]) == ("k1", "deploy", "e1", "ModelRegistered")
    assert (row["state"], row["attempts"], row["holder"], row["claim_id"]) == ("failed", 1, "job-a",
                                                                              held.record.claim_id)
    assert row["event_json_truncated"] is False
    assert [len(row[p]) for p in ("event_json", "event_json_1", "event_json_2")] == [32_000, 32_000, 6_000]
    assert row["event_json"] + row["event_json_1"] + row["event_json_2"] == event
    assert row["reason"] == ("ADO said 401 to Authorization: Bearer *** with "
                             "https://acct.table.core.windows.net/t?sv=1&sig=*** AccountKey=***")
    assert failed.reason == row["reason"]
    assert "eyJ0eXAi" not in str(row)
    assert "c2lnbmF0dXJl" not in str(row)
    assert "a2V5a2V5" not in str(row)


def test_every_field_reads_back_as_written(ledger: Ledger) -> None:
    held = ledger.claim("k\x01" + "x" * 9000, route="r\x7f", event_id="id\x00", event_type="t\x1f",
                        event_json='{"a": "\x02"}')
    done = ledger.mark_triggered(held, run_id=4242, run_url="https://dev.azure.com/contoso/p/_build?buildId=4242\x00",
                                 tag_target='{"model": "m", "version": "2"}')
    assert (done.key, done.route, done.event_id, done.event_type) == ("k\\x01" + "x" * 7994 + "…", "r\\x7f",
                                                                      "id\\x00", "t\\x1f")
    assert done.event_json == '{"a": "\\x02"}'
    assert done.ado_run_url == "https://dev.azure.com/contoso/p/_build?buildId=4242\\x00"
    stored = ledger.get("k\x01" + "x" * 9000)
    assert stored == done
    assert stored.event_json_truncated is False
    assert stored.tagged is False
    assert stored.tag_attempts is None
    assert stored.tag_gave_up is None


def test_rows_without_optional_properties_read_with_their_defaults(ledger: Ledger) -> None:
    """A row as an older writer or the Logic App may leave it: no attempts, no event, no identity texts."""
    when = datetime(2026, 11, 30, 12, 0, 0, 250_000, tzinfo=timezone.utc)
    rk = table_address("bare")[1]
    ledger._table.create_entity({"PartitionKey": "outcomes", "RowKey": rk, "state": "triggered", "claim_id": "c1",
                                 "claimed_at": when, "updated_at": when, "ado_run_id": 7})
    record = ledger.get("bare")
    assert record is not None
    assert (record.key, record.route, record.event_id, record.event_type, record.holder) == ("", "", "", "", "")
    assert (record.attempts, record.event_json, record.event_json_truncated) == (1, None, False)
    assert (record.ado_run_id, record.ado_run_url, record.reason, record.row_key) == (7, None, None, rk)
    assert (record.tag_target, record.tagged, record.tag_attempts, record.tag_gave_up) == (None, None, None, None)
    assert record.claimed_at == when
    for stamp in (record.claimed_at, record.updated_at):  # plain aware datetimes, not the SDK's subclass
        assert type(stamp) is datetime
        assert stamp.tzinfo is timezone.utc


@pytest.mark.parametrize(("event", "kept", "truncated"), [
    ("", "", False),
    ("x" * 128_000, "x" * 128_000, False),
    ("x" * 128_001, "x" * 128_000, True),
    (None, None, False),
], ids=["empty", "exactly-128000", "128001", "none"])
def test_the_event_is_kept_up_to_128000_characters(ledger: Ledger, event: str | None, kept: str | None,
                                                   truncated: bool) -> None:
    held = ledger.claim("k", route="r", event_id="e", event_type="t", event_json=event)
    assert (held.record.event_json, held.record.event_json_truncated) == (kept, truncated)
    stored = ledger.get("k")
    assert stored is not None
    assert (stored.event_json, stored.event_json_truncated) == (kept, truncated)


# ---- errors that say what was being done, where, and never with a secret ----------------------------------

def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_every_storage_failure_names_the_action_and_the_table(ledger: Ledger, table_name: str) -> None:
    held = ledger.claim("k", route="r", event_id="e", event_type="t", event_json=None)
    endpoint = f"http://127.0.0.1:{_dead_port()}/dev store"  # a typo stays visible: the endpoint is named whole
    dead = Ledger.from_table_url(endpoint, AzureNamedKeyCredential("devstoreaccount1", "a2V5"), table=table_name,
                                 retry_total=0)
    actions: list[tuple[str, Callable[[], object]]] = [
        ("claim an event", lambda: dead.claim("k", route="r", event_id="e", event_type="t", event_json=None)),
        ("record the ADO run", lambda: dead.mark_triggered(held, run_id=1, run_url=None)),
        ("record a failure", lambda: dead.mark_failed(held, "x")),
        ("renew a claim", lambda: dead.renew(held)),
        ("read the ledger", lambda: dead.get("k")),
        ("list ledger records", lambda: dead.recent()),
        ("list ledger records", lambda: dead.stale_claims()),
        ("list ledger records", lambda: dead.untagged()),
        ("purge old ledger records", lambda: dead.purge(MIN_RETENTION)),
        ("record a tag-back", lambda: dead.set_tagged(held.record)),
        ("record a tag-back failure", lambda: dead.record_tag_failure(held.record, "x", attempts=1, give_up=False)),
        ("create the ledger table", lambda: dead.ensure_table()),
    ]
    for action, call in actions:
        with pytest.raises(LedgerError) as caught:
            call()
        assert caught.value.message.startswith(
            f"Ledger storage unreachable while trying to {action} (table '{table_name}' at {endpoint}): "), action


def test_a_sas_in_the_table_url_never_reaches_a_message(table_name: str) -> None:
    url = f"http://127.0.0.1:{_dead_port()}/devstoreaccount1?sv=2020-08-04&ss=t&sig=c2lnbmF0dXJlc2VjcmV0"
    dead = Ledger.from_table_url(url, credential=None, table=table_name, retry_total=0)  # type: ignore[arg-type]
    with pytest.raises(LedgerError) as caught:
        dead.get("k")
    assert f"(table '{table_name}' at http://127.0.0.1:" in caught.value.message
    assert "c2lnbmF0dXJl" not in str(caught.value)


def test_access_denied_with_a_key_says_to_check_the_key(azurite: str, table_name: str) -> None:
    secret = azurite.split("AccountKey=")[1].split(";")[0]
    wrong = Ledger.from_connection_string(azurite.replace(secret, "d3Jvbmc=" * 11), table=table_name, retry_total=0)
    with pytest.raises(LedgerError) as denied:
        wrong.ensure_table()
    assert denied.value.message.startswith(f"Ledger access denied while trying to create the ledger table "
                                           f"(table '{table_name}' at http://")
    assert denied.value.hint.startswith("Check the account key or SAS in AMLRELAY_LEDGER_CONNECTION_STRING")
    assert "Storage Table Data Contributor" not in denied.value.hint  # a key is not given roles
    assert "d3Jvbmc" not in str(denied.value)


def test_a_malformed_connection_string_says_how_to_get_one() -> None:
    with pytest.raises(LedgerError) as caught:
        Ledger.from_connection_string("AccountName=x;AccountKey=not-base64!!;Nonsense", table="ledger")
    assert caught.value.message == "The ledger connection string is malformed."
    assert caught.value.hint == ('Set AMLRELAY_LEDGER_CONNECTION_STRING to a storage connection string (locally: '
                                 'eval "$(scripts/azurite env)").')
    assert "not-base64" not in str(caught.value)


def test_table_names_and_urls_in_errors_are_cut_to_80_characters() -> None:
    with pytest.raises(LedgerError) as name:
        Ledger.from_connection_string("UseDevelopmentStorage=true", table="-" * 100)
    assert name.value.message == f"Invalid ledger table name {'-' * 79 + '…'!r}."
    with pytest.raises(LedgerError) as url:
        Ledger.from_table_url("ftp://" + "a" * 100, credential=AzureNamedKeyCredential("a", "a2V5"))
    assert url.value.message == f"Ledger table URL must start with https://, got {('ftp://' + 'a' * 100)[:79] + '…'!r}."
    assert url.value.hint == ("Set AMLRELAY_LEDGER_TABLE_URL to the storage account's table endpoint, e.g. "
                              "https://<account>.table.core.windows.net (a managed identity's token is only sent "
                              "over HTTPS).")


def test_storage_error_details_keep_one_line_and_blank_stays_blank() -> None:
    assert _redact("  \n  ") == ""
    assert _redact("") == ""


def test_a_lost_claim_is_a_ledger_error_with_the_current_record() -> None:
    lost = LostClaimError("Lost it.", current=None)
    assert isinstance(lost, LedgerError)
    assert (lost.message, lost.hint, lost.current, str(lost)) == ("Lost it.", "", None, "Lost it.")


# ---- bounded retries: a ledger that answers 503 fails the event within seconds -----------------------------

class BusyTable(LoopbackServer):
    """Table storage under load: every request gets 503 ServerBusy (with a 1 ms retry-after, so the test does
    not wait for the SDK's back-off)."""

    def handle(self, request: RecordedRequest) -> Reply | None:
        body = {"odata.error": {"code": "ServerBusy", "message": {"lang": "en-US", "value": "The server is busy."}}}
        return Reply.json(503, body, headers=[("x-ms-retry-after-ms", "1")],
                          content_type="application/json;odata=minimalmetadata")


@pytest.mark.parametrize("how", ["connection-string", "table-url"])
def test_a_busy_table_is_retried_three_times_by_default_then_reported(how: str) -> None:
    with BusyTable() as busy:
        endpoint = f"{busy.url}/devstoreaccount1"
        key = AzureNamedKeyCredential("devstoreaccount1", "a2V5")
        make: dict[str, Callable[..., Ledger]] = {
            "connection-string": lambda **kw: Ledger.from_connection_string(
                f"AccountName=devstoreaccount1;AccountKey=a2V5;TableEndpoint={endpoint};", table="ledger", **kw),
            "table-url": lambda **kw: Ledger.from_table_url(endpoint, key, table="ledger", **kw),
        }
        with pytest.raises(LedgerError) as caught:
            make[how](holder="job-a").get("k")
        assert len(busy.requests) == 4
        assert "HTTP 503 ServerBusy: " in caught.value.message  # the service's code as it spells it
        assert "scripts/azurite start" in caught.value.hint
        busy.reset_state()
        with pytest.raises(LedgerError):
            make[how](retry_total=1, stale_after=timedelta(minutes=1)).get("k")
        assert len(busy.requests) == 2
