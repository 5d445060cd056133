"""The relay's paths, each with the exact outcome a user sees: dry-run previews, skips with every reason,
rejected items of a batch, template failures that claim nothing, a claim held by another job, the original
delivery kept for replay, and the ledger-less (at least once) path."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from amlrelay.events import parse_events
from amlrelay.ledger import Ledger
from amlrelay.relay import AMBIGUOUS, Relay
from amlrelay.routes import parse_routes
from amlrelay.runbook import build_relay
from amlrelay.settings import resolve
from tests.conftest import sample
from tests.servers.ado import PipelineDef
from tests.stack import Stack, local_stack

ROUTES = {"version": 1, "routes": [
    {"name": "Deploy", "events": ["ModelRegistered"], "filters": {"modelTags.area": {"in": ["diabetes"]}},
     "pipeline": {"project": "ml ops", "id": 70, "variables": {"M": "{{ modelName }}", "V": "{{ modelVersion }}"}}},
    {"name": "staged", "events": ["ModelRegistered"],
     "pipeline": {"project": "ml ops", "id": 71, "variables": {"S": "{{ modelTags.stage }}",
                                                               "M": "{{ modelName }}", "V": "{{ modelVersion }}"}}},
    {"name": "other", "events": ["RunCompleted"], "pipeline": {"project": "ml ops", "id": 72}}]}
PIPELINES = {("ml ops", 70): PipelineDef("deploy", variables_settable_at_queue_time=frozenset({"M", "V"})),
             ("ml ops", 71): PipelineDef("staged", variables_settable_at_queue_time=frozenset({"S", "M", "V"})),
             ("ml ops", 72): PipelineDef("other")}


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    with local_stack(pipelines=PIPELINES) as s:
        for name, value in s.env().items():
            monkeypatch.setenv(name, value)
        yield s


def relay(stack: Stack, **env: str) -> Relay:
    built = build_relay(resolve({}, env=stack.env(**env)), parse_routes(json.dumps(ROUTES)))
    if built.ledger is not None:
        built.ledger.ensure_table()
    return built


def registered(**data: Any) -> dict[str, Any]:
    raw = sample("event-grid-schema", "model_registered")
    raw["data"].update(data)
    return raw


def ledger_env(azurite: str, table_name: str) -> dict[str, str]:
    return {"AMLRELAY_LEDGER": "true", "AMLRELAY_LEDGER_CONNECTION_STRING": azurite,
            "AMLRELAY_LEDGER_TABLE": table_name}


def test_a_dry_run_previews_the_exact_request_of_each_route(stack: Stack) -> None:
    r = relay(stack, AMLRELAY_DRY_RUN="true")
    assert r.trigger is None
    [deploy, staged] = r.handle(parse_events([registered(modelTags={"area": "diabetes", "stage": "prod"})]))
    assert (deploy.outcome, deploy.route, staged.route) == ("dry-run", "Deploy", "staged")
    assert deploy.request == {
        "method": "POST", "url": f"{stack.ado.org_url}/ml%20ops/_apis/pipelines/70/runs",
        "query": {"api-version": "7.1"},
        "body": {"variables": {"M": {"value": "sklearn_regression_model", "isSecret": False},
                               "V": {"value": "20", "isSecret": False}}}}
    assert stack.ado.requests == []


def test_an_event_no_route_takes_is_skipped_with_every_reason(stack: Stack) -> None:
    r = relay(stack, AMLRELAY_DRY_RUN="true")
    raw = sample("event-grid-schema", "model_deployed")
    [skipped] = r.handle(parse_events([raw]))
    assert skipped.outcome == "skipped"
    assert skipped.reason == ("no route matches (Deploy: not for ModelDeployed; staged: not for ModelDeployed; "
                              "other: not for ModelDeployed)")
    assert (skipped.event_id, skipped.event_type, skipped.subject) == (raw["id"], "ModelDeployed", raw["subject"])


def test_a_named_route_is_used_without_its_filters(stack: Stack) -> None:
    r = relay(stack, AMLRELAY_DRY_RUN="true")
    r.only_route = "deploy"  # route names ignore case
    [outcome] = r.handle(parse_events([registered(modelTags={"area": "other"})]))
    assert (outcome.outcome, outcome.route) == ("dry-run", "Deploy")


def test_invalid_and_skipped_items_keep_their_short_type_and_place(stack: Stack) -> None:
    r = relay(stack, AMLRELAY_DRY_RUN="true")
    broken = registered()
    broken["data"] = {"modelName": "m"}
    unknown = {**sample("event-grid-schema", "model_registered"), "eventType": "Microsoft.Storage.BlobCreated",
               "id": "blob"}
    outcomes = r.handle(parse_events([broken, unknown, registered(modelTags={"area": "diabetes"})]))
    assert [(o.event_type, o.outcome) for o in outcomes] == [
        ("ModelRegistered", "rejected"), ("BlobCreated", "skipped"), ("ModelRegistered", "dry-run"),
        ("ModelRegistered", "failed")]  # the second route needs a tag this event lacks
    assert "modelVersion" in (outcomes[0].reason or "")
    assert (outcomes[3].route, outcomes[3].ado_run_id) == ("staged", None)  # the route to fix is named
    assert (outcomes[3].reason or "").startswith("route 'staged': the event has no modelTags.stage")


def test_a_template_failure_fails_that_route_only_and_claims_nothing(stack: Stack, azurite: str,
                                                                     table_name: str) -> None:
    r = relay(stack, **ledger_env(azurite, table_name))
    [deploy, staged] = r.handle(parse_events([registered(modelTags={"area": "diabetes"})]))
    assert (deploy.outcome, staged.outcome) == ("triggered", "failed")
    assert (staged.reason or "").startswith("route 'staged': the event has no modelTags.stage Add a fallback")
    assert r.ledger is not None
    assert [rec.route for rec in r.ledger.recent()] == ["Deploy"]


def test_an_empty_branch_tag_with_a_fallback_starts_the_run_on_the_fallback_branch(stack: Stack) -> None:
    """AML keeps a tag set to '': ``{{ runTags.branch | main }}`` then starts the run on refs/heads/main,
    never on 'refs/heads/' (which ADO refuses)."""
    routes = {"version": 1, "routes": [{"name": "evaluate", "events": ["RunCompleted"], "pipeline": {
        "project": "ml ops", "id": 72, "branch": "{{ runTags.branch | main }}"}}]}
    r = build_relay(resolve({}, env=stack.env()), parse_routes(json.dumps(routes)))
    raw = sample("event-grid-schema", "run_completed")
    raw["data"]["runTags"] = {"branch": ""}
    [outcome] = r.handle(parse_events([raw]))
    assert outcome.outcome == "triggered"
    [sent] = stack.ado.run_requests
    assert sent.json["resources"] == {"repositories": {"self": {"refName": "refs/heads/main"}}}
    [run] = stack.ado.runs
    assert run["resources"]["repositories"]["self"]["refName"] == "refs/heads/main"


def test_the_delivery_is_kept_with_its_claim_for_replay(stack: Stack, azurite: str, table_name: str) -> None:
    r = relay(stack, **ledger_env(azurite, table_name))
    first, second = registered(modelTags={"area": "diabetes"}), registered(modelTags={"area": "diabetes"})
    second["id"], second["data"]["ModelVersion"] = "second-delivery", "21"
    outcomes = r.handle(parse_events([first, second]), raw=[first, second])
    assert [o.outcome for o in outcomes] == ["triggered", "failed", "triggered", "failed"]
    assert r.ledger is not None
    kept = {rec.event_id: json.loads(rec.event_json or "null") for rec in r.ledger.recent()}
    assert kept == {first["id"]: first, "second-delivery": second}


def test_a_claim_held_by_a_live_job_is_a_duplicate_that_says_when(stack: Stack, azurite: str,
                                                                   table_name: str) -> None:
    r = relay(stack, **ledger_env(azurite, table_name))
    raw = registered(modelTags={"area": "diabetes"})
    [event] = parse_events([raw])
    assert r.ledger is not None
    held = r.ledger.claim(f"{event.outcome_key()}|deploy", route="Deploy", event_id="x",  # type: ignore[union-attr]
                          event_type="ModelRegistered", event_json=None)
    [outcome, _] = r.handle(parse_events([raw]))
    assert (outcome.outcome, outcome.route) == ("duplicate", "Deploy")
    assert outcome.reason == f"another job is starting it (claimed {held.record.claimed_at:%Y-%m-%d %H:%M:%S} UTC)"
    assert outcome.ado_run_id is None
    assert stack.ado.run_requests == [] or all("/70/" not in q.path for q in stack.ado.run_requests)


def test_without_a_ledger_runs_start_at_least_once_and_failures_say_why(stack: Stack) -> None:
    r = relay(stack)
    assert r.ledger is None
    [first, _] = r.handle(parse_events([registered(modelTags={"area": "diabetes"})]))
    [again, _] = r.handle(parse_events([registered(modelTags={"area": "diabetes"})]))
    assert (first.outcome, again.outcome) == ("triggered", "triggered")
    assert first.ado_run_id != again.ado_run_id
    stack.ado.fail(502)  # another outcome (a new version): no earlier run of it to find
    [lost, _] = r.handle(parse_events([registered(modelTags={"area": "diabetes"}, ModelVersion="21")]))
    assert (lost.outcome, lost.route) == ("failed", "Deploy")  # which pipeline to look at
    assert (lost.reason or "").startswith(AMBIGUOUS + "ADO failed pipeline 70")
    stack.ado.fail(400)
    [refused, _] = r.handle(parse_events([registered(modelTags={"area": "diabetes"}, ModelVersion="22")]))
    assert (refused.reason or "").startswith("ADO rejected the request")


def test_a_ledger_that_cannot_record_the_failure_says_so(stack: Stack, azurite: str, table_name: str) -> None:
    """Fault injection: the ledger's table answers the claim, then refuses the failure record (a real Azurite
    behind it; only ``mark_failed`` is made to fail, as a throttled or unreachable table would)."""
    from amlrelay.errors import LedgerError

    class Unrecordable(Ledger):
        def mark_failed(self, *args: Any, **kw: Any) -> Any:
            raise LedgerError("the table went away")

    r = relay(stack, **ledger_env(azurite, table_name))
    r.ledger = Unrecordable.from_connection_string(azurite, table=table_name)
    stack.ado.fail(400)
    [outcome, _] = r.handle(parse_events([registered(modelTags={"area": "diabetes"})]))
    assert outcome.outcome == "failed"
    assert (outcome.reason or "").startswith("ADO rejected the request")
    assert (outcome.reason or "").endswith("(and the ledger could not record the failure: the table went away)")


LATER = ("The next delivery or `amlrelay replay --failed` (scheduled in Automation) looks for the run again and "
         "sends only if it is not there.")


def test_an_answer_that_leaves_the_run_open_says_what_happens_next(stack: Stack) -> None:
    """After a gateway error nothing is sent again at once; the reason keeps ADO's answer, says why nothing
    was resent (no run yet, or the look itself failed) and what will look again — an operator's next step."""
    r = relay(stack)
    where = f"pipeline 70 in project 'ml ops' of {stack.ado.org_url}"
    stack.ado.fail(502)
    [open_, _] = r.handle(parse_events([registered(modelTags={"area": "diabetes"}, ModelVersion="31")]))
    assert open_.outcome == "failed"
    assert open_.reason == (f"{AMBIGUOUS}ADO failed {where} (HTTP 502). No run found yet, but ADO may still be "
                            f"creating it, so nothing is sent again now. {LATER}")
    stack.ado.fail(502)
    stack.ado.fail(404, method="GET")  # ... and the pipeline's runs cannot be read either
    [blind, _] = r.handle(parse_events([registered(modelTags={"area": "diabetes"}, ModelVersion="32")]))
    assert blind.outcome == "failed"
    assert blind.reason == (f"{AMBIGUOUS}ADO failed {where} (HTTP 502). Looking for the run failed too: ADO found "
                            f"no runs of pipeline 70 in project 'ml ops' of {stack.ado.org_url} (HTTP 404). "
                            f"Scripted 404 from the ADO stand-in. {LATER}")
    assert len(stack.ado.run_requests) == 2  # one POST each, no resend


