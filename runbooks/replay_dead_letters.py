#!/usr/bin/env python3
"""Azure Automation runbook (Python 3.10), run on a schedule: deliver again what never got through.

First sweeps the journal (`amlrelay sweep`): events whose webhook job died before claiming the ledger are
triggered now, the others are found to be duplicates. Then replays Event Grid's dead-lettered events, the
events of stale ledger claims (a job that died after claiming) and of failed records a retry may fix,
through the same routes and ledger as live deliveries, so nothing is started twice. The job's exit code is
the worse of the two (see README, "Across the webhook boundary" and "Dead letters and replay"). Automation's
Python sandbox drops stderr, so the command line's error lines are printed to stdout as ERROR: lines.
Last, with AMLRELAY_TAG_BACK on, writes the tag-back tags still owed (`amlrelay retag`); an owed tag is a
warning, never a failed job.
"""

import contextlib
import io
import sys

from amlrelay.cli import main


def run(args: list[str]) -> int:
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        code = main(args)
    for line in errors.getvalue().splitlines():
        print(line if line.startswith(("ERROR:", "WARNING:")) else f"ERROR: {line}", flush=True)
    return code


if __name__ == "__main__":
    swept = run(["sweep", *sys.argv[1:]])
    replayed = run(["replay", "--stale", "--failed", *sys.argv[1:]])
    run(["retag"])  # its exit code says whether tags are still owed: warnings, not a failed job
    sys.exit(max(swept, replayed))
