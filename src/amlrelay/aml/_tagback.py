"""Tag-back: after amlrelay starts an ADO run, write that run onto the AML run or model version it came from
(``amlrelay.ado_run_id``, ``amlrelay.ado_run_url``), so the AML studio shows which ADO run a training
started. On when ``AMLRELAY_TAG_BACK=true``; every handler gets it, because it happens in the relay.

What it may never do is change what was triggered. So:

* it runs only *after* the run is recorded in the ledger, and the record says the tag is still owed
  (``tagged=False``, written with the run in one write): a job that dies before tagging leaves it owed;
* a tag failure is a warning on the outcome (``WARNING:`` line, exit code unchanged), never a failure:
  the ADO run stands, and :func:`retry_tags` (the sweeper) writes the tag later;
* the tag is written with MLflow ``set-tag``, which is idempotent: a retry after a lost answer writes the
  same value again, nothing more.

Loop guard — why a tag cannot make the relay trigger again: AML emits ``RunCompleted`` once, when a run
completes, and ``RunStatusChanged`` on a *status* change (today only to Failed); ``ModelRegistered`` on
registration. Setting a tag changes neither status nor registration, so no event follows it. And even
if a later event of the same run arrived carrying the new tags, its ledger key (workspace, run id,
status, route; or model name and version) does not contain tags: it is the same key, a duplicate.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..errors import AmlRelayError
from ..models import ModelRegisteredData, RunEventData
from ._mlflow import ARM_URL, DEFAULT_MLFLOW_BASE, MlflowClient, tracking_url

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from ..ledger import Ledger, LedgerRecord
    from ..models import AmlEvent
    from ..settings import Settings

RUN_ID_TAG = "amlrelay.ado_run_id"
RUN_URL_TAG = "amlrelay.ado_run_url"


@dataclass(frozen=True)
class TagTarget:
    """What to tag: an AML run (``name`` = run id, exact case) or a model version (``name``, ``version``)."""

    workspace: str
    kind: Literal["run", "model"]
    name: str
    version: str | None = None

    def to_json(self) -> str:
        body = {"workspace": self.workspace, "kind": self.kind, "name": self.name}
        return json.dumps(body | ({"version": self.version} if self.version is not None else {}),
                          separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> TagTarget:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("kind") not in ("run", "model"):
            raise ValueError(f"not a tag target: {text[:200]!r}")
        version = data.get("version")
        return cls(str(data["workspace"]), data["kind"], str(data["name"]),
                   None if version is None else str(version))

    def describe(self) -> str:
        return f"AML run {self.name!r}" if self.kind == "run" else f"model {self.name!r} version {self.version}"


def tag_target(event: AmlEvent) -> TagTarget | None:
    """The AML entity an event's ADO run belongs to. Run events tag their run; ModelRegistered its version.
    ModelDeployed (several models, an endpoint is no MLflow entity) and drift events tag nothing."""
    data = event.data
    if isinstance(data, RunEventData):
        return TagTarget(event.source.rstrip("/"), "run", data.run_id)
    if isinstance(data, ModelRegisteredData):
        return TagTarget(event.source.rstrip("/"), "model", data.model_name, data.model_version)
    return None


ClientFactory = Callable[[str], MlflowClient]


class TagBack:
    """Writes the two tags with the handler's identity; one MLflow client per workspace."""

    def __init__(self, credential: TokenCredential | None, *, region: str | None = None,
                 mlflow_url: str = DEFAULT_MLFLOW_BASE, arm_url: str = ARM_URL, timeout: float = 30.0,
                 client_factory: ClientFactory | None = None) -> None:
        self._credential = credential
        self._region = region
        self._base = mlflow_url
        self._arm_url = arm_url
        self._timeout = timeout
        self._factory = client_factory
        self._clients: dict[str, MlflowClient] = {}

    def target(self, event: AmlEvent) -> str | None:
        """The ledger's ``tag_target`` for this event (None: nothing to tag)."""
        found = tag_target(event)
        return found.to_json() if found is not None else None

    def apply(self, target: str, run_id: int, run_url: str | None) -> str | None:
        """Write both tags; None when done, else the warning to show (the tag stays owed)."""
        return self.attempt(target, run_id, run_url)[0]

    def attempt(self, target: str, run_id: int, run_url: str | None) -> tuple[str | None, bool]:
        """Like :meth:`apply`, and says whether a failure may pass by itself (throttling, 5xx, no answer:
        ``True``) or will repeat until someone acts (403, 404, 400, an unreadable target: ``False``)."""
        try:
            where = TagTarget.from_json(target)
        except (ValueError, KeyError) as exc:
            return f"tag-back skipped: the ledger's tag target is unreadable ({exc})", False
        try:
            client = self._client(where.workspace)
            for key, value in ((RUN_ID_TAG, str(run_id)), (RUN_URL_TAG, run_url or "")):
                if where.kind == "run":
                    client.set_run_tag(where.name, key, value)
                else:
                    client.set_model_version_tag(where.name, where.version or "", key, value)
        except AmlRelayError as exc:
            return (f"ADO run {run_id} was started, but tagging {where.describe()} with it failed: {exc.message}"
                    f" {exc.hint} (the tag is retried by `amlrelay sweep`; the run is not started again)",
                    bool(getattr(exc, "retryable", False)))
        return None, True

    def after_trigger(self, target: str, run_id: int, run_url: str | None, *, ledger: Ledger | None,
                      record: LedgerRecord | None, tagged: bool = False) -> str | None:
        """Tag (unless ``tagged``: already written), then mark the ledger record tagged. Returns the
        warning for the outcome, or None."""
        warning = None if tagged else self.apply(target, run_id, run_url)
        if warning is not None:
            return warning if record is not None else warning.replace(
                "(the tag is retried by `amlrelay sweep`;", "(no ledger record, so nothing retries the tag;")
        if ledger is not None and record is not None:
            try:
                ledger.set_tagged(record)
            except AmlRelayError as exc:  # tagged, but the ledger still says owed: a retry rewrites the same tag
                return f"tagged {TagTarget.from_json(target).describe()}, but the ledger could not record it: {exc}"
        return None

    def _client(self, workspace: str) -> MlflowClient:
        key = workspace.lower()
        if key not in self._clients:
            url = tracking_url(workspace, region=self._region, base=self._base)
            if self._factory is not None:
                self._clients[key] = self._factory(url)
            else:
                if self._credential is None:
                    raise AmlRelayError("Tag-back has no credential.",
                                        hint="Build TagBack with a credential or a client factory.")
                self._clients[key] = MlflowClient(url, self._credential, timeout=self._timeout,
                                                  arm_url=self._arm_url)
        return self._clients[key]


