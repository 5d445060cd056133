"""Strict stand-in for Azure DevOps Pipelines "Runs - Run Pipeline" (api-version 7.1).

It rejects everything the real service rejects that amlrelay could plausibly get wrong:
the request body is checked against the vendored swagger, and the queue-time rules the
swagger does not state (settable variables, declared parameters/stages/repositories) are
enforced from a per-pipeline registry. A fake that is laxer than ADO would let the relay
ship requests that fail in production, which is the one thing these tests exist to stop.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from . import ado_spec
from ._ado_permissions import Permissions
from ._ado_rules import (
    ADO_RESOURCE,
    TFS,
    VSS,
    AdoError,
    PipelineDef,
    check_queue_rules,
    final_yaml,
    ok,
    parse_body,
    rate_limit_headers,
    route,
)
from ._base import Fault, LoopbackServer, RecordedRequest, Reply
from ._jwt import decode_claims
from .tls import TlsMaterial

__all__ = ["ADO_RESOURCE", "AdoError", "AdoServer", "PipelineDef"]

_FAIL_STATUSES = frozenset({400, 401, 403, 404, 429, 500, 502, 503, 504})
_INT32_MAX = 2**31 - 1


@dataclass
class _Run:
    project: str
    project_id: str
    pipeline_id: int
    body: dict[str, Any]
    secret_values: dict[str, str] = field(default_factory=dict)


class AdoServer(LoopbackServer):
    """ADO organisation ``organization`` at ``f"{server.url}/{organization}"``."""

    def __init__(
        self,
        organization: str = "contoso",
        *,
        pipelines: Mapping[tuple[str, int], PipelineDef] | None = None,
        bearer_tokens: Iterable[str] = (),
        pats: Iterable[str] = (),
        api_versions: Iterable[str] | None = None,
        first_run_id: int = 1,
        tls: TlsMaterial | None = None,
    ) -> None:
        super().__init__(ssl_context=tls.server_context() if tls is not None else None)
        if tls is not None:  # as dev.azure.com is served; the client trusts it through REQUESTS_CA_BUNDLE
            self.scheme = "https"
        self.organization = organization
        self._pipelines: dict[tuple[str, int], PipelineDef] = {}
        for (project, pid), pdef in (pipelines or {}).items():
            self.add_pipeline(project, pid, pdef)
        self._bearer = set(bearer_tokens)
        self._pats = set(pats)
        self._forbidden: set[str] = set()
        self.api_versions = frozenset(api_versions) if api_versions is not None else ado_spec.api_version_values()
        self._next_id = first_run_id
        self._runs: list[_Run] = []
        self.clock_offset = timedelta(0)
        """How far ADO's clock is ahead of the client's (negative: behind); run times and token checks use it."""
        self._entra_tokens = False
        self.permissions = Permissions(self)
        """ADO's permission rules (issue 9): identities registered there get only what was granted."""

    # -- configuration -----------------------------------------------------------------
    @property
    def org_url(self) -> str:
        return f"{self.url}/{self.organization}"

    def add_pipeline(self, project: str, pipeline_id: int, pipeline: PipelineDef) -> None:
        with self._lock:
            self._pipelines[(project, pipeline_id)] = pipeline

    def add_bearer_token(self, token: str) -> None:
        with self._lock:
            self._bearer.add(token)

    def add_pat(self, pat: str) -> None:
        with self._lock:
            self._pats.add(pat)

    def accept_entra_tokens(self) -> None:
        """Accept any Entra token for ADO the identity stand-ins mint (signature, ``aud`` and lifetime checked
        against ADO's clock), not only the fixed ones registered: for tokens with real lifetimes, where every
        refresh brings a new token and an expired one is refused (401)."""
        with self._lock:
            self._entra_tokens = True

    def now(self) -> datetime:
        """ADO's clock: the client's plus :attr:`clock_offset`."""
        return datetime.now(timezone.utc) + self.clock_offset

    def seed_run(self, project: str, pipeline_id: int, *, created: datetime | None = None,
                 variables: Mapping[str, str] | None = None, secret_variables: Mapping[str, str] | None = None,
                 template_parameters: Mapping[str, str] | None = None) -> dict[str, Any]:
        """A run that was already there: another outcome's, or one queued long ago (``created``, ADO's time).
        It must pass the same queue-time rules as a request; seed runs oldest first, before the test's own
        (ADO's run ids grow with time). Returns the run as ``GET .../runs/{id}`` shows it."""
        body: dict[str, Any] = {}
        if variables or secret_variables:
            body["variables"] = {**{k: {"value": v, "isSecret": False} for k, v in (variables or {}).items()},
                                 **{k: {"value": v, "isSecret": True} for k, v in (secret_variables or {}).items()}}
        if template_parameters:
            body["templateParameters"] = dict(template_parameters)
        name, pdef = self._lookup(self.organization, project, pipeline_id)
        check_queue_rules(pdef, body)
        reply = self._queue(name, pipeline_id, pdef, pdef.revision, body, created=created)
        run: dict[str, Any] = copy.deepcopy(self._runs[-1].body)
        assert reply.status == 200, reply.body
        return run

    def forbid(self, credential: str) -> None:
        """Authenticate ``credential`` (token or PAT) but deny it queue permission (403)."""
        with self._lock:
            self._forbidden.add(credential)

    @staticmethod
    def project_id(project: str) -> str:
        """The stable GUID the fake gives a project; ADO accepts name or ID in URLs."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"ado-project:{project.lower()}"))

    # -- fault injection ---------------------------------------------------------------
    def fail(self, status: int, retry_after: int | None = None, times: int = 1, *, method: str = "POST") -> None:
        """Answer the next ``times`` ``method`` calls with ``status`` and no side effect.

        Bodies and headers are ADO's for that status (429 carries the full rate-limit set,
        502/503 an HTML gateway page), so the client's error handling is what gets tested.
        """
        if status not in _FAIL_STATUSES:
            raise ValueError(f"fail() supports {sorted(_FAIL_STATUSES)}")
        self._push_fault(Fault("fail", method, times, status=status, retry_after=retry_after))

    def reset(self, times: int = 1, *, after_create: bool = False, method: str = "POST") -> None:
        """Read the request, then reset the connection; with ``after_create`` the run exists."""
        self._push_fault(Fault("reset", method, times, options={"after_create": after_create}))

    def delay(self, seconds: float, times: int = 1, *, method: str = "POST") -> None:
        """Hold the answer for ``seconds``, then process normally (a slow ADO still queues)."""
        self._push_fault(Fault("delay", method, times, seconds=seconds))

    def accept_then_fail(self, status: int = 500, times: int = 1) -> None:
        """Create the run (if the request is valid), then answer ``status``: the ambiguous case."""
        if status not in _FAIL_STATUSES:
            raise ValueError(f"accept_then_fail() supports {sorted(_FAIL_STATUSES)}")
        self._push_fault(Fault("accept_then_fail", "POST", times, status=status))

    def throttle_warning(self, retry_after: int = 1, times: int = 1, *, method: str = "POST") -> None:
        """Answer normally but with rate-limit headers: ADO asks clients to honour them even on 200."""
        self._push_fault(Fault("throttled_ok", method, times, retry_after=retry_after))

    def signin_page(self, times: int = 1, *, method: str = "POST") -> None:
        """Answer 203 with an HTML sign-in page, as ADO does for some unauthenticated calls."""
        self._push_fault(Fault("signin", method, times))

    # -- recording ---------------------------------------------------------------------
    @property
    def runs(self) -> list[dict[str, Any]]:
        """Created runs, oldest first, as ``GET .../runs/{id}`` returns them."""
        with self._lock:
            return [copy.deepcopy(r.body) for r in self._runs]

    def secret_value(self, run_id: int, name: str) -> str | None:
        """A secret variable's value: never echoed by ADO, but tests may need to check it."""
        with self._lock:
            return next((r.secret_values.get(name) for r in self._runs if r.body["id"] == run_id), None)

    @property
    def run_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "POST" and r.path.rstrip("/").endswith("/runs")]

    def reset_state(self) -> None:
        """Forget traffic, faults, runs and forbidden identities; run ids keep increasing."""
        with self._lock:
            super().reset_state()
            self._runs.clear()
            self._forbidden.clear()

    # -- request handling --------------------------------------------------------------
    def handle(self, request: RecordedRequest) -> Reply | None:
        fault = self._take_fault(request.method)
        if fault is not None and fault.kind == "fail":
            return self._scripted(fault.status, fault.retry_after)
        if fault is not None and fault.kind == "signin":
            page = b"<!DOCTYPE html><html><head><title>Azure DevOps Services | Sign In</title></head></html>"
            return Reply(203, page, [("Content-Type", "text/html; charset=utf-8")])
        if fault is not None and fault.kind == "reset" and not fault.options.get("after_create"):
            return None
        if fault is not None and fault.kind == "delay" and not self.sleep(fault.seconds):
            return None
        try:
            reply = self._process(request)
        except AdoError as exc:
            reply = exc.reply()
        if fault is None:
            return reply
        if fault.kind == "reset":
            return None
        if fault.kind == "accept_then_fail" and reply.status == 200:
            return self._scripted(fault.status, None)
        if fault.kind == "throttled_ok":
            reply.headers += rate_limit_headers(fault.retry_after or 1, delay=float(fault.retry_after or 1))
        return reply

    def _scripted(self, status: int, retry_after: int | None) -> Reply:
        headers: list[tuple[str, str]] = []
        if status == 429:
            retry_after = 1 if retry_after is None else retry_after
            headers = rate_limit_headers(retry_after, delay=0.0)
            message = ("TF400733: The request has been canceled: Request was blocked due to exceeding usage of "
                       "resource 'Pipelines' in namespace 'User'.")
            return AdoError(429, message, "RequestBlockedException", TFS, headers).reply()
        if retry_after is not None:
            headers.append(("Retry-After", str(retry_after)))
        if status in (502, 503, 504):
            page = f"<html><body><h1>{status}</h1><p>The service is unavailable.</p></body></html>".encode()
            return Reply(status, page, [("Content-Type", "text/html"), *headers])
        if status == 401:
            return self._unauthorized("VS30063: You are not authorized to access https://dev.azure.com.")
        keys = {400: "ArgumentException", 403: "AccessDeniedException", 404: "PipelineNotFoundException",
                500: "InternalServerErrorException"}
        return AdoError(status, f"Scripted {status} from the ADO stand-in.", keys[status], VSS, headers).reply()

    def _unauthorized(self, message: str) -> Reply:
        headers = [("WWW-Authenticate", "Bearer authorization_uri=https://login.microsoftonline.com/"
                    "00000000-0000-0000-0000-000000000000"),
                   ("WWW-Authenticate", 'Basic realm="https://dev.azure.com/"'),
                   ("WWW-Authenticate", "TFS-Federated")]
        return AdoError(401, message, "UnauthorizedRequestException", TFS, headers).reply()

    def _process(self, request: RecordedRequest) -> Reply:
        credential = self._authenticate(request)
        if credential is None:
            if "authorization" not in request.headers:
                return self._unauthorized("TF400813: Resource not available for anonymous access. "
                                          "Client authentication required.")
            return self._unauthorized("VS30063: You are not authorized to access https://dev.azure.com.")
        with self._lock:
            forbidden = credential in self._forbidden
        if forbidden:
            raise AdoError(403, "TF215106: Access denied. The caller needs Queue builds permissions for the "
                           "build pipeline to perform the action.", "AccessDeniedException", TFS)
        admin = self.permissions.handle_admin(request, credential)
        if admin is not None:
            return admin
        parts = route(request)
        if parts is None:
            raise AdoError(404, f"API resource location was not found for {request.path}.",
                           "VssResourceNotFoundException", VSS)
        org, project, pid_text, run_text = parts
        if request.method not in (("GET",) if run_text is not None else ("GET", "POST")):
            raise AdoError(405, f"The requested resource does not support http method '{request.method}'.",
                           "VssResourceNotFoundException", VSS)
        self._check_api_version(request)
        query = {k.lower(): v for k, v in request.query.items()}
        version = query.get("pipelineversion")
        if request.method == "POST" and version is not None and not re.fullmatch(r"-?\d+", version):
            raise AdoError(400, f"The value '{version}' is not valid for pipelineVersion.",
                           "ArgumentException", "System")
        if not re.fullmatch(r"\d{1,10}", pid_text) or int(pid_text) > _INT32_MAX:
            raise AdoError(404, f"API resource location was not found for {request.path}.",
                           "VssResourceNotFoundException", VSS)
        pid = int(pid_text)
        project_name, pdef = self._lookup(org, project, pid)
        self.permissions.check_run(credential, self.project_id(project_name), pid, pdef, request.method,
                                   request.json if request.method == "POST" else None)
        if request.method == "GET":
            return self._get_runs(project_name, pid, run_text)
        revision = pdef.revision if version is None else int(version)
        if not 1 <= revision <= pdef.revision:
            raise AdoError(404, f"Pipeline with id {pid} and revision {revision} was not found.",
                           "PipelineNotFoundException")
        body = parse_body(request)
        problems = ado_spec.errors("RunPipelineParameters", body)
        if problems:
            raise AdoError(400, "The request body does not match RunPipelineParameters: " + "; ".join(problems),
                           "InvalidRequestContentException", VSS)
        check_queue_rules(pdef, body)
        return self._queue(project_name, pid, pdef, revision, body)

    def _authenticate(self, request: RecordedRequest) -> str | None:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        value = value.strip()
        with self._lock:
            if scheme.lower() == "bearer" and value in self._bearer:
                return value
            if scheme.lower() == "bearer" and self._entra_tokens and self._valid_entra_token(value):
                return value
            if scheme.lower() == "basic":
                try:
                    decoded = base64.b64decode(value, validate=True).decode()
                except (binascii.Error, UnicodeDecodeError):
                    return None
                _, sep, pat = decoded.partition(":")
                if sep and pat in self._pats:
                    return pat
        return None

    def _valid_entra_token(self, token: str) -> bool:
        claims = decode_claims(token)
        if claims is None or claims.get("aud") not in (ADO_RESOURCE, f"api://{ADO_RESOURCE}"):
            return False
        now = self.now().timestamp()
        return bool(int(claims.get("nbf", 0)) - 300 <= now < int(claims.get("exp", 0)))  # Entra allows 5 min skew

    def _check_api_version(self, request: RecordedRequest) -> None:
        query = {k.lower(): v for k, v in request.query.items()}
        version = query.get("api-version")
        if version is None:
            accept = re.search(r"api-version\s*=\s*([^;,\s]+)", request.headers.get("accept", ""))
            version = accept.group(1) if accept else None
        if version is None:
            raise AdoError(400, f'No api-version was supplied for the "{request.method}" request. The version must '
                           'be supplied either as part of the Accept header (e.g. "application/json; '
                           'api-version=1.0") or as a query parameter (e.g. "?api-version=1.0").',
                           "VssVersionNotSpecifiedException", VSS)
        if version not in self.api_versions:
            if not re.fullmatch(r"\d+\.\d+(-preview(\.\d+)?)?", version):
                raise AdoError(400, f"The api-version '{version}' is not in a valid format.",
                               "VssInvalidApiVersionException", VSS)
            raise AdoError(400, f"The requested REST API version of {version} is not accepted by this stand-in; "
                           f"the Pipelines spec says api-version={'/'.join(sorted(self.api_versions))}.",
                           "VssVersionOutOfRangeException", VSS)

    def _lookup(self, org: str, project: str, pid: int) -> tuple[str, PipelineDef]:
        if org.lower() != self.organization.lower():
            raise AdoError(404, f"TF400898: The organization '{org}' could not be found.",
                           "HostNotFoundException", VSS)
        with self._lock:
            known = {p for p, _ in self._pipelines}
            name = next((p for p in known if project.lower() in (p.lower(), self.project_id(p))), None)
            if name is None:
                raise AdoError(404, f"TF200016: The following project does not exist: {project}. Verify that the "
                               "name of the project is correct and that the project exists on the specified "
                               "Azure DevOps Server.", "ProjectDoesNotExistWithNameException",
                               "Microsoft.TeamFoundation.Core.WebApi")
            pdef = self._pipelines.get((name, pid))
        if pdef is None:
            raise AdoError(404, f"Pipeline with id {pid} not found.", "PipelineNotFoundException")
        return name, pdef

    def _links(self, project: str, pid: int, revision: int, run_id: int | None) -> tuple[str, dict[str, Any]]:
        base = f"{self.url}/{self.organization}/{self.project_id(project)}"
        pipeline_url = f"{base}/_apis/pipelines/{pid}?revision={revision}"
        links = {"self": {"href": f"{base}/_apis/pipelines/{pid}/runs/{run_id}"},
                 "web": {"href": f"{base}/_build/results?buildId={run_id}"},
                 "pipeline.web": {"href": f"{base}/_build/definition?definitionId={pid}"},
                 "pipeline": {"href": pipeline_url}}
        return pipeline_url, links

    def _queue(self, project: str, pid: int, pdef: PipelineDef, revision: int, body: dict[str, Any], *,
               created: datetime | None = None) -> Reply:
        repos_in = (body.get("resources") or {}).get("repositories") or {}
        variables_in: dict[str, Any] = body.get("variables") or {}
        with self._lock:
            run_id = self._next_id
            if body.get("previewRun"):
                run_id = -1
            pipeline_url, links = self._links(project, pid, revision, run_id)
            now = created or self.now()
            same_day = sum(1 for r in self._runs if r.pipeline_id == pid and r.project == project
                           and r.body["createdDate"][:10] == now.strftime("%Y-%m-%d"))
            repositories = {}
            for name in sorted({"self", *repos_in}):
                given = repos_in.get(name) or {}
                repositories[name] = {
                    "repository": {"type": "azureReposGit"},
                    "refName": given.get("refName", pdef.default_ref),
                    "version": given.get("version") or hashlib.sha1(f"{pid}:{run_id}".encode()).hexdigest(),  # noqa: S324
                }
            run: dict[str, Any] = {
                "_links": links,
                "pipeline": {"url": pipeline_url, "id": pid, "revision": revision, "name": pdef.name,
                             "folder": pdef.folder},
                "state": "inProgress",
                "createdDate": now.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z",
                "url": links["self"]["href"],
                "resources": {"repositories": repositories},
                "templateParameters": dict(body.get("templateParameters") or {}),
                "variables": {k: ({"isSecret": True} if v.get("isSecret") else dict(v))
                              for k, v in variables_in.items()},
                "id": run_id,
                "name": f"{now:%Y%m%d}.{same_day + 1}",
            }
            if body.get("previewRun"):
                run.update(state="unknown", finalYaml=final_yaml(pdef, body))
                return self._checked(run)
            self._next_id += 1
            secrets = {k: v.get("value", "") for k, v in variables_in.items() if v.get("isSecret")}
            self._runs.append(_Run(project, self.project_id(project), pid, run, secrets))
        return self._checked(run)

    def _checked(self, payload: dict[str, Any]) -> Reply:
        """Self-test: every success body must satisfy the spec's ``Run``; a stand-in bug is a 500."""
        items = payload["value"] if "value" in payload and "count" in payload else [payload]
        problems = [p for item in items for p in ado_spec.errors("Run", item)]
        if problems:
            self._record_error("ADO stand-in produced a Run that violates the spec: " + "; ".join(problems))
            return Reply(500, b"stand-in produced an invalid Run; see server.errors")
        return ok(payload)

    def _get_runs(self, project: str, pid: int, run_text: str | None) -> Reply:
        with self._lock:
            mine = [dict(r.body) for r in self._runs if r.project == project and r.pipeline_id == pid]
        if run_text is None:
            # Runs - List answers slim runs: no templateParameters or variables (see report).
            slim = [{k: v for k, v in r.items() if k not in ("templateParameters", "variables")}
                    for r in reversed(mine)]
            return self._checked({"count": len(slim), "value": slim})
        run = next((r for r in mine if str(r["id"]) == run_text), None)
        if run is None:
            raise AdoError(404, f"The pipeline run {run_text} could not be found.", "PipelineRunNotFoundException")
        return self._checked(run)


