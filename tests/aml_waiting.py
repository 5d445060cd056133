"""Shared by the ``amlrelay aml`` tests (a pytest plugin, registered in tests/conftest.py): a fake clock that
drives the AML stand-in, the CLI run in process, and the fixtures ``aml_credential``, ``mlflow_server`` and
``agent_temp``.

The clock drives the stand-in: ``clock.at(seconds, action)`` flips a job's status at that fake time, and every
sleep of the waiter advances the clock, so hours of waiting take milliseconds and no test sleeps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from amlrelay.aml._cli import run
from amlrelay.cli import _parser
from tests.servers.aml import ARM_RESOURCE, AmlServer
from tests.servers.identity import CONFLICTING_ENV, IdentityServer
from tests.servers.mlflow import MlflowServer
from tests.servers.tls import TlsMaterial

ROOT = Path(__file__).resolve().parent.parent
TOY_JOB = ROOT / "pipelines" / "aml" / "toy-train.yml"
T0 = 1_900_000_000.0


class FakeClock:
    def __init__(self, start: float = T0) -> None:
        self.now = start
        self.start = start
        self._plan: list[tuple[float, Callable[[], None]]] = []
        self.slept = 0.0

    def at(self, offset: float, action: Callable[[], None]) -> None:
        self._plan.append((self.start + offset, action))
        self._plan.sort(key=lambda item: item[0])

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.slept += seconds
        target = self.now + seconds
        while self._plan and self._plan[0][0] <= target:
            when, action = self._plan.pop(0)
            self.now = max(self.now, when)
            action()
        self.now = target

    @property
    def elapsed(self) -> float:
        return self.now - self.start


@dataclass
class Run:
    code: int
    lines: list[tuple[float, str]] = field(default_factory=list)

    def outputs(self) -> dict[str, str]:
        out = {}
        for _, line in self.lines:
            if line.startswith("##vso[task.setvariable variable="):
                name = line.split("variable=", 1)[1].split(";", 1)[0]
                assert ";isOutput=true;" in line
                out[name] = line.split("]", 1)[1]
        return out

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)


@pytest.fixture
def aml_credential(monkeypatch: pytest.MonkeyPatch, identity_server: IdentityServer) -> Any:
    """The real ManagedIdentityCredential, pointed at the identity stand-in (as on an agent with an MI)."""
    for name in CONFLICTING_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in identity_server.env().items():
        monkeypatch.setenv(name, value)
    from azure.identity import ManagedIdentityCredential

    return ManagedIdentityCredential()


@pytest.fixture
def agent_temp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Where ADO agents let steps write files (the run summary goes there), per test."""
    monkeypatch.setenv("AGENT_TEMPDIRECTORY", str(tmp_path))
    return tmp_path


@pytest.fixture
def mlflow_server(aml_server: AmlServer, loopback_tls: TlsMaterial,
                  monkeypatch: pytest.MonkeyPatch) -> Iterator[MlflowServer]:
    """AML's MLflow endpoint for the stand-in workspace, over TLS (trusted through REQUESTS_CA_BUNDLE); the
    workspace GET advertises it as AML does: ``azureml://<host>/mlflow/v1.0/<workspace>`` (the stand-in serves
    v2.0 only, so the clients' rewrite is exercised)."""
    with MlflowServer(aml_server.workspace_id, tls=loopback_tls) as server:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(loopback_tls.cert_file))
        aml_server.tracking_uri = server.workspace_tracking_uri
        yield server


def cli(server: AmlServer, clock: FakeClock, *args: str, credential: Any = None, submitter: Any = None) -> Run:
    ns = _parser().parse_args(["aml", *args[:1], "--workspace", server.workspace_id, "--arm-url", server.arm_url,
                               "--audience", ARM_RESOURCE, "--ado", "on", *args[1:]])
    result = Run(0)
    result.code = run(ns, credential=credential, submitter=submitter, clock=clock,
                      out=lambda line: result.lines.append((clock.now, line)))
    return result

