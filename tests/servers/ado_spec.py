"""The ADO Pipelines 7.1 swagger, turned into JSON Schemas the fake validates with.

The schemas are derived from the vendored spec at import time rather than hand-copied,
so a fixture update is the only way the fake's notion of "valid" can change.
"""

from __future__ import annotations

import copy
import json
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from jsonschema import Draft4Validator

SPEC_PATH = Path(__file__).resolve().parent.parent / "fixtures" / "ado" / "pipelines-7.1.json"
RUN_PIPELINE_PATH = "/{organization}/{project}/_apis/pipelines/{pipelineId}/runs"
_INT32 = (-(2**31), 2**31 - 1)


@lru_cache(maxsize=1)
def load_spec() -> dict[str, Any]:
    """The swagger document (it starts with a BOM, hence ``utf-8-sig``)."""
    spec: dict[str, Any] = json.loads(SPEC_PATH.read_text(encoding="utf-8-sig"))
    return spec


def _convert(node: Any) -> Any:
    """Translate the swagger 2.0 dialect into JSON Schema draft 4.

    Two rules beyond a plain copy:

    * ``format: int32`` becomes a range: the service deserialises into Int32 and rejects
      anything wider, which draft 4 would otherwise let through.
    * A bare ``{"type": "object"}`` is what the VSS swagger generator emits for .NET
      ``object`` (e.g. ``Run.templateParameters`` values, which the service echoes as
      strings). It means "any JSON value", so it becomes ``{}``. No request-side
      definition reachable from ``RunPipelineParameters`` contains one, so request
      validation is not loosened by this.
    """
    if isinstance(node, list):
        return [_convert(item) for item in node]
    if not isinstance(node, dict):
        return node
    if node.get("type") == "object" and not {"properties", "additionalProperties", "allOf", "$ref"} & node.keys():
        return {k: v for k, v in node.items() if k == "description"}
    out = {k: _convert(v) for k, v in node.items() if not k.startswith("x-ms-")}
    if out.get("type") == "integer" and out.get("format") == "int32":
        out.setdefault("minimum", _INT32[0])
        out.setdefault("maximum", _INT32[1])
    return out


@cache
def schema_for(definition: str) -> dict[str, Any]:
    """A self-contained JSON Schema for ``#/definitions/<definition>``.

    All swagger ``definitions`` are embedded so that ``#/definitions/X`` refs resolve
    against the root of the returned schema, exactly as they do in the swagger file.
    """
    definitions = load_spec()["definitions"]
    if definition not in definitions:
        raise KeyError(f"{definition!r} is not a definition in {SPEC_PATH.name}")
    return {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "$ref": f"#/definitions/{definition}",
        "definitions": _convert(copy.deepcopy(definitions)),
    }


@cache
def validator_for(definition: str) -> Draft4Validator:
    schema = schema_for(definition)
    Draft4Validator.check_schema(schema)
    return Draft4Validator(schema)


def errors(definition: str, instance: Any) -> list[str]:
    """Human-readable violations of ``definition`` by ``instance`` (empty if valid)."""
    found = sorted(validator_for(definition).iter_errors(instance), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '(body)'}: {e.message}" for e in found]


def operation(path: str, method: str) -> dict[str, Any]:
    op: dict[str, Any] = load_spec()["paths"][path][method]
    return op


def api_version_values() -> frozenset[str]:
    """The api-version values the spec allows.

    The spec's shared ``api-Version`` parameter says: "This should be set to '7.1' to use
    this version of the api." The fake accepts exactly that, and checks here that the
    vendored spec still says so rather than trusting a constant.
    """
    param = load_spec()["parameters"]["api-Version"]
    if param["name"] != "api-version" or param["in"] != "query" or not param["required"]:
        raise AssertionError(f"unexpected api-Version parameter in spec: {param}")
    if "'7.1'" not in param["description"]:
        raise AssertionError(f"spec no longer pins api-version 7.1: {param['description']!r}")
    return frozenset({"7.1"})
