"""The WDL evaluator against the function reference's own examples (FN, LOGICAPPS.md §1-2), its null
handling, ``?[`` on missing keys, interpolation and ``@@`` escaping — on its own, before it judges a
generated workflow."""

from __future__ import annotations

from typing import Any

import pytest

from amlrelay.logicapp import ExpressionError, StaticContext, evaluate_value, parse_expression
from amlrelay.logicapp._wdl import MAX_EXPRESSION

EVENT = {"data": {"runId": "r1", "runTags": {}}, "n": 0}
CTX = StaticContext(trigger={"body": [EVENT], "headers": {"aeg-event-type": "Notification"}},
                    parameters={"retries": 4, "names": ["a"]})


def ev(expression: str) -> Any:
    return evaluate_value("@" + expression, CTX)


@pytest.mark.parametrize(("expression", "expected"), [
    ("concat('Hello', 'World')", "HelloWorld"),
    ("equals(true, 1)", True),
    ("equals('abc', 'abcd')", False),
    ("toLower('Hello World')", "hello world"),
    ("toUpper('Hello World')", "HELLO WORLD"),
    ("startsWith('hello world', 'hello')", True),
    ("startsWith('hello world', 'greetings')", False),
    ("endsWith('hello world', 'world')", True),
    ("endsWith('hello world', 'universe')", False),
    ("contains('hello world', 'world')", True),
    ("contains('hello world', 'universe')", False),
    ("coalesce(null, true, false)", True),
    ("coalesce(null, 'hello', 'world')", "hello"),
    ("coalesce(null, null, null)", None),
    ("string(10)", "10"),
    ("base64('hello')", "aGVsbG8="),
    ("replace('the old string', 'old', 'new')", "the new string"),
    ("split('a_b_c', '_')", ["a", "b", "c"]),
    ("substring('hello world', 6, 5)", "world"),
    ("length('abcd')", 4),
    ("length(createArray(0, 1, 2, 3))", 4),
    ("first('hello')", "h"),
    ("first(createArray(0, 1, 2))", 0),
    ("last('abcd')", "d"),
    ("trim(' Hello World  ')", "Hello World"),
    ("intersection(createArray(1, 2, 3), createArray(101, 2, 1, 10), createArray(6, 8, 1, 2))", [1, 2]),
    ("union(createArray(1, 2, 3), createArray(1, 2, 10, 101))", [1, 2, 3, 10, 101]),
    ("setProperty(json('{\"firstName\": \"Sophia\", \"surName\": \"Owen\"}'), 'surName', 'Hartnett')",
     {"firstName": "Sophia", "surName": "Hartnett"}),
    ("removeProperty(json('{\"firstName\": \"Sophia\", \"middleName\": \"Anne\"}'), 'middleName')",
     {"firstName": "Sophia"}),
    ("if(equals(1, 1), 'yes', 'no')", "yes"),
    ("and(true, false)", False),
    ("or(false, true)", True),
    ("not(false)", True),
    ("empty('')", True),
    ("empty('abc')", False),
    ("add(1, 1.5)", 2.5),
    ("sub(10, 3)", 7),
    ("min(1, 2, 3)", 1),
    ("min(createArray(1, 2, 3))", 1),
    ("less(5, 10)", True),
    ("less('apples', 'bananas')", True),
    ("greater(10, 5)", True),
    ("int('10')", 10),
    ("ticks('2018-01-01T08:00:00.000Z')", 636503904000000000),
    ("addSeconds('2018-03-15T00:00:00Z', 30)", "2018-03-15T00:00:30.0000000Z"),
    ("addSeconds('2018-03-15T00:00:30Z', -5)", "2018-03-15T00:00:25.0000000Z"),
    ("json('{\"fullName\": \"Sophia Owen\"}')", {"fullName": "Sophia Owen"}),
    ("'it''s'", "it's"),
])
def test_function_reference_examples(expression: str, expected: Any) -> None:
    assert ev(expression) == expected


