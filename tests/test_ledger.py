"""The exactly-once ledger against a real Azurite (tests/azurite_plugin.py starts one if needed)."""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import socket
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, cast

import pytest
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError
from azure.data.tables import TableClient, UpdateMode

from amlrelay.errors import LedgerError
from amlrelay.ledger import MIN_RETENTION, Claim, Ledger, LostClaimError, table_address
from tests.ledger_clock import T0

WS = "/subscriptions/0000/resourcegroups/rg/providers/microsoft.machinelearningservices/workspaces/ws"
KEY = f"{WS}|run|r1|completed|deploy"
LONG = timedelta(hours=1)


@pytest.fixture
def make(azurite: str, table_name: str) -> Any:
    """Ledger factory: each call is another holder (job) on the same fresh table."""
    created: list[bool] = []

    def _make(holder: str = "", stale_after: timedelta = LONG) -> Ledger:
        ledger = Ledger.from_connection_string(
            azurite, table=table_name, stale_after=stale_after, holder=holder or None, retry_total=0
        )
        if not created:
            ledger.ensure_table()
            created.append(True)
        return ledger

    return _make


def claim(ledger: Ledger, key: str = KEY, event_id: str = "e1", event_json: str | None = '{"id": "e1"}') -> Claim:
    return ledger.claim(key, route="deploy", event_id=event_id, event_type="RunCompleted", event_json=event_json)


def test_first_claim_then_duplicate_after_triggered(make: Any) -> None:
    a, b = make("job-a"), make("job-b")
    first = claim(a)
    assert first.status == "claimed"
    assert first.owned
    assert (first.record.state, first.record.attempts, first.record.holder) == ("claimed", 1, "job-a")
    done = a.mark_triggered(first, run_id=4242, run_url="https://dev.azure.com/o/p/_build/results?buildId=4242")
    assert (done.state, done.ado_run_id) == ("triggered", 4242)

    again = claim(b, event_id="e2")  # RunStatusChanged(Completed) of the same run, another delivery
    assert again.status == "duplicate"
    assert not again.owned
    assert again.record.ado_run_id == 4242
    assert again.record.ado_run_url
    assert again.record.ado_run_url.endswith("4242")
    assert again.record.event_id == "e1"  # the record keeps the delivery that triggered
    stored = a.get(KEY)
    assert stored is not None
    assert stored.state == "triggered"
    assert stored.event_json == '{"id": "e1"}'
    assert a.get(KEY + "|other") is None


def test_busy_while_held_by_a_live_holder(make: Any) -> None:
    a, b = make("job-a"), make("job-b")
    held = claim(a)
    busy = claim(b, event_id="e2")
    assert busy.status == "busy"
    assert not busy.owned
    assert busy.record.holder == "job-a"
    with pytest.raises(LedgerError, match="busy"):
        b.mark_triggered(busy, run_id=1, run_url=None)
    assert a.mark_triggered(held, run_id=7, run_url=None).ado_run_id == 7


def test_takeover_after_stale_and_lost_claim_detection(make: Any) -> None:
    a, b = make("job-a"), make("job-b", stale_after=timedelta(milliseconds=50))
    old = claim(a)
    time.sleep(0.1)
    taken = claim(b, event_id="e2", event_json=None)
    assert taken.status == "retry"
    assert taken.owned
    assert taken.previous is not None
    assert taken.previous.holder == "job-a"
    assert taken.previous.state == "claimed"  # holder died mid-call: the caller must reconcile with ADO
    assert taken.record.attempts == 2
    assert taken.record.holder == "job-b"
    assert taken.record.event_json == '{"id": "e1"}'  # no new body given: the old one is kept for replay

    marks: list[Callable[[], object]] = [lambda: a.mark_triggered(old, run_id=1, run_url=None),
                                         lambda: a.mark_failed(old, "boom")]
    for mark in marks:
        with pytest.raises(LostClaimError, match="taken over by holder job-b") as info:
            mark()
        assert info.value.current is not None
        assert info.value.current.holder == "job-b"
    assert b.mark_triggered(taken, run_id=2, run_url=None).ado_run_id == 2
    with pytest.raises(LostClaimError):  # the loser still cannot overwrite the winner's result
        a.mark_triggered(old, run_id=1, run_url=None)
    record = a.get(KEY)
    assert record is not None
    assert (record.state, record.ado_run_id) == ("triggered", 2)


