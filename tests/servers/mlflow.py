"""AML's MLflow tracking endpoint, for the two calls amlrelay makes: ``runs/set-tag`` and
``model-versions/set-tag``.

The contract is MLflow's REST API (``service.proto`` / ``model_registry.proto`` and the server's
``handlers.py``), served by AML under ``/mlflow/v2.0/<workspace resource id>/api/2.0/mlflow/…``
(AML-JOBS.md §3). What it enforces, as MLflow does:

* ``POST`` only, ``Content-Type: application/json``, a JSON object body (else 400 ``INVALID_PARAMETER_VALUE``);
* required fields (``run_id``, ``key`` for runs; ``name``, ``version``, ``key`` for model versions) and their
  types — ``version`` is a *string*: a number is refused with MLflow's "Invalid value … Hint: Value was of
  type 'int'" message; unknown fields are ignored (MLflow parses with ``ignore_unknown_fields``);
* tag keys: MLflow's character rule and path rule, at most 250 bytes; values at most 5000 bytes (the limits
  MLflow documents as guaranteed; AML's own are not published, so the strictest documented ones apply);
* an unknown run or model version is 404 ``RESOURCE_DOES_NOT_EXIST``; run ids are case-sensitive;
* success is 200 with ``{}``; errors are ``{"error_code", "message"}``;
* a bearer token whose audience is ARM (``https://management.azure.com``), as azureml-mlflow asks for: any
  other audience (an ADO token, say) is 401. (AML's 401 body is not documented; MLflow's shape is used.)
* a role: an identity without one on the workspace (``forbid(object_id)``) is 403 ``PERMISSION_DENIED``
  (MLflow's code for 403; AML's 403 body is not documented either), the tag not applied;
* only the ``/mlflow/v2.0/`` prefix (what azureml-mlflow calls with mlflow >= 2). The workspace's
  ``mlflow_tracking_uri`` and a job's ``MLFLOW_TRACKING_URI`` say ``azureml://<host>/mlflow/v1.0/<workspace>``
  (:attr:`MlflowServer.workspace_tracking_uri`, served over TLS with ``tls``): a client that calls that path
  unchanged gets 404 here, so the tests prove the client rewrites it.

Faults: ``fail(status, times)`` answers 5xx/429 without applying the tag; ``down()``/``up()`` refuse
connections (from the base class). ``tag_requests`` is the request log of tag calls.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from ._base import Fault, LoopbackServer, RecordedRequest, Reply
from ._jwt import decode_claims
from .tls import TlsMaterial

ARM_RESOURCE = "https://management.azure.com"
MAX_KEY_BYTES = 250
MAX_VALUE_BYTES = 5000
_KEY = re.compile(r"^[/\w.\- :]*$")
_API = "/api/2.0/mlflow/"
_SEE_DOCS = " See the API docs for more information about request parameters."


class MlflowServer(LoopbackServer):
    """One workspace's MLflow endpoint; ``tracking_url`` is what a client is configured with."""

    def __init__(self, workspace_id: str, *, audience: str = ARM_RESOURCE, tls: TlsMaterial | None = None) -> None:
        super().__init__(ssl_context=tls.server_context() if tls is not None else None)
        if tls is not None:
            self.scheme = "https"
        self.workspace_id = workspace_id.rstrip("/")
        self.audience = audience
        self._forbidden: set[str] = set()
        self._state = threading.Lock()
        self._runs: dict[str, dict[str, str]] = {}
        self._versions: dict[tuple[str, str], dict[str, str]] = {}

    @property
    def prefix(self) -> str:
        return f"/mlflow/v2.0{self.workspace_id}"

    @property
    def tracking_url(self) -> str:
        return f"{self.url}{self.prefix}"

    @property
    def workspace_tracking_uri(self) -> str:
        """What AML advertises (workspace ``mlFlowTrackingUri``, a job's ``MLFLOW_TRACKING_URI``): the
        ``azureml://`` scheme (HTTPS, so this needs ``tls``) and the ``/mlflow/v1.0/`` prefix."""
        if self.scheme != "https":
            raise ValueError("azureml:// means HTTPS: build the MlflowServer with tls=")
        return f"azureml://127.0.0.1:{self.port}/mlflow/v1.0{self.workspace_id}"

    def forbid(self, object_id: str) -> None:
        """The identity with this object id has no role on the workspace: 403 on every tag call."""
        with self._state:
            self._forbidden.add(object_id)

    # ---- test API -----------------------------------------------------------------------------------

    def add_run(self, run_id: str, tags: dict[str, str] | None = None) -> None:
        with self._state:
            self._runs[run_id] = dict(tags or {})

    def add_model_version(self, name: str, version: str | int, tags: dict[str, str] | None = None) -> None:
        with self._state:
            self._versions[(name, str(version))] = dict(tags or {})

    def run_tags(self, run_id: str) -> dict[str, str]:
        with self._state:
            return dict(self._runs[run_id])

    def model_version_tags(self, name: str, version: str | int) -> dict[str, str]:
        with self._state:
            return dict(self._versions[(name, str(version))])

    def fail(self, status: int, times: int = 1) -> None:
        """Answer the next ``times`` calls with ``status`` (and MLflow's error body), applying nothing."""
        self._push_fault(Fault("fail", "POST", times, status=status))

    @property
    def tag_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/set-tag")]

    # ---- the contract -------------------------------------------------------------------------------

    def handle(self, request: RecordedRequest) -> Reply | None:
        if not request.path.startswith(self.prefix + _API):
            return _error(404, "ENDPOINT_NOT_FOUND", f"No API endpoint at {request.path}.")
        call = request.path[len(self.prefix + _API):]
        if call not in ("runs/set-tag", "model-versions/set-tag"):
            return _error(404, "ENDPOINT_NOT_FOUND", f"The stand-in does not serve {call!r}.")
        if request.method != "POST":
            return _error(405, "BAD_REQUEST", f"Method {request.method} is not allowed for {call}.")
        refused = self._authorize(request)
        if refused is not None:
            return refused
        fault = self._take_fault("POST")
        if fault is not None:
            return _error(fault.status, "INTERNAL_ERROR" if fault.status >= 500 else "REQUEST_LIMIT_EXCEEDED",
                          f"Scripted {fault.status} from the MLflow stand-in.")
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            return _error(400, "INVALID_PARAMETER_VALUE",
                          "Bad Request. Content-Type must be one of ['application/json'].")
        body = request.json
        if not isinstance(body, dict):
            return _error(400, "INVALID_PARAMETER_VALUE", "Request body must be a JSON object.")
        if call == "runs/set-tag":
            return self._set_run_tag(body)
        return self._set_version_tag(body)

    def _authorize(self, request: RecordedRequest) -> Reply | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return _error(401, "UNAUTHENTICATED", "A bearer token is required.")
        claims = decode_claims(header[len("Bearer "):])
        if claims is None:
            return _error(401, "UNAUTHENTICATED", "The bearer token is not valid.")
        if str(claims.get("aud", "")).rstrip("/") != self.audience:
            return _error(401, "UNAUTHENTICATED",
                          f"The token's audience {claims.get('aud')!r} is not {self.audience!r}.")
        with self._state:
            if str(claims.get("oid")) in self._forbidden:
                return _error(403, "PERMISSION_DENIED", f"The identity {claims.get('oid')} has no role on workspace "
                              f"{self.workspace_id} that allows writing runs or models.")
        return None

    def _set_run_tag(self, body: dict[str, Any]) -> Reply:
        run_id = body.get("run_id") if body.get("run_id") not in (None, "") else body.get("run_uuid")
        body = body | {"run_id": run_id}
        problem = _check(body, required=("run_id", "key"), strings=("run_id", "key", "value"))
        with self._state:
            tags = self._runs.get(str(run_id))
            return problem or _apply(tags, body, f"Run with id={run_id} not found")

    def _set_version_tag(self, body: dict[str, Any]) -> Reply:
        problem = _check(body, required=("name", "version", "key"), strings=("name", "version", "key", "value"))
        with self._state:
            name, version = body.get("name"), body.get("version")
            tags = self._versions.get((str(name), str(version)))
            return problem or _apply(tags, body, f"Model Version (name={name}, version={version}) not found")


