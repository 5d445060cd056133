"""The managed identity endpoint of AML compute, as a job step sees it.

AML compute sets ``MSI_ENDPOINT`` and ``MSI_SECRET`` (and ``DEFAULT_IDENTITY_CLIENT_ID`` for a user-assigned
identity). The protocol (AML-COMPONENT.md §4; msal's ``_obtain_token_on_machine_learning``, which
azure-identity 1.27 uses): ``GET {MSI_ENDPOINT}?api-version=2017-09-01&resource=<resource>[&clientid=<id>]``
with header ``secret: <MSI_SECRET>``; the answer carries ``expires_on`` as integer seconds. Note the query
name ``clientid`` (no underscore): a ``client_id`` is refused here, as the 2017 API ignores it.

The compute's identity is a different principal from the Automation account's, so it mints different tokens:
ADO, Key Vault and the MLflow endpoint accept them only where the tests grant that identity access.
"""

from __future__ import annotations

import secrets
from typing import Any

from ._base import RecordedRequest, Reply
from ._jwt import ZERO_GUID
from .identity import IdentityServer

COMPUTE_CLIENT_ID = "33333333-3333-3333-3333-333333333333"
COMPUTE_OBJECT_ID = "44444444-4444-4444-4444-444444444444"


class AmlComputeIdentityServer(IdentityServer):
    """Loopback ``MSI_ENDPOINT`` of an AML compute cluster; :meth:`env` gives the job's variables."""

    def __init__(self, *, user_assigned: dict[str, str] | None = None, default_client_id: str | None = None) -> None:
        super().__init__(path="/msi/auth", client_id=COMPUTE_CLIENT_ID, object_id=COMPUTE_OBJECT_ID,
                         user_assigned=user_assigned, api_versions=("2017-09-01",))
        self.secret = secrets.token_hex(16)
        self.default_client_id = default_client_id

    def env(self) -> dict[str, str]:
        env = {"MSI_ENDPOINT": self.endpoint, "MSI_SECRET": self.secret}
        if self.default_client_id:
            env["DEFAULT_IDENTITY_CLIENT_ID"] = self.default_client_id
        return env

    def handle(self, request: RecordedRequest) -> Reply | None:
        if request.path != self.path:
            return _error(404, f"No route for {request.path}.")
        if request.method != "GET":
            return _error(405, f"Method {request.method} is not allowed.")
        fault = self._take_fault("GET")
        if fault is not None and fault.kind == "delay" and not self.sleep(fault.seconds):
            return None
        if fault is not None and fault.kind == "fail":
            return _error(fault.status, f"Scripted {fault.status} from the AML identity stand-in.")
        if request.headers.get("secret") != self.secret:
            return _error(401, "The secret header is missing or does not match MSI_SECRET.")
        if request.query.get("api-version") not in self.api_versions:
            return _error(400, f"api-version must be {', '.join(sorted(self.api_versions))}.")
        resource = request.query.get("resource", "")
        if not resource:
            return _error(400, "The resource parameter is required.")
        if "client_id" in request.query:
            return _error(400, "Unknown parameter client_id (the 2017-09-01 API names it clientid).")
        client_id = request.query.get("clientid") or self.client_id
        if client_id != self.client_id and client_id not in self.user_assigned:
            return _error(400, f"No managed identity with client id {client_id} is assigned to this compute.")
        body: dict[str, Any] = {"access_token": self.token_for(resource, client_id),
                                "expires_on": str(self.expires_on), "resource": resource, "token_type": "Bearer"}
        return Reply.json(200, body)


def _error(status: int, message: str) -> Reply:
    return Reply.json(status, {"statusCode": status, "message": message, "correlationId": ZERO_GUID})
