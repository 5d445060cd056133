"""How long the trigger waits between attempts, and how many it makes, without waiting for real.

urllib3's ``Retry`` sleeps through its module's ``time``; these tests swap that for a recorder, so every
wait is asserted exactly and each test runs in well under a second.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import urllib3.util.retry

from amlrelay.errors import AdoError
from amlrelay.trigger import AdoClient
from tests.servers.ado import AdoServer
from tests.stack import pipelines_for
from tests.test_trigger import ROUTES, raw_ado, request_for


class _StaticCredential:
    def authorization(self) -> str:
        return "Bearer static"

    def describe(self) -> str:
        return "a static test token"

    def remedy(self, status: int) -> str:
        return "n/a"


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The seconds urllib3 would have slept between attempts, in order."""
    recorded: list[float] = []
    monkeypatch.setattr(urllib3.util.retry, "time", SimpleNamespace(sleep=recorded.append, time=time.time))
    return recorded


@pytest.fixture
def ado() -> Iterator[AdoServer]:
    with AdoServer("contoso", pipelines=pipelines_for(ROUTES), bearer_tokens={"static"}) as server:
        yield server


@pytest.mark.parametrize("status", [500, 503])
def test_backoff_between_reads_never_exceeds_30_seconds(ado: AdoServer, waits: list[float], status: int) -> None:
    """A runbook job has a time limit: however large the backoff factor, one wait is at most 30 s."""
    ado.fail(status, method="GET", times=3)
    client = AdoClient(ado.org_url, _StaticCredential(), retries=3, backoff=100, max_retry_after=60)
    assert client.list_runs("mlops", 20) == []
    assert waits == [30, 30]  # the first retry follows at once; 200 s and 400 s are capped


def test_retry_after_is_waited_for_instead_of_the_backoff(ado: AdoServer, waits: list[float]) -> None:
    ado.fail(429, retry_after=7)
    client = AdoClient(ado.org_url, _StaticCredential(), retries=3, backoff=0.01, max_retry_after=60)
    run = client.run_pipeline(request_for())
    assert run.id == 1
    assert waits == [7]


def test_retries_of_every_kind_count_against_one_budget(waits: list[float]) -> None:
    """With ``retries=1`` a 503 spends the one retry: when the retry then finds ADO unreachable, the client
    gives up there instead of trying a third time."""
    def unavailable_then_gone(listener: socket.socket) -> None:
        connection, _ = listener.accept()
        listener.close()  # from now on connections are refused
        connection.recv(65536)
        connection.sendall(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n"
                           b"Connection: close\r\n\r\n")
        connection.close()

    with raw_ado(unavailable_then_gone) as port, pytest.raises(AdoError) as info:
        AdoClient(f"http://127.0.0.1:{port}/contoso", _StaticCredential(), retries=1, backoff=0.01,
                  timeout=2).run_pipeline(request_for())
    assert info.value.message.startswith(f"Could not connect to ADO for pipeline 20 in project 'mlops' of "
                                         f"http://127.0.0.1:{port}/contoso")
    assert (info.value.status, info.value.ambiguous, info.value.retryable) == (None, False, True)
    assert waits == [1]  # one retry, after the 503's Retry-After; none after the refused connection


def test_an_organization_whose_name_ends_in_x_keeps_its_name(waits: list[float]) -> None:
    with AdoServer("contosoX", pipelines=pipelines_for(ROUTES), bearer_tokens={"static"}) as server:
        client = AdoClient(f"{server.org_url}/", _StaticCredential(), retries=0, backoff=0)
        assert client.org_url == server.org_url
        run = client.run_pipeline(request_for())
        assert [r.path for r in server.run_requests] == ["/contosoX/mlops/_apis/pipelines/20/runs"]
    assert run.id == 1
