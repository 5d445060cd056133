"""Render a command component's ``command`` as AML does before running it on the compute.

AML-COMPONENT.md §1: ``${{inputs.<name>}}`` / ``${{outputs.<name>}}`` become the input's value (an asset
input: its local mount path; a primitive: its literal) and the output's local path; a ``$[[ ... ]]`` block
is dropped when an optional input inside it was not supplied, else kept without the brackets. What the
service refuses at submit time is refused here too: an undeclared name, an input given that the component
does not declare, a required input left out (outside a ``$[[ ]]`` block). Booleans render as ``True`` /
``False`` (Python's ``str``, which is what the SDK serialises); that detail is not documented.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_REF = re.compile(r"\$\{\{\s*(inputs|outputs)\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_OPTIONAL = re.compile(r"\$\[\[(.*?)\]\]", re.DOTALL)


class CommandError(ValueError):
    """The command cannot be rendered with these inputs (AML would refuse the job)."""


def render_command(component: Mapping[str, Any], inputs: Mapping[str, Any], outputs: Mapping[str, str]) -> str:
    declared_in: Mapping[str, Any] = component.get("inputs") or {}
    declared_out: Mapping[str, Any] = component.get("outputs") or {}
    unknown = sorted(set(inputs) - set(declared_in)) + sorted(set(outputs) - set(declared_out))
    if unknown:
        raise CommandError(f"not declared by the component: {', '.join(unknown)}")
    values: dict[tuple[str, str], str | None] = {}
    for name, spec in declared_in.items():
        value = inputs.get(name, (spec or {}).get("default"))
        values[("inputs", name)] = None if value is None else _literal(value)
    for name in declared_out:
        values[("outputs", name)] = outputs.get(name)

    def lookup(match: re.Match[str]) -> str | None:
        key = (match.group(1), match.group(2))
        if key not in values:
            raise CommandError(f"{key[0]}.{key[1]} is not declared by the component")
        return values[key]

    def optional(block: re.Match[str]) -> str:
        inner = block.group(1)
        refs = list(_REF.finditer(inner))
        if not refs:
            raise CommandError(f"$[[{inner}]] refers to no input")
        if any(lookup(ref) is None for ref in refs):
            return ""
        return _REF.sub(lambda m: str(lookup(m)), inner)

    def required(match: re.Match[str]) -> str:
        value = lookup(match)
        if value is None:
            raise CommandError(f"{match.group(1)}.{match.group(2)} is required by the command but not supplied")
        return value

    text = _OPTIONAL.sub(optional, str(component["command"]))
    return " ".join(_REF.sub(required, text).split())


def _literal(value: Any) -> str:
    return str(value)