def test_retry_after_failed(make: Any) -> None:
    a, b = make("job-a"), make("job-b")
    first = claim(a)
    failed = a.mark_failed(first, "ADO 503 Service Unavailable")
    assert (failed.state, failed.reason) == ("failed", "ADO 503 Service Unavailable")
    again = claim(b, event_id="e2", event_json='{"id": "e2"}')
    assert again.status == "retry"
    assert again.record.attempts == 2
    assert again.previous is not None
    assert again.previous.reason == "ADO 503 Service Unavailable"
    assert again.record.reason is None
    assert again.record.event_json == '{"id": "e2"}'
    stored = b.get(KEY)  # the row itself is replaced, not merged: the old failure's reason is gone
    assert stored is not None
    assert (stored.state, stored.holder, stored.reason) == ("claimed", "job-b", None)
    assert claim(a).status == "busy"
    b.mark_triggered(again, run_id=9, run_url=None)
    assert claim(a).status == "duplicate"


def test_renew_keeps_a_slow_holder_alive(make: Any) -> None:
    a, b = make("job-a"), make("job-b", stale_after=timedelta(milliseconds=600))
    held = claim(a)
    time.sleep(0.4)
    held = a.renew(held)
    time.sleep(0.4)  # 0.8 s since the claim, 0.4 s since the heartbeat
    assert claim(b).status == "busy"
    assert a.mark_triggered(held, run_id=3, run_url=None).state == "triggered"


def test_mark_is_idempotent_for_its_own_claim(make: Any) -> None:
    """An SDK retry after a lost response re-sends the write with the old ETag: it must not look lost."""
    a = make("job-a")
    held = claim(a)
    first = a.mark_triggered(held, run_id=5, run_url=None)
    assert a.mark_triggered(held, run_id=5, run_url=None).ado_run_id == first.ado_run_id
    with pytest.raises(LostClaimError):  # but a different result on the same claim is not a retry
        a.mark_failed(held, "other")


class LostResponses:
    """A real TableClient whose writes reach Azurite but answer like the SDK's retry after a lost response:
    409 for the insert, 412 for the update. The ledger must recognise its own claim and not report it lost."""

    def __init__(self, inner: TableClient) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def create_entity(self, entity: Any, **kw: Any) -> Any:
        self._inner.create_entity(entity, **kw)
        raise ResourceExistsError("EntityAlreadyExists (the retry of our own insert)")

    def update_entity(self, entity: Any, **kw: Any) -> Any:
        self._inner.update_entity(entity, **kw)
        raise ResourceModifiedError("UpdateConditionNotSatisfied (the retry of our own update)")


def test_lost_responses_are_recognised_as_our_own_writes(make: Any) -> None:
    a = make("job-a")
    flaky = Ledger(cast(Any, LostResponses(a._table)), holder="job-f", stale_after=timedelta(0))
    first = claim(flaky, key="k1")
    assert first.status == "claimed"
    assert first.record.holder == "job-f"
    assert flaky.mark_triggered(first, run_id=1, run_url=None).ado_run_id == 1

    a.mark_failed(claim(a, key="k2"), "503")
    taken = claim(flaky, key="k2")
    assert taken.status == "retry"
    assert taken.previous is not None  # kept across the re-read, so the relay still reconciles
    assert taken.previous.reason == "503"
    failed = flaky.mark_failed(taken, "ADO said 401 for Authorization: Bearer eyJ0eXAiOiJKV1QiLCJhbGciOi.x.y")
    assert "eyJ0eXAi" not in (failed.reason or "")
    stored = a.get("k2")
    assert stored is not None
    assert stored.reason == failed.reason


HOSTILE = {
    "slashes": "a/b\\c#d?e%2F/../..",
    "control": "run\x00\x01\t\n\x7f|x",
    "unicode": "モデル/ümlaut/🙂/\u202e/\ufeff",
    "surrogate": "run|\ud800|x",
    "odata": "' or PartitionKey ne '' or '",
    "empty": "",
    "2kb": "w/" * 1024,
    "40kb": "é" * 40_000,
}


