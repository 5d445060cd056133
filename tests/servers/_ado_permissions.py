"""Azure DevOps permissions as ADO enforces them, for the ADO stand-in, and the admin REST calls that grant them.

Rules (identities registered with ``register_identity``; any other credential keeps full access, so the
stacks' default identity behaves as before):

* an identity with no entitlement in the organization: 401 TF400813; without membership of a group of the
  project (project-level read): 404 VS800075 (ProjectDoesNotExistException; the status is an assumption,
  see tests/fixtures/SOURCES.md);
* reading runs needs *View builds* (bit 1), else the pipeline is not found (404, as ADO hides it);
* queuing needs *Queue builds* (bit 128), else 403 TF215106;
* queuing with ``variables``, or with a ``templateParameters`` value for a free-text parameter (type
  ``string`` with no ``values:`` list), needs *Edit queue build configuration* (bit 65536), else 403 TF215106.
  (ADO exempts a value equal to the variable's or parameter's default; the stand-in does not know defaults,
  so it is stricter there.)

Permissions are read from Build-namespace ACLs the way ADO inherits them down the token path
``{projectId}[/{folder}...]/{definitionId}``; project groups add their defaults (Readers: View builds).
Bit values: Microsoft.TeamFoundation.Build.WebApi ``BuildPermissions``.

The admin calls (entitlements, Graph storage keys, identities, projects, build definitions, access control
entries) are checked against the vendored REST spec excerpt (tests/fixtures/ado/admin-7.1-excerpt.json):
path, method, api-version and request body; anything else is refused as ADO would.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jsonschema import Draft4Validator

from ._ado_rules import TFS, VSS, AdoError, PipelineDef, ok
from ._base import RecordedRequest, Reply

if TYPE_CHECKING:
    from .ado import AdoServer

EXCERPT = Path(__file__).resolve().parent.parent / "fixtures" / "ado" / "admin-7.1-excerpt.json"
BUILD_NAMESPACE = "33344d9c-fc72-4d6f-aba5-fa317101a7e9"
VIEW_BUILDS, QUEUE_BUILDS, VIEW_BUILD_DEFINITION, EDIT_QUEUE_CONFIGURATION = 1, 128, 1024, 65536
GROUP_DEFAULTS = {"projectReader": VIEW_BUILDS | VIEW_BUILD_DEFINITION,
                  "projectContributor": VIEW_BUILDS | VIEW_BUILD_DEFINITION | QUEUE_BUILDS}
TENANT = "00000000-0000-0000-0000-0000000000aa"


@dataclass
class Identity:
    """An Entra service principal (a managed identity) and what the organization knows of it."""

    object_id: str
    display_name: str
    storage_key: str = field(default_factory=lambda: str(uuid.uuid4()))
    entitled: bool = False
    project_groups: dict[str, str] = field(default_factory=dict)  # project id -> group type

    @property
    def subject_descriptor(self) -> str:
        return "aadsp." + base64.urlsafe_b64encode(self.storage_key.encode()).decode().rstrip("=")

    @property
    def descriptor(self) -> str:
        return f"Microsoft.VisualStudio.Services.Claims.AadServicePrincipal;{TENANT}\\{self.object_id}"


@cache
def _excerpt() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(EXCERPT.read_text(encoding="utf-8"))
    return doc


def _generic_as_any(node: Any) -> Any:
    """Two VSS swagger generator artefacts, each contradicted by the operations' own httpExamples: a .NET
    generic ``T`` comes out as ``{"type": "string", "format": "T"}`` (EntitlementOperationResultBase.result,
    an object in the example), and ``IdentityDescriptor`` as an object, while the wire format (Identities
    and Access Control Entries examples) is the string ``"<type>;<identifier>"``."""
    if isinstance(node, dict):
        if node.get("format") == "T":
            return {}
        if node.get("$ref") == "#/definitions/IdentityDescriptor":
            return {"type": "string", **({"description": node["description"]} if "description" in node else {})}
        return {k: _generic_as_any(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_generic_as_any(v) for v in node]
    return node


def _body_errors(spec: str, definition: str, body: Any) -> list[str]:
    schema = {"$ref": f"#/definitions/{definition}",
              "definitions": _generic_as_any(_excerpt()["definitions"][spec])}
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '(body)'}: {e.message}"
            for e in Draft4Validator(schema).iter_errors(body)]


# The access control entries body is a JObject in the spec; its shape is the operation's documented example
# (token, merge, accessControlEntries[] of {descriptor string, allow, deny, extendedInfo}).
_ACE_BODY = {"type": "object", "required": ["token", "accessControlEntries"], "additionalProperties": False,
             "properties": {"token": {"type": "string", "minLength": 1}, "merge": {"type": "boolean"},
                            "accessControlEntries": {"type": "array", "minItems": 1, "items": {
                                "type": "object", "required": ["descriptor", "allow", "deny"],
                                "additionalProperties": False,
                                "properties": {"descriptor": {"type": "string", "minLength": 1},
                                               "allow": {"type": "integer"}, "deny": {"type": "integer"},
                                               "extendedInfo": {"type": "object"},
                                               "extendedinfo": {"type": "object"}}}}}}


class Permissions:
    """The organization's identities and Build ACLs, and the checks ADO makes with them."""

    def __init__(self, server: AdoServer) -> None:
        self._server = server
        self._lock = threading.Lock()
        self._identities: dict[str, Identity] = {}  # object id -> identity
        self._credentials: dict[str, str] = {}  # bearer token -> object id
        self._admins: set[str] = set()
        self.acl: dict[str, dict[str, int]] = {}  # Build token -> identity descriptor -> allow bits

    # -- configuration ----------------------------------------------------------------------------
    def register_identity(self, credential: str, object_id: str, display_name: str = "amlrelay handler") -> None:
        """An Entra service principal that authenticates with ``credential``; not in the organization yet."""
        with self._lock:
            self._identities[object_id] = Identity(object_id, display_name)
            self._credentials[credential] = object_id

    def add_admin(self, credential: str) -> None:
        """A Project Collection Administrator: may call the admin APIs."""
        with self._lock:
            self._admins.add(credential)

    def identity(self, object_id: str) -> Identity:
        with self._lock:
            return self._identities[object_id]

    def effective(self, object_id: str, project_id: str, folder: str, pid: int) -> int:
        """Allowed Build bits on a pipeline: group defaults, then ACEs inherited down the token path."""
        with self._lock:
            ident = self._identities[object_id]
            bits = GROUP_DEFAULTS.get(ident.project_groups.get(project_id, ""), 0)
            for token in token_path(project_id, folder, pid):
                bits |= self.acl.get(token, {}).get(ident.descriptor, 0)
        return bits

    # -- the checks on Runs ------------------------------------------------------------------------
    def check_run(self, credential: str, project_id: str, pid: int, pdef: PipelineDef, method: str,
                  body: dict[str, Any] | None) -> None:
        with self._lock:
            object_id = self._credentials.get(credential)
            ident = self._identities.get(object_id or "")
        if ident is None:
            return  # not modelled: the stacks' default identity holds every permission
        if not ident.entitled:
            raise AdoError(401, f"TF400813: The user '{ident.object_id}' is not authorized to access this resource.",
                           "UnauthorizedRequestException", TFS)
        if project_id not in ident.project_groups:
            raise AdoError(404, f"VS800075: The project with id 'vstfs:///Classification/TeamProject/{project_id}' "
                           "does not exist, or you do not have permission to access it.",
                           "ProjectDoesNotExistException", "Microsoft.TeamFoundation.Core.WebApi")
        bits = self.effective(ident.object_id, project_id, pdef.folder, pid)
        if method == "GET":
            if not bits & VIEW_BUILDS:
                raise AdoError(404, f"Pipeline with id {pid} not found.", "PipelineNotFoundException")
            return
        if not bits & QUEUE_BUILDS:
            raise _denied(ident, "Queue builds", pid, pdef)
        body = body or {}
        free_text = [name for name in body.get("templateParameters") or {}
                     if pdef.parameter_types.get(name, "string") == "string" and name not in pdef.parameter_values]
        if (body.get("variables") or free_text) and not bits & EDIT_QUEUE_CONFIGURATION:
            raise _denied(ident, "Edit queue build configuration", pid, pdef)

    # -- the admin REST calls ------------------------------------------------------------------------
    def handle_admin(self, request: RecordedRequest, credential: str) -> Reply | None:
        """Answer an admin call (None: not one, the Runs routes take it). Checked against the spec excerpt."""
        path = "/" + request.path.strip("/")
        path_known = False
        for op in _excerpt()["operations"]:
            pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(op["path"]))
            match = re.fullmatch(pattern, path, flags=re.IGNORECASE)
            if match is None:
                continue
            path_known = True
            if request.method != op["method"]:
                continue
            version = {k.lower(): v for k, v in request.query.items()}.get("api-version")
            if version != op["api_version"]:
                raise AdoError(400, f"The requested REST API version of {version} is not the one of "
                               f"{op['operationId']} ({op['api_version']}).", "VssVersionOutOfRangeException", VSS)
            allowed = {p["name"].lower() for p in op["parameters"] if p.get("in") == "query"}
            unknown = sorted(k for k in request.query if k.lower() not in allowed)
            if unknown:
                raise AdoError(400, f"{op['operationId']} has no query parameter {', '.join(unknown)}.",
                               "ArgumentException", "System")
            with self._lock:
                admin = credential in self._admins
            if not admin:
                raise AdoError(403, "TF400813: The caller is not a Project Collection Administrator.",
                               "AccessDeniedException", TFS)
            reply = self._admin(op["operationId"], match.groupdict(), request)
            return self._checked(op, reply)
        if path_known:
            raise AdoError(405, f"The requested resource does not support http method '{request.method}'.",
                           "VssResourceNotFoundException", VSS)
        return None

    def _admin(self, operation: str, where: dict[str, str], request: RecordedRequest) -> Reply:
        spec = "memberEntitlementManagement/7.1/memberEntitlementManagement.json"
        if operation == "Service Principal Entitlements_Add":
            body = request.json
            problems = _body_errors(spec, "ServicePrincipalEntitlement", body)
            if problems:
                raise AdoError(400, "Invalid ServicePrincipalEntitlement: " + "; ".join(problems),
                               "InvalidRequestContentException", VSS)
            return ok(self._entitle(body))
        if operation in ("Service Principal Entitlements_Get", "Service Principal Entitlements_Delete"):
            ident = self._by_storage_key(where["servicePrincipalId"])
            if ident is None or not ident.entitled:
                raise AdoError(404, f"Service principal {where['servicePrincipalId']} not found.",
                               "MemberNotFoundException", VSS)
            if operation.endswith("Delete"):
                with self._lock:
                    ident.entitled = False
                    ident.project_groups.clear()
                return Reply(200, b"")  # the spec's only response
            return ok(self._entitlement(ident))
        if operation == "Storage Keys_Get":
            ident = next((i for i in self._all() if i.subject_descriptor == where["subjectDescriptor"]), None)
            if ident is None:
                raise AdoError(404, "Subject not found.", "GraphSubjectNotFoundException", VSS)
            return ok({"value": ident.storage_key})
        if operation == "Identities_Read Identities":
            query = {k.lower(): v for k, v in request.query.items()}
            subjects = query.get("subjectdescriptors", "").split(",")
            descriptors = {d.lower() for d in query.get("descriptors", "").split(",")}
            idents = [i for i in self._all() if i.entitled and (i.subject_descriptor in subjects
                                                                  or i.descriptor.lower() in descriptors)]
            return ok({"count": len(idents), "value": [
                {"id": i.storage_key, "descriptor": i.descriptor, "subjectDescriptor": i.subject_descriptor,
                 "providerDisplayName": i.display_name, "isActive": True} for i in idents]})
        if operation == "Projects_Get":
            name = next((p for (p, _pid), _def in self._pipelines() if where["projectId"].lower() in
                         (p.lower(), self._server.project_id(p))), None)
            if name is None:
                raise AdoError(404, f"TF200016: The following project does not exist: {where['projectId']}.",
                               "ProjectDoesNotExistWithNameException", "Microsoft.TeamFoundation.Core.WebApi")
            return ok({"id": self._server.project_id(name), "name": name, "state": "wellFormed",
                       "visibility": "private", "revision": 1})
        if operation == "Definitions_Get":
            found = [(p, d) for (p, pid), d in self._pipelines()
                     if str(pid) == where["definitionId"] and where["project"].lower() in
                     (p.lower(), self._server.project_id(p))]
            if not found:
                raise AdoError(404, f"The definition {where['definitionId']} was not found.",
                               "DefinitionNotFoundException", "Microsoft.TeamFoundation.Build.WebApi")
            project, pdef = found[0]
            return ok({"id": int(where["definitionId"]), "name": pdef.name, "path": pdef.folder, "type": "build",
                       "revision": pdef.revision, "queueStatus": "enabled", "process": {"type": 2},
                       "project": {"id": self._server.project_id(project), "name": project}})
        if operation == "Access Control Entries_Set Access Control Entries":
            body = request.json
            problems = [e.message for e in Draft4Validator(_ACE_BODY).iter_errors(body)]
            if problems:
                raise AdoError(400, "Invalid access control entries: " + "; ".join(problems),
                               "InvalidRequestContentException", VSS)
            if where["securityNamespaceId"].lower() != BUILD_NAMESPACE:
                raise AdoError(400, "The stand-in models the Build namespace only.", "ArgumentException", "System")
            with self._lock:
                entries = self.acl.setdefault(body["token"], {})
                for ace in body["accessControlEntries"]:
                    keep = entries.get(ace["descriptor"], 0) if body.get("merge") else 0
                    entries[ace["descriptor"]] = (keep | ace["allow"]) & ~ace["deny"]
                value = [{"descriptor": d, "allow": a, "deny": 0, "extendedInfo": {}}
                         for d, a in entries.items() if d in {x["descriptor"] for x in body["accessControlEntries"]}]
            return ok({"count": len(value), "value": value})
        raise AdoError(404, f"{operation} is not modelled by the stand-in.", "VssResourceNotFoundException", VSS)

    def _checked(self, op: dict[str, Any], reply: Reply) -> Reply:
        """Self-test: a success answer must fit the operation's response schema (VSS wraps arrays as
        ``{count, value}``, as the httpExamples show)."""
        schema = (op["responses"].get("200") or {}).get("schema")
        if reply.status != 200 or schema is None:
            return reply
        payload = json.loads(reply.body)
        items = payload["value"] if schema.get("type") == "array" else [payload]
        ref = (schema.get("items") or schema)["$ref"].split("/")[-1]
        problems = [p for item in items for p in _body_errors(op["spec"], ref, item)]
        if problems:
            return Reply(500, ("stand-in answer violates " + ref + ": " + "; ".join(problems)).encode())
        return reply

    def _pipelines(self) -> list[tuple[tuple[str, int], PipelineDef]]:
        with self._server._lock:
            return list(self._server._pipelines.items())

    def _all(self) -> list[Identity]:
        with self._lock:
            return list(self._identities.values())

    def _by_storage_key(self, key: str) -> Identity | None:
        return next((i for i in self._all() if i.storage_key == key), None)

    def _entitle(self, body: dict[str, Any]) -> dict[str, Any]:
        sp = body.get("servicePrincipal") or {}
        with self._lock:
            ident = self._identities.get(sp.get("originId", ""))
        if ident is None or sp.get("origin") != "aad":
            error = f"No Entra service principal with object id {sp.get('originId')}."
            return {"isSuccess": False, "operationResult": {"isSuccess": False, "errors": [
                {"key": "ServicePrincipal", "value": error}]}}
        with self._lock:
            ident.entitled = True
            for item in body.get("projectEntitlements") or []:
                ident.project_groups[item["projectRef"]["id"]] = item["group"]["groupType"]
        entitlement = self._entitlement(ident)  # shape of the operation's example answer
        return {"isSuccess": True, "servicePrincipalEntitlement": entitlement,
                "operationResult": {"isSuccess": True, "errors": [], "servicePrincipalId": ident.storage_key,
                                    "result": entitlement}}

    def _entitlement(self, ident: Identity) -> dict[str, Any]:
        return {"id": ident.storage_key, "accessLevel": {"accountLicenseType": "express"},
                "servicePrincipal": {"subjectKind": "servicePrincipal", "origin": "aad", "originId": ident.object_id,
                                     "descriptor": ident.subject_descriptor, "displayName": ident.display_name},
                "projectEntitlements": [{"projectRef": {"id": p}, "group": {"groupType": g}}
                                        for p, g in ident.project_groups.items()]}


def token_path(project_id: str, folder: str, pid: int) -> list[str]:
    """The Build security tokens from the project down to the pipeline: ``{projectId}/{folder...}/{id}``."""
    parts = [p for p in folder.replace("\\", "/").split("/") if p]
    tokens = [project_id]
    for index in range(len(parts)):
        tokens.append("/".join([project_id, *parts[: index + 1]]))
    tokens.append("/".join([project_id, *parts, str(pid)]))
    return tokens


def _denied(ident: Identity, permission: str, pid: int, pdef: PipelineDef) -> AdoError:
    return AdoError(403, f"TF215106: Access denied. {ident.display_name} needs {permission} permissions for build "
                    f"pipeline {pid}:{pdef.name} to perform the action. For more information, contact the Azure "
                    "DevOps administrator.", "AccessDeniedException", TFS)
