"""Strict stand-in for the AML jobs REST API under ARM (``Jobs_Get``, ``Jobs_Cancel``, model versions,
workspace GET), following tests/fixtures/aml/mfe.2025-09-01.jobs-excerpt.json and AML-JOBS.md.

What it refuses, as ARM does: a missing or non-bearer ``Authorization`` header, a token that is not one the
identity stand-in minted (tampered), one for another audience than ARM (with ARM's
``InvalidAuthenticationTokenAudience`` wording), an expired one, a missing or unsupported ``api-version``,
an unknown workspace (``ResourceNotFound``) or job (404), a method the path does not have (405), and
identities with no role (403 ``AuthorizationFailed``). ARM matches the fixed path segments, subscription,
resource group and workspace case-insensitively, but the job id is case-sensitive (spec: "This is
case-sensitive"). Statuses come from the spec's ``JobStatus`` enum; ``set_status`` refuses a typo unless a
test asks for an unknown value on purpose (the enum is ``modelAsString``). Error bodies are ARM's
``{"error": {"code", "message"}}``.

Cancel follows the spec: 202 with ``Location`` and ``Retry-After`` (10..600 s) while the job passes through
``CancelRequested``; it reaches ``Canceled`` after ``cancel_polls`` further GETs. Cancelling a job that is
already final is a no-op 200 (the behaviour third-party clients report; not verified against the service).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from ._base import Fault, LoopbackServer, RecordedRequest, Reply
from ._jwt import decode_claims
from .tls import TlsMaterial

__all__ = ["ARM_AUDIENCES", "ARM_RESOURCE", "AmlServer", "spec_job_statuses"]

SPEC = Path(__file__).resolve().parent.parent / "fixtures" / "aml" / "mfe.2025-09-01.jobs-excerpt.json"
ARM_RESOURCE = "https://management.azure.com"
ARM_AUDIENCES = ("https://management.core.windows.net/", "https://management.core.windows.net",
                 "https://management.azure.com/", "https://management.azure.com")
"""The audiences ARM lists in its InvalidAuthenticationTokenAudience message."""
API_VERSIONS = frozenset({"2023-04-01", "2023-04-01-preview", "2023-10-01", "2024-01-01-preview", "2024-04-01",
                          "2024-10-01", "2025-01-01-preview", "2025-04-01", "2025-06-01", "2025-09-01",
                          "2025-10-01-preview", "2025-12-01"})
"""The versions AML-JOBS.md lists as existing, plus 2025-01-01-preview, which azure-ai-ml 1.35.2 sends for
``jobs.create_or_update`` (seen in tests/test_aml_wait.py's SDK submission test)."""
_FINAL = frozenset({"Completed", "Failed", "Canceled"})
_PREFIX = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/"
    r"Microsoft\.MachineLearningServices/workspaces/(?P<ws>[^/]+)(?P<rest>/.*)?$", re.IGNORECASE)


def spec_job_statuses() -> tuple[str, ...]:
    spec = json.loads(SPEC.read_text(encoding="utf-8"))
    return tuple(spec["definitions"]["JobStatus"]["enum"])


def _job_id_pattern() -> re.Pattern[str]:
    spec = json.loads(SPEC.read_text(encoding="utf-8"))
    path = next(p for p in spec["paths"] if p.endswith("/jobs/{id}"))
    param = next(p for p in spec["paths"][path]["put"]["parameters"] if p.get("name") == "id")
    return re.compile(param["pattern"])


@dataclass
class _Job:
    name: str
    status: str
    experiment_name: str
    tags: dict[str, str]
    properties: dict[str, str]
    job_type: str
    display_name: str
    studio: bool
    cancel_countdown: int | None = None
    created: str = "2026-01-01T00:00:00.000Z"
    submitted: dict[str, Any] = field(default_factory=dict)
    """The properties a PUT sent (command, environmentId, inputs...), echoed back as AML does."""


@dataclass
class _ModelVersion:
    name: str
    version: str
    tags: dict[str, str]
    properties: dict[str, str] = field(default_factory=dict)