@pytest.mark.parametrize("key", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_keys_are_stored_and_found(make: Any, key: str) -> None:
    a, b = make("job-a"), make("job-b")
    pk, rk = table_address(key)
    assert pk == "outcomes"
    assert len(rk) <= 1024
    assert not set(rk) & set("/\\#?")
    assert rk.isprintable()
    held = claim(a, key=key)
    assert held.status == "claimed"
    assert claim(b, key=key).status == "busy"
    assert claim(b, key=key + "x").status == "claimed"  # no collision with a neighbour
    a.mark_triggered(held, run_id=11, run_url=None)
    record = b.get(key)
    assert record is not None
    assert record.ado_run_id == 11
    assert record.row_key == rk
    assert "\x00" not in record.key
    assert len(record.key) <= 8000
    if key.isprintable() and len(key) <= 8000:
        assert record.key == key


def test_event_json_kept_whole_or_flagged_truncated(make: Any) -> None:
    a = make("job-a")
    big = '{"data": "' + "x" * 100_000 + '"}'
    held = claim(a, key="big", event_json=big)
    stored = a.get("big")
    assert stored is not None
    assert stored.event_json == big
    assert not stored.event_json_truncated
    a.mark_failed(held, "r")
    huge = "y" * 200_000
    claim(a, key="huge", event_json=huge)
    stored = a.get("huge")
    assert stored is not None
    assert stored.event_json_truncated
    assert stored.event_json is not None
    assert huge.startswith(stored.event_json)
    assert len(stored.event_json) >= 100_000


def test_recent_and_stale_listing(make: Any) -> None:
    a = make("job-a", stale_after=timedelta(milliseconds=300))
    keys = [f"k{i}" for i in range(6)]
    claims = {k: claim(a, key=k, event_id=k) for k in keys}
    a.mark_triggered(claims["k0"], run_id=100, run_url=None)
    a.mark_failed(claims["k1"], "no")
    time.sleep(0.4)
    a.mark_triggered(claims["k2"], run_id=102, run_url=None)

    recent = a.recent(limit=3)
    assert next(r.key for r in recent) == "k2"
    assert len(recent) == 3
    assert [r.updated_at for r in recent] == sorted((r.updated_at for r in recent), reverse=True)
    assert {r.key for r in a.recent(state="triggered")} == {"k0", "k2"}
    assert [r.key for r in a.recent(state="failed")] == ["k1"]
    assert {r.key for r in a.stale_claims()} == {"k3", "k4", "k5"}
    assert all(r.state == "claimed" and r.event_json for r in a.stale_claims())


def test_storage_errors_say_what_to_do(azurite: str, table_name: str) -> None:
    secret = azurite.split("AccountKey=")[1].split(";")[0]
    with socket.socket() as sock:  # a loopback port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = f"AccountName=devstoreaccount1;AccountKey={secret};TableEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
    ledger = Ledger.from_connection_string(dead, table=table_name, retry_total=0)
    with pytest.raises(LedgerError, match="unreachable") as info:
        claim(ledger)
    assert "scripts/azurite start" in info.value.hint
    assert secret not in str(info.value)

    with pytest.raises(LedgerError, match="malformed") as bad:
        Ledger.from_connection_string("not a connection string " + secret, table=table_name)
    assert secret not in str(bad.value)

    wrong_key = azurite.replace(secret, "d3Jvbmc=" * 11)
    with pytest.raises(LedgerError) as denied:
        Ledger.from_connection_string(wrong_key, table=table_name, retry_total=0).ensure_table()
    assert "AMLRELAY_LEDGER_CONNECTION_STRING" in denied.value.hint

    missing = Ledger.from_connection_string(azurite, table=table_name, retry_total=0)
    assert missing.get(KEY) is None
    with pytest.raises(LedgerError) as no_table:
        missing.recent()
    assert no_table.value.message.startswith(f"Ledger storage error while trying to list ledger records (table "
                                             f"'{table_name}' at http")
    assert no_table.value.hint == "Create the table (infra deploys it; Ledger.ensure_table() locally)."
    assert claim(missing).status == "claimed"  # the first claim creates the table (new account, Azurite)

    with pytest.raises(LedgerError, match="table name"):
        Ledger.from_connection_string(azurite, table="bad-name")


# ---- concurrency: 8 processes race for the same keys ------------------------------------------------

PROCS = 8
KEYS = 200


def _race(conn: str, table: str, worker: int, keys: list[str], barrier: Any, out: Any) -> None:
    ledger = Ledger.from_connection_string(conn, table=table, holder=f"w{worker}", stale_after=LONG)
    order = keys if worker % 2 == 0 else keys[::-1]
    results = []
    barrier.wait()
    for i, key in enumerate(order):
        got = ledger.claim(key, route="r", event_id=f"{worker}-{i}", event_type="RunCompleted", event_json="{}")
        if got.owned:
            ledger.mark_triggered(got, run_id=worker * 100_000 + i, run_url=None)
        results.append((key, got.status, worker))
    out.put(results)


def test_concurrent_processes_claim_each_key_exactly_once(make: Any, azurite: str, table_name: str) -> None:
    setup = make("setup")
    keys = [f"{KEY}|{i}" for i in range(KEYS)]
    for key in keys[1::2]:  # half the keys start as failed records: the race is then for the takeover
        setup.mark_failed(claim(setup, key=key), "earlier attempt failed")

    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(PROCS), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(azurite, table_name, w, keys, barrier, out)) for w in range(PROCS)]
    for p in procs:
        p.start()
    results = [row for _ in procs for row in out.get(timeout=120)]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0

    assert len(results) == PROCS * KEYS
    owners: dict[str, list[int]] = defaultdict(list)
    for key, status, worker in results:
        if status in ("claimed", "retry"):
            owners[key].append(worker)
    assert {k: len(v) for k, v in owners.items()} == dict.fromkeys(keys, 1)
    statuses = Counter(status for _, status, _ in results)
    assert statuses["claimed"] == KEYS // 2
    assert statuses["retry"] == KEYS // 2
    for key in keys:
        record = setup.get(key)
        assert record is not None
        assert record.state == "triggered"
        assert record.ado_run_id is not None
        assert record.ado_run_id // 100_000 == owners[key][0]


