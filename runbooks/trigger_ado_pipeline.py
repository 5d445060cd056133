#!/usr/bin/env python3
"""Azure Automation runbook (Python 3.10): start the ADO pipeline that an Azure ML event calls for.

Started by a webhook that an Event Grid subscription posts to, or by hand from the portal with parameters
(`--help`). All logic lives in the `amlrelay` package (imported into the runtime environment as a wheel);
settings come from Automation variables named AMLRELAY_* (see README, "Settings").
"""

import sys

from amlrelay.runbook import main

if __name__ == "__main__":
    sys.exit(main(sys.argv))
