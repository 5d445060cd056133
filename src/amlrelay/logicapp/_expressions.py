"""Evaluator for the WDL functions the generated workflow uses, with the documented semantics.

Semantics follow the function reference (LOGICAPPS.md §1-2, FN) where it speaks, and are chosen to be the
*stricter* reading where it is silent, so a workflow that passes here does not lean on lenient behaviour:

* ``x?['k']`` on a missing key or a null ``x`` is null; ``x['k']`` fails ("property 'k' doesn't exist");
* in comparisons null counts as ``''`` (``equals(null, '')`` is true); ``equals`` is case-sensitive for
  strings and lenient across number/bool (``equals(true, 1)``); ``startsWith``/``endsWith`` ignore case,
  ``contains``/``replace`` do not;
* ``if`` evaluates *both* branches (as reported for the service), so a branch not taken must not fail;
* ``and``/``or``/``not`` take booleans only; ``concat`` needs two or more arguments.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Protocol
from urllib.parse import quote

from ._datetimes import format_timestamp, parse_timestamp, ticks
from ._wdl import Access, Call, ExpressionError, Literal, Node, Template, parse_template


class Context(Protocol):
    """What expressions can see: the run's trigger, parameters, variables, actions and loop items."""

    def trigger_outputs(self) -> dict[str, Any]: ...

    def parameter(self, name: str) -> Any: ...

    def variable(self, name: str) -> Any: ...

    def action(self, name: str) -> dict[str, Any]: ...

    def loop_item(self, name: str | None) -> Any: ...

    def workflow(self) -> dict[str, Any]: ...

    def now(self) -> datetime: ...


def evaluate_value(value: Any, ctx: Context) -> Any:
    """Evaluate a definition JSON value: ``@``-strings become their results, recursively."""
    if isinstance(value, str):
        return evaluate_template(parse_template(value), ctx)
    if isinstance(value, dict):
        return {k: evaluate_value(v, ctx) for k, v in value.items()}
    if isinstance(value, list):
        return [evaluate_value(v, ctx) for v in value]
    return value


def evaluate_template(template: Template, ctx: Context) -> Any:
    if template.kind == "text":
        return template.parts[0]
    if template.kind == "expression":
        node = template.parts[0]
        assert not isinstance(node, str)
        return evaluate(node, ctx)
    return "".join(p if isinstance(p, str) else _text(evaluate(p, ctx)) for p in template.parts)


def evaluate(node: Node, ctx: Context) -> Any:
    if isinstance(node, Literal):
        return node.value
    if isinstance(node, Access):
        return _access(evaluate(node.target, ctx), evaluate(node.key, ctx), node.safe)
    assert isinstance(node, Call)
    name = node.name.lower()
    function = _FUNCTIONS.get(name)
    if function is None:
        raise ExpressionError(f"the template function '{node.name}' is not defined or not valid")
    args = [evaluate(a, ctx) for a in node.args]  # eager, 'if' included (see module docstring)
    return function(ctx, *args)


def _access(target: Any, key: Any, safe: bool) -> Any:
    if target is None:
        if safe:
            return None
        raise ExpressionError(f"cannot select property '{key}' of a null value; use '?[' to allow null")
    if isinstance(target, dict):
        if key in target:
            return target[key]
        if safe:
            return None
        raise ExpressionError(f"property '{key}' doesn't exist, available properties are {', '.join(target)}")
    if isinstance(target, list) and isinstance(key, int) and not isinstance(key, bool):
        if 0 <= key < len(target):
            return target[key]
        if safe:
            return None
        raise ExpressionError(f"array index {key} is out of range (length {len(target)})")
    raise ExpressionError(f"cannot take {key!r} of a value of type {_type(target)}")


