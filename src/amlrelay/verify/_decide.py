"""Pure decisions of verification against AML: what to read for an event, and whether what AML answered
confirms it. No I/O here (the reads are in :mod:`._reader`), so every rule is tested without a server.

The webhook URL is a bearer secret, and the event body is not signed: anyone holding the URL can post an
event with an allowed ``topic``. What such a sender cannot fake is the workspace's own state, so the
event's claims are checked against it, read with the handler's identity:

* run events: the run (AML job) exists in the event's workspace, under the event's experiment, and its
  status agrees with the event (below);
* ModelRegistered: the model version exists in the event's workspace;
* ModelDeployed: every model version in ``modelIds`` exists (the service is a v1 ACI/AKS web service with
  no ARM read, so it is *not* verified);
* DatasetDriftDetected: the drift run (``runId``) exists (the v1 drift monitor and its coefficient have no
  ARM read and are *not* verified);
* the ``subject`` has the documented shape and names the same run / model / service as ``data`` (subject
  filters may be pushed down to Event Grid, so a subject of another shape would be routed unchecked);
* every ``runTags.*`` / ``runProperties.*`` (``modelTags.*`` / ``modelProperties.*``) value that a matched
  route's filters or templates read equals the job's (model version's) ``properties.tags`` /
  ``properties.properties`` in AML; "absent" is a value too. Otherwise a forger could take a real run and
  choose the branch or parameters the pipeline runs with, or drop the loop-guard tag.

Statuses. A terminal status (Completed, Failed, Canceled) never changes, so a terminal claim must match
exactly, and a job that ended differently refutes the event (``rejected``). A job may have moved on since
the event (the event says Running, the job is Completed now): the event was true when sent, so it is
confirmed. A claim *ahead* of the job (the event says Completed, the job is still Finalizing) may be a
forgery or ARM not showing the change yet; it is not refuted but not confirmed either: the event
``failed`` and is tried again later (journal, replay), when AML either shows it or has refuted it.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from ..models import (
    DATASET_DRIFT_DETECTED,
    RUN_COMPLETED,
    AmlEvent,
    DatasetDriftData,
    ModelDeployedData,
    ModelRegisteredData,
    RunEventData,
)

if TYPE_CHECKING:
    from ..routes import Route

MAX_MODEL_IDS = 20
"""Model versions read for one ModelDeployed event; more is not a real deployment (and would let one
forged event cost hundreds of ARM reads)."""

JOB_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9\-_]{0,254}$")  # Jobs_CreateOrUpdate's id pattern (mfe.json)
MODEL_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9\-_]{0,254}$")  # what amlrelay.aml's client accepts
MODEL_VERSION = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

FINAL = ("Completed", "Failed", "Canceled")
_RANK = {  # lifecycle order of the spec's JobStatus values; NotResponding and Paused happen while running
    "notstarted": 0, "starting": 1, "provisioning": 2, "preparing": 3, "queued": 4, "running": 5,
    "notresponding": 5, "paused": 5, "finalizing": 6, "cancelrequested": 7,
    "completed": 9, "failed": 9, "canceled": 9,
}
_CANONICAL = {name.lower(): name for name in (
    "NotStarted", "Starting", "Provisioning", "Preparing", "Queued", "Running", "NotResponding", "Paused",
    "Finalizing", "CancelRequested", "Completed", "Failed", "Canceled")}
_RUN_SUBJECT = re.compile(r"^experiments/([^/]+)/runs/([^/]+)$")
_MODEL_SUBJECT = re.compile(r"^models/([^/]+):([^/:]+)$")
_SERVICE_SUBJECT = re.compile(r"^endpoints/([^/]+)$")
_DRIFT_SUBJECT = re.compile(r"^datadrifts?/[^/]*/runs?/[^/]*$")  # the official sample: datadrifts/{}/runs/{}
_MAPS = {"job": ("runTags", "runProperties"), "model": ("modelTags", "modelProperties")}
"""The event maps AML holds for a read: (tags, properties) of the job / model version."""
_WORKSPACE = re.compile(r"^/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/"
                        r"Microsoft\.MachineLearningServices/workspaces/([^/]+)$", re.IGNORECASE)

Outcome = Literal["rejected", "failed"]


@dataclass(frozen=True)
class Refusal:
    """Why an event is not acted on: ``rejected`` (AML refutes it; never retried) or ``failed`` (AML could
    not be asked, or does not show it yet; tried again later)."""

    outcome: Outcome
    reason: str
    lagging: bool = False
    """The job is not yet in the status the event claims: ARM may lag the event, so reading again a few
    seconds later may confirm it (:class:`AmlVerifier` does, a bounded number of times)."""


@dataclass(frozen=True)
class Read:
    """One read of the event's workspace: a job (run) or a model version."""

    kind: Literal["job", "model"]
    name: str
    version: str = ""

    def describe(self) -> str:
        return f"run {self.name!r}" if self.kind == "job" else f"model version {self.name}:{self.version}"


