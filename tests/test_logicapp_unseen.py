"""No event is dropped unseen, and no secret shows in run history, now that one ``Event`` Compose computes
every route's match and request body per event.

* An event whose time the runbook cannot parse is rejected by both handlers (200, nothing recorded), even
  when a route templates ``{{ eventTime }}`` (whose ``formatDateTime`` throws on it); a time of the right
  shape that is still no date fails the delivery (500: Event Grid retries, then dead-letters it) instead
  of a 200 with nothing started or recorded.
* A route's ``isSecret`` variable is sent to ADO but never appears in what run history shows.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from amlrelay.logicapp import generate
from amlrelay.logicapp._run import HIDDEN, Workflow
from amlrelay.routes import load_routes
from tests.conftest import ROUTES_FILE, sample
from tests.logicapp_stack import Pair, pair
from tests.test_logicapp_equivalence import body, foreign, same

SECRET = "s3cret-route-value-7a6b5c"


def routes_with(tmp_path: Path, **variables: Any) -> Path:
    """routes.json with ``variables`` added to every route (through the defaults)."""
    spec = json.loads(ROUTES_FILE.read_text(encoding="utf-8"))
    spec["defaults"]["variables"].update(variables)
    path = tmp_path / "routes.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


def open_pair(tmp_path: Path, azurite: str, table_name: str, monkeypatch: pytest.MonkeyPatch, *, pat: bool = False,
              **variables: Any) -> Iterator[Pair]:
    with pair(azurite, table_name, routes_path=routes_with(tmp_path, **variables), pat=pat) as p:
        for name, value in p.env.items():
            monkeypatch.setenv(name, value)
        yield p


@pytest.fixture
def timed(tmp_path: Path, azurite: str, table_name: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pair]:
    """Both handlers, every route sending the event's time."""
    yield from open_pair(tmp_path, azurite, table_name, monkeypatch, AML_EVENT_TIME="{{ eventTime }}")


def with_time(schema: str, time: str) -> dict[str, Any]:
    event = sample(schema, "run_completed")
    event["eventTime" if schema == "event-grid-schema" else "time"] = time
    return event


def test_a_valid_time_is_sent_by_both(timed: Pair) -> None:
    runbook, logicapp = timed.deliver(body(sample("event-grid-schema", "run_completed")))
    same(logicapp, runbook)
    [sent] = logicapp.requests
    assert sent["body"]["variables"]["AML_EVENT_TIME"]["value"].startswith("20")


@pytest.mark.parametrize(("schema", "time"), [
    ("event-grid-schema", "garbage"), ("event-grid-schema", "1/2/2024"), ("event-grid-schema", "2024-01-01"),
    ("event-grid-schema", "2024-01-01 10:00:00Z"), ("cloud-events-schema", "garbage"),
    ("cloud-events-schema", "2024-01-01"),
])
def test_a_time_the_runbook_cannot_parse_is_rejected_by_both(timed: Pair, schema: str, time: str) -> None:
    """The runbook rejects the event (200, nothing recorded); so does the workflow, as an invalid event,
    not through a failed action that left the event unseen."""
    runbook, logicapp = timed.deliver(body(with_time(schema, time)))
    same(logicapp, runbook)
    assert (logicapp.status, logicapp.requests, logicapp.rows) == (200, [], [])
    assert timed.last_run.failures == []


@pytest.mark.parametrize("schema", ["event-grid-schema", "cloud-events-schema"])
def test_a_time_that_is_no_date_fails_the_delivery_instead_of_dropping_it(timed: Pair, schema: str) -> None:
    """The documented difference: month 13 has the shape the workflow checks, so only ``formatDateTime``
    finds out, and the ``Event`` action fails. The runbook rejects the event; the workflow answers 500, so
    Event Grid retries it and finally dead-letters it (``amlrelay deadletter`` sees it). Never a 200 with
    nothing started or recorded."""
    runbook, logicapp = timed.deliver(body(with_time(schema, "2024-13-45T10:00:00Z")))
    assert (runbook.status, runbook.requests, runbook.rows) == (200, [], [])
    assert (logicapp.status, logicapp.requests, logicapp.rows) == (500, [], [])
    response = timed.last_run.response.body
    assert "could not be evaluated" in json.dumps(response)


