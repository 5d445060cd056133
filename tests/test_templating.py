"""``{{ field }}`` templates: what a routes author writes and exactly what ADO receives."""

from __future__ import annotations

import pytest

from amlrelay.errors import TemplateError
from amlrelay.templating import Placeholder, parse_template

VALUES = {"runId": "r1", "runTags.stage": "prod", "modelVersion": "7"}


@pytest.mark.parametrize(("source", "rendered"), [
    ("plain text", "plain text"),
    ("", ""),
    ("{{runId}}", "r1"),
    ("{{ runId }}", "r1"),
    ("  {{   runId   }}  ", "  r1  "),
    ("run {{ RUNID }} of {{ runtags.STAGE }}", "run r1 of prod"),
    ("{{ runId }}{{ modelVersion }}", "r17"),
    ("{{ missing | fallback }}", "fallback"),
    ("{{ missing|fallback }}", "fallback"),
    ("{{ missing | two words }}", "two words"),
    ("{{ missing | }}", ""),
    ("{{ runId | unused }}", "r1"),
    ("a{{ runTags.stage | main }}b", "aprodb"),
    ("{{ runTags.a.b | x }}", "x"),
])
def test_rendering(source: str, rendered: str) -> None:
    assert parse_template(source).render(VALUES) == rendered


def test_the_parts_of_a_template() -> None:
    template = parse_template("a {{ runId }} b {{ runTags.stage | main }} c")
    assert template.literals == ("a ", " b ", " c")
    assert template.placeholders == (Placeholder("runId", None), Placeholder("runTags.stage", "main"))
    assert template.fields == ("runId", "runTags.stage")
    assert template.source == "a {{ runId }} b {{ runTags.stage | main }} c"
    assert parse_template("x").fields == ()


@pytest.mark.parametrize(("tags", "with_fallback", "without"), [
    ({}, "main", TemplateError),  # missing
    ({"runTags.branch": ""}, "main", ""),  # present but empty: the fallback, or the empty value as the event says
    ({"runTags.branch": "release/2"}, "release/2", "release/2"),
], ids=["missing", "empty", "present"])
def test_a_fallback_covers_a_missing_and_an_empty_field(tags: dict[str, str], with_fallback: str,
                                                       without: str | type[Exception]) -> None:
    values = {"runId": "r1", **tags}
    assert parse_template("refs/heads/{{ runTags.branch | main }}").render(values) == f"refs/heads/{with_fallback}"
    assert parse_template("{{ runTags.branch | }}").render(values) == tags.get("runTags.branch", "")
    if isinstance(without, str):
        assert parse_template("{{ runTags.branch }}").render(values) == without
    else:
        with pytest.raises(without):
            parse_template("{{ runTags.branch }}").render(values)


def test_a_missing_field_without_fallback_is_an_error_naming_it_and_the_fix() -> None:
    with pytest.raises(TemplateError) as caught:
        parse_template("x {{ modelTags.stage }}").render(VALUES)
    assert caught.value.message == "the event has no modelTags.stage"
    assert caught.value.hint == ("Add a fallback in the routes file, e.g. '{{ modelTags.stage | none }}', or filter "
                                 "the route on it with 'exists'.")


def test_a_given_lower_case_index_is_used_as_is() -> None:
    template = parse_template("{{ RunId }}")
    assert template.render({"runId": "r1"}, lower_index={"runid": "runId"}) == "r1"
    with pytest.raises(TemplateError):
        template.render({"runId": "r1"}, lower_index={})  # the index decides what exists


@pytest.mark.parametrize(("source", "message"), [
    ("{{ 1abc }}", "'{{ 1abc }}' is not a field name"),
    ("{{ run id }}", "'{{ run id }}' is not a field name"),
    ("{{ runTags. }}", "'{{ runTags. }}' is not a field name"),
    ("{{ runTags.a b }}", "'{{ runTags.a b }}' is not a field name"),
    ("{{ run-id }}", "'{{ run-id }}' is not a field name"),
    ("{{ runId", "unbalanced '{{' or '}}' in '{{ runId'"),
    ("runId }}", "unbalanced '{{' or '}}' in 'runId }}'"),
    ("{{ a {{ b }} }}", "unbalanced"),
    ("{{}}", "unbalanced"),
])
def test_bad_templates_are_refused_with_the_placeholder_named(source: str, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("{", r"\{").replace("}", r"\}")
                       .replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        parse_template(source)


def test_a_tag_name_may_hold_dots_and_dashes() -> None:
    assert parse_template("{{ runTags.my-tag.v2 }}").fields == ("runTags.my-tag.v2",)
    assert parse_template("{{ runTags.my-tag.v2 }}").render({"runTags.my-tag.v2": "ok"}) == "ok"
