"""Shared by the figures of bench/exactly_once.py: settings, the verdict, output, the stand-in wrappers
(:func:`no_delay`, :class:`RunArchive`, :func:`clear_faults`) and :class:`Bench`, the state of one bench run."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _exactly_once_events import Identity, run_identity
from tests.servers.identity import CONFLICTING_ENV
from tests.stack import Stack

from amlrelay import runbook
from amlrelay.events import parse_events
from amlrelay.ledger import Ledger
from amlrelay.relay import Relay
from amlrelay.router import select
from amlrelay.routes import Routes, load_routes
from amlrelay.settings import resolve

CONN_VAR = "AMLRELAY_LEDGER_CONNECTION_STRING"
PAT_KEYS = ("AMLRELAY_AUTH", "AMLRELAY_KEY_VAULT_URL", "AMLRELAY_PAT_SECRET_NAME")
SETTLE_AFTER = 1.5  # AMLRELAY_SETTLE_AFTER in the fault matrix: > SLOW_ADO, so ADO has surely finished by then
FAST_FAILURE = {"AMLRELAY_BACKOFF": "0", "AMLRELAY_MAX_RETRY_AFTER": "1", "AMLRELAY_TIMEOUT": "1",
                "AMLRELAY_SETTLE_AFTER": f"{SETTLE_AFTER:g}"}
FOREVER = 1_000_000  # "times" for a fault that stays active until healed
SLOW_ADO = 1.2  # seconds the stand-in holds an answer in the timeout fault (> AMLRELAY_TIMEOUT=1)


@dataclass(frozen=True)
class Config:
    deliveries: int
    workers: int
    duplicate_share: float
    fault_events: int
    fault_retries: int
    fuzz_inputs: int
    batch: int
    floor_sample: int


FULL = Config(deliveries=10_000, workers=8, duplicate_share=0.30, fault_events=20, fault_retries=4,
              fuzz_inputs=1_500, batch=5_000, floor_sample=1_000)
QUICK = Config(deliveries=320, workers=4, duplicate_share=0.30, fault_events=5, fault_retries=1,
               fuzz_inputs=200, batch=100, floor_sample=100)


@dataclass
class Verdict:
    """Hard requirements: each check that failed is named in the final line."""

    failures: list[str] = field(default_factory=list)

    def require(self, ok: bool, what: str) -> None:
        if not ok:
            self.failures.append(what)


def say(text: str = "") -> None:
    print(text, flush=True)


def note(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


# ---- environment: Azurite's CPU time, the stack, a job's settings ------------------------------------------

AZURITE_PID = [0]  # of the private Azurite (set by exactly_once.azurite), for its CPU time (a note on stderr)


def azurite_cpu() -> float:
    """CPU seconds used so far by the private Azurite (0 when the bench did not start it)."""
    try:
        fields = Path(f"/proc/{AZURITE_PID[0]}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


class BenchError(Exception):
    """The bench itself could not run (not a finding about amlrelay)."""


def no_delay(stack: Stack) -> None:
    """TCP_NODELAY on the stand-ins' listening sockets (accepted sockets inherit it on Linux).

    tests/servers/_base.py writes an answer's headers and body in two sends without TCP_NODELAY, so Nagle's
    algorithm holds the body until the client's delayed ACK: ~40 ms added to every ADO answer, which no real
    front door does and which would make every figure here about the stand-in instead of amlrelay.
    """
    for server in (stack.ado, stack.identity, stack.vault):
        httpd = getattr(server, "_httpd", None) if server is not None else None
        if httpd is not None:
            httpd.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def apply_env(env: dict[str, str]) -> None:
    """Make this process look like a job with ``env`` (azure-identity reads os.environ, not settings)."""
    for name in [n for n in os.environ if n.startswith("AMLRELAY_") or n in CONFLICTING_ENV]:
        del os.environ[name]
    os.environ.update(env)


def quiet_sdk_logging() -> None:
    """As the runbook does: the Azure SDK's own warnings duplicate what amlrelay reports."""
    logger = logging.getLogger("azure")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False