class AmlServer(LoopbackServer):
    """Workspace ``workspace`` in ``resource_group`` of ``subscription``, served at :attr:`arm_url`."""

    def __init__(self, *, subscription: str = "00000000-1111-2222-3333-444444444444",
                 resource_group: str = "rg-contoso-ml", workspace: str = "mlw-contoso",
                 bearer_tokens: set[str] | None = None, api_versions: frozenset[str] = API_VERSIONS,
                 cancel_polls: int = 1, studio_host: str = "https://ml.azure.com",
                 tracking_uri: str | None = None, tls: TlsMaterial | None = None,
                 own_audience: bool = False) -> None:
        """``tls`` serves HTTPS (azure-core refuses bearer tokens over http); ``own_audience`` also accepts
        tokens for this server's own URL, as a sovereign or custom cloud's ARM accepts its endpoint."""
        super().__init__(ssl_context=tls.server_context() if tls is not None else None)
        if tls is not None:
            self.scheme = "https"
        self.own_audience = own_audience
        self.subscription, self.resource_group, self.workspace = subscription, resource_group, workspace
        self.api_versions = api_versions
        self.cancel_polls = cancel_polls
        self.studio_host = studio_host
        self.tracking_uri = tracking_uri or (f"azureml://westeurope.api.azureml.ms/mlflow/v1.0{self.workspace_id}")
        self._tokens = set(bearer_tokens) if bearer_tokens is not None else None
        self._forbidden: set[str] = set()
        self._jobs: dict[str, _Job] = {}
        self._models: dict[tuple[str, str], _ModelVersion] = {}
        self._statuses = frozenset(spec_job_statuses())
        self._job_id = _job_id_pattern()

    # -- test API -----------------------------------------------------------------------------------------
    @property
    def arm_url(self) -> str:
        return self.url

    @property
    def workspace_id(self) -> str:
        return (f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}/providers/"
                f"Microsoft.MachineLearningServices/workspaces/{self.workspace}")

    def add_job(self, name: str, status: str = "NotStarted", *, experiment_name: str = "Default",
                tags: dict[str, str] | None = None, properties: dict[str, str] | None = None,
                job_type: str = "Command", display_name: str | None = None, studio: bool = True) -> None:
        if not self._job_id.match(name):
            raise ValueError(f"{name!r} does not match the spec's job id pattern")
        self._check_status(status, allow_unknown=False)
        with self._lock:
            self._jobs[name] = _Job(name, status, experiment_name, dict(tags or {}), dict(properties or {}),
                                    job_type, display_name or name, studio)

    def set_status(self, name: str, status: str, *, allow_unknown: bool = False) -> None:
        self._check_status(status, allow_unknown=allow_unknown)
        with self._lock:
            self._jobs[name].status = status

    def status(self, name: str) -> str:
        with self._lock:
            return self._jobs[name].status

    def job_names(self) -> list[str]:
        with self._lock:
            return list(self._jobs)

    def job_tags(self, name: str) -> dict[str, str]:
        with self._lock:
            return dict(self._jobs[name].tags)

    def set_tag(self, name: str, key: str, value: str) -> None:
        """What MLflow ``runs/set-tag`` does to the job's tags (the run is the job)."""
        with self._lock:
            self._jobs[name].tags[key] = value

    def add_model_version(self, name: str, version: str | int, *, tags: dict[str, str] | None = None,
                          properties: dict[str, str] | None = None) -> None:
        with self._lock:
            self._models[(name, str(version))] = _ModelVersion(name, str(version), dict(tags or {}),
                                                               dict(properties or {}))

    def add_bearer_token(self, token: str) -> None:
        with self._lock:
            self._tokens = {*(self._tokens or set()), token}

    def forbid(self, object_id: str) -> None:
        """The identity with this object id has no role on the workspace (403 on every call)."""
        with self._lock:
            self._forbidden.add(object_id)

    def fail(self, status: int, times: int = 1, *, method: str = "*", retry_after: int | None = None) -> None:
        """Answer the next ``times`` requests with ``status`` (ARM error body, optional Retry-After)."""
        self._push_fault(Fault("fail", method, times, status=status, retry_after=retry_after))

    def job_gets(self, name: str | None = None) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "GET" and "/jobs/" in r.path
                and (name is None or r.path.endswith(f"/jobs/{name}"))]

    def cancels(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "POST" and r.path.endswith("/cancel")]

    def _check_status(self, status: str, *, allow_unknown: bool) -> None:
        if status not in self._statuses and not allow_unknown:
            raise ValueError(f"{status!r} is not a JobStatus of the spec: {sorted(self._statuses)}")

    # -- the service --------------------------------------------------------------------------------------
    def handle(self, request: RecordedRequest) -> Reply | None:
        fault = self._take_fault(request.method)
        if fault is not None and fault.kind == "fail":
            headers = [("Retry-After", str(fault.retry_after))] if fault.retry_after is not None else []
            return _error(fault.status, "ServiceUnavailable" if fault.status >= 500 else "TooManyRequests"
                          if fault.status == 429 else "BadRequest", f"Scripted {fault.status}.", headers)
        denied = self._authenticate(request)
        if denied is not None:
            return denied
        version = request.query.get("api-version")
        if not version:
            return _error(400, "MissingApiVersionParameter",
                          "The api-version query parameter (?api-version=) is required for all requests.")
        if version not in self.api_versions:
            return _error(400, "NoRegisteredProviderFound",
                          f"No registered resource provider found for location 'westeurope' and API version "
                          f"'{version}' for type 'workspaces'. The supported api-versions are "
                          f"'{', '.join(sorted(self.api_versions))}'.")
        match = _PREFIX.match(unquote(request.path))
        if match is None:
            return _error(404, "InvalidResourceNamespace" if "/providers/" in request.path else "NotFound",
                          f"The resource path '{request.path}' is not a Machine Learning workspace path.")
        if (match["sub"].lower(), match["rg"].lower(), match["ws"].lower()) != (
                self.subscription.lower(), self.resource_group.lower(), self.workspace.lower()):
            if match["sub"].lower() != self.subscription.lower():
                return _error(404, "SubscriptionNotFound", f"The subscription '{match['sub']}' could not be found.")
            return _error(404, "ResourceNotFound",
                          f"The Resource 'Microsoft.MachineLearningServices/workspaces/{match['ws']}' under "
                          f"resource group '{match['rg']}' was not found. For more details please go to "
                          "https://aka.ms/ARMResourceNotFoundFix")
        return self._route(request, match["rest"] or "")

    def _route(self, request: RecordedRequest, rest: str) -> Reply:
        parts = rest.strip("/").split("/") if rest.strip("/") else []
        method = request.method
        if not parts:
            return self._workspace_body() if method == "GET" else _method_not_allowed(method)
        if parts[0].lower() == "jobs" and len(parts) == 2:
            if method == "PUT":
                return self._put_job(parts[1], request.json)
            return self._get_job(parts[1]) if method == "GET" else _method_not_allowed(method)
        if parts[0].lower() == "jobs" and len(parts) == 3 and parts[2].lower() == "cancel":
            return self._cancel(parts[1]) if method == "POST" else _method_not_allowed(method)
        if parts[0].lower() == "models" and len(parts) == 4 and parts[2].lower() == "versions":
            return self._model_version(parts[1], parts[3]) if method == "GET" else _method_not_allowed(method)
        return _error(404, "NotFound", f"No HTTP resource was found that matches the request URI '{rest}'.")

    def _authenticate(self, request: RecordedRequest) -> Reply | None:
        header = request.headers.get("Authorization")
        if not header:
            return _error(401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing.")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return _error(401, "AuthenticationFailed",
                          "Authentication failed. The 'Authorization' header is provided in an invalid format.")
        claims = decode_claims(token)
        if claims is None:
            return _error(401, "InvalidAuthenticationToken", "The access token is invalid.")
        own = {self.url, f"{self.url}/"} if self.own_audience else set()
        if claims.get("aud") not in (*ARM_AUDIENCES, *own):
            return _error(401, "InvalidAuthenticationTokenAudience",
                          f"The access token has been obtained for wrong audience or resource '{claims.get('aud')}'."
                          " It should exactly match with one of the allowed audiences "
                          + ",".join(f"'{a}'" for a in ARM_AUDIENCES) + ".")
        if int(claims.get("exp", 0)) < time.time():
            return _error(401, "ExpiredAuthenticationToken",
                          "The access token expiry UTC time is earlier than current UTC time.")
        with self._lock:
            if self._tokens is not None and token not in self._tokens:
                return _error(401, "InvalidAuthenticationToken", "The access token is from the wrong issuer.")
            oid = str(claims.get("oid"))
            if oid in self._forbidden:
                action = "Microsoft.MachineLearningServices/workspaces/" + (
                    "jobs/write" if request.method == "POST" else "jobs/read")
                return _error(403, "AuthorizationFailed",
                              f"The client '{oid}' with object id '{oid}' does not have authorization to perform "
                              f"action '{action}' over scope '{self.workspace_id}' or the scope is invalid.")
        return None

    def _find(self, name: str) -> _Job | Reply:
        with self._lock:
            job = self._jobs.get(name)  # case-sensitive, as the spec says
        if job is None:
            return _error(404, "UserError", f"Could not find job '{name}' in workspace '{self.workspace}'.",
                          inner="NotFoundError")
        return job

    def _get_job(self, name: str) -> Reply:
        job = self._find(name)
        if isinstance(job, Reply):
            return job
        with self._lock:
            if job.cancel_countdown is not None:
                if job.cancel_countdown <= 0:
                    job.status, job.cancel_countdown = "Canceled", None
                else:
                    job.cancel_countdown -= 1
            return Reply.json(200, self._job_body(job))

    def _put_job(self, name: str, body: Any) -> Reply:
        """``Jobs_CreateOrUpdate``: the id pattern and the required ``properties.jobType`` of the spec; tags
        of an update *replace* the old ones (spec summary). 201 on create, 200 on update."""
        if not self._job_id.match(name):
            return _error(400, "UserError", f"The job name '{name}' is invalid: it must match "
                          f"{self._job_id.pattern}.", inner="ValidationError")
        props = body.get("properties") if isinstance(body, dict) else None
        if not isinstance(props, dict) or not isinstance(props.get("jobType"), str):
            return _error(400, "UserError", "The request body must be a JobBaseResource with properties.jobType.",
                          inner="ValidationError")
        tags = props.get("tags") or {}
        if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
            return _error(400, "UserError", "properties.tags must map strings to strings.", inner="ValidationError")
        with self._lock:
            existing = self._jobs.get(name)
            if existing is not None:
                existing.tags = dict(tags)
                job = existing
            else:
                job = _Job(name, "NotStarted", str(props.get("experimentName") or "Default"), dict(tags),
                           {k: str(v) for k, v in (props.get("properties") or {}).items()}, props["jobType"],
                           str(props.get("displayName") or name), True, submitted=dict(props))
                self._jobs[name] = job
            return Reply.json(200 if existing is not None else 201, self._job_body(job))

    def _cancel(self, name: str) -> Reply:
        job = self._find(name)
        if isinstance(job, Reply):
            return job
        with self._lock:
            if job.status in _FINAL:
                return Reply(200)
            job.status, job.cancel_countdown = "CancelRequested", self.cancel_polls
        location = f"{self.url}{self.workspace_id}/jobs/{name}"
        return Reply(202, b"", [("Location", location), ("Retry-After", "10")])

    def _job_body(self, job: _Job) -> dict[str, Any]:
        job_id = f"{self.workspace_id}/jobs/{job.name}"
        services: dict[str, Any] = {}
        if job.studio:
            services["Studio"] = {"jobServiceType": "Studio", "endpoint":
                                  f"{self.studio_host}/runs/{job.name}?wsid={self.workspace_id}"}
            services["Tracking"] = {"jobServiceType": "Tracking", "endpoint": self.tracking_uri}
        return {"id": job_id, "name": job.name, "type": "Microsoft.MachineLearningServices/workspaces/jobs",
                "properties": {**job.submitted, "jobType": job.job_type, "status": job.status,
                               "experimentName": job.experiment_name,
                               "displayName": job.display_name, "tags": dict(job.tags),
                               "properties": dict(job.properties), "services": services,
                               "computeId": f"{self.workspace_id}/computes/cpu-cluster", "isArchived": False},
                "systemData": {"createdAt": job.created, "createdBy": "contoso", "createdByType": "User"}}

    def _model_version(self, name: str, version: str) -> Reply:
        with self._lock:
            model = self._models.get((name, version))
        if model is None:
            return _error(404, "UserError", f"Could not find model version '{name}:{version}'.", inner="NotFoundError")
        return Reply.json(200, {"id": f"{self.workspace_id}/models/{name}/versions/{version}", "name": version,
                                "type": "Microsoft.MachineLearningServices/workspaces/models/versions",
                                "properties": {"tags": dict(model.tags), "properties": dict(model.properties),
                                               "modelType": "custom_model", "isArchived": False}})

    def _workspace_body(self) -> Reply:
        return Reply.json(200, {"id": self.workspace_id, "name": self.workspace, "location": "westeurope",
                                "type": "Microsoft.MachineLearningServices/workspaces",
                                "properties": {"mlFlowTrackingUri": self.tracking_uri,
                                               "discoveryUrl": "https://westeurope.api.azureml.ms/discovery"}})


def _method_not_allowed(method: str) -> Reply:
    return _error(405, "MethodNotAllowed", f"The requested resource does not support http method '{method}'.")


def _error(status: int, code: str, message: str, headers: list[tuple[str, str]] | None = None, *,
           inner: str | None = None) -> Reply:
    error: dict[str, Any] = {"code": code, "message": message}
    if inner:
        error["innerError"] = {"code": inner}
    return Reply.json(status, {"error": error}, headers or [])