@dataclass(frozen=True)
class TagRetry:
    """One owed tag the sweeper tried: ``ok`` or the ``warning`` saying why not (it stays owed)."""

    key: str
    target: str
    ado_run_id: int | None
    ok: bool
    warning: str | None = None
    attempts: int | None = None
    """Failed tries so far, this one included (None when it succeeded)."""
    gave_up: bool | None = None
    """True: refused permanently ``give_up_after`` times; no longer retried (tag it by hand)."""

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in self.__dict__.items() if v is not None}, separators=(",", ":"))


GIVE_UP_AFTER = 5
"""A tag refused for a reason that does not pass by itself (403 no role, 404 run or model gone, 400) is
retried this many times in all (a role may be granted meanwhile), then given up with a warning."""


def retry_tags(ledger: Ledger, tag_back: TagBack, *, limit: int = 500,
               give_up_after: int = GIVE_UP_AFTER) -> list[TagRetry]:
    """Write the tags still owed (triggered records with ``tagged=False``). For the sweeper (``amlrelay
    sweep``) or any scheduled job; never touches ADO. Safe to run concurrently with handlers and with
    itself: the worst case is the same tag value written twice.

    Each failed try is counted on the record; the least-tried go first, so records that keep failing sink
    behind new ones and cannot fill ``limit`` for ever. A permanent refusal stops being retried at its
    ``give_up_after``-th try (``gave_up`` in the result: the caller prints a ``WARNING:`` listing them);
    throttling and outages are retried without end, as they pass."""
    done: list[TagRetry] = []
    for record in ledger.untagged()[:limit]:
        if record.ado_run_id is None or not record.tag_target:
            continue
        warning, transient = tag_back.attempt(record.tag_target, record.ado_run_id, record.ado_run_url)
        if warning is None:
            warning = tag_back.after_trigger(record.tag_target, record.ado_run_id, record.ado_run_url,
                                             ledger=ledger, record=record, tagged=True)
            done.append(TagRetry(record.key, record.tag_target, record.ado_run_id, warning is None, warning))
            continue
        attempts = (record.tag_attempts or 0) + 1
        give_up = not transient and attempts >= give_up_after
        try:
            ledger.record_tag_failure(record, warning, attempts=attempts, give_up=give_up)
        except AmlRelayError as exc:  # the count is lost this time; the tag stays owed all the same
            warning = f"{warning}; the ledger could not count the try: {exc.message}"
        done.append(TagRetry(record.key, record.tag_target, record.ado_run_id, False, warning, attempts,
                             give_up or None))
    return done


def tag_back_from_settings(settings: Settings, credential: TokenCredential | None = None) -> TagBack | None:
    """The relay's tag-back when ``AMLRELAY_TAG_BACK`` is on (None otherwise), with the handler's identity
    (built lazily: no token is asked for until a run was actually triggered)."""
    if not getattr(settings, "tag_back", False):
        return None
    if credential is None:
        from ..auth import managed_identity

        credential = managed_identity(settings.managed_identity_client_id, kind=settings.credential)
    audience = getattr(settings, "arm_audience", None) or settings.arm_url  # AMLRELAY_ARM_AUDIENCE, as verify uses
    return TagBack(credential, region=settings.aml_region, mlflow_url=settings.mlflow_url,
                   arm_url=audience, timeout=settings.timeout)


def describe(results: list[TagRetry]) -> dict[str, Any]:
    """Counts for a sweeper's summary line (``given_up`` are among ``still_owed``: owed, no longer tried)."""
    return {"tagged": sum(r.ok for r in results), "still_owed": sum(not r.ok for r in results),
            "given_up": sum(bool(r.gave_up) for r in results)}


def given_up_warning(results: list[TagRetry]) -> str | None:
    """One ``WARNING:`` line naming every tag given up in this pass (None when there is none)."""
    gone = [r for r in results if r.gave_up]
    if not gone:
        return None
    listed = "; ".join(f"{TagTarget.from_json(r.target).describe()} -> ADO run {r.ado_run_id} ({r.key})"
                       for r in gone)
    return (f"WARNING: tag-back gave up on {len(gone)} tag(s) after {gone[0].attempts} refused tries each: "
            f"{listed}. Fix the cause (the identity's role on the workspace, a deleted run or model) and tag "
            "them by hand; the ADO runs stand.")