def test_row_keys_are_what_a_logic_app_computes_with_base64_and_replace() -> None:
    import base64

    key = ("/subscriptions/x/resourcegroups/rg/providers/microsoft.machinelearningservices/workspaces/ws"
           "|run|r1|completed|evaluate")
    logic_app = base64.b64encode(key.encode()).decode().replace("/", "_").replace("+", "-")
    assert table_address(key) == ("outcomes", logic_app)
    assert table_address("é" * 1000)[1].startswith("sha256-")


# ---- races decided by ETags, clocks, and what a holder is told ----------------------------------------

class Interleaved:
    """A real TableClient that lets another holder act just before one of this holder's calls reaches
    Azurite: the interleavings that concurrent webhook jobs produce, made deterministic."""

    def __init__(self, inner: TableClient, before: dict[str, Callable[[], object]], *, every: bool = False) -> None:
        self._inner = inner
        self._before = dict(before)
        self._every = every

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        hook = self._before.get(name)
        if hook is None:
            return attr

        def call(*args: Any, **kw: Any) -> Any:
            if not self._every:
                del self._before[name]
            hook()
            return attr(*args, **kw)

        return call


def interleaved(ledger: Ledger, every: bool = False, **before: Callable[[], object]) -> Ledger:
    return Ledger(cast(Any, Interleaved(ledger._table, before, every=every)), holder=ledger.holder,
                  stale_after=ledger.stale_after)


def etag_of(ledger: Ledger, key: str) -> str:
    return str(ledger._table.get_entity(*table_address(key)).metadata["etag"])


@pytest.mark.parametrize("winner_finishes", [True, False], ids=["winner-triggered", "winner-holding"])
def test_of_two_takers_of_a_failed_record_only_the_first_writer_wins(make: Any, winner_finishes: bool) -> None:
    """B read the failed record, but A took it over before B's takeover reached the table: B's write carries
    the old ETag, is refused (412), and B reports what A did instead of overwriting A's claim."""
    a, b = make("job-a"), make("job-b")
    a.mark_failed(claim(a), "ADO 503")
    won: list[Claim] = []

    def a_takes_over() -> None:
        won.append(claim(a, event_id="e-a"))
        if winner_finishes:
            a.mark_triggered(won[0], run_id=77, run_url=None)

    lost = claim(interleaved(b, update_entity=a_takes_over), event_id="e-b")
    assert won[0].status == "retry"
    assert lost.status == ("duplicate" if winner_finishes else "busy")
    assert not lost.owned
    assert lost.record.holder == "job-a"
    assert lost.record.ado_run_id == (77 if winner_finishes else None)
    assert lost.etag == etag_of(a, KEY)  # the row as it is now
    stored = a.get(KEY)
    assert stored is not None
    assert (stored.holder, stored.event_id, stored.attempts) == ("job-a", "e-a", 2)


def test_a_record_purged_just_before_a_takeover_is_claimed_afresh(make: Any) -> None:
    a, b = make("job-a"), make("job-b")
    a.mark_failed(claim(a), "ADO 503")
    got = claim(interleaved(b, update_entity=lambda: a._table.delete_entity(*table_address(KEY))))
    assert (got.status, got.record.attempts, got.previous) == ("claimed", 1, None)
    assert b.mark_triggered(got, run_id=5, run_url=None).ado_run_id == 5


