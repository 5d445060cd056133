"""Key Vault secrets (data plane, ``GET /secrets/{name}[/{version}]``) over loopback TLS.

The relay reads its PAT from Key Vault with ``SecretClient`` and a managed identity, so
this stand-in plays the whole dance the SDK expects: the token-less first request gets
the ``WWW-Authenticate`` challenge, the retry must carry a token minted for
``https://vault.azure.net`` in the challenged tenant, and failures come back in Key
Vault's ``{"error": {...}}`` shape so the SDK raises the exceptions it raises in Azure.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ._base import Fault, LoopbackServer, RecordedRequest, Reply
from ._jwt import ZERO_GUID, decode_claims
from .tls import TlsMaterial, default_tls_material

__all__ = ["API_VERSIONS", "KEYVAULT_RESOURCE", "KeyVaultServer"]

KEYVAULT_RESOURCE = "https://vault.azure.net"
KEYVAULT_APP_ID = "cfa8b339-82a2-471a-a3c9-0fc0be7a4093"  # the Key Vault service principal: also a valid aud
# The versions azure-keyvault-secrets 4.12 knows (its ApiVersion enum); the service knows these too.
API_VERSIONS = frozenset({"2016-10-01", "7.0", "7.1", "7.2", "7.3", "7.4", "7.5", "7.6", "2025-07-01", "2026-04-01"})
_LATEST = "2026-04-01"
_NAME = re.compile(r"[0-9A-Za-z-]{1,127}")


@dataclass
class _Version:
    version: str
    value: str
    enabled: bool
    created: int
    content_type: str | None


class KeyVaultServer(LoopbackServer):
    """A vault at :attr:`url`; trust :attr:`ca_file` (see :meth:`env`) to reach it."""

    scheme = "https"

    def __init__(
        self,
        secrets: Mapping[str, str] | None = None,
        *,
        tls: TlsMaterial | None = None,
        tenant_id: str = ZERO_GUID,
        api_versions: Iterable[str] = API_VERSIONS,
    ) -> None:
        self.tls = tls or default_tls_material()
        super().__init__(ssl_context=self.tls.server_context())
        self.tenant_id = tenant_id
        self.api_versions = frozenset(api_versions)
        self._secrets: dict[str, tuple[str, list[_Version]]] = {}
        self._forbidden: set[str | None] = set()
        for name, value in (secrets or {}).items():
            self.set_secret(name, value)

    @property
    def ca_file(self) -> str:
        return str(self.tls.cert_file)

    def env(self) -> dict[str, str]:
        """Trust settings for requests/azure-core (``REQUESTS_CA_BUNDLE``) and stdlib ssl."""
        return {"REQUESTS_CA_BUNDLE": self.ca_file, "SSL_CERT_FILE": self.ca_file}

    @property
    def challenge(self) -> str:
        return (f'Bearer authorization="https://login.microsoftonline.com/{self.tenant_id}", '
                f'resource="{KEYVAULT_RESOURCE}"')

    # -- configuration and knobs ---------------------------------------------------------
    def set_secret(self, name: str, value: str, *, enabled: bool = True, content_type: str | None = None) -> str:
        """Add a new version (it becomes the current one); returns the version id."""
        if not _NAME.fullmatch(name):
            raise ValueError(f"invalid Key Vault secret name: {name!r}")
        with self._lock:
            display, versions = self._secrets.get(name.lower(), (name, []))
            version = uuid.uuid5(uuid.NAMESPACE_URL, f"kv:{name.lower()}:{len(versions)}").hex
            versions.append(_Version(version, value, enabled, int(time.time()), content_type))
            self._secrets[name.lower()] = (display, versions)
            return version

    def forbid(self, object_id: str | None = None) -> None:
        """Deny ``secrets/get`` by RBAC (403) to ``object_id``, or to every caller if None."""
        with self._lock:
            self._forbidden.add(object_id)

    def allow(self) -> None:
        with self._lock:
            self._forbidden.clear()

    def fail(self, status: int, times: int = 1) -> None:
        """Answer the next ``times`` GETs with ``status`` in Key Vault's error shape."""
        self._push_fault(Fault("fail", "GET", times, status=status))

    def delay(self, seconds: float, times: int = 1) -> None:
        """Hold the next ``times`` answers for ``seconds``, then answer normally."""
        self._push_fault(Fault("delay", "GET", times, seconds=seconds))

    def reset_state(self) -> None:
        """Forget traffic, faults and RBAC denials; secrets are kept."""
        with self._lock:
            super().reset_state()
            self._forbidden.clear()

    def secret_id(self, name: str, version: str) -> str:
        return f"{self.url}/secrets/{name}/{version}"

    # -- request handling --------------------------------------------------------------
    def handle(self, request: RecordedRequest) -> Reply | None:
        fault = self._take_fault(request.method)
        if fault is not None and fault.kind == "delay" and not self.sleep(fault.seconds):
            return None
        if fault is not None and fault.kind == "fail":
            return _error(fault.status, "InternalServerError" if fault.status >= 500 else "BadParameter",
                          f"Scripted {fault.status} from the Key Vault stand-in.")
        claims, problem = self._authenticate(request)
        if claims is None:
            return _error(401, "Unauthorized", problem, [("WWW-Authenticate", self.challenge)])
        version_param = request.query.get("api-version")
        if not version_param:
            return _error(400, "BadParameter", "The api-version query parameter is required.")
        if version_param not in self.api_versions:
            return _error(400, "BadParameter", f"The specified version ({version_param}) is not recognized. "
                          f"Consider using the latest supported version ({_LATEST}).")
        match = re.fullmatch(r"/secrets/([^/]+)(?:/([^/]*))?/?", request.path)
        if match is None:
            return _error(404, "NotFound", f"The request URI {request.path} is not a secrets operation "
                          "supported by this stand-in.")
        if request.method != "GET":
            return _error(405, "BadParameter", f"Method {request.method} is not supported on secrets here.")
        name, version = match.group(1), match.group(2) or ""
        if not _NAME.fullmatch(name):
            return _error(400, "BadParameter", f"The request URI contains an invalid name: {name}")
        with self._lock:
            denied = None in self._forbidden or claims.get("oid") in self._forbidden
        if denied:
            return self._forbidden_reply(claims)
        return self._get(name, version)

    def _authenticate(self, request: RecordedRequest) -> tuple[dict[str, Any] | None, str]:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None, "AKV10000: Request is missing a Bearer or PoP token."
        claims = decode_claims(token.strip())
        if claims is None:
            return None, "AKV10005: Token is not a valid JWT issued by the tenant's authority."
        if claims.get("aud") not in (KEYVAULT_RESOURCE, f"{KEYVAULT_RESOURCE}/", KEYVAULT_APP_ID):
            return None, f"AKV10022: Invalid audience. Expected {KEYVAULT_RESOURCE}, found: {claims.get('aud')}."
        if claims.get("tid") != self.tenant_id:
            return None, (f"AKV10032: Invalid issuer. Expected one of https://sts.windows.net/{self.tenant_id}/, "
                          f"found {claims.get('iss')}.")
        if int(claims.get("exp", 0)) <= time.time():
            return None, "AKV10016: Token is expired."
        return claims, ""

    def _forbidden_reply(self, claims: dict[str, Any]) -> Reply:
        message = ("Caller is not authorized to perform action on resource.\r\nIf role assignments, deny "
                   "assignments or role definitions were changed recently, please observe propagation time.\r\n"
                   f"Caller: appid={claims.get('appid')};oid={claims.get('oid')};iss={claims.get('iss')}\r\n"
                   "Action: 'Microsoft.KeyVault/vaults/secrets/getSecret/action'\r\n"
                   "Assignment: (not found)\r\nDecisionReason: null\r\n")
        return _error(403, "Forbidden", message, inner="ForbiddenByRbac")

    def _get(self, name: str, version: str) -> Reply:
        with self._lock:
            display, versions = self._secrets.get(name.lower(), (name, []))
            found = next((v for v in versions if v.version == version.lower()), None) if version else (
                versions[-1] if versions else None)
        if found is None:
            shown = f"{name}/{version}" if version else name
            return _error(404, "SecretNotFound", f"A secret with (name/id) {shown} was not found in this key vault. "
                          "If you recently deleted this secret you may be able to recover it using the correct "
                          "recovery command. For help resolving this issue, please see "
                          "https://go.microsoft.com/fwlink/?linkid=2125182")
        if not found.enabled:
            return _error(403, "Forbidden", "Operation get is not allowed on a disabled secret.",
                          inner="SecretDisabled")
        body: dict[str, Any] = {
            "value": found.value,
            "id": self.secret_id(display, found.version),
            "attributes": {"enabled": True, "created": found.created, "updated": found.created,
                           "recoveryLevel": "Recoverable+Purgeable", "recoverableDays": 90},
        }
        if found.content_type is not None:
            body["contentType"] = found.content_type
        return Reply.json(200, body)


def _error(status: int, code: str, message: str, headers: Iterable[tuple[str, str]] = (),
           inner: str | None = None) -> Reply:
    error: dict[str, Any] = {"code": code, "message": message}
    if inner is not None:
        error["innererror"] = {"code": inner}
    return Reply.json(status, {"error": error}, headers)
