"""Trigger: send one "Runs - Run Pipeline" request (ADO REST 7.1) and explain every refusal.

Retries use urllib3's ``Retry`` (through requests), not a loop of our own, with exponential backoff that
honours ``Retry-After`` up to a cap. What is retried depends on whether ADO can have acted on the request:

* 429 and 503 (throttled, unavailable) and connections that never opened: ADO did nothing; retried.
* 500, 502, 504, a read timeout or a reset *after* the POST was sent: ADO may have queued the run. A blind
  resend could start it twice, so these are raised as ``ambiguous`` and the relay looks for the run
  (:mod:`amlrelay.reconcile`) before sending again. Only a 500 is ``settled`` (ADO's application answered,
  so a run it queued is visible already); after a gateway error or no answer ADO may still be working,
  and a look now could miss a run that appears a second later. Reads (GET) are retried on every 5xx.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, ReadTimeoutError
from urllib3.util.retry import Retry

from .auth import AdoCredential
from .errors import AdoError
from .router import API_VERSION, PipelineRunRequest

RETRY_STATUSES = (429, 500, 502, 503, 504)
SAFE_POST_RETRY = frozenset({429, 503})  # answers that mean "not processed"
USER_AGENT = "amlrelay/0.1 (+https://github.com/contoso/amlrelay)"


@dataclass(frozen=True)
class PipelineRun:
    """The part of ADO's ``Run`` answer that people and the ledger need."""

    id: int
    state: str
    url: str | None
    name: str | None = None


class _CappedRetry(Retry):
    """``Retry`` that never sleeps longer than ``max_retry_after`` for one Retry-After header: a runbook job
    has a 3-hour limit and Event Grid has already been answered, so an hour-long wait helps nobody."""

    max_retry_after: float = 60.0

    def get_retry_after(self, response: Any) -> float | None:
        value = super().get_retry_after(response)
        return None if value is None else min(value, self.max_retry_after)

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        if method.upper() == "POST" and status_code not in SAFE_POST_RETRY:
            return False
        return bool(super().is_retry(method, status_code, has_retry_after))

    def new(self, **kw: Any) -> _CappedRetry:
        retry: _CappedRetry = super().new(**kw)  # type: ignore[assignment]
        retry.max_retry_after = self.max_retry_after
        return retry


def make_session(*, retries: int, backoff: float, max_retry_after: float) -> requests.Session:
    retry = _CappedRetry(
        total=retries,
        connect=retries,
        read=0,
        other=0,
        status=retries,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=frozenset({"GET", "POST"}),
        backoff_factor=backoff,
        backoff_max=30,
        respect_retry_after_header=True,
        raise_on_status=False,
    )
    retry.max_retry_after = max_retry_after
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry, pool_maxsize=16)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    return session