def test_a_record_purged_between_the_insert_and_the_read_is_claimed_afresh(make: Any) -> None:
    a, b = make("job-a"), make("job-b")
    a.mark_triggered(claim(a), run_id=1, run_url=None)
    got = claim(interleaved(b, get_entity=lambda: a._table.delete_entity(*table_address(KEY))))
    assert (got.status, got.record.holder) == ("claimed", "job-b")
    stored = a.get(KEY)
    assert stored is not None
    assert (stored.state, stored.holder) == ("claimed", "job-b")


def test_under_endless_churn_a_claim_gives_up_and_reports_the_key_as_someone_elses(make: Any) -> None:
    """Every takeover B tries is beaten by C retrying and failing again: after its bounded tries B owns
    nothing, says busy, and shows C's record; it never blocks or overwrites."""
    b, c = make("job-b"), make("job-c")
    c.mark_failed(claim(c), "ADO 503")
    rounds: list[int] = []

    def c_retries_and_fails() -> None:
        rounds.append(1)
        c.mark_failed(claim(c), f"ADO 503 #{len(rounds)}")

    got = claim(interleaved(b, every=True, update_entity=c_retries_and_fails))
    assert len(rounds) == 8
    assert got.status == "busy"
    assert not got.owned
    assert (got.record.holder, got.record.state, got.record.reason) == ("job-c", "failed", "ADO 503 #8")
    assert got.record.attempts == 9
    assert got.etag == etag_of(c, KEY)
    with pytest.raises(LedgerError, match="on a 'busy' claim"):
        b.mark_triggered(got, run_id=1, run_url=None)


def test_a_claim_is_stale_exactly_stale_after_its_last_write(make: Any, clock: Callable[[timedelta], datetime]) -> None:
    a, b = make("job-a"), make("job-b", stale_after=timedelta(minutes=15))
    clock(timedelta(0))
    held = claim(a)
    clock(timedelta(minutes=15) - timedelta(microseconds=1))
    busy = claim(b)
    assert busy.status == "busy"
    assert busy.etag == etag_of(a, KEY)
    assert busy.record.claimed_at == T0
    clock(timedelta(minutes=15))
    taken = claim(b)
    assert (taken.status, taken.record.attempts) == ("retry", 2)
    assert taken.previous is not None
    assert taken.previous.claim_id == held.record.claim_id
    assert taken.record.claimed_at == T0 + timedelta(minutes=15)


def test_renew_moves_the_claim_forward_by_the_holders_clock(make: Any, clock: Callable[[timedelta], datetime]) -> None:
    a, b = make("job-a"), make("job-b", stale_after=timedelta(minutes=15))
    clock(timedelta(0))
    held = claim(a)
    clock(timedelta(minutes=10))
    renewed = a.renew(held)
    assert renewed.record.updated_at == T0 + timedelta(minutes=10)
    assert renewed.record.claimed_at == T0
    stored = a.get(KEY)
    assert stored is not None
    assert stored.updated_at == T0 + timedelta(minutes=10)
    clock(timedelta(minutes=24))
    assert claim(b).status == "busy"  # 14 min after the heartbeat, 24 after the claim
    assert a.mark_triggered(renewed, run_id=3, run_url=None).ado_run_id == 3  # the renewed ETag is current
    with pytest.raises(LostClaimError):  # the pre-renewal ETag is not
        a.mark_failed(held, "late")


def test_stale_claims_lists_only_claims_silent_for_stale_after_oldest_first(
        make: Any, clock: Callable[[timedelta], datetime]) -> None:
    a = make("job-a", stale_after=timedelta(minutes=15))
    clock(timedelta(0))
    claim(a, key="b-first")
    clock(timedelta(minutes=1))
    claim(a, key="a-second")  # sorts before b-first in the table
    a.mark_triggered(claim(a, key="c-done"), run_id=1, run_url=None)
    clock(timedelta(minutes=10))
    claim(a, key="d-fresh")
    clock(timedelta(minutes=16, seconds=1))
    assert [r.key for r in a.stale_claims()] == ["b-first", "a-second"]
    assert [r.updated_at for r in a.stale_claims()] == [T0, T0 + timedelta(minutes=1)]


