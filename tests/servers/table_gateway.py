"""Table storage as a Logic App's managed identity sees it: Azurite behind an Entra front door.

A Logic App's HTTP action authenticates to Table storage with ``ManagedServiceIdentity`` (audience
``https://storage.azure.com/``) and sends ``Authorization: Bearer``. Azurite only checks such tokens in
``--oauth basic`` mode over HTTPS, which the shared test emulator does not run, so this gateway does the
front door's part and refuses what Table storage refuses (TBL spec; the service's error shapes):

* no bearer token, or one minted for another audience → 403 ``AuthenticationFailed`` /
  ``AuthorizationFailure`` (a token for ADO or Key Vault must never open the ledger);
* ``x-ms-version`` other than the spec's single value ``2019-02-02`` → 400 ``InvalidHeaderValue``;
* a missing ``DataServiceVersion`` → 400;

and then forwards the request, re-signed with the emulator's account key (SharedKeyLite), to the real
Azurite, so every ledger semantic — 409 on insert, ETags, 412 on If-Match — is Azurite's own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from email.utils import formatdate
from typing import Any

import requests

from ._base import LoopbackServer, RecordedRequest, Reply

STORAGE_AUDIENCE = "https://storage.azure.com/"
_CANONICAL = {"etag": "ETag", "content-type": "Content-Type", "location": "Location",
              "preference-applied": "Preference-Applied", "dataserviceversion": "DataServiceVersion"}
"""Azure Table storage sends these names in this case (Azurite lower-cases some); clients may depend on it."""
_HOP = {"host", "authorization", "content-length", "connection", "accept-encoding", "transfer-encoding"}


def _parse(conn: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in conn.split(";") if "=" in part)


class TableGateway(LoopbackServer):
    """``url`` plays ``https://<account>.table.core.windows.net``; tables live in Azurite."""

    def __init__(self, connection_string: str, *, accepted_tokens: set[str]) -> None:
        super().__init__()
        parts = _parse(connection_string)
        self._account = parts["AccountName"]
        self._key = base64.b64decode(parts["AccountKey"])
        self._endpoint = parts["TableEndpoint"].rstrip("/")
        self._tokens = set(accepted_tokens)
        self._session = requests.Session()

    def handle(self, request: RecordedRequest) -> Reply | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return _error(403, "AuthenticationFailed", "Server failed to authenticate the request.")
        if token not in self._tokens:
            return _error(403, "AuthorizationFailure", "This request is not authorized to perform this operation.")
        if request.headers.get("x-ms-version") != "2019-02-02":
            return _error(400, "InvalidHeaderValue", "The value for one of the HTTP headers is not in the correct "
                          "format. (x-ms-version must be 2019-02-02)")
        if "DataServiceVersion" not in request.headers:
            return _error(400, "InvalidInput", "DataServiceVersion header is required.")
        target = self._endpoint + request.path
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        headers["x-ms-date"] = formatdate(usegmt=True)
        path = "/" + target.split("/", 3)[3]
        signed = f"{headers['x-ms-date']}\n/{self._account}{path}"
        digest = hmac.new(self._key, signed.encode("utf-8"), hashlib.sha256).digest()
        headers["Authorization"] = f"SharedKeyLite {self._account}:{base64.b64encode(digest).decode()}"
        try:
            answer = self._session.request(request.method, target, params=request.query, headers=headers,
                                           data=request.body or None, timeout=30)
        except requests.RequestException:
            return _error(503, "ServerBusy", "The table service is unreachable.")
        kept = [(_CANONICAL.get(k.lower(), k), v) for k, v in answer.headers.items()
                if k.lower() not in _HOP | {"content-encoding", "date", "server", "keep-alive"}]
        return Reply(answer.status_code, answer.content, kept)


def _error(status: int, code: str, message: str) -> Reply:
    body: dict[str, Any] = {"odata.error": {"code": code, "message": {"lang": "en-US", "value": message}}}
    return Reply.json(status, body, content_type="application/json;odata=minimalmetadata")
