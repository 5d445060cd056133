"""The sync waiter's cost per poll and its detection latency, next to the ``az`` process a bash loop starts.

What teams run today polls ``az ml job show -n JOB --query status -o tsv`` every 15 s: one new ``az`` process
(Python, azure-cli's command table, the ml extension and azure-ai-ml) per poll. ``amlrelay aml wait`` is one
process that keeps a token and a connection and sends one ARM GET per poll. Figures, all in this run:

1. **per poll**: CPU and wall time of one ``poller.poll()`` (GET through requests + parsing) against the
   loopback ARM stand-in, client thread only (``time.thread_time``), median of batches;
2. **baseline**: CPU (children rusage) and wall time of one ``az`` process making the same poll:
   ``az rest --method get --url <job> --query properties.status -o tsv`` against the same stand-in (the
   bash loop's ``az ml job show -n JOB --query status -o tsv`` minus the ml extension, which cannot be
   installed offline and only adds import time, so the ratio is a *lower bound*), and a bare ``az version``;
3. **one waiter process**: ``amlrelay aml wait`` started for an already finished job (process start to
   exit), the cost if someone ran amlrelay once per poll like the bash loop;
4. **detection latency** (real clock): a job flips to Completed at a random moment while the waiter polls
   at a fixed 0.25 s interval; latency = waiter returns - flip. Expected about interval/2 + one GET;
5. **polls and latency over a 3 h run** with the default settings and with ``--poll-max 15s`` (fake clock,
   real HTTP to the stand-in), next to a 15 s loop, whose latency is uniform over 0..15 s with 720 polls.

Usage: .venv/bin/python bench/waiter.py [--polls 300] [--az PATH] [--install-az] [--quick]
``--install-az`` puts azure-cli into .tools/azure-cli (about 60 s, 730 MB) when no ``az`` is found.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers._jwt import mint_token  # noqa: E402
from tests.servers.aml import ARM_RESOURCE, AmlServer  # noqa: E402
from tests.servers.identity import CONFLICTING_ENV, IdentityServer  # noqa: E402

from amlrelay.aml import JobsClient, WaitOptions, begin_wait, waiter_client  # noqa: E402
from amlrelay.aml._wait_types import SystemClock  # noqa: E402
from amlrelay.record import table  # noqa: E402

AZ_VENV = ROOT / ".tools" / "azure-cli"


@contextmanager
def stand_ins() -> Iterator[tuple[AmlServer, IdentityServer, Any]]:
    with IdentityServer() as identity, AmlServer() as aml:
        for name in CONFLICTING_ENV:
            os.environ.pop(name, None)
        os.environ.update(identity.env())
        from azure.identity import ManagedIdentityCredential

        yield aml, identity, ManagedIdentityCredential()


def client_for(aml: AmlServer, credential: Any) -> JobsClient:
    return waiter_client(aml.workspace_id, credential, arm_url=aml.arm_url, audience=ARM_RESOURCE)  # as the CLI


def per_poll(aml: AmlServer, credential: Any, polls: int) -> tuple[float, float]:
    """Median (CPU s, wall s) per poll over batches of 50 polls of one long-lived poller."""
    aml.add_job("bench-running", "Running")
    poller = begin_wait(client_for(aml, credential), ["bench-running"], WaitOptions())
    poller.poll()  # warm up: token, connection, imports
    cpu, wall = [], []
    for _ in range(max(1, polls // 50)):
        c0, w0 = time.thread_time(), time.perf_counter()
        for _ in range(50):
            poller.poll()
        cpu.append((time.thread_time() - c0) / 50)
        wall.append((time.perf_counter() - w0) / 50)
    return statistics.median(cpu), statistics.median(wall)


def child_cost(argv: list[str], runs: int, env: dict[str, str] | None = None) -> tuple[float, float]:
    """Median (CPU s incl. children, wall s) of starting ``argv`` to its exit."""
    cpu, wall = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        w0 = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False)
        wall.append(time.perf_counter() - w0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise SystemExit(f"{argv[0]} failed ({done.returncode}): {done.stderr[-500:]}")
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(cpu), statistics.median(wall)


def find_az(given: str | None, install: bool) -> str | None:
    candidates = [given, shutil.which("az"), str(AZ_VENV / "bin" / "az")]
    found = next((c for c in candidates if c and Path(c).is_file()), None)
    if found or not install:
        return found
    print("installing azure-cli into .tools/azure-cli (about a minute)...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(AZ_VENV)], check=True)
    subprocess.run([str(AZ_VENV / "bin" / "pip"), "install", "-q", "azure-cli"], check=True)
    return str(AZ_VENV / "bin" / "az")


def waiter_process(aml: AmlServer, runs: int) -> tuple[float, float]:
    aml.add_job("bench-done", "Completed")
    argv = [sys.executable, "-m", "amlrelay.cli", "aml", "wait", "--workspace", aml.workspace_id, "--arm-url",
            aml.arm_url, "--audience", ARM_RESOURCE, "--credential", "managed-identity", "--ado", "off",
            "bench-done"]
    return child_cost(argv, runs, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})


def real_latency(aml: AmlServer, credential: Any, trials: int, interval: float) -> list[float]:
    latencies = []
    for i in range(trials):
        name = f"lat-{i}"
        aml.add_job(name, "Running")
        flipped: list[float] = []

        def flip(job: str = name, seen: list[float] = flipped) -> None:
            aml.set_status(job, "Completed")
            seen.append(time.perf_counter())

        timer = threading.Timer(random.uniform(0.3, 0.3 + 4 * interval), flip)
        timer.start()
        begin_wait(client_for(aml, credential), [name], WaitOptions(poll_min=interval, poll_max=interval),
                   clock=SystemClock()).result()
        done = time.perf_counter()
        timer.join()
        latencies.append(done - flipped[0])
    return latencies


class FakeClock:
    def __init__(self, flip: Callable[[], None], at: float) -> None:
        self.now, self._flip, self._at = 0.0, flip, at

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        if self._at is not None and self.now + seconds >= self._at > self.now:
            self._flip()
        self.now += seconds


def simulated(aml: AmlServer, credential: Any, trials: int, hours: float,
              options: WaitOptions) -> tuple[list[float], list[int]]:
    """Latency and poll count with ``options`` for a job finishing at a random time in the last half of ``hours``."""
    latencies, polls = [], []
    for i in range(trials):
        name = f"sim-{options.poll_max:g}-{i}"
        aml.add_job(name, "Running")
        at = random.uniform(0.5, 1.0) * hours * 3600
        clock = FakeClock(lambda job=name: aml.set_status(job, "Completed"), at)  # type: ignore[misc]
        result = begin_wait(client_for(aml, credential), [name], options, clock=clock).result()
        latencies.append(clock.now - at)
        polls.append(result.polls)
    return latencies, polls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--polls", type=int, default=300)
    parser.add_argument("--az", help="path of az (default: PATH, then .tools/azure-cli)")
    parser.add_argument("--install-az", action="store_true")
    parser.add_argument("--runs", type=int, default=5, help="process starts per variant")
    parser.add_argument("--quick", action="store_true", help="fewer samples (smoke test)")
    args = parser.parse_args(argv)
    runs, trials, sims = (2, 4, 3) if args.quick else (args.runs, 20, 20)
    polls = 50 if args.quick else args.polls
    az = find_az(args.az, args.install_az)
    # The stand-ins answer from threads of this process: with the default 5 ms GIL switch interval a poll's
    # wall time would mostly be the wait for the server thread to get the GIL, not the waiter's own work.
    sys.setswitchinterval(0.0005)
    rows: list[tuple[str, str, str, str, str]] = []
    with stand_ins() as (aml, _, credential):
        cpu_poll, wall_poll = per_poll(aml, credential, polls)
        rows.append(("amlrelay poll (long-lived waiter)", _ms(cpu_poll), _ms(wall_poll), "1.00", "1.00"))
        cpu_proc, wall_proc = waiter_process(aml, runs)
        rows.append(("amlrelay aml wait, one process", _ms(cpu_proc), _ms(wall_proc), _x(cpu_proc / cpu_poll),
                     _x(wall_proc / wall_poll)))
        if az:
            cpu_az, wall_az = child_cost([az, "version", "-o", "none"], runs)
            rows.append(("az version, one process", _ms(cpu_az), _ms(wall_az), _x(cpu_az / cpu_poll),
                         _x(wall_az / wall_poll)))
            url = f"{aml.arm_url}{aml.workspace_id}/jobs/bench-running?api-version=2025-09-01"
            token = mint_token(ARM_RESOURCE)  # a stand-in token; az rest sends it as given
            cpu_az, wall_az = child_cost([az, "rest", "--method", "get", "--url", url, "--skip-authorization-header",
                                          "--headers", f"Authorization=Bearer {token}", "--query",
                                          "properties.status", "-o", "tsv"], runs)
            rows.append(("az rest GET job --query status (baseline)", _ms(cpu_az), _ms(wall_az),
                         _x(cpu_az / cpu_poll), _x(wall_az / wall_poll)))
        interval = 0.25
        real = real_latency(aml, credential, trials, interval)
        sims_done = [(options, *simulated(aml, credential, sims, 3.0, options))
                     for options in (WaitOptions(), WaitOptions(poll_max=15))]
    print(f"per poll: {polls} polls; process starts: {runs} each (medians)\n")
    print(table(rows, ("variant", "CPU ms", "wall ms", "CPU ratio", "wall ratio")))
    if not az:
        print("\nno az found: pass --az PATH or --install-az for the baseline (pip install azure-cli)")
    print(f"\ndetection latency, real clock, fixed {interval:g} s interval, {trials} trials: median "
          f"{statistics.median(real) * 1000:.0f} ms, max {max(real) * 1000:.0f} ms (interval/2 = "
          f"{interval * 500:.0f} ms)")
    for options, sim, sim_polls in sims_done:
        print(f"3 h job, poll {options.poll_min:g} s growing x{options.backoff:g} to {options.poll_max:g} s, {sims} "
              f"simulated finishes: {statistics.median(sim_polls):.0f} polls (a 15 s loop: 720), latency median "
              f"{statistics.median(sim):.0f} s, max {max(sim):.0f} s (a 15 s loop: median 7.5 s, max 15 s)")
    return 0


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}" if seconds < 0.1 else f"{seconds * 1000:.0f}"


def _x(ratio: float) -> str:
    return f"{ratio:,.0f}x" if ratio >= 10 else f"{ratio:.1f}x"


if __name__ == "__main__":
    raise SystemExit(main())
