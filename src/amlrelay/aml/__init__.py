"""AML jobs for amlrelay: read, cancel and wait on AML v2 jobs through the ARM REST API.

Public surface (the rest is private and may change): :class:`Workspace`, :class:`JobsClient`, :class:`Job`,
:class:`ModelVersion`, :class:`JobStatus` and its groups, the errors, and the waiter (:func:`begin_wait`
returns a :class:`WaitPoller` with ``result()`` and ``continuation_token()``, as azure-core pollers do; its
:class:`WaitResult` holds a :class:`WaitOutcome` and one :class:`JobResult` per job; :func:`waiter_client`
is the jobs client a waiter should use). ``WaitOutcome`` is not ``amlrelay.record.Outcome`` (the relay's
outcome of one event): the names differ so both can be imported side by side.
The ``amlrelay aml`` commands are in ``amlrelay.aml._cli`` and are registered through ``amlrelay.cli.COMMAND_GROUPS``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import exports

if TYPE_CHECKING:
    from ._client import Job, JobsClient, ModelVersion, check_job_name
    from ._component import main as run_component
    from ._contract import (
        DEFAULT_API_VERSION,
        DEFAULT_ARM_URL,
        EXIT_CODES,
        EXIT_ERROR,
        EXIT_INTERNAL,
        EXIT_INTERRUPTED,
        EXIT_RESUMABLE,
        EXIT_USAGE,
        WaitOutcome,
    )
    from ._errors import AmlError, AmlNotFoundError
    from ._mlflow import MlflowClient, MlflowError, tracking_url
    from ._status import FINAL_STATES, QUEUE_STATES, RUN_STATES, JobStatus, parse_status
    from ._tagback import RUN_ID_TAG, RUN_URL_TAG, TagBack, TagRetry, retry_tags, tag_back_from_settings
    from ._wait import WaitPoller, begin_wait, waiter_client
    from ._wait_types import JobResult, WaitOptions, WaitResult
    from ._workspace import Workspace

_EXPORTS: dict[str, tuple[str, str]] = {
    "AmlError": ("._errors", "AmlError"),
    "AmlNotFoundError": ("._errors", "AmlNotFoundError"),
    "DEFAULT_API_VERSION": ("._contract", "DEFAULT_API_VERSION"),
    "DEFAULT_ARM_URL": ("._contract", "DEFAULT_ARM_URL"),
    "EXIT_CODES": ("._contract", "EXIT_CODES"),
    "EXIT_ERROR": ("._contract", "EXIT_ERROR"),
    "EXIT_INTERNAL": ("._contract", "EXIT_INTERNAL"),
    "EXIT_INTERRUPTED": ("._contract", "EXIT_INTERRUPTED"),
    "EXIT_RESUMABLE": ("._contract", "EXIT_RESUMABLE"),
    "EXIT_USAGE": ("._contract", "EXIT_USAGE"),
    "FINAL_STATES": ("._status", "FINAL_STATES"),
    "Job": ("._client", "Job"),
    "JobStatus": ("._status", "JobStatus"),
    "JobsClient": ("._client", "JobsClient"),
    "MlflowClient": ("._mlflow", "MlflowClient"),
    "MlflowError": ("._mlflow", "MlflowError"),
    "ModelVersion": ("._client", "ModelVersion"),
    "QUEUE_STATES": ("._status", "QUEUE_STATES"),
    "RUN_ID_TAG": ("._tagback", "RUN_ID_TAG"),
    "RUN_STATES": ("._status", "RUN_STATES"),
    "RUN_URL_TAG": ("._tagback", "RUN_URL_TAG"),
    "TagBack": ("._tagback", "TagBack"),
    "TagRetry": ("._tagback", "TagRetry"),
    "JobResult": ("._wait_types", "JobResult"),
    "WaitOptions": ("._wait_types", "WaitOptions"),
    "WaitOutcome": ("._contract", "WaitOutcome"),
    "WaitPoller": ("._wait", "WaitPoller"),
    "WaitResult": ("._wait_types", "WaitResult"),
    "Workspace": ("._workspace", "Workspace"),
    "begin_wait": ("._wait", "begin_wait"),
    "waiter_client": ("._wait", "waiter_client"),
    "check_job_name": ("._client", "check_job_name"),
    "parse_status": ("._status", "parse_status"),
    "retry_tags": ("._tagback", "retry_tags"),
    "run_component": ("._component", "main"),
    "tag_back_from_settings": ("._tagback", "tag_back_from_settings"),
    "tracking_url": ("._mlflow", "tracking_url"),
}
"""Public name -> (private module, name there). Imported on first use (PEP 562): the command line
(``amlrelay --help``) and the runbook (tag-back) must not pay for requests, azure-core and the waiter
when they only need one piece."""

__all__ = [
    "DEFAULT_API_VERSION",
    "DEFAULT_ARM_URL",
    "EXIT_CODES",
    "EXIT_ERROR",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_RESUMABLE",
    "EXIT_USAGE",
    "FINAL_STATES",
    "QUEUE_STATES",
    "RUN_ID_TAG",
    "RUN_STATES",
    "RUN_URL_TAG",
    "AmlError",
    "AmlNotFoundError",
    "Job",
    "JobResult",
    "JobStatus",
    "JobsClient",
    "MlflowClient",
    "MlflowError",
    "ModelVersion",
    "TagBack",
    "TagRetry",
    "WaitOptions",
    "WaitOutcome",
    "WaitPoller",
    "WaitResult",
    "Workspace",
    "begin_wait",
    "check_job_name",
    "parse_status",
    "retry_tags",
    "run_component",
    "tag_back_from_settings",
    "tracking_url",
    "waiter_client",
]


__getattr__, __dir__ = exports(__name__, _EXPORTS)
