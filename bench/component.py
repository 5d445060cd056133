"""What the AML trigger component and tag-back cost, each against a baseline measured in the same run.

1. Tag-back: one relay (Azurite ledger, ADO stand-in) handles a batch of RunCompleted events with
   AMLRELAY_TAG_BACK off, then on (MLflow stand-in: two set-tag calls and one ledger merge more per event),
   interleaved over rounds with fresh tables. Figure: ms per triggered event, and the on/off ratio.
2. The component step: a fresh process running the component's command (MLmodel parsed as YAML, the AML
   compute identity) against a fresh process of the runbook's manual start for the same run, both with the
   ledger: spawn to exit, medians, ratio. The runbook is the baseline because the component is that path plus
   the AML edge (argument mapping, MLmodel, reading the run from AML with Jobs_Get, output file).

Usage: eval "$(scripts/azurite env)"; .venv/bin/python bench/component.py [--rounds N] [--events N]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.aml_command import render_command  # noqa: E402
from tests.conftest import sample  # noqa: E402
from tests.servers.ado import ADO_RESOURCE  # noqa: E402
from tests.servers.aml import AmlServer  # noqa: E402
from tests.servers.aml_identity import AmlComputeIdentityServer  # noqa: E402
from tests.servers.mlflow import MlflowServer  # noqa: E402
from tests.stack import Stack, local_stack  # noqa: E402

from amlrelay.events import parse_events  # noqa: E402
from amlrelay.ledger import Ledger  # noqa: E402
from amlrelay.record import table  # noqa: E402
from amlrelay.routes import load_routes  # noqa: E402
from amlrelay.runbook import build_relay  # noqa: E402
from amlrelay.settings import resolve  # noqa: E402

WORKSPACE = ("/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-contoso/providers/"
             "Microsoft.MachineLearningServices/workspaces/contoso-ml")
COMPONENT = ROOT / "components" / "trigger_ado_pipeline"


def _table(conn: str) -> str:
    name = "bench" + uuid.uuid4().hex[:20]
    Ledger.from_connection_string(conn, table=name).ensure_table()
    return name


def _events(count: int) -> list[dict[str, Any]]:
    out = []
    for i in range(count):
        event = copy.deepcopy(sample("event-grid-schema", "run_completed"))
        event.update(id=f"bench-{uuid.uuid4().hex}", topic=WORKSPACE)
        event["data"].update(runId=f"Bench_Run_{i}")
        out.append(event)
    return out


def tag_back_round(stack: Stack, mlflow: MlflowServer, conn: str, events: list[dict[str, Any]], on: bool) -> float:
    env = {**stack.env(), "AMLRELAY_LEDGER": "true", "AMLRELAY_LEDGER_CONNECTION_STRING": conn,
           "AMLRELAY_LEDGER_TABLE": _table(conn), "AMLRELAY_ALLOWED_WORKSPACES": WORKSPACE}
    if on:
        env |= {"AMLRELAY_TAG_BACK": "true", "AMLRELAY_MLFLOW_URL": mlflow.url}
        for event in events:
            mlflow.add_run(event["data"]["runId"])
    os.environ.update({k: v for k, v in env.items() if k.startswith(("IDENTITY_", "AMLRELAY_"))})
    relay = build_relay(resolve({}, env=env), load_routes(ROOT / "routes.json"))
    started = time.perf_counter()
    outcomes = relay.handle(parse_events(events), raw=events)
    elapsed = time.perf_counter() - started
    bad = [o for o in outcomes if o.outcome != "triggered" or o.warning]
    if bad:
        raise SystemExit(f"tag-back round failed: {bad[0]}")
    return elapsed * 1000 / len(events)


def process_round(stack: Stack, compute: AmlComputeIdentityServer, aml: AmlServer, conn: str, folder: Path,
                  component: bool, index: int) -> float:
    import yaml

    run_id = f"Cold_Run_{index}_{int(component)}"
    ledger = {"AMLRELAY_LEDGER": "true", "AMLRELAY_LEDGER_CONNECTION_STRING": conn,
              "AMLRELAY_LEDGER_TABLE": _table(conn), "AMLRELAY_ALLOWED_WORKSPACES": WORKSPACE}
    if component:
        aml.add_job(run_id, "Completed", experiment_name="bench")  # the component reads it (Jobs_Get) first
        model = folder / f"model{index}"
        model.mkdir()
        (model / "MLmodel").write_text(f"flavors: {{}}\nrun_id: {run_id}\n")
        spec = yaml.safe_load((COMPONENT / "trigger_ado_pipeline.yml").read_text())
        command = render_command(spec, {"model": str(model), "ado_organization": "contoso",
                                        "routes": str(ROOT / "routes.json"), "route": "evaluate-trained-model",
                                        "arm_url": aml.url},
                                 {"ado_run": str(folder / f"out{index}")})
        env = {k: v for k, v in stack.env(**ledger).items() if not k.startswith("IDENTITY_")}
        env |= compute.env() | {"AZUREML_ARM_SUBSCRIPTION": "00000000-0000-0000-0000-000000000001",
                                "AZUREML_ARM_RESOURCEGROUP": "rg-contoso", "AZUREML_ARM_WORKSPACE_NAME": "contoso-ml",
                                "MLFLOW_EXPERIMENT_NAME": "bench",
                                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        argv = ["bash", "-c", command]
        cwd: Path | None = COMPONENT / "src"
    else:
        argv = stack.runbook_command("--run-id", run_id, "--experiment-name", "bench", "--workspace", WORKSPACE,
                                     "--route", "evaluate-trained-model")
        env, cwd = stack.env(**ledger), None
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{'component' if component else 'runbook'} failed:\n{done.stdout}{done.stderr}")
    return elapsed * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--events", type=int, default=100)
    args = parser.parse_args()
    conn = os.environ.get("AMLRELAY_LEDGER_CONNECTION_STRING")
    if not conn:
        print('needs Azurite: eval "$(scripts/azurite env)" first', file=sys.stderr)
        return 2
    off: list[float] = []
    on: list[float] = []
    component: list[float] = []
    runbook: list[float] = []
    with local_stack() as stack, MlflowServer(WORKSPACE) as mlflow, AmlComputeIdentityServer() as compute, \
            tempfile.TemporaryDirectory() as tmp, \
            AmlServer(subscription="00000000-0000-0000-0000-000000000001", resource_group="rg-contoso",
                      workspace="contoso-ml", own_audience=True) as aml:
        stack.ado.add_bearer_token(compute.token_for(ADO_RESOURCE))
        for round_ in range(args.rounds):
            off.append(tag_back_round(stack, mlflow, conn, _events(args.events), on=False))
            on.append(tag_back_round(stack, mlflow, conn, _events(args.events), on=True))
            runbook.append(process_round(stack, compute, aml, conn, Path(tmp), False, round_))
            component.append(process_round(stack, compute, aml, conn, Path(tmp), True, round_))
    med = statistics.median
    print(f"tag-back, {args.events} RunCompleted events per batch, median of {args.rounds} rounds "
          f"(Python {sys.version.split()[0]}):")
    print(table([("tag-back off (baseline)", f"{med(off):.1f}", "1.00"),
                 ("tag-back on", f"{med(on):.1f}", f"{med(on) / med(off):.2f}")],
                ("variant", "ms per triggered event", "ratio")))
    print(f"\ncomponent step vs runbook manual start, fresh process to exit, median of {args.rounds}:")
    print(table([("runbook manual start (baseline)", f"{med(runbook):.0f}", "1.00"),
                 ("trigger component", f"{med(component):.0f}", f"{med(component) / med(runbook):.2f}")],
                ("variant", "ms", "ratio")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
