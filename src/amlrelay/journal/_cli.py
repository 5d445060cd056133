"""``amlrelay sweep``: drain the journal queue through the relay (by hand, or from the replay runbook).

Registered through ``amlrelay.cli.COMMAND_GROUPS``; the Azure SDK is imported only when the command runs.
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import Any


def register(commands: Any) -> None:
    sweep = commands.add_parser(
        "sweep", help="recover events whose webhook job died: drain the journal queue through the relay",
        description="Hand every journal message to the relay: events already handled are duplicates, lost ones "
        "are triggered now; a message is deleted only once its events are triggered, duplicate, skipped or "
        "rejected, and moved to the poison queue (never deleted) after AMLRELAY_JOURNAL_MAX_DEQUEUES failures.")
    sweep.add_argument("--limit", type=int, help="handle at most this many messages in this run")
    sweep.add_argument("--grace", type=float, metavar="SECONDS",
                       help="leave messages younger than this to the webhook job (default AMLRELAY_JOURNAL_GRACE)")
    sweep.add_argument("--poison", action="store_true",
                       help="drain the poison queue instead, once the cause of its failures is fixed")
    sweep.add_argument("--dry-run", action="store_true", help="show what would be sent; delete nothing")
    sweep.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    sweep.set_defaults(handler=run)


def run(ns: argparse.Namespace) -> int:
    from ..record import outcomes_table
    from ..routes import load_routes
    from ..runbook import build_relay
    from ..settings import automation_lookup, resolve
    from ._queue import open_queue, poison_name
    from ._sweep import sweep

    settings = resolve({"dry_run": "true"} if ns.dry_run else {}, automation=automation_lookup())
    if not settings.journal:
        print("WARNING: AMLRELAY_JOURNAL is false: no journal to sweep; events whose webhook job died are not "
              "recovered.")
        return 0
    if not settings.ledger and not settings.dry_run:
        from ..errors import SettingsError

        raise SettingsError(["AMLRELAY_LEDGER is false, and amlrelay sweep needs the ledger: without it every "
                             "journaled event the webhook job already handled would start its pipeline again"])
    relay = build_relay(settings, load_routes(settings.routes))
    name = poison_name(settings.journal_queue) if ns.poison else settings.journal_queue
    queue = open_queue(settings, name)
    poison = None if ns.poison else open_queue(settings, poison_name(settings.journal_queue))
    grace = 0.0 if ns.poison else (settings.journal_grace if ns.grace is None else ns.grace)
    report = sweep(queue, relay, poison=poison, grace=timedelta(seconds=grace),
                   max_dequeues=settings.journal_max_dequeues, retry_after=settings.journal_retry_after,
                   limit=ns.limit)
    if ns.json:
        for outcome in report.outcomes:
            print(outcome.to_json())
    else:
        print(report.summary() + "\n")
        if report.outcomes:
            print(outcomes_table(report.outcomes))
    for result in report.results:
        if result.action in ("moved-aside", "kept") and result.reason:
            level = "ERROR" if result.action == "moved-aside" else "WARNING"
            print(f"{level}: journal message {result.message_id} ({result.action}): {result.reason}")
    return report.exit_code()