@pytest.mark.parametrize(("expression", "expected"), [
    ("triggerBody()[0]?['data']?['runId']", "r1"),
    ("triggerBody()[0]?['data']?['missing']", None),
    ("triggerBody()[0]?['missing']?['deeper']?['still']", None),
    ("triggerBody()[0]?['data']?['runTags']?['branch']", None),
    ("triggerBody()?[5]", None),
    ("triggerBody()[0].data.runId", "r1"),
    ("equals(null, '')", True),  # null counts as '' in comparisons
    ("equals(triggerBody()[0]?['missing'], null)", True),
    ("string(null)", ""),
    ("coalesce(triggerBody()[0]?['missing'], 'fallback')", "fallback"),
    ("coalesce('', 'fallback')", ""),  # '' is not null
    ("empty(createArray())", True),  # true for '', [] and {}
    ("empty(json('{}'))", True),
    ("empty(string(triggerBody()[0]?['missing']))", True),  # how a template's fallback meets a missing field
    ("if(empty(string(triggerBody()[0]?['data']?['runId'])), 'x', string(triggerBody()[0]?['data']?['runId']))",
     "r1"),
    ("if(empty(string(triggerBody()[0]?['n'])), 'x', string(triggerBody()[0]?['n']))", "0"),  # 0 is not empty
    ("triggerOutputs()?['headers']?['aeg-event-type']", "Notification"),
    ("parameters('retries')", 4),
])
def test_null_safe_access_and_null_handling(expression: str, expected: Any) -> None:
    assert ev(expression) == expected


@pytest.mark.parametrize("expression", [
    "triggerBody()[0]['missing']",  # without ?: "property 'missing' doesn't exist"
    "triggerBody()[0]['missing']['deeper']",
    "triggerBody()[0]?['missing']['deeper']",  # indexing into null without ?
    "triggerBody()[9]",
    "and('true', true)",  # booleans only
    "if('yes', 1, 2)",
    "if(true, 'taken', triggerBody()[0]['missing'])",  # both branches are evaluated
    "empty(null)",  # not stated in the docs: the stricter reading
    "concat('only one')",
    "json('{not json')",
    "noSuchFunction(1)",
    "parameters('unknown')",
    "substring('abc', 2, 5)",
])
def test_evaluation_errors_fail_like_the_service(expression: str) -> None:
    with pytest.raises(ExpressionError):
        ev(expression)


@pytest.mark.parametrize(("value", "expected"), [
    ("@parameters('retries')", 4),  # a whole-string expression keeps its type
    ("@{parameters('retries')}", "4"),  # interpolation is always a string
    ("retries: @{parameters('retries')}, names: @{parameters('names')}", 'retries: 4, names: ["a"]'),
    ("@@parameters('retries')", "@parameters('retries')"),  # @@ is a literal @
    ("user@contoso.com", "user@contoso.com"),
    ("@{concat('}', '{')} braces", "}{ braces"),
    ({"a": ["@add(1, 1)", {"b": "@{'x'}"}]}, {"a": [2, {"b": "x"}]}),
])
def test_templates_interpolation_and_escaping(value: Any, expected: Any) -> None:
    assert evaluate_value(value, CTX) == expected


@pytest.mark.parametrize("text", ["concat('a'", "'unterminated", "a b", "concat('a',)", "x[", "toLower('a')~",
                                  "concat('a', 'b') extra"])
def test_syntax_errors_are_refused(text: str) -> None:
    with pytest.raises(ExpressionError):
        parse_expression(text)


def test_the_expression_length_limit_is_enforced() -> None:
    parse_expression("concat(" + ", ".join(["'x'"] * 1000) + ")")
    with pytest.raises(ExpressionError, match="8192"):
        parse_expression("concat(" + ", ".join(["'x'"] * (MAX_EXPRESSION // 5 + 1)) + ")")
