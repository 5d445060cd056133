"""An Azure Automation webhook, as Event Grid meets it: 202 as soon as the job is *queued*, the job later.

Contract (MicrosoftDocs/azure-docs ``articles/automation/automation-webhooks.md``, "Start a runbook from a
webhook", and ``includes/azure-automation-service-limits.md``):

* ``POST <webhook URL>`` (the URL carries ``?token=``) answers **202 Accepted** with ``{"JobIds": [...]}`` once
  the job is queued — before it runs, which is the whole problem issue 7 solves;
* **400** when the webhook has expired, is disabled or the token is invalid;
* **404** when the webhook, the runbook or the account was not found (e.g. a webhook scripts/deploy rotated
  away and deleted);
* **429** when job creation is throttled: the limits page says requests beyond 100 new jobs per 30 s per
  account "fail"; the status code is not documented — 429 is the assumption, scripted with :meth:`throttle`;
* payloads over 512 KB are refused (the documented webhook limit; the status code is not documented: 400).

The job runs the runbook as a subprocess exactly as tests/test_runbook.py does, with WEBHOOKDATA in argv
in the unquoted-hashtable form of Microsoft's Python samples, split on whitespace. A job can fail at each
point where a real one can (:data:`JOB_FAULTS`), without touching the runbook: the package not importable
yet (the runtime environment's packages are still importing after a deploy), bad settings, the sandbox
dying before the ledger claim, after it, or after ADO answered. The deaths are injected by a wrapper that
patches the product's own functions and ends the process with ``os._exit`` (nothing gets to clean up).
"""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ._base import LoopbackServer, RecordedRequest, Reply

__all__ = ["JOB_FAULTS", "AutomationServer", "Job"]

JOB_FAULTS = ("none", "before-imports", "bad-settings", "before-claim", "after-claim", "after-ado")
MAX_PAYLOAD = 512 * 1024
SANDBOX_DIED = 137  # what a killed process exits with; Automation shows such a job as Failed/Suspended

# Patches the product's own functions so the job dies exactly at the point named by the fault.
_WRAPPER = r"""
import os, runpy, sys
fault = os.environ.pop("AMLRELAY_STANDIN_JOB_FAULT", "none")
def die(*_args, **_kwargs):
    os._exit(137)
if fault in ("before-claim", "after-claim"):
    import amlrelay.ledger as ledger
    claim = ledger.Ledger.claim
    def patched(self, *args, **kwargs):
        if fault == "before-claim":
            die()
        claim(self, *args, **kwargs)
        die()
    ledger.Ledger.claim = patched
elif fault == "after-ado":
    import amlrelay.trigger as trigger
    run_pipeline = trigger.AdoClient.run_pipeline
    def patched_run(self, *args, **kwargs):
        run_pipeline(self, *args, **kwargs)
        die()
    trigger.AdoClient.run_pipeline = patched_run
path = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(path, run_name="__main__")
"""


@dataclass
class Job:
    id: str
    fault: str
    body: bytes
    status: str = "Queued"  # Queued -> Running -> Completed | Failed
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    done: threading.Event = field(default_factory=threading.Event)


class AutomationServer(LoopbackServer):
    """Loopback Automation webhook; :attr:`webhook_url` is what an Event Grid subscription posts to."""

    def __init__(self, runbook: Path, job_env: Callable[[], dict[str, str]], *, name: str = "amlrelay-eventgrid",
                 workers: int = 2) -> None:
        super().__init__()
        self.runbook = runbook
        self.job_env = job_env
        self.name = name
        self.token = uuid.uuid4().hex
        self.expired = False
        self.deleted = False
        self._throttled = 0
        self._job_faults: list[str] = []
        self._jobs: list[Job] = []
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._workers = [threading.Thread(target=self._work, daemon=True) for _ in range(workers)]

    def start(self) -> AutomationServer:
        super().start()
        for worker in self._workers:
            if not worker.is_alive():
                worker.start()
        return self

    def stop(self) -> None:
        for _ in self._workers:
            self._queue.put(None)
        super().stop()

    @property
    def webhook_url(self) -> str:
        return f"{self.url}/webhooks?token={self.token}"

    # -- scripting --------------------------------------------------------------------------------------
    def throttle(self, times: int) -> None:
        """The next ``times`` POSTs are refused with 429 (job creation throttled)."""
        with self._lock:
            self._throttled += times

    def job_fault(self, fault: str, times: int = 1) -> None:
        """The next ``times`` jobs fail at ``fault`` (one of :data:`JOB_FAULTS`)."""
        if fault not in JOB_FAULTS:
            raise ValueError(f"unknown job fault {fault!r}")
        with self._lock:
            self._job_faults += [fault] * times

    @property
    def jobs(self) -> list[Job]:
        with self._lock:
            return list(self._jobs)

    def wait(self, timeout: float = 300.0) -> None:
        """Until every queued job has ended."""
        for job in self.jobs:
            if not job.done.wait(timeout):
                raise TimeoutError(f"job {job.id} still {job.status}")

    # -- the webhook ------------------------------------------------------------------------------------
    def handle(self, request: RecordedRequest) -> Reply | None:
        if request.method != "POST" or request.path != "/webhooks" or self.deleted:
            return Reply.json(404, {"Message": "The webhook, runbook or account was not found."})
        if self.expired or request.query.get("token") != self.token:
            return Reply.json(400, {"Message": "The webhook has expired, is disabled, or the token is invalid."})
        if len(request.body) > MAX_PAYLOAD:
            return Reply.json(400, {"Message": "The webhook payload is larger than 512 KB."})
        with self._lock:
            if self._throttled:
                self._throttled -= 1
                return Reply.json(429, {"Message": "Too many jobs were created in this Automation account."})
            fault = self._job_faults.pop(0) if self._job_faults else "none"
            job = Job(str(uuid.uuid4()), fault, request.body)
            self._jobs.append(job)
        self._queue.put(job)
        return Reply.json(202, {"JobIds": [job.id]})

    def _argv(self, job: Job) -> list[str]:
        """WEBHOOKDATA as the samples receive it: {WebhookName:…,RequestBody:<raw body>,RequestHeader:{…}}."""
        body = job.body.decode("utf-8", "replace")
        headers = "{Content-Type:application/json,Aeg-Event-Type:Notification}"
        return f"{{WebhookName:{self.name},RequestBody:{body},RequestHeader:{headers}}}".split()

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            env = self.job_env()
            command = [sys.executable, "-c", _WRAPPER, str(self.runbook), *self._argv(job)]
            if job.fault == "before-imports":  # the runtime environment's packages are not there (yet)
                command = [sys.executable, "-I", "-S", str(self.runbook), *self._argv(job)]
            elif job.fault == "bad-settings":
                env.pop("AMLRELAY_ALLOWED_WORKSPACES", None)
            env["AMLRELAY_STANDIN_JOB_FAULT"] = job.fault
            job.status = "Running"
            try:
                done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
                job.exit_code, job.stdout, job.stderr = done.returncode, done.stdout, done.stderr
            except subprocess.TimeoutExpired:
                job.exit_code = -1
            job.status = "Completed" if job.exit_code == 0 else "Failed"
            job.done.set()

