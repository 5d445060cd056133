"""Secret hygiene for the whole suite: every output stream is collected and searched for every secret the
tests hand out (managed-identity tokens, PATs, the storage account key, webhook tokens).

Collected: what each test printed or logged (pytest's captured stdout, stderr and log records, every phase)
and the stdout/stderr of every runbook process the tests start (``record()``). At the end of the session a
hit fails the run, naming the secret and where it appeared — never the secret itself.
"""

from __future__ import annotations

import threading

from tests.servers._jwt import mint_token

_lock = threading.Lock()
_outputs: list[tuple[str, str]] = []
_secrets: dict[str, str] = {}


def register(name: str, value: str) -> None:
    with _lock:
        _secrets[name] = value


def record(where: str, text: str) -> None:
    if text:
        with _lock:
            _outputs.append((where, text))


def leaks(outputs: list[tuple[str, str]] | None = None, secrets: dict[str, str] | None = None) -> list[str]:
    """``"<secret name> in <where>"`` for each secret found in an output."""
    with _lock:
        outs = list(_outputs if outputs is None else outputs)
        known = dict(_secrets if secrets is None else secrets)
    found = []
    for where, text in outs:
        for name, value in known.items():
            if value and value in text:
                found.append(f"{name} in {where}")
    return found


def register_defaults() -> None:
    from tests.servers.pytest_plugin import DEFAULT_PAT
    from tests.stack import PAT

    for resource in ("499b84ac-1321-427f-aa17-267ca6975798", "https://vault.azure.net"):
        token = mint_token(resource)
        register(f"managed-identity token for {resource}", token)
        register(f"signature of the token for {resource}", token.rsplit(".", 1)[-1])
    register("PAT (stack)", PAT)
    register("PAT (plugin default)", DEFAULT_PAT)
    register("PAT (trigger tests)", "pat-from-vault")
    register("Azurite account key",
             "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==")
    register("webhook token (infra script tests)", "SECRET-TOKEN")
