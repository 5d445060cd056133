"""Trigger against the strict ADO stand-in: retries that honour Retry-After, and refusals that explain."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from amlrelay.auth import EntraCredential, KeyVaultPatCredential, managed_identity
from amlrelay.errors import AdoError, AuthError
from amlrelay.events import parse_events
from amlrelay.router import build_request
from amlrelay.routes import load_routes
from amlrelay.trigger import AdoClient
from tests.conftest import ROUTES_FILE, sample
from tests.servers._base import LoopbackServer, RecordedRequest, Reply
from tests.servers.ado import ADO_RESOURCE, AdoServer
from tests.servers.identity import IdentityServer
from tests.servers.keyvault import KeyVaultServer
from tests.stack import pipelines_for

ROUTES = load_routes(ROUTES_FILE)


def request_for(name: str = "model_registered") -> Any:
    event = parse_events([sample("event-grid-schema", name)])[0]
    route = {"model_registered": "deploy-registered-model", "run_completed": "evaluate-trained-model"}[name]
    return build_request(ROUTES.by_name(route), event)  # type: ignore[arg-type]


@pytest.fixture
def ado(identity_server: IdentityServer, azure_env: dict[str, str]) -> Iterator[AdoServer]:
    token = identity_server.token_for(ADO_RESOURCE)
    with AdoServer("contoso", pipelines=pipelines_for(ROUTES), bearer_tokens={token}) as server:
        yield server


def client(ado: AdoServer, **kw: Any) -> AdoClient:
    options: dict[str, Any] = {"retries": 3, "backoff": 0, "timeout": 2, "max_retry_after": 2, **kw}
    return AdoClient(ado.org_url, EntraCredential(managed_identity(None)), **options)


def test_a_run_is_started_with_the_managed_identity_token(ado: AdoServer, identity_server: IdentityServer) -> None:
    run = client(ado).run_pipeline(request_for())
    assert run.id == ado.runs[0]["id"]
    assert run.state == "inProgress"
    assert run.url == ado.runs[0]["_links"]["web"]["href"]
    [token_request] = identity_server.token_requests
    assert token_request.query["resource"] == ADO_RESOURCE


@pytest.mark.parametrize("status", [429, 503])
def test_throttling_and_unavailability_are_retried(ado: AdoServer, status: int) -> None:
    ado.fail(status, retry_after=1 if status == 429 else None, times=2)
    started = time.monotonic()
    run = client(ado).run_pipeline(request_for())
    assert run.id == 1
    assert len(ado.run_requests) == 3
    if status == 429:
        assert time.monotonic() - started >= 2  # Retry-After: 1, twice


@pytest.mark.parametrize("status", [500, 502])
def test_errors_after_which_the_run_may_exist_are_not_resent_blindly(ado: AdoServer, status: int) -> None:
    ado.accept_then_fail(status)
    with pytest.raises(AdoError) as info:
        client(ado).run_pipeline(request_for())
    assert info.value.ambiguous
    assert len(ado.run_requests) == 1
    assert len(ado.runs) == 1  # ADO queued it: a resend would have started a second run


def test_reads_are_retried_on_server_errors(ado: AdoServer) -> None:
    ado.fail(500, method="GET", times=2)
    assert client(ado).list_runs("mlops", 20) == []


def test_retry_after_is_capped(ado: AdoServer) -> None:
    ado.fail(429, retry_after=3600)
    started = time.monotonic()
    client(ado, max_retry_after=0.2).run_pipeline(request_for())
    assert time.monotonic() - started < 5


def test_persistent_throttling_fails_with_a_remedy(ado: AdoServer) -> None:
    ado.fail(429, retry_after=0, times=10)
    with pytest.raises(AdoError) as info:
        client(ado, retries=2).run_pipeline(request_for())
    assert info.value.status == 429
    assert info.value.retryable
    assert "TF400733" in info.value.message
    assert len(ado.run_requests) == 3
    assert ado.runs == []


def test_bad_request_passes_on_ados_message(ado: AdoServer) -> None:
    request = request_for()
    request.body["variables"]["NOT_SETTABLE"] = {"value": "x", "isSecret": False}
    with pytest.raises(AdoError) as info:
        client(ado).run_pipeline(request)
    assert info.value.status == 400
    assert "NOT_SETTABLE" in info.value.message
    assert "settable at queue time" in info.value.hint
    assert len(ado.run_requests) == 1  # 400 is final: not retried


def test_connection_reset_after_sending_is_not_retried_and_says_so(ado: AdoServer) -> None:
    ado.reset(after_create=True)
    with pytest.raises(AdoError) as info:
        client(ado).run_pipeline(request_for())
    assert (info.value.status, info.value.ambiguous, info.value.retryable) == (None, True, True)
    assert info.value.message == (f"No answer from ADO for pipeline 20 in project 'mlops' of {ado.org_url}: "
                                  "connection reset")
    assert info.value.hint == "The request may have reached ADO: check the pipeline's runs before starting it again."
    assert len(ado.runs) == 1  # the run exists: a blind retry would have started a second one
    assert len(ado.run_requests) == 1


def test_timeout_is_reported_as_possibly_started(ado: AdoServer) -> None:
    ado.delay(3)
    with pytest.raises(AdoError, match=r"did not answer within 0\.5 s") as info:
        client(ado, timeout=0.5).run_pipeline(request_for())
    assert (info.value.status, info.value.ambiguous, info.value.retryable) == (None, True, True)
    assert info.value.hint == "The run may have started: check the pipeline's runs before starting it again."


def test_unreachable_ado_is_retryable_and_names_the_setting() -> None:
    with IdentityServer() as identity:
        pass  # a port that was just closed: nothing listens there
    unreachable = AdoClient(f"{identity.url}/contoso", _StaticCredential(), retries=1, backoff=0)
    with pytest.raises(AdoError) as info:
        unreachable.run_pipeline(request_for())
    assert (info.value.status, info.value.ambiguous, info.value.retryable) == (None, False, True)
    assert info.value.hint == "Check AMLRELAY_ADO_BASE_URL / AMLRELAY_ADO_ORGANIZATION and the network."


def test_sign_in_page_is_recognised_as_a_refused_credential(ado: AdoServer) -> None:
    ado.signin_page()
    with pytest.raises(AdoError) as info:
        client(ado).run_pipeline(request_for())
    assert info.value.message == (f"ADO answered pipeline 20 in project 'mlops' of {ado.org_url} with a sign-in page "
                                  "instead of a run (HTTP 203): it did not accept the handler's managed identity "
                                  "(object id 11111111-1111-1111-1111-111111111111, application id "
                                  "22222222-2222-2222-2222-222222222222).")
    assert (info.value.status, info.value.retryable, info.value.ambiguous) == (203, False, False)
    assert info.value.hint.startswith("Add this identity to the ADO organization as a user with Basic access")


def test_forbidden_names_the_identitys_object_id(ado: AdoServer, identity_server: IdentityServer) -> None:
    ado.forbid(identity_server.token_for(ADO_RESOURCE))
    with pytest.raises(AdoError) as info:
        client(ado).run_pipeline(request_for())
    assert info.value.status == 403
    assert identity_server.object_id in info.value.message
    assert "Queue builds" in info.value.hint


def test_pat_is_read_once_from_key_vault_and_sent_as_basic(ado: AdoServer, keyvault_server: KeyVaultServer) -> None:
    ado.add_pat("pat-from-vault")
    keyvault_server.set_secret("ado-pat", "pat-from-vault")
    credential = KeyVaultPatCredential(keyvault_server.url, "ado-pat", managed_identity(None))
    pat_client = AdoClient(ado.org_url, credential, backoff=0)
    pat_client.run_pipeline(request_for())
    pat_client.run_pipeline(request_for("run_completed"))
    assert len(ado.runs) == 2
    authorized_reads = [r for r in keyvault_server.requests if "Authorization" in r.headers]
    assert len(authorized_reads) == 1  # one challenge round trip, then one read for the whole job


def test_key_vault_forbidden_says_which_role_to_grant(keyvault_server: KeyVaultServer,
                                                      azure_env: dict[str, str]) -> None:
    keyvault_server.set_secret("ado-pat", "x")
    keyvault_server.forbid()
    credential = KeyVaultPatCredential(keyvault_server.url, "ado-pat", managed_identity(None))
    with pytest.raises(AuthError, match="Key Vault Secrets User"):
        credential.authorization()


def test_missing_secret_is_named(keyvault_server: KeyVaultServer, azure_env: dict[str, str]) -> None:
    credential = KeyVaultPatCredential(keyvault_server.url, "nope", managed_identity(None))
    with pytest.raises(AuthError, match=r"'nope' in Key Vault .* does not exist"):
        credential.authorization()


def test_every_body_sent_is_valid_against_the_official_spec(ado: AdoServer) -> None:
    for name in ("model_registered", "run_completed"):
        client(ado).run_pipeline(request_for(name))
    assert ado.errors == []  # the stand-in validates every body against the spec and every answer too
    assert len(ado.runs) == 2  # ... and accepted both


class _StaticCredential:
    def authorization(self) -> str:
        return "Bearer static"

    def describe(self) -> str:
        return "a static test token"

    def remedy(self, status: int) -> str:
        return "n/a"


class _NotAdo(LoopbackServer):
    """Something at ADO's address that is not ADO (a proxy, a wrong base URL): 200s that hold no runs."""

    def __init__(self, reply: Reply) -> None:
        super().__init__()
        self.reply = reply

    def handle(self, request: RecordedRequest) -> Reply | None:
        return self.reply


