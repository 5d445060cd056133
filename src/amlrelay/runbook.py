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
import re
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from .errors import AmlRelayError, InvalidEventError
from .events import VALIDATION_TYPE, Parsed, manual_event, parse_events, utf8
from .record import FAILING, Outcome, exit_code
from .relay import Relay
from .routes import Routes, load_routes
from .settings import Settings, automation_lookup, resolve
from .validate import SourcePolicy
from .webhook import looks_like_webhook, parse_webhook_argv

Printer = Callable[[str], None]
_SETTING_FLAGS = [f.name for f in dataclasses.fields(Settings)]
_PORTAL_PAIR = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*=")
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
        params = {name: getattr(manual, name) for name in _SETTING_FLAGS
                  if name != "dry_run" and getattr(manual, name) is not None}
        if manual.dry_run:
            params["dry_run"] = "true"
        body = None
    settings = resolve(params, automation=automation_lookup())
    routes = load_routes(settings.routes)
    if manual is not None:
        items, raw = _manual_items(manual, settings, routes)
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


# --- manual starts -------------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="trigger_ado_pipeline.py",
        description="Start the ADO pipeline(s) that amlrelay's routes give for an AML event. Started by a "
        "webhook, the arguments are the WEBHOOKDATA; started by hand, give the event's fields below "
        "(in the portal: one value per box, e.g. '--model-name' 'churn' or 'model_name=churn').",
    )
    event = p.add_argument_group("the event (by hand)")
    event.add_argument("--event-type", help="RunCompleted, RunStatusChanged, ModelRegistered, ModelDeployed or "
                       "DatasetDriftDetected (default: from the fields given)")
    event.add_argument("--workspace", help="AML workspace resource id (default: the only allowed workspace)")
    event.add_argument("--run-id")
    event.add_argument("--experiment-name")
    event.add_argument("--experiment-id")
    event.add_argument("--run-status")
    event.add_argument("--run-type")
    event.add_argument("--model-name")
    event.add_argument("--model-version")
    event.add_argument("--service-name")
    event.add_argument("--compute-type", default="manual")
    event.add_argument("--model-ids")
    event.add_argument("--drift-id")
    event.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                       help="a run/model/service tag (repeatable)")
    target = p.add_argument_group("the target")
    target.add_argument("--route", help="use this route only (filters are not applied)")
    target.add_argument("--pipeline-id", type=int, help="override the route's pipeline id (needs --route)")
    target.add_argument("--branch", help="override the route's branch")
    target.add_argument("--dry-run", action="store_true", help="print the exact ADO request, send nothing")
    settings = p.add_argument_group("settings (default: Automation variables, then AMLRELAY_* variables)")
    for name in _SETTING_FLAGS:
        if name != "dry_run":
            settings.add_argument("--" + name.replace("_", "-"), dest=name, metavar="VALUE")
    return p


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage to stderr (which Automation does not capture)."""

    def error(self, message: str) -> Any:
        raise InvalidEventError(f"Runbook parameters: {message}.", hint="Run with --help to list them.")


def parse_manual(args: list[str]) -> argparse.Namespace:
    p = parser()
    flags = {a.dest: a for a in p._actions}
    normalized: list[str] = []
    expects_value = False
    for item in args:  # portal boxes: 'model_name=churn' is as good as '--model-name churn'
        key = item.split("=", 1)[0].replace("-", "_").lower()
        if not expects_value and _PORTAL_PAIR.match(item) and key in flags:
            normalized += ["--" + key.replace("_", "-"), item.split("=", 1)[1]]
        else:
            normalized.append(item)
        action = flags.get(item.lstrip("-").replace("-", "_")) if item.startswith("--") else None
        expects_value = action is not None and action.nargs != 0
    namespace = p.parse_args(normalized)
    if namespace.pipeline_id and not namespace.route:
        raise InvalidEventError("--pipeline-id needs --route.", hint="Name the route whose pipeline to replace.")
    return namespace


def _manual_items(ns: argparse.Namespace, settings: Settings, routes: Routes) -> tuple[list[Parsed], list[Any]]:
    workspace = ns.workspace
    if not workspace:
        if len(settings.allowed_workspaces) != 1:
            raise InvalidEventError("Several workspaces are allowed: say which one with --workspace.")
        workspace = settings.allowed_workspaces[0]
    tags = dict(t.split("=", 1) for t in ns.tag if "=" in t)
    event_type = ns.event_type or _infer_type(ns)
    data: dict[str, Any] = {
        "runId": ns.run_id, "experimentName": ns.experiment_name, "experimentId": ns.experiment_id or "manual",
        "runType": ns.run_type, "runStatus": ns.run_status, "runTags": tags,
        "modelName": ns.model_name, "modelVersion": ns.model_version, "modelTags": tags,
        "serviceName": ns.service_name, "serviceComputeType": ns.compute_type, "modelIds": ns.model_ids,
        "serviceTags": tags, "dataDriftId": ns.drift_id,
    }
    data = {k: v for k, v in data.items() if v is not None or k == "runType"}  # runType is nullable
    event = manual_event(event_type, workspace, data)
    return [event], [None]


def _infer_type(ns: argparse.Namespace) -> str:
    if ns.model_name:
        return "ModelRegistered"
    if ns.service_name:
        return "ModelDeployed"
    if ns.drift_id:
        return "DatasetDriftDetected"
    if ns.run_id:
        return "RunStatusChanged" if ns.run_status else "RunCompleted"
    raise InvalidEventError("No event given.", hint="Pass --run-id, --model-name, --service-name or --drift-id "
                            "(or --help).")


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