def test_an_item_without_an_event_type_is_shown_as_a_question_mark(stack: Stack) -> None:
    """The output line and table always name the event's kind; an item that has none says so with '?'."""
    r = relay(stack, AMLRELAY_DRY_RUN="true")
    bare = {**sample("event-grid-schema", "model_registered"), "eventType": "Custom", "id": "c"}
    [junk, typeless, custom] = r.handle(parse_events(["not an event", {"id": "y", "subject": "s"}, bare]))
    assert (junk.event_type, junk.outcome, typeless.event_type, typeless.event_id) == ("?", "rejected", "?", "y")
    assert "got a string" in (junk.reason or "")
    assert (custom.event_type, custom.outcome) == ("Custom", "skipped")  # a type without a namespace: itself
    assert (custom.event_id, custom.subject, custom.reason) == ("c", bare["subject"],
                                                                "not an Azure Machine Learning event type")
    assert (typeless.subject, typeless.reason) == ("s", "The object is neither an Event Grid event (no eventType) "
                                                        "nor a CloudEvent (no specversion). Send Event Grid schema "
                                                        "or CloudEvents 1.0 events from an Azure ML system topic.")


def test_a_run_the_ledger_could_not_record_is_reported_triggered_with_the_reason(stack: Stack, azurite: str,
                                                                                 table_name: str) -> None:
    """The run was started, so the outcome is ``triggered`` with its run; the reason says the ledger missed
    it (which makes the job exit 1, so someone looks before a redelivery could start it again)."""
    from amlrelay.errors import LedgerError
    from amlrelay.record import exit_code

    class Unrecordable(Ledger):
        def mark_triggered(self, *args: Any, **kw: Any) -> Any:
            raise LedgerError("the table went away")

    r = relay(stack, **ledger_env(azurite, table_name))
    r.ledger = Unrecordable.from_connection_string(azurite, table=table_name)
    [outcome, _] = r.handle(parse_events([registered(modelTags={"area": "diabetes"})]))
    [run] = stack.ado.runs
    assert (outcome.outcome, outcome.route, outcome.ado_run_id) == ("triggered", "Deploy", run["id"])
    assert outcome.ado_run_url == run["_links"]["web"]["href"]
    assert outcome.reason == "triggered, but the ledger could not record it: the table went away"
    assert exit_code([outcome]) == 1


