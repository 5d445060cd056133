"""AML jobs for amlrelay: read, cancel and wait on AML v2 jobs through the ARM REST API.

Public surface (the rest is private and may change): :class:`Workspace`, :class:`JobsClient`, :class:`Job`,
:class:`ModelVersion`, :class:`JobStatus` and its groups, the errors, and the waiter (:func:`begin_wait`
returns a :class:`WaitPoller` with ``result()`` and ``continuation_token()``, as azure-core pollers do).
The ``amlrelay aml`` commands are in ``amlrelay.aml._cli`` and are registered through ``amlrelay.cli.COMMAND_GROUPS``.
"""

from __future__ import annotations

from ._client import DEFAULT_API_VERSION, DEFAULT_ARM_URL, Job, JobsClient, ModelVersion, check_job_name
from ._component import main as run_component
from ._errors import AmlError, AmlNotFoundError
from ._mlflow import MlflowClient, MlflowError, tracking_url
from ._status import FINAL_STATES, QUEUE_STATES, RUN_STATES, JobStatus, parse_status
from ._tagback import RUN_ID_TAG, RUN_URL_TAG, TagBack, TagRetry, retry_tags, tag_back_from_settings
from ._wait import EXIT_CODES, EXIT_ERROR, EXIT_USAGE, Outcome, WaitOptions, WaitPoller, WaitResult, begin_wait
from ._workspace import Workspace

__all__ = [
    "DEFAULT_API_VERSION",
    "DEFAULT_ARM_URL",
    "EXIT_CODES",
    "EXIT_ERROR",
    "EXIT_USAGE",
    "FINAL_STATES",
    "QUEUE_STATES",
    "RUN_ID_TAG",
    "RUN_STATES",
    "RUN_URL_TAG",
    "AmlError",
    "AmlNotFoundError",
    "Job",
    "JobStatus",
    "JobsClient",
    "MlflowClient",
    "MlflowError",
    "ModelVersion",
    "Outcome",
    "TagBack",
    "TagRetry",
    "WaitOptions",
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
]