@dataclass(frozen=True)
class Held:
    """What AML answered for one read: the job's status and experiment (empty for a model version), its ARM
    id, and its ``properties.tags`` / ``properties.properties``."""

    status: str
    experiment: str
    resource_id: str
    tags: Mapping[str, str] = field(default_factory=dict)
    properties: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """What to read for an event, or why it is refused before any read."""

    reads: tuple[Read, ...] = ()
    refusal: Refusal | None = None


def workspace_parts(source: str) -> tuple[str, str, str] | None:
    """(subscription, resource group, workspace) of an event's ``topic``/``source``."""
    found = _WORKSPACE.match(source.strip().rstrip("/"))
    return (found.group(1), found.group(2), found.group(3)) if found else None


def plan(event: AmlEvent) -> Plan:
    """The reads that can confirm ``event``; refuses outright what AML could never have sent, including a
    subject not in the documented shape for its event type."""
    planned = _plan(event)
    if planned.refusal is None and event.schema != "Manual":  # a hand-started job has no subject
        odd = _subject_shape(event)
        if odd:
            return _reject(odd)
    return planned


def _plan(event: AmlEvent) -> Plan:
    subject = _subject_mismatch(event)
    if subject:
        return _reject(subject)
    if workspace_parts(event.source) is None:
        return _reject(f"the topic {event.source[:200]!r} is not an AML workspace resource id")
    data = event.data
    if isinstance(data, RunEventData):
        claimed = claimed_status(event)
        if claimed is None:
            return _reject(f"runStatus {data.run_status[:60]!r} is not an AML job status a run can be confirmed "
                           "in")
        return _job(data.run_id)
    if isinstance(data, ModelRegisteredData):
        return _model(data.model_name, data.model_version)
    if isinstance(data, ModelDeployedData):
        if not data.model_ids:
            return _reject("modelIds names no model version")
        if len(data.model_ids) > MAX_MODEL_IDS:
            return _reject(f"modelIds names {len(data.model_ids)} model versions; at most {MAX_MODEL_IDS} are "
                           "verified per deployment")
        reads: list[Read] = []
        for model_id in data.model_ids:
            name, sep, version = model_id.rpartition(":")
            if not sep:
                return _reject(f"modelIds entry {model_id[:100]!r} is not 'name:version'")
            one = _model(name, version)
            if one.refusal is not None:
                return one
            reads.extend(one.reads)
        return Plan(tuple(dict.fromkeys(reads)))
    if isinstance(data, DatasetDriftData):
        if not data.run_id:
            return _reject(f"the {DATASET_DRIFT_DETECTED} event names no runId, so AML has nothing to confirm")
        return _job(data.run_id)
    return _reject(f"amlrelay does not know how to verify {event.type} events")


def fields_read(routes: Iterable[Route]) -> tuple[str, ...]:
    """Every event field the routes' filters and templates (branch, variables, templateParameters) read:
    the values verification must confirm, because they decide whether and with what a pipeline runs."""
    names: dict[str, None] = {}
    for route in routes:
        names.update((f.field, None) for f in route.filters)
        target = route.pipeline
        templates = [target.branch] if target.branch is not None else []
        templates += [v.value for v in target.variables.values()] + list(target.template_parameters.values())
        for template in templates:
            names.update((name, None) for name in template.fields)
    return tuple(names)


def judge_values(event: AmlEvent, read: Read, held: Held, fields: Collection[str]) -> Refusal | None:
    """Each tag / property value the routes read (``fields``) must be what AML holds for ``read``; a key
    absent on one side and present on the other refutes too (dropping the loop-guard tag is a forgery).
    Keys are looked up case-insensitively, as the router looks them up."""
    tags_name, properties_name = _MAPS[read.kind]
    if read.kind == "model" and not isinstance(event.data, ModelRegisteredData):
        return None  # ModelDeployed carries the service's tags, which no ARM read confirms (README)
    event_fields = event.fields()
    event_index = {k.lower(): k for k in event_fields}
    held_fields = {f"{tags_name}.{k}": str(v) for k, v in held.tags.items()}
    held_fields |= {f"{properties_name}.{k}": str(v) for k, v in held.properties.items()}
    held_index = {k.lower(): k for k in held_fields}
    prefixes = (tags_name.lower() + ".", properties_name.lower() + ".")
    for name in fields:
        low = name.lower()
        if not low.startswith(prefixes):
            continue
        claimed = event_fields.get(event_index.get(low, ""))
        actual = held_fields.get(held_index.get(low, ""))
        if claimed != actual:
            return Refusal("rejected", f"AML has {name} {_shown(actual)} for {read.describe()}, but the event says "
                                       f"{_shown(claimed)}; a route reads it, so the event is not acted on")
    return None


def _shown(value: str | None) -> str:
    return "absent" if value is None else repr(value[:100])


def claimed_status(event: AmlEvent) -> str | None:
    """The job status the event claims, spelled as the spec spells it (RunCompleted ⇒ Completed)."""
    if event.type == RUN_COMPLETED:
        return "Completed"
    data = event.data
    return _CANONICAL.get(data.run_status.lower()) if isinstance(data, RunEventData) else None


