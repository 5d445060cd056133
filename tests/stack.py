"""A local stand-in for everything the runbook talks to, shared by the tests, the demo and the benchmark.

It starts the loopback ADO, managed-identity and (optionally) Key Vault servers, declares in ADO the
pipelines that ``routes.json`` targets (with exactly the queue-time variables and template parameters the
routes send, as a correctly configured pipeline would), and gives the environment a runbook process needs
to reach them, the same variables Automation would provide.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amlrelay.routes import Routes, load_routes
from tests.servers.ado import ADO_RESOURCE, AdoServer, PipelineDef
from tests.servers.aml import ARM_RESOURCE, AmlServer
from tests.servers.identity import CONFLICTING_ENV, IdentityServer
from tests.servers.keyvault import KeyVaultServer

ROOT = Path(__file__).resolve().parent.parent
RUNBOOK = ROOT / "runbooks" / "trigger_ado_pipeline.py"
SAMPLE_WORKSPACE = (
    "/subscriptions/{subscription-id}/resourceGroups/{resource-group-name}/providers/"
    "Microsoft.MachineLearningServices/workspaces/{workspace-name}"
)
PAT = "loopback-pat-0123456789abcdefghijklmnopqrstuvwxyz"
PAT_SECRET = "ado-pat"


def pipelines_for(routes: Routes) -> dict[tuple[str, int], PipelineDef]:
    """The ADO pipelines a routes file needs, declared as their owners would have to declare them."""
    out: dict[tuple[str, int], PipelineDef] = {}
    for route in routes.routes:
        target = route.pipeline
        key = (target.project, target.pipeline_id)
        previous = out.get(key)
        out[key] = PipelineDef(
            name=route.name,
            variables_settable_at_queue_time=frozenset(target.variables)
            | (previous.variables_settable_at_queue_time if previous else frozenset()),
            template_parameters=frozenset(target.template_parameters)
            | (previous.template_parameters if previous else frozenset()),
            stages=frozenset(target.stages_to_skip) | {"Build", "Deploy"},
        )
    return out


@dataclass
class Stack:
    ado: AdoServer
    identity: IdentityServer
    vault: KeyVaultServer | None
    routes_path: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    aml: AmlServer | None = None  # the AML stand-in the relay verifies events against (AMLRELAY_VERIFY)

    @property
    def token(self) -> str:
        return self.identity.token_for(ADO_RESOURCE)

    def env(self, **overrides: str) -> dict[str, str]:
        """Environment for a runbook process: Automation's identity variables plus AMLRELAY_* settings."""
        env = {k: v for k, v in os.environ.items() if k not in CONFLICTING_ENV and not k.startswith("AMLRELAY_")}
        env.update(self.identity.env())
        env.update({
            "AMLRELAY_ADO_BASE_URL": self.ado.url,
            "AMLRELAY_ADO_ORGANIZATION": self.ado.organization,
            "AMLRELAY_ROUTES": str(self.routes_path),
            "AMLRELAY_ALLOWED_WORKSPACES": SAMPLE_WORKSPACE,
            "AMLRELAY_LEDGER": "false",
            "AMLRELAY_BACKOFF": "0",
            "AMLRELAY_MAX_RETRY_AFTER": "1",
            "AMLRELAY_TIMEOUT": "5",
            "PYTHONPATH": str(ROOT / "src"),
        })
        if self.aml is not None:
            env.update({"AMLRELAY_VERIFY": "true", "AMLRELAY_ARM_URL": self.aml.arm_url,
                        "AMLRELAY_ARM_AUDIENCE": ARM_RESOURCE,
                        "AMLRELAY_VERIFY_LAG": "0"})  # no real waiting for ARM: tests/test_verify.py fakes it
        else:
            env["AMLRELAY_VERIFY"] = "false"
        if self.vault is not None:
            env.update(self.vault.env())
            env.update({"AMLRELAY_AUTH": "pat", "AMLRELAY_KEY_VAULT_URL": self.vault.url,
                        "AMLRELAY_PAT_SECRET_NAME": PAT_SECRET})
        env.update(self.extra_env)
        env.update(overrides)
        return env

    def runbook_command(self, *args: str) -> list[str]:
        return [sys.executable, str(RUNBOOK), *args]

    def emitted(self, events: list[Any]) -> None:
        """AML emitted these events, so its workspace holds their runs and model versions in the state
        they report: what a genuine delivery implies. Forged-event tests leave this out."""
        from amlrelay.events import parse_event
        from amlrelay.models import AmlEvent, DatasetDriftData, ModelDeployedData, ModelRegisteredData, RunEventData
        from amlrelay.verify import claimed_status

        aml = self.aml
        if aml is None:
            return
        for item in events:
            event = parse_event(item)
            if not isinstance(event, AmlEvent) or event.source.rstrip("/").lower() != aml.workspace_id.lower():
                continue
            data = event.data
            with suppress(ValueError):  # a name AML could not hold: the verifier refuses it
                if isinstance(data, RunEventData) and claimed_status(event):
                    aml.add_job(data.run_id, str(claimed_status(event)), experiment_name=data.experiment_name,
                                tags=data.run_tags, properties=data.run_properties)
                elif isinstance(data, DatasetDriftData) and data.run_id:
                    aml.add_job(data.run_id, "Completed", experiment_name="datadrift")
                elif isinstance(data, ModelRegisteredData):
                    aml.add_model_version(data.model_name, data.model_version, tags=data.model_tags,
                                          properties=data.model_properties)
                elif isinstance(data, ModelDeployedData):
                    for model_id in data.model_ids:
                        name, _, version = model_id.rpartition(":")
                        aml.add_model_version(name, version)

    def emitted_argv(self, argv: list[str]) -> None:
        """:meth:`emitted` for the events in a runbook's WEBHOOKDATA argv (nothing for a manual start)."""
        from amlrelay.errors import InvalidEventError
        from amlrelay.webhook import looks_like_webhook, parse_webhook_argv

        if not looks_like_webhook(argv):
            return
        try:
            body = parse_webhook_argv(argv).body
        except InvalidEventError:
            return
        self.emitted(body if isinstance(body, list) else [body])


