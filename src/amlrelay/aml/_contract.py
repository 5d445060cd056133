"""The constants the command line and the clients share: ARM defaults, the waiter's outcomes and exit codes.

A module of its own, with no imports, so ``amlrelay --help`` can build the ``aml`` commands without loading
requests, azure-core or the waiter.
"""

from __future__ import annotations

from enum import Enum

DEFAULT_ARM_URL = "https://management.azure.com"
DEFAULT_API_VERSION = "2025-09-01"


class WaitOutcome(str, Enum):
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"
    TIMED_OUT = "timed-out"
    HANDED_OFF = "handed-off"

    def __str__(self) -> str:
        return self.value


EXIT_CODES = {WaitOutcome.COMPLETED: 0, WaitOutcome.FAILED: 1, WaitOutcome.CANCELED: 3, WaitOutcome.TIMED_OUT: 4,
              WaitOutcome.HANDED_OFF: 5}
EXIT_USAGE = 2  # argparse's own code, and what amlrelay's CLI returns for bad input
EXIT_ERROR = 6  # AML could not be read: no token, 401/403/404, or tagging for a hand-off failed
EXIT_RESUMABLE = 7  # the credential stopped giving ARM tokens mid-wait (e.g. AzureCLI@2's federated login
# expired): the jobs keep running and the token is published, so a later job resumes the wait
EXIT_INTERNAL = 8  # amlrelay itself failed (a bug, an unwritable agent folder): not "the AML job failed" (1)
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C, an ADO cancel): the shell's own code for it
