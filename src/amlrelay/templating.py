"""``{{ field }}`` templates in route values: parsed once at load time, rendered per event.

The syntax is deliberately tiny so it translates one-to-one into Logic App expressions and stays
readable in a routes file: ``{{ runId }}``, ``{{ runTags.stage }}``, and a literal fallback after a bar,
``{{ runTags.branch | main }}``. The fallback stands in for a field the event lacks *and* for one whose value
is the empty string: AML keeps a tag set to ``""``, and ``refs/heads/`` (or an empty variable) is never what
the author of a fallback meant. A field without a fallback that the event lacks is an error, never a silent
empty string: an empty variable would start the wrong pipeline run. One that is present but empty renders
empty, as the event says: the author wrote no fallback, and the Logic App (which cannot fail one route of
an event) renders it the same way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import TemplateError

_PLACEHOLDER = re.compile(r"\{\{\s*([^{}|]+?)\s*(?:\|\s*([^{}]*?)\s*)?\}\}")
_FIELD = re.compile(r"^[A-Za-z][A-Za-z0-9]*(\.[^\s{}|]+)?$")


@dataclass(frozen=True)
class Placeholder:
    field: str
    default: str | None


@dataclass(frozen=True)
class Template:
    """A string split into literal text and placeholders (alternating, literals first)."""

    source: str
    literals: tuple[str, ...]
    placeholders: tuple[Placeholder, ...]

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(p.field for p in self.placeholders)

    def render(self, values: Mapping[str, str], *, lower_index: Mapping[str, str] | None = None) -> str:
        """Fill the placeholders; ``values`` keys are matched case-insensitively. A fallback covers a missing
        field and an empty one alike (``logicapp._fields.render`` renders the same)."""
        index = lower_index if lower_index is not None else {k.lower(): k for k in values}
        out = [self.literals[0]]
        for placeholder, literal in zip(self.placeholders, self.literals[1:], strict=True):
            key = index.get(placeholder.field.lower())
            value = None if key is None else values[key]
            if placeholder.default is not None and not value:
                out.append(placeholder.default)
            elif value is not None:
                out.append(value)
            else:
                raise TemplateError(
                    f"the event has no {placeholder.field}",
                    hint=f"Add a fallback in the routes file, e.g. '{{{{ {placeholder.field} | none }}}}', "
                    "or filter the route on it with 'exists'.",
                )
            out.append(literal)
        return "".join(out)


def parse_template(text: str) -> Template:
    """Split ``text``; raise ``ValueError`` naming the bad placeholder (the caller adds file and route)."""
    literals: list[str] = []
    placeholders: list[Placeholder] = []
    position = 0
    for match in _PLACEHOLDER.finditer(text):
        field = match.group(1)
        if not _FIELD.match(field):
            raise ValueError(f"'{{{{ {field} }}}}' is not a field name")
        literals.append(text[position:match.start()])
        placeholders.append(Placeholder(field, match.group(2)))
        position = match.end()
    literals.append(text[position:])
    for literal in literals:
        if "{{" in literal or "}}" in literal:
            raise ValueError(f"unbalanced '{{{{' or '}}}}' in {text!r}")
    return Template(text, tuple(literals), tuple(placeholders))