@pytest.mark.parametrize("reply", [
    Reply(200, b"<html><title>Azure DevOps Services | Sign In</title></html>", [("Content-Type", "text/html")]),
    Reply.json(200, {"count": 0}), Reply.json(200, [{"id": 1}])], ids=["html", "no-value", "a-list"])
def test_an_answer_that_holds_no_run_list_is_a_refusal_not_a_crash(reply: Reply) -> None:
    with _NotAdo(reply) as server, pytest.raises(AdoError) as info:
        AdoClient(f"{server.url}/contoso", _StaticCredential(), retries=0, backoff=0).list_runs("mlops", 20)
    assert info.value.message.startswith(f"ADO answered runs of pipeline 20 in project 'mlops' of {server.url}"
                                         "/contoso with a sign-in page instead of a run (HTTP 200)")


def test_entries_of_a_run_list_without_a_numeric_id_are_left_out() -> None:
    runs = [{"id": 3, "state": "completed"}, {"id": "4"}, {"state": "inProgress"}, "5", {"id": 7}]
    with _NotAdo(Reply.json(200, {"count": 5, "value": runs})) as server:
        listed = AdoClient(f"{server.url}/contoso", _StaticCredential(), retries=0, backoff=0).list_runs("mlops", 20)
    assert [r["id"] for r in listed] == [7, 3]


