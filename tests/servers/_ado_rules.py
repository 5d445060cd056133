"""ADO's rules for "Runs - Run Pipeline" that the 7.1 swagger does not state.

Kept apart from the server so the rules read as a list. Each is a rejection the real
service makes; messages are ADO's where they are publicly known (settable variables,
"Unexpected parameter") and ADO-styled paraphrases otherwise, so tests should match on the
status and a stable fragment, not on whole messages.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from ._base import RecordedRequest, Reply

ADO_RESOURCE = "499b84ac-1321-427f-aa17-267ca6975798"
VSS = "Microsoft.VisualStudio.Services.WebApi"
TFS = "Microsoft.TeamFoundation.Framework.Server"
PIPES = "Microsoft.Azure.Pipelines.WebApi"


@dataclass(frozen=True)
class PipelineDef:
    """What ADO knows about a pipeline that decides whether a queue request is accepted."""

    name: str
    folder: str = "\\"
    variables_settable_at_queue_time: AbstractSet[str] = frozenset()
    template_parameters: AbstractSet[str] = frozenset()
    stages: AbstractSet[str] = frozenset()
    required_template_parameters: AbstractSet[str] = frozenset()
    repositories: AbstractSet[str] = frozenset({"self"})
    revision: int = 1
    default_ref: str = "refs/heads/main"
    parameter_types: Mapping[str, str] = field(default_factory=dict)
    """YAML ``parameters[].type`` by name: ``boolean``, ``number`` or ``string`` (the default)."""
    parameter_values: Mapping[str, AbstractSet[str]] = field(default_factory=dict)
    """YAML ``parameters[].values``: the only values ADO accepts for that parameter."""


class AdoError(Exception):
    """An ADO-shaped error answer; raised inside request processing, turned into a Reply."""

    def __init__(self, status: int, message: str, type_key: str, namespace: str = PIPES,
                 headers: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status, self.message, self.type_key = status, message, type_key
        self.namespace, self.headers = namespace, list(headers)

    def reply(self) -> Reply:
        return Reply.json(self.status, error_body(self.message, self.type_key, self.namespace), self.headers)


def error_body(message: str, type_key: str, namespace: str = PIPES) -> dict[str, Any]:
    """ADO's wrapped-exception JSON, as every 4xx/5xx from the REST surface carries."""
    assembly = "mscorlib" if namespace == "System" else namespace
    type_name = f"{namespace}.{type_key}, {assembly}"
    return {"$id": "1", "innerException": None, "message": message, "typeName": type_name,
            "typeKey": type_key, "errorCode": 0, "eventId": 3000}


def ok(payload: Any) -> Reply:
    return Reply.json(200, payload, content_type="application/json; charset=utf-8; api-version=7.1")


def rate_limit_headers(retry_after: int, *, delay: float) -> list[tuple[str, str]]:
    return [("Retry-After", str(retry_after)), ("X-RateLimit-Resource", "Pipelines"),
            ("X-RateLimit-Delay", f"{delay:.3f}"), ("X-RateLimit-Limit", "200"),
            ("X-RateLimit-Remaining", "0"), ("X-RateLimit-Reset", str(int(time.time()) + retry_after))]


def route(request: RecordedRequest) -> tuple[str, str, str, str | None] | None:
    """Split ``/{org}/{project}/_apis/pipelines/{id}/runs[/{runId}]``; ADO routes are case-insensitive."""
    parts = [unquote(p) for p in request.path.strip("/").split("/")]
    if len(parts) not in (6, 7) or [p.lower() for p in parts[2:4]] != ["_apis", "pipelines"]:
        return None
    if parts[5].lower() != "runs" or not parts[0] or not parts[1]:
        return None
    return parts[0], parts[1], parts[4], (parts[6] if len(parts) == 7 else None)


def parse_body(request: RecordedRequest) -> dict[str, Any]:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise AdoError(415, f"The request entity's media type '{media or '(none)'}' is not supported for this "
                       "resource.", "VssRequestContentException", VSS)
    if request.json is None:
        # Unparseable or empty bodies deserialise to null, and ADO then complains about the argument.
        raise AdoError(400, "Value cannot be null.\r\nParameter name: runParameters", "ArgumentNullException",
                       "System")
    body: dict[str, Any] = request.json
    return body


def check_queue_rules(pdef: PipelineDef, body: dict[str, Any]) -> None:
    """The queue-time checks ADO makes that the swagger cannot express."""
    if "yamlOverride" in body and not body.get("previewRun"):
        raise _invalid("yamlOverride can only be used together with previewRun.")
    resources = body.get("resources") or {}
    for name, repo in (resources.get("repositories") or {}).items():
        if name not in pdef.repositories:
            raise _invalid(f"Repository resource '{name}' is not defined by pipeline '{pdef.name}'; "
                           f"known repository resources: {', '.join(sorted(pdef.repositories))}.")
        ref = repo.get("refName")
        if ref is not None and not ref.startswith("refs/"):
            raise _invalid(f"The refName '{ref}' of repository '{name}' must be a full ref starting with 'refs/'.")
    for kind in ("builds", "containers", "packages", "pipelines"):
        for name in resources.get(kind) or {}:
            raise _invalid(f"Resource '{name}' of type '{kind}' is not defined by pipeline '{pdef.name}'.")
    missing_stages = [s for s in body.get("stagesToSkip") or [] if s not in pdef.stages]
    if missing_stages:
        raise _invalid(f"Stage {', '.join(missing_stages)} can't be skipped: no such stage in pipeline "
                       f"'{pdef.name}'.")
    params = body.get("templateParameters") or {}
    for name in params:
        if name not in pdef.template_parameters:
            raise _invalid(f"/azure-pipelines.yml: Unexpected parameter '{name}'")
    for name, value in params.items():
        kind = pdef.parameter_types.get(name, "string")
        text = value if isinstance(value, str) else str(value)
        if kind == "boolean" and text.lower() not in ("true", "false"):
            raise _invalid(f"/azure-pipelines.yml: The '{name}' parameter is not a valid Boolean.")
        if kind == "number" and not _is_number(text):
            raise _invalid(f"/azure-pipelines.yml: The '{name}' parameter is not a valid Number.")
        allowed = pdef.parameter_values.get(name)
        if allowed is not None and text not in allowed:
            raise _invalid(f"/azure-pipelines.yml: The '{name}' parameter value '{text}' is not a valid value.")
    for name in sorted(pdef.required_template_parameters - params.keys()):
        raise _invalid(f"A value for the '{name}' parameter must be provided.")
    settable = {v.lower() for v in pdef.variables_settable_at_queue_time}
    refused = [v for v in body.get("variables") or {} if v.lower() not in settable]
    if refused:
        raise _invalid(f"You can't set the following variables ({', '.join(refused)}). If you want to be able to "
                       "set these variables, then edit the pipeline and select Settable at queue time on the "
                       "variables tab of the pipeline editor.")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return text.strip() == text and text.lower() not in ("nan", "inf", "-inf", "infinity", "-infinity")


def _invalid(message: str) -> AdoError:
    return AdoError(400, message, "PipelineValidationException")


def final_yaml(pdef: PipelineDef, body: dict[str, Any]) -> str:
    if "yamlOverride" in body:
        return str(body["yamlOverride"])
    params = "".join(f"  {k}: {v}\n" for k, v in sorted((body.get("templateParameters") or {}).items()))
    return f"# {pdef.name}\nparameters:\n{params}stages:\n" + "".join(f"- stage: {s}\n" for s in sorted(pdef.stages))
