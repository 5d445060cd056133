"""WEBHOOKDATA edges: the exact refusals (what is wrong and what to do), the size limit at its boundary,
escapes undone exactly once, bracket matching that respects JSON strings, and the webhook's name."""

from __future__ import annotations

import json

import pytest

from amlrelay.errors import InvalidEventError
from amlrelay.events import MAX_BODY_BYTES
from amlrelay.webhook import _matching_end, _unescape, looks_like_webhook, parse_webhook_argv

HINT = ("Start the runbook from an Automation webhook subscribed to Event Grid, or by hand with parameters "
        "(see `--help`).")


@pytest.mark.parametrize(("argv", "message"), [
    ([" ", ""], "The runbook was started without WEBHOOKDATA or parameters."),
    (["{WebhookName:x,RequestHeader:{}}"],
     "The runbook arguments are neither JSON nor WEBHOOKDATA (no RequestBody found)."),
    (["{WebhookName:x,RequestBody:[{\"id\":1}"],
     "WEBHOOKDATA.RequestBody is not a complete JSON array or object (unbalanced brackets)."),
    (["{WebhookName:x,RequestBody:oops}"],
     "WEBHOOKDATA.RequestBody is not a complete JSON array or object (unbalanced brackets)."),
    (["{WebhookName:x,RequestBody:\"unterminated"], "WEBHOOKDATA.RequestBody is a malformed string."),
    ([json.dumps({"RequestBody": 5})], "WEBHOOKDATA.RequestBody is empty or not JSON."),
    (["{\"a\":" * 5000 + "1" + "}" * 5000], "The webhook data is nested too deeply."),
])
def test_refusals_say_what_is_wrong_and_what_to_do(argv: list[str], message: str) -> None:
    with pytest.raises(InvalidEventError) as caught:
        parse_webhook_argv(argv)
    assert caught.value.message == message
    assert caught.value.hint == HINT


def test_the_size_limit_is_exact_for_a_bare_body() -> None:
    filler = MAX_BODY_BYTES - len('["",0]')
    at_limit = json.dumps(["x" * filler, 0], separators=(",", ":"))
    assert len(at_limit) == MAX_BODY_BYTES
    assert parse_webhook_argv([at_limit]).body == ["x" * filler, 0]
    over = json.dumps(["x" * (filler + 1), 0], separators=(",", ":"))
    with pytest.raises(InvalidEventError) as caught:
        parse_webhook_argv([over])
    assert caught.value.message == (f"The request body is {MAX_BODY_BYTES + 1} bytes; Azure Automation webhooks "
                                    f"accept at most {MAX_BODY_BYTES}.")
    assert caught.value.hint == "Lower the subscription's maxEventsPerBatch / preferredBatchSizeInKilobytes."


def test_a_decoded_request_body_is_measured_compactly() -> None:
    body = ["x" * (MAX_BODY_BYTES - len('[""]'))]
    assert parse_webhook_argv([json.dumps({"RequestBody": body}, indent=4)]).body == body
    with pytest.raises(InvalidEventError, match="accept at most"):
        parse_webhook_argv([json.dumps({"RequestBody": [body[0] + "x"]})])


def test_argv_over_twice_the_limit_is_refused_before_parsing() -> None:
    with pytest.raises(InvalidEventError, match="no RequestBody found"):  # at the limit: parsed, then refused
        parse_webhook_argv(["x" * (2 * MAX_BODY_BYTES)])
    with pytest.raises(InvalidEventError) as caught:
        parse_webhook_argv(["x" * (2 * MAX_BODY_BYTES + 1)])
    assert caught.value.message == (f"The webhook data is larger than the {MAX_BODY_BYTES}-byte limit of Azure "
                                    "Automation webhooks.")
    assert caught.value.hint == "Lower the subscription's preferredBatchSizeInKilobytes."


def test_the_webhook_name_comes_from_either_form_and_only_when_it_is_a_string() -> None:
    assert parse_webhook_argv([json.dumps({"webhookname": "w1", "requestbody": "[]"})]).webhook_name == "w1"
    assert parse_webhook_argv([json.dumps({"WebhookName": 5, "RequestBody": "[]"})]).webhook_name is None
    assert parse_webhook_argv(["{WebhookName:relay-2,RequestBody:[],RequestHeader:{}}"]).webhook_name == "relay-2"
    assert parse_webhook_argv(["{RequestBody:[],RequestHeader:{WebhookName:x}}"]).webhook_name is None
    # a body given as a string literal: the name is read all the same
    assert parse_webhook_argv(['{WebhookName:relay-3,RequestBody:"[]",RequestHeader:{}}']).webhook_name == "relay-3"
    assert parse_webhook_argv(['{RequestBody:"[]",RequestHeader:{WebhookName:x}}']).webhook_name is None
    # an empty name is empty: the name is read only up to the RequestBody key, not from it
    assert parse_webhook_argv(["{WebhookName: RequestBody:[],RequestHeader:{}}"]).webhook_name == ""
    assert parse_webhook_argv(["[]"]).webhook_name is None


