"""Exactly once, measured: duplicates, faults, hostile input and throughput (the figures of issue 3).

Everything runs against a real Azurite (the ledger) and the loopback ADO / managed identity / Key Vault
stand-ins of tests/stack.py, with the relay wired exactly as the runbook wires it (settings from the
environment, ``runbook.build_relay``). Routes: routes.json, plus the drift id and run id sent by
retrain-on-drift so that every outcome can be recognised among the ADO runs. Four figures:

1. duplicates: 10,000 deliveries with 30 % duplicates (plain redeliveries, RunCompleted + RunStatusChanged
   (Completed) pairs of one run, re-emitted events) over 8 spawned worker processes, each a job with its own
   relay. The copies of one outcome sit in the same row of different workers, and such rows start together
   (a barrier), so the copies race for the ledger claim. ADO runs are counted per unique AML outcome from the
   ADO stand-in's own record of the runs.
2. fault matrix: per fault, 20 events as 20 concurrent jobs with the fault active, then healed and all 20
   delivered again by a fresh relay (a new job): triggered / failed-recorded / lost / doubled after the first
   pass, exactly once after the redelivery.
3. fuzzing: 1,500 random and mutated payloads and WEBHOOKDATA argv through parse + relay (argv through the
   runbook's own main()); crashes, and ADO calls made for input that is invalid by construction.
4. throughput: one 5,000-event batch through one relay, and the floor measured in the same run: one Azurite
   insert + one POST to the ADO stand-in per event, sequential, with the relay's own clients.

Azurite: ``AMLRELAY_LEDGER_CONNECTION_STRING`` if set (the bench creates and drops its own tables), otherwise
a private in-memory instance started with ``scripts/azurite start`` on free ports and stopped afterwards.
Two adjustments to the stand-ins keep the figures about amlrelay (see :func:`no_delay`, :class:`RunArchive`).

Layout: this script parses the arguments, sets up Azurite and the stack, runs the figures and gives the verdict;
_exactly_once_common.py holds what the figures share, and each figure has its module: _exactly_once_duplicates,
_exactly_once_faults, _exactly_once_fuzz_figure (inputs from _exactly_once_fuzz), _exactly_once_throughput.

Usage: .venv/bin/python bench/exactly_once.py [--quick] [--seed N] [--only FIGURE]
Exit status: 0 when every hard requirement holds (exactly one run per outcome, nothing lost, nothing doubled,
no crash, no ADO call for invalid input), 1 otherwise, 2 when the bench itself could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _exactly_once_common import (  # noqa: E402
    AZURITE_PID,
    CONN_VAR,
    FULL,
    QUICK,
    Bench,
    BenchError,
    no_delay,
    note,
    quiet_sdk_logging,
    say,
)
from _exactly_once_duplicates import run_duplicates  # noqa: E402
from _exactly_once_events import bench_routes  # noqa: E402
from _exactly_once_faults import run_faults  # noqa: E402
from _exactly_once_fuzz_figure import run_fuzz  # noqa: E402
from _exactly_once_throughput import run_throughput  # noqa: E402
from tests.stack import local_stack  # noqa: E402

AZURITE = ROOT / "scripts" / "azurite"


# ---- Azurite -----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def azurite() -> Iterator[tuple[str, str]]:
    """(connection string, where it comes from); a private Azurite is stopped and purged afterwards."""
    given = os.environ.get(CONN_VAR)
    if given:
        yield given, f"{CONN_VAR} (given; the bench creates and drops its own tables)"
        return
    folder = tempfile.mkdtemp(prefix="amlrelay-bench-azurite-")
    env = {**os.environ, "AMLRELAY_AZURITE_DIR": folder, "AMLRELAY_AZURITE_BLOB_PORT": "auto",
           "AMLRELAY_AZURITE_QUEUE_PORT": "auto", "AMLRELAY_AZURITE_TABLE_PORT": "auto",
           "AMLRELAY_AZURITE_IN_MEMORY": "1"}
    note("starting a private Azurite (scripts/azurite start)")
    started = subprocess.run([str(AZURITE), "start"], env=env, capture_output=True, text=True, check=False,
                             timeout=900)
    try:
        if started.returncode != 0:
            raise BenchError(f"scripts/azurite start failed:\n{started.stderr[-2000:]}")
        out = subprocess.run([str(AZURITE), "env"], env=env, capture_output=True, text=True, check=True)
        match = re.search(rf"^export {CONN_VAR}='([^']*)'$", out.stdout, re.MULTILINE)
        if not match:
            raise BenchError("scripts/azurite env printed no connection string")
        version = re.search(r"azurite@([\w.]+)", started.stderr)
        with contextlib.suppress(OSError, AttributeError):
            AZURITE_PID[0] = int(re.search(r"^pid=(\d+)$", (Path(folder) / "state").read_text(),
                                           re.MULTILINE).group(1))  # type: ignore[union-attr]
        yield match.group(1), (f"private Azurite {version.group(1) if version else ''} (scripts/azurite start, "
                               "in memory, free ports; stopped afterwards)")
    finally:
        subprocess.run([str(AZURITE), "stop", "--purge"], env=env, capture_output=True, check=False, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


# ---- main --------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/exactly_once.py",
        description="Print the exactly-once figures of issue 3 (duplicates, fault matrix, fuzzing, throughput) "
        "against Azurite and the loopback ADO/identity/Key Vault stand-ins. Starts a private Azurite unless "
        f"{CONN_VAR} is set. Exit 0 = every hard requirement holds, 1 = one does not, 2 = the bench could not run.",
    )
    parser.add_argument("--quick", action="store_true",
                        help=f"small smoke run: {QUICK.deliveries} deliveries, {QUICK.fault_events} events per "
                        f"fault, {QUICK.fuzz_inputs} fuzz inputs, a {QUICK.batch}-event batch (about 40 s)")
    parser.add_argument("--seed", type=int, default=20240603, help="random seed (default: %(default)s)")
    parser.add_argument("--only", choices=("duplicates", "faults", "fuzz", "throughput"), action="append",
                        help="run only this figure (repeatable)")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    only = set(args.only or ("duplicates", "faults", "fuzz", "throughput"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so Azurite and the workers are stopped
    quiet_sdk_logging()
    began = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="amlrelay-bench-") as tmp, azurite() as (conn, where):
            routes_path = Path(tmp) / "routes.json"
            routes_path.write_text(json.dumps(bench_routes(), indent=2), encoding="utf-8")
            with local_stack(routes_path, pat=True) as stack:
                no_delay(stack)
                bench = Bench(stack, conn, routes_path, cfg, args.seed)
                say(f"amlrelay exactly-once bench{' (--quick)' if args.quick else ''}: Python "
                    f"{sys.version.split()[0]}, {os.cpu_count()} cores, seed {args.seed}")
                say(f"ledger: {where}; ADO, managed identity and Key Vault: loopback stand-ins (tests/stack.py, "
                    "TCP_NODELAY set by the bench); routes: routes.json + drift id/run id on retrain-on-drift.\n")
                try:
                    for name, phase in (("duplicates", run_duplicates), ("faults", run_faults),
                                        ("fuzz", run_fuzz), ("throughput", run_throughput)):
                        if name in only:
                            phase_began = time.perf_counter()
                            phase(bench)
                            note(f"{name}: {time.perf_counter() - phase_began:.0f} s")
                            bench.drop_tables()
                            stack.ado.reset_state()
                            gc.collect()
                    errors = [*stack.ado.errors, *stack.identity.errors]
                    if errors:
                        raise BenchError("a stand-in crashed:\n" + errors[0][-1500:])
                finally:
                    bench.drop_tables()
    except BenchError as exc:
        say(f"BENCH ERROR: {exc}")
        return 2
    elapsed = time.perf_counter() - began
    failures = bench.verdict.failures
    if failures:
        say(f"FAIL ({elapsed:.0f} s): " + "; ".join(failures))
        return 1
    say(f"PASS ({elapsed:.0f} s): exactly 1 run per outcome, 0 lost, 0 doubled, 0 crashes, 0 ADO calls for invalid "
        "input")
    return 0


if __name__ == "__main__":
    sys.exit(main())
