"""Cold start to first ADO request, and peak memory, of the runbook versus a naive baseline, in one run.

Each variant is a fresh Python process (as every Automation job is), delivering Microsoft's
ModelRegistered sample to loopback ADO / managed identity / Key Vault servers in this process. Wall time
is measured from spawn to the moment the ADO server receives the POST; peak memory is the child's max
RSS (wait4). Variants run interleaved, N rounds, and the medians are compared as ratios to the baseline.

Usage: .venv/bin/python bench/cold_start.py [--rounds N]
With Azurite running (``eval "$(scripts/azurite env)"``) it also measures the runbook with its ledger, which
costs two more round trips (claim, record) that the baseline does not make.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers._base import RecordedRequest, Reply  # noqa: E402
from tests.servers.ado import AdoServer  # noqa: E402
from tests.stack import PAT, Stack, local_stack  # noqa: E402

from amlrelay.record import table  # noqa: E402

SAMPLE = ROOT / "tests/fixtures/eventgrid/examples/event-grid-schema/model_registered.json"


class TimedAdo(AdoServer):
    """The ADO stand-in, noting when each run request arrives."""

    arrivals: list[float]

    def handle(self, request: RecordedRequest) -> Reply | None:
        if request.method == "POST":
            self.arrivals.append(time.monotonic())
        return super().handle(request)


def measure(command: list[str], env: dict[str, str], ado: TimedAdo) -> tuple[float, float, int]:
    """(seconds to the ADO request, seconds to exit, peak RSS in MiB) of one fresh process."""
    ado.arrivals = []
    started = time.monotonic()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(process.pid, 0)
    ended = time.monotonic()
    output = process.stdout.read().decode() if process.stdout else ""
    if status != 0 or len(ado.arrivals) != 1:
        raise SystemExit(f"variant failed (status {status}, {len(ado.arrivals)} requests):\n{output}")
    return ado.arrivals[0] - started, ended - started, usage.ru_maxrss // 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    events = [json.loads(SAMPLE.read_text())]
    with local_stack(pat=True, verify=True) as stack:
        stack.emitted(events)  # the AML stand-in holds the sample's model version (verification variant)
        ado = TimedAdo("contoso", pipelines=_pipelines(stack), bearer_tokens={stack.token}, pats={PAT}).start()
        try:
            stack.ado = ado
            variants = _variants(stack, events)
            samples: dict[str, list[tuple[float, float, int]]] = {name: [] for name in variants}
            ledger = os.environ.get("AMLRELAY_LEDGER_CONNECTION_STRING")
            for round_ in range(args.rounds):
                for name, (command, env) in variants.items():
                    if ledger and "ledger" in name:  # a fresh table per round, or the event is a duplicate
                        env = {**env, "AMLRELAY_LEDGER": "true", "AMLRELAY_LEDGER_CONNECTION_STRING": ledger,
                               "AMLRELAY_LEDGER_TABLE": _fresh_table(ledger, round_)}
                    samples[name].append(measure(command, env, ado))
        finally:
            ado.stop()
    base = _medians(samples["baseline"])
    rows = []
    for name, values in samples.items():
        to_request, to_exit, rss = _medians(values)
        rows.append((name, f"{to_request * 1000:.0f}", f"{to_exit * 1000:.0f}", f"{rss:.0f}",
                     f"{to_request / base[0]:.2f}", f"{rss / base[2]:.2f}"))
    print(f"cold start, median of {args.rounds} fresh processes each (Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} cores)\n")
    print(table(rows, ("variant", "ms to ADO request", "ms to exit", "peak RSS MiB", "time ratio", "memory ratio")))
    print("\nratio = variant / baseline (lower is better). baseline: bench/baseline_runbook.py "
          "(azure-identity + azure-keyvault-secrets + requests, PAT from Key Vault, one POST).")
    return 0


def _variants(stack: Stack, events: list[dict[str, Any]]) -> dict[str, tuple[list[str], dict[str, str]]]:
    body = json.dumps(events)
    webhook = f"{{WebhookName:bench,RequestBody:{body},RequestHeader:{{Connection:Keep-Alive}}}}".split()
    assert stack.vault is not None
    off = {"AMLRELAY_VERIFY": "false"}  # verification is a variant of its own (one ARM token + one read)
    baseline_env = {**stack.env(**off), "KV_URL": stack.vault.url, "ADO_ORG_URL": stack.ado.org_url}
    mi_env = {k: v for k, v in stack.env(**off).items()
              if not k.startswith(("AMLRELAY_AUTH", "AMLRELAY_KEY_VAULT"))}
    variants = {
        "baseline": ([sys.executable, str(ROOT / "bench/baseline_runbook.py"), body], baseline_env),
        "amlrelay (PAT from Key Vault)": (stack.runbook_command(*webhook), stack.env(**off)),
        "amlrelay (managed identity)": (stack.runbook_command(*webhook), mi_env),
        "amlrelay (managed identity + verification)": (stack.runbook_command(*webhook),
                                                       {**mi_env, "AMLRELAY_VERIFY": "true"}),
    }
    if os.environ.get("AMLRELAY_LEDGER_CONNECTION_STRING"):
        variants["amlrelay (managed identity + ledger)"] = (stack.runbook_command(*webhook), mi_env)
    return variants


def _fresh_table(connection_string: str, round_: int) -> str:
    """Created here, outside the measured process: in Azure the table exists before the first job."""
    from azure.data.tables import TableServiceClient

    name = f"coldstart{os.getpid()}r{round_}"
    TableServiceClient.from_connection_string(connection_string).create_table_if_not_exists(name)
    return name


def _pipelines(stack: Stack) -> Any:
    from tests.stack import pipelines_for

    from amlrelay.routes import load_routes

    return pipelines_for(load_routes(stack.routes_path))


def _medians(values: list[tuple[float, float, int]]) -> tuple[float, float, float]:
    return (statistics.median(v[0] for v in values), statistics.median(v[1] for v in values),
            statistics.median(v[2] for v in values))


if __name__ == "__main__":
    sys.exit(main())
