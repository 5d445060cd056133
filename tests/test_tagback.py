"""Tag-back (AMLRELAY_TAG_BACK): after the relay starts an ADO run it tags the AML run / model version with it,
through the MLflow stand-in, with the handler's managed identity (identity stand-in), the ledger in Azurite
and the strict ADO stand-in. A tag failure is a warning, the trigger stands, and retry_tags writes it later.
The loop guard: a tagged run's later events are the same ledger key, so no second run."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest

from amlrelay.aml._tagback import RUN_ID_TAG, RUN_URL_TAG, TagBack, retry_tags
from amlrelay.errors import SettingsError
from amlrelay.events import parse_events
from amlrelay.ledger import Ledger
from amlrelay.record import Outcome, exit_code
from amlrelay.relay import Relay
from amlrelay.routes import load_routes
from amlrelay.runbook import build_relay, report
from amlrelay.settings import resolve
from tests.conftest import ROUTES_FILE, sample
from tests.servers.mlflow import MlflowServer
from tests.stack import Stack, local_stack

WORKSPACE = ("/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-contoso/providers/"
             "Microsoft.MachineLearningServices/workspaces/contoso-ml")
RUN_ID = "AutoML_ad912b2d-6467-4f32-a616-dbe4af6dd8fc_5"  # the sample's run id: mixed case, kept exactly
MODEL = ("sklearn_regression_model", "20")


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    with local_stack() as s:
        for name, value in s.env().items():
            monkeypatch.setenv(name, value)
        yield s


@pytest.fixture
def mlflow_server() -> Iterator[MlflowServer]:
    with MlflowServer(WORKSPACE) as server:
        server.add_run(RUN_ID, {"mlflow.user": "someone"})
        server.add_model_version(*MODEL)
        yield server


def relay_for(stack: Stack, azurite: str, table: str, mlflow: MlflowServer | None, **overrides: str) -> Relay:
    env = {**stack.env(), "AMLRELAY_LEDGER": "true", "AMLRELAY_LEDGER_CONNECTION_STRING": azurite,
           "AMLRELAY_LEDGER_TABLE": table, "AMLRELAY_ALLOWED_WORKSPACES": WORKSPACE}
    if mlflow is not None:  # the base URL without {region}: the workspace path is appended as for Azure
        env |= {"AMLRELAY_TAG_BACK": "true", "AMLRELAY_MLFLOW_URL": mlflow.url}
    relay = build_relay(resolve({}, env={**env, **overrides}), load_routes(ROUTES_FILE))
    assert relay.ledger is not None
    relay.ledger.ensure_table()
    return relay


def event(name: str, **data: Any) -> dict[str, Any]:
    item = copy.deepcopy(sample("event-grid-schema", name))
    item["topic"] = WORKSPACE
    item["data"].update(data)
    return item


def deliver(relay: Relay, *events: dict[str, Any]) -> list[Outcome]:
    return relay.handle(parse_events(list(events)), raw=list(events))


def record_of(relay: Relay, outcome_key: str) -> Any:
    assert relay.ledger is not None
    return relay.ledger.get(outcome_key)


def test_a_triggered_run_is_tagged_once_with_the_ado_run(stack: Stack, azurite: str, table_name: str,
                                                         mlflow_server: MlflowServer) -> None:
    relay = relay_for(stack, azurite, table_name, mlflow_server)
    [outcome] = deliver(relay, event("run_completed"))
    assert (outcome.outcome, outcome.warning) == ("triggered", None)
    run = stack.ado.runs[0]
    assert mlflow_server.run_tags(RUN_ID) == {"mlflow.user": "someone", RUN_ID_TAG: str(run["id"]),
                                              RUN_URL_TAG: run["_links"]["web"]["href"]}
    assert len(mlflow_server.tag_requests) == 2
    assert all(r.path.endswith("/runs/set-tag") for r in mlflow_server.tag_requests)
    assert stack.identity.token_requests[-1].query["resource"] == "https://management.azure.com"
    key = f"{parse_events([event('run_completed')])[0].outcome_key()}|evaluate-trained-model"  # type: ignore[union-attr]
    record = record_of(relay, key)
    assert (record.state, record.tagged) == ("triggered", True)


def test_a_registered_model_version_is_tagged(stack: Stack, azurite: str, table_name: str,
                                              mlflow_server: MlflowServer) -> None:
    relay = relay_for(stack, azurite, table_name, mlflow_server)
    [outcome] = deliver(relay, event("model_registered"))
    assert (outcome.outcome, outcome.warning) == ("triggered", None)
    assert mlflow_server.model_version_tags(*MODEL)[RUN_ID_TAG] == str(outcome.ado_run_id)
    assert {r.json["version"] for r in mlflow_server.tag_requests} == {"20"}  # a number in the event, a string here


def test_tag_server_down_is_a_warning_the_trigger_stands_and_the_sweeper_tags_later(
        stack: Stack, azurite: str, table_name: str, mlflow_server: MlflowServer) -> None:
    relay = relay_for(stack, azurite, table_name, mlflow_server)
    mlflow_server.down()
    [outcome] = deliver(relay, event("run_completed"))
    assert outcome.outcome == "triggered"
    assert outcome.warning is not None
    assert "did not answer" in outcome.warning
    assert "amlrelay sweep" in outcome.warning
    assert exit_code([outcome]) == 0  # the job did its work: the trigger is not failed by a tag
    lines: list[str] = []
    report([outcome], lines.append)
    assert any(line.startswith("WARNING: ") and "tagging AML run" in line for line in lines)
    assert '"warning":' in lines[0]
    assert relay.ledger is not None
    [owed] = relay.ledger.untagged()
    assert owed.ado_run_id == outcome.ado_run_id

    assert retry_tags(relay.ledger, relay.tag_back)[0].ok is False  # type: ignore[arg-type]  # still down
    mlflow_server.up()
    [retried] = retry_tags(relay.ledger, relay.tag_back)  # type: ignore[arg-type]
    assert retried.ok, retried.warning
    assert mlflow_server.run_tags(RUN_ID)[RUN_ID_TAG] == str(outcome.ado_run_id)
    assert relay.ledger.untagged() == []
    assert retry_tags(relay.ledger, relay.tag_back) == []  # type: ignore[arg-type]  # nothing owed: no call
    assert len(mlflow_server.tag_requests) == 2
    assert len(stack.ado.runs) == 1  # never a second run because of tagging


def test_tag_server_failing_with_5xx_keeps_the_trigger(stack: Stack, azurite: str, table_name: str,
                                                       mlflow_server: MlflowServer) -> None:
    relay = relay_for(stack, azurite, table_name, mlflow_server)
    mlflow_server.fail(500, times=100)
    [outcome] = deliver(relay, event("model_registered"))
    assert outcome.outcome == "triggered"
    assert outcome.warning is not None
    assert "HTTP 500" in outcome.warning
    assert mlflow_server.model_version_tags(*MODEL) == {}
    assert len(stack.ado.runs) == 1


def test_loop_guard_a_tagged_runs_later_events_are_the_same_outcome(stack: Stack, azurite: str, table_name: str,
                                                                     mlflow_server: MlflowServer) -> None:
    relay = relay_for(stack, azurite, table_name, mlflow_server)
    first = event("run_completed")
    [triggered] = deliver(relay, first)
    tags_now = {**first["data"]["runTags"], **mlflow_server.run_tags(RUN_ID)}
    again = event("run_completed", runTags=tags_now)  # as if AML had sent the run again, tags and all
    again["id"] = "redelivered-with-new-tags"
    status = copy.deepcopy(sample("cloud-events-schema", "run_status_changed"))
    status.update(id="status-completed", source=WORKSPACE)
    status["data"].update(runId=RUN_ID, runStatus="Completed", runTags=tags_now)
    later = deliver(relay, again, status)
    assert [o.outcome for o in later] == ["duplicate", "duplicate"]
    keys = {e.outcome_key() for e in parse_events([first, again, status])}  # type: ignore[union-attr]
    assert len(keys) == 1
    assert {o.ado_run_id for o in later} == {triggered.ado_run_id}
    assert len(stack.ado.runs) == 1
    assert len(mlflow_server.tag_requests) == 2  # duplicates do not tag again


def test_tag_back_off_by_default_writes_nothing(stack: Stack, azurite: str, table_name: str,
                                                mlflow_server: MlflowServer) -> None:
    relay = relay_for(stack, azurite, table_name, None)
    assert relay.tag_back is None
    [outcome] = deliver(relay, event("run_completed"))
    assert outcome.outcome == "triggered"
    assert mlflow_server.requests == []
    assert relay.ledger is not None
    assert relay.ledger.untagged() == []


def test_a_crash_between_trigger_and_tag_leaves_the_tag_owed(stack: Stack, azurite: str, table_name: str,
                                                             mlflow_server: MlflowServer) -> None:
    """The owed tag is written with the run (one ledger write), so a job that dies before tagging is swept."""

    class Dies(TagBack):
        def after_trigger(self, *args: Any, **kwargs: Any) -> str | None:
            raise SystemExit("job killed")  # not an Exception: nothing in the relay catches it

    relay = relay_for(stack, azurite, table_name, mlflow_server)
    sweeper_tag_back = relay.tag_back
    relay.tag_back = Dies(None, mlflow_url=mlflow_server.url)
    with pytest.raises(SystemExit):
        deliver(relay, event("run_completed"))
    assert relay.ledger is not None
    [owed] = relay.ledger.untagged()
    assert owed.state == "triggered"
    [retried] = retry_tags(relay.ledger, sweeper_tag_back)  # type: ignore[arg-type]
    assert retried.ok
    assert mlflow_server.run_tags(RUN_ID)[RUN_ID_TAG] == str(stack.ado.runs[0]["id"])


def test_an_event_from_an_unparseable_workspace_id_warns_and_still_triggers(stack: Stack, azurite: str,
                                                                           table_name: str,
                                                                           mlflow_server: MlflowServer) -> None:
    relay = relay_for(stack, azurite, table_name, mlflow_server,
                      AMLRELAY_ALLOWED_WORKSPACES=WORKSPACE + ",/subscriptions/x/resourceGroups/r/providers/"
                      "Microsoft.MachineLearningServices/workspaces/{bad}")
    item = event("run_completed")
    item["topic"] = "/subscriptions/x/resourceGroups/r/providers/Microsoft.MachineLearningServices/workspaces/{bad}"
    [outcome] = deliver(relay, item)
    assert outcome.outcome == "triggered"
    assert outcome.warning is not None
    assert "invalid resource group or workspace name" in outcome.warning


def test_settings_need_a_region_for_the_default_mlflow_url() -> None:
    base = {"AMLRELAY_ADO_ORGANIZATION": "contoso", "AMLRELAY_ROUTES": str(ROUTES_FILE),
            "AMLRELAY_ALLOWED_WORKSPACES": WORKSPACE, "AMLRELAY_LEDGER": "false", "AMLRELAY_TAG_BACK": "true"}
    with pytest.raises(SettingsError, match="AMLRELAY_AML_REGION is missing"):
        resolve({}, env=base)
    settings = resolve({}, env={**base, "AMLRELAY_AML_REGION": "West Europe"})
    assert (settings.tag_back, settings.aml_region) == (True, "westeurope")
    assert resolve({}, env={**base, "AMLRELAY_MLFLOW_URL": "azureml://westeurope.api.azureml.ms/mlflow/v1.0"
                            + WORKSPACE}).tag_back


def test_retry_tags_is_the_sweepers_entry_point(azurite: str, table_name: str) -> None:
    """``retry_tags`` works from a bare ledger (as ``amlrelay sweep`` opens it) and never touches ADO."""
    ledger = Ledger.from_connection_string(azurite, table=table_name)
    ledger.ensure_table()
    assert retry_tags(ledger, TagBack(None)) == []


def test_amlrelay_retag_writes_owed_tags_and_never_calls_ado(stack: Stack, azurite: str, table_name: str,
                                                             mlflow_server: MlflowServer,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from amlrelay.cli import main

    relay = relay_for(stack, azurite, table_name, mlflow_server)
    mlflow_server.fail(503, times=100)
    [outcome] = deliver(relay, event("model_registered"))
    assert outcome.warning is not None
    for name, value in {"AMLRELAY_LEDGER": "true", "AMLRELAY_LEDGER_CONNECTION_STRING": azurite,
                        "AMLRELAY_LEDGER_TABLE": table_name, "AMLRELAY_TAG_BACK": "true",
                        "AMLRELAY_MLFLOW_URL": mlflow_server.url}.items():
        monkeypatch.setenv(name, value)
    assert main(["retag"]) == 1  # still failing: owed, said so, exit 1
    assert "0 tagged, 1 still owed" in capsys.readouterr().out
    mlflow_server.reset_state()
    ado_requests = len(stack.ado.requests)
    assert main(["retag"]) == 0
    assert "1 tagged, 0 still owed" in capsys.readouterr().out
    assert mlflow_server.model_version_tags(*MODEL)[RUN_ID_TAG] == str(outcome.ado_run_id)
    assert main(["retag"]) == 0
    assert "0 tagged, 0 still owed" in capsys.readouterr().out
    assert len(stack.ado.requests) == ado_requests


def test_the_scheduled_replay_runbook_retags(stack: Stack, azurite: str, table_name: str,
                                             mlflow_server: MlflowServer) -> None:
    """runbooks/replay_dead_letters.py (hourly in Automation) ends with `amlrelay retag`."""
    import subprocess
    import sys

    from tests import secret_guard
    from tests.stack import ROOT

    relay = relay_for(stack, azurite, table_name, mlflow_server)
    mlflow_server.down()
    [outcome] = deliver(relay, event("run_completed"))
    assert outcome.warning is not None
    mlflow_server.up()
    env = {**stack.env(), "AMLRELAY_LEDGER": "true", "AMLRELAY_LEDGER_CONNECTION_STRING": azurite,
           "AMLRELAY_LEDGER_TABLE": table_name, "AMLRELAY_ALLOWED_WORKSPACES": WORKSPACE, "AMLRELAY_JOURNAL": "false",
           "AMLRELAY_TAG_BACK": "true", "AMLRELAY_MLFLOW_URL": mlflow_server.url}
    done = subprocess.run([sys.executable, str(ROOT / "runbooks" / "replay_dead_letters.py")], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    secret_guard.record("replay runbook stdout", done.stdout)
    assert "tag-back: 1 tagged, 0 still owed" in done.stdout, done.stdout + done.stderr
    assert mlflow_server.run_tags(RUN_ID)[RUN_ID_TAG] == str(outcome.ado_run_id)
    assert len(stack.ado.runs) == 1


def test_permanent_refusals_are_given_up_after_n_tries_and_cannot_starve_other_tags(
        stack: Stack, azurite: str, table_name: str, mlflow_server: MlflowServer) -> None:
    """A tag MLflow refuses for good (404: the run is gone) is counted on the record, retried behind the
    least-tried ones, and given up at the N-th try with one WARNING naming it; a tag owed because the server
    was down is written meanwhile, even with room for one record per pass."""
    from amlrelay.aml._tagback import given_up_warning

    relay = relay_for(stack, azurite, table_name, mlflow_server)
    assert relay.ledger is not None
    tag_back = relay.tag_back
    assert isinstance(tag_back, TagBack)
    [gone] = deliver(relay, event("run_completed", runId="Gone_Run_1"))  # no such run in MLflow: 404
    assert gone.warning is not None
    assert "404" in gone.warning
    mlflow_server.down()
    [later] = deliver(relay, event("run_completed"))
    mlflow_server.up()
    [first] = retry_tags(relay.ledger, tag_back, limit=1, give_up_after=3)
    assert (first.ado_run_id, first.ok, first.attempts, first.gave_up) == (gone.ado_run_id, False, 1, None)
    [second] = retry_tags(relay.ledger, tag_back, limit=1, give_up_after=3)  # the least-tried goes first
    assert (second.ado_run_id, second.ok) == (later.ado_run_id, True)
    assert mlflow_server.run_tags(RUN_ID)[RUN_ID_TAG] == str(later.ado_run_id)
    tries = [retry_tags(relay.ledger, tag_back, limit=1, give_up_after=3) for _ in range(2)]
    assert [(r.attempts, r.gave_up) for [r] in tries] == [(2, None), (3, True)]
    warning = given_up_warning(tries[-1])
    assert warning is not None
    assert warning.startswith("WARNING: tag-back gave up on 1 tag(s) after 3 refused tries")
    assert "AML run 'Gone_Run_1'" in warning
    assert f"ADO run {gone.ado_run_id}" in warning
    assert relay.ledger.untagged() == []  # no longer retried ...
    [kept] = relay.ledger.untagged(include_given_up=True)  # ... but still visible as owed, with the reason
    assert (kept.tag_attempts, kept.tag_gave_up, kept.tagged) == (3, True, False)
    assert kept.tag_error is not None
    assert "RESOURCE_DOES_NOT_EXIST" in kept.tag_error
    assert retry_tags(relay.ledger, tag_back) == []
    assert len(stack.ado.runs) == 2


def test_an_outage_is_retried_without_end(stack: Stack, azurite: str, table_name: str,
                                          mlflow_server: MlflowServer) -> None:
    from azure.identity import ManagedIdentityCredential

    from amlrelay.aml._mlflow import MlflowClient

    relay = relay_for(stack, azurite, table_name, mlflow_server)
    assert relay.ledger is not None
    mlflow_server.down()
    deliver(relay, event("run_completed"))
    credential = ManagedIdentityCredential()  # the handler's identity (the stack's endpoint)
    quick = TagBack(None, mlflow_url=mlflow_server.url,  # no client-side retries: each pass is one try
                    client_factory=lambda url: MlflowClient(url, credential, retries=0, backoff=0, timeout=5))
    for attempt in (1, 2):
        [result] = retry_tags(relay.ledger, quick, give_up_after=1)
        assert (result.ok, result.attempts, result.gave_up) == (False, attempt, None)
    mlflow_server.up()
    [done] = retry_tags(relay.ledger, quick, give_up_after=1)
    assert done.ok


def test_without_a_ledger_the_run_is_still_tagged_and_a_failed_tag_says_nothing_retries_it(
        stack: Stack, mlflow_server: MlflowServer) -> None:
    """AMLRELAY_LEDGER=false with tag-back on: each started run is tagged all the same; a tag that fails is
    a warning saying no sweep will retry it (there is no ledger row to owe it)."""
    env = {**stack.env(), "AMLRELAY_ALLOWED_WORKSPACES": WORKSPACE, "AMLRELAY_TAG_BACK": "true",
           "AMLRELAY_MLFLOW_URL": mlflow_server.url}
    relay = build_relay(resolve({}, env=env), load_routes(ROUTES_FILE))
    assert relay.ledger is None
    [tagged] = deliver(relay, event("run_completed"))
    assert (tagged.outcome, tagged.warning) == ("triggered", None)
    run = stack.ado.runs[0]
    assert mlflow_server.run_tags(RUN_ID)[RUN_ID_TAG] == str(run["id"]) == str(tagged.ado_run_id)
    assert mlflow_server.run_tags(RUN_ID)[RUN_URL_TAG] == run["_links"]["web"]["href"] == tagged.ado_run_url
    mlflow_server.fail(500, times=100)
    [untagged] = deliver(relay, event("model_registered"))
    assert untagged.outcome == "triggered"
    assert "HTTP 500" in (untagged.warning or "")
    assert "(no ledger record, so nothing retries the tag; the run is not started again)" in (untagged.warning or "")


def test_a_bug_in_tagging_is_a_warning_and_the_run_stands(stack: Stack, azurite: str, table_name: str,
                                                          mlflow_server: MlflowServer) -> None:
    """Tag-back must never turn a started run into a crash or a resend: an unexpected exception in it is
    a warning naming the error, the outcome stays triggered with its run, and the job exits 0."""

    class Broken(TagBack):
        def after_trigger(self, *args: Any, **kwargs: Any) -> str | None:
            raise RuntimeError("boom\n" + "x" * 300)

    relay = relay_for(stack, azurite, table_name, mlflow_server)
    relay.tag_back = Broken(None, mlflow_url=mlflow_server.url)
    [outcome] = deliver(relay, event("run_completed"))
    assert (outcome.outcome, outcome.ado_run_id) == ("triggered", stack.ado.runs[0]["id"])
    assert outcome.warning == (f"tag-back failed unexpectedly (RuntimeError: boom\n{'x' * 195}); the run stands")
    assert exit_code([outcome]) == 0
    assert len(stack.ado.runs) == 1


class RecordedTags(TagBack):
    """Tag-back whose MLflow writes are kept here instead of sent; each answers ``answer`` (None: written)."""

    def __init__(self, answer: str | None = None) -> None:
        super().__init__(None)
        self.answer = answer
        self.written: list[tuple[dict[str, Any], int, str | None]] = []

    def apply(self, target: str, run_id: int, run_url: str | None) -> str | None:
        self.written.append((json.loads(target), run_id, run_url))
        return self.answer


def test_without_a_ledger_the_event_s_own_entity_is_tagged_with_the_run_it_started(stack: Stack) -> None:
    """In process, no MLflow: the tag goes on the AML run the event names, with the ADO run's id and URL (also in
    the outcome); a refused tag is the outcome's warning; a deployment (nothing to tag) writes and warns nothing."""
    relay = build_relay(resolve({}, env={**stack.env(), "AMLRELAY_ALLOWED_WORKSPACES": WORKSPACE}),
                        load_routes(ROUTES_FILE))
    relay.tag_back = tags = RecordedTags(answer="ADO run 1 was started, but tagging failed: HTTP 403 (the tag is "
                                             "retried by `amlrelay sweep`; the run is not started again)")
    [tagged] = deliver(relay, event("run_completed"))
    run = stack.ado.runs[0]
    assert (tagged.outcome, tagged.ado_run_id, tagged.ado_run_url) == ("triggered", run["id"],
                                                                       run["_links"]["web"]["href"])
    assert tags.written == [({"workspace": WORKSPACE, "kind": "run", "name": RUN_ID}, run["id"],
                             run["_links"]["web"]["href"])]
    assert tagged.warning == ("ADO run 1 was started, but tagging failed: HTTP 403 (no ledger record, so nothing "
                              "retries the tag; the run is not started again)")
    [deployed] = deliver(relay, event("model_deployed"))
    assert (deployed.outcome, deployed.warning, len(tags.written)) == ("triggered", None, 1)