@contextmanager
def local_stack(routes_path: Path | None = None, *, pat: bool = False, verify: bool = False,
                pipelines: dict[tuple[str, int], PipelineDef] | None = None,
                identity: IdentityServer | None = None) -> Iterator[Stack]:
    """``verify``: an AML stand-in for the sample workspace, and AMLRELAY_VERIFY=true (else false: tests and
    benchmarks that are not about verification need not model AML's state).
    ``pipelines``: the pipelines as their owners declared them in ADO (queue-time variables, parameters with
    types and allowed values); by default each is declared to accept exactly what routes.json sends, so a test
    of what ADO refuses must declare its own. ``identity``: an identity stand-in configured by the test (token
    lifetimes, user-assigned identities); its ADO tokens are accepted."""
    routes_path = routes_path or ROOT / "routes.json"
    routes = load_routes(routes_path)
    with ExitStack() as stack:
        identity = stack.enter_context(identity or IdentityServer())
        declared = pipelines_for(routes) if pipelines is None else pipelines
        ado = stack.enter_context(AdoServer("contoso", pipelines=declared,
                                            bearer_tokens={identity.token_for(ADO_RESOURCE)}, pats={PAT}))
        if identity.lifetime is not None:
            ado.accept_entra_tokens()
        vault = stack.enter_context(KeyVaultServer({PAT_SECRET: PAT})) if pat else None
        aml = stack.enter_context(AmlServer(
            subscription="{subscription-id}", resource_group="{resource-group-name}", workspace="{workspace-name}",
            bearer_tokens={identity.token_for(ARM_RESOURCE)})) if verify else None
        yield Stack(ado, identity, vault, routes_path, aml=aml)
