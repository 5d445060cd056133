"""A small client for the AML jobs REST API under ARM (``Jobs_Get``, ``Jobs_Cancel``, model versions).

Why not ``azure-ai-ml``: it takes seconds to import and pins an old preview api-version for jobs; a waiter
polls for hours and only needs one GET, so it uses ``requests`` with the relay's retry policy
(:func:`amlrelay.trigger.make_session`: 429/5xx retried with capped backoff, a POST only when ARM did not
act on it) and any azure-identity credential (managed identity, ``AzureCliCredential`` after
``AzureCLI@2``, ``DefaultAzureCredential``). Tokens are for ARM (``{arm_url}/.default``); azure-identity
caches and refreshes them, so a wait longer than a token's lifetime keeps working.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import requests

from ..auth import _first_line
from ..trigger import _json, _reason, make_session
from ._contract import DEFAULT_API_VERSION, DEFAULT_ARM_URL
from ._errors import AmlError, AmlNotFoundError
from ._status import JobStatus, parse_status
from ._workspace import Workspace

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

JOB_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9\-_]{0,254}$")
"""The job id pattern of ``Jobs_CreateOrUpdate``: every job that exists matches it."""


@dataclass(frozen=True)
class Job:
    """The parts of ``JobBaseResource`` a waiter and a tagger need; ``raw`` is the whole answer."""

    name: str
    status: JobStatus
    experiment_name: str
    tags: dict[str, str]
    properties: dict[str, str]
    studio_url: str
    raw: dict[str, Any] = field(repr=False, compare=False)
    status_text: str = ""
    """The status string as AML sent it (differs from ``status`` only for values newer than the spec)."""
    display_name: str | None = None
    job_type: str | None = None


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    tags: dict[str, str]
    properties: dict[str, str]
    raw: dict[str, Any] = field(repr=False, compare=False)


def check_job_name(name: str) -> str:
    """Refuse a job name AML could never have created, before it becomes part of a URL."""
    if not isinstance(name, str) or not JOB_NAME.match(name):
        raise AmlError(f"{name!r} is not a valid AML job name.", status=None,
                       hint="Job names are 1-255 letters, digits, '-' or '_' and start with a letter or digit; "
                       "pass the name that 'amlrelay aml submit' printed (it is the run id too).")
    return name


class JobsClient:
    """Jobs of one workspace. ``workspace`` is a :class:`Workspace` or its ARM resource id."""

    def __init__(self, workspace: str | Workspace, credential: TokenCredential, *,
                 arm_url: str = DEFAULT_ARM_URL, api_version: str = DEFAULT_API_VERSION, timeout: float = 30,
                 audience: str | None = None, retries: int = 4, backoff: float = 1.0,
                 max_retry_after: float = 60.0, studio_host: str = "https://ml.azure.com",
                 session: requests.Session | None = None) -> None:
        self.workspace = workspace if isinstance(workspace, Workspace) else Workspace.parse(workspace)
        self.arm_url = arm_url.rstrip("/")
        self.api_version = api_version
        self.studio_host = studio_host
        self._credential = credential
        # ARM's audience is its own URL in every cloud; it differs only behind a proxy or a test endpoint
        self._scope = f"{(audience or self.arm_url).rstrip('/')}/.default"
        self._timeout = timeout
        self._session = session or make_session(retries=retries, backoff=backoff, max_retry_after=max_retry_after)

    # -- operations --------------------------------------------------------------------------------------
    def get_job(self, name: str) -> Job:
        check_job_name(name)
        body = self._call("GET", f"/jobs/{quote(name, safe='')}", f"job {name!r}", action="jobs/read")
        return self._job(body, name)

    def cancel_job(self, name: str) -> None:
        """Ask AML to cancel (``Jobs_Cancel``: 200, or 202 while it is being canceled). The job then passes
        through CancelRequested to Canceled; callers poll :meth:`get_job` rather than the LRO Location."""
        check_job_name(name)
        self._call("POST", f"/jobs/{quote(name, safe='')}/cancel", f"job {name!r}", action="jobs/write")

    def get_model_version(self, name: str, version: str | int) -> ModelVersion:
        where = f"model {name!r} version {version}"
        if not JOB_NAME.match(str(name)) or not re.match(r"^[A-Za-z0-9._-]{1,64}$", str(version)):
            raise AmlError(f"{where} is not a valid model name and version.", status=None,
                           hint="Use the name and version the model was registered with.")
        path = f"/models/{quote(str(name), safe='')}/versions/{quote(str(version), safe='')}"
        body = self._call("GET", path, where, action="models/versions/read")
        props = body.get("properties")
        props = props if isinstance(props, dict) else {}
        return ModelVersion(str(name), str(version), _strings(props.get("tags")), _strings(props.get("properties")),
                            body)

    def get_workspace(self) -> dict[str, Any]:
        """The workspace resource (``properties.mlFlowTrackingUri`` is where MLflow tags go)."""
        return self._call("GET", "", "the workspace", action="read")

    # -- plumbing ----------------------------------------------------------------------------------------
    def _job(self, body: dict[str, Any], name: str) -> Job:
        props = body.get("properties")
        if not isinstance(props, dict):
            raise AmlError(f"AML answered job {name!r} without 'properties'.", status=200,
                           hint="Check --arm-url: it must be the ARM endpoint of the workspace's cloud.")
        services = props.get("services")
        studio = services.get("Studio") if isinstance(services, dict) else None
        endpoint = studio.get("endpoint") if isinstance(studio, dict) else None
        status = props.get("status")
        status_text = status if isinstance(status, str) else ""
        return Job(
            name=str(body.get("name") or name),
            status=parse_status(status_text),
            experiment_name=str(props.get("experimentName") or "Default"),
            tags=_strings(props.get("tags")),
            properties=_strings(props.get("properties")),
            studio_url=endpoint if isinstance(endpoint, str) and endpoint
            else self.workspace.studio_url(name, self.studio_host),
            raw=body,
            status_text=status_text,
            display_name=props.get("displayName") if isinstance(props.get("displayName"), str) else None,
            job_type=props.get("jobType") if isinstance(props.get("jobType"), str) else None,
        )

    def _token(self) -> str:
        from azure.core.exceptions import AzureError

        try:
            return self._credential.get_token(self._scope).token
        except AzureError as exc:  # CredentialUnavailableError and ClientAuthenticationError derive from it
            raise AmlError(
                f"No token for ARM ({self._scope}): {_first_line(exc)}", status=None, code="NoArmToken",
                hint="In ADO run this inside AzureCLI@2 with an ARM service connection (--credential cli), or "
                "on an agent with a managed identity (--credential managed-identity); locally run 'az login'.",
            ) from None

    def _call(self, method: str, path: str, where: str, *, action: str) -> dict[str, Any]:
        url = f"{self.arm_url}{self.workspace.arm_path}{path}"
        headers = {"Authorization": f"Bearer {self._token()}", "Accept": "application/json"}
        try:
            response = self._session.request(method, url, params={"api-version": self.api_version},
                                             headers=headers, timeout=self._timeout)
        except requests.exceptions.RequestException as exc:
            raise AmlError(f"No answer from ARM for {where} in {self.workspace.name}: {_reason(exc)}", status=None,
                           retryable=True, hint="Check the network to --arm-url; the wait resumes on the next "
                           "poll.") from None
        body = _json(response)
        if 200 <= response.status_code < 300:
            return body if isinstance(body, dict) else {}
        raise self._refusal(response.status_code, body, where, action)

    def _refusal(self, status: int, body: Any, where: str, action: str) -> AmlError:
        error = body.get("error") if isinstance(body, dict) else None
        error = error if isinstance(error, dict) else {}
        code = error.get("code") if isinstance(error.get("code"), str) else None
        message = str(error.get("message") or "")
        text = f"ARM answered HTTP {status}{f' {code}' if code else ''} for {where} in workspace " \
               f"{self.workspace.name}. {message[:300]}".strip()
        full_action = f"Microsoft.MachineLearningServices/workspaces/{action}"
        if status == 404:
            return AmlNotFoundError(text, status=status, code=code,
                                    hint="Check the workspace id and the job name (case-sensitive), and that the "
                                    "identity can see the workspace.")
        if status == 401:
            return AmlError(text, status=status, code=code,
                            hint=f"The token was not accepted: it must be for {self.arm_url} and from the "
                            "workspace's tenant. Check the service connection or managed identity.")
        if status == 403:
            return AmlError(text, status=status, code=code,
                            hint=f"Grant the identity an AML role with '{full_action}' on the workspace (for "
                            "example 'AzureML Data Scientist').")
        if status == 429 or status >= 500:
            return AmlError(text, status=status, code=code, retryable=True,
                            hint="ARM is throttling or unavailable; the waiter keeps polling with backoff.")
        return AmlError(text, status=status, code=code,
                        hint=f"Check --api-version ({self.api_version}) and the arguments.")


def _strings(value: Any) -> dict[str, str]:
    """ARM tag and property maps are string to string (nullable values are dropped)."""
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items() if v is not None}
