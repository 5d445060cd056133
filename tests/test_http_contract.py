"""Which HTTP answers from ADO are retried, resent after reconciling, or final — and what each one says.

The table below is the contract of trigger.py (README, "Errors from ADO" and "Exactly once"): a status
wrongly retried can start a run twice; one wrongly not retried loses an event; a message without the
pipeline, project and organization leaves an operator guessing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from amlrelay.auth import EntraCredential, managed_identity
from amlrelay.errors import AdoError
from amlrelay.events import parse_events
from amlrelay.router import build_request
from amlrelay.routes import load_routes
from amlrelay.trigger import RETRY_STATUSES, SAFE_POST_RETRY, USER_AGENT, AdoClient, PipelineRun, _reason, _run_from
from tests.conftest import ROUTES_FILE, sample
from tests.servers.ado import ADO_RESOURCE, AdoServer
from tests.servers.identity import IdentityServer
from tests.servers.tls import TlsMaterial
from tests.stack import pipelines_for

ROUTES = load_routes(ROUTES_FILE)


@pytest.fixture
def ado(identity_server: IdentityServer, azure_env: dict[str, str]) -> Iterator[AdoServer]:
    with AdoServer("contoso", pipelines=pipelines_for(ROUTES),
                   bearer_tokens={identity_server.token_for(ADO_RESOURCE)}) as server:
        yield server


def client(ado: AdoServer, **kw: Any) -> AdoClient:
    options: dict[str, Any] = {"retries": 2, "backoff": 0, "timeout": 2, "max_retry_after": 0, **kw}
    return AdoClient(ado.org_url + "/", EntraCredential(managed_identity(None)), **options)


def request() -> Any:
    [event] = parse_events([sample("event-grid-schema", "model_registered")])
    return build_request(ROUTES.by_name("deploy-registered-model"), event)  # type: ignore[arg-type]


def where(ado: AdoServer) -> str:
    return f"pipeline 20 in project 'mlops' of {ado.org_url}"


def test_the_retry_sets() -> None:
    assert RETRY_STATUSES == (429, 500, 502, 503, 504)
    assert frozenset({429, 503}) == SAFE_POST_RETRY


SERVER_ERROR_HINT = ("The run may have been queued before the error: amlrelay checks the pipeline's runs before "
                     "sending again.")
# status, POSTs sent (retries=2), retryable, ambiguous, settled, message fragment, hint (401/403: fragment of the
# credential's remedy, see test_auth)
CASES = [
    (429, 3, True, False, False, "ADO kept throttling requests for {where} after 2 retries (HTTP 429). TF400733",
     "Spread the load, or give the identity 'Basic + Test Plans' for higher limits."),
    (503, 3, True, False, False, "ADO stayed unavailable for {where} after 2 retries (HTTP 503).",
     "ADO is having trouble; replay the event later."),
    (500, 1, True, True, True, "ADO failed {where} (HTTP 500). Scripted 500 from the ADO stand-in.",
     SERVER_ERROR_HINT),
    (502, 1, True, True, False, "ADO failed {where} (HTTP 502).", SERVER_ERROR_HINT),
    (504, 1, True, True, False, "ADO failed {where} (HTTP 504).", SERVER_ERROR_HINT),
    (404, 1, False, False, False, "ADO found no {where} (HTTP 404). Scripted 404 from the ADO stand-in.",
     "Check 'pipeline.id' and 'project' of route 'deploy-registered-model', the organization setting, and that "
     "the identity can see the project."),
    (400, 1, False, False, False, "ADO rejected the request for {where} (HTTP 400): Scripted 400 from the ADO "
     "stand-in.", "Variables must be 'settable at queue time' and template parameters declared in the "
     "pipeline's YAML; fix route 'deploy-registered-model' or the pipeline."),
    (401, 1, False, False, False, "ADO refused the handler's managed identity (object id "
     "11111111-1111-1111-1111-111111111111, application id 22222222-2222-2222-2222-222222222222) for {where} "
     "(HTTP 401). VS30063", "Add this identity to the ADO organization as a user with Basic access"),
    (403, 1, False, False, False, "ADO refused the handler's managed identity", "Give this identity 'Queue builds' "
     "on the pipeline, and 'Edit queue build configuration' if the route sends variables or templateParameters"),
]


@pytest.mark.parametrize(("status", "posts", "retryable", "ambiguous", "settled", "message", "hint"), CASES)
def test_each_status_is_retried_or_final_as_documented(ado: AdoServer, status: int, posts: int, retryable: bool,
                                                       ambiguous: bool, settled: bool, message: str,
                                                       hint: str) -> None:
    ado.fail(status, times=10)
    with pytest.raises(AdoError) as caught:
        client(ado).run_pipeline(request())
    error = caught.value
    assert (error.status, error.retryable, error.ambiguous, error.settled) == (status, retryable, ambiguous, settled)
    assert error.message.startswith(message.format(where=where(ado))), error.message
    if status in (502, 503, 504):  # no JSON from a gateway: the message ends there
        assert error.message == message.format(where=where(ado))
    if status in (401, 403):
        assert hint in (error.hint or "")
    else:
        assert error.hint == hint
    assert len(ado.run_requests) == posts
    assert ado.runs == []


def test_one_retry_is_said_in_the_singular(ado: AdoServer) -> None:
    ado.fail(503, times=10)
    with pytest.raises(AdoError, match=r"after 1 retry \(HTTP 503\)"):
        client(ado, retries=1).run_pipeline(request())


def test_reads_are_retried_on_every_5xx_and_their_failures_are_not_ambiguous(ado: AdoServer) -> None:
    ado.fail(502, method="GET", times=2)
    assert client(ado).list_runs("mlops", 20) == []
    ado.fail(500, method="GET", times=10)
    with pytest.raises(AdoError) as caught:
        client(ado).get_run("mlops", 20, 1)
    assert (caught.value.status, caught.value.ambiguous) == (500, False)
    assert caught.value.message.startswith(f"ADO failed run 1 of pipeline 20 in project 'mlops' of {ado.org_url}")


def test_runs_are_listed_newest_first_and_read_back(ado: AdoServer) -> None:
    ado_client = client(ado)
    first = ado_client.run_pipeline(request())
    second = ado_client.run_pipeline(request())
    assert [r["id"] for r in ado_client.list_runs("mlops", 20)] == [second.id, first.id]
    assert ado_client.get_run("mlops", 20, first.id)["id"] == first.id
    with pytest.raises(AdoError) as caught:
        ado_client.get_run("mlops", 20, 999)
    assert caught.value.message.startswith(f"ADO found no run 999 of pipeline 20 in project 'mlops' of {ado.org_url}")
    with pytest.raises(AdoError, match="ADO found no runs of pipeline 77"):
        ado_client.list_runs("mlops", 77)


def test_a_started_run_is_reported_with_its_web_link_and_the_client_says_who_it_is(ado: AdoServer) -> None:
    run = client(ado).run_pipeline(request())
    assert run == PipelineRun(run.id, "inProgress", f"{ado.url}/contoso/{ado.project_id('mlops')}/_build/results"
                              f"?buildId={run.id}", run.name)
    assert run.name
    [sent] = ado.run_requests
    assert sent.headers["user-agent"] == USER_AGENT
    assert sent.headers["accept"] == "application/json"
    assert sent.query == {"api-version": "7.1"}


def test_the_run_fields_kept_from_adoss_answer() -> None:
    assert _run_from({"id": 3, "state": "completed", "url": "https://api/3", "name": "n"}) == PipelineRun(
        3, "completed", "https://api/3", "n")
    assert _run_from({"id": 3, "_links": {"web": {"href": "https://web/3"}}, "url": "https://api/3"}) == PipelineRun(
        3, "unknown", "https://web/3", None)
    assert _run_from({"id": 3, "_links": {"web": {"href": 5}}, "url": "https://api/3"}).url == "https://api/3"  # type: ignore[union-attr]
    assert _run_from({"id": "3"}) is None
    assert _run_from([]) is None


@pytest.mark.usefixtures("azure_env")
def test_a_refused_connection_is_retryable_and_not_ambiguous() -> None:
    with IdentityServer() as closed:
        pass
    unreachable = AdoClient(f"{closed.url}/contoso", EntraCredential(managed_identity(None)), retries=0, backoff=0)
    with pytest.raises(AdoError) as caught:
        unreachable.list_runs("mlops", 12)
    assert (caught.value.ambiguous, caught.value.retryable) == (False, True)
    assert caught.value.message == (f"Could not connect to ADO for runs of pipeline 12 in project 'mlops' "
                                    f"of {closed.url}/contoso: connection refused")
    with pytest.raises(AdoError) as caught:
        unreachable.get_run("mlops", 12, 5)
    assert caught.value.message == (f"Could not connect to ADO for run 5 of pipeline 12 in project 'mlops' "
                                    f"of {closed.url}/contoso: connection refused")


def test_reasons_are_short_and_name_the_kind_of_failure() -> None:
    assert _reason(OSError("[Errno 111] Connection refused by peer")) == "connection refused"
    assert _reason(OSError("('Connection aborted.', RemoteDisconnected('closed'))")) == "remotedisconnected"
    assert _reason(OSError("[Errno 104] Connection reset by peer")) == "connection reset"
    assert _reason(OSError("Failed to resolve 'dev.azure.com' ([Errno -2] Name or service not known)")) == (
        "name or service not known")
    assert _reason(OSError("HTTPSConnectionPool(host='dev.azure.com'): Read timed out. (read timeout=30)")) == (
        "timed out")
    assert _reason(OSError("('Connection aborted.', OSError(0, 'Error'))")) == "connection aborted"
    assert _reason(OSError("first line\nsecond line")) == "first line"
    assert _reason(OSError("x" * 300)) == "x" * 200
    assert _reason(OSError()) == "OSError"


def test_over_https_throttling_and_unavailability_are_retried_too(identity_server: IdentityServer,
                                                                  azure_env: dict[str, str],
                                                                  loopback_tls: TlsMaterial) -> None:
    """dev.azure.com is served over https: the retry rules hold there, not only on the plain-http stand-in."""
    with AdoServer("contoso", pipelines=pipelines_for(ROUTES), bearer_tokens={identity_server.token_for(ADO_RESOURCE)},
                   tls=loopback_tls) as tls_ado:
        assert tls_ado.org_url.startswith("https://")
        tls_ado.fail(429, retry_after=0)
        tls_ado.fail(503)
        run = client(tls_ado).run_pipeline(request())
        assert [r["id"] for r in tls_ado.runs] == [run.id]
        assert len(tls_ado.run_requests) == 3
        tls_ado.fail(502, method="GET")
        assert client(tls_ado).get_run("mlops", 20, run.id)["id"] == run.id


def test_retry_after_is_waited_for_before_retrying(ado: AdoServer) -> None:
    """ADO's Retry-After on a 429 is honoured (up to max_retry_after), even with no backoff of our own."""
    ado.fail(429, retry_after=1)
    started = time.monotonic()
    client(ado, max_retry_after=5).run_pipeline(request())
    assert time.monotonic() - started >= 0.9
    assert len(ado.run_requests) == 2


def test_retries_back_off_exponentially(ado: AdoServer) -> None:
    """Without a Retry-After, retries wait backoff * 2^(n-1) after the first: 0 then 0.5 s for backoff 0.25."""
    ado.fail(503, times=2)
    started = time.monotonic()
    client(ado, backoff=0.25).run_pipeline(request())
    assert time.monotonic() - started >= 0.45
    assert len(ado.run_requests) == 3