@pytest.mark.parametrize("with_ledger", [True, False])
def test_a_500_with_no_run_behind_it_is_looked_up_then_sent_once_more(stack: Stack, azurite: str, table_name: str,
                                                                      with_ledger: bool) -> None:
    """A 500 is ADO's own answer, so a run it queued would be listed already: none there means none was
    queued, and the request is sent once more (with a ledger, on the renewed claim; without, with no claim to
    renew) — and the run it starts is this attempt's, ``triggered``, not an earlier one's."""
    r = relay(stack, **ledger_env(azurite, table_name)) if with_ledger else relay(stack)
    stack.ado.fail(500)
    [outcome, _] = r.handle(parse_events([registered(modelTags={"area": "diabetes"}, ModelVersion="41")]))
    [run] = stack.ado.runs
    assert (outcome.outcome, outcome.ado_run_id, outcome.reason) == ("triggered", run["id"], None)
    assert len(stack.ado.run_requests) == 2
    assert any(q.method == "GET" and q.path.endswith("/70/runs") for q in stack.ado.requests)  # looked first


def test_a_claim_taken_over_before_the_resend_sends_nothing_again(stack: Stack, azurite: str,
                                                                  table_name: str) -> None:
    """After a 500 with no run behind it the request is sent again only while the claim is still this job's:
    one taken over meanwhile (a job that thought this one dead) fails this attempt instead of a second run."""
    from datetime import timedelta

    def takeover() -> None:
        thief = Ledger.from_connection_string(azurite, table=table_name, stale_after=timedelta(0), holder="job-b")
        [record] = thief.recent()
        taken = thief.claim(record.key, route=record.route, event_id="again", event_type=record.event_type,
                            event_json=None)
        assert taken.record.holder == "job-b"  # it took the claim over

    class TakenOver(Ledger):
        def renew(self, claim: Any) -> Any:
            takeover()
            return super().renew(claim)

    r = relay(stack, **ledger_env(azurite, table_name))
    r.ledger = TakenOver.from_connection_string(azurite, table=table_name)
    stack.ado.fail(500)
    [outcome, _] = r.handle(parse_events([registered(modelTags={"area": "diabetes"}, ModelVersion="42")]))
    assert outcome.outcome == "failed"
    assert "taken over by holder job-b" in (outcome.reason or "")
    assert len(stack.ado.run_requests) == 1
    assert stack.ado.runs == []


