"""Credentials: which token or PAT reaches ADO, how the identity is named in errors, and what to do about it."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from amlrelay.auth import (
    ADO_RESOURCE,
    EntraCredential,
    KeyVaultPatCredential,
    _claims,
    identity_error,
    managed_identity,
)
from amlrelay.errors import AuthError
from tests.servers._jwt import DEFAULT_CLIENT_ID, DEFAULT_OBJECT_ID
from tests.servers.identity import IdentityServer
from tests.servers.keyvault import KeyVaultServer

UA = "33333333-3333-3333-3333-333333333333"


def jwt(claims: object) -> str:
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"e30.{payload}.sig"


def test_claims_name_the_identity_and_nothing_else() -> None:
    assert _claims(jwt({"oid": "o", "appid": "a", "azp": "z", "upn": "someone", "exp": 1})) == {
        "oid": "o", "appid": "a", "azp": "z"}
    assert _claims(jwt({"oid": 5})) == {}
    assert _claims(jwt(["not", "an", "object"])) == {}
    assert _claims("no-dots") == {}
    assert _claims("a.!!!.c") == {}


def test_the_token_for_the_ado_resource_is_sent_and_the_identity_described(identity_server: IdentityServer,
                                                                          azure_env: dict[str, str]) -> None:
    credential = EntraCredential(managed_identity(None))
    assert credential.describe() == "the handler's managed identity"  # before any token: words only
    assert credential.authorization() == f"Bearer {identity_server.token_for(ADO_RESOURCE)}"
    assert [r.query["resource"] for r in identity_server.token_requests] == [ADO_RESOURCE]
    assert credential.describe() == (f"the handler's managed identity (object id {DEFAULT_OBJECT_ID}, "
                                     f"application id {DEFAULT_CLIENT_ID})")


def test_a_user_assigned_identity_is_asked_for_and_named(azure_env: dict[str, str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    with IdentityServer(user_assigned={UA: "44444444-4444-4444-4444-444444444444"}) as identity:
        for name, value in identity.env().items():
            monkeypatch.setenv(name, value)
        credential = EntraCredential(managed_identity(UA), client_id=UA, resource="https://vault.azure.net")
        assert credential.authorization() == f"Bearer {identity.token_for('https://vault.azure.net', UA)}"
        assert [r.query.get("client_id") for r in identity.token_requests] == [UA]
        assert credential.describe().startswith(f"the user-assigned managed identity {UA} (object id 4444")


def test_describe_falls_back_to_azp_and_to_what_is_known() -> None:
    class Fixed:
        def __init__(self, token: str) -> None:
            self.token = token

        def get_token(self, *scopes: str, **kw: object) -> object:
            return self

    only_azp = EntraCredential(Fixed(jwt({"azp": "z"})))  # type: ignore[arg-type]
    only_azp.authorization()
    assert only_azp.describe() == "the handler's managed identity (application id z)"
    only_oid = EntraCredential(Fixed(jwt({"oid": "o"})))  # type: ignore[arg-type]
    only_oid.authorization()
    assert only_oid.describe() == "the handler's managed identity (object id o)"


def test_remedies_for_401_and_403() -> None:
    entra = EntraCredential(managed_identity(None))
    assert entra.remedy(401) == ("Add this identity to the ADO organization as a user with Basic access "
                                 "(scripts/grant-ado-access does it, or Organization settings > Users > Add).")
    assert entra.remedy(403) == ("Give this identity 'Queue builds' on the pipeline, and 'Edit queue build "
                                 "configuration' if the route sends variables or templateParameters "
                                 "(scripts/grant-ado-access grants exactly these; or Pipelines > ... > Manage "
                                 "security).")
    pat = KeyVaultPatCredential("https://kv.vault.azure.net", "ado-pat", managed_identity(None))
    assert pat.describe() == "the PAT stored in Key Vault secret 'ado-pat'"
    assert pat.remedy(401) == ("The PAT is expired or revoked: create a new one with scope 'Build (Read & execute)' "
                               "and store it in the secret.")
    assert pat.remedy(403) == ("The PAT's owner may not queue this pipeline, or the PAT lacks scope 'Build (Read & "
                               "execute)'.")


@pytest.mark.parametrize(("status", "client_id", "message", "hint"), [
    (500, None, "the managed identity endpoint failed with HTTP 500.", "start the job again in a few minutes"),
    (503, UA, "the managed identity endpoint failed with HTTP 503.", "start the job again in a few minutes"),
])
def test_identity_endpoint_failures_are_explained(identity_server: IdentityServer, azure_env: dict[str, str],
                                                 status: int, client_id: str | None, message: str,
                                                 hint: str) -> None:
    identity_server.fail(status, times=20)
    with pytest.raises(AuthError) as caught:
        EntraCredential(managed_identity(client_id), client_id=client_id).authorization()
    who = f"the user-assigned managed identity {client_id}" if client_id else "the handler's managed identity"
    assert caught.value.message == f"No Entra token for ADO from {who}: {message}"
    assert hint in (caught.value.hint or "")


def test_a_wrong_identity_header_and_an_unknown_identity_are_told_apart(identity_server: IdentityServer,
                                                                       azure_env: dict[str, str],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(AuthError) as unknown:
        EntraCredential(managed_identity(UA), client_id=UA).authorization()
    assert unknown.value.message == (f"No Entra token for ADO from the user-assigned managed identity {UA}: the "
                                     f"managed identity endpoint does not know the user-assigned identity {UA} "
                                     "(HTTP 400).")
    assert unknown.value.hint == ("Attach that identity to the Automation account, or fix "
                                  "AMLRELAY_MANAGED_IDENTITY_CLIENT_ID.")
    monkeypatch.setenv("IDENTITY_HEADER", "not-the-sandbox-value")
    with pytest.raises(AuthError) as wrong_header:
        EntraCredential(managed_identity(None)).authorization()
    assert "refused the request with HTTP 401, because the IDENTITY_HEADER value" in wrong_header.value.message
    assert "Do not set IDENTITY_HEADER yourself" in (wrong_header.value.hint or "")


def test_an_unexplained_failure_keeps_its_first_line_and_the_setup_hint() -> None:
    error = identity_error(RuntimeError("something odd\nmore"), "No token")
    assert error.message == "No token: something odd"
    assert error.hint == ("Turn on the Automation account's system-assigned identity (Account Settings > Identity), "
                          "or set AMLRELAY_MANAGED_IDENTITY_CLIENT_ID to a user-assigned identity attached to it.")
    assert identity_error(RuntimeError(""), "No token").message == "No token: RuntimeError"


def test_the_default_credential_is_for_workstations_only() -> None:
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    assert isinstance(managed_identity(None), ManagedIdentityCredential)
    assert isinstance(managed_identity(UA), ManagedIdentityCredential)
    assert isinstance(managed_identity(None, kind="default"), DefaultAzureCredential)


def test_the_pat_goes_as_basic_with_an_empty_user_and_is_read_once(keyvault_server: KeyVaultServer,
                                                                    azure_env: dict[str, str]) -> None:
    keyvault_server.set_secret("ado-pat", "pat-from-vault")
    credential = KeyVaultPatCredential(keyvault_server.url, "ado-pat", managed_identity(None))
    header = credential.authorization()
    assert header == "Basic " + base64.b64encode(b":pat-from-vault").decode()
    assert credential.authorization() == header
    assert len([r for r in keyvault_server.requests if "Authorization" in r.headers]) == 1


def test_an_empty_or_unreadable_pat_is_explained(keyvault_server: KeyVaultServer, azure_env: dict[str, str]) -> None:
    keyvault_server.set_secret("empty", "")
    with pytest.raises(AuthError) as empty:
        KeyVaultPatCredential(keyvault_server.url, "empty", managed_identity(None)).authorization()
    assert empty.value.message == f"The secret 'empty' in Key Vault {keyvault_server.url} is empty."
    assert empty.value.hint == "Store the ADO PAT as the secret's value."
    keyvault_server.set_secret("ado-pat", "x")
    keyvault_server.forbid()
    with pytest.raises(AuthError) as forbidden:
        KeyVaultPatCredential(keyvault_server.url, "ado-pat", managed_identity(None)).authorization()
    assert forbidden.value.message == (f"Key Vault refused to give the secret 'ado-pat' in Key Vault "
                                       f"{keyvault_server.url} to the handler's identity (HTTP 403).")
    keyvault_server.allow()
    with pytest.raises(AuthError) as missing:
        KeyVaultPatCredential(keyvault_server.url, "nope", managed_identity(None)).authorization()
    assert missing.value.message == f"The secret 'nope' in Key Vault {keyvault_server.url} does not exist."
    assert missing.value.hint == "Store the ADO PAT there (az keyvault secret set) or fix AMLRELAY_PAT_SECRET_NAME."


@pytest.mark.parametrize("client_id", [None, UA])
def test_a_token_for_an_unknown_resource_is_explained_as_entra_refuses_it(azure_env: dict[str, str],
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          client_id: str | None) -> None:
    """Entra answers AADSTS500011 for an audience it does not know: the user is sent to the setting it came
    from, not told that the identity is missing (which a 400 for a user-assigned identity would otherwise say)."""
    with IdentityServer(user_assigned={UA: "44444444-4444-4444-4444-444444444444"}) as identity:
        for name, value in identity.env().items():
            monkeypatch.setenv(name, value)
        credential = EntraCredential(managed_identity(client_id), client_id=client_id,
                                     resource="https://ado.contoso.invalid")
        with pytest.raises(AuthError) as caught:
            credential.authorization()
    who = f"the user-assigned managed identity {client_id}" if client_id else "the handler's managed identity"
    assert caught.value.message == (f"No Entra token for ADO from {who}: Entra ID knows no resource by the name the "
                                    "token was asked for (AADSTS500011).")
    assert caught.value.hint == ("Check the setting the token's audience comes from: AMLRELAY_ARM_URL / "
                                 "AMLRELAY_ARM_AUDIENCE (your cloud's ARM endpoint) or AMLRELAY_ADO_RESOURCE.")


def test_a_wrong_identity_header_is_explained_with_what_not_to_do(identity_server: IdentityServer,
                                                                  azure_env: dict[str, str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDENTITY_HEADER", "not-the-sandbox-value")
    with pytest.raises(AuthError) as caught:
        EntraCredential(managed_identity(None)).authorization()
    assert caught.value.message == (
        "No Entra token for ADO from the handler's managed identity: the managed identity endpoint "
        "(IDENTITY_ENDPOINT) refused the request with HTTP 401, because the IDENTITY_HEADER value this job sent is "
        "not the one Automation gave the sandbox.")
    assert caught.value.hint == ("Do not set IDENTITY_HEADER yourself (as a variable, in the runbook or on a Hybrid "
                                 "Worker): Automation sets it for each job. Start the job again without overriding it.")


@pytest.mark.parametrize("oid", ["o" * n for n in range(1, 13)])
def test_claims_are_read_whatever_the_token_s_length(oid: str) -> None:
    """JWTs drop base64 padding; every payload length must still decode, or errors lose the identity's name."""
    assert _claims(jwt({"oid": oid, "appid": "a"})) == {"oid": oid, "appid": "a"}


