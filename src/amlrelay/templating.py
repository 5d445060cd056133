"""``{{ field }}`` templates in route values: parsed once at load time, rendered per event.

The syntax is deliberately tiny so it translates one-to-one into Logic App expressions and stays
readable in a routes file: ``{{ runId }}``, ``{{ runTags.stage }}``, and a literal fallback after a bar,
``{{ runTags.branch | main }}``. A field without a fallback that the event lacks is an error, never a
silent empty string: an empty variable would start the wrong pipeline run.
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
        """Fill the placeholders; ``values`` keys are matched case-insensitively."""
        index = lower_index if lower_index is not None else {k.lower(): k for k in values}
        out = [self.literals[0]]
        for placeholder, literal in zip(self.placeholders, self.literals[1:], strict=True):
            key = index.get(placeholder.field.lower())
            if key is not None:
                out.append(values[key])
            elif placeholder.default is not None:
                out.append(placeholder.default)
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
