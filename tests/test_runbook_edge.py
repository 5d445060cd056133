"""The runbook's edge under hostile deliveries, as a new user would try them (issue #7, item 5): bodies that
are not UTF-8, identifiers whose JSON type contradicts the event schema, a job with no arguments, Event
Grid's validation handshake, a wrong IDENTITY_HEADER, the exit code of every kind of batch, and messages
that never leak Python (``None``, type names, tracebacks)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amlrelay import runbook
from amlrelay.errors import InvalidEventError
from amlrelay.events import Invalid, Skipped, load_body, parse_events
from amlrelay.models import AmlEvent
from amlrelay.record import Outcome, exit_code
from amlrelay.webhook import parse_webhook_argv
from tests import secret_guard
from tests.conftest import FIXTURES, ROUTES_FILE, SAMPLE_WORKSPACE, all_samples, sample
from tests.stack import Stack, local_stack
from tests.test_webhook import hashtable_form

SCHEMA = json.loads((FIXTURES / "eventgrid" / "GeneratedSystemEvents.2024-01-01.MachineLearningServices-excerpt.json")
                    .read_text(encoding="utf-8"))["definitions"]
SAMPLE_OF = {  # event type -> (sample file, the spec definition of its data)
    "RunCompleted": ("run_completed", "MachineLearningServicesRunCompletedEventData"),
    "RunStatusChanged": ("run_status_changed", "MachineLearningServicesRunStatusChangedEventData"),
    "ModelRegistered": ("model_registered", "MachineLearningServicesModelRegisteredEventData"),
    "ModelDeployed": ("model_deployed", "MachineLearningServicesModelDeployedEventData"),
    "DatasetDriftDetected": ("dataset_drift_detected", "MachineLearningServicesDatasetDriftDetectedEventData"),
}
INTEGER_TOO = {("ModelRegistered", "modelVersion")}  # typed integer in the 2018 schema; the sample sends 20
LEAKS = ("None", "<class", "NoneType", "Traceback")


def string_fields() -> list[tuple[str, str]]:
    """Every string-typed field of the five data payloads, read from the spec (not listed by hand)."""
    return [(etype, name) for etype, (_, definition) in SAMPLE_OF.items()
            for name, spec in SCHEMA[definition]["properties"].items() if spec.get("type") == "string"]


def with_data(event: dict[str, Any], field: str, value: Any) -> dict[str, Any]:
    """The event with ``data.<field>`` (matched case-insensitively, as the samples vary) set to ``value``."""
    changed: dict[str, Any] = json.loads(json.dumps(event))
    key = next((k for k in changed["data"] if k.lower() == field.lower()), field)
    changed["data"][key] = value
    return changed


@pytest.fixture
def stack() -> Iterator[Stack]:
    with local_stack() as s:
        yield s


def run(stack: Stack, argv: list[str] | list[bytes], **env: str) -> tuple[int, list[dict[str, Any]], list[str]]:
    done = subprocess.run([*stack.runbook_command(), *argv], env=stack.env(**env), capture_output=True,
                          timeout=60, check=False)
    stdout, stderr = done.stdout.decode("utf-8"), done.stderr.decode("utf-8", "replace")
    secret_guard.record("runbook stdout", stdout)
    secret_guard.record("runbook stderr", stderr)
    assert stderr == "", stderr
    for leak in LEAKS:
        assert leak not in stdout, stdout
    records = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return done.returncode, records, [line for line in stdout.splitlines() if not line.startswith("{")]


# --- not UTF-8 -----------------------------------------------------------------------------------------

def test_a_body_that_is_not_utf8_is_refused_with_exit_2(stack: Stack) -> None:
    body = json.dumps([sample("event-grid-schema", "run_completed")]).replace("automl-local", "automl-@@")
    raw = hashtable_form(body).encode("utf-8").replace(b"@@", b"\xff\xfe")  # Latin-1 bytes, as a bad client sends
    code, records, human = run(stack, raw.split())
    assert code == 2
    assert records == []
    assert any("is not UTF-8 (byte 0xff" in line for line in human), human
    assert all(line.startswith("ERROR: ") for line in human)
    assert stack.ado.requests == []


def test_not_utf8_is_named_on_every_path_into_the_parser() -> None:
    with pytest.raises(InvalidEventError, match=r"not UTF-8 \(byte 0xc3 at position 2\)"):
        load_body(b'[{\xc3(}]')
    argv = ["{WebhookName:x,RequestBody:[" + b"\xff".decode("utf-8", "surrogateescape") + "]}"]
    with pytest.raises(InvalidEventError, match=r"webhook data is not UTF-8 \(byte 0xff"):
        parse_webhook_argv(argv)


def test_a_json_escaped_lone_surrogate_rejects_that_event_only() -> None:
    bad = with_data(sample("event-grid-schema", "run_completed"), "runId", "r-\ud800")
    items = parse_events(json.loads(json.dumps([bad, sample("event-grid-schema", "model_registered")])))
    assert isinstance(items[0], Invalid)
    assert "not valid Unicode" in str(items[0].error)
    assert isinstance(items[1], AmlEvent)


# --- identifiers whose type contradicts the schema ---------------------------------------------------------

@pytest.mark.parametrize(("event_type", "field"), string_fields())
@pytest.mark.parametrize("value", [5, 2.5, True, {"a": "b"}, ["x"]])
def test_a_string_field_of_another_json_type_is_refused_with_the_field_named(event_type: str, field: str,
                                                                           value: Any) -> None:
    file, _ = SAMPLE_OF[event_type]
    for schema in ("event-grid-schema", "cloud-events-schema"):
        [item] = parse_events([with_data(sample(schema, file), field, value)])
        if (event_type, field) in INTEGER_TOO and type(value) is int:
            assert isinstance(item, AmlEvent)  # 2018's integer modelVersion: still what AML sends
            continue
        assert isinstance(item, Invalid), (schema, field, value)
        message = str(item.error)
        assert f"data.{field} must be a string" in message, message
        assert "int" not in message.split("got", 1)[1], message
        assert "dict" not in message, message


def test_the_field_list_comes_from_the_schema_and_covers_every_identifier() -> None:
    fields = set(string_fields())
    assert {("RunCompleted", "runId"), ("RunStatusChanged", "runStatus"), ("ModelRegistered", "modelName"),
            ("ModelDeployed", "modelIds"), ("DatasetDriftDetected", "dataDriftId"),
            ("DatasetDriftDetected", "runId")} <= fields
    assert ("ModelRegistered", "modelVersion") in fields  # string in 2024-01-01, integer in 2018-01-01


def test_a_numeric_run_id_never_reaches_ado(stack: Stack) -> None:
    event = with_data(sample("event-grid-schema", "run_completed"), "runId", 12345)
    code, records, _ = run(stack, hashtable_form(json.dumps([event])).split())
    assert code == 2
    assert [r["outcome"] for r in records] == ["rejected"]
    assert "data.runId must be a string (as in the event schema), got the number 12345" in records[0]["reason"]
    assert stack.ado.requests == []


# --- no arguments, the validation handshake ---------------------------------------------------------------

def test_a_job_started_without_arguments_prints_the_usage(stack: Stack) -> None:
    code, records, human = run(stack, [])
    assert code == 2
    assert records == []
    assert human[0] == "ERROR: The runbook was started without arguments, so there is no event to relay."
    assert any(line.startswith("usage: trigger_ado_pipeline.py") for line in human)
    assert any("--model-name" in line for line in human)
    assert stack.ado.requests == []
    assert stack.identity.requests == []


VALIDATION = {
    "id": "2d1781af-3a4c-4d7c-bd0c-e34b19da4e66",
    "topic": SAMPLE_WORKSPACE,
    "subject": "",
    "data": {"validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6",
             "validationUrl": "https://rp-eastus2.eventgrid.azure.net:553/eventsubscriptions/amlrelay-runs/"
                              "validate?id=512d38b6&t=2026-12-01T10:00:00Z&apiVersion=2025-02-15&token=abc"},
    "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
    "eventTime": "2026-12-01T10:00:00Z",
    "metadataVersion": "1",
    "dataVersion": "1",
}


def test_the_validation_handshake_prints_the_url_and_code_on_a_warning_line(stack: Stack) -> None:
    code, records, human = run(stack, hashtable_form(json.dumps([VALIDATION])).split())
    assert code == 0
    assert [r["outcome"] for r in records] == ["skipped"]
    [warning] = [line for line in human if line.startswith("WARNING: ")]
    assert VALIDATION["data"]["validationUrl"] in warning  # type: ignore[index]
    assert "validation code 512d38b6-c7b8-40c8-89fe-f46f9e9622b6" in warning
    assert stack.ado.requests == []


def test_a_validation_event_without_an_https_url_says_it_cannot_be_validated_by_hand() -> None:
    event = {**VALIDATION, "data": {"validationCode": "x", "validationUrl": "http://evil.example/"}}
    [item] = parse_events([event])
    assert isinstance(item, Skipped)
    assert "cannot be validated by hand" in item.reason
    assert "evil" not in item.reason


# --- the identity endpoint -----------------------------------------------------------------------------------

def test_a_wrong_identity_header_is_reported_as_a_401_not_as_a_missing_identity(stack: Stack) -> None:
    code, records, _ = run(stack, hashtable_form(json.dumps([sample("event-grid-schema", "model_deployed")]))
                           .split(), IDENTITY_HEADER="not-this-sandbox")
    assert code == 1
    [record] = records
    assert record["outcome"] == "failed"
    assert "refused the request with HTTP 401" in record["reason"]
    assert "IDENTITY_HEADER" in record["reason"]
    assert "system-assigned identity" not in record["reason"]
    assert stack.identity.token_requests  # the endpoint was asked, and refused the header
    assert all(r.headers["X-IDENTITY-HEADER"] == "not-this-sandbox" for r in stack.identity.token_requests)
    assert stack.ado.requests == []


def test_a_wrong_identity_header_in_pat_mode_names_key_vault_and_the_401() -> None:
    with local_stack(pat=True) as stack:
        code, records, _ = run(stack, hashtable_form(json.dumps([sample("event-grid-schema", "model_deployed")]))
                               .split(), IDENTITY_HEADER="not-this-sandbox")
        assert code == 1
        assert "Key Vault" in records[0]["reason"]
        assert "HTTP 401" in records[0]["reason"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("App Service managed identity configuration not found in environment. Token request error: "
         "(invalid_scope) 401, The X-IDENTITY-HEADER header does not match.", "HTTP 401"),
        ("Unexpected response 401 Unauthorized: Invalid secret token header: .", "HTTP 401"),
        ("Token request error: (invalid_scope) 400, AADSTS500011: The resource principal named x was not found.",
         "AADSTS500011"),
        ("Token request error: (invalid_scope) 503, busy", "failed with HTTP 503"),
        ("ManagedIdentityCredential authentication unavailable, no response from the IMDS endpoint.",
         "system-assigned identity"),
    ],
)
def test_identity_endpoint_failures_are_told_apart(text: str, expected: str) -> None:
    from amlrelay.auth import identity_error

    error = identity_error(RuntimeError(text), "No token")
    assert expected in str(error)
    assert error.hint.endswith(".")


def test_no_identity_at_all_still_says_to_turn_the_identity_on(stack: Stack) -> None:
    env = dict.fromkeys(("IDENTITY_ENDPOINT", "IDENTITY_HEADER"), "")
    code, records, _ = run(stack, hashtable_form(json.dumps([sample("event-grid-schema", "model_deployed")]))
                           .split(), **env)
    assert code == 1
    assert "system-assigned identity" in records[0]["reason"]


# --- exit codes ----------------------------------------------------------------------------------------------

def outcome(kind: Any, reason: str | None = None) -> Outcome:
    return Outcome("e", "RunCompleted", "s", kind, reason=reason)


@pytest.mark.parametrize(
    ("kinds", "code"),
    [
        ([], 0),
        (["triggered", "duplicate", "skipped", "dry-run"], 0),
        (["triggered", "rejected"], 2),  # mixed batch: the refused event fails the job, the other is recorded
        (["rejected", "skipped"], 2),
        (["triggered", "failed"], 1),
        (["rejected", "failed", "triggered"], 1),  # a failure (retry may help) outranks a refusal
    ],
)
def test_exit_code_of_every_kind_of_batch(kinds: list[str], code: int) -> None:
    assert exit_code([outcome(k) for k in kinds]) == code


def test_triggered_but_not_recorded_exits_1() -> None:
    assert exit_code([outcome("triggered", "triggered, but the ledger could not record it")]) == 1


def test_a_mixed_batch_triggers_the_good_event_and_exits_2(stack: Stack) -> None:
    bad = with_data(sample("cloud-events-schema", "model_registered"), "modelName", 7)
    good = sample("cloud-events-schema", "model_deployed")
    code, records, human = run(stack, hashtable_form(json.dumps([bad, good])).split())
    assert code == 2
    assert [r["outcome"] for r in records] == ["rejected", "triggered"]
    assert len(stack.ado.run_requests) == 1
    assert any(line.startswith("ERROR: ModelRegistered") and "data.modelName" in line for line in human)


def test_an_unexpected_error_exits_3_with_a_sentence_not_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(args: list[str], emit: Any) -> int:
        raise KeyError("routes")

    monkeypatch.setattr(runbook, "_run", broken)
    lines: list[str] = []
    assert runbook.main(["runbook", "--model-name", "m"], out=lines.append) == 3
    assert lines[0].startswith("ERROR: amlrelay stopped on an unexpected error, which is a bug: KeyError")
    assert lines[1].startswith("ERROR: What to do: Start the job again")


# --- messages: no Python leaking, hints as sentences ----------------------------------------------------------

def in_process(argv: list[str], monkeypatch: pytest.MonkeyPatch, **env: str) -> tuple[int, list[str]]:
    for name, value in {"AMLRELAY_ADO_ORGANIZATION": "contoso", "AMLRELAY_ROUTES": str(ROUTES_FILE),
                        "AMLRELAY_ALLOWED_WORKSPACES": SAMPLE_WORKSPACE, "AMLRELAY_DRY_RUN": "true", **env}.items():
        monkeypatch.setenv(name, value)
    lines: list[str] = []
    return runbook.main(["runbook", *argv], out=lines.append), lines


nulls_and_wrong_types = st.sampled_from([None, 0, 1.5, True, False, [], {}, [None], {"k": None}, "", " "])


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.sampled_from(all_samples()), st.data())
def test_no_output_line_leaks_python(monkeypatch: pytest.MonkeyPatch, which: tuple[str, str],
                                     data: st.DataObject) -> None:
    event = sample(*which)
    target = event if data.draw(st.booleans()) else event["data"]
    key = data.draw(st.sampled_from(sorted(target)))
    target[key] = data.draw(nulls_and_wrong_types)
    code, lines = in_process(hashtable_form(json.dumps([event])).split(), monkeypatch)
    assert code in (0, 1, 2)
    for line in lines:
        for leak in LEAKS:
            assert leak not in line, line


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["[null]"], {}),
        (["{}"], {}),
        (['{"eventType": null, "id": null}'], {}),
        (['[{"specversion": "1.0", "id": "x", "source": "s", "subject": null, "data": null,'
          ' "type": "Microsoft.MachineLearningServices.RunCompleted"}]'], {}),
        (["--model-name", "m", "--nope"], {}),
        (["--model-name", "m"], {"AMLRELAY_TIMEOUT": "soon", "AMLRELAY_ALLOWED_WORKSPACES": "none"}),
        (["--event-type", "Nothing", "--run-id", "r"], {}),
        (["--pipeline-id", "3", "--run-id", "r"], {}),
    ],
)
def test_hostile_starts_get_sentences_without_python_in_them(argv: list[str], env: dict[str, str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    code, lines = in_process(argv, monkeypatch, **env)
    assert code == 2, lines
    for line in lines:
        for leak in LEAKS:
            assert leak not in line, line
    what_to_do = [line for line in lines if line.startswith("ERROR: What to do: ")]
    for line in what_to_do:
        hint = line.removeprefix("ERROR: What to do: ")
        assert hint[0].isupper(), hint
        assert hint.endswith("."), hint


def test_every_hint_in_the_package_is_a_full_sentence() -> None:
    """Static: each ``hint=`` literal starts with a capital letter and ends with a full stop."""
    import ast
    from pathlib import Path

    bad = []
    for path in sorted((Path(runbook.__file__).parent).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.keyword) and node.arg == "hint":
                parts = ([node.value] if isinstance(node.value, ast.Constant) else
                         list(node.value.values) if isinstance(node.value, ast.JoinedStr) else [])
                text = "".join(p.value if isinstance(p, ast.Constant) and isinstance(p.value, str) else "X"
                               for p in parts)
                if parts and (not (text[:1].isupper() or text[:1] in "`X") or not text.endswith(".")):
                    bad.append(f"{path.name}:{node.lineno}: {text[:60]!r}")
    assert bad == []
