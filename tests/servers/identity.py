"""The managed identity endpoint as Azure Automation exposes it to a runbook.

Automation uses the App Service protocol: ``IDENTITY_ENDPOINT`` + ``IDENTITY_HEADER``,
``GET ?api-version=2019-08-01&resource=...`` with ``X-IDENTITY-HEADER`` and
``Metadata: true``. That is exactly what azure-identity 1.27's ManagedIdentityCredential
sends when those two variables are set, so the product can be tested unmodified.
Tokens are deterministic (see ``_jwt``) so a test can check which token reached ADO.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ._base import Fault, LoopbackServer, RecordedRequest, Reply
from ._jwt import (
    DEFAULT_CLIENT_ID,
    DEFAULT_EXPIRES_ON,
    DEFAULT_ISSUED_AT,
    DEFAULT_OBJECT_ID,
    ZERO_GUID,
    mint_token,
)

__all__ = ["KNOWN_RESOURCES", "IdentityServer", "IssuedToken"]

KNOWN_RESOURCES = frozenset({
    "499b84ac-1321-427f-aa17-267ca6975798",  # Azure DevOps (its application id)
    "https://storage.azure.com",  # Table / Blob / Queue storage
    "https://vault.azure.net",  # Key Vault
    "https://management.azure.com",  # ARM (AML jobs, MLflow tracking in AML)
    "https://ml.azure.com",  # Azure Machine Learning data plane
})
"""Resources Entra issues tokens for; any other is refused with AADSTS500011, as Entra refuses an unknown one."""


@dataclass(frozen=True)
class IssuedToken:
    token: str
    resource: str
    client_id: str
    expires_on: int

# Variables that make azure-identity pick another managed-identity flavour (Service
# Fabric, Arc, IMDS, legacy MSI) or another identity; they must be unset for the tests.
CONFLICTING_ENV = ("MSI_ENDPOINT", "MSI_SECRET", "IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT",
                   "AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE")


class IdentityServer(LoopbackServer):
    """Loopback ``IDENTITY_ENDPOINT``; see :meth:`env` for the variables to set."""

    def __init__(
        self,
        *,
        path: str = "/msi/token",
        identity_header: str | None = None,
        api_versions: Iterable[str] = ("2019-08-01",),
        client_id: str = DEFAULT_CLIENT_ID,
        object_id: str = DEFAULT_OBJECT_ID,
        tenant_id: str = ZERO_GUID,
        user_assigned: dict[str, str] | None = None,
        issued_at: int = DEFAULT_ISSUED_AT,
        expires_on: int = DEFAULT_EXPIRES_ON,
        lifetime: int | None = None,
        resource_ids: dict[str, str] | None = None,
        resources: Iterable[str] = KNOWN_RESOURCES,
    ) -> None:
        """``user_assigned`` maps extra client IDs to their object IDs (user-assigned identities);
        ``resource_ids`` maps a user-assigned identity's ARM resource id to its client id (``mi_res_id``).
        ``lifetime`` (seconds): every token is new, issued now and valid that long, as Entra's are (about 24 h
        for a managed identity); without it tokens are fixed (see ``token_for``) and never expire.
        ``resources``: the resources tokens can be had for; others are refused (AADSTS500011)."""
        super().__init__()
        self.path = path
        self.identity_header = identity_header or secrets.token_hex(16)
        self.api_versions = frozenset(api_versions)
        self.client_id, self.object_id, self.tenant_id = client_id, object_id, tenant_id
        self.user_assigned = dict(user_assigned or {})
        self.issued_at, self.expires_on = issued_at, expires_on
        self.lifetime = lifetime
        self.resource_ids = {k.lower(): v for k, v in (resource_ids or {}).items()}
        self.resources = frozenset(r.rstrip("/").lower() for r in resources)
        self.issued: list[IssuedToken] = []
        self._serial = itertools.count(1)

    @property
    def endpoint(self) -> str:
        return f"{self.url}{self.path}"

    def env(self) -> dict[str, str]:
        """The variables Automation sets in the sandbox (unset :data:`CONFLICTING_ENV` too)."""
        return {"IDENTITY_ENDPOINT": self.endpoint, "IDENTITY_HEADER": self.identity_header}

    def token_for(self, resource: str, client_id: str | None = None) -> str:
        """The access token this endpoint hands out for ``resource`` (scope minus ``/.default``)."""
        cid = client_id or self.client_id
        oid = self.object_id if cid == self.client_id else self.user_assigned[cid]
        return mint_token(resource, client_id=cid, object_id=oid, tenant_id=self.tenant_id,
                          issued_at=self.issued_at, expires_on=self.expires_on)

    def fail(self, status: int, times: int = 1) -> None:
        """Answer the next ``times`` token requests with ``status`` and an App Service error body."""
        self._push_fault(Fault("fail", "GET", times, status=status))

    def delay(self, seconds: float, times: int = 1) -> None:
        """Hold the next ``times`` answers for ``seconds`` (a hung endpoint, for client timeouts)."""
        self._push_fault(Fault("delay", "GET", times, seconds=seconds))

    @property
    def token_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == self.path]

    def handle(self, request: RecordedRequest) -> Reply | None:
        if request.path != self.path:
            return _error(404, f"No route for {request.path}.")
        if request.method != "GET":
            return _error(405, f"The requested resource does not support http method '{request.method}'.")
        fault = self._take_fault("GET")
        if fault is not None and fault.kind == "delay" and not self.sleep(fault.seconds):
            return None
        if fault is not None and fault.kind == "fail":
            return _error(fault.status, f"Scripted {fault.status} from the identity stand-in.")
        secret = request.headers.get("X-IDENTITY-HEADER")
        if secret is None:
            return _error(400, "The X-IDENTITY-HEADER header is required.")
        if secret != self.identity_header:
            return _error(401, "The X-IDENTITY-HEADER header does not match this sandbox's IDENTITY_HEADER.")
        if request.headers.get("Metadata", "").lower() != "true":
            return _error(400, "Required metadata header not specified.")
        # The official Automation Python tutorial sends no api-version and works, so only a
        # wrong one is refused; azure-identity always sends 2019-08-01.
        version = request.query.get("api-version")
        if version is not None and version not in self.api_versions:
            return _error(400, f"The api-version '{version}' is not supported; use "
                               f"{', '.join(sorted(self.api_versions))}.")
        resource = request.query.get("resource", "")
        if not resource:
            return _error(400, "The resource parameter is required.")
        client_id = self._select_identity(request.query)
        if client_id is None:
            return _error(400, "No Managed Identity found for specified ClientId/ResourceId/PrincipalId.")
        if resource.rstrip("/").lower() not in self.resources:
            return _error(400, f"AADSTS500011: The resource principal named {resource} was not found in the tenant "
                          f"named {self.tenant_id}. This can happen if the application has not been installed by "
                          "the administrator of the tenant or consented to by any user in the tenant. You might "
                          "have sent your authentication request to the wrong tenant.")
        token, expires_on = self._mint(resource, client_id)
        body: dict[str, Any] = {
            "access_token": token,
            "expires_on": str(expires_on),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": client_id,
        }
        return Reply.json(200, body)

    def _mint(self, resource: str, client_id: str) -> tuple[str, int]:
        if self.lifetime is None:
            return self.token_for(resource, client_id), self.expires_on
        oid = self.object_id if client_id == self.client_id else self.user_assigned[client_id]
        now = int(time.time())
        with self._lock:
            serial = next(self._serial)
        token = mint_token(resource, client_id=client_id, object_id=oid, tenant_id=self.tenant_id, issued_at=now,
                           expires_on=now + self.lifetime, token_id=f"uti-{serial}")
        with self._lock:
            self.issued.append(IssuedToken(token, resource, client_id, now + self.lifetime))
        return token, now + self.lifetime

    def _select_identity(self, query: dict[str, str]) -> str | None:
        """System-assigned unless the caller names a user-assigned identity it actually has (by client id,
        object id or ARM resource id; at most one of them, as the endpoint demands)."""
        wanted_cid = query.get("client_id")
        wanted_oid = query.get("object_id") or query.get("principal_id")
        if sum(1 for k in ("client_id", "object_id", "principal_id", "mi_res_id") if k in query) > 1:
            return None
        if "mi_res_id" in query:
            return self.resource_ids.get(query["mi_res_id"].lower())
        identities = {self.client_id: self.object_id, **self.user_assigned}
        if wanted_cid is not None:
            return wanted_cid if wanted_cid in identities else None
        if wanted_oid is not None:
            return next((c for c, o in identities.items() if o == wanted_oid), None)
        return self.client_id


def _error(status: int, message: str) -> Reply:
    """App Service's error shape; MSAL reads ``statusCode`` and ``message`` from it."""
    return Reply.json(status, {"statusCode": status, "message": message, "correlationId": ZERO_GUID})