def test_a_holder_that_lost_its_claim_is_told_why_and_what_to_do(make: Any) -> None:
    long_key = f"{WS}|model|" + "m" * 250
    a, b = make("job-a"), make("job-b", stale_after=timedelta(0))
    old = claim(a, key=long_key)
    taken = claim(b, key=long_key)
    assert taken.status == "retry"
    hint = ("If this holder started an ADO run, it may duplicate the current holder's: report it, do not retry. "
            "A holder that can take longer than stale_after must renew() its claim.")
    calls: list[tuple[str, Callable[[], object]]] = [
                        ("record the ADO run", lambda: a.mark_triggered(old, run_id=1, run_url=None)),
                         ("record a failure", lambda: a.mark_failed(old, "x")),
                         ("renew a claim", lambda: a.renew(old))]
    for action, call in calls:
        with pytest.raises(LostClaimError) as lost:
            call()
        assert lost.value.message == (
            f"Lost the ledger claim on {long_key[:200]!r}: it was taken over by holder job-b (state claimed, "
            f"attempt 2) before this holder could {action}.")
        assert lost.value.hint == hint
        assert lost.value.current is not None
        assert lost.value.current.claim_id == taken.record.claim_id

    b.mark_triggered(taken, run_id=2, run_url=None)
    with pytest.raises(LostClaimError) as recorded:
        b.mark_failed(taken, "a second, different result on the same claim")
    assert recorded.value.message == (f"Lost the ledger claim on {long_key[:200]!r}: this claim was already recorded "
                                      "as triggered before this holder could record a failure.")
    assert recorded.value.hint == hint

    held = claim(a, key="purged")
    a._table.delete_entity(*table_address("purged"))
    with pytest.raises(LostClaimError) as deleted:
        a.mark_triggered(held, run_id=3, run_url=None)
    assert deleted.value.message == ("Lost the ledger claim on 'purged': its record was deleted before this holder "
                                     "could record the ADO run.")
    assert deleted.value.current is None
    assert a.get("purged") is None  # nothing recreated behind the purge


def test_only_an_owned_claim_can_be_written(make: Any) -> None:
    a, b = make("job-a"), make("job-b")
    held = claim(a)
    busy = claim(b)
    refusals: list[tuple[str, Callable[[], object]]] = [
                        ("record the ADO run", lambda: b.mark_triggered(busy, run_id=1, run_url=None)),
                         ("record a failure", lambda: b.mark_failed(busy, "x")),
                         ("renew a claim", lambda: b.renew(busy))]
    for action, call in refusals:
        with pytest.raises(LedgerError) as refused:
            call()
        assert not isinstance(refused.value, LostClaimError)
        assert refused.value.message == f"Cannot {action} on a 'busy' claim."
        assert refused.value.hint == "Only claimed/retry own the key."
    a.mark_triggered(held, run_id=1, run_url=None)
    duplicate = claim(b)
    with pytest.raises(LedgerError, match=r"^Cannot record a failure on a 'duplicate' claim\. Only"):
        b.mark_failed(duplicate, "x")
    assert duplicate.etag == etag_of(a, KEY)


def test_a_takeover_is_logged_with_state_key_holder_and_attempt(make: Any, caplog: pytest.LogCaptureFixture) -> None:
    long_key = "k" * 300
    a, b = make("job-a"), make("job-b", stale_after=timedelta(0))
    claim(a, key=long_key)
    with caplog.at_level(logging.INFO, logger="amlrelay.ledger"):
        claim(b, key=long_key)
    logged = [r.getMessage() for r in caplog.records if r.name == "amlrelay.ledger"]
    assert logged == [f"ledger: took over claimed key {'k' * 200} from holder job-a (attempt 2)"]


def test_a_takeover_without_a_body_keeps_the_truncation_flag_of_the_body_it_keeps(make: Any) -> None:
    a, b = make("job-a"), make("job-b")
    huge = "y" * 200_000
    a.mark_failed(claim(a, event_json=huge), "ADO 503")
    taken = claim(b, event_json=None)
    assert taken.record.event_json_truncated is True
    assert taken.record.event_json == huge[:128_000]
    stored = a.get(KEY)
    assert stored is not None
    assert stored.event_json_truncated is True
    assert stored.event_json == huge[:128_000]


def test_a_failure_without_a_reason_is_recorded_as_unknown(make: Any) -> None:
    a = make("job-a")
    assert a.mark_failed(claim(a), "").reason == "unknown"
    stored = a.get(KEY)
    assert stored is not None
    assert (stored.state, stored.reason) == ("failed", "unknown")


