"""pytest fixtures for the loopback stand-ins.

Register with ``pytest_plugins = ["tests.servers.pytest_plugin"]`` in the root conftest.
Every server fixture is function-scoped (a fresh server costs one bind and one thread,
a few milliseconds), so no test can see another test's runs, faults or recordings. Only
the TLS certificate is session-scoped, because it is the one thing worth sharing.

The fixtures start servers but never touch the environment; ``azure_env`` is the opt-in
that points azure-identity and azure-core at them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .ado import ADO_RESOURCE, AdoServer, PipelineDef
from .aml import AmlServer
from .identity import CONFLICTING_ENV, IdentityServer
from .keyvault import KeyVaultServer
from .tls import TlsMaterial, generate_tls_material

DEFAULT_PROJECT = "mlops"
DEFAULT_PIPELINE_ID = 12
DEFAULT_PAT = "loopback-pat-value"
DEFAULT_PIPELINE = PipelineDef(
    name="deploy-model",
    folder="\\ml",
    variables_settable_at_queue_time=frozenset({"AML_EVENT_ID", "AML_EVENT_TYPE", "AML_SUBJECT", "AML_RUN_ID"}),
    template_parameters=frozenset({"eventType", "subject", "runId", "experimentName", "modelName",
                                   "modelVersion"}),
    stages=frozenset({"build", "deploy"}),
)


@pytest.fixture(scope="session")
def loopback_tls(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    """Self-signed cert + key for 127.0.0.1/localhost, shared by every HTTPS stand-in."""
    directory: Path = tmp_path_factory.mktemp("loopback-tls")
    return generate_tls_material(directory)


@pytest.fixture
def identity_server() -> Iterator[IdentityServer]:
    """Automation's managed identity endpoint; ``identity_server.env()`` gives the variables."""
    with IdentityServer() as server:
        yield server


@pytest.fixture
def ado_server() -> Iterator[AdoServer]:
    """ADO org ``contoso`` with :data:`DEFAULT_PIPELINE` at (``mlops``, 12).

    It accepts the token a default :class:`IdentityServer` mints for ADO, and the PAT
    :data:`DEFAULT_PAT`; reconfigure with ``add_pipeline`` / ``add_bearer_token`` / ``add_pat``.
    """
    token = IdentityServer().token_for(ADO_RESOURCE)  # deterministic; no server needed
    with AdoServer("contoso", pipelines={(DEFAULT_PROJECT, DEFAULT_PIPELINE_ID): DEFAULT_PIPELINE},
                   bearer_tokens={token}, pats={DEFAULT_PAT}) as server:
        yield server


@pytest.fixture
def aml_server() -> Iterator[AmlServer]:
    """AML workspace ``mlw-contoso`` behind a loopback ARM endpoint (``aml_server.arm_url``); it accepts any
    token the identity stand-in mints for ARM. Add jobs with ``add_job``, drive them with ``set_status``."""
    with AmlServer() as server:
        yield server


@pytest.fixture
def keyvault_server(loopback_tls: TlsMaterial) -> Iterator[KeyVaultServer]:
    """An empty vault over TLS; add secrets with ``set_secret``, trust it via ``env()``."""
    with KeyVaultServer(tls=loopback_tls) as server:
        yield server


@pytest.fixture
def azure_env(monkeypatch: pytest.MonkeyPatch, identity_server: IdentityServer,
              keyvault_server: KeyVaultServer) -> dict[str, str]:
    """Point azure-identity at ``identity_server`` and trust ``keyvault_server``'s certificate.

    Unsets the variables that would make azure-identity choose another credential flavour.
    Returns the variables that were set.
    """
    for name in CONFLICTING_ENV:
        monkeypatch.delenv(name, raising=False)
    env = {**identity_server.env(), **keyvault_server.env()}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env