def build(env: dict[str, str]) -> Relay:
    """A relay exactly as a runbook job builds it."""
    settings = resolve({}, env=env)
    return runbook.build_relay(settings, load_routes(settings.routes))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RunArchive:
    """Keeps the ADO stand-in's list of runs short while thousands of runs are started.

    tests/servers/ado.py names each new run by scanning every run it holds (``same_day`` in ``_queue``, with a
    strftime per run of the pipeline): 1.3 ms per POST at 0 runs, 11 ms at 7,000, under the server's lock. That
    would make the stand-in, not amlrelay, the bottleneck of figures 1 and 4. So runs older than ``keep`` seconds
    (far outside any reconciliation window of these figures, which have no faults) are moved here every 0.5 s,
    and the recorded requests are dropped; :meth:`runs` gives archived + live runs, oldest first.
    """

    def __init__(self, server: Any, keep: float = 10.0) -> None:
        self.server = server
        self.keep = keep
        self.archived: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> RunArchive:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            self.sweep()

    def sweep(self) -> None:
        cutoff = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - self.keep))
        server = self.server
        with server._lock:
            old = [r for r in server._runs if r.body["createdDate"][:19] < cutoff]
            if old:
                server._runs[:] = [r for r in server._runs if r.body["createdDate"][:19] >= cutoff]
                self.archived += [r.body for r in old]
            server._requests.clear()

    def runs(self) -> list[dict[str, Any]]:
        with self.server._lock:
            return [*self.archived, *self.server.runs]


def clear_faults(server: Any) -> None:
    """Heal a stand-in without forgetting its runs (``reset_state`` would drop them, and reconciliation needs
    them): the scripted faults are the only state removed."""
    with server._lock:
        server._faults.clear()


class Bench:
    def __init__(self, stack: Stack, conn: str, routes_path: Path, cfg: Config, seed: int) -> None:
        self.stack = stack
        self.conn = conn
        self.routes_path = routes_path
        self.routes: Routes = load_routes(routes_path)
        self.cfg = cfg
        self.seed = seed
        self.rng = random.Random(seed)
        self.tables: list[str] = []
        self.verdict = Verdict()
        self.no_retry_after = False
        inner = stack.ado.handle

        def handle(request: Any) -> Any:  # "429 without Retry-After": the stand-in always sends one
            reply = inner(request)
            if self.no_retry_after and reply is not None and reply.status == 429:
                reply.headers = [(k, v) for k, v in reply.headers if k.lower() != "retry-after"]
            return reply

        stack.ado.handle = handle  # type: ignore[method-assign]

    def table(self, phase: str) -> str:
        name = f"bench{phase}{uuid.uuid4().hex[:10]}"
        Ledger.from_connection_string(self.conn, table=name).ensure_table()
        self.tables.append(name)
        return name

    def ledger(self, table_name: str) -> Ledger:
        return Ledger.from_connection_string(self.conn, table=table_name)

    def drop_tables(self) -> None:
        """Drop the tables made so far (after each figure: Azurite keeps everything in memory)."""
        from azure.data.tables import TableServiceClient

        service = TableServiceClient.from_connection_string(self.conn, retry_total=0)
        for name in self.tables:
            with contextlib.suppress(Exception):
                service.delete_table(name)
        self.tables.clear()

    def job_env(self, table_name: str, *, pat: bool = False, fast_failure: bool = False) -> dict[str, str]:
        """A job's environment. Outside the fault matrix the ADO timeout is the production default (30 s), so
        a busy 2-core machine cannot turn into a fault that this figure did not mean to inject."""
        env = self.stack.env()
        if not pat:
            for key in PAT_KEYS:
                env.pop(key, None)
        env.update({"AMLRELAY_LEDGER": "true", CONN_VAR: self.conn, "AMLRELAY_LEDGER_TABLE": table_name,
                    "AMLRELAY_TIMEOUT": "30"})
        if fast_failure:
            env.update({**FAST_FAILURE, "AMLRELAY_MAX_RETRIES": str(self.cfg.fault_retries)})
        return env

    def ledger_key(self, event: dict[str, Any]) -> str:
        [parsed] = parse_events([event])
        routes, _ = select(self.routes, parsed)  # type: ignore[arg-type]
        return f"{parsed.outcome_key()}|{routes[0].name.lower()}"  # type: ignore[union-attr]

    def runs_by_identity(self, archive: RunArchive | None = None
                         ) -> tuple[Counter[Identity], dict[Identity, list[int]], int]:
        counts: Counter[Identity] = Counter()
        ids: dict[Identity, list[int]] = {}
        unattributed = 0
        for run in archive.runs() if archive is not None else self.stack.ado.runs:
            ident = run_identity(run)
            if ident is None:
                unattributed += 1
                continue
            counts[ident] += 1
            ids.setdefault(ident, []).append(int(run["id"]))
        return counts, ids, unattributed

