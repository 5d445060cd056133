"""Trigger: send one "Runs - Run Pipeline" request (ADO REST 7.1) and explain every refusal.

Retries use urllib3's ``Retry`` (through requests), not a loop of our own, with exponential backoff that
honours ``Retry-After`` up to a cap. What is retried depends on whether ADO can have acted on the request:

* 429 and 503 (throttled, unavailable) and connections that never opened: ADO did nothing; retried.
* 500, 502, 504, a read timeout or a reset *after* the POST was sent: ADO may have queued the run. A blind
  resend could start it twice, so these are raised as ``ambiguous`` and the relay looks for the run
  (:mod:`amlrelay.reconcile`) before sending again. Only a 500 is ``settled`` (ADO's application answered,
  so a run it queued is visible already); after a gateway error or no answer ADO may still be working,
  and a look now could miss a run that appears a second later. Reads (GET) are retried on every 5xx.
* A TLS handshake that fails (an untrusted certificate, a wrong host name, plain HTTP at an HTTPS address, no
  handshake in time): nothing was sent, so it is not ambiguous; sending again is safe once it is fixed
  (:func:`_failed_while_connecting` says how that is told apart from a TLS error after the request went out).
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from types import CodeType
from typing import Any
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import ConnectTimeoutError, ReadTimeoutError
from urllib3.exceptions import TimeoutError as Urllib3TimeoutError
from urllib3.util.retry import Retry
from urllib3.util.ssl_match_hostname import CertificateError

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
            raise self._no_answer(exc, method, url, params, where) from None
        except OSError as exc:
            # requests checks the CA bundle path before it opens a connection, and raises a bare OSError
            raise AdoError(f"Could not connect to ADO for {where}: {exc}. Nothing was sent.", status=None,
                           retryable=False,
                           hint="REQUESTS_CA_BUNDLE (or CURL_CA_BUNDLE) must be the path of a PEM file (or folder) "
                           "that exists where the job runs; unset it to use the default CA bundle.") from None

    def _no_answer(self, exc: requests.exceptions.RequestException, method: str, url: str, params: dict[str, str],
                   where: str) -> AdoError:
        reason = exc.args[0] if exc.args else None
        inner = getattr(reason, "reason", reason)
        if isinstance(exc, requests.exceptions.ConnectTimeout) or isinstance(inner, ConnectTimeoutError):
            # NewConnectionError and DNS failures derive from ConnectTimeoutError: nothing was sent
            return AdoError(f"Could not connect to ADO for {where}: {_reason(exc)}", status=None, retryable=True,
                            hint="Check AMLRELAY_ADO_BASE_URL / AMLRELAY_ADO_ORGANIZATION and the network.")
        failure = _failed_while_connecting(exc, method, url, params)
        if failure is not None:
            return self._not_connected(failure, where)
        if isinstance(exc, requests.exceptions.ReadTimeout) or isinstance(inner, ReadTimeoutError):
            return AdoError(f"ADO did not answer within {self._timeout:g} s for {where}.", status=None,
                            retryable=True, ambiguous=True,
                            hint="The run may have started: check the pipeline's runs before starting it again.")
        tls = next((e for e in _wrapped(exc) if isinstance(e, ssl.SSLError)), None)
        detail = _reason(exc) if tls is None else f"a TLS error on the open connection ({_ssl_reason(tls)})"
        return AdoError(f"No answer from ADO for {where}: {detail}", status=None, retryable=True,
                        ambiguous=True,
                        hint="The request may have reached ADO: check the pipeline's runs before starting it again.")

    def _not_connected(self, failure: BaseException, where: str) -> AdoError:
        """A connection that failed while it was being set up: nothing was sent, so no run can exist."""
        safe = "Nothing was sent, so sending again is safe once that is fixed."
        if isinstance(failure, (ssl.SSLCertVerificationError, CertificateError)):
            detail = str(getattr(failure, "verify_message", None) or failure).removesuffix(".")
            return AdoError(f"Could not connect to ADO for {where}: its TLS certificate was not accepted "
                            f"(certificate verify failed: {detail}). {safe}", status=None, retryable=True,
                            hint="Check that AMLRELAY_ADO_BASE_URL names ADO's host as its certificate does; if a "
                            "proxy intercepts TLS, or ADO Server's certificate comes from a private CA, set "
                            "REQUESTS_CA_BUNDLE to a PEM bundle that includes that CA.")
        if isinstance(failure, OSError) and (isinstance(failure, ssl.SSLError) or _raised_in(failure, _HANDSHAKE)):
            if isinstance(failure, TimeoutError):
                detail = f"no handshake within {self._timeout:g} s"
            else:
                detail = _ssl_reason(failure)
            return AdoError(f"Could not connect to ADO for {where}: the TLS handshake failed ({detail}). {safe}",
                            status=None, retryable=True,
                            hint="Check that AMLRELAY_ADO_BASE_URL is ADO's https:// address ('wrong version "
                            "number' means the port speaks plain HTTP), and whether a proxy or firewall "
                            "interferes with TLS (if a proxy intercepts it, set REQUESTS_CA_BUNDLE to a PEM bundle "
                            "that includes its CA).")
        return AdoError(f"Could not connect to ADO for {where}: the connection failed while it was being set up "
                        f"({_reason(failure)}). {safe}", status=None, retryable=True,
                        hint="Check AMLRELAY_ADO_BASE_URL / AMLRELAY_ADO_ORGANIZATION, any proxy, and the network.")

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


_CONNECT: frozenset[CodeType] = frozenset({HTTPConnection.connect.__code__, HTTPSConnection.connect.__code__})
_HANDSHAKE: frozenset[CodeType] = frozenset({ssl.SSLSocket.do_handshake.__code__})


def _failed_while_connecting(exc: requests.exceptions.RequestException, method: str, url: str,
                             params: dict[str, str]) -> BaseException | None:
    """The error that stopped the connection to ADO before the request went out, or ``None`` when the request
    may have been sent.

    requests raises the same ``SSLError`` whether TLS failed during the handshake (nothing sent: safe to
    send again) or on the open connection after the request was written (a bad record while reading the
    answer: ADO may have queued the run); even OpenSSL's reason can be the same ("wrong version number"),
    and a handshake that times out comes as the "read timed out" of an answer that never came. What tells
    them apart is where the underlying error was raised: inside urllib3's ``HTTP(S)Connection.connect``,
    which opens the socket and completes the handshake (``_validate_conn`` calls it before a byte of the
    request is written), or after it returned. A POST is retried only after 429/503 or a connection that
    never opened, so the last attempt's error speaks for all of them. Whenever the chain does not show it
    (another urllib3, an error raised elsewhere, a redirect's request rather than ours), this says
    ``None``: ambiguous, and the relay looks the run up rather than risk starting it twice. Our request is
    recognised by the URL exactly as requests prepares it (host lower-cased, path re-quoted: the base URL may be
    typed ``https://TFS.contoso.com/tfs/Default Collection``), so any redirect that changes it is not ours.
    """
    ours = requests.PreparedRequest()
    ours.prepare_url(url, params)
    failed = exc.request
    if failed is None or (failed.method, failed.url) != (method, ours.url):
        return None
    for error in _wrapped(exc):
        if _raised_in(error, _CONNECT):
            return error
    return None


def _wrapped(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the errors it wraps: requests' error holds urllib3's ``MaxRetryError``, whose ``reason``
    holds the error (SSLError, ProtocolError...) around the socket's or ssl's own. urllib3 turns a socket timeout
    into ``ReadTimeoutError`` by raising it while handling the timeout, so that one is its ``__context__``.
    The walk ends: an error holds only errors made before it (its arguments, ``reason``, or for urllib3's
    timeouts the socket error it replaced), so the chain (four errors deep) cannot loop back."""
    pending: list[BaseException] = [exc]
    while pending:
        error = pending.pop(0)
        yield error
        inner = [getattr(error, "reason", None), *error.args]
        if isinstance(error, Urllib3TimeoutError):
            inner.append(error.__context__)
        pending.extend(e for e in inner if isinstance(e, BaseException))


def _raised_in(error: BaseException, codes: frozenset[CodeType]) -> bool:
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code in codes:
            return True
        tb = tb.tb_next
    return False


def _ssl_reason(error: OSError) -> str:
    """OpenSSL's words without the source position: "[SSL: WRONG_VERSION_NUMBER] wrong version number
    (_ssl.c:1006)" becomes "wrong version number"; a reset reads "Connection reset by peer", without "[Errno 104]"."""
    return re.sub(r"^\[SSL: [A-Z0-9_]+\] |\s*\(_ssl\.c:\d+\)$", "", str(error.strerror or error)).strip()


def _reason(exc: BaseException) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Connection reset", "Name or service not known", "timed out",
                   "RemoteDisconnected", "Connection aborted"):
        if marker.lower() in text.lower():
            return marker.lower()
    return text.splitlines()[0][:200] if text else type(exc).__name__