def test_default_holders_are_readable_and_unique_per_ledger(azurite: str, table_name: str) -> None:
    first = Ledger.from_connection_string(azurite, table=table_name)
    second = Ledger.from_connection_string(azurite, table=table_name)
    pattern = rf"{re.escape(socket.gethostname())}/{os.getpid()}/[0-9a-f]{{8}}"
    assert re.fullmatch(pattern, first.holder)
    assert re.fullmatch(pattern, second.holder)
    assert first.holder != second.holder
    assert first.stale_after == timedelta(minutes=15)


# ---- listing, purging and tag-back bookkeeping ------------------------------------------------------------

def test_recent_is_the_newest_fifty_filtered_by_state_and_time(
        make: Any, clock: Callable[[timedelta], datetime]) -> None:
    a = make("job-a")
    for i in range(51):
        clock(timedelta(minutes=i))
        held = claim(a, key=f"k{i:02d}")
        if i % 2:
            a.mark_triggered(held, run_id=i, run_url=None)
    a._table.create_entity({"PartitionKey": "outcomes", "RowKey": "not-a-record", "state": "triggered"})
    newest = a.recent()
    assert [r.key for r in newest] == [f"k{i:02d}" for i in range(50, 0, -1)]
    since = T0 + timedelta(minutes=45)
    assert [r.key for r in a.recent(since=since)] == ["k50", "k49", "k48", "k47", "k46", "k45"]
    assert [r.key for r in a.recent(state="triggered", since=since)] == ["k49", "k47", "k45"]
    assert [r.key for r in a.recent(2, state="claimed")] == ["k50", "k48"]


def test_purge_deletes_only_finished_records_older_than_asked(
        make: Any, clock: Callable[[timedelta], datetime]) -> None:
    a = make("job-a")
    clock(-timedelta(days=3))
    for key in ("old-done-1", "old-done-2", "old-raced"):
        a.mark_triggered(claim(a, key=key), run_id=1, run_url=None)
    a.mark_failed(claim(a, key="old-failed"), "ADO 400")
    claim(a, key="old-held")
    a._table.create_entity({"PartitionKey": "outcomes", "RowKey": "Aforeign", "state": "triggered",
                            "updated_at": T0 - timedelta(days=3)})  # sorts before every base64 row key here
    clock(-timedelta(days=1))
    a.mark_triggered(claim(a, key="young-done"), run_id=2, run_url=None)
    clock(timedelta(0))
    rows = {"old-raced": lambda: a._table.update_entity(
                {"PartitionKey": "outcomes", "RowKey": table_address("old-raced")[1], "tagged": True},
                mode=UpdateMode.MERGE)}
    racing = Ledger(cast(Any, RacingDeletes(a._table, rows)), holder="job-p")
    assert racing.purge(MIN_RETENTION) == 2  # the two untouched old triggered records
    assert sorted(r.key for r in a.recent()) == ["old-failed", "old-held", "old-raced", "young-done"]
    assert a._table.get_entity("outcomes", "Aforeign")["state"] == "triggered"  # not a ledger record: not ours
    assert a.purge(MIN_RETENTION, include_failed=True) == 2  # old-raced (written meanwhile, but old) and old-failed
    assert sorted(r.key for r in a.recent()) == ["old-held", "young-done"]
    with pytest.raises(LedgerError) as refused:
        a.purge(MIN_RETENTION - timedelta(microseconds=1))
    assert refused.value.hint == "Event Grid redelivers for up to 24 h; keep records longer than that."


def test_rows_of_other_partitions_are_never_listed_or_purged(
        make: Any, clock: Callable[[timedelta], datetime]) -> None:
    """The ledger reads only its own partition (a partition scan in Azure, not a table scan), so a table
    shared with another writer's rows, even rows shaped like ours, never feeds a replay, a tag-back or a purge."""
    a = make("job-a")
    clock(-timedelta(days=3))
    done = claim(a, key="done")
    a.mark_triggered(done, run_id=1, run_url=None, tag_target='{"run": "r1"}')
    held = claim(a, key="held")
    clock(timedelta(0))
    for key in ("done", "held"):
        twin = dict(a._table.get_entity("outcomes", table_address(key)[1]))
        a._table.create_entity({**twin, "PartitionKey": "elsewhere"})
    assert sorted(r.key for r in a.recent()) == ["done", "held"]
    assert [r.key for r in a.stale_claims()] == [held.record.key]
    assert [r.key for r in a.untagged()] == ["done"]
    assert a.purge(MIN_RETENTION) == 1
    assert {e["RowKey"] for e in a._table.query_entities("PartitionKey eq 'elsewhere'")} == {
        table_address("done")[1], table_address("held")[1]}