def judge_job(event: AmlEvent, status: str, experiment_name: str, resource_id: str) -> Refusal | None:
    """Does the job AML holds (its ``status``, ``experimentName`` and ARM ``id``) confirm ``event``?"""
    wrong_place = _outside(event, resource_id, "run")
    if wrong_place:
        return Refusal("rejected", wrong_place)
    data = event.data
    if not isinstance(data, RunEventData):  # drift: the run's existence is what can be confirmed
        return None
    run = f"run {data.run_id!r}"
    if experiment_name.lower() != data.experiment_name.lower():
        return Refusal("rejected", f"AML has {run} in experiment {experiment_name[:100]!r}, not "
                                   f"{data.experiment_name[:100]!r} as the event says")
    claimed = claimed_status(event) or ""
    current = _CANONICAL.get(status.lower())
    if current is None:
        return Refusal("failed", f"AML reports {run} with status {status[:60]!r}, which amlrelay cannot compare "
                                 f"with the event's {claimed}; the event is tried again later")
    if current == claimed:
        return None
    if claimed in FINAL and current in FINAL:
        return Refusal("rejected", f"AML says {run} ended {current}, not {claimed} as the event says (a final "
                                   "status never changes)")
    if _RANK[current.lower()] >= _RANK[claimed.lower()]:
        return None  # the job moved on since the event: the event was true when it was sent
    return Refusal("failed", f"AML shows {run} as {current}, not yet {claimed} as the event says; the event is "
                             "not confirmed now and is tried again later", lagging=True)


def judge_model(event: AmlEvent, read: Read, resource_id: str) -> Refusal | None:
    """A model version that exists confirms ModelRegistered (and its part of ModelDeployed)."""
    wrong_place = _outside(event, resource_id, read.describe())
    return Refusal("rejected", wrong_place) if wrong_place else None


def missing(read: Read, workspace: str) -> Refusal:
    return Refusal("rejected", f"AML has no {read.describe()} in workspace {workspace!r}")


def _outside(event: AmlEvent, resource_id: str, what: str) -> str | None:
    """ARM ids are case-insensitive; an answer from another workspace (a proxy, a redirect) refutes."""
    prefix = event.source.strip().rstrip("/").lower() + "/"
    if resource_id and not resource_id.lower().startswith(prefix):
        return f"AML answered for {what} with {resource_id[:200]!r}, which is not in the event's workspace"
    return None


def _subject_mismatch(event: AmlEvent) -> str | None:
    """The subject, when it has the documented shape, must name what ``data`` names (a forger who edits one
    and not the other would otherwise pass one value to the filters and another to the templates)."""
    data, subject = event.data, event.subject
    if isinstance(data, RunEventData):
        found = _RUN_SUBJECT.match(subject)
        if found and (found.group(1) != data.experiment_id or found.group(2) != data.run_id):
            return f"the subject {subject[:200]!r} names another run than data (experiment {data.experiment_id!r}, " \
                   f"run {data.run_id!r})"
    elif isinstance(data, ModelRegisteredData):
        found = _MODEL_SUBJECT.match(subject)
        if found and (found.group(1), found.group(2)) != (data.model_name, data.model_version):
            return f"the subject {subject[:200]!r} names another model version than data " \
                   f"({data.model_name}:{data.model_version})"
    elif isinstance(data, ModelDeployedData):
        found = _SERVICE_SUBJECT.match(subject)
        if found and found.group(1) != data.service_name:
            return f"the subject {subject[:200]!r} names another service than data ({data.service_name!r})"
    return None


_SHAPES = ((RunEventData, _RUN_SUBJECT, "experiments/<experimentId>/runs/<runId>"),
           (ModelRegisteredData, _MODEL_SUBJECT, "models/<modelName>:<modelVersion>"),
           (ModelDeployedData, _SERVICE_SUBJECT, "endpoints/<serviceName>"),
           (DatasetDriftData, _DRIFT_SUBJECT, "datadrifts/<dataDriftId>/runs/<runId>"))


def _subject_shape(event: AmlEvent) -> str | None:
    """AML always sends its documented subject; any other shape is not AML's (and would reach routes and
    Event Grid subject filters unchecked)."""
    for data_type, shape, spelled in _SHAPES:
        if isinstance(event.data, data_type) and not shape.match(event.subject):
            return f"the subject {event.subject[:200]!r} is not in the shape AML sends for {event.type} ({spelled})"
    return None


def _job(name: str) -> Plan:
    if not JOB_NAME.match(name):
        return _reject(f"runId {name[:100]!r} is not a name AML gives a run (letters, digits, '-' and '_')")
    return Plan((Read("job", name),))


def _model(name: str, version: str) -> Plan:
    if not MODEL_NAME.match(name) or not MODEL_VERSION.match(version):
        return _reject(f"{name[:100]!r} version {version[:40]!r} is not a model name and version AML accepts")
    return Plan((Read("model", name, version),))


def _reject(reason: str) -> Plan:
    return Plan(refusal=Refusal("rejected", reason))
