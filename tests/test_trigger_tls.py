"""TLS failures against real loopback servers: a handshake that fails sent nothing, so it is not ambiguous and
says what to fix; a TLS error after the request went out stays ambiguous (ADO may have queued the run)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import urllib3.util.ssl_
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from amlrelay.errors import AdoError
from amlrelay.events import parse_events
from amlrelay.models import AmlEvent
from amlrelay.relay import AMBIGUOUS, Relay
from amlrelay.router import PipelineRunRequest, build_request
from amlrelay.routes import load_routes, parse_routes
from amlrelay.trigger import AdoClient
from amlrelay.validate import SourcePolicy
from tests.conftest import ROUTES_FILE, sample
from tests.servers._base import LoopbackServer, RecordedRequest, Reply
from tests.servers.ado import AdoServer
from tests.servers.tls import TlsMaterial
from tests.stack import pipelines_for

ROUTES = load_routes(ROUTES_FILE)
SECRET = "pat-that-must-never-be-printed"
WHERE = "pipeline 20 in project 'mlops' of {org_url}"


class _Pat:
    def authorization(self) -> str:
        return "Basic " + base64.b64encode(f":{SECRET}".encode()).decode()

    def describe(self) -> str:
        return "a test PAT"

    def remedy(self, status: int) -> str:
        return "n/a"


def request_for() -> PipelineRunRequest:
    event = parse_events([sample("event-grid-schema", "model_registered")])[0]
    assert isinstance(event, AmlEvent)
    route = ROUTES.by_name("deploy-registered-model")
    assert route is not None
    return build_request(route, event)


def client(org_url: str, **kw: Any) -> AdoClient:
    options: dict[str, Any] = {"retries": 2, "backoff": 0, "timeout": 2, **kw}
    return AdoClient(org_url, _Pat(), **options)


@pytest.fixture
def untrusted_ado(loopback_tls: TlsMaterial, monkeypatch: pytest.MonkeyPatch) -> Iterator[AdoServer]:
    """ADO over TLS with a certificate nothing trusts (a proxy or an ADO Server with a private CA)."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.delenv(name, raising=False)
    with AdoServer("contoso", pipelines=pipelines_for(ROUTES), pats={SECRET}, tls=loopback_tls) as server:
        yield server


def assert_safe_to_send_again(error: AdoError) -> None:
    assert (error.status, error.ambiguous, error.settled, error.retryable) == (None, False, False, True)
    assert "Nothing was sent, so sending again is safe once that is fixed." in error.message
    assert SECRET not in str(error)


def test_an_untrusted_certificate_sent_nothing_and_names_what_to_check(untrusted_ado: AdoServer) -> None:
    with pytest.raises(AdoError) as info:
        client(untrusted_ado.org_url).run_pipeline(request_for())
    assert info.value.message == (
        f"Could not connect to ADO for {WHERE.format(org_url=untrusted_ado.org_url)}: its TLS certificate was not "
        "accepted (certificate verify failed: self-signed certificate). Nothing was sent, so sending again is "
        "safe once that is fixed.")
    assert info.value.hint == ("Check that AMLRELAY_ADO_BASE_URL names ADO's host as its certificate does; if a "
                               "proxy intercepts TLS, or ADO Server's certificate comes from a private CA, set "
                               "REQUESTS_CA_BUNDLE to a PEM bundle that includes that CA.")
    assert_safe_to_send_again(info.value)
    assert untrusted_ado.requests == []


def test_the_ca_bundle_the_hint_names_is_what_makes_it_work(untrusted_ado: AdoServer, loopback_tls: TlsMaterial,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(loopback_tls.cert_file))
    run = client(untrusted_ado.org_url).run_pipeline(request_for())
    assert run.id == untrusted_ado.runs[0]["id"]