def test_an_unexplained_failure_is_cut_to_300_characters() -> None:
    error = identity_error(RuntimeError("x" * 400), "No token")
    assert error.message == "No token: " + "x" * 300


@pytest.mark.parametrize(("lifetime", "tokens"), [(3600, 1), (240, 3)])
def test_tokens_are_reused_while_fresh_and_fetched_again_before_expiry(azure_env: dict[str, str],
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       lifetime: int, tokens: int) -> None:
    """An hour-long token serves every call; one within 5 minutes of expiry is never sent, a new one is."""
    with IdentityServer(lifetime=lifetime) as identity:
        for name, value in identity.env().items():
            monkeypatch.setenv(name, value)
        credential = EntraCredential(managed_identity(None))
        sent = [credential.authorization().removeprefix("Bearer ") for _ in range(3)]
    assert len(identity.token_requests) == tokens
    assert len(set(sent)) == tokens
    assert [t.token for t in identity.issued] == list(dict.fromkeys(sent))
    assert {t.resource for t in identity.issued} == {ADO_RESOURCE}


@pytest.mark.parametrize(("status", "client_id"), [(500, None), (502, None), (503, UA)])
def test_an_endpoint_s_own_failure_says_to_start_again_later(status: int, client_id: str | None) -> None:
    """Whatever identity was asked for: a 5xx is the endpoint's trouble, not an identity it does not know."""
    error = identity_error(RuntimeError(f"Token request error: (server_error) {status}, busy"), "No token", client_id)
    assert error.message == f"No token: the managed identity endpoint failed with HTTP {status}."
    assert error.hint == "This is Automation's own endpoint: start the job again in a few minutes."
    below = identity_error(RuntimeError("Token request error: (x) 499, no"), "No token")
    assert "failed with HTTP" not in below.message