def test_a_foreign_event_that_fails_the_event_action_is_still_rejected(timed: Pair) -> None:
    """Not from an allowed workspace: rejected by both (200), whatever its time does to ``Event``."""
    event = foreign()
    event["eventTime"] = "2024-13-45T10:00:00Z"
    runbook, logicapp = timed.deliver(body(event))
    same(logicapp, runbook)
    assert (logicapp.status, logicapp.requests) == (200, [])


def test_a_bad_event_beside_a_good_one_fails_the_delivery_but_starts_the_good_one(timed: Pair) -> None:
    good = sample("event-grid-schema", "model_registered")
    logicapp = timed.deliver_logicapp(body(with_time("event-grid-schema", "2024-13-45T10:00:00Z"), good))
    assert (logicapp.status, len(logicapp.requests), [r["state"] for r in logicapp.rows]) == (500, 1, ["triggered"])


def visible(run: Any) -> str:
    """Everything run history shows of a run, and what Event Grid is answered."""
    return json.dumps([run.history, run.failures, run.response.body], default=str)


@pytest.mark.parametrize("pat", [False, True], ids=["managed-identity", "pat"])
def test_a_secret_variable_is_sent_but_never_shown_in_run_history(tmp_path: Path, azurite: str, table_name: str,
                                                                  monkeypatch: pytest.MonkeyPatch, pat: bool) -> None:
    secrets = {"DEPLOY_KEY": {"value": SECRET, "isSecret": True},
               "DEPLOY_KEY_FOR_RUN": {"value": "{{ eventId }}-" + SECRET, "isSecret": True}}
    for both in open_pair(tmp_path, azurite, table_name, monkeypatch, pat=pat, **secrets):
        runbook, logicapp = both.deliver(body(sample("event-grid-schema", "model_registered")))
        same(logicapp, runbook)
        [sent] = logicapp.requests
        assert sent["body"]["variables"]["DEPLOY_KEY"] == {"value": SECRET, "isSecret": True}
        run = both.last_run
        assert SECRET not in visible(run)
        shown = {h["name"]: h for h in run.history}
        assert (shown["Event"]["outputs"], shown["Start"]["inputs"]) == (HIDDEN, HIDDEN)


def test_without_secrets_the_event_action_stays_readable(tmp_path: Path, azurite: str, table_name: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Diagnostics kept when there is nothing to hide: which routes took the event, and what was sent."""
    for both in open_pair(tmp_path, azurite, table_name, monkeypatch, AML_LABEL="not-a-secret"):
        both.deliver_logicapp(body(sample("event-grid-schema", "model_registered")))
        shown = {h["name"]: h for h in both.last_run.history}
        assert "not-a-secret" in json.dumps(shown["Event"]["outputs"])
        assert shown["Event"]["outputs"]["valid"] is True
        assert "not-a-secret" in json.dumps(shown["Start"]["inputs"])


def test_the_executor_refuses_secure_data_an_action_type_does_not_support() -> None:
    """SEC: a Compose has no "Secure Outputs" setting; Azure would refuse such a definition, so must we."""
    definition = generate(load_routes(ROUTES_FILE))
    loop = definition["actions"]["For_each_event"]["actions"]
    loop["Event"]["runtimeConfiguration"] = {"secureData": {"properties": ["outputs"]}}
    workflow = Workflow(definition, {"adoOrganizationUrl": "https://ado.invalid/contoso", "allowedWorkspaces": "x",
                                     "ledgerTableUrl": "https://table.invalid"}, lambda audience: "token")
    with pytest.raises(ValueError, match="Compose cannot secure outputs"):
        workflow.post(body(sample("event-grid-schema", "model_registered")))
