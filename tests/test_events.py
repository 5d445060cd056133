"""Event in: every official sample parses in both schemas; malformed input is rejected with a reason."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from amlrelay.errors import InvalidEventError
from amlrelay.events import (
    CLOUD_EVENT_SCHEMA,
    EVENT_GRID_SCHEMA,
    MAX_BODY_BYTES,
    Invalid,
    Skipped,
    load_body,
    parse_events,
)
from amlrelay.models import AmlEvent, DatasetDriftData, ModelDeployedData, ModelRegisteredData, RunEventData
from tests.conftest import SAMPLE_WORKSPACE, SCHEMAS, all_samples, sample

EXPECTED = {
    "run_completed": ("RunCompleted", RunEventData, "AutoML_ad912b2d-6467-4f32-a616-dbe4af6dd8fc_5"),
    "run_status_changed": ("RunStatusChanged", RunEventData, "AutoML_ad912b2d-6467-4f32-a616-dbe4af6dd8fc_5"),
    "model_registered": ("ModelRegistered", ModelRegisteredData, None),
    "model_deployed": ("ModelDeployed", ModelDeployedData, None),
    "dataset_drift_detected": ("DatasetDriftDetected", DatasetDriftData, None),
}


def only(payload: Any) -> Any:
    items = parse_events(payload)
    assert len(items) == 1
    return items[0]


@pytest.mark.parametrize(("schema", "name"), all_samples())
def test_every_official_sample_parses_to_its_typed_model(schema: str, name: str) -> None:
    event = only([sample(schema, name)])
    short, model, run_id = EXPECTED[name]
    assert isinstance(event, AmlEvent)
    assert event.type == short
    assert isinstance(event.data, model)
    assert event.source == SAMPLE_WORKSPACE
    assert (event.id, event.subject) == (sample(schema, name)["id"], sample(schema, name)["subject"])
    raw_time = sample(schema, name)["eventTime" if schema == "event-grid-schema" else "time"]
    assert event.time is not None
    assert event.fields()["eventTime"][:19] == raw_time[:19]
    assert event.schema == (EVENT_GRID_SCHEMA if schema == "event-grid-schema" else CLOUD_EVENT_SCHEMA)
    if run_id:
        assert event.fields()["runId"] == run_id


def test_pascal_case_sample_keys_and_numeric_model_version_are_read() -> None:
    event = only(sample("event-grid-schema", "model_registered"))
    assert isinstance(event.data, ModelRegisteredData)
    assert event.data.model_name == "sklearn_regression_model"
    assert event.data.model_version == "20"  # a number in the sample, a string in the 2024 spec
    assert event.fields()["modelTags.area"] == "diabetes"


def test_model_deployed_splits_model_ids() -> None:
    event = only(sample("cloud-events-schema", "model_deployed"))
    assert isinstance(event.data, ModelDeployedData)
    assert event.data.model_ids == ("sklearn_regression_model:1", "sklearn_regression_model:2")


def test_run_completed_and_completed_status_change_share_an_outcome_key() -> None:
    completed = only(sample("event-grid-schema", "run_completed"))
    changed = sample("event-grid-schema", "run_status_changed")
    changed["data"]["runStatus"] = "COMPLETED"
    changed["id"] = "another-delivery-id"
    status_event = only(changed)
    assert completed.outcome_key() == status_event.outcome_key()
    failed = only(sample("event-grid-schema", "run_status_changed"))
    assert failed.outcome_key() != completed.outcome_key()


def test_run_type_null_is_accepted_but_missing_run_id_is_not() -> None:
    event = sample("event-grid-schema", "run_completed")
    assert isinstance(only(event), AmlEvent)  # runType is null in the sample
    del event["data"]["runId"]
    item = only(event)
    assert isinstance(item, Invalid)
    assert "data.runId is missing" in str(item.error)


def test_cloud_event_with_spec_version_in_camel_case_is_parsed() -> None:
    event = sample("cloud-events-schema", "run_completed")
    event["specVersion"] = event.pop("specversion")
    assert isinstance(only(event), AmlEvent)


@pytest.mark.parametrize(("key", "value"), [("eventType", "Microsoft.MachineLearningServices.RunCompleted"),
                                          ("topic", SAMPLE_WORKSPACE)])
def test_mixed_envelope_is_rejected_not_guessed(key: str, value: str) -> None:
    """A CloudEvent carrying an Event Grid ``topic`` could claim two workspaces: neither is believed."""
    event = sample("cloud-events-schema", "run_completed")
    event[key] = value
    item = only(event)
    assert isinstance(item, Invalid)
    assert item.error.message == ("The event mixes CloudEvents fields (specversion) with Event Grid schema fields "
                                  "(eventType/topic).")
    assert item.error.hint == "Send Event Grid schema or CloudEvents 1.0 events from an Azure ML system topic."


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda e: e.pop("topic"), "no topic/source"),
        (lambda e: e.update(eventTime="not-a-time"), "could not be parsed"),
        (lambda e: e.update(data="a string"), "data must be a JSON object"),
        (lambda e: e["data"].update(runTags=["a"]), "runTags must be an object"),
        (lambda e: e["data"].update(runId={"nested": 1}), "runId must be a string"),
        (lambda e: e["data"].update(runId="x" * 5000), "longer than"),
        (lambda e: e.pop("eventType"), "neither an Event Grid event"),
    ],
)
def test_malformed_event_grid_events_are_rejected_with_the_field_named(mutate: Any, message: str) -> None:
    event = copy.deepcopy(sample("event-grid-schema", "run_completed"))
    mutate(event)
    item = only([event])
    assert isinstance(item, Invalid)
    assert message in str(item.error)


def test_unknown_and_foreign_event_types_are_skipped_with_a_reason() -> None:
    unknown = sample("event-grid-schema", "run_completed")
    unknown["eventType"] = "Microsoft.MachineLearningServices.SomethingNew"
    storage = {**sample("event-grid-schema", "run_completed"), "eventType": "Microsoft.Storage.BlobCreated"}
    items = parse_events([unknown, storage])
    assert all(isinstance(i, Skipped) for i in items)
    assert "unknown AML event type" in items[0].reason  # type: ignore[union-attr]
    assert "not an Azure Machine Learning" in items[1].reason  # type: ignore[union-attr]


def test_subscription_validation_event_is_skipped() -> None:
    validation = {
        "id": "2d1781af-3a4c-4d7c-bd0c-e34b19da4e66",
        "topic": "/subscriptions/x/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/ws",
        "subject": "",
        "data": {"validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6",
                 "validationUrl": "https://rp-eastus2.eventgrid.azure.net/eventsubscriptions/x/validate?id=y"},
        "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
        "eventTime": "2018-01-25T22:12:19.4556811Z",
        "metadataVersion": "1",
        "dataVersion": "1",
    }
    item = only([validation])
    assert isinstance(item, Skipped)
    assert "handshake" in item.reason


def test_one_bad_event_does_not_hide_its_neighbours() -> None:
    items = parse_events([sample("event-grid-schema", "model_registered"), 42, {"foo": "bar"},
                          sample("cloud-events-schema", "run_completed")])
    assert [type(i).__name__ for i in items] == ["AmlEvent", "Invalid", "Invalid", "AmlEvent"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("not json", "not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        (json.dumps(["x" * (600 * 1024)]), "at most 524288"),
    ],
)
def test_load_body_refuses_what_automation_would_never_deliver(body: str, message: str) -> None:
    with pytest.raises(InvalidEventError, match=message) as caught:
        load_body(body)
    assert caught.value.hint == (
        "Lower the subscription's maxEventsPerBatch / preferredBatchSizeInKilobytes." if "at most" in message
        else "Send Event Grid schema or CloudEvents 1.0 events from an Azure ML system topic.")


def test_load_body_refusals_are_exact() -> None:
    with pytest.raises(InvalidEventError) as caught:
        load_body("[" * 100_000 + "]" * 100_000)
    assert caught.value.message == "The request body is nested too deeply to be an event."
    with pytest.raises(InvalidEventError) as caught:
        load_body("not json")
    assert caught.value.message == "The request body is not valid JSON (Expecting value: line 1 column 1 (char 0))."


def test_a_body_of_exactly_the_limit_is_read() -> None:
    body = json.dumps(["x" * (MAX_BODY_BYTES - len('[""]'))], separators=(",", ":"))
    assert len(body) == MAX_BODY_BYTES
    assert load_body(body) == ["x" * (MAX_BODY_BYTES - len('[""]'))]


def test_a_json_string_is_not_an_event_list() -> None:
    with pytest.raises(InvalidEventError, match="got a string") as caught:
        parse_events("hello")
    assert caught.value.hint == HINT


@pytest.mark.parametrize(("schema", "field"), [
    ("event-grid-schema", "id"), ("event-grid-schema", "subject"), ("event-grid-schema", "topic"),
    ("event-grid-schema", "eventType"), ("cloud-events-schema", "id"), ("cloud-events-schema", "subject"),
    ("cloud-events-schema", "source"), ("cloud-events-schema", "type")])
def test_envelope_attributes_must_be_strings(schema: str, field: str) -> None:
    event = sample(schema, "model_registered")
    event[field] = {"$ne": None}
    item = only([event])
    assert isinstance(item, Invalid)
    what = "Event Grid event" if schema == "event-grid-schema" else "CloudEvent"
    assert item.error.message == f"{what}: {field} must be a string."
    assert item.error.hint == "Send Event Grid schema or CloudEvents 1.0 events from an Azure ML system topic."


NOT_UTF8_HINT = "Send the events as UTF-8 JSON; if this job was started by hand, retype the parameters."


def test_a_lone_surrogate_in_the_text_is_named_as_such_with_what_to_do() -> None:
    """A hand-typed parameter can carry a lone surrogate (no byte behind it): the refusal says so, not a crash."""
    with pytest.raises(InvalidEventError) as caught:
        load_body('["a\ud800"]')
    assert caught.value.message == ("The request body is not UTF-8 (a lone surrogate at position 3): Event Grid "
                                    "always sends UTF-8 JSON, so this did not come from it.")
    assert caught.value.hint == NOT_UTF8_HINT
    with pytest.raises(InvalidEventError) as caught:
        load_body(b"[\xff]")
    assert caught.value.message.startswith("The request body is not UTF-8 (byte 0xff at position 1): ")
    assert caught.value.hint == NOT_UTF8_HINT


def test_an_envelope_the_sdk_cannot_read_is_refused_with_the_sdks_first_words_only() -> None:
    """The SDK's reason is shown, cut to 200 characters so a hostile value cannot flood the job's output."""
    event = sample("event-grid-schema", "run_completed")
    event["eventTime"] = "nope"
    item = only([event])
    assert isinstance(item, Invalid)
    prefix = "Event Grid event could not be parsed: "
    assert item.error.message.startswith(prefix)
    assert "Invalid datetime string: NOPE" in item.error.message
    assert len(item.error.message) == len(prefix) + 200 + len(".")
    assert item.error.hint == "Send Event Grid schema or CloudEvents 1.0 events from an Azure ML system topic."


def test_an_sdk_error_without_text_is_named_by_its_kind_and_only_its_first_line_is_shown() -> None:
    from amlrelay.events import _short

    assert _short(ValueError()) == "ValueError"
    assert _short(ValueError("first line\nsecond line")) == "first line"


VALIDATION_WHAT = ("Event Grid subscription validation (the handshake Automation webhooks normally answer "
                   "themselves)")


def validation_event(data: Any) -> dict[str, Any]:
    return {"id": "v1", "topic": SAMPLE_WORKSPACE, "subject": "", "data": data,
            "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent", "eventTime": "2026-12-01T10:00:00Z",
            "metadataVersion": "1", "dataVersion": "1"}


def test_the_validation_handshake_tells_the_operator_how_to_validate_by_hand() -> None:
    url = "https://rp-eastus2.eventgrid.azure.net/eventsubscriptions/x/validate?id=y"
    item = only([validation_event({"validationCode": "c0de", "validationUrl": url})])
    assert isinstance(item, Skipped)
    assert (item.id, item.type, item.subject) == ("v1", "Microsoft.EventGrid.SubscriptionValidationEvent", "")
    assert item.reason == (f"{VALIDATION_WHAT}. If the subscription stays 'AwaitingManualAction', validate it by "
                           f"hand within 5 minutes of the event: open {url} (validation code c0de) with an HTTP GET.")


@pytest.mark.parametrize("code", [None, "", 5])
def test_the_validation_code_is_shown_only_when_the_event_carries_one(code: Any) -> None:
    url = "https://rp-eastus2.eventgrid.azure.net/eventsubscriptions/x/validate?id=y"
    item = only([validation_event({"validationCode": code, "validationUrl": url})])
    assert isinstance(item, Skipped)
    assert item.reason.endswith(f"open {url} with an HTTP GET.")
    assert "validation code" not in item.reason


def test_a_hostile_validation_url_and_code_are_cut_short() -> None:
    url = "https://rp-eastus2.eventgrid.azure.net/" + "u" * 3000
    item = only([validation_event({"validationCode": "c" * 500, "validationUrl": url})])
    assert isinstance(item, Skipped)
    assert f"open {url[:2000]} (validation code {'c' * 100}) with an HTTP GET." in item.reason


@pytest.mark.parametrize("data", [["https://x"], "https://rp-eastus2.eventgrid.azure.net/validate"])
def test_a_validation_event_whose_data_is_not_an_object_cannot_be_validated_by_hand(data: Any) -> None:
    item = only([validation_event(data)])
    assert isinstance(item, Skipped)
    assert item.reason == (f"{VALIDATION_WHAT}. The event carries no https validationUrl, so it cannot be "
                           "validated by hand.")


def test_a_hand_started_event_is_built_like_a_delivered_one() -> None:
    """Portal parameters become an event with no subject, the canonical type in any spelling, the current UTC
    time, and an id of its own, so routes, templates and the ledger treat it like a delivery."""
    from datetime import datetime, timedelta, timezone

    from amlrelay.events import manual_event

    before = datetime.now(timezone.utc)
    event = manual_event("modelregistered", SAMPLE_WORKSPACE, {"modelName": "churn", "modelVersion": "7"})
    other = manual_event("ModelRegistered", SAMPLE_WORKSPACE, {"modelName": "churn", "modelVersion": "7"})
    assert (event.type, event.source, event.subject, event.schema) == ("ModelRegistered", SAMPLE_WORKSPACE, "",
                                                                       "Manual")
    assert event.fields()["subject"] == ""
    assert isinstance(event.data, ModelRegisteredData)
    assert (event.data.model_name, event.data.model_version) == ("churn", "7")
    assert event.id.startswith("manual-")
    assert event.id != other.id
    assert event.time is not None
    assert event.time.utcoffset() == timedelta(0)
    assert before <= event.time <= datetime.now(timezone.utc)
    assert event.outcome_key() == other.outcome_key()  # a second hand start is the same outcome


def test_a_hand_started_event_of_an_unknown_type_lists_the_known_ones() -> None:
    from amlrelay.events import manual_event

    with pytest.raises(InvalidEventError) as caught:
        manual_event("ModelCreated", SAMPLE_WORKSPACE, {})
    assert caught.value.message == "Unknown event type 'ModelCreated'."
    assert caught.value.hint == ("Use one of RunCompleted, RunStatusChanged, ModelRegistered, ModelDeployed, "
                                 "DatasetDriftDetected.")


@pytest.mark.parametrize("event_type", ["Microsoft.EventGrid.SubscriptionDeletedEvent",
                                        "microsoft.eventgrid.subscriptiondeletedevent"])
def test_a_subscription_lifecycle_event_is_skipped_as_such(event_type: str) -> None:
    item = only([{**validation_event({}), "eventType": event_type}])
    assert isinstance(item, Skipped)
    assert (item.id, item.type, item.subject) == ("v1", event_type, "")
    assert item.reason == "Event Grid subscription lifecycle event: nothing to relay."


def test_a_foreign_or_unknown_event_is_skipped_with_its_id_type_and_subject() -> None:
    storage = {**sample("event-grid-schema", "run_completed"), "eventType": "Microsoft.Storage.BlobCreated",
               "id": "b1", "subject": "/blobServices/default/containers/c"}
    unknown = {**storage, "eventType": "Microsoft.MachineLearningServices.SomethingNew", "id": "u1"}
    skipped = parse_events([storage, unknown])
    assert skipped == [
        Skipped("b1", "Microsoft.Storage.BlobCreated", "/blobServices/default/containers/c",
                "not an Azure Machine Learning event type"),
        Skipped("u1", "Microsoft.MachineLearningServices.SomethingNew", "/blobServices/default/containers/c",
                "unknown AML event type (amlrelay knows RunCompleted, RunStatusChanged, ModelRegistered, "
                "ModelDeployed, DatasetDriftDetected)")]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_an_aml_event_without_its_workspace_is_rejected_with_what_to_send(schema: str) -> None:
    event = sample(schema, "model_registered")
    event.pop("topic" if schema == "event-grid-schema" else "source")
    item = only([event])
    assert isinstance(item, Invalid)
    if schema == "event-grid-schema":  # CloudEvents require a source: its absence is named before the type
        assert item.error.message == "ModelRegistered event has no topic/source, so its workspace is unknown."
    assert item.error.hint == "Send Event Grid schema or CloudEvents 1.0 events from an Azure ML system topic."


HINT = "Send Event Grid schema or CloudEvents 1.0 events from an Azure ML system topic."


@pytest.mark.parametrize("key", ["specversion", "specVersion"])
def test_another_cloudevents_version_is_refused_naming_it(key: str) -> None:
    event = sample("cloud-events-schema", "model_registered")
    event.pop("specversion")
    event[key] = "0.3"
    item = only([event])
    assert isinstance(item, Invalid)
    assert item.error.message == "CloudEvents specversion '0.3' is not supported (only 1.0)."
    assert item.error.hint == HINT


def test_a_cloud_event_without_id_or_type_is_refused_naming_what_is_missing() -> None:
    event = {**sample("cloud-events-schema", "model_registered"), "id": ""}
    del event["type"]
    item = only([event])
    assert isinstance(item, Invalid)
    assert item.error.message == "CloudEvent is missing id, type."
    assert item.error.hint == HINT


def test_a_cloud_event_the_sdk_cannot_read_is_refused_with_its_reason() -> None:
    item = only([{**sample("cloud-events-schema", "model_registered"), "time": "nope"}])
    assert isinstance(item, Invalid)
    assert item.error.message == "CloudEvent could not be parsed: string index out of range."
    assert item.error.hint == HINT


def test_a_cloud_event_without_data_names_the_null() -> None:
    event = sample("cloud-events-schema", "model_registered")
    event.pop("data")
    item = only([event])
    assert isinstance(item, Invalid)
    assert item.error.message == "ModelRegistered event: data must be a JSON object, got null."


def test_a_cloud_event_with_binary_data_is_refused_as_such() -> None:
    """The SDK decodes ``data_base64`` into bytes; the refusal still says what is wrong (not 'not JSON')."""
    event = sample("cloud-events-schema", "model_registered")
    event.pop("data")
    event["data_base64"] = "e30="  # {} in base64
    item = only([event])
    assert isinstance(item, Invalid)
    assert item.error.message == "CloudEvent carries data_base64; AML events carry JSON data."
    assert item.error.hint == HINT


def test_a_cloud_event_without_a_subject_has_an_empty_one() -> None:
    """``subject`` is optional in CloudEvents; a route filtering on it sees an empty value, never 'None'."""
    event = sample("cloud-events-schema", "model_registered")
    event.pop("subject", None)
    item = only([event])
    assert isinstance(item, AmlEvent)
    assert item.subject == ""
    assert item.fields()["subject"] == ""


def test_an_object_of_neither_schema_is_rejected_saying_what_it_lacks() -> None:
    item = only([{"id": "x1", "subject": "s"}])
    assert isinstance(item, Invalid)
    assert item.error.message == ("The object is neither an Event Grid event (no eventType) nor a CloudEvent (no "
                                  "specversion).")
    assert item.error.hint == HINT


def test_a_rejected_event_keeps_its_id_type_and_subject_cut_to_200_characters() -> None:
    """The job output names what was rejected, so the operator can find it, without echoing a flood."""
    event = {**sample("event-grid-schema", "run_completed"), "id": "i" * 300, "subject": "s" * 300}
    event["data"] = {**event["data"], "runId": 5}
    item = only([event])
    assert isinstance(item, Invalid)
    assert (item.id, item.type, item.subject) == ("i" * 200, "Microsoft.MachineLearningServices.RunCompleted",
                                                  "s" * 200)
    cloud = {**sample("cloud-events-schema", "run_completed"), "id": 7, "subject": None}
    item = only([cloud])
    assert isinstance(item, Invalid)
    assert (item.id, item.type, item.subject) == ("", "Microsoft.MachineLearningServices.RunCompleted", "")


def test_a_lone_surrogate_anywhere_in_the_event_rejects_it_naming_the_problem() -> None:
    event = {**sample("event-grid-schema", "model_registered"), "subject": "models/\udc80"}
    item = only([event])
    assert isinstance(item, Invalid)
    assert item.error.message == ("The event holds text that is not valid Unicode (a lone surrogate such as "
                                  "\\udc80).")
    assert item.error.hint == HINT
    accented = {**sample("event-grid-schema", "model_registered"), "subject": "modèles/é"}
    assert isinstance(only([accented]), AmlEvent)  # valid non-ASCII text is fine


def test_a_value_that_is_not_json_is_left_to_the_parser() -> None:
    """Called with Python values (not decoded JSON), the Unicode check does not pretend it found a surrogate."""
    event = sample("event-grid-schema", "model_registered")
    event["data"] = {**event["data"], "ModelTags": {"when": frozenset({1})}}
    item = only([event])
    assert isinstance(item, Invalid)
    assert item.error.message.startswith("Event Grid event could not be parsed: ")


@pytest.mark.parametrize(("char", "detail"), [
    (b"\x80".decode("utf-8", "surrogateescape"), "byte 0x80 at position 1"),
    (b"\xff".decode("utf-8", "surrogateescape"), "byte 0xff at position 1"),
    (chr(0xDC7F), "a lone surrogate at position 1"), (chr(0xDD00), "a lone surrogate at position 1"),
])
def test_a_byte_that_is_not_utf8_is_named_as_the_byte_it_was(char: str, detail: str) -> None:
    """Bytes that are not UTF-8 reach argv as U+DC80..U+DCFF (surrogateescape): the operator sees the byte."""
    with pytest.raises(InvalidEventError) as caught:
        load_body(f"[{char}]")
    assert caught.value.message.startswith(f"The request body is not UTF-8 ({detail}): ")


def test_an_item_that_is_not_an_object_is_rejected_in_its_place_naming_its_kind() -> None:
    items = parse_events([sample("event-grid-schema", "model_registered"), 42, "x"])
    assert isinstance(items[1], Invalid)
    assert (items[1].id, items[1].type, items[1].subject) == ("", "", "")
    assert items[1].error.message == "An event must be a JSON object, got the number 42."
    assert items[1].error.hint == HINT
    assert isinstance(items[2], Invalid)
    assert (items[2].id, items[2].type, items[2].subject) == ("", "", "")
    assert items[2].error.message == "An event must be a JSON object, got a string."


def test_an_event_grid_event_missing_its_attributes_names_them_all() -> None:
    """An empty id counts as missing; an empty subject does not (Event Grid sends one), an absent one does."""
    event = {**sample("event-grid-schema", "model_registered"), "id": ""}
    del event["subject"]
    del event["eventTime"]
    item = only([event])
    assert isinstance(item, Invalid)
    assert item.error.message == "Event Grid event is missing id, eventTime, subject."
    assert item.error.hint == HINT
    assert isinstance(only([{**sample("event-grid-schema", "model_registered"), "subject": ""}]), AmlEvent)


def test_every_envelope_attribute_that_is_not_a_string_is_named_at_once() -> None:
    event = {**sample("event-grid-schema", "model_registered"), "id": 1, "subject": ["s"]}
    item = only([event])
    assert isinstance(item, Invalid)
    assert item.error.message == "Event Grid event: id, subject must be a string."
