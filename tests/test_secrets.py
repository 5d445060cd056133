"""Secrets never leave: a secret route variable, the PAT and the Entra token are absent from dry-run
previews, outcome lines, failure reasons, ledger rows and logs (even at DEBUG, where the Azure SDKs and
urllib3 log requests), whatever happens to the request.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from amlrelay.events import parse_events
from amlrelay.record import Outcome
from amlrelay.routes import parse_routes
from amlrelay.runbook import build_relay, main
from amlrelay.settings import resolve
from tests import secret_guard
from tests.conftest import sample
from tests.servers.ado import PipelineDef
from tests.stack import PAT, Stack, local_stack

SECRET = "s3cret-route-value-0f9e8d"
ROUTES = {"version": 1, "routes": [{
    "name": "deploy", "events": ["ModelRegistered"],
    "pipeline": {"project": "mlops", "id": 50, "variables": {
        "AML_MODEL_NAME": "{{ modelName }}", "AML_MODEL_VERSION": "{{ modelVersion }}",
        "DEPLOY_KEY": {"value": SECRET, "isSecret": True},
        "DEPLOY_KEY_FOR_MODEL": {"value": "{{ modelName }}-" + SECRET, "isSecret": True}}}}]}
PIPELINE = PipelineDef("deploy", variables_settable_at_queue_time=frozenset(
    {"AML_MODEL_NAME", "AML_MODEL_VERSION", "DEPLOY_KEY", "DEPLOY_KEY_FOR_MODEL"}))


@pytest.fixture
def secret_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, azurite: str,
                 table_name: str) -> Iterator[tuple[Stack, dict[str, str]]]:
    secret_guard.register("secret route variable", SECRET)
    routes = tmp_path / "routes.json"
    routes.write_text(json.dumps(ROUTES), encoding="utf-8")
    with local_stack(routes, pat=True, pipelines={("mlops", 50): PIPELINE}) as stack:
        env = stack.env(AMLRELAY_LEDGER="true", AMLRELAY_LEDGER_CONNECTION_STRING=azurite,
                        AMLRELAY_LEDGER_TABLE=table_name, AMLRELAY_SETTLE_AFTER="0")
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        yield stack, env


def everything(outcomes: list[Outcome], rows: list[Any], logs: str) -> str:
    return "\n".join([*(o.to_json() for o in outcomes), *(o.reason or "" for o in outcomes),
                      *(json.dumps(vars(r), default=str) for r in rows), logs])


def assert_clean(text: str, stack: Stack) -> None:
    for name, value in {"secret variable": SECRET, "PAT": PAT, "token": stack.token}.items():
        assert value not in text, f"{name} leaked"


def test_no_secret_in_outcomes_reasons_ledger_rows_or_debug_logs(secret_stack: tuple[Stack, dict[str, str]],
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    stack, env = secret_stack
    caplog.set_level(logging.DEBUG)
    relay = build_relay(resolve({}, env=env), parse_routes(json.dumps(ROUTES)))
    assert relay.ledger is not None
    relay.ledger.ensure_table()
    events = []
    for version in ("1", "2", "3", "4"):
        event = sample("event-grid-schema", "model_registered")
        event["data"]["modelVersion"] = version
        events.append(event)
    outcomes = []
    outcomes += relay.handle(parse_events([events[0]]), raw=[events[0]])  # triggered
    stack.ado.fail(400)  # refused
    outcomes += relay.handle(parse_events([events[1]]), raw=[events[1]])
    stack.ado.accept_then_fail(500)  # ambiguous: the run is looked for among the pipeline's runs
    outcomes += relay.handle(parse_events([events[2]]), raw=[events[2]])
    stack.ado.fail(503, times=10)  # retried, then failed
    outcomes += relay.handle(parse_events([events[3]]), raw=[events[3]])
    assert [o.outcome for o in outcomes] == ["triggered", "failed", "triggered", "failed"], outcomes
    assert stack.ado.secret_value(stack.ado.runs[0]["id"], "DEPLOY_KEY") == SECRET  # it did reach ADO
    assert all("value" not in v for r in stack.ado.runs for k, v in r["variables"].items() if k.startswith("DEPLOY"))
    rows = relay.ledger.recent()
    assert len(rows) == 4
    assert_clean(everything(outcomes, rows, caplog.text), stack)


def test_the_dry_run_preview_masks_every_secret_variable(secret_stack: tuple[Stack, dict[str, str]],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    stack, _ = secret_stack
    lines: list[str] = []
    monkeypatch.setenv("AMLRELAY_DRY_RUN", "true")
    code = main(["trigger_ado_pipeline.py", json.dumps([sample("cloud-events-schema", "model_registered")])],
                out=lines.append)
    assert code == 0
    [preview] = [json.loads(line) for line in lines if line.startswith("{")]
    variables = preview["request"]["body"]["variables"]
    assert variables["DEPLOY_KEY"] == {"value": "***", "isSecret": True}
    assert variables["DEPLOY_KEY_FOR_MODEL"] == {"value": "***", "isSecret": True}
    assert variables["AML_MODEL_NAME"] == {"value": "sklearn_regression_model", "isSecret": False}
    assert_clean("\n".join(lines), stack)
    assert stack.ado.requests == []