def test_a_vault_in_another_tenant_refuses_the_token_with_a_401(azure_env: dict[str, str],
                                                                keyvault_server: KeyVaultServer) -> None:
    other_tenant = KeyVaultServer({"ado-pat": "x"}, tls=keyvault_server.tls,
                                  tenant_id="11111111-1111-1111-1111-111111111111")
    with other_tenant as vault, pytest.raises(AuthError) as caught:
        KeyVaultPatCredential(vault.url, "ado-pat", managed_identity(None)).authorization()
    assert caught.value.message == (f"Key Vault refused to give the secret 'ado-pat' in Key Vault {vault.url} to "
                                    "the handler's identity (HTTP 401).")
    assert caught.value.hint == ("Grant the Automation account's managed identity the 'Key Vault Secrets User' role "
                                 "on the vault (RBAC), then start the job again.")


def test_another_vault_error_is_passed_on_with_where_to_look(azure_env: dict[str, str],
                                                             keyvault_server: KeyVaultServer) -> None:
    keyvault_server.set_secret("ado-pat", "x")
    keyvault_server.fail(400, times=5)
    with pytest.raises(AuthError) as caught:
        KeyVaultPatCredential(keyvault_server.url, "ado-pat", managed_identity(None)).authorization()
    assert caught.value.message == (f"Reading the secret 'ado-pat' in Key Vault {keyvault_server.url} failed: "
                                    "(BadParameter) Scripted 400 from the Key Vault stand-in.")
    assert caught.value.hint == "Check the vault URL and its network rules."


