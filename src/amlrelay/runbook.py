"""The runbook's edge: argv and settings in, JSON lines and an exit code out.

``runbooks/trigger_ado_pipeline.py`` is three lines that call :func:`main`; everything Automation-specific
is here. A job is started one of two ways, told apart by its arguments:

* by a webhook (Event Grid → Automation): argv carries WEBHOOKDATA (see :mod:`amlrelay.webhook`);
* by hand, from the portal or a shell: ``--flags`` or ``name=value`` items, one per parameter box,
  e.g. ``--model-name sklearn_regression_model --model-version 3 --dry-run``.

Everything is printed to stdout, because Automation's Python sandbox does not capture stderr: one JSON
line per event and route (the Output stream), and human lines prefixed ``WARNING:``/``ERROR:`` that
Automation files under the Warning and Error streams. No traceback, no secret, ever.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from ._manual import SETTING_FLAGS, manual_items, parse_manual, parser
from .errors import AmlRelayError, InvalidEventError
from .events import VALIDATION_TYPE, parse_events, utf8
from .record import FAILING, Outcome, exit_code
from .relay import Relay
from .routes import Routes, load_routes
from .settings import Settings, automation_lookup, resolve
from .validate import SourcePolicy
from .webhook import looks_like_webhook, parse_webhook_argv

Printer = Callable[[str], None]
_VALIDATION = VALIDATION_TYPE.rsplit(".", 1)[-1]


EXIT_OK, EXIT_FAILED, EXIT_REFUSED, EXIT_BUG = 0, 1, 2, 3
"""The job's exit codes (README, "Exit codes"). The worst outcome wins: a batch with a failed event exits 1
(a replay may help) even if another was refused; one with a refused event and no failure exits 2, even if
others were triggered; 3 is a bug in amlrelay."""


def main(argv: Sequence[str] | None = None, *, out: Printer | None = None) -> int:
    """Run one job; returns the process exit code: 0 every event handled, 1 an event failed (retry may
    help), 2 bad input or settings, or an event refused, 3 an unexpected error (a bug)."""
    emit = out or _print
    args = list(sys.argv[1:] if argv is None else argv[1:])
    _quiet_sdk_logging()
    if not args:
        emit("ERROR: The runbook was started without arguments, so there is no event to relay.")
        emit("ERROR: What to do: Start it from an Automation webhook subscribed to Event Grid, or give the "
             "event's fields as parameters (usage below).")
        for line in parser().format_help().splitlines():
            emit(line)
        return EXIT_REFUSED
    try:
        for arg in args:
            utf8(arg, "A runbook argument")
        return _run(args, emit)
    except AmlRelayError as exc:
        for line in exc.message.splitlines():
            emit(f"ERROR: {line}")
        if exc.hint:
            emit(f"ERROR: What to do: {exc.hint}")
        return EXIT_REFUSED
    except Exception as exc:  # last resort: explain, never dump a traceback into the job stream
        emit(f"ERROR: amlrelay stopped on an unexpected error, which is a bug: {type(exc).__name__}: "
             f"{str(exc)[:500]}")
        emit("ERROR: What to do: Start the job again (events it already triggered are in the ledger and stay "
             "duplicates); if it keeps failing, report it with this message.")
        return EXIT_BUG


def _run(args: list[str], emit: Printer) -> int:
    params: dict[str, str | None] = {}
    manual: argparse.Namespace | None = None
    if looks_like_webhook(args):
        webhook = parse_webhook_argv(args)
        body = webhook.body
    else:
        manual = parse_manual(args)
        params = {name: getattr(manual, name) for name in SETTING_FLAGS
                  if name != "dry_run" and getattr(manual, name) is not None}
        if manual.dry_run:
            params["dry_run"] = "true"
        body = None
    settings = resolve(params, automation=automation_lookup())
    routes = load_routes(settings.routes)
    if manual is not None:
        items, raw = manual_items(manual, settings, routes)
    else:
        raw = body if isinstance(body, list) else [body]
        items = parse_events(body)
    relay = build_relay(settings, routes, only_route=manual.route if manual else None)
    if manual is not None and "verify" not in params:
        # A manual start is not verified unless its own parameters ask (--verify true): whoever may start a
        # job may also edit the runbook, and starting by hand is how a run whose event was lost is relayed.
        relay.verifier = None
    if manual is not None and (manual.pipeline_id or manual.branch):
        relay.routes = _override(routes, manual)
    outcomes = relay.handle(items, raw=raw)
    report(outcomes, emit)
    return exit_code(outcomes)


def build_relay(settings: Settings, routes: Routes, *, only_route: str | None = None) -> Relay:
    """Wire the edges (credential, ADO client, ledger) from settings; lazily, so a dry run needs none."""
    if only_route:
        routes.by_name(only_route)  # fail fast on a typo, before anything else happens
    trigger = None if settings.dry_run else _ado_client(settings)
    ledger = None if settings.dry_run or not settings.ledger else open_ledger(settings)
    tag_back = None if settings.dry_run or not settings.tag_back else _tag_back(settings)
    verifier = None if settings.dry_run or not settings.verify else _verifier(settings)
    return Relay(routes, SourcePolicy(settings.allowed_workspaces), settings.org_url, trigger, ledger,
                 settings.dry_run, only_route, timedelta(seconds=settings.settle_after), tag_back,
                 verifier=verifier)


def _verifier(settings: Settings) -> Any:
    from .verify import verifier_from_settings

    return verifier_from_settings(settings)


def _tag_back(settings: Settings) -> Any:
    from .aml import tag_back_from_settings

    return tag_back_from_settings(settings)


def _ado_client(settings: Settings) -> Any:
    from .auth import EntraCredential, KeyVaultPatCredential, managed_identity
    from .trigger import AdoClient

    identity = managed_identity(settings.managed_identity_client_id, kind=settings.credential)
    credential: Any
    if settings.auth == "pat":
        assert settings.key_vault_url  # guaranteed by settings.resolve
        credential = KeyVaultPatCredential(settings.key_vault_url, settings.pat_secret_name, identity)
    else:
        credential = EntraCredential(identity, client_id=settings.managed_identity_client_id,
                                     resource=settings.ado_resource)
    return AdoClient(settings.org_url, credential, timeout=settings.timeout, retries=settings.max_retries,
                     backoff=settings.backoff, max_retry_after=settings.max_retry_after)


def open_ledger(settings: Settings) -> Any:
    from .ledger import Ledger

    stale_after = timedelta(seconds=settings.ledger_stale_after)
    if settings.ledger_connection_string:
        ledger = Ledger.from_connection_string(settings.ledger_connection_string, table=settings.ledger_table,
                                               stale_after=stale_after)
    else:
        from .auth import managed_identity

        assert settings.ledger_table_url  # guaranteed by settings.resolve
        identity = managed_identity(settings.managed_identity_client_id, kind=settings.credential)
        ledger = Ledger.from_table_url(settings.ledger_table_url, identity, table=settings.ledger_table,
                                       identity_client_id=settings.managed_identity_client_id,
                                       stale_after=stale_after)
    return ledger


def report(outcomes: Sequence[Outcome], emit: Printer) -> None:
    """JSON lines first (the Output stream a tool parses), then a prefixed line per problem for people."""
    for outcome in outcomes:
        emit(outcome.to_json())
    for outcome in outcomes:
        label = f"{outcome.event_type} {outcome.event_id}" + (f" via {outcome.route}" if outcome.route else "")
        if outcome.outcome in FAILING:
            emit(f"ERROR: {label}: {outcome.outcome}: {outcome.reason}")
        elif outcome.outcome == "triggered" and outcome.reason:
            emit(f"WARNING: {label}: {outcome.reason}")
        if outcome.warning:
            emit(f"WARNING: {label}: {outcome.warning}")
        elif outcome.outcome == "skipped" and outcome.event_type == _VALIDATION:
            emit(f"WARNING: {outcome.reason}")
    if not outcomes:
        emit("WARNING: the delivery held no events.")


def _override(routes: Routes, ns: argparse.Namespace) -> Routes:
    from .templating import parse_template

    changed = []
    for route in routes.routes:
        target = route.pipeline
        if ns.pipeline_id and route.name.lower() == str(ns.route).lower():
            target = dataclasses.replace(target, pipeline_id=ns.pipeline_id)
        if ns.branch:
            try:
                branch = parse_template(ns.branch)
            except ValueError as exc:
                raise InvalidEventError(f"--branch: {exc}.") from None
            target = dataclasses.replace(target, branch=branch)
        changed.append(dataclasses.replace(route, pipeline=target))
    return dataclasses.replace(routes, routes=tuple(changed))


def _quiet_sdk_logging() -> None:
    """The Azure SDK logs its own warnings to stderr, which Automation drops; amlrelay reports every failure
    itself, with a remedy, so the SDK's duplicates are silenced."""
    logger = logging.getLogger("azure")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False


def _print(line: str) -> None:
    """One line to stdout; text that cannot be encoded (a hostile event id) is escaped, never a crash."""
    try:
        print(line, flush=True)
    except UnicodeEncodeError:
        print(line.encode("ascii", "backslashreplace").decode("ascii"), flush=True)