class AdoClient:
    """A client for one ADO organization (``https://dev.azure.com/contoso``, or an ADO Server collection)."""

    def __init__(self, org_url: str, credential: AdoCredential, *, timeout: float = 30.0, retries: int = 4,
                 backoff: float = 1.0, max_retry_after: float = 60.0,
                 session: requests.Session | None = None) -> None:
        self.org_url = org_url.rstrip("/")
        self._credential = credential
        self._timeout = timeout
        self._retries = retries
        self._session = session or make_session(retries=retries, backoff=backoff, max_retry_after=max_retry_after)

    def run_pipeline(self, request: PipelineRunRequest) -> PipelineRun:
        where = f"pipeline {request.pipeline_id} in project {request.project!r} of {self.org_url}"
        response = self._send("POST", request.url(self.org_url), request.query(), request.body, where)
        run = _run_from(_json(response)) if response.status_code == 200 else None
        if run is None:
            raise self._refusal(response, request.route, where)
        return run

    def list_runs(self, project: str, pipeline_id: int) -> list[dict[str, Any]]:
        """Recent runs of a pipeline, newest first (ADO's list omits variables and parameters)."""
        where = f"runs of pipeline {pipeline_id} in project {project!r} of {self.org_url}"
        url = f"{self.org_url}/{quote(project, safe='')}/_apis/pipelines/{pipeline_id}/runs"
        response = self._send("GET", url, {"api-version": API_VERSION}, None, where)
        body = _json(response)
        if response.status_code != 200 or not isinstance(body, dict) or not isinstance(body.get("value"), list):
            raise self._refusal(response, None, where)
        runs = [r for r in body["value"] if isinstance(r, dict) and isinstance(r.get("id"), int)]
        return sorted(runs, key=lambda r: int(r["id"]), reverse=True)

    def get_run(self, project: str, pipeline_id: int, run_id: int) -> dict[str, Any]:
        where = f"run {run_id} of pipeline {pipeline_id} in project {project!r} of {self.org_url}"
        url = f"{self.org_url}/{quote(project, safe='')}/_apis/pipelines/{pipeline_id}/runs/{run_id}"
        response = self._send("GET", url, {"api-version": API_VERSION}, None, where)
        body = _json(response)
        if response.status_code != 200 or not isinstance(body, dict):
            raise self._refusal(response, None, where)
        return body

    def _send(self, method: str, url: str, params: dict[str, str], body: Any, where: str) -> requests.Response:
        headers = {"Authorization": self._credential.authorization(), "Accept": "application/json"}
        try:
            return self._session.request(method, url, params=params, json=body, headers=headers,
                                         timeout=self._timeout)
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            raise self._no_answer(exc, where) from None

    def _no_answer(self, exc: requests.exceptions.RequestException, where: str) -> AdoError:
        reason = exc.args[0] if exc.args else None
        inner = getattr(reason, "reason", reason)
        if isinstance(exc, requests.exceptions.ReadTimeout) or isinstance(inner, ReadTimeoutError):
            return AdoError(f"ADO did not answer within {self._timeout:g} s for {where}.", status=None,
                            retryable=True, ambiguous=True,
                            hint="The run may have started: check the pipeline's runs before starting it again.")
        if isinstance(exc, requests.exceptions.ConnectTimeout) or isinstance(inner, ConnectTimeoutError):
            # NewConnectionError and DNS failures derive from ConnectTimeoutError: nothing was sent
            return AdoError(f"Could not connect to ADO for {where}: {_reason(exc)}", status=None, retryable=True,
                            hint="Check AMLRELAY_ADO_BASE_URL / AMLRELAY_ADO_ORGANIZATION and the network.")
        return AdoError(f"No answer from ADO for {where}: {_reason(exc)}", status=None, retryable=True,
                        ambiguous=True,
                        hint="The request may have reached ADO: check the pipeline's runs before starting it again.")

    def _refusal(self, response: requests.Response, route: str | None, where: str) -> AdoError:
        status = response.status_code
        body = _json(response)
        message = body.get("message") if isinstance(body, dict) and isinstance(body.get("message"), str) else ""
        who = self._credential.describe()
        if status in (200, 203) or (status < 300 and not isinstance(body, dict)):
            return AdoError(f"ADO answered {where} with a sign-in page instead of a run (HTTP {status}): "
                            f"it did not accept {who}.", status=status, hint=self._credential.remedy(401))
        if status in (401, 403):
            return AdoError(f"ADO refused {who} for {where} (HTTP {status}). {message}".strip(),
                            status=status, hint=self._credential.remedy(status))
        if status == 404:
            return AdoError(f"ADO found no {where} (HTTP 404). {message}".strip(), status=status,
                            hint=f"Check 'pipeline.id' and 'project' of route {route!r}, the organization "
                            "setting, and that the identity can see the project.")
        if status == 429:
            return AdoError(f"ADO kept throttling requests for {where} after {_retries(self._retries)} "
                            f"(HTTP 429). {message}".strip(), status=status, retryable=True,
                            hint="Spread the load, or give the identity 'Basic + Test Plans' for higher limits.")
        if status == 503:
            return AdoError(f"ADO stayed unavailable for {where} after {_retries(self._retries)} (HTTP 503).",
                            status=status, retryable=True, hint="ADO is having trouble; replay the event later.")
        if status >= 500:
            return AdoError(f"ADO failed {where} (HTTP {status}). {message}".strip(), status=status, retryable=True,
                            ambiguous=response.request.method == "POST", settled=status == 500,
                            hint="The run may have been queued before the error: amlrelay checks the pipeline's "
                            "runs before sending again.")
        return AdoError(f"ADO rejected the request for {where} (HTTP {status}): {message or response.reason}",
                        status=status,
                        hint="Variables must be 'settable at queue time' and template parameters declared in the "
                        f"pipeline's YAML; fix route {route!r} or the pipeline.")


def _retries(count: int) -> str:
    return f"{count} {'retry' if count == 1 else 'retries'}"


def _run_from(body: Any) -> PipelineRun | None:
    """The fields we keep from ADO's ``Run``: ``_links.web.href`` is the page people open."""
    if not isinstance(body, dict) or not isinstance(body.get("id"), int):
        return None
    links = body.get("_links")
    web = links.get("web") if isinstance(links, dict) else None
    href = web.get("href") if isinstance(web, dict) else None
    url = href if isinstance(href, str) else body.get("url")
    return PipelineRun(body["id"], str(body.get("state", "unknown")), url, body.get("name"))


def _json(response: requests.Response) -> Any:
    if "json" not in response.headers.get("Content-Type", ""):
        return None
    try:
        return response.json()
    except ValueError:
        return None


def _reason(exc: BaseException) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Connection reset", "Name or service not known", "timed out",
                   "RemoteDisconnected", "Connection aborted"):
        if marker.lower() in text.lower():
            return marker.lower()
    return text.splitlines()[0][:200] if text else type(exc).__name__
