#!/usr/bin/env python3
"""Azure Automation runbook (Python 3.10), run on a schedule: deliver again what never got through.

Replays Event Grid's dead-lettered events, the events of stale ledger claims (a job that died after
claiming) and of failed records a retry may fix (never the [ambiguous] ones), through the same routes and
ledger as live deliveries, so nothing is started twice. Output and exit code as in `amlrelay replay`
(see README, "Dead letters and replay").
"""

import sys

from amlrelay.cli import main

if __name__ == "__main__":
    sys.exit(main(["replay", "--stale", "--failed", *sys.argv[1:]]))
