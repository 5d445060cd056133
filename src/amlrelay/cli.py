"""``amlrelay``: the operator's command line, over the same package the handlers use.

* ``amlrelay run ...``            handle a delivery or a manual start, exactly like the runbook;
* ``amlrelay check-routes FILE``  validate a routes file and show what it routes where;
* ``amlrelay subscriptions FILE`` generate the Event Grid subscriptions (see infra/);
* ``amlrelay status``             recent ledger records: event → route → ADO run, or why not;
* ``amlrelay replay``             deliver Event Grid's dead letters (and stale claims) again, idempotently;
* ``amlrelay purge``              delete finished ledger records older than a horizon (30 days by default);
* ``amlrelay sweep``              drain the journal queue: recover events whose webhook job died
  (:mod:`amlrelay.journal`, registered through ``COMMAND_GROUPS`` like the other subpackages' commands).

Settings are the runbook's (``AMLRELAY_*``); from a laptop add ``AMLRELAY_CREDENTIAL=default`` to use
``az login`` instead of a managed identity.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from .errors import AmlRelayError
from .record import Outcome, exit_code, outcomes_table, table


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "run":  # the runbook's own argument handling, untouched
        from .runbook import main as run

        return run(["amlrelay run", *args[1:]])
    if args and args[0] == "subscriptions":
        from .subscriptions import main as subscriptions

        return subscriptions(args[1:])
    parser = _parser()
    ns = parser.parse_args(args)
    try:
        result: int = ns.handler(ns)
        return result
    except AmlRelayError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"what to do: {exc.hint}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amlrelay", description=__doc__.split("\n\n")[0] if __doc__ else "")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    commands.add_parser("run", help="handle WEBHOOKDATA or a manual start, as the runbook does (see run --help)")
    commands.add_parser("subscriptions", help="generate Event Grid subscriptions from a routes file")
    check = commands.add_parser("check-routes", help="validate a routes file and summarise it")
    check.add_argument("routes", nargs="?", default="routes.json")
    check.set_defaults(handler=_check_routes)
    status = commands.add_parser("status", help="recent ledger records")
    status.add_argument("--limit", type=int, default=25)
    status.add_argument("--state", choices=("claimed", "triggered", "failed"))
    status.add_argument("--stale", action="store_true", help="only claims whose holder died (see replay --stale)")
    status.add_argument("--json", action="store_true", help="one JSON object per line")
    status.set_defaults(handler=_status)
    purge = commands.add_parser("purge", help="delete old finished ledger records (Table Storage has no TTL)")
    purge.add_argument("--older-than-days", type=float, default=30.0, help="default 30; at least 2")
    purge.add_argument("--include-failed", action="store_true", help="also failed records (claims never)")
    purge.set_defaults(handler=_purge)
    replay = commands.add_parser("replay", help="deliver dead-lettered events (and stale claims) again")
    replay.add_argument("--prefix", help="only blobs under this prefix, e.g. a topic/subscription")
    replay.add_argument("--include-replayed", action="store_true", help="also blobs replayed before")
    replay.add_argument("--stale", action="store_true", help="also the events of stale ledger claims")
    replay.add_argument("--failed", action="store_true",
                        help="also the events of failed ledger records (ambiguous ones are reconciled first)")
    replay.add_argument("--no-dead-letters", action="store_true", help="skip the dead-letter container")
    replay.add_argument("--dry-run", action="store_true", help="show what would be sent")
    replay.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    replay.set_defaults(handler=_replay)
    for module in COMMAND_GROUPS:
        importlib.import_module(module).register(commands)
    return parser


COMMAND_GROUPS: tuple[str, ...] = ("amlrelay.journal._cli", "amlrelay.aml._cli", "amlrelay.logicapp._cli",
                                  "amlrelay.aml._tags_cli")
"""Subpackages that bring their own commands (``amlrelay aml ...``, ``amlrelay logicapp ...``): each module
has ``register(commands)`` and keeps its heavy imports inside the handlers, so ``amlrelay --help`` stays fast
and this file stays the index of the command line rather than growing with every capability."""


def _check_routes(ns: argparse.Namespace) -> int:
    from .router import reconcilable
    from .routes import load_routes

    routes = load_routes(ns.routes)
    rows = []
    for route in routes.routes:
        filters = "; ".join(f"{f.field} {f.operator} {','.join(f.values)}".strip() for f in route.filters) or "-"
        target = route.pipeline
        unsafe = [t for t in route.events if not reconcilable(route, t)]
        rows.append((route.name, ",".join(route.events), filters, f"{target.project}/{target.pipeline_id}",
                     "yes" if not unsafe else "no: " + ",".join(unsafe)))
    print(f"{routes.source}: {len(routes.routes)} routes, all valid\n")
    print(table(rows, ("route", "events", "filters", "pipeline", "reconcilable")))
    if any(row[-1] != "yes" for row in rows):
        print("\nA route that is not reconcilable fails an event whose ADO answer was lost instead of risking a "
              "second run; send the outcome's identity fields (see README, 'Exactly once') to fix that — in variables "
              "that are not isSecret (ADO never returns secret values) or in template parameters.")
    return 0


def _status(ns: argparse.Namespace) -> int:
    from .runbook import open_ledger
    from .settings import automation_lookup, resolve

    ledger = open_ledger(resolve({}, automation=automation_lookup(), ledger_only=True))
    records = ledger.stale_claims()[: ns.limit] if ns.stale else ledger.recent(ns.limit, state=ns.state)
    if ns.json:
        for r in records:
            print(json.dumps({"key": r.key, "route": r.route, "event_id": r.event_id, "event_type": r.event_type,
                              "state": r.state, "ado_run_id": r.ado_run_id, "ado_run_url": r.ado_run_url,
                              "reason": r.reason, "attempts": r.attempts, "updated_at": r.updated_at.isoformat()}))
        return 0
    rows = [(r.updated_at.strftime("%Y-%m-%d %H:%M:%S"), r.event_type, r.route, r.state, str(r.ado_run_id or "-"),
             str(r.attempts), r.ado_run_url or r.reason or "") for r in records]
    print(table(rows, ("updated (UTC)", "event", "route", "state", "ado run", "tries", "link / reason"), width=70))
    return 0


def _purge(ns: argparse.Namespace) -> int:
    from datetime import timedelta

    from .runbook import open_ledger
    from .settings import automation_lookup, resolve

    ledger = open_ledger(resolve({}, automation=automation_lookup(), ledger_only=True))
    count = ledger.purge(timedelta(days=ns.older_than_days), include_failed=ns.include_failed)
    print(f"deleted {count} ledger records last written more than {ns.older_than_days:g} days ago")
    return 0


def _replay(ns: argparse.Namespace) -> int:
    from .events import parse_events
    from .runbook import build_relay
    from .settings import automation_lookup, resolve

    params = {"dry_run": "true"} if ns.dry_run else {}
    settings = resolve(params, automation=automation_lookup())
    from .routes import load_routes

    relay = build_relay(settings, load_routes(settings.routes))
    outcomes: list[Outcome] = []
    sources: list[tuple[str, list[dict[str, Any]]]] = []
    container = None if ns.no_dead_letters else _container(settings)
    if container is not None:
        from .deadletter import read_container

        sources += [(f"dead letter {d.blob}", d.events)
                    for d in read_container(container, prefix=ns.prefix, include_replayed=ns.include_replayed)]
    if relay.ledger is not None:
        records = relay.ledger.stale_claims() if ns.stale else []
        if ns.failed:  # ambiguous ones too: the relay reconciles them before sending anything
            records += relay.ledger.recent(10_000, state="failed")
        sources += [(f"ledger {r.state} {r.key}", [json.loads(r.event_json)])
                    for r in records if r.event_json and not r.event_json_truncated]
    for label, events in sources:
        handled = relay.handle(parse_events(events), raw=events)
        outcomes += handled
        if container is not None and label.startswith("dead letter ") and not ns.dry_run and exit_code(handled) == 0:
            from .deadletter import mark_replayed

            mark_replayed(container, label.removeprefix("dead letter "), datetime.now(timezone.utc).isoformat())
    if ns.json:
        for outcome in outcomes:
            print(outcome.to_json())
    else:
        print(f"{len(sources)} deliveries replayed\n")
        print(outcomes_table(outcomes))
    return exit_code(outcomes)


def _container(settings: Any) -> Any:
    from azure.storage.blob import ContainerClient

    if settings.ledger_connection_string:
        return ContainerClient.from_connection_string(settings.ledger_connection_string,
                                                      settings.deadletter_container)
    if settings.blob_account_url:
        from .auth import managed_identity

        credential = managed_identity(settings.managed_identity_client_id, kind=settings.credential)
        return ContainerClient(settings.blob_account_url, settings.deadletter_container, credential=credential)
    return None


if __name__ == "__main__":
    raise SystemExit(main())