def test_a_ca_bundle_path_that_does_not_exist_is_named_and_nothing_is_sent(
        untrusted_ado: AdoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hints tell users to set REQUESTS_CA_BUNDLE; a typo in it must say so, not escape as a raw OSError."""
    missing = tmp_path / "contoso-ca.pem"
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(missing))
    with pytest.raises(AdoError) as info:
        client(untrusted_ado.org_url).run_pipeline(request_for())
    assert info.value.message == (
        f"Could not connect to ADO for {WHERE.format(org_url=untrusted_ado.org_url)}: Could not find a suitable "
        f"TLS CA certificate bundle, invalid path: {missing}. Nothing was sent.")
    assert info.value.hint == ("REQUESTS_CA_BUNDLE (or CURL_CA_BUNDLE) must be the path of a PEM file (or folder) "
                               "that exists where the job runs; unset it to use the default CA bundle.")
    assert (info.value.status, info.value.ambiguous, info.value.retryable) == (None, False, False)
    assert untrusted_ado.requests == []


def _certificate_for(name: str, directory: Path) -> TlsMaterial:
    """A self-signed certificate for ``name`` only: trusted, but not for the address the client uses."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "other-cert.pem", directory / "other-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return TlsMaterial(cert_file, key_file)


def _refused_as_another_hosts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AdoError:
    """Run a pipeline at ``localhost`` on an ADO whose trusted certificate names ``ado.contoso.test``."""
    other = _certificate_for("ado.contoso.test", tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(other.cert_file))
    with AdoServer("contoso", pipelines=pipelines_for(ROUTES), pats={SECRET}, tls=other) as server:
        with pytest.raises(AdoError) as info:
            client(server.org_url.replace("127.0.0.1", "localhost")).run_pipeline(request_for())
        assert server.requests == []
    return info.value


def test_a_certificate_for_another_host_sent_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trusted certificate that names another host (AMLRELAY_ADO_BASE_URL uses an alias of ADO's host)."""
    error = _refused_as_another_hosts(tmp_path, monkeypatch)
    assert ("its TLS certificate was not accepted (certificate verify failed: Hostname mismatch, certificate is "
            "not valid for 'localhost'). Nothing was sent") in error.message
    assert "AMLRELAY_ADO_BASE_URL" in error.hint
    assert_safe_to_send_again(error)


def test_a_certificate_for_another_host_checked_by_urllib3_itself_sent_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib3 1.26 (which requests allows), or 2.x over an OpenSSL it cannot leave the host name to, matches the
    host name itself and raises its own CertificateError: the same problem, told the same way."""
    monkeypatch.setattr(urllib3.util.ssl_, "HAS_NEVER_CHECK_COMMON_NAME", False)
    error = _refused_as_another_hosts(tmp_path, monkeypatch)
    assert ("its TLS certificate was not accepted (certificate verify failed: hostname 'localhost' doesn't match "
            "'ado.contoso.test'). Nothing was sent") in error.message
    assert_safe_to_send_again(error)


def test_the_base_url_as_typed_is_known_as_the_request_that_failed(untrusted_ado: AdoServer) -> None:
    """requests sends ``https://LOCALHOST:port/Default Collection`` as ``https://localhost:port/Default%20Collection``
    (an ADO Server collection name has spaces; host names come in capitals): still the request amlrelay sent,
    so still "nothing was sent" rather than an ambiguous failure that makes the relay look for a run."""
    org_url = untrusted_ado.org_url.replace("127.0.0.1", "LOCALHOST").replace("/contoso", "/Default Collection")
    with pytest.raises(AdoError) as info:
        client(org_url).run_pipeline(request_for())
    assert info.value.message.startswith(f"Could not connect to ADO for {WHERE.format(org_url=org_url)}: its TLS "
                                         "certificate was not accepted (certificate verify failed: self-signed")
    assert_safe_to_send_again(info.value)


class _PlainAdo(LoopbackServer):
    """Plain HTTP where the base URL says https (a wrong port, or TLS ended in front of it)."""

    def handle(self, request: RecordedRequest) -> Reply | None:
        return Reply.json(200, {"id": 1, "state": "inProgress"})


def test_plain_http_spoken_to_as_https_sent_nothing() -> None:
    with _PlainAdo() as server:
        org_url = f"{server.url.replace('http://', 'https://')}/contoso"
        with pytest.raises(AdoError) as info:
            client(org_url).run_pipeline(request_for())
        assert server.requests == []  # it read a ClientHello, not a request
    assert info.value.message == (f"Could not connect to ADO for {WHERE.format(org_url=org_url)}: the TLS handshake "
                                  "failed (wrong version number). Nothing was sent, so sending again is safe once "
                                  "that is fixed.")
    assert info.value.hint == ("Check that AMLRELAY_ADO_BASE_URL is ADO's https:// address ('wrong version number' "
                               "means the port speaks plain HTTP), and whether a proxy or firewall interferes with TLS "
                               "(if a proxy intercepts it, set REQUESTS_CA_BUNDLE to a PEM bundle that includes its "
                               "CA).")
    assert_safe_to_send_again(info.value)


@contextmanager
def _raw_tls_server(serve: Callable[[socket.socket], None]) -> Iterator[int]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def accept() -> None:
        connection, _ = listener.accept()
        with connection:
            serve(connection)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        thread.join(5)
        listener.close()


def test_a_handshake_that_never_completes_sent_nothing() -> None:
    """The TCP connection opens, the TLS handshake gets no answer: urllib3 calls it a read timeout, but no
    byte of the request was sent."""
    with _raw_tls_server(lambda connection: time.sleep(1.5)) as port:
        org_url = f"https://127.0.0.1:{port}/contoso"
        with pytest.raises(AdoError) as info:
            client(org_url, timeout=0.5).run_pipeline(request_for())
    assert info.value.message.startswith(f"Could not connect to ADO for {WHERE.format(org_url=org_url)}: the TLS "
                                         "handshake failed (no handshake within 0.5 s).")
    assert_safe_to_send_again(info.value)


def test_a_handshake_reset_by_a_firewall_sent_nothing() -> None:
    """A firewall that resets TLS to hosts it blocks: the reason is the socket's, without "[Errno 104]"."""

    def reset_after_the_client_hello(connection: socket.socket) -> None:
        connection.recv(65536)
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a RST

    with _raw_tls_server(reset_after_the_client_hello) as port:
        org_url = f"https://127.0.0.1:{port}/contoso"
        with pytest.raises(AdoError) as info:
            client(org_url).run_pipeline(request_for())
    assert info.value.message == (f"Could not connect to ADO for {WHERE.format(org_url=org_url)}: the TLS handshake "
                                  "failed (Connection reset by peer). Nothing was sent, so sending again is safe "
                                  "once that is fixed.")
    assert "whether a proxy or firewall interferes with TLS" in info.value.hint
    assert_safe_to_send_again(info.value)


def test_a_proxy_that_refuses_the_tunnel_sent_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTPS_PROXY names a proxy that will not open a tunnel to ADO: no TLS was even attempted, nothing sent."""
    seen: list[bytes] = []

    def refuse(connection: socket.socket) -> None:
        seen.append(connection.recv(65536))
        connection.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        time.sleep(0.2)

    for name in ("NO_PROXY", "no_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    with _raw_tls_server(refuse) as port:
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
        with pytest.raises(AdoError) as info:
            client("https://ado.contoso.test/contoso").run_pipeline(request_for())
    assert seen[0].startswith(b"CONNECT ado.contoso.test:443 ")
    where = WHERE.format(org_url="https://ado.contoso.test/contoso")
    assert info.value.message == (f"Could not connect to ADO for {where}: the connection failed while it was being "
                                  "set up (Tunnel connection failed: 403 Forbidden). Nothing was sent, so sending "
                                  "again is safe once that is fixed.")
    assert info.value.hint == "Check AMLRELAY_ADO_BASE_URL / AMLRELAY_ADO_ORGANIZATION, any proxy, and the network."
    assert_safe_to_send_again(info.value)


def test_a_tls_error_after_the_request_was_sent_stays_ambiguous(loopback_tls: TlsMaterial,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The handshake succeeds, the POST arrives, then the answer is not TLS: OpenSSL's reason is the one of
    plain HTTP spoken to as HTTPS ("wrong version number"), yet here ADO may have queued the run."""
    received: list[bytes] = []

    def answer_in_plain_text(connection: socket.socket) -> None:
        with loopback_tls.server_context().wrap_socket(connection, server_side=True) as tls:
            received.append(tls.recv(65536))
            with socket.socket(fileno=os.dup(tls.fileno())) as raw:  # the same TCP stream, below TLS
                raw.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
            time.sleep(0.3)

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(loopback_tls.cert_file))
    with _raw_tls_server(answer_in_plain_text) as port:
        org_url = f"https://127.0.0.1:{port}/contoso"
        with pytest.raises(AdoError) as info:
            client(org_url).run_pipeline(request_for())
    assert received[0].startswith(b"POST /contoso/mlops/_apis/pipelines/20/runs?api-version=7.1 ")
    assert (info.value.ambiguous, info.value.retryable) == (True, True)
    assert info.value.message == (f"No answer from ADO for {WHERE.format(org_url=org_url)}: a TLS error on the "
                                  "open connection (wrong version number)")
    assert info.value.hint == "The request may have reached ADO: check the pipeline's runs before starting it again."
    assert SECRET not in str(info.value)


class _Redirect(LoopbackServer):
    """Answers the POST with a 307 to an address whose TLS fails: the POST itself went out and was answered."""

    def __init__(self, location: str) -> None:
        super().__init__()
        self.location = location

    def handle(self, request: RecordedRequest) -> Reply | None:
        return Reply(307, b"", [("Location", self.location)])


def test_a_failed_handshake_after_a_redirect_is_not_taken_for_our_request() -> None:
    """Only a handshake for the request amlrelay sent proves nothing was sent; after a redirect the first
    request did reach the server, so this stays ambiguous (safe) rather than guess."""
    with _PlainAdo() as plain, _Redirect(f"{plain.url.replace('http://', 'https://')}/elsewhere") as server:
        with pytest.raises(AdoError) as info:
            client(f"{server.url}/contoso").run_pipeline(request_for())
        assert len(server.requests) == 1
    assert info.value.ambiguous


class _CountingClient(AdoClient):
    looked_up = 0

    def list_runs(self, project: str, pipeline_id: int) -> list[dict[str, Any]]:
        self.looked_up += 1
        return super().list_runs(project, pipeline_id)


def test_the_relay_fails_a_handshake_failure_plainly_without_looking_for_a_run(untrusted_ado: AdoServer) -> None:
    """A route whose body cannot be reconciled is where a needless ``[ambiguous]`` hurts most: it would leave
    the event for a person to decide although no run can exist. The reason is the TLS problem itself."""
    routes = parse_routes(json.dumps({"version": 1, "routes": [
        {"name": "evaluate", "events": ["RunCompleted"], "pipeline": {"project": "mlops", "id": 20}}]}))
    [event] = parse_events([sample("event-grid-schema", "run_completed")])
    assert isinstance(event, AmlEvent)
    trigger = _CountingClient(untrusted_ado.org_url, _Pat(), retries=1, backoff=0, timeout=2)
    relay = Relay(routes, SourcePolicy([event.source]), untrusted_ado.org_url, trigger)
    [outcome] = relay.handle([event])
    assert outcome.outcome == "failed"
    assert not (outcome.reason or "").startswith(AMBIGUOUS)
    where = WHERE.format(org_url=untrusted_ado.org_url)
    assert (outcome.reason or "").startswith(f"Could not connect to ADO for {where}: its TLS certificate was not "
                                             "accepted")
    assert trigger.looked_up == 0
    assert untrusted_ado.requests == []

