"""Trust: only events from an allowed AML workspace reach ADO, whatever the schema or the way in.

The allow-list compares whole ARM resource ids, case-insensitively (ARM ids are), ignoring surrounding
whitespace and a trailing slash a person may paste — and nothing else: a prefix extension
(``.../workspaces/ws-evil``), a truncation, a look-alike character or another subscription is refused with
the event and the source named, and no ADO request is made. The same holds for manual starts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amlrelay.events import parse_events
from amlrelay.models import AmlEvent
from amlrelay.relay import Relay
from amlrelay.routes import load_routes
from amlrelay.runbook import build_relay, main
from amlrelay.settings import resolve
from amlrelay.validate import SourcePolicy, normalize_resource_id
from tests.conftest import ROUTES_FILE, SAMPLE_WORKSPACE, all_samples, sample
from tests.stack import Stack, local_stack

WORKSPACE = ("/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-ml/providers/"
             "Microsoft.MachineLearningServices/workspaces/ws-contoso")

SPOOFED = {
    "prefix extension": WORKSPACE + "-evil",
    "one letter more": WORKSPACE + "X",
    "child path": WORKSPACE + "/x",
    "parent escape": WORKSPACE + "/../ws-evil",
    "truncated": WORKSPACE[:-1],
    "parent resource group": WORKSPACE.rsplit("/providers/", 1)[0],
    "other subscription": WORKSPACE.replace("0001", "0002"),
    "look-alike (Cyrillic o)": WORKSPACE.replace("contoso", "c\u043entoso"),
    "look-alike (digit zero)": WORKSPACE.replace("contoso", "c0ntoso"),
    "other provider": WORKSPACE.replace("MachineLearningServices", "MachineLearningService"),
    "space inside": WORKSPACE.replace("ws-contoso", "ws- contoso"),
    "empty-ish": "/",
    "doubled slash": WORKSPACE.replace("/workspaces/", "/workspaces//"),
}
ACCEPTED = {
    "exact": WORKSPACE,
    "upper case": WORKSPACE.upper(),
    "lower case": WORKSPACE.lower(),
    "trailing slash": WORKSPACE + "/",
    "surrounding whitespace": f"  {WORKSPACE}\t",
}


def event_from(schema: str, name: str, source: str) -> AmlEvent:
    raw = sample(schema, name)
    raw["topic" if schema == "event-grid-schema" else "source"] = source
    [parsed] = parse_events([raw])
    assert isinstance(parsed, AmlEvent)
    return parsed


@pytest.mark.parametrize(("schema", "name"), all_samples())
@pytest.mark.parametrize("variant", list(ACCEPTED))
def test_the_allowed_workspace_is_recognised_in_every_schema_and_spelling(schema: str, name: str,
                                                                         variant: str) -> None:
    SourcePolicy([WORKSPACE]).check(event_from(schema, name, ACCEPTED[variant]))
    SourcePolicy([ACCEPTED[variant]]).check(event_from(schema, name, WORKSPACE))  # either side may differ


@pytest.mark.parametrize(("schema", "name"), all_samples())
@pytest.mark.parametrize("variant", list(SPOOFED))
def test_a_spoofed_workspace_is_refused_in_every_schema(schema: str, name: str, variant: str) -> None:
    from amlrelay.errors import UntrustedSourceError

    spoofed = event_from(schema, name, SPOOFED[variant])
    with pytest.raises(UntrustedSourceError) as caught:
        SourcePolicy([WORKSPACE, WORKSPACE.replace("ws-contoso", "ws-other")]).check(spoofed)
    assert caught.value.message == (f"Event {spoofed.id} comes from {SPOOFED[variant]!r}, which is not an allowed "
                                    "workspace.")
    assert caught.value.hint == ("If this workspace should trigger pipelines, add its resource id to "
                                 "AMLRELAY_ALLOWED_WORKSPACES; otherwise someone is posting to the webhook: "
                                 "rotate it.")


def test_the_refusal_quotes_at_most_300_characters_of_the_source() -> None:
    from amlrelay.errors import UntrustedSourceError

    spoofed = event_from("event-grid-schema", "model_registered", WORKSPACE + "x" * 1000)
    with pytest.raises(UntrustedSourceError) as caught:
        SourcePolicy([WORKSPACE]).check(spoofed)
    assert repr((WORKSPACE + "x" * 1000)[:300]) in caught.value.message
    assert repr((WORKSPACE + "x" * 1000)[:301]) not in caught.value.message


def test_normalisation_is_exactly_case_whitespace_and_trailing_slash() -> None:
    assert normalize_resource_id(f" \t{WORKSPACE.upper()}/// \n") == WORKSPACE.lower()
    assert normalize_resource_id("/A/b/") == "/a/b"
    assert normalize_resource_id("//") == ""


def test_an_empty_allow_list_trusts_nobody() -> None:
    from amlrelay.errors import UntrustedSourceError

    with pytest.raises(UntrustedSourceError):
        SourcePolicy([]).check(event_from("event-grid-schema", "model_registered", WORKSPACE))


# --- end to end: no ADO call for a spoofed or invalid event (property-tested) ---------------------------

@pytest.fixture(scope="module")
def relay_and_stack() -> Iterator[tuple[Relay, Stack]]:
    with local_stack() as stack, pytest.MonkeyPatch.context() as patch:
        for name, value in stack.env(AMLRELAY_ALLOWED_WORKSPACES=WORKSPACE).items():
            patch.setenv(name, value)
        settings_ = resolve({}, env=stack.env(AMLRELAY_ALLOWED_WORKSPACES=WORKSPACE))
        yield build_relay(settings_, load_routes(ROUTES_FILE)), stack


def _edits(text: str) -> st.SearchStrategy[str]:
    """One edit of a resource id: insert, delete or replace a character somewhere."""
    position = st.integers(min_value=0, max_value=len(text))
    char = st.characters(codec="utf-8", exclude_categories=["Cs"])
    return st.one_of(
        st.tuples(position, char).map(lambda p: text[:p[0]] + p[1] + text[p[0]:]),
        position.filter(lambda p: p < len(text)).map(lambda p: text[:p] + text[p + 1:]),
        st.tuples(position.filter(lambda p: p < len(text)), char).map(lambda p: text[:p[0]] + p[1] + text[p[0] + 1:]),
    )


def _same_id(a: str, b: str) -> bool:
    return a.strip().rstrip("/").lower() == b.strip().rstrip("/").lower()


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(st.sampled_from(all_samples()), _edits(WORKSPACE))
def test_no_ado_call_for_any_other_workspace(relay_and_stack: tuple[Relay, Stack], which: tuple[str, str],
                                             source: str) -> None:
    relay, stack = relay_and_stack
    schema, name = which
    raw = sample(schema, name)
    raw["topic" if schema == "event-grid-schema" else "source"] = source
    before = len(stack.ado.requests)
    outcomes = relay.handle(parse_events([raw]), raw=[raw])
    if _same_id(source, WORKSPACE):
        return  # an edit that only changed case, whitespace or a trailing slash names the same workspace
    assert [o.outcome for o in outcomes] in (["rejected"], [])  # an empty source is refused when parsed
    assert len(stack.ado.requests) == before


json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(st.sampled_from(all_samples()), st.data())
def test_no_ado_call_for_invalid_input(relay_and_stack: tuple[Relay, Stack], which: tuple[str, str],
                                       data: st.DataObject) -> None:
    """A required field dropped or given a wrong type: the event is rejected or skipped, and ADO never hears."""
    relay, stack = relay_and_stack
    raw = sample(*which)
    raw["topic" if which[0] == "event-grid-schema" else "source"] = WORKSPACE
    raw = {k.lower() if k.lower() == "specversion" else k: v for k, v in raw.items()}
    envelope_required = (["id", "subject", "eventType", "eventTime"] if "topic" in raw
                         else ["id", "type", "specversion"])  # a CloudEvent's subject is optional
    key = data.draw(st.sampled_from(envelope_required), label="field")
    if data.draw(st.booleans(), label="drop"):
        raw.pop(key, None)
    else:
        raw[key] = data.draw(st.one_of(st.none(), st.integers(), st.lists(json_leaf, max_size=2),
                                       st.dictionaries(st.text(max_size=3), json_leaf, max_size=2)), label="value")
    before = len(stack.ado.requests)
    outcomes = relay.handle(parse_events([raw]), raw=[raw])
    assert outcomes
    assert {o.outcome for o in outcomes} <= {"rejected", "skipped"}, outcomes
    assert len(stack.ado.requests) == before


def test_an_allowed_event_does_reach_ado(relay_and_stack: tuple[Relay, Stack]) -> None:
    """The properties above would pass vacuously if nothing ever reached ADO: the same relay does call it."""
    relay, stack = relay_and_stack
    raw = sample("cloud-events-schema", "model_registered")
    raw["source"] = WORKSPACE.upper() + "/"
    before = len(stack.ado.run_requests)
    [outcome] = relay.handle(parse_events([raw]), raw=[raw])
    assert outcome.outcome == "triggered", outcome.reason
    assert len(stack.ado.run_requests) == before + 1


# --- manual starts ------------------------------------------------------------------------------------

@pytest.fixture
def manual_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("AMLRELAY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AMLRELAY_ADO_ORGANIZATION", "contoso")
    monkeypatch.setenv("AMLRELAY_ROUTES", str(ROUTES_FILE))
    monkeypatch.setenv("AMLRELAY_ALLOWED_WORKSPACES", f"{WORKSPACE},{SAMPLE_WORKSPACE}")
    monkeypatch.setenv("AMLRELAY_LEDGER", "false")


def run_manual(*args: str) -> tuple[int, list[dict[str, Any]], list[str]]:
    lines: list[str] = []
    code = main(["trigger_ado_pipeline.py", *args], out=lines.append)
    records = [json.loads(line) for line in lines if line.startswith("{")]
    return code, records, [line for line in lines if not line.startswith("{")]


@pytest.mark.usefixtures("manual_env")
@pytest.mark.parametrize("variant", list(SPOOFED))
def test_a_manual_start_for_a_spoofed_workspace_is_refused(variant: str) -> None:
    code, records, _ = run_manual("--model-name", "churn", "--model-version", "7", "--workspace", SPOOFED[variant],
                                  "--dry-run")
    assert code == 2
    assert [r["outcome"] for r in records] == ["rejected"]
    assert "not an allowed workspace" in records[0]["reason"]


@pytest.mark.usefixtures("manual_env")
@pytest.mark.parametrize("variant", list(ACCEPTED))
def test_a_manual_start_for_the_allowed_workspace_in_any_spelling_goes_through(variant: str) -> None:
    code, records, _ = run_manual("--model-name", "churn", "--model-version", "7", "--workspace", ACCEPTED[variant],
                                  "--route", "deploy-registered-model",
                                  "--dry-run")
    assert code == 0
    assert [r["outcome"] for r in records] == ["dry-run"]


@pytest.mark.usefixtures("manual_env")
def test_a_manual_start_must_name_the_workspace_when_several_are_allowed() -> None:
    code, records, errors = run_manual("--model-name", "churn", "--model-version", "7", "--dry-run")
    assert (code, records) == (2, [])
    assert any("say which one with --workspace" in line for line in errors)
