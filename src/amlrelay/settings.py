"""Settings, read from the edges in a fixed order: runbook parameters, then Automation variables, then
``AMLRELAY_*`` environment variables.

Automation variables exist only inside Azure Automation (module ``automationassets``), so they are looked
up only when that module imports. Every problem is collected and reported at once, because a runbook
that fails on one missing setting at a time costs a job (and minutes) per fix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

from .auth import ADO_RESOURCE
from .errors import SettingsError

AUTH_MODES = ("managed-identity", "pat")
CREDENTIALS = ("managed-identity", "default")
CLOCK_SKEW = 300.0  # staleness compares the taker's clock with the holder's: allow them to disagree
Lookup = Callable[[str], "str | None"]


@dataclass(frozen=True)
class Settings:
    ado_organization: str
    routes: str
    allowed_workspaces: tuple[str, ...]
    ado_base_url: str = "https://dev.azure.com"
    auth: str = "managed-identity"
    managed_identity_client_id: str | None = None
    ado_resource: str = ADO_RESOURCE
    key_vault_url: str | None = None
    pat_secret_name: str = "ado-pat"  # noqa: S105 - the name of a secret, not a secret
    ledger_connection_string: str | None = field(default=None, repr=False)  # holds an account key
    ledger_table_url: str | None = None
    ledger_table: str = "amlrelayledger"
    ledger: bool = True
    settle_after: float = 300.0  # seconds ADO may still act on a request whose answer was lost
    ledger_stale_after: float = 1800.0  # seconds after which a silent claim's holder is presumed dead
    deadletter_container: str = "deadletters"
    blob_url: str | None = None  # default: the ledger account's blob endpoint
    journal: bool = True  # the sweeper drains the Storage-queue journal (amlrelay sweep)
    journal_queue: str = "amlrelay-journal"
    journal_queue_url: str | None = None  # the account's queue endpoint; default: the ledger account's
    journal_grace: float = 600.0  # seconds a journal message is left to the webhook job before the sweeper acts
    journal_max_dequeues: int = 5  # failed attempts (not dequeues) after which a message is moved aside
    journal_retry_after: float = 600.0  # seconds a message that failed stays hidden before it is tried again
    credential: str = "managed-identity"
    dry_run: bool = False
    timeout: float = 30.0
    max_retries: int = 4
    backoff: float = 1.0
    max_retry_after: float = 60.0
    tag_back: bool = False  # tag the AML run / model version with the ADO run it started (amlrelay.aml._tagback)
    aml_region: str | None = None  # the workspaces' Azure region, for the MLflow URL (e.g. westeurope)
    mlflow_url: str = "https://{region}.api.azureml.ms"  # MLflow base ({region}), or a workspace's tracking URI
    arm_url: str = "https://management.azure.com"  # the cloud's ARM endpoint: the audience of AML's MLflow tokens
    verify: bool = True  # confirm each event against AML before acting on it (amlrelay.verify)
    arm_audience: str | None = None  # ARM token audience when AMLRELAY_ARM_URL is a proxy or alias (default: it)
    verify_lag: float = 120.0  # seconds a job may wait in all for ARM to show a status an event claims (0: none)

    @property
    def blob_account_url(self) -> str | None:
        """Dead letters live in the ledger's account: derive its blob endpoint (any cloud's suffix)."""
        if self.blob_url:
            return self.blob_url
        return self.ledger_table_url.replace(".table.", ".blob.", 1) if self.ledger_table_url else None

    @property
    def queue_account_url(self) -> str | None:
        """The journal queue lives in the ledger's account too, unless AMLRELAY_JOURNAL_QUEUE_URL says not."""
        if self.journal_queue_url:
            return self.journal_queue_url
        return self.ledger_table_url.replace(".table.", ".queue.", 1) if self.ledger_table_url else None

    @property
    def org_url(self) -> str:
        return f"{self.ado_base_url.rstrip('/')}/{self.ado_organization.strip('/')}"

    def redacted(self) -> dict[str, Any]:
        """For display: what is set, never the value of a secret."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if out["ledger_connection_string"]:
            out["ledger_connection_string"] = "(set)"
        return out


def env_name(name: str) -> str:
    return f"AMLRELAY_{name.upper()}"


def automation_lookup() -> Lookup | None:
    """``automationassets.get_automation_variable`` inside Azure Automation, else ``None``."""
    try:
        import automationassets
    except ImportError:
        return None

    def lookup(name: str) -> str | None:
        try:
            value = automationassets.get_automation_variable(name)
        except Exception:  # the module raises a bare Exception for a variable that does not exist
            return None
        return None if value is None else str(value)

    return lookup


def resolve(params: Mapping[str, str | None], *, env: Mapping[str, str] | None = None,
            automation: Lookup | None = None, ledger_only: bool = False) -> Settings:
    """Build :class:`Settings` from the three sources; raise :class:`SettingsError` listing every problem.
    ``ledger_only``: for commands that only read the ledger (``amlrelay status``)."""
    environ = os.environ if env is None else env

    def raw(name: str) -> str | None:
        # a blank value (an empty portal box, an empty variable) is "not set here": it must not hide the next
        # source. Sources are asked lazily: each Automation variable read is a call to the sandbox.
        value = _text(params.get(name))
        if value is None and automation is not None:
            value = _text(automation(env_name(name)))
        return value if value is not None else _text(environ.get(env_name(name)))

    problems: list[str] = []
    values: dict[str, Any] = {}
    defaults = {f.name: f.default for f in fields(Settings)}
    for name in defaults:
        text = raw(name)
        if text is None:
            continue
        try:
            values[name] = _PARSERS.get(name, str)(text)
        except ValueError as exc:
            problems.append(f"{env_name(name)} {exc}")
    for name in () if ledger_only else ("ado_organization", "routes", "allowed_workspaces"):
        if name not in values and not any(p.startswith(env_name(name) + " ") for p in problems):
            problems.append(f"{env_name(name)} is missing ({_HELP[name]})")
    if values.get("auth") == "pat" and not values.get("key_vault_url"):
        problems.append("AMLRELAY_KEY_VAULT_URL is missing (required when AMLRELAY_AUTH=pat)")
    if values.get("ledger", True) and not values.get("dry_run") and not (
        values.get("ledger_connection_string") or values.get("ledger_table_url")
    ):
        problems.append("AMLRELAY_LEDGER_TABLE_URL is missing (https://<account>.table.core.windows.net; the "
                        "ledger is what stops a redelivered event from starting a pipeline twice. Set "
                        "AMLRELAY_LEDGER=false only to accept duplicate runs)")
    if values.get("tag_back") and "{region}" in values.get("mlflow_url", "{region}") and not values.get("aml_region"):
        problems.append("AMLRELAY_AML_REGION is missing (required when AMLRELAY_TAG_BACK=true: the region of the AML "
                        "workspaces, e.g. westeurope, for their MLflow endpoint; or set AMLRELAY_MLFLOW_URL to the "
                        "workspace's mlflow_tracking_uri)")
    worst = _longest_attempt(values) + CLOCK_SKEW
    if values.get("ledger_stale_after", 1800.0) <= worst:
        problems.append(f"AMLRELAY_LEDGER_STALE_AFTER must exceed the longest possible ADO attempt plus "
                        f"{CLOCK_SKEW:.0f} s of clock skew ({worst:.0f} s with these timeout/retry settings), or a "
                        "slow job's claim could be taken over while its request is still on the way")
    if problems:
        raise SettingsError(problems)
    if ledger_only:
        values = {"ado_organization": "", "routes": "", "allowed_workspaces": (), **values}
    return Settings(**values)


def _text(value: str | None) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _longest_attempt(values: dict[str, Any]) -> float:
    """Upper bound of one event's ADO attempt: every try timing out, every wait at its cap, plus the
    reconciliation reads and the one resend after an ambiguous answer."""
    timeout = float(values.get("timeout", 30.0))
    retries = int(values.get("max_retries", 4))
    wait = max(float(values.get("max_retry_after", 60.0)), 30.0)  # urllib3 backoff is capped at 30 s too
    one_call = (retries + 1) * timeout + retries * wait
    return 2 * one_call + 2 * timeout + 60.0


def _url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ValueError(f"must be an http(s) URL, got {text!r}")
    return text.rstrip("/")


def _workspaces(text: str) -> tuple[str, ...]:
    items = tuple(w.strip().rstrip("/") for w in text.replace("\n", ",").replace(";", ",").split(","))
    items = tuple(w for w in items if w)
    bad = [w for w in items if "/providers/microsoft.machinelearningservices/workspaces/" not in w.lower()]
    if not items or bad:
        raise ValueError("must list Azure ML workspace resource ids (/subscriptions/.../providers/"
                         f"Microsoft.MachineLearningServices/workspaces/NAME), got {', '.join(bad) or 'none'}")
    return items


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.lower() not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}, got {text!r}")
        return text.lower()

    return parse


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"must be true or false, got {text!r}")


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise ValueError(f"must be a number, got {text!r}") from None
        if value < 0:
            raise ValueError(f"must not be negative, got {text!r}")
        return value

    return parse


def _queue_name(text: str) -> str:
    """Storage queue names: 3-63 lowercase letters, digits and single hyphens, not at either end."""
    if not re.fullmatch(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}", text):
        raise ValueError(f"must be a storage queue name (3-63 lowercase letters, digits, single hyphens), got {text!r}")
    return text


def _region(text: str) -> str:
    region = text.strip().lower().replace(" ", "")
    if not re.match(r"^[a-z][a-z0-9]{2,40}$", region):
        raise ValueError(f"must be an Azure region name such as westeurope, got {text!r}")
    return region


def _mlflow_url(text: str) -> str:
    """A base URL with ``{region}``, or a full tracking URI (``azureml://`` as ``az ml workspace show`` prints it)."""
    https = "https://" + text[len("azureml://"):] if text.lower().startswith("azureml://") else text
    _url(https.replace("{region}", "region"))
    return text.rstrip("/")


def _organization(text: str) -> str:
    if "/" in text.strip("/"):
        raise ValueError("must be the organization (or ADO Server collection) name; put the host in "
                         "AMLRELAY_ADO_BASE_URL")
    return text.strip("/")


_PARSERS: dict[str, Callable[[str], Any]] = {
    "ado_organization": _organization,
    "ado_base_url": _url,
    "allowed_workspaces": _workspaces,
    "auth": _choice(*AUTH_MODES),
    "credential": _choice(*CREDENTIALS),
    "blob_url": _url,
    "key_vault_url": _url,
    "ledger_table_url": _url,
    "ledger": _bool,
    "dry_run": _bool,
    "timeout": _positive(float),
    "max_retries": _positive(int),
    "backoff": _positive(float),
    "max_retry_after": _positive(float),
    "ledger_stale_after": _positive(float),
    "settle_after": _positive(float),
    "journal": _bool,
    "journal_queue": _queue_name,
    "journal_queue_url": _url,
    "journal_grace": _positive(float),
    "journal_max_dequeues": _positive(int),
    "journal_retry_after": _positive(float),
}
_PARSERS.update(tag_back=_bool, aml_region=_region, mlflow_url=_mlflow_url, arm_url=_url)
_PARSERS.update(verify=_bool, arm_audience=_url, verify_lag=_positive(float))
_HELP = {
    "ado_organization": "the ADO organization name, e.g. contoso",
    "routes": "path to routes.json or its JSON content",
    "allowed_workspaces": "comma-separated resource ids of the AML workspaces whose events may trigger runs",
}
