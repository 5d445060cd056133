"""The I/O half of verification: read the run or model version back from the event's workspace (AML jobs
REST under ARM, :class:`amlrelay.aml.JobsClient`) with the handler's managed identity, and hand the answer
to the pure judges in :mod:`._decide`.

What AML's answers mean here:

* 200: judged (``_decide.judge_job`` / ``judge_model``);
* 404 for the job or model version: the workspace is read too; if it exists, AML has no such run/model and
  the event is ``rejected``. If the workspace itself is not found, amlrelay is misconfigured (a wrong
  ``AMLRELAY_ARM_URL``, a deleted workspace), and refusing every event for ever would hide that: ``failed``;
* anything else — 401/403 (a missing role), 429 and 5xx (retried with backoff first), no answer, no token
  — is a *failure*: the event is tried again later (journal sweep, replay), never rejected for AML's trouble.

One verifier serves one job: answers are cached for it, so RunCompleted and RunStatusChanged(Completed) of
one run in one batch cost one read.

ARM may show a job's new status a little after AML sent the event. A job not yet in the claimed status is
read again after ``lag_waits`` (5, 15, 30 s), within ``lag_budget`` seconds per job, before the event is
``failed`` (and left to the journal sweep or replay): a real RunCompleted that beats ARM is then triggered in
its own job instead of failing it (and the failed-job alert) and waiting for the next sweep.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import AmlRelayError
from ..models import AmlEvent
from ._decide import Held, Read, Refusal, judge_job, judge_model, judge_values, missing, plan, workspace_parts

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from ..aml import JobsClient
    from ..settings import Settings

DEFAULT_ARM_URL = "https://management.azure.com"
ROLE_HINT = ("Give the handler's managed identity the 'Reader' role on the workspace (infra/modules/"
             "role-assignments does), or set AMLRELAY_VERIFY=false to stop verifying.")


class AmlVerifier:
    """Confirms events against the workspaces they name; ``check`` returns None (confirmed) or a refusal."""

    def __init__(self, credential: TokenCredential, *, arm_url: str = DEFAULT_ARM_URL, audience: str | None = None,
                 timeout: float = 30.0, retries: int = 4, backoff: float = 1.0, max_retry_after: float = 60.0,
                 lag_waits: Sequence[float] = (5.0, 15.0, 30.0), lag_budget: float = 120.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._credential = credential
        self._arm_url = arm_url.rstrip("/")
        self._scope = f"{(audience or self._arm_url).rstrip('/')}/.default"
        self._client_options: dict[str, Any] = {
            "arm_url": self._arm_url, "audience": audience, "timeout": timeout, "retries": retries,
            "backoff": backoff, "max_retry_after": max_retry_after}
        self._clients: dict[str, JobsClient] = {}
        self._answers: dict[tuple[str, Read], Refusal | Held] = {}
        self.reads = 0  # ARM reads made (for tests and the bench)
        self._lag_waits = tuple(lag_waits)
        self._lag_left = lag_budget
        self._sleep = sleep

    def check(self, event: AmlEvent, fields: Collection[str] = ()) -> Refusal | None:
        """``fields``: the event fields the matched routes read (``fields_read``); each tag or property
        among them must be what AML holds."""
        planned = plan(event)
        if planned.refusal is not None:
            return planned.refusal
        for read in planned.reads:
            refusal = self._check_one(event, read, fields)
            if refusal is not None:
                return refusal
        return None

    def _check_one(self, event: AmlEvent, read: Read, fields: Collection[str]) -> Refusal | None:
        key = (event.source.strip().rstrip("/").lower(), read)
        if key not in self._answers:
            self._answers[key] = self._read(event.source, read)
        answer = self._answers[key]
        if isinstance(answer, Refusal):
            if answer.outcome == "failed":
                del self._answers[key]  # AML's trouble: ask again for the next event
            return answer
        refusal = self._judge(event, read, answer)
        for wait in self._lag_waits:
            if refusal is None or not refusal.lagging or wait > self._lag_left:
                break
            self._lag_left -= wait
            self._sleep(wait)
            again = self._read(event.source, read)
            if isinstance(again, Refusal):
                return again
            self._answers[key] = answer = again
            refusal = self._judge(event, read, answer)
        return refusal or judge_values(event, read, answer, fields)

    @staticmethod
    def _judge(event: AmlEvent, read: Read, held: Held) -> Refusal | None:
        if read.kind == "job":
            return judge_job(event, held.status, held.experiment, held.resource_id)
        return judge_model(event, read, held.resource_id)

    def _read(self, source: str, read: Read) -> Refusal | Held:
        """What AML holds for ``read``, or the refusal its answer means."""
        from ..aml import AmlError, AmlNotFoundError

        client = self._client(source)
        if isinstance(client, Refusal):
            return client
        token_problem = self._token_problem()
        if token_problem is not None:
            return token_problem
        try:
            self.reads += 1
            if read.kind == "job":
                job = client.get_job(read.name)
                return Held(job.status_text, job.experiment_name, str(job.raw.get("id") or ""),
                            *_maps(job.raw))
            model = client.get_model_version(read.name, read.version)
            return Held("", "", str(model.raw.get("id") or ""), *_maps(model.raw))
        except AmlNotFoundError:
            return self._not_found(client, read)
        except AmlError as exc:
            return _failure(f"reading {read.describe()} from AML failed", exc)

    def _not_found(self, client: JobsClient, read: Read) -> Refusal:
        from ..aml import AmlError, AmlNotFoundError

        try:
            self.reads += 1
            client.get_workspace()
        except AmlNotFoundError:
            return Refusal("failed", f"not verified: the workspace {client.workspace.name!r} is not found at "
                                     f"{self._arm_url} (a wrong AMLRELAY_ARM_URL, or the workspace was deleted), "
                                     "so its events cannot be confirmed. Fix the setting or "
                                     "AMLRELAY_ALLOWED_WORKSPACES.")
        except AmlError as exc:
            return _failure(f"AML has no {read.describe()}, but reading the workspace failed", exc)
        return missing(read, client.workspace.name)

    def _client(self, source: str) -> JobsClient | Refusal:
        from ..aml import JobsClient, Workspace

        key = source.strip().rstrip("/").lower()
        if key not in self._clients:
            parts = workspace_parts(source)
            if parts is None:
                return Refusal("rejected", f"the topic {source[:200]!r} is not an AML workspace resource id")
            # The topic already matched AMLRELAY_ALLOWED_WORKSPACES, so it is the operator's own id.
            self._clients[key] = JobsClient(Workspace(*parts), self._credential, **self._client_options)
        return self._clients[key]

    def _token_problem(self) -> Refusal | None:
        """Ask for the ARM token first (azure-identity caches it for the client's call) so that a failure is
        explained as the identity's, with the runbook's remedy rather than the CLI's."""
        from azure.core.exceptions import AzureError

        from ..auth import identity_error

        try:
            self._credential.get_token(self._scope)
        except AzureError as exc:
            why = identity_error(exc, f"No token for ARM ({self._scope}) to verify the event")
            return Refusal("failed", f"not verified: {why.message} {why.hint}")
        return None


def _maps(raw: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """``properties.tags`` and ``properties.properties`` of an ARM answer (absent or null: empty)."""
    props = raw.get("properties") if isinstance(raw.get("properties"), dict) else {}
    assert isinstance(props, dict)
    tags, properties = props.get("tags"), props.get("properties")
    return ({str(k): str(v) for k, v in tags.items()} if isinstance(tags, dict) else {},
            {str(k): str(v) for k, v in properties.items()} if isinstance(properties, dict) else {})


def _failure(what: str, exc: AmlRelayError) -> Refusal:
    status = getattr(exc, "status", None)
    hint = ROLE_HINT if status == 403 else (
        "AML is throttling or unavailable: the event is tried again later (journal sweep or replay)."
        if status == 429 or (isinstance(status, int) and status >= 500) or status is None
        else exc.hint)
    return Refusal("failed", f"not verified: {what}: {exc.message} {hint}".strip())


def verifier_from_settings(settings: Settings) -> AmlVerifier:
    """The verifier a handler uses: its own managed identity (``AMLRELAY_CREDENTIAL=default`` from a
    workstation), the cloud's ARM endpoint, the same timeout and retry policy as the ADO calls, and at most
    AMLRELAY_VERIFY_LAG seconds of waiting for ARM to catch up with the events."""
    from ..auth import managed_identity

    credential = managed_identity(settings.managed_identity_client_id, kind=settings.credential)
    return AmlVerifier(credential, arm_url=settings.arm_url, audience=settings.arm_audience,
                       timeout=settings.timeout, retries=settings.max_retries, backoff=settings.backoff,
                       max_retry_after=settings.max_retry_after, lag_budget=settings.verify_lag)
