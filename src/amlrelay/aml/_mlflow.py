"""Tags on AML runs and model versions through the workspace's MLflow REST endpoint.

Why MLflow and not ARM: ARM's ``PUT …/jobs/{id}`` *replaces* every tag of a job (and a fetched-then-PUT
body fails with older API versions), while MLflow ``runs/set-tag`` and ``model-versions/set-tag`` add or
overwrite one key and leave the others alone — which is what the AML studio shows under the run's and the
model's tags. The contract (paths, bodies, ``{}`` on success, ``{"error_code", "message"}`` on failure)
is MLflow's own (``service.proto``/``model_registry.proto``); AML serves it under
``https://{region}.api.azureml.ms/mlflow/v2.0/<workspace id>/api/2.0/mlflow/…`` and wants an **ARM** token
(azureml-mlflow asks for ``<resource manager>/.default``), so the identity that reads AML jobs can tag too.

A tag is idempotent (the same key and value written twice leaves one tag), so unlike an ADO run request a
POST here may be retried on throttling, 5xx and dropped connections without any risk.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from ._errors import AmlError
from ._workspace import Workspace

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

ARM_URL = "https://management.azure.com"
"""Public cloud's resource manager: the audience of AML's MLflow endpoint (``<arm_url>/.default``)."""
DEFAULT_MLFLOW_BASE = "https://{region}.api.azureml.ms"
"""Where AML serves MLflow in the public cloud; ``{region}`` is the workspace's region (e.g. westeurope).
Other clouds and private-link workspaces set their own base (or the full ``mlflow_tracking_uri``)."""
MAX_KEY_BYTES = 250  # MLflow: "All storage backends are guaranteed to support key values up to 250 bytes"
MAX_VALUE_BYTES = 5000  # ... and tag values up to 5000 bytes. AML's own limits are not published.
_KEY = re.compile(r"^[/\w.\- :]*$")  # MLflow's tag-name rule (validation.py)
_REGION = re.compile(r"^[a-z][a-z0-9]{2,40}$")
_USER_AGENT = "amlrelay/0.1 (+https://github.com/contoso/amlrelay)"


class MlflowError(AmlError):
    """AML's MLflow endpoint refused or failed a tag, or no ARM token could be had. ``code`` is MLflow's
    ``error_code`` (``RESOURCE_DOES_NOT_EXIST``, ``INVALID_PARAMETER_VALUE``…) when the service sent one."""


def tracking_url(workspace_id: str, *, region: str | None = None, base: str = DEFAULT_MLFLOW_BASE) -> str:
    """The workspace's MLflow tracking URL (REST form, ``https://``), from its resource id and region.

    ``base`` may contain ``{region}`` (the default does). A full tracking URI — what ``az ml workspace show
    --query mlflow_tracking_uri`` prints, ``azureml://…/workspaces/<ws>`` — is also accepted as ``base``
    and used as it is, provided it names this workspace: that is the only correct way for private-link
    workspaces, whose host is not derived from the region."""
    ws = Workspace.parse(workspace_id)
    text = rest_url(base)
    if "/subscriptions/" in text.lower():
        named = text[text.lower().index("/subscriptions/"):]
        if Workspace.parse(named).arm_path.lower() != ws.arm_path.lower():
            raise MlflowError(f"The MLflow tracking URI {text!r} is for another workspace than {ws.arm_path!r}.",
                              status=None, hint="Leave AMLRELAY_MLFLOW_URL at its default (a base URL with "
                              "{region}) when events come from several workspaces.")
        return text
    if "{region}" in text:
        if not region or not _REGION.match(region.strip().lower()):
            raise MlflowError(
                f"Cannot build the MLflow tracking URL of {ws.name!r}: the workspace's region is "
                f"{'missing' if not region else f'invalid ({region!r})'}.", status=None,
                hint="Set AMLRELAY_AML_REGION to the workspace's Azure region, e.g. westeurope (az ml workspace "
                "show --query location), or AMLRELAY_MLFLOW_URL to its mlflow_tracking_uri.")
        text = text.replace("{region}", region.strip().lower())
    parts = urlsplit(text)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise MlflowError(f"The MLflow base URL {base!r} is not an http(s) URL.", status=None,
                          hint="Use an https URL such as https://{region}.api.azureml.ms.")
    return f"{text}/mlflow/v2.0{ws.arm_path}"


_V1 = re.compile(r"/mlflow/v1\.0/", re.IGNORECASE)


def rest_url(uri: str) -> str:
    """A tracking URI as the REST client must call it: ``azureml://`` becomes ``https://``, and the
    ``/mlflow/v1.0/`` that ``mlflow_tracking_uri`` and a job's ``MLFLOW_TRACKING_URI`` carry becomes
    ``/mlflow/v2.0/``: azureml-mlflow rewrites it so with mlflow >= 2 (``_store/azureml_reststore.py``), and
    v2.0 is the path documented for raw clients (AML-JOBS.md §3); v1.0 is the mlflow 1.x prefix."""
    text = uri.strip().rstrip("/")
    if text.lower().startswith("azureml://"):
        text = "https://" + text[len("azureml://"):]
    return _V1.sub("/mlflow/v2.0/", text, count=1)


class MlflowClient:
    """Set tags on runs and model versions of one workspace (``tracking_url`` from :func:`tracking_url`)."""

    def __init__(self, tracking_url: str, credential: TokenCredential, *, timeout: float = 30.0,
                 arm_url: str = ARM_URL, retries: int = 3, backoff: float = 0.5,
                 session: requests.Session | None = None) -> None:
        self.tracking_url = rest_url(tracking_url)
        self._credential = credential
        self._scope = f"{arm_url.rstrip('/')}/.default"
        self._timeout = timeout
        self._session = session or _session(retries, backoff)

    def set_run_tag(self, run_id: str, key: str, value: str) -> None:
        """``runs/set-tag``. ``run_id`` is the AML job name, case-sensitive (not the ledger's lower-cased key).
        ``run_uuid`` is sent too, as MLflow's own client does, for servers that still read it."""
        _check_tag(key, value)
        if not run_id:
            raise MlflowError("No run id to tag.", status=None, hint="Pass the AML job name (the run id).")
        self._post("runs/set-tag", {"run_id": run_id, "run_uuid": run_id, "key": key, "value": value},
                   f"run {run_id!r}")

    def set_model_version_tag(self, name: str, version: str | int, key: str, value: str) -> None:
        """``model-versions/set-tag``; MLflow declares ``version`` a string, so it is sent as one."""
        _check_tag(key, value)
        if not name or str(version).strip() == "":
            raise MlflowError("No model name or version to tag.", status=None,
                              hint="Pass the registered model's name and version.")
        self._post("model-versions/set-tag", {"name": name, "version": str(version), "key": key, "value": value},
                   f"model {name!r} version {version}")

    # ---- internals ----------------------------------------------------------------------------------

    def _post(self, call: str, body: dict[str, Any], what: str) -> None:
        from azure.core.exceptions import AzureError

        try:
            token = self._credential.get_token(self._scope).token
        except AzureError as exc:
            raise MlflowError(f"No ARM token to tag {what} in AML: {_first_line(exc)}", status=None,
                              retryable=True, hint="Check the handler's managed identity (and "
                              "AMLRELAY_MANAGED_IDENTITY_CLIENT_ID for a user-assigned one).") from None
        url = f"{self.tracking_url}/api/2.0/mlflow/{call}"
        try:
            response = self._session.post(url, json=body, timeout=self._timeout,
                                          headers={"Authorization": f"Bearer {token}"})
        except requests.RequestException as exc:
            raise MlflowError(f"AML's MLflow endpoint did not answer while tagging {what} "
                              f"({type(exc).__name__}).", status=None, retryable=True,
                              hint=f"Check the tracking URL ({_host(url)}) and the network path to it; the "
                              "sweeper retries the tag.") from None
        if response.status_code == 200:
            return
        raise _refusal(response, what)


def _refusal(response: requests.Response, what: str) -> MlflowError:
    status = response.status_code
    code: str | None = None
    message = response.reason or ""
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        code = str(payload.get("error_code") or "") or None
        message = str(payload.get("message") or message)
    detail = f"HTTP {status}" + (f" {code}" if code else "") + (f": {message[:300]}" if message else "")
    if status in (401, 403):
        hint = ("Give the handler's managed identity a role on the workspace that may write experiments, jobs "
                "and models (e.g. 'AzureML Data Scientist'), and check that its token is for ARM.")
    elif status == 404 or code == "RESOURCE_DOES_NOT_EXIST":
        hint = ("Check the run id / model name and version, and that the tracking URL points at the workspace "
                "(and region) the event came from.")
    elif status == 400:
        hint = "The tag was refused as sent; see MLflow's message."
    else:
        hint = "AML's MLflow endpoint is throttling or failing; the sweeper retries the tag."
    return MlflowError(f"AML refused to tag {what}: {detail}", status=status, code=code,
                       retryable=status in (408, 429) or status >= 500, hint=hint)


def _check_tag(key: str, value: str) -> None:
    """Refuse before sending what MLflow refuses (so the reason is ours and clear, and no call is wasted)."""
    if not key or not _KEY.match(key) or key.startswith("/") or ".." in key.split("/"):
        raise MlflowError(f"Invalid MLflow tag key {key!r}.", status=None,
                          hint="Use letters, digits, _ - . : / and spaces.")
    if len(key.encode()) > MAX_KEY_BYTES or len(value.encode()) > MAX_VALUE_BYTES:
        raise MlflowError(f"MLflow tag {key[:60]!r} is too long (key at most {MAX_KEY_BYTES} bytes, value at "
                          f"most {MAX_VALUE_BYTES}).", status=None, hint="Shorten it.")


def _session(retries: int, backoff: float) -> requests.Session:
    retry = Retry(total=retries, connect=retries, read=retries, other=0, status=retries,
                  status_forcelist=(429, 500, 502, 503, 504), allowed_methods=frozenset({"POST"}),
                  backoff_factor=backoff, backoff_max=10, respect_retry_after_header=True, raise_on_status=False)
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers["User-Agent"] = _USER_AGENT
    return session


def _host(url: str) -> str:
    return urlsplit(url).netloc


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:300]
