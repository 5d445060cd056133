"""WEBHOOKDATA in every shape Automation hands a Python runbook recovers the exact Event Grid body."""

from __future__ import annotations

import json
from typing import Any

import pytest

from amlrelay.errors import InvalidEventError
from amlrelay.webhook import looks_like_webhook, parse_webhook_argv
from tests.conftest import all_samples, sample


def hashtable_form(body: str, name: str = "amlrelay") -> str:
    """The PowerShell-hashtable serialisation with unquoted keys seen in Microsoft's Python samples."""
    headers = "{Connection:Keep-Alive,Aeg-Event-Type:Notification,Aeg-Subscription-Name:AMLRELAY-RUNS}"
    return f"{{WebhookName:{name},RequestBody:{body},RequestHeader:{headers}}}"


def escaped(body: str) -> str:
    """RequestBody as an escaped JSON string's content, with CRLF line breaks as Event Grid pretty-prints."""
    return json.dumps(body.replace("\n", "\r\n"))[1:-1]


def argv_forms(body: list[Any]) -> dict[str, list[str]]:
    compact = json.dumps(body)
    pretty = json.dumps(body, indent=2)
    return {
        "json-one-item": [json.dumps({"WebhookName": "w", "RequestBody": compact, "RequestHeader": {}})],
        "json-split": json.dumps({"WebhookName": "w", "RequestBody": pretty, "RequestHeader": {"a": "b"}}).split(),
        "hashtable-one-item": [hashtable_form(compact)],
        "hashtable-split": hashtable_form(pretty).split(),
        "hashtable-escaped": hashtable_form(escaped(pretty)).split(),
        "hashtable-string-literal": hashtable_form(json.dumps(compact)).split(),
        "raw-body": pretty.split(),
    }


@pytest.mark.parametrize(("schema", "name"), all_samples())
@pytest.mark.parametrize("form", list(argv_forms([{}]).keys()))
def test_every_argv_form_yields_the_original_body(schema: str, name: str, form: str) -> None:
    body = [sample(schema, name)]
    argv = argv_forms(body)[form]
    assert looks_like_webhook(argv)
    assert parse_webhook_argv(argv).body == body


def test_webhook_name_is_recovered_from_the_hashtable_form() -> None:
    argv = hashtable_form(json.dumps([sample("event-grid-schema", "run_completed")]), name="relay-prod").split()
    assert parse_webhook_argv(argv).webhook_name == "relay-prod"


def test_escaped_quotes_inside_values_survive_one_level_of_unescaping() -> None:
    event = sample("event-grid-schema", "run_completed")  # runProperties.pipeline_spec holds escaped JSON
    argv = hashtable_form(escaped(json.dumps([event], indent=1))).split()
    recovered = parse_webhook_argv(argv).body
    assert recovered[0]["data"]["runProperties"]["pipeline_spec"] == event["data"]["runProperties"]["pipeline_spec"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "without WEBHOOKDATA"),
        (["{WebhookName:x,RequestHeader:{}}"], "no RequestBody"),
        (["{WebhookName:x,RequestBody:[{\"id\":1}"], "unbalanced"),
        (["{WebhookName:x,RequestBody:[{\"id\":}],RequestHeader:{}}"], "not valid JSON"),
        (["{WebhookName:x,RequestBody:\"unterminated"], "malformed string"),
        ([json.dumps({"RequestBody": None})], "empty or not JSON"),
        (["{\"a\":" * 5000 + "1" + "}" * 5000], "nested too deeply"),
        (["[" + "0," * 600_000 + "0]"], "larger than"),
    ],
)
def test_bad_webhook_data_gets_a_clear_error(argv: list[str], message: str) -> None:
    with pytest.raises(InvalidEventError, match=message):
        parse_webhook_argv(argv)


def test_flags_are_not_mistaken_for_webhook_data() -> None:
    assert not looks_like_webhook(["--model-name", "churn"])
    assert not looks_like_webhook(["model_name=churn"])


@pytest.mark.parametrize("form", ["json-one-item", "raw-body", "hashtable-one-item", "hashtable-escaped"])
def test_bodies_over_the_webhook_limit_are_refused_in_every_form(form: str) -> None:
    big = [sample("event-grid-schema", "model_registered") for _ in range(1000)]  # ~570 KB
    argv = argv_forms(big)[form]
    if form == "json-one-item":  # RequestBody as an already-decoded array, not a string
        argv = [json.dumps({"WebhookName": "w", "RequestBody": big})]
    with pytest.raises(InvalidEventError, match=r"at most 524288|larger than"):
        parse_webhook_argv(argv)
