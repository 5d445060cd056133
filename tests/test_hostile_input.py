"""Hostile input, property-tested: whatever arrives, the parser answers with an outcome or a clear
InvalidEventError — never another exception, never an event that was not shaped like an AML event."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amlrelay.errors import InvalidEventError
from amlrelay.events import Invalid, Skipped, parse_events
from amlrelay.models import AmlEvent
from amlrelay.webhook import parse_webhook_argv
from tests.conftest import all_samples, sample

SAMPLES = [sample(schema, name) for schema, name in all_samples()]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=15), children, max_size=5),
    max_leaves=30,
)
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome_of(payload: Any) -> list[object]:
    try:
        return list(parse_events(payload))
    except InvalidEventError:
        return []


@FAST
@given(json_values)
def test_any_json_value_yields_outcomes_or_a_clear_error(payload: Any) -> None:
    for item in outcome_of(payload):
        assert isinstance(item, (AmlEvent, Skipped, Invalid))


@FAST
@given(st.sampled_from(SAMPLES), st.data())
def test_mutated_samples_are_parsed_or_rejected_never_crash(event: dict[str, Any], data: st.DataObject) -> None:
    mutated = json.loads(json.dumps(event))
    target = mutated if data.draw(st.booleans()) else mutated["data"]
    key = data.draw(st.sampled_from(sorted(target)) | st.text(max_size=10))
    if data.draw(st.booleans()):
        target[key] = data.draw(json_values)
    else:
        target.pop(key, None)
    for item in outcome_of([mutated]):
        assert isinstance(item, (AmlEvent, Skipped, Invalid))
        if isinstance(item, AmlEvent):  # anything accepted still has what routing relies on
            assert item.source
            assert item.data.outcome_key()


@FAST
@given(st.sampled_from(SAMPLES), st.sampled_from(["topic", "source", "eventType", "type", "specversion"]),
       st.text(max_size=30))
def test_envelope_confusion_is_never_accepted_as_the_other_schema(event: dict[str, Any], field: str,
                                                                  value: str) -> None:
    confused = {**event, field: value}
    mixed = ("specversion" in confused) and ("eventType" in confused or "topic" in confused)
    for item in outcome_of([confused]):
        if mixed:
            assert isinstance(item, Invalid)


@FAST
@given(st.lists(st.text(max_size=40), max_size=8))
def test_random_argv_gets_a_clear_error_or_a_body(argv: list[str]) -> None:
    try:
        parse_webhook_argv(argv)
    except InvalidEventError as exc:
        message = exc.message
    else:
        message = "parsed"
    assert message


@FAST
@given(st.sampled_from(SAMPLES), st.integers(min_value=0, max_value=400), st.text(max_size=3))
def test_truncated_or_corrupted_webhook_data_is_rejected_cleanly(event: dict[str, Any], cut: int, junk: str) -> None:
    text = "{WebhookName:w,RequestBody:" + json.dumps([event]) + ",RequestHeader:{}}"
    corrupted = text[: len(text) - cut] + junk
    try:
        body = parse_webhook_argv(corrupted.split())
    except InvalidEventError:
        return
    for item in outcome_of(body.body):
        assert isinstance(item, (AmlEvent, Skipped, Invalid))


def test_huge_strings_and_deep_nesting_are_refused() -> None:
    event = json.loads(json.dumps(SAMPLES[0]))
    event["data"]["runId"] = "r" * 100_000
    [item] = parse_events([event])
    assert isinstance(item, Invalid)
    nested: Any = "x"
    for _ in range(50):
        nested = {"n": nested}
    event = json.loads(json.dumps(SAMPLES[0]))
    event["data"]["runTags"] = nested
    [item] = parse_events([event])
    assert isinstance(item, AmlEvent)  # nested tag values are ignored for routing, not a crash


def test_the_secret_guard_finds_a_secret_in_any_stream() -> None:
    from tests import secret_guard

    outputs = [("runbook stdout", "ok"), ("test log", "Authorization: Bearer abc.def.SIGNATURE")]
    assert secret_guard.leaks(outputs, {"token": "abc.def.SIGNATURE"}) == ["token in test log"]
    assert secret_guard.leaks(outputs, {"token": "other"}) == []
