"""Hand-off: the sync waiter gives up its agent and lets the async relay carry the job to the next pipeline.

The waiter tags each still-running job ``amlrelay-handoff: <route>`` through AML's MLflow endpoint
(``runs/set-tag`` adds one key and leaves the job's other tags alone; ARM's PUT would replace them all).
AML puts run tags in ``data.runTags`` of the RunCompleted / RunStatusChanged events, so a route filtering on
``runTags.amlrelay-handoff`` picks the run up when it ends. If a tag cannot be written the hand-off is not
safe (the completion would reach no route), so the caller fails the step instead of reporting a hand-off.
A job that finishes in the moment between the last poll and the tag is looked at again and reported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._client import Job, JobsClient
from ._contract import WaitOutcome
from ._errors import AmlError
from ._mlflow import MlflowClient, tracking_url
from ._status import FINAL_STATES
from ._wait_types import JobResult

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

HANDOFF_TAG = "amlrelay-handoff"


def tag_handoffs(client: JobsClient, credential: TokenCredential, jobs: list[JobResult], route: str, *,
                 tracking_uri: str | None = None, audience: str | None = None) -> list[str]:
    """Tag every handed-off job; return their names. ``tracking_uri`` defaults to the workspace's
    ``mlFlowTrackingUri`` (right for private-link workspaces too, unlike a URL built from the region)."""
    names = [j.name for j in jobs if j.outcome is WaitOutcome.HANDED_OFF]
    if not names:
        return []
    base = tracking_uri or str(client.get_workspace().get("properties", {}).get("mlFlowTrackingUri") or "")
    url = tracking_url(client.workspace.arm_path, base=base) if base else tracking_url(client.workspace.arm_path)
    mlflow = MlflowClient(url, credential, arm_url=audience or client.arm_url)
    for name in names:
        mlflow.set_run_tag(name, HANDOFF_TAG, route)
    return names


def finished_meanwhile(client: JobsClient, names: list[str]) -> list[Job]:
    """Jobs that reached a final status between the waiter's last poll and the tag: their completion event
    may have left AML without the tag (a window of one tag request). Only a warning can be given: whether
    the event carried the tag is not observable from here."""
    late = []
    for name in names:
        try:
            job = client.get_job(name)
        except AmlError:
            continue  # the tag is written; not being able to look again changes nothing
        if job.status in FINAL_STATES:
            late.append(job)
    return late