def _apply(tags: dict[str, str] | None, body: dict[str, Any], missing: str) -> Reply:
    """Set the (already checked) tag, or 404 when the run / model version does not exist."""
    if tags is None:
        return _error(404, "RESOURCE_DOES_NOT_EXIST", missing)
    tags[str(body["key"])] = str(body.get("value") or "")
    return Reply.json(200, {})


def _check(body: dict[str, Any], *, required: tuple[str, ...], strings: tuple[str, ...]) -> Reply | None:
    """MLflow's handler schema (``_assert_required`` then ``_assert_string``, with its messages), then the
    tag's own rules (name, path, lengths)."""
    for name in required:
        if body.get(name) in (None, ""):
            return _error(400, "INVALID_PARAMETER_VALUE", f"Missing value for required parameter '{name}'."
                          + _SEE_DOCS)
    for name in strings:
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            return _error(400, "INVALID_PARAMETER_VALUE", f"Invalid value {value} for parameter '{name}' supplied."
                          f" Hint: Value was of type '{type(value).__name__}'." + _SEE_DOCS)
    return _check_tag(str(body["key"]), str(body.get("value") or ""))


def _check_tag(key: str, value: str) -> Reply | None:
    if not _KEY.match(key):
        return _error(400, "INVALID_PARAMETER_VALUE", f"Invalid tag name: '{key}'. Names may only contain "
                      "alphanumerics, underscores (_), dashes (-), periods (.), spaces ( ), colons (:) and "
                      "slashes (/).")
    if key.startswith("/") or ".." in key.split("/"):
        return _error(400, "INVALID_PARAMETER_VALUE", f"Invalid tag name: '{key}'. Names may be treated as files in "
                      "certain cases, and must not resolve to other names when treated as such.")
    if len(key.encode()) > MAX_KEY_BYTES:
        return _error(400, "INVALID_PARAMETER_VALUE", f"Tag key '{key[:50]}' had length {len(key)}, which exceeded "
                      f"length limit of {MAX_KEY_BYTES}")
    if len(value.encode()) > MAX_VALUE_BYTES:
        return _error(400, "INVALID_PARAMETER_VALUE", f"Tag value '{value[:50]}' had length {len(value)}, which "
                      f"exceeded length limit of {MAX_VALUE_BYTES}")
    return None


def _error(status: int, code: str, message: str) -> Reply:
    return Reply.json(status, {"error_code": code, "message": message})
