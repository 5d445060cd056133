"""Run one delivery through both handlers against their own, identical stand-ins, and describe what each
did in the same terms: the ADO requests, the ledger rows and the answer Event Grid gets.

* The **runbook** side is the relay the runbook runs (in process, settings from the same environment a job
  gets). Its answer to Event Grid is what a synchronous handler with its outcomes must answer: 400 when the
  body is not events (the job exits 2 before any event), 5xx when an event failed (exit 1), else 200.
* The **Logic App** side is the generated workflow run by :class:`amlrelay.logicapp.Workflow`, with its
  managed identity served by the identity stand-in and the ledger table behind :mod:`tests.servers.
  table_gateway` (Azurite, Entra-checked).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from azure.data.tables import TableClient, TableServiceClient

from amlrelay.errors import InvalidEventError
from amlrelay.events import load_body, parse_events
from amlrelay.logicapp import Workflow, generate
from amlrelay.record import exit_code
from amlrelay.relay import AMBIGUOUS
from amlrelay.routes import Routes, load_routes
from amlrelay.runbook import build_relay
from amlrelay.settings import resolve
from tests.conftest import ROUTES_FILE, SAMPLE_WORKSPACE
from tests.servers.aml import ARM_RESOURCE
from tests.servers.table_gateway import STORAGE_AUDIENCE, TableGateway
from tests.stack import PAT_SECRET, Stack, local_stack


@dataclass
class Observed:
    """What one handler did with one delivery, normalised so the two handlers can be compared."""

    status: int
    requests: list[dict[str, Any]]
    rows: list[dict[str, Any]]



def managed_identity(stack: Stack) -> Any:
    """The workflow's system identity: tokens from the identity stand-in, per audience."""

    def token(audience: str) -> str:
        reply = requests.get(stack.identity.endpoint, params={"resource": audience, "api-version": "2019-08-01"},
                             headers={"X-IDENTITY-HEADER": stack.identity.identity_header, "Metadata": "true"},
                             timeout=10)
        reply.raise_for_status()
        return str(reply.json()["access_token"])

    return token


@dataclass
class Side:
    stack: Stack
    table: TableClient
    gateway: TableGateway | None = None
    workflow: Workflow | None = None

    def observe(self, status: int, since: int = 0) -> Observed:
        sent = [{"path": r.path.removeprefix("/" + self.stack.ado.organization), "query": r.query, "body": r.json}
                for r in self.stack.ado.run_requests[since:]]
        rows = sorted((_row(e, self.stack.ado.url) for e in self.table.list_entities()), key=lambda r: r["RowKey"])
        return Observed(status, sent, rows)


def _row(entity: Any, ado_url: str) -> dict[str, Any]:
    reason = entity.get("reason")
    kind = None if reason is None else "ambiguous" if str(reason).startswith(AMBIGUOUS) else "failed"
    url = entity.get("ado_run_url")
    return {"RowKey": entity["RowKey"], "key": entity.get("key"), "route": entity.get("route"),
            "event_id": entity.get("event_id"), "event_type": entity.get("event_type"), "state": entity.get("state"),
            "ado_run_id": entity.get("ado_run_id"), "ado_run_url": url.replace(ado_url, "ADO") if url else None,
            "reason": kind, "attempts": entity.get("attempts"),
            "event": _event(entity)}


def _event(entity: Any) -> Any:
    """The stored event: the Python ledger chunks a long one (event_json, event_json_1, ...); either handler
    flags one it had to cut."""
    if entity.get("event_json_truncated"):
        return "truncated"
    text = "".join(entity.get(k) or "" for k in ("event_json", "event_json_1", "event_json_2", "event_json_3"))
    return json.loads(text) if text else None


class Pair:
    """A runbook side and a Logic App side, each with its own ADO, identity and ledger table."""

    def __init__(self, runbook: Side, logicapp: Side, routes: Routes, env: dict[str, str]) -> None:
        self.runbook, self.logicapp, self.routes, self.env = runbook, logicapp, routes, env

    def deliver_runbook(self, body: bytes) -> Observed:
        before = len(self.runbook.stack.ado.run_requests)
        relay = build_relay(resolve({}, env=self.env), self.routes)
        try:
            payload = load_body(body)
            items = parse_events(payload)
        except InvalidEventError:
            return self.runbook.observe(400, before)
        raw = payload if isinstance(payload, list) else [payload]
        outcomes = relay.handle(items, raw=raw)
        return self.runbook.observe(500 if exit_code(outcomes) == 1 else 200, before)

    def deliver_logicapp(self, body: bytes) -> Observed:
        before = len(self.logicapp.stack.ado.run_requests)
        assert self.logicapp.workflow is not None
        result = self.logicapp.workflow.post(body)
        self.last_run = result
        return self.logicapp.observe(result.response.status, before)

    def emitted(self, events: list[Any]) -> None:
        """AML holds what these events report, on both sides (see Stack.emitted)."""
        self.runbook.stack.emitted(events)
        self.logicapp.stack.emitted(events)

    def deliver(self, body: bytes) -> tuple[Observed, Observed]:
        return self.deliver_runbook(body), self.deliver_logicapp(body)


@contextmanager
def pair(azurite: str, table: str, *, routes_path: Path = ROUTES_FILE, pat: bool = False, verify: bool = False,
         **options: Any) -> Iterator[Pair]:
    routes = load_routes(routes_path)
    service = TableServiceClient.from_connection_string(azurite)
    with ExitStack() as stack:
        runbook_stack = stack.enter_context(local_stack(routes_path, pat=pat, verify=verify))
        la_stack = stack.enter_context(local_stack(routes_path, pat=pat, verify=verify))
        tables = []
        for suffix in ("rb", "la"):
            service.create_table(table + suffix)
            stack.callback(service.delete_table, table + suffix)
            tables.append(service.get_table_client(table + suffix))
        gateway = stack.enter_context(TableGateway(
            azurite, accepted_tokens={la_stack.identity.token_for(STORAGE_AUDIENCE)}))
        definition = generate(routes, ado_timeout=options.pop("ado_timeout", "PT2S"),
                              auth="pat" if pat else "managed-identity", verify=verify, **options)
        parameters = {"adoOrganizationUrl": la_stack.ado.org_url, "allowedWorkspaces": SAMPLE_WORKSPACE + "/",
                      "ledgerTableUrl": gateway.url, "ledgerTable": table + "la"}
        if la_stack.aml is not None:
            parameters |= {"armUrl": la_stack.aml.arm_url, "armAudience": ARM_RESOURCE}
        trust: bool | str = True
        if la_stack.vault is not None:
            parameters |= {"keyVaultUrl": la_stack.vault.url, "patSecretName": PAT_SECRET}
            trust = la_stack.vault.ca_file
        workflow = Workflow(definition, parameters, managed_identity(la_stack), verify=trust)
        env = {**runbook_stack.env(), "AMLRELAY_LEDGER": "true", "AMLRELAY_LEDGER_CONNECTION_STRING": azurite,
               "AMLRELAY_LEDGER_TABLE": table + "rb", "AMLRELAY_TIMEOUT": "2"}
        yield Pair(Side(runbook_stack, tables[0]), Side(la_stack, tables[1], gateway, workflow), routes, env)