@contextmanager
def raw_ado(behave: Callable[[socket.socket], None]) -> Iterator[int]:
    """A loopback port whose listening socket ``behave`` drives byte by byte in a thread (what no HTTP server
    does: stall mid-body, stop listening); yields the port, then waits for ``behave`` to finish."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    thread = threading.Thread(target=behave, args=(listener,), daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        thread.join()
        listener.close()


def test_an_answer_cut_off_mid_body_is_reported_as_no_answer_in_time() -> None:
    """Headers arrive, then the body stalls past the timeout (a gateway hanging mid-response): the run may
    exist, so it is ambiguous, and it says it was a timeout."""
    def stall(listener: socket.socket) -> None:
        connection, _ = listener.accept()
        connection.recv(65536)
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"id\"")
        time.sleep(1)  # twice the client's timeout
        connection.close()

    with raw_ado(stall) as port, pytest.raises(AdoError) as info:
        AdoClient(f"http://127.0.0.1:{port}/contoso", _StaticCredential(), retries=0, backoff=0,
                  timeout=0.5).run_pipeline(request_for())
    assert info.value.message == (f"ADO did not answer within 0.5 s for pipeline 20 in project 'mlops' of "
                                  f"http://127.0.0.1:{port}/contoso.")
    assert (info.value.ambiguous, info.value.retryable) == (True, True)


@pytest.mark.parametrize("reply", [
    Reply.json(203, {"message": "sign in"}), Reply(202, b"<html>Sign In</html>", [("Content-Type", "text/html")]),
    Reply.json(200, {"state": "inProgress"}), Reply(204)], ids=["203-json", "202-html", "200-no-id", "204-empty"])
def test_a_success_status_without_a_run_is_a_refused_credential_never_a_trigger(reply: Reply) -> None:
    """Only a run (an answer with its id) counts as started; any other 2xx — ADO's sign-in pages come as
    200/203 — is refused with the credential's remedy, so no outcome says triggered without a run."""
    with _NotAdo(reply) as server, pytest.raises(AdoError) as info:
        AdoClient(f"{server.url}/contoso", _StaticCredential(), retries=0, backoff=0).run_pipeline(request_for())
    assert info.value.message == (f"ADO answered pipeline 20 in project 'mlops' of {server.url}/contoso with a "
                                  f"sign-in page instead of a run (HTTP {reply.status}): it did not accept a static "
                                  "test token.")
    assert (info.value.status, info.value.ambiguous) == (reply.status, False)


def test_a_3xx_that_is_not_followed_is_rejected_with_its_status() -> None:
    """Only 2xx answers are read as a refused sign-in; a 300 (no redirect to follow) is passed on as it is."""
    reply = Reply(300, b"<html>Multiple Choices</html>", [("Content-Type", "text/html")])
    with _NotAdo(reply) as server, pytest.raises(AdoError) as info:
        AdoClient(f"{server.url}/contoso", _StaticCredential(), retries=0, backoff=0).run_pipeline(request_for())
    assert info.value.message == (f"ADO rejected the request for pipeline 20 in project 'mlops' of {server.url}"
                                  "/contoso (HTTP 300): Multiple Choices")
    assert info.value.status == 300


class _Answers(LoopbackServer):
    """Answers from a script, one per request, then 404s."""

    def __init__(self, *replies: Reply) -> None:
        super().__init__()
        self.replies = list(replies)

    def handle(self, request: RecordedRequest) -> Reply | None:
        return self.replies.pop(0) if self.replies else Reply.json(404, {"message": "gone"})


def test_a_read_refused_with_413_and_retry_after_is_retried_after_it() -> None:
    """Retry-After is honoured on every status that may carry it (429, 503 and 413), not only the listed ones."""
    with _Answers(Reply.json(413, {"message": "too large"}, [("Retry-After", "1")]),
                  Reply.json(200, {"id": 5, "state": "completed"})) as server:
        started = time.monotonic()
        run = AdoClient(f"{server.url}/contoso", _StaticCredential(), retries=1, backoff=0,
                        max_retry_after=5).get_run("mlops", 20, 5)
        assert time.monotonic() - started >= 0.9
        assert run["id"] == 5
        assert len(server.requests) == 2