class _Approves:
    """A verifier that confirms every event (what AML answers for a genuine one)."""

    def __init__(self) -> None:
        self.asked = 0

    def check(self, event: Any, fields: Any = ()) -> None:
        self.asked += 1


def test_a_dry_run_previews_even_a_route_already_triggered(stack: Stack, azurite: str, table_name: str) -> None:
    """A dry run answers "what would be sent": with a ledger, a live ADO client and verification configured,
    it still previews the request of a route the ledger holds as triggered, and claims nothing."""
    r = relay(stack, **ledger_env(azurite, table_name))
    raw = registered(modelTags={"area": "diabetes"})
    [done, _] = r.handle(parse_events([raw]))
    assert done.outcome == "triggered"
    r.verifier, r.dry_run = _Approves(), True
    [preview, _] = r.handle(parse_events([raw]))
    assert (preview.outcome, preview.route, preview.ado_run_id) == ("dry-run", "Deploy", None)
    assert preview.request is not None
    assert preview.request["url"].endswith("/ml%20ops/_apis/pipelines/70/runs")
    assert len(stack.ado.run_requests) == 1


def test_items_beyond_the_raw_deliveries_given_are_handled_without_a_copy_to_replay(stack: Stack, azurite: str,
                                                                                   table_name: str) -> None:
    """``raw`` carries each item's original delivery for the ledger (replay); an item without one is still
    relayed, its claim just keeps no copy."""
    r = relay(stack, **ledger_env(azurite, table_name))
    first, second = registered(modelTags={"area": "diabetes"}), registered(modelTags={"area": "diabetes"})
    second["id"], second["data"]["ModelVersion"] = "second-delivery", "51"
    outcomes = r.handle(parse_events([first, second]), raw=[first])
    assert [o.outcome for o in outcomes] == ["triggered", "failed", "triggered", "failed"]
    assert r.ledger is not None
    kept = {rec.event_id: (rec.event_type, rec.event_json) for rec in r.ledger.recent()}
    assert kept == {first["id"]: ("ModelRegistered", json.dumps(first)), "second-delivery": ("ModelRegistered", None)}


