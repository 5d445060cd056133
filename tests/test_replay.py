"""Dead letters and stale claims are delivered again through the same relay and ledger: once, idempotently."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from azure.data.tables import TableClient, UpdateMode
from azure.storage.blob import ContainerClient

from amlrelay.cli import main as cli
from amlrelay.events import parse_events
from amlrelay.ledger import Ledger, table_address
from tests.conftest import sample
from tests.stack import Stack, local_stack

DEAD_LETTER_FIELDS = {"deadLetterReason": "MaxDeliveryAttemptsExceeded", "deliveryAttempts": 30,
                      "lastDeliveryOutcome": "TimedOut", "lastHttpStatusCode": 408,
                      "publishTime": "2026-11-24T10:00:00.0000000Z",
                      "lastDeliveryAttemptTime": "2026-11-25T10:00:00.0000000Z"}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, azurite: str, table_name: str) -> Iterator[Stack]:
    with local_stack() as stack:
        values = {**stack.env(), "AMLRELAY_LEDGER": "true", "AMLRELAY_LEDGER_CONNECTION_STRING": azurite,
                  "AMLRELAY_LEDGER_TABLE": table_name, "AMLRELAY_DEADLETTER_CONTAINER": f"dl{table_name.lower()}"}
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        yield stack


def container() -> ContainerClient:
    import os

    client = ContainerClient.from_connection_string(os.environ["AMLRELAY_LEDGER_CONNECTION_STRING"],
                                                    os.environ["AMLRELAY_DEADLETTER_CONTAINER"])
    if not client.exists():
        client.create_container()
    return client


def dead_letter(*events: dict[str, Any]) -> bytes:
    return json.dumps([{**e, **DEAD_LETTER_FIELDS} for e in events]).encode()


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[dict[str, Any]]]:
    code = cli(list(args))
    out = capsys.readouterr().out
    return code, [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_dead_letters_in_both_schemas_are_replayed_once(env: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    blobs = container()
    blobs.upload_blob("AMLWS/AMLRELAY-RUNS/2026/11/25/10/a.json",
                      dead_letter(sample("event-grid-schema", "model_registered")))
    blobs.upload_blob("AMLWS/AMLRELAY-RUNS/2026/11/25/11/b.json",
                      dead_letter(sample("cloud-events-schema", "dataset_drift_detected")))
    code, outcomes = run_cli(capsys, "replay", "--json")
    assert code == 0
    assert sorted(o["outcome"] for o in outcomes) == ["triggered", "triggered"]
    assert len(env.ado.runs) == 2
    code, outcomes = run_cli(capsys, "replay", "--json")  # marked replayed: nothing to do
    assert (code, outcomes) == (0, [])
    code, outcomes = run_cli(capsys, "replay", "--json", "--include-replayed")
    assert [o["outcome"] for o in outcomes] == ["duplicate", "duplicate"]
    assert len(env.ado.runs) == 2


def test_a_replay_that_fails_leaves_the_blob_for_next_time(env: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    container().upload_blob("x/1.json", dead_letter(sample("event-grid-schema", "model_deployed")))
    env.ado.fail(404)
    code, outcomes = run_cli(capsys, "replay", "--json")
    assert code == 1
    assert outcomes[0]["outcome"] == "failed"
    code, outcomes = run_cli(capsys, "replay", "--json")
    assert code == 0
    assert outcomes[0]["outcome"] == "triggered"


def test_stale_claims_are_replayed_from_the_event_the_ledger_kept(env: Stack,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import os

    event = sample("event-grid-schema", "run_completed")
    parsed = parse_events([event])[0]
    ledger = Ledger.from_connection_string(os.environ["AMLRELAY_LEDGER_CONNECTION_STRING"],
                                           table=os.environ["AMLRELAY_LEDGER_TABLE"])
    ledger.ensure_table()
    key = f"{parsed.outcome_key()}|evaluate-trained-model"  # type: ignore[union-attr]
    claim = ledger.claim(key, route="evaluate-trained-model", event_id="x", event_type="RunCompleted",
                         event_json=json.dumps(event))  # ... and its job died before calling ADO, an hour ago:
    table = TableClient.from_connection_string(os.environ["AMLRELAY_LEDGER_CONNECTION_STRING"],
                                               os.environ["AMLRELAY_LEDGER_TABLE"])
    an_hour_ago = datetime.now(timezone.utc) - timedelta(hours=1)
    pk, rk = table_address(key)
    table.update_entity({"PartitionKey": pk, "RowKey": rk, "claimed_at": an_hour_ago, "updated_at": an_hour_ago},
                        mode=UpdateMode.MERGE)
    assert claim.status == "claimed"
    code, outcomes = run_cli(capsys, "replay", "--json", "--stale", "--no-dead-letters")
    assert code == 0
    assert [o["outcome"] for o in outcomes] == ["triggered"]
    assert len(env.ado.runs) == 1
    code, records = run_cli(capsys, "status", "--json")
    assert code == 0
    assert [(r["state"], r["ado_run_id"]) for r in records] == [("triggered", env.ado.runs[0]["id"])]


def test_status_table_and_dry_run_replay(env: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    container().upload_blob("y/1.json", dead_letter(sample("event-grid-schema", "model_registered")))
    code, outcomes = run_cli(capsys, "replay", "--json", "--dry-run")
    assert code == 0
    assert outcomes[0]["outcome"] == "dry-run"
    assert env.ado.requests == []
    assert cli(["status"]) == 2  # a dry run records nothing, and no table exists yet: said clearly
    assert "Create the table" in capsys.readouterr().err
    container().upload_blob("y/2.json", dead_letter(sample("event-grid-schema", "model_deployed")))
    assert cli(["replay"]) == 0
    assert cli(["status"]) == 0
    assert "updated (UTC)" in capsys.readouterr().out


def test_failed_and_ambiguous_records_are_retried_once_it_is_safe(env: Stack, capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from amlrelay.relay import AMBIGUOUS
    from amlrelay.routes import load_routes
    from amlrelay.runbook import build_relay
    from amlrelay.settings import resolve

    relay = build_relay(resolve({}), load_routes(env.routes_path))
    deployed = sample("event-grid-schema", "model_deployed")
    registered = sample("event-grid-schema", "model_registered")
    env.ado.fail(404)  # a plain failure
    [first] = relay.handle(parse_events([deployed]), raw=[deployed])
    env.ado.reset()  # the answer is lost: ambiguous, and not settled, so not resent in that job
    [second] = relay.handle(parse_events([registered]), raw=[registered])
    assert (first.outcome, second.outcome) == ("failed", "failed")
    assert (second.reason or "").startswith(AMBIGUOUS)
    code, outcomes = run_cli(capsys, "replay", "--json", "--failed", "--no-dead-letters")
    assert code == 1  # the ambiguous one waits until ADO has certainly settled (AMLRELAY_SETTLE_AFTER)
    assert sorted((o["event_type"], o["outcome"]) for o in outcomes) == [("ModelDeployed", "triggered"),
                                                                         ("ModelRegistered", "failed")]
    monkeypatch.setenv("AMLRELAY_SETTLE_AFTER", "0")
    code, outcomes = run_cli(capsys, "replay", "--json", "--failed", "--no-dead-letters")
    assert code == 0
    assert [(o["event_type"], o["outcome"]) for o in outcomes] == [("ModelRegistered", "triggered")]
    assert len(env.ado.runs) == 2  # looked for the lost run, found none, sent once


def test_purge_deletes_only_old_finished_records(env: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    import os

    from amlrelay.errors import LedgerError

    ledger = Ledger.from_connection_string(os.environ["AMLRELAY_LEDGER_CONNECTION_STRING"],
                                           table=os.environ["AMLRELAY_LEDGER_TABLE"])
    ledger.ensure_table()
    table = TableClient.from_connection_string(os.environ["AMLRELAY_LEDGER_CONNECTION_STRING"],
                                               os.environ["AMLRELAY_LEDGER_TABLE"])
    long_ago = datetime.now(timezone.utc) - timedelta(days=40)
    for key, finish in (("old-triggered", "triggered"), ("old-failed", "failed"), ("old-claim", None),
                        ("new-triggered", "triggered")):
        claim = ledger.claim(key, route="r", event_id="e", event_type="ModelRegistered", event_json=None)
        if finish == "triggered":
            ledger.mark_triggered(claim, run_id=1, run_url=None)
        elif finish == "failed":
            ledger.mark_failed(claim, "boom")
        if key.startswith("old"):
            pk, rk = table_address(key)
            table.update_entity({"PartitionKey": pk, "RowKey": rk, "updated_at": long_ago}, mode=UpdateMode.MERGE)
    with pytest.raises(LedgerError, match="younger than 2 days"):
        ledger.purge(timedelta(hours=12))
    assert cli(["purge"]) == 0
    assert "deleted 1 ledger records" in capsys.readouterr().out
    assert cli(["purge", "--include-failed"]) == 0
    assert "deleted 1 ledger records" in capsys.readouterr().out
    assert sorted(r.key for r in ledger.recent()) == ["new-triggered", "old-claim"]  # claims are never purged
