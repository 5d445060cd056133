"""The journal and its sweep, on Azurite's queue service: an event whose webhook job died is recovered once,
an event already handled is a duplicate, and no message is deleted before its event reached a final outcome."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from azure.storage.queue import QueueClient

from amlrelay.cli import main as cli
from amlrelay.events import parse_events
from amlrelay.journal import TAKEN_OVER, JournalMessageError, decode_message, poison_name, poison_wrapper, sweep
from amlrelay.ledger import Ledger
from amlrelay.models import AmlEvent
from amlrelay.relay import Relay
from amlrelay.routes import load_routes
from amlrelay.runbook import build_relay
from amlrelay.settings import resolve
from tests.conftest import sample
from tests.stack import SAMPLE_WORKSPACE, Stack, local_stack

LATER = timedelta(hours=1)  # "now" as seen by a sweep that runs an hour after the events were journaled


# ---- message format: JSON or Base64 of JSON (Event Grid's encoding is documented both ways) ---------------

def test_a_message_is_read_as_json_or_as_base64_json() -> None:
    event = sample("event-grid-schema", "model_registered")
    text = json.dumps(event)
    assert decode_message(text) == [event]
    assert decode_message(base64.b64encode(text.encode()).decode()) == [event]
    assert decode_message(json.dumps([event, event])) == [event, event]
    assert decode_message(poison_wrapper(base64.b64encode(text.encode()).decode(), reason="x")) == [event]


@pytest.mark.parametrize("content", ["", "   ", "not base64 !", base64.b64encode(b"not json").decode(), "[1, 2]",
                                     "[]", "{broken", base64.b64encode(b"\xff\xfe").decode()])
def test_a_message_without_events_is_refused_with_a_reason(content: str) -> None:
    with pytest.raises(JournalMessageError) as caught:
        decode_message(content)
    assert caught.value.message.startswith("The journal message")
    assert "moved aside" in caught.value.hint


# ---- the sweep on Azurite -------------------------------------------------------------------------------

@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, azurite: str, table_name: str) -> Iterator[Stack]:
    with journal_env(monkeypatch, azurite, table_name) as stack:
        yield stack


@pytest.fixture
def verified_env(monkeypatch: pytest.MonkeyPatch, azurite: str, table_name: str) -> Iterator[Stack]:
    """As ``env``, with AMLRELAY_VERIFY on against the AML stand-in."""
    with journal_env(monkeypatch, azurite, table_name, verify=True) as stack:
        yield stack


@contextlib.contextmanager
def journal_env(monkeypatch: pytest.MonkeyPatch, azurite: str, table_name: str, *,
                verify: bool = False) -> Iterator[Stack]:
    queue = "j" + table_name.lower()[1:20]
    with local_stack(verify=verify) as stack:
        values = {**stack.env(), "AMLRELAY_LEDGER": "true", "AMLRELAY_LEDGER_CONNECTION_STRING": azurite,
                  "AMLRELAY_LEDGER_TABLE": table_name, "AMLRELAY_JOURNAL_QUEUE": queue,
                  "AMLRELAY_JOURNAL_GRACE": "0", "AMLRELAY_JOURNAL_RETRY_AFTER": "0",
                  "AMLRELAY_JOURNAL_MAX_DEQUEUES": "3"}
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        clients = [QueueClient.from_connection_string(azurite, n) for n in (queue, poison_name(queue))]
        for client in clients:
            client.create_queue()
        Ledger.from_connection_string(azurite, table=table_name).ensure_table()
        try:
            yield stack
        finally:
            for client in clients:
                client.delete_queue()


def journal(poison: bool = False) -> QueueClient:
    name = os.environ["AMLRELAY_JOURNAL_QUEUE"]
    return QueueClient.from_connection_string(os.environ["AMLRELAY_LEDGER_CONNECTION_STRING"],
                                              poison_name(name) if poison else name)


def left(poison: bool = False) -> int:
    """Messages still in the queue, visible or not (Azurite counts hidden ones too)."""
    return int(journal(poison).get_queue_properties().approximate_message_count or 0)


def relay() -> Relay:
    settings = resolve({})
    return build_relay(settings, load_routes(settings.routes))


def run_sweep(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[dict[str, Any]], str]:
    code = cli(["sweep", "--json", *args])
    out = capsys.readouterr().out
    return code, [json.loads(line) for line in out.splitlines() if line.startswith("{")], out


def test_an_event_whose_webhook_job_died_is_triggered_by_the_sweep(env: Stack,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    journal().send_message(json.dumps(sample("event-grid-schema", "model_registered")))
    encoded = base64.b64encode(json.dumps(sample("cloud-events-schema", "run_completed")).encode()).decode()
    journal().send_message(encoded)
    code, outcomes, _ = run_sweep(capsys)
    assert code == 0
    assert sorted(o["outcome"] for o in outcomes) == ["triggered", "triggered"]
    assert len(env.ado.runs) == 2
    assert left() == 0
    assert run_sweep(capsys)[:2] == (0, [])  # nothing left to do


def test_an_event_the_webhook_job_handled_is_a_duplicate_and_its_message_is_deleted(
        env: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    event = sample("event-grid-schema", "model_deployed")
    [done] = relay().handle(parse_events([event]), raw=[event])  # the webhook job
    assert done.outcome == "triggered"
    journal().send_message(json.dumps(event))
    code, outcomes, _ = run_sweep(capsys)
    assert (code, [o["outcome"] for o in outcomes]) == (0, ["duplicate"])
    assert outcomes[0]["ado_run_id"] == done.ado_run_id
    assert len(env.ado.runs) == 1
    assert left() == 0


def test_skipped_and_rejected_events_are_final_and_reported(env: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    foreign = sample("event-grid-schema", "model_registered")
    foreign["topic"] = "/subscriptions/x/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/evil"
    unknown = {**sample("event-grid-schema", "run_completed"), "eventType": "Microsoft.MachineLearningServices.New"}
    for event in (foreign, unknown):
        journal().send_message(json.dumps(event))
    code, outcomes, _ = run_sweep(capsys)
    assert sorted(o["outcome"] for o in outcomes) == ["rejected", "skipped"]
    assert code == 2  # as a runbook job: input was refused
    assert env.ado.run_requests == []
    assert left() == 0
    # Review SHOULD 6: the rejected one leaves a durable trace, the original with its reason, not deleted.
    [kept] = journal(poison=True).peek_messages()
    assert decode_message(kept.content) == [foreign]
    assert json.loads(kept.content)["amlrelayPoison"]["reason"].startswith("rejected, kept for review: ")


def test_a_young_message_is_left_to_the_webhook_job(env: Stack) -> None:
    journal().send_message(json.dumps(sample("event-grid-schema", "model_registered")))
    report = sweep(journal(), relay(), poison=journal(True), grace=timedelta(minutes=10))
    assert [r.action for r in report.results] == ["deferred"]
    assert env.ado.run_requests == []
    assert left() == 1
    assert journal().peek_messages() == []  # hidden until the grace period is over
    later = sweep(journal(), relay(), poison=journal(True), grace=timedelta(minutes=10),
                  now=lambda: datetime.now(timezone.utc) + LATER)
    assert later.results == []  # still hidden: a later sweep finds it once visible (not asserted: no sleeping)


def test_a_failing_message_stays_and_is_moved_aside_after_n_dequeues(env: Stack,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    event = sample("event-grid-schema", "dataset_drift_detected")
    journal().send_message(json.dumps(event))
    env.ado.fail(404, times=100)  # e.g. the pipeline was deleted: fails until someone fixes it
    for attempt in (1, 2):
        code, outcomes, out = run_sweep(capsys)
        assert (code, [o["outcome"] for o in outcomes]) == (1, ["failed"]), out
        assert left() == 1, f"attempt {attempt}: a failing message must stay"
        assert "WARNING: journal message" in out
    code, outcomes, out = run_sweep(capsys)  # third dequeue = AMLRELAY_JOURNAL_MAX_DEQUEUES
    assert code == 1
    assert "ERROR: journal message" in out
    assert "(moved-aside): moved to" in out
    assert "still failing after 3 failed attempts (3 dequeues)" in out
    assert (left(), left(poison=True)) == (0, 1)
    [moved] = journal(poison=True).peek_messages()
    wrapper = json.loads(moved.content)
    assert wrapper["amlrelayPoison"]["dequeueCount"] == 3
    assert "404" in wrapper["amlrelayPoison"]["reason"] or "not found" in wrapper["amlrelayPoison"]["reason"].lower()
    assert decode_message(moved.content) == [event]  # the original, untouched
    env.ado.reset_state()
    code, outcomes, _ = run_sweep(capsys, "--poison")  # once the cause is fixed
    assert (code, [o["outcome"] for o in outcomes]) == (0, ["triggered"])
    assert left(poison=True) == 0


def test_a_message_that_is_not_an_event_is_moved_aside_at_once(env: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    journal().send_message("hello")
    code, outcomes, out = run_sweep(capsys)
    assert (code, outcomes) == (1, [])
    assert "neither JSON nor Base64-encoded JSON" in out
    assert (left(), left(poison=True)) == (0, 1)


def test_an_event_whose_claim_is_held_stays_in_the_journal(env: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    """The webhook job claimed the outcome and died before recording it: not final, so the message stays
    until the claim is finished or taken over when stale (never deleted on a 'busy' answer)."""
    event = sample("event-grid-schema", "model_registered")
    [parsed] = parse_events([event])
    r = relay()
    assert r.ledger is not None
    assert isinstance(parsed, AmlEvent)
    r.ledger.claim(f"{parsed.outcome_key()}|deploy-registered-model", route="deploy-registered-model",
                   event_id=parsed.id, event_type=parsed.type, event_json=json.dumps(event))
    journal().send_message(json.dumps(event))
    code, outcomes, _ = run_sweep(capsys)
    assert [o["outcome"] for o in outcomes] == ["duplicate"]
    assert "another job is starting it" in outcomes[0]["reason"]
    assert code == 0  # not a failure: the holder finishes, or `replay --stale` / a later sweep takes over
    assert left() == 1
    assert env.ado.run_requests == []


def test_dry_run_sends_nothing_and_deletes_nothing(env: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    journal().send_message(json.dumps(sample("event-grid-schema", "model_registered")))
    code, outcomes, _ = run_sweep(capsys, "--dry-run")
    assert (code, [o["outcome"] for o in outcomes]) == (0, ["dry-run"])
    assert env.ado.run_requests == []
    assert left() == 1
    assert journal().peek_messages()[0].dequeue_count == 0  # peeked, not received


def test_the_table_output_summarises_what_happened(env: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    journal().send_message(json.dumps(sample("event-grid-schema", "model_registered")))
    assert cli(["sweep"]) == 0
    out = capsys.readouterr().out
    assert "1 messages: 1 done and deleted, 0 kept for a retry" in out
    assert "deploy-registered-model" in out


def test_without_a_journal_the_sweep_says_so(env: Stack, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AMLRELAY_JOURNAL", "false")
    assert cli(["sweep"]) == 0
    assert capsys.readouterr().out.startswith("WARNING: AMLRELAY_JOURNAL is false")


def test_a_missing_queue_is_a_clear_error(env: Stack, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AMLRELAY_JOURNAL_QUEUE", "no-such-queue")
    assert cli(["sweep"]) == 2
    err = capsys.readouterr().err
    assert "Cannot receive from journal queue 'no-such-queue' (QueueNotFound" in err
    assert "Storage Queue Data Contributor" in err


def test_a_bad_queue_name_is_a_settings_error() -> None:
    from amlrelay.errors import SettingsError

    with pytest.raises(SettingsError, match="AMLRELAY_JOURNAL_QUEUE must be a storage queue name"):
        resolve({"journal_queue": "Bad_Name"}, env={"AMLRELAY_LEDGER": "false", "AMLRELAY_ROUTES": "x",
                                                     "AMLRELAY_ADO_ORGANIZATION": "contoso",
                                                     "AMLRELAY_ALLOWED_WORKSPACES": SAMPLE_WORKSPACE})


def test_the_scheduled_replay_runbook_sweeps_the_journal_first(env: Stack) -> None:
    import subprocess
    import sys

    from azure.storage.blob import ContainerClient

    from tests.stack import ROOT

    container = "dl" + os.environ["AMLRELAY_JOURNAL_QUEUE"]
    conn = os.environ["AMLRELAY_LEDGER_CONNECTION_STRING"]
    ContainerClient.from_connection_string(conn, container).create_container()
    journal().send_message(json.dumps(sample("event-grid-schema", "model_registered")))
    done = subprocess.run([sys.executable, str(ROOT / "runbooks" / "replay_dead_letters.py"), "--json"],
                          env={**os.environ, "AMLRELAY_DEADLETTER_CONTAINER": container},
                          capture_output=True, text=True, timeout=120, check=False)
    outcomes = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [o["outcome"] for o in outcomes] == ["triggered"], done.stdout + done.stderr
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(env.ado.runs) == 1
    assert left() == 0


def test_the_replay_runbook_shows_a_sweep_error_where_automation_can_see_it(env: Stack) -> None:
    import subprocess
    import sys

    from tests.stack import ROOT

    done = subprocess.run([sys.executable, str(ROOT / "runbooks" / "replay_dead_letters.py")],
                          env={**os.environ, "AMLRELAY_JOURNAL_QUEUE": "no-such-queue",
                               "AMLRELAY_DEADLETTER_CONTAINER": "no-such-container"},
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert done.stderr == ""  # Automation's Python sandbox drops stderr
    assert "ERROR: error: Cannot receive from journal queue 'no-such-queue'" in done.stdout
    assert "ERROR: what to do:" in done.stdout


def test_a_message_that_cannot_be_moved_aside_stays_in_the_journal(env: Stack,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    journal().send_message("hello")
    journal(poison=True).delete_queue()  # the poison queue is gone: nothing may be deleted unseen
    try:
        code, _, out = run_sweep(capsys)
        assert code == 1
        assert "could not be moved aside" in out
        assert left() == 1
    finally:
        journal(poison=True).create_queue()


def test_the_sweep_refuses_to_run_without_the_ledger(env: Stack, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    journal().send_message(json.dumps(sample("event-grid-schema", "model_registered")))
    monkeypatch.setenv("AMLRELAY_LEDGER", "false")
    assert cli(["sweep"]) == 2
    assert "amlrelay sweep needs the ledger" in capsys.readouterr().err
    assert env.ado.run_requests == []
    assert left() == 1


# ---- overlapping sweeps (sweepIntervalMinutes < 60: several offset schedules, a run may outlast its slot) ---

class _Lockstep:
    """Wraps a relay so that two sweeps handle their messages in step: each ``handle`` waits until the other
    sweep is in ``handle`` too, so both work on their copy of the same event at the same moment. A sweep that
    runs out of messages breaks the barrier, and the other then carries on alone (no real sleeping)."""

    def __init__(self, relay: Relay, barrier: threading.Barrier) -> None:
        self._relay, self._barrier = relay, barrier
        self.dry_run = relay.dry_run

    def handle(self, events: Any, raw: Any) -> Any:
        with contextlib.suppress(threading.BrokenBarrierError):
            self._barrier.wait(timeout=20)
        return self._relay.handle(events, raw=raw)


def _run_event(n: int, tag: str) -> dict[str, Any]:
    event = sample("event-grid-schema", "run_completed")
    run_id = f"run-{tag}-{n}"
    event["data"]["runId"] = run_id
    event["subject"] = f"experiments/{event['data']['experimentId']}/runs/{run_id}"
    event["id"] = f"{tag}-{n}"
    return event


def test_two_sweeps_at_once_over_the_same_journal_trigger_each_event_exactly_once(env: Stack) -> None:
    """Two schedules' runs overlap (or a run by hand meets a scheduled one). Event Grid delivers to the queue
    at least once, so each lost event is journaled twice here, its copies side by side: sweep A receives one
    copy while sweep B receives the other, and both hand the same event to the relay at the same moment. The
    ledger claim decides: each event starts exactly one ADO run, whatever the interleaving; the loser's copy
    is a duplicate (deleted) or 'busy' (kept, and deleted by the next run). Events the webhook job already
    handled stay duplicates. Nothing is moved aside, nothing is left."""
    lost = [_run_event(n, "lost") for n in range(6)]
    handled = [_run_event(n, "done") for n in range(2)]
    for event in handled:  # the webhook jobs of these succeeded
        assert [o.outcome for o in relay().handle(parse_events([event]), raw=[event])] == ["triggered"]
    for event in lost + handled:
        for _ in range(2):
            journal().send_message(json.dumps(event))
    barrier = threading.Barrier(2)
    settings = resolve({})
    reports: list[Any] = []
    errors: list[BaseException] = []

    def one_sweep() -> None:
        try:
            reports.append(sweep(journal(), _Lockstep(relay(), barrier),  # type: ignore[arg-type]
                                 poison=journal(poison=True), grace=timedelta(0), max_dequeues=3,
                                 retry_after=settings.journal_retry_after))
        except BaseException as exc:  # reported below: a thread's exception would otherwise vanish
            errors.append(exc)
        finally:
            barrier.abort()  # done: the other sweep no longer waits for this one

    threads = [threading.Thread(target=one_sweep) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert len(reports) == 2
    assert all(r.results for r in reports), "both sweeps must have handled messages (they overlapped)"
    outcomes = Counter(o.outcome for r in reports for o in r.outcomes)
    assert outcomes["triggered"] == len(lost)
    assert outcomes["failed"] == outcomes["rejected"] == 0
    runs = Counter((run.get("templateParameters") or {}).get("runId") for run in env.ado.runs)
    assert runs == Counter({e["data"]["runId"]: 1 for e in lost + handled})
    # A copy kept as 'busy' is deleted by the next run as a duplicate; then the journal is empty.
    after = sweep(journal(), relay(), poison=journal(poison=True), grace=timedelta(0))
    assert {o.outcome for o in after.outcomes} <= {"duplicate"}
    assert left() == 0
    assert left(poison=True) == 0
    assert len(env.ado.runs) == len(lost) + len(handled)


def test_a_message_another_sweep_took_over_is_not_a_failure(env: Stack) -> None:
    """Review SHOULD 5: this sweep handled the event, but its lease ran out and another sweep received the
    message (new pop receipt) before the delete. The other sweep finds a ledger duplicate and deletes it:
    nothing failed, so the job must not exit 1 (and fire the failed-job alert)."""
    event = sample("event-grid-schema", "model_deployed")
    journal().send_message(json.dumps(event))
    queue = journal()
    received: list[Any] = []

    class Recording:
        def __getattr__(self, name: str) -> Any:
            return getattr(queue, name)

        def receive_message(self, **kw: Any) -> Any:
            message = queue.receive_message(**kw)
            received.append(message)
            return message

    class LeaseLost:
        dry_run = False

        def __init__(self, inner: Relay) -> None:
            self.inner = inner

        def handle(self, items: Any, *, raw: Any = None) -> Any:
            outcomes = self.inner.handle(items, raw=raw)
            journal().update_message(received[-1], visibility_timeout=0)  # our lease ran out
            assert journal().receive_message(visibility_timeout=900) is not None  # another sweep holds it
            return outcomes

    report = sweep(Recording(), LeaseLost(relay()), poison=journal(poison=True),  # type: ignore[arg-type]
                   grace=timedelta(0))
    [result] = report.results
    assert [o.outcome for o in result.outcomes] == ["triggered"]
    assert result.action == "kept"
    assert result.reason == TAKEN_OVER
    assert report.exit_code() == 0
    assert len(env.ado.runs) == 1


def test_dequeues_spent_waiting_do_not_count_as_failures(env: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    """Review SHOULD 4: a message whose claim another job held was received by several sweeps (the queue's
    dequeue count rises) without failing once. Its first real failure must not move it aside: only failed
    attempts count (AMLRELAY_JOURNAL_MAX_DEQUEUES=3 here)."""
    event = sample("event-grid-schema", "model_registered")
    [parsed] = parse_events([event])
    r = relay()
    assert r.ledger is not None
    assert isinstance(parsed, AmlEvent)
    held = r.ledger.claim(f"{parsed.outcome_key()}|deploy-registered-model", route="deploy-registered-model",
                          event_id=parsed.id, event_type=parsed.type, event_json=json.dumps(event))
    journal().send_message(json.dumps(event))
    for _ in range(3):  # the holder is still at work: waiting, not failing
        code, outcomes, _ = run_sweep(capsys)
        assert (code, [o["outcome"] for o in outcomes]) == (0, ["duplicate"])
    r.ledger.mark_failed(held, "the holder gave up")  # now the sweep may try, and ADO refuses
    env.ado.fail(404, times=100)
    for attempt in (1, 2):
        code, outcomes, out = run_sweep(capsys)
        assert (code, [o["outcome"] for o in outcomes]) == (1, ["failed"]), out
        assert (left(), left(poison=True)) == (1, 0), f"failed attempt {attempt} of 3 moved it aside"
    [kept] = journal().peek_messages()
    assert kept.dequeue_count == 5
    assert decode_message(kept.content) == [event]  # the count travels with the original, untouched
    code, _, out = run_sweep(capsys)  # the third failed attempt
    assert "still failing after 3 failed attempts (6 dequeues)" in out
    assert (left(), left(poison=True)) == (0, 1)
    [moved] = journal(poison=True).peek_messages()
    assert json.loads(moved.content)["content"] == json.dumps(event)  # the original, not the counting wrapper


def test_a_journaled_event_aml_does_not_confirm_is_kept_and_can_be_triggered_later(
        verified_env: Stack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Review SHOULD 6: a genuine event verification rejects (here: a run Jobs_Get does not return, as may
    happen for SDK v1 runs) is not deleted with the rejection: it waits in the poison queue, and once an
    operator turns verification off for it, `sweep --poison` triggers it exactly once."""
    event = sample("event-grid-schema", "run_completed")  # AML (the stand-in) holds no such run
    journal().send_message(json.dumps(event))
    code, outcomes, out = run_sweep(capsys)
    assert (code, [o["outcome"] for o in outcomes]) == (2, ["rejected"])
    assert "AML has no run" in outcomes[0]["reason"]
    assert (left(), left(poison=True)) == (0, 1)
    assert "rejected, kept for review" in out
    monkeypatch.setenv("AMLRELAY_VERIFY", "false")
    code, outcomes, _ = run_sweep(capsys, "--poison")
    assert (code, [o["outcome"] for o in outcomes]) == (0, ["triggered"])
    assert (left(), left(poison=True)) == (0, 0)
    assert len(verified_env.ado.run_requests) == 1