def test_with_verification_an_unreadable_ledger_lookup_goes_on_to_verify_and_claim(stack: Stack, azurite: str,
                                                                                   table_name: str) -> None:
    """The read-only lookup before verification only saves AML reads: when it fails, the event is verified
    and claimed as usual (the claim decides), not failed or crashed."""
    from amlrelay.errors import LedgerError

    class Unreadable(Ledger):
        def get(self, key: str) -> Any:
            raise LedgerError("the table is throttling reads")

    r = relay(stack, **ledger_env(azurite, table_name))
    r.ledger = Unreadable.from_connection_string(azurite, table=table_name)
    r.verifier = verifier = _Approves()
    [outcome, _] = r.handle(parse_events([registered(modelTags={"area": "diabetes"})]))
    assert (outcome.outcome, outcome.reason) == ("triggered", None)
    assert verifier.asked == 1
    [again, _] = r.handle(parse_events([registered(modelTags={"area": "diabetes"})]))
    assert (again.outcome, again.reason, again.ado_run_id) == ("duplicate", "already triggered", outcome.ado_run_id)
    assert len(stack.ado.run_requests) == 1


def test_a_long_failure_reason_is_whole_in_the_outcome_and_cut_to_4000_characters_in_the_ledger(
        stack: Stack, azurite: str, table_name: str) -> None:
    """A refusal can carry a long message from ADO: the job's output keeps the whole reason,
    the ledger row its first 4,000 characters."""
    from amlrelay.errors import AdoError

    class Refuses:
        def run_pipeline(self, request: Any) -> Any:
            raise AdoError("ADO rejected the request: " + "x" * 5000, status=400)

        def list_runs(self, project: str, pipeline_id: int) -> list[dict[str, Any]]:
            return []

        def get_run(self, project: str, pipeline_id: int, run_id: int) -> dict[str, Any]:
            raise AssertionError("no run to read")

    r = relay(stack, **ledger_env(azurite, table_name))
    r.trigger = Refuses()
    [outcome, _] = r.handle(parse_events([registered(modelTags={"area": "diabetes"})]))
    assert outcome.outcome == "failed"
    assert outcome.reason == "ADO rejected the request: " + "x" * 5000
    assert r.ledger is not None
    [record] = r.ledger.recent()
    assert record.reason == outcome.reason[:4000]


def test_a_route_already_triggered_stays_a_duplicate_when_aml_cannot_confirm_the_others(stack: Stack, azurite: str,
                                                                                       table_name: str) -> None:
    """A redelivery after one route triggered and another failed: the ledger answers the first (its run, no
    AML read), and AML, asked once about the event for the other, cannot answer: that one fails alone."""
    from amlrelay.verify import Refusal

    class Unreachable:
        def __init__(self) -> None:
            self.asked = 0

        def check(self, event: Any, fields: Any = ()) -> Refusal:
            self.asked += 1
            return Refusal("failed", "AML could not be asked (HTTP 503)")

    r = relay(stack, **ledger_env(azurite, table_name))
    raw = registered(modelTags={"area": "diabetes"})
    [done, _] = r.handle(parse_events([raw]))
    r.verifier = aml = Unreachable()
    [again, refused] = r.handle(parse_events([raw]))
    assert (again.outcome, again.route, again.reason) == ("duplicate", "Deploy", "already triggered")
    assert (again.ado_run_id, again.ado_run_url) == (done.ado_run_id, done.ado_run_url)
    assert (refused.outcome, refused.route, refused.reason) == ("failed", None, "AML could not be asked (HTTP 503)")
    assert aml.asked == 1
    assert len(stack.ado.run_requests) == 1
