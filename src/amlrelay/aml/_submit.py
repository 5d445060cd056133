"""Submitting an AML job from a job YAML, delegated to the ``azure-ai-ml`` SDK.

Why delegate: a job YAML refers to local code folders, inline environments and registered assets; turning it
into a ``JobBaseResource`` means uploading code to the workspace's datastore and resolving assets, which is
what ``MLClient.jobs.create_or_update(load_job(...))`` does (and ``az ml job create`` does through it). The
SDK is heavy (about 140 MB installed, seconds to import), so it is an optional extra (``amlrelay[aml]``) and
imported only here, only when submitting; waiting never needs it. ``Submitter`` is the seam that lets the
CLI be tested without the network, and lets a team plug in ``az ml job create`` instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._errors import AmlError
from ._workspace import Workspace

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential


@dataclass(frozen=True)
class Submission:
    job_file: Path
    experiment_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    display_name: str | None = None


@dataclass(frozen=True)
class Submitted:
    name: str
    studio_url: str
    status: str


Submitter = Callable[[Submission], Submitted]


def load_job_file(path: Path) -> Any:
    """The SDK's ``load_job`` with amlrelay's errors: a missing file or invalid YAML is the user's to fix."""
    if not path.is_file():
        raise AmlError(f"Job file {str(path)!r} does not exist.", status=None,
                       hint="Pass the path of an AML job YAML (type: command, pipeline, sweep...).")
    load_job = _sdk().load_job
    try:
        return load_job(source=path)
    except Exception as exc:  # the SDK raises ValidationException, YAMLError, marshmallow errors...
        raise AmlError(f"AML could not load job file {str(path)!r}: {_first_line(exc)}", status=None,
                       hint="Fix the YAML (az ml job validate, or the $schema in the file, shows the errors).") \
            from None


_CLOUDS = {"https://management.azure.com": "AzureCloud", "https://management.chinacloudapi.cn": "AzureChinaCloud",
           "https://management.usgovcloudapi.net": "AzureUSGovernment"}


def sdk_submitter(workspace: Workspace, credential: TokenCredential, *, arm_url: str = "https://management.azure.com",
                  ml_client: Any = None) -> Submitter:
    """A submitter over ``MLClient.jobs.create_or_update``; ``ml_client`` replaces the real client in tests.
    ``arm_url`` picks the SDK's cloud; an ARM endpoint it does not know is passed as custom cloud metadata
    (the SDK then asks for tokens for that endpoint, as it does in any cloud)."""

    def client() -> Any:
        sdk = _sdk()
        cloud = _CLOUDS.get(arm_url.rstrip("/"))
        kwargs: dict[str, Any] = {"cloud": cloud} if cloud else {
            "cloud": f"amlrelay {arm_url.rstrip('/')}", "cloud_metadata": {  # one name per endpoint: the SDK
            # keeps the first metadata registered under a name for the whole process
                "azure_portal": "https://portal.azure.com", "resource_manager": arm_url.rstrip("/") + "/",
                "active_directory": "https://login.microsoftonline.com", "aml_resource_id": "https://ml.azure.com/",
                "storage_endpoint": "core.windows.net", "registry_discovery_endpoint": "https://eastus.api.azureml.ms/"}}
        return sdk.MLClient(credential, workspace.subscription, workspace.resource_group, workspace.name, **kwargs)

    def submit(request: Submission) -> Submitted:
        job = load_job_file(request.job_file)
        ml = ml_client or client()
        if request.display_name:
            job.display_name = request.display_name
        tags = {**(getattr(job, "tags", None) or {}), **request.tags}
        try:
            created = ml.jobs.create_or_update(job, experiment_name=request.experiment_name, tags=tags)
        except Exception as exc:  # HttpResponseError, ValidationException, upload errors...
            raise AmlError(f"AML refused to create the job from {str(request.job_file)!r}: {_first_line(exc)}",
                           status=getattr(exc, "status_code", None), code="SubmitRefused",
                           hint="Check the compute and environment names in the YAML and the identity's role "
                           "(AzureML Data Scientist) on the workspace.") from None
        name = str(created.name)
        studio = getattr(created, "studio_url", None) or workspace.studio_url(name)
        status = getattr(created, "status", None) or "NotStarted"
        return Submitted(name, str(studio), str(getattr(status, "value", status)))

    return submit


def _sdk() -> Any:
    try:
        import azure.ai.ml as sdk
    except ImportError:
        raise AmlError("Submitting a job needs the azure-ai-ml SDK, which is not installed.", status=None,
                       hint="Install it with pip install 'amlrelay[aml]' (waiting on existing jobs does not "
                       "need it).") from None
    return sdk


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:300]