def _text(value: Any) -> str:
    """``string()`` and interpolation: null is '', strings stay, everything else is its JSON text."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e15 else repr(value)
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _type(value: Any) -> str:
    return {dict: "Object", list: "Array", str: "String", bool: "Boolean", int: "Integer", float: "Float",
            type(None): "Null"}.get(type(value), type(value).__name__)


def _comparable(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    return value


def _equals(_: Context, a: Any, b: Any) -> bool:
    a, b = _comparable(a), _comparable(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return bool(a == b)


def _string_arg(function: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ExpressionError(f"the template function '{function}' expects a string, got {_type(value)}")
    return value


def _bool_args(function: str, values: tuple[Any, ...]) -> list[bool]:
    for value in values:
        if not isinstance(value, bool):
            raise ExpressionError(f"the template function '{function}' expects booleans, got {_type(value)}")
    return list(values)


def _concat(_: Context, *values: Any) -> str:
    if len(values) < 2:
        raise ExpressionError("the template function 'concat' needs at least two arguments")
    return "".join(_text(v) for v in values)


def _contains(_: Context, collection: Any, value: Any) -> bool:
    if isinstance(collection, str):
        return _text(value) in collection
    if isinstance(collection, list):
        return any(_equals(_, item, value) for item in collection)
    if isinstance(collection, dict):
        return value in collection
    raise ExpressionError(f"the template function 'contains' expects a string, array or object, "
                          f"got {_type(collection)}")


def _coalesce(_: Context, *values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _json(_: Context, value: Any) -> Any:
    text = _string_arg("json", value)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ExpressionError(f"the template function 'json' got text that is not JSON: {exc}") from None


def _int(_: Context, value: Any) -> int:
    try:
        return int(value if not isinstance(value, str) else value.strip())
    except (TypeError, ValueError):
        raise ExpressionError(f"the template function 'int' cannot convert {value!r}") from None


def _number(function: str, value: Any) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ExpressionError(f"the template function '{function}' expects numbers, got {_type(value)}")
    return value


def _skip(_: Context, collection: Any, count: Any) -> list[Any]:
    """FN: the items after the first ``count`` (an array only here: the generator skips nothing else)."""
    if not isinstance(collection, list) or isinstance(count, bool) or not isinstance(count, int):
        raise ExpressionError("the template function 'skip' expects an array and an integer here")
    return collection[max(count, 0):]


def _length(_: Context, value: Any) -> int:
    if isinstance(value, (str, list, dict)):
        return len(value)
    raise ExpressionError(f"the template function 'length' expects a string or array, got {_type(value)}")


def _substring(_: Context, text: Any, start: Any, length: Any = None) -> str:
    value = _string_arg("substring", text)
    end = len(value) if length is None else start + length
    if start < 0 or end > len(value) or end < start:
        raise ExpressionError("the template function 'substring': start and length must stay inside the string")
    return value[start:end]


def _intersection(_: Context, *collections: Any) -> list[Any]:
    if len(collections) < 2 or not all(isinstance(c, list) for c in collections):
        raise ExpressionError("the template function 'intersection' expects two or more arrays here")
    out: list[Any] = []
    for item in collections[0]:
        if all(any(_equals(_, item, other) for other in c) for c in collections[1:]) and item not in out:
            out.append(item)
    return out


def _union(_: Context, *collections: Any) -> list[Any]:
    if len(collections) < 2 or not all(isinstance(c, list) for c in collections):
        raise ExpressionError("the template function 'union' expects two or more arrays here")
    out: list[Any] = []
    for collection in collections:
        out.extend(item for item in collection if item not in out)
    return out


def _remove_property(_: Context, obj: Any, name: Any) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ExpressionError(f"the template function 'removeProperty' expects an object, got {_type(obj)}")
    return {k: v for k, v in obj.items() if k != name}


def _set_property(_: Context, obj: Any, name: Any, value: Any) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ExpressionError(f"the template function 'setProperty' expects an object, got {_type(obj)}")
    return {**obj, _string_arg("setProperty", name): value}


def _timestamp(value: Any) -> datetime:
    return parse_timestamp(_string_arg("timestamp", value))


def _add_seconds(_: Context, value: Any, seconds: Any, fmt: str = "o") -> str:
    return format_timestamp(_timestamp(value) + timedelta(seconds=_number("addSeconds", seconds)), fmt)


def _base64(_: Context, value: Any) -> str:
    return base64.b64encode(_text(value).encode("utf-8")).decode("ascii")


def _replace(_: Context, text: Any, old: Any, new: Any) -> str:
    return _string_arg("replace", text).replace(_string_arg("replace", old), _text(new))


def _items(ctx: Context, name: Any) -> Any:
    return ctx.loop_item(_string_arg("items", name))


def _body(ctx: Context, name: Any) -> Any:
    return _outputs(ctx, name).get("body")


def _outputs(ctx: Context, name: Any) -> dict[str, Any]:
    outputs = ctx.action(_string_arg("outputs", name)).get("outputs")
    return outputs if isinstance(outputs, dict) else {}


def _starts(function: str, text: Any, part: Any) -> bool:
    """startsWith/endsWith: "not case-sensitive" (FN)."""
    value, piece = _string_arg(function, text).lower(), _string_arg(function, part).lower()
    return value.startswith(piece) if function == "startsWith" else value.endswith(piece)


def _first(_: Context, value: Any) -> Any:
    if isinstance(value, (str, list)):
        return value[0] if value else None
    raise ExpressionError(f"the template function 'first' expects a string or array, got {_type(value)}")


def _last(_: Context, value: Any) -> Any:
    if isinstance(value, (str, list)):
        return value[-1] if value else None
    raise ExpressionError(f"the template function 'last' expects a string or array, got {_type(value)}")


def _empty(_: Context, value: Any) -> bool:
    if isinstance(value, (str, list, dict)):
        return len(value) == 0
    raise ExpressionError(f"the template function 'empty' expects a string, array or object, got {_type(value)}")


def _if(_: Context, condition: Any, yes: Any, no: Any) -> Any:
    if not isinstance(condition, bool):
        raise ExpressionError(f"the template function 'if' expects a boolean condition, got {_type(condition)}")
    return yes if condition else no


def _less(_: Context, a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a < b
    return _number("less", a) < _number("less", b)


def _min(_: Context, *values: Any) -> Any:
    items = values[0] if len(values) == 1 and isinstance(values[0], list) else values
    return min(_number("min", v) for v in items)


_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "equals": _equals,
    "and": lambda _, *v: all(_bool_args("and", v)),
    "or": lambda _, *v: any(_bool_args("or", v)),
    "not": lambda _, v: not _bool_args("not", (v,))[0],
    "if": _if,
    "concat": _concat,
    "contains": _contains,
    "coalesce": _coalesce,
    "string": lambda _, v: _text(v),
    "json": _json,
    "int": _int,
    "tolower": lambda _, v: _string_arg("toLower", v).lower(),
    "toupper": lambda _, v: _string_arg("toUpper", v).upper(),
    "trim": lambda _, v: _string_arg("trim", v).strip(),
    "startswith": lambda _, t, p: _starts("startsWith", t, p),
    "endswith": lambda _, t, p: _starts("endsWith", t, p),
    "replace": _replace,
    "split": lambda _, t, d: _string_arg("split", t).split(_string_arg("split", d)),
    "substring": _substring,
    "length": _length,
    "first": _first,
    "last": _last,
    "empty": _empty,
    "add": lambda _, a, b: _number("add", a) + _number("add", b),
    "sub": lambda _, a, b: _number("sub", a) - _number("sub", b),
    "min": _min,
    "less": _less,
    "greater": lambda c, a, b: _less(c, b, a),
    "createarray": lambda _, *v: list(v),
    "intersection": _intersection,
    "skip": _skip,
    "setproperty": _set_property,
    "removeproperty": _remove_property,
    "union": _union,
    "base64": _base64,
    "uricomponent": lambda _, v: quote(_text(v), safe=""),
    "utcnow": lambda ctx, fmt="o": format_timestamp(ctx.now(), fmt),
    "addseconds": _add_seconds,
    "ticks": lambda _, v: ticks(_timestamp(v)),
    "formatdatetime": lambda _, v, fmt="o": format_timestamp(_timestamp(v), fmt),
    "guid": lambda _: str(uuid.uuid4()),
    "triggerbody": lambda ctx: ctx.trigger_outputs().get("body"),
    "triggeroutputs": lambda ctx: ctx.trigger_outputs(),
    "parameters": lambda ctx, n: ctx.parameter(_string_arg("parameters", n)),
    "variables": lambda ctx, n: ctx.variable(_string_arg("variables", n)),
    "items": _items,
    "item": lambda ctx: ctx.loop_item(None),
    "body": _body,
    "outputs": _outputs,
    "actions": lambda ctx, n: ctx.action(_string_arg("actions", n)),
    "workflow": lambda ctx: ctx.workflow(),
}

FUNCTION_NAMES = frozenset(_FUNCTIONS)
"""Lower-cased names of the functions this evaluator implements (the generator may emit no others)."""


def function_names(node: Node) -> set[str]:
    """Every function a parsed expression calls, lower-cased (checked against :data:`FUNCTION_NAMES`)."""
    if isinstance(node, Call):
        return {node.name.lower()}.union(*(function_names(a) for a in node.args))
    if isinstance(node, Access):
        return function_names(node.target) | function_names(node.key)
    return set()
