"""What the ledger says when storage or its identity fails it: the action, the table and the cause as the
service gave it, and a hint for *that* way of reaching storage (the identity when no token came, a role when
storage refused a token, the endpoint otherwise). Storage is a scripted stand-in answering what the Table
service, a proxy or a firewall would; tokens come from the managed identity stand-in."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from azure.core.credentials import AccessToken, AccessTokenInfo, AzureNamedKeyCredential
from azure.core.exceptions import ClientAuthenticationError
from azure.data.tables import TableClient
from azure.identity import ManagedIdentityCredential

from amlrelay._ledger_errors import NoStorageToken, StorageToken
from amlrelay.errors import LedgerError
from amlrelay.ledger import Ledger
from tests.servers import RecordedRequest
from tests.servers._base import LoopbackServer, Reply
from tests.servers.identity import CONFLICTING_ENV, IdentityServer
from tests.servers.tls import TlsMaterial

STORAGE = "https://storage.azure.com/.default"
UNKNOWN_ID = "11111111-2222-3333-4444-555555555555"
REACH_HINT = ("Check the ledger's storage endpoint (AMLRELAY_LEDGER_CONNECTION_STRING locally, "
              "AMLRELAY_LEDGER_TABLE_URL in Azure) and the network path to it (the account's firewall); locally, "
              "is Azurite running (scripts/azurite start)?")
TOKEN_HINT = ("Check which identity the ledger uses: the Automation account's system-assigned identity must be on "
              "(Account Settings > Identity), or AMLRELAY_MANAGED_IDENTITY_CLIENT_ID must be the client id of a "
              "user-assigned identity attached to the account; from a workstation set AMLRELAY_CREDENTIAL=default and "
              "az login. That identity also needs the role 'Storage Table Data Contributor' on the ledger's storage "
              "account.")


class ScriptedTable(LoopbackServer):
    """Answers every request with one reply, over HTTPS when given a certificate (bearer tokens need it)."""

    def __init__(self, reply: Reply, tls: TlsMaterial | None = None) -> None:
        super().__init__(ssl_context=tls.server_context() if tls else None)
        self.scheme = "https" if tls else "http"
        self.reply = reply

    def handle(self, request: RecordedRequest) -> Reply | None:
        return self.reply


def _table_error(status: int, code: str, text: str, *, header: bool = True) -> Reply:
    body = {"odata.error": {"code": code, "message": {"lang": "en-US", "value": text}}}
    return Reply.json(status, body, headers=[("x-ms-error-code", code)] if header else [],
                      content_type="application/json;odata=minimalmetadata")


def _keyed(url: str) -> Ledger:
    return Ledger.from_table_url(url, AzureNamedKeyCredential("devstoreaccount1", "a2V5"), table="ledger",
                                 retry_total=0)


def _closed_port() -> int:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port: int = closed.getsockname()[1]
    return port


@pytest.fixture
def managed_identity(identity_server: IdentityServer, monkeypatch: pytest.MonkeyPatch) -> IdentityServer:
    for name in CONFLICTING_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in identity_server.env().items():
        monkeypatch.setenv(name, value)
    return identity_server


def test_a_proxy_page_instead_of_storage_is_reported_by_its_status() -> None:
    page = Reply(502, b"<html>Bad Gateway</html>", [("Content-Type", "text/html")])
    with ScriptedTable(page) as proxy, pytest.raises(LedgerError) as caught:
        _keyed(proxy.url).get("k")
    assert caught.value.message == (f"Ledger storage error while trying to read the ledger (table 'ledger' at "
                                    f"{proxy.url}): HTTP 502: Bad Gateway")
    assert caught.value.hint == REACH_HINT


def test_only_a_missing_table_says_to_create_it() -> None:
    """A 404 for anything else (an endpoint that is not the ledger's account) sends the reader to the endpoint."""
    elsewhere = _table_error(404, "ResourceNotFound", "The specified resource does not exist.")
    with ScriptedTable(elsewhere) as wrong, pytest.raises(LedgerError) as caught:
        _keyed(wrong.url).recent()
    assert caught.value.message == (f"Ledger storage error while trying to list ledger records (table 'ledger' at "
                                    f"{wrong.url}): HTTP 404 ResourceNotFound: Not Found")
    assert caught.value.hint == REACH_HINT
    missing = _table_error(404, "TableNotFound", "The table specified does not exist.", header=False)
    with ScriptedTable(missing) as storage, pytest.raises(LedgerError) as no_table:  # the code in the body only
        _keyed(storage.url).recent()
    assert no_table.value.message.endswith(": HTTP 404 TableNotFound: Not Found")
    assert no_table.value.hint == "Create the table (infra deploys it; Ledger.ensure_table() locally)."


def test_unreachable_storage_says_why_the_connection_failed() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(LedgerError) as caught:
        _keyed(url).get("k")
    assert caught.value.message.startswith(f"Ledger storage unreachable while trying to read the ledger (table "
                                           f"'ledger' at {url}): ")
    assert "Connection refused" in caught.value.message
    assert caught.value.hint == REACH_HINT


def test_storage_refusing_the_identitys_token_is_a_missing_role(loopback_tls: TlsMaterial,
                                                                managed_identity: IdentityServer) -> None:
    """The code Azure sends when the identity has no data role, spelled as the service spells it."""
    refusal = _table_error(403, "AuthorizationPermissionMismatch",
                           "This request is not authorized to perform this operation using this permission.")
    with ScriptedTable(refusal, loopback_tls) as storage:
        ledger = Ledger.from_table_url(storage.url, ManagedIdentityCredential(retry_total=0), table="ledger",
                                       retry_total=0, connection_verify=str(loopback_tls.cert_file))
        with pytest.raises(LedgerError) as caught:
            ledger.get("k")
    assert caught.value.message == (f"Ledger access denied while trying to read the ledger (table 'ledger' at "
                                    f"{storage.url}): HTTP 403 AuthorizationPermissionMismatch: Forbidden")
    assert caught.value.hint == (
        "Give the identity the ledger uses (the Automation account's managed identity, or the user-assigned one "
        "AMLRELAY_MANAGED_IDENTITY_CLIENT_ID names; with AMLRELAY_CREDENTIAL=default, your az login) the role "
        "'Storage Table Data Contributor' on the storage account; a new role assignment takes a few minutes to apply.")


def test_a_table_client_built_by_hand_reports_no_token_as_the_identitys_problem(
        managed_identity: IdentityServer) -> None:
    """``Ledger(TableClient(...))`` with a bare credential: its failure is still the identity's, not storage's."""
    url = f"https://127.0.0.1:{_closed_port()}"  # never asked: the token comes first
    client = TableClient(endpoint=url, table_name="ledger", credential=ManagedIdentityCredential(retry_total=0),
                         retry_total=0)
    managed_identity.fail(401)
    with pytest.raises(LedgerError) as caught:
        Ledger(client).get("k")
    assert caught.value.message == (
        f"Ledger: no token for storage from the handler's managed identity to read the ledger (table 'ledger' at "
        f"{url}): the managed identity endpoint (IDENTITY_ENDPOINT) refused the request with HTTP 401, because the "
        "IDENTITY_HEADER value this job sent is not the one Automation gave the sandbox.")
    assert caught.value.hint == ("Do not set IDENTITY_HEADER yourself (as a variable, in the runbook or on a Hybrid "
                                 "Worker): Automation sets it for each job. Start the job again without overriding it.")


# ---- the credential the ledger hands the table client ------------------------------------------------------

class GetTokenOnly:
    """A credential from before get_token_info (azure-identity < 1.18, which pyproject allows)."""

    def __init__(self, inner: Any) -> None:
        self.get_token = inner.get_token


class Recording:
    """What the table client's bearer policy asked for, as the credential received it."""

    def __init__(self, *, info: bool) -> None:
        self.calls: list[tuple[str, tuple[str, ...], dict[str, Any]]] = []
        if info:
            self.get_token_info = self._get_token_info

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.calls.append(("get_token", scopes, kwargs))
        return AccessToken("t", 2_000_000_000)

    def _get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        self.calls.append(("get_token_info", scopes, {"options": options}))
        return AccessTokenInfo("t", 2_000_000_000)


def test_the_storage_token_is_the_identitys_own(managed_identity: IdentityServer) -> None:
    """Both token methods give the identity's token for storage; get_token_info keeps when to refresh it (the
    bearer policy of azure-core >= 1.31 refreshes a managed identity's token early with it)."""
    expected = managed_identity.token_for("https://storage.azure.com")
    token = StorageToken(ManagedIdentityCredential(retry_total=0))
    info = token.get_token_info(STORAGE)
    assert (info.token, info.expires_on) == (expected, managed_identity.expires_on)
    assert info.refresh_on is not None
    fresh = StorageToken(ManagedIdentityCredential(retry_total=0))  # not from the cache, which rounds expires_on
    assert fresh.get_token(STORAGE) == AccessToken(expected, managed_identity.expires_on)
    older = StorageToken(GetTokenOnly(ManagedIdentityCredential(retry_total=0))).get_token_info(STORAGE)
    assert (older.token, older.expires_on) == (expected, managed_identity.expires_on)


def test_the_storage_token_passes_the_policys_request_through() -> None:
    """A claims challenge or another tenant (the table client's challenge policy asks for one) reaches the
    identity as asked, whichever method the credential has."""
    with_info = Recording(info=True)
    StorageToken(with_info).get_token_info(STORAGE, options={"tenant_id": "contoso"})
    StorageToken(with_info).get_token(STORAGE, tenant_id="contoso")
    older = Recording(info=False)
    info = StorageToken(older).get_token_info(STORAGE, options={"tenant_id": "contoso"})
    assert (info.token, info.expires_on) == ("t", 2_000_000_000)
    StorageToken(older).get_token_info(STORAGE)
    assert with_info.calls == [("get_token_info", (STORAGE,), {"options": {"tenant_id": "contoso"}}),
                               ("get_token", (STORAGE,), {"tenant_id": "contoso"})]
    assert older.calls == [("get_token", (STORAGE,), {"tenant_id": "contoso"}), ("get_token", (STORAGE,), {})]


@pytest.mark.parametrize("method", ["get_token", "get_token_info", "get_token_info of an older credential"])
def test_no_token_is_marked_as_the_identitys_with_its_cause(managed_identity: IdentityServer, method: str) -> None:
    credential: Any = ManagedIdentityCredential(client_id=UNKNOWN_ID, retry_total=0)  # 400: not on this account
    token = StorageToken(GetTokenOnly(credential) if "older" in method else credential, UNKNOWN_ID)
    with pytest.raises(NoStorageToken) as caught:
        getattr(token, method.split()[0])(STORAGE)
    assert caught.value.message == f"Ledger: no token for storage from the user-assigned managed identity {UNKNOWN_ID}."
    assert caught.value.hint == TOKEN_HINT
    assert isinstance(caught.value.cause, ClientAuthenticationError)
    assert "No Managed Identity found" in str(caught.value.cause)
    assert caught.value.client_id == UNKNOWN_ID