def test_no_token_to_read_the_vault_is_an_identity_problem(azure_env: dict[str, str], keyvault_server: KeyVaultServer,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    keyvault_server.set_secret("ado-pat", "x")
    monkeypatch.setenv("IDENTITY_HEADER", "not-the-sandbox-value")
    with pytest.raises(AuthError) as caught:
        KeyVaultPatCredential(keyvault_server.url, "ado-pat", managed_identity(None)).authorization()
    assert caught.value.message.startswith(f"No token to read the secret 'ado-pat' in Key Vault {keyvault_server.url}: "
                                           "the managed identity endpoint (IDENTITY_ENDPOINT) refused the request with "
                                           "HTTP 401")
    assert "Do not set IDENTITY_HEADER yourself" in (caught.value.hint or "")


def test_a_local_vault_by_name_is_read(azure_env: dict[str, str], keyvault_server: KeyVaultServer) -> None:
    """A loopback vault (a stand-in, a tunnel) cannot answer the challenge a real vault's host would: 127.0.0.1
    and localhost alike are read without challenge-resource verification; every other host is verified."""
    keyvault_server.set_secret("ado-pat", "pat-from-vault")
    url = keyvault_server.url.replace("127.0.0.1", "localhost")
    header = KeyVaultPatCredential(url, "ado-pat", managed_identity(None)).authorization()
    assert header == "Basic " + base64.b64encode(b":pat-from-vault").decode()


def test_an_unreachable_vault_names_the_setting_and_the_firewall(azure_env: dict[str, str]) -> None:
    with socket.socket() as closed:  # a port nothing listens on: the connection is refused
        closed.bind(("127.0.0.1", 0))
        url = f"https://127.0.0.1:{closed.getsockname()[1]}"
    with pytest.raises(AuthError) as caught:
        KeyVaultPatCredential(url, "ado-pat", managed_identity(None)).authorization()
    assert caught.value.message.startswith(f"Reading the secret 'ado-pat' in Key Vault {url} failed: ")
    assert "Connection refused" in caught.value.message
    assert caught.value.hint == "Check AMLRELAY_KEY_VAULT_URL, the vault's firewall and the identity."


def test_the_workstation_credential_asks_for_the_user_assigned_identity_too(azure_env: dict[str, str],
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """``AMLRELAY_CREDENTIAL=default`` on a machine whose only credential is a managed identity (a VM, a
    container) must still use AMLRELAY_MANAGED_IDENTITY_CLIENT_ID, not the system-assigned identity."""
    with IdentityServer(user_assigned={UA: "44444444-4444-4444-4444-444444444444"}) as identity:
        for name, value in identity.env().items():
            monkeypatch.setenv(name, value)
        token = managed_identity(UA, kind="default").get_token(f"{ADO_RESOURCE}/.default").token
    assert token == identity.token_for(ADO_RESOURCE, UA)
    assert [r.query.get("client_id") for r in identity.token_requests] == [UA]


@contextlib.contextmanager
def ipv6_loopback_to(url: str) -> Iterator[int]:
    """A TCP relay from [::1]:port to a stand-in (they listen on 127.0.0.1 only); yields the port. TLS passes
    through untouched, and the stand-ins' certificate names ::1 too."""
    target = urlsplit(url).port
    try:
        listener = socket.socket(socket.AF_INET6)
        listener.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    listener.listen()
    opened: list[socket.socket] = []

    def pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def accept() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", target or 443))
            opened.extend((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=pump, args=(source, sink), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        for connection in opened:
            connection.close()


def test_only_a_loopback_vault_skips_the_challenge_check(azure_env: dict[str, str],
                                                        keyvault_server: KeyVaultServer) -> None:
    """The challenge-resource check keeps the identity's token from a host that is not the vault the challenge
    names: only the loopback names (a stand-in or a tunnel cannot answer that check) skip it. Any other spelling
    of an address, even one that reaches the same vault, is checked, and gets no token."""
    keyvault_server.set_secret("ado-pat", "pat-from-vault")
    with ipv6_loopback_to(keyvault_server.url) as port:
        header = KeyVaultPatCredential(f"https://[::1]:{port}", "ado-pat", managed_identity(None)).authorization()
        assert header == "Basic " + base64.b64encode(b":pat-from-vault").decode()
        keyvault_server.reset_state()
        look_alike = KeyVaultPatCredential(f"https://[0:0:0:0:0:0:0:1]:{port}", "ado-pat", managed_identity(None))
        with pytest.raises(AuthError) as caught:
            look_alike.authorization()
    assert keyvault_server.requests  # the vault was asked (for its challenge) ...
    assert not [r for r in keyvault_server.requests if "Authorization" in r.headers]  # ... but got no token
    assert caught.value.message == (f"Not reading the secret 'ado-pat' in Key Vault https://[0:0:0:0:0:0:0:1]:{port}: "
                                    "that host did not prove to be the vault Key Vault's answer names, so the "
                                    "identity's token was not sent to it.")
    assert caught.value.hint == ("Set AMLRELAY_KEY_VAULT_URL to the vault's own URL as the portal shows it "
                                 "(https://<name>.vault.azure.net, or your cloud's vault domain), not a private-link "
                                 "or alias name.")