def test_the_body_may_start_after_a_space_in_the_hashtable_form() -> None:
    """Automation splits WEBHOOKDATA on whitespace; a body in the next argv item follows the key after a space."""
    argv = ["{WebhookName:w,RequestBody:", '[{"a":1}],RequestHeader:{}}']
    assert parse_webhook_argv(argv).body == [{"a": 1}]


def test_argv_items_are_trimmed_and_joined_with_single_spaces() -> None:
    body = parse_webhook_argv(["  {WebhookName:w,RequestBody:[", '{"a":', '"b', 'c"}', "],RequestHeader:{}}  "]).body
    assert body == [{"a": "b c"}]


def test_escapes_are_undone_once() -> None:
    assert _unescape('\\"a\\\\\\"b\\" \\u00e9\\n\\r\\t\\b\\f\\/\\x') == '"a\\"b" é     /\\x'
    escaped = '{WebhookName:w,RequestBody:[{\\"k\\":\\"v \\\\\\"q\\\\\\"\\"}],RequestHeader:{}}'
    assert parse_webhook_argv([escaped]).body == [{"k": 'v "q"'}]
    # every hex digit of a \u escape counts (\u20ac is the euro sign), and a \u without four hex digits is kept
    assert _unescape("\\u20ac \\u12 \\uZZZZ") == "\u20ac \\u12 \\uZZZZ"


def test_an_escaped_body_is_recognised_by_its_first_quote_whatever_the_header_holds() -> None:
    """The body decides: a quoted header value (with an escaped quote in it) after an escaped body changes nothing."""
    argv = ['{WebhookName:w,RequestBody:[{\\"k\\":\\"v\\"}],RequestHeader:{User-Agent:"a \\"b\\""}}']
    assert parse_webhook_argv(argv).body == [{"k": "v"}]


def test_a_body_that_is_not_json_is_refused_as_such_and_one_cut_short_as_incomplete() -> None:
    """Only brackets open and close a body: a stray letter makes it invalid JSON, not unbalanced, and a body
    cut short stays incomplete whatever letters it holds."""
    with pytest.raises(InvalidEventError, match=r"^The request body is not valid JSON"):
        parse_webhook_argv(["{WebhookName:w,RequestBody:[XX],RequestHeader:{}}"])
    with pytest.raises(InvalidEventError) as caught:
        parse_webhook_argv(['{WebhookName:w,RequestBody:[{"k":1},X'])
    assert caught.value.message == ("WEBHOOKDATA.RequestBody is not a complete JSON array or object (unbalanced "
                                    "brackets).")


def test_brackets_inside_strings_do_not_count() -> None:
    assert _matching_end('[{"a":"]}"},"\\"]"] tail') == 18
    assert _matching_end("{}x") == 2
    assert _matching_end('["",1] tail') == 6  # an empty first string opens and closes
    assert _matching_end("[[]") is None
    assert _matching_end("") is None
    assert _matching_end("x[]") is None
    assert _matching_end("X[]") is None  # only a bracket opens a body, whatever the letter


@pytest.mark.parametrize(("argv", "webhook"), [
    (["{WebhookName:w}"], True), (["[1]"], True), (["  {"], True), (["x", "RequestBody:1"], True),
    (["--run-id", "r"], False), (["run_id=r"], False), (["run_id={x}"], False), ([], False), (["churn"], False),
    # a flag or a portal box is a manual start even when its value mentions RequestBody
    (["--route", "RequestBody"], False), (["note=RequestBody"], False),
    # an '=' inside the body (a URL's query) does not make WEBHOOKDATA a portal box
    (['{WebhookName:w,RequestBody:[{"url":"https://contoso.example/v?id=1"}]}'], True),
    (["", "[1]"], True),  # an empty first item is only whitespace
    (["x" * 4085 + "RequestBody"], True), (["x" * 4086 + "RequestBody"], False),  # looked for in the first 4 KiB
])
def test_what_looks_like_webhook_data(argv: list[str], webhook: bool) -> None:
    assert looks_like_webhook(argv) is webhook


def test_an_escaped_single_event_object_is_unescaped_too() -> None:
    """A single CloudEvents event is an object, not an array: its first escaped quote sits right after ``{``."""
    assert parse_webhook_argv(['{WebhookName:w,RequestBody:{\\"k\\":\\"v\\"},RequestHeader:{}}']).body == {"k": "v"}


def test_a_plain_body_keeps_its_own_escapes() -> None:
    """Only an escaped body is unescaped: a plain one's ``\\\\`` and ``\\n`` are JSON escapes of its own values."""
    body = parse_webhook_argv(['{WebhookName:w,RequestBody:[{"k":"C:\\\\data\\nnext"}],RequestHeader:{}}']).body
    assert body == [{"k": "C:\\data\nnext"}]
