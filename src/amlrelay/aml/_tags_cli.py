"""``amlrelay retag``: write the tag-back tags that are still owed (AMLRELAY_TAG_BACK).

The sweeper (``amlrelay sweep``) may call :func:`amlrelay.aml.retry_tags` itself; this command is the same
thing on its own, for an operator or a schedule. It reads the ledger and writes MLflow tags; it never calls
ADO, so it cannot start a run. Registered through ``amlrelay.cli.COMMAND_GROUPS``.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(commands: Any) -> None:
    retag = commands.add_parser(
        "retag", help="tag-back: tag AML runs / model versions whose ADO run tag could not be written yet",
        description="For every triggered ledger record whose tag-back is still owed, write amlrelay.ado_run_id "
        "and amlrelay.ado_run_url on the AML run or model version (MLflow, the handler's identity). Never "
        "calls ADO.")
    retag.add_argument("--limit", type=int, default=500,
                       help="at most this many records (least-tried, then oldest, first)")
    retag.add_argument("--json", action="store_true", help="one JSON line per record")
    retag.set_defaults(handler=run)


def run(ns: argparse.Namespace) -> int:
    from ..runbook import open_ledger
    from ..settings import automation_lookup, resolve
    from ._tagback import describe, given_up_warning, retry_tags, tag_back_from_settings

    settings = resolve({}, automation=automation_lookup(), ledger_only=True)
    tag_back = tag_back_from_settings(settings)
    if tag_back is None:
        print("tag-back is off (AMLRELAY_TAG_BACK=false): nothing to retag.")
        return 0
    results = retry_tags(open_ledger(settings), tag_back, limit=ns.limit)
    for result in results:
        if ns.json:
            print(result.to_json())
        if result.warning:
            print(f"WARNING: {result.key}: {result.warning}")
    counts = describe(results)
    gave_up = given_up_warning(results)
    if gave_up:
        print(gave_up)
    if not ns.json:
        print(f"tag-back: {counts['tagged']} tagged, {counts['still_owed']} still owed"
              + (f" ({counts['given_up']} given up)" if counts["given_up"] else ""))
    return 1 if counts["still_owed"] else 0
