#!/usr/bin/env python3
"""Azure Automation runbook (Python 3.10), run on a schedule: deliver again what never got through.

First sweeps the journal (`amlrelay sweep`): events whose webhook job died before claiming the ledger are
triggered now, the others are found to be duplicates. Then replays Event Grid's dead-lettered events, the
events of stale ledger claims (a job that died after claiming) and of failed records a retry may fix,
through the same routes and ledger as live deliveries, so nothing is started twice. The job's exit code is
the worse of the two (see README, "Across the webhook boundary" and "Dead letters and replay"). Automation's
Python sandbox drops stderr, so the command line's error lines are printed to stdout as ERROR: lines.
Last, with AMLRELAY_TAG_BACK on, writes the tag-back tags still owed (`amlrelay retag`); an owed tag is a
warning, never a failed job. And it checks the Event Grid webhook's expiry (AMLRELAY_WEBHOOK_EXPIRES, an
Automation variable infra/main.bicep sets): within AMLRELAY_WEBHOOK_EXPIRY_WARN_DAYS (default 30) it prints
ERROR and fails the job, so the failed-job alert fires while there is time to re-run scripts/deploy --
Azure Monitor has no webhook-expiry metric, and an expired webhook loses every delivery to dead letters.
"""

import contextlib
import datetime as dt
import io
import os
import sys

from amlrelay.cli import main
from amlrelay.settings import automation_lookup


def run(args: list[str]) -> int:
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        code = main(args)
    for line in errors.getvalue().splitlines():
        print(line if line.startswith(("ERROR:", "WARNING:")) else f"ERROR: {line}", flush=True)
    return code


def webhook_expiry(now: dt.datetime | None = None) -> int:
    """1 (and an ERROR line) when the webhook expires within the warning period, else 0."""
    lookup = automation_lookup()

    def get(name: str) -> str:
        value = lookup(name) if lookup else None
        return (value if value is not None else os.environ.get(name, "")).strip()

    expires = get("AMLRELAY_WEBHOOK_EXPIRES")
    if not expires:
        return 0  # no webhook (Logic App handler) or a deployment older than the check
    try:
        when = dt.datetime.fromisoformat(expires.replace("Z", "+00:00"))
        days = int(get("AMLRELAY_WEBHOOK_EXPIRY_WARN_DAYS") or "30")
    except ValueError as exc:
        print(f"ERROR: cannot check the webhook's expiry ({exc}): AMLRELAY_WEBHOOK_EXPIRES is an ISO 8601 "
              "date-time, AMLRELAY_WEBHOOK_EXPIRY_WARN_DAYS a number of days; fix the Automation variable or re-run "
              "scripts/deploy, which sets it", flush=True)
        return 1
    when = when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)
    left = when - (now or dt.datetime.now(dt.timezone.utc))
    if left > dt.timedelta(days=days):
        return 0
    state = f"expires in {left.days} day(s), at {expires}" if left.total_seconds() > 0 else f"expired at {expires}"
    print(f"ERROR: the Event Grid webhook {state}; after that every delivery fails and is dead-lettered. "
          "Re-run scripts/deploy to rotate it (the dead letters are replayed afterwards).", flush=True)
    return 1


if __name__ == "__main__":
    swept = run(["sweep", *sys.argv[1:]])
    replayed = run(["replay", "--stale", "--failed", *sys.argv[1:]])
    run(["retag"])  # its exit code says whether tags are still owed: warnings, not a failed job
    sys.exit(max(swept, replayed, webhook_expiry()))
