"""Workload identity federation as an Azure Pipelines job sees it: the job's OIDC endpoint and Entra's token
endpoint, for ``azure.identity.AzurePipelinesCredential`` (``amlrelay aml --credential azure-pipelines``).

Contracts followed (what the credential in azure-identity 1.27 sends, and what the services refuse):

* **OIDC token** (``SYSTEM_OIDCREQUESTURI``, ``.../oidctoken``): ``POST ?api-version=7.1&serviceConnectionId=ID``
  with ``Authorization: Bearer <System.AccessToken>``. A missing or wrong job token is refused (401), an
  unknown service connection too (404). The answer is ``{"oidcToken": JWT}``, audience
  ``api://AzureADTokenExchange``, valid for 10 minutes: the reason a login made once (az) cannot last a
  long wait, while a credential that asks again each time can.
* **Entra token endpoint** (``{authority}/{tenant}/oauth2/v2.0/token``, client credentials with a
  ``client_assertion`` of type ``jwt-bearer``): refuses an assertion it did not issue or one that expired
  (``AADSTS700024``, the error az reports after an hour under federation), a client id the federated
  credential is not for, and a scope other than ``<resource>/.default``. Access tokens are :func:`mint_token`
  tokens, so the AML stand-in accepts them by audience as ARM would.

HTTPS only (azure-identity refuses an authority that is not): pass ``tls``.
"""

from __future__ import annotations

import secrets
import threading
import time
from urllib.parse import parse_qs

from ._base import LoopbackServer, RecordedRequest, Reply
from ._jwt import DEFAULT_OBJECT_ID, mint_token
from .tls import TlsMaterial

__all__ = ["FederationServer"]

OIDC_LIFETIME = 600
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class FederationServer(LoopbackServer):
    """One ADO job's OIDC endpoint for one service connection, and the tenant that trusts it."""

    scheme = "https"

    def __init__(self, tls: TlsMaterial, *, tenant_id: str = "11111111-1111-1111-1111-111111111111",
                 client_id: str = "22222222-2222-2222-2222-222222222222",
                 service_connection_id: str = "33333333-3333-3333-3333-333333333333",
                 access_token_lifetime: int = 3600) -> None:
        super().__init__(ssl_context=tls.server_context())
        self.tenant_id, self.client_id, self.service_connection_id = tenant_id, client_id, service_connection_id
        self.system_access_token = secrets.token_urlsafe(24)
        self.access_token_lifetime = access_token_lifetime
        self._assertions: dict[str, float] = {}  # OIDC token -> expiry (epoch)
        self._assertion_lock = threading.Lock()
        self.oidc_requests: list[RecordedRequest] = []
        self.token_requests: list[dict[str, str]] = []
        self.issued: list[str] = []

    @property
    def oidc_request_uri(self) -> str:
        return f"{self.url}/contoso/p-1/_apis/distributedtask/hubs/build/plans/plan-1/jobs/job-1/oidctoken"

    def env(self) -> dict[str, str]:
        """What AzureCLI@2 exports for a federated connection, plus the mapped System.AccessToken."""
        return {"AZURESUBSCRIPTION_TENANT_ID": self.tenant_id, "AZURESUBSCRIPTION_CLIENT_ID": self.client_id,
                "AZURESUBSCRIPTION_SERVICE_CONNECTION_ID": self.service_connection_id,
                "SYSTEM_ACCESSTOKEN": self.system_access_token, "SYSTEM_OIDCREQUESTURI": self.oidc_request_uri,
                "AZURE_AUTHORITY_HOST": self.url}

    def handle(self, request: RecordedRequest) -> Reply | None:
        if request.method == "POST" and request.path == self.oidc_request_uri.removeprefix(self.url):
            return self._oidc(request)
        if request.method == "POST" and request.path == f"/{self.tenant_id}/oauth2/v2.0/token":
            return self._token(request)
        return Reply.json(404, {"error": "not_found", "error_description": f"No route for {request.path}."})

    def _oidc(self, request: RecordedRequest) -> Reply:
        self.oidc_requests.append(request)
        if request.headers.get("Authorization") != f"Bearer {self.system_access_token}":
            return Reply.json(401, {"message": "TF400813: The user is not authorized to access this resource."})
        if request.query.get("api-version") is None:
            return Reply.json(400, {"message": "No api-version was supplied for the POST request."})
        if request.query.get("serviceConnectionId") != self.service_connection_id:
            return Reply.json(404, {"message": "Service connection not found or not authorized for this job."})
        token = f"oidc.{secrets.token_urlsafe(16)}"
        with self._assertion_lock:
            self._assertions[token] = time.time() + OIDC_LIFETIME
        return Reply.json(200, {"oidcToken": token})

    def _token(self, request: RecordedRequest) -> Reply:
        form = {k: v[0] for k, v in parse_qs(request.body.decode()).items()}
        self.token_requests.append(form)
        with self._assertion_lock:
            expiry = self._assertions.get(form.get("client_assertion", ""))
        if form.get("grant_type") != "client_credentials" or form.get("client_assertion_type") != ASSERTION_TYPE:
            return _aad(400, "unsupported_grant_type", "AADSTS70003: unsupported grant or assertion type.")
        if expiry is None:
            return _aad(401, "invalid_client", "AADSTS700211: No matching federated identity record found.")
        if expiry < time.time():
            return _aad(400, "invalid_client", "AADSTS700024: Client assertion is not within its valid time range.")
        if form.get("client_id") != self.client_id:
            return _aad(400, "unauthorized_client", "AADSTS700016: Application not found in the directory.")
        scope = form.get("scope", "")
        if not scope.endswith("/.default") or " " in scope:
            return _aad(400, "invalid_scope", "AADSTS1002012: The provided value for scope is not valid.")
        now = int(time.time())
        token = mint_token(scope.removesuffix("/.default"), client_id=self.client_id, object_id=DEFAULT_OBJECT_ID,
                           tenant_id=self.tenant_id, issued_at=now, expires_on=now + self.access_token_lifetime,
                           token_id=secrets.token_hex(8))
        self.issued.append(token)
        return Reply.json(200, {"token_type": "Bearer", "expires_in": self.access_token_lifetime,
                                "ext_expires_in": self.access_token_lifetime, "access_token": token})


def _aad(status: int, error: str, description: str) -> Reply:
    return Reply.json(status, {"error": error, "error_description": description, "error_codes": [
        int(description.split(":")[0].removeprefix("AADSTS"))]})
