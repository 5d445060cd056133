"""Entry point of the AML component ``trigger_ado_pipeline``: every decision is in ``amlrelay.aml._component``.

The ``amlrelay`` package sits next to this file (``scripts/bundle-component`` copies it here before the
component is registered; the environment provides its dependencies).
"""

import sys

try:
    from amlrelay.aml import run_component
except ImportError as exc:  # pragma: no cover - a packaging mistake, reported plainly in the step's log
    print(f"ERROR: amlrelay cannot be imported ({exc}).", flush=True)
    print("ERROR: What to do: run scripts/bundle-component before registering the component, and use the "
          "environment in components/trigger_ado_pipeline/environment/.", flush=True)
    sys.exit(2)

sys.exit(run_component())
