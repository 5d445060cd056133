"""pytest plugin: a real Azurite for every test that touches Table, Blob or Queue storage (no in-memory fake).

tests/conftest.py loads it (``pytest_plugins = ["tests.azurite_plugin"]``).

``azurite`` (session scope) yields a storage connection string, found in this order:

1. ``AMLRELAY_LEDGER_CONNECTION_STRING`` if set (an Azurite you started, or a real account: tests only
   create and drop their own uniquely named tables);
2. the repo's shared instance if ``scripts/azurite start`` is running it (reused, left running);
3. otherwise a private instance: ``scripts/azurite start`` with its own temp folder, free ports and
   in-memory data, stopped at the end of the session. Private, so parallel test sessions in one tree
   never stop each other's emulator.

The connection string names the queue endpoint too (``scripts/azurite env``), for the journal tests.
``table_name`` yields a fresh table name per test, so tests are independent of order and of each other.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers.tls import TlsMaterial

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "azurite"
ENV_VAR = "AMLRELAY_LEDGER_CONNECTION_STRING"
_EXPORT = re.compile(r"^export AMLRELAY_LEDGER_CONNECTION_STRING='([^']*)'$", re.MULTILINE)


def _env_output_to_conn(stdout: str) -> str:
    match = _EXPORT.search(stdout)
    if not match:
        raise RuntimeError("scripts/azurite env printed no connection string")
    return match.group(1)


def _check_reachable(conn: str, origin: str) -> None:
    from azure.data.tables import TableServiceClient

    try:
        service = TableServiceClient.from_connection_string(conn, retry_total=0, connection_timeout=5)
        next(iter(service.list_tables(results_per_page=1)), None)
    except Exception as exc:
        pytest.fail(
            f"Table storage from {origin} does not answer ({type(exc).__name__}). "
            "Start it with `scripts/azurite start` or unset the variable.",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Connection string of a running Azurite (see module docstring for where it comes from)."""
    conn = os.environ.get(ENV_VAR)
    if conn:
        _check_reachable(conn, ENV_VAR)
        yield conn
        return
    shared = subprocess.run([str(SCRIPT), "env"], capture_output=True, text=True, check=False)
    if shared.returncode == 0:
        conn = _env_output_to_conn(shared.stdout)
        _check_reachable(conn, "the shared scripts/azurite instance")
        yield conn
        return
    with _private_azurite(tmp_path_factory.mktemp("azurite"), "") as conn:
        yield conn


@contextlib.contextmanager
def _private_azurite(folder: Path, label: str, **extra: str) -> Iterator[str]:
    """A private, in-memory Azurite on free ports, started and purged by ``scripts/azurite``."""
    env = {**os.environ, "AMLRELAY_AZURITE_DIR": str(folder), "AMLRELAY_AZURITE_IN_MEMORY": "1",
           "AMLRELAY_AZURITE_BLOB_PORT": "auto", "AMLRELAY_AZURITE_QUEUE_PORT": "auto",
           "AMLRELAY_AZURITE_TABLE_PORT": "auto", **extra}
    started = subprocess.run([str(SCRIPT), "start"], env=env, capture_output=True, text=True, check=False, timeout=900)
    if started.returncode != 0:
        pytest.fail(f"scripts/azurite start{label} failed:\n{started.stderr[-3000:]}", pytrace=False)
    try:
        out = subprocess.run([str(SCRIPT), "env"], env=env, capture_output=True, text=True, check=True)
        yield _env_output_to_conn(out.stdout)
    finally:
        subprocess.run([str(SCRIPT), "stop", "--purge"], env=env, capture_output=True, check=False, timeout=60)


@pytest.fixture
def table_name(azurite: str) -> Iterator[str]:
    """A table name no other test uses; the table (if created) is dropped afterwards."""
    from azure.data.tables import TableServiceClient

    name = "t" + uuid.uuid4().hex[:24]
    yield name
    service = TableServiceClient.from_connection_string(azurite, retry_total=0)
    with contextlib.suppress(Exception):  # best-effort cleanup; a private Azurite is discarded anyway
        service.delete_table(name)


@pytest.fixture(scope="session")
def azurite_oauth(tmp_path_factory: pytest.TempPathFactory, loopback_tls: TlsMaterial) -> Iterator[str]:
    """Connection string of a private Azurite that serves HTTPS and checks Entra bearer tokens (``--oauth
    basic``: issuer, audience ``https://storage.azure.com``, lifetime), for the ledger's and dead-letter
    container's managed-identity path (``from_table_url`` with a token credential). Trust its certificate
    with ``loopback_tls.cert_file`` (``REQUESTS_CA_BUNDLE``)."""
    with _private_azurite(tmp_path_factory.mktemp("azurite-oauth"), " (oauth)",
                          AMLRELAY_AZURITE_CERT=str(loopback_tls.cert_file),
                          AMLRELAY_AZURITE_KEY=str(loopback_tls.key_file)) as conn:
        yield conn