def test_purge_counts_only_the_records_it_deleted(make: Any, clock: Callable[[timedelta], datetime]) -> None:
    """``amlrelay purge`` prints the count: a record someone else deleted between this purge's query and its
    delete (another purge, a person) is not one this purge deleted, and its 404 is no error."""
    a, other = make("job-a"), make("job-b")
    clock(-timedelta(days=3))
    for key in ("old-1", "old-2", "old-gone"):
        a.mark_triggered(claim(a, key=key), run_id=1, run_url=None)
    clock(timedelta(0))
    gone = {"old-gone": lambda: other._table.delete_entity(*table_address("old-gone"))}
    racing = Ledger(cast(Any, RacingDeletes(a._table, gone)), holder="job-p")
    assert racing.purge(MIN_RETENTION) == 2
    assert a.recent() == []


class RacingDeletes:
    """A real TableClient whose purge finds some rows changed by someone else in between its query and its
    delete."""

    def __init__(self, inner: TableClient, rows: dict[str, Callable[[], object]]) -> None:
        self._inner = inner
        self._rows = {table_address(key)[1]: act for key, act in rows.items()}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def delete_entity(self, pk: str, rk: str, **kw: Any) -> Any:
        act = self._rows.pop(rk, None)
        if act is not None:
            act()
        return self._inner.delete_entity(pk, rk, **kw)


def test_tag_back_is_owed_until_written_and_retried_least_tried_first(
        make: Any, clock: Callable[[timedelta], datetime]) -> None:
    a = make("job-a")
    target = '{"run": "r1"}'
    clock(timedelta(0))
    done = {key: a.mark_triggered(claim(a, key=key), run_id=i, run_url=None, tag_target=target)
            for i, key in enumerate(["older", "newer", "given-up", "tagged"])}
    plain = a.mark_triggered(claim(a, key="no-tag-back"), run_id=9, run_url=None)
    assert (plain.tag_target, plain.tagged) == (None, None)
    assert (done["older"].tag_target, done["older"].tagged) == (target, False)
    clock(timedelta(minutes=1))
    done["newer"] = a.mark_triggered(claim(a, key="newer2"), run_id=5, run_url=None, tag_target=target)
    a.set_tagged(done["tagged"])
    long_error = "HTTP 403\x00 " + "e" * 3000
    a.record_tag_failure(done["older"], long_error, attempts=1, give_up=False)
    a.record_tag_failure(done["given-up"], "HTTP 404", attempts=3, give_up=True)

    assert [r.key for r in a.untagged()] == ["newer", "newer2", "older"]  # never tried, oldest first; then tried
    assert [r.key for r in a.untagged(include_given_up=True)] == ["newer", "newer2", "older", "given-up"]
    older = a.get("older")
    assert older is not None
    assert (older.tagged, older.tag_attempts, older.tag_gave_up) == (False, 1, False)
    assert older.tag_error == ("HTTP 403\\x00 " + "e" * 3000)[:1999] + "…"
    given_up = a.get("given-up")
    assert given_up is not None
    assert (given_up.tag_attempts, given_up.tag_error, given_up.tag_gave_up) == (3, "HTTP 404", True)
    tagged = a.get("tagged")
    assert tagged is not None
    assert (tagged.tagged, tagged.tag_target, tagged.state, tagged.ado_run_id) == (True, target, "triggered", 3)
    a._table.delete_entity(*table_address("tagged"))
    a.set_tagged(done["tagged"])  # purged meanwhile: nothing to do, nothing recreated
    a.record_tag_failure(done["tagged"], "x", attempts=1, give_up=False)
    assert a.get("tagged") is None


def test_a_result_is_stamped_when_it_is_recorded(make: Any, clock: Callable[[timedelta], datetime]) -> None:
    """``updated_at`` is when the outcome was settled: ``recent`` orders by it, ``purge`` ages by it."""
    a = make("job-a")
    clock(timedelta(0))
    failing, triggering = claim(a, key="failing"), claim(a, key="triggering")
    clock(timedelta(minutes=5))
    failed = a.mark_failed(failing, "ADO 503")
    clock(timedelta(minutes=7))
    done = a.mark_triggered(triggering, run_id=1, run_url=None)
    assert (failed.claimed_at, failed.updated_at) == (T0, T0 + timedelta(minutes=5))
    assert (done.claimed_at, done.updated_at) == (T0, T0 + timedelta(minutes=7))
    assert [(r.key, r.updated_at) for r in a.recent()] == [("triggering", T0 + timedelta(minutes=7)),
                                                          ("failing", T0 + timedelta(minutes=5))]
