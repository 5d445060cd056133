"""Parser for Workflow Definition Language (WDL) expressions, the language of Logic App workflows.

Only the grammar the generator emits and the function reference documents is accepted, so a typo in the
generated workflow fails here, offline, instead of at deployment: string literals in single quotes (a quote
doubled inside), integers, decimals, ``true``/``false``/``null``, function calls, member access
``x['k']`` / ``x.k`` / ``x[0]`` and the null-safe ``x?['k']``. A JSON string value is an expression when it
starts with ``@`` (``@@`` is a literal ``@``), and ``@{...}`` inside text is string interpolation.
Sources: LOGICAPPS.md §1 (WDL, FN).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

MAX_EXPRESSION = 8192
"""Logic Apps refuses an expression longer than this (LIM, "Expression character limit")."""


class ExpressionError(ValueError):
    """A syntax error, or an evaluation error (the action that evaluates the expression fails)."""


@dataclass(frozen=True)
class Literal:
    value: Any


@dataclass(frozen=True)
class Call:
    name: str
    args: tuple[Node, ...]


@dataclass(frozen=True)
class Access:
    target: Node
    key: Node
    safe: bool  # ``?[...]``: a missing key or a null target gives null instead of an error


Node = Literal | Call | Access


@dataclass(frozen=True)
class Template:
    """A JSON string value: a typed expression, an interpolation (always a string), or plain text."""

    kind: str  # "expression", "interpolation", "text"
    parts: tuple[str | Node, ...]


_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>'(?:[^']|'')*')
  | (?P<number>-?\d+(?:\.\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>\?\[|\?\.|[()\[\],.])
""", re.VERBOSE)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ExpressionError(f"unexpected character {text[pos]!r} at {pos} in {_cut(text)}")
        kind = match.lastgroup or ""
        if kind != "space":
            out.append((kind, match.group()))
        pos = match.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.pos = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if token is None or (value is not None and token[1] != value):
            raise ExpressionError(f"expected {value or 'more'} at token {self.pos} in {_cut(self.text)}")
        self.pos += 1
        return token

    def parse(self) -> Node:
        node = self.expression()
        if self.peek() is not None:
            raise ExpressionError(f"unexpected {self.peek()[1]!r} after the expression in {_cut(self.text)}")  # type: ignore[index]
        return node

    def expression(self) -> Node:
        kind, value = self.take()
        node: Node
        if kind == "string":
            node = Literal(value[1:-1].replace("''", "'"))
        elif kind == "number":
            node = Literal(float(value) if "." in value else int(value))
        elif kind == "name" and value in ("true", "false", "null") and self._not_call():
            node = Literal({"true": True, "false": False, "null": None}[value])
        elif kind == "name":
            self.take("(")
            args: list[Node] = []
            if self.peek() != ("punct", ")"):
                args.append(self.expression())
                while self.peek() == ("punct", ","):
                    self.take(",")
                    args.append(self.expression())
            self.take(")")
            node = Call(value, tuple(args))
        else:
            raise ExpressionError(f"unexpected {value!r} in {_cut(self.text)}")
        return self.accessors(node)

    def _not_call(self) -> bool:
        return self.peek() != ("punct", "(")

    def accessors(self, node: Node) -> Node:
        while True:
            token = self.peek()
            if token in (("punct", "["), ("punct", "?[")):
                self.take()
                key = self.expression()
                self.take("]")
                node = Access(node, key, token[1] == "?[")  # type: ignore[index]
            elif token in (("punct", "."), ("punct", "?.")):
                self.take()
                kind, name = self.take()
                if kind != "name":
                    raise ExpressionError(f"expected a property name after '.' in {_cut(self.text)}")
                node = Access(node, Literal(name), token[1] == "?.")  # type: ignore[index]
            else:
                return node


def parse_expression(text: str) -> Node:
    """Parse one expression (the text after ``@``, or inside ``@{...}``)."""
    if len(text) > MAX_EXPRESSION:
        raise ExpressionError(f"expression of {len(text)} characters exceeds the {MAX_EXPRESSION}-character limit")
    return _Parser(text).parse()


def parse_template(value: str) -> Template:
    """Classify and parse a JSON string value of a workflow definition."""
    if value.startswith("@@"):
        return Template("text", (value[1:],))
    if value.startswith("@") and not value.startswith("@{"):
        return Template("expression", (parse_expression(value[1:]),))
    if "@{" not in value:
        return Template("text", (value,))
    parts: list[str | Node] = []
    pos = 0
    while True:
        start = value.find("@{", pos)
        if start < 0:
            parts.append(value[pos:])
            break
        parts.append(value[pos:start])
        end = _closing_brace(value, start + 2)
        parts.append(parse_expression(value[start + 2:end]))
        pos = end + 1
    return Template("interpolation", tuple(p for p in parts if p != ""))


def _closing_brace(value: str, pos: int) -> int:
    """The ``}`` that ends an interpolation, skipping braces inside string literals."""
    quoted = False
    for index in range(pos, len(value)):
        char = value[index]
        if char == "'":
            quoted = not quoted
        elif char == "}" and not quoted:
            return index
    raise ExpressionError(f"unterminated '@{{' in {_cut(value)}")


def expressions_in(value: Any) -> list[str]:
    """Every expression string in a (definition) JSON value, for checks: the ``@``-strings."""
    if isinstance(value, str):
        return [value] if "@" in value and not value.startswith("@@") else []
    if isinstance(value, dict):
        return [e for k, v in value.items() for e in expressions_in(k) + expressions_in(v)]
    if isinstance(value, list):
        return [e for v in value for e in expressions_in(v)]
    return []


def _cut(text: str) -> str:
    return repr(text if len(text) <= 120 else text[:117] + "...")
