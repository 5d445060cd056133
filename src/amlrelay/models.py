"""Typed models of the five AML Event Grid event types.

The field lists follow ``MachineLearningServices*EventData`` in the Event Grid system-events spec
(2024-01-01, the newest). Real payloads drift from the spec, so the parsers here are lenient where the
service is known to be inconsistent and strict where a missing value would route an event wrongly:

* ``data`` keys are matched case-insensitively (Microsoft's own samples send ``ModelName``, the spec says
  ``modelName``);
* ``runType`` may be ``null``; ``modelVersion`` an integer or a string; ``runStatus`` any case; every
  other field is a string, and a number there is refused with the field named, never coerced;
* the spec's ``required`` fields must be present, or the event is rejected with the field named.

Every model exposes :meth:`fields`: a flat, case-insensitive view used by route filters and templates, so
a route can say ``runTags.stage`` or ``modelVersion`` without knowing which event type it got.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from .errors import InvalidEventError

AML_PREFIX = "Microsoft.MachineLearningServices."
RUN_COMPLETED = "RunCompleted"
RUN_STATUS_CHANGED = "RunStatusChanged"
MODEL_REGISTERED = "ModelRegistered"
MODEL_DEPLOYED = "ModelDeployed"
DATASET_DRIFT_DETECTED = "DatasetDriftDetected"
EVENT_TYPES = (RUN_COMPLETED, RUN_STATUS_CHANGED, MODEL_REGISTERED, MODEL_DEPLOYED, DATASET_DRIFT_DETECTED)

MAX_FIELD_LENGTH = 4096
"""Longest scalar we accept: AML names and ids are short; a huge value is hostile or broken input."""


def json_kind(value: Any) -> str:
    """What a JSON value is, in the words of JSON (never a Python type name: the reader wrote JSON)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"[:60]
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "an array"
    return "a value that is not JSON"


def _valid_unicode(text: str) -> bool:
    """False for lone surrogates (``"\\ud800"`` in JSON, or undecodable bytes smuggled in via argv)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Data:
    """Case-insensitive reader over an event's ``data`` object that names the offending field on error."""

    def __init__(self, event_type: str, raw: Mapping[str, Any]) -> None:
        self._type = event_type
        self._by_lower = {str(k).lower(): v for k, v in raw.items()}

    def _bad(self, name: str, problem: str) -> InvalidEventError:
        return InvalidEventError(
            f"{self._type} event: data.{name} {problem}.",
            hint="Only events shaped like Azure ML's Event Grid events can be relayed.",
        )

    def text(self, name: str, *, required: bool, nullable: bool = False, integer: bool = False) -> str | None:
        """A string field. Numbers are refused, not coerced: the schema says string, and an identifier that
        arrives as a number (``runId: 5``) was not written by AML. ``integer``: the one field the 2018
        schema typed as an integer (``modelVersion``) may still be one."""
        value = self._by_lower.get(name.lower())
        if value is None:
            if required and not (nullable and name.lower() in self._by_lower):
                raise self._bad(name, "is missing")
            return None
        if integer and isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            wanted = "a string or an integer" if integer else "a string"
            raise self._bad(name, f"must be {wanted} (as in the event schema), got {json_kind(value)}")
        if not _valid_unicode(value):
            raise self._bad(name, "is not valid Unicode text (it holds a lone surrogate)")
        text = value
        if len(text) > MAX_FIELD_LENGTH:
            raise self._bad(name, f"is longer than {MAX_FIELD_LENGTH} characters")
        if required and not text.strip():
            raise self._bad(name, "is empty")
        return text

    def mapping(self, name: str) -> dict[str, str]:
        value = self._by_lower.get(name.lower())
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self._bad(name, f"must be an object, got {json_kind(value)}")
        out: dict[str, str] = {}
        for key, item in value.items():
            if isinstance(item, (dict, list)):
                continue  # tags and properties are flat strings in AML; nested values are not routable
            text = "" if item is None else str(item)
            if len(text) > MAX_FIELD_LENGTH or len(str(key)) > MAX_FIELD_LENGTH:
                raise self._bad(f"{name}.{key}", f"is longer than {MAX_FIELD_LENGTH} characters")
            out[str(key)] = text
        return out

    def number(self, name: str) -> float | None:
        value = self._by_lower.get(name.lower())
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise self._bad(name, f"must be a number, got {json_kind(value)}")
        try:
            return float(value)
        except ValueError:
            raise self._bad(name, f"must be a number, got {str(value)[:40]!r}") from None


@dataclass(frozen=True)
class EventData:
    """Base of the typed ``data`` models."""

    event_type: ClassVar[str] = ""
    # Names that :meth:`fields` can return, for static checks of routes; tag maps are listed by prefix.
    field_names: ClassVar[tuple[str, ...]] = ()
    map_names: ClassVar[tuple[str, ...]] = ()
    # The fields :meth:`outcome_key` is made of: a request that carries them all identifies its outcome.
    identity_fields: ClassVar[tuple[str, ...]] = ()

    def fields(self) -> dict[str, str]:
        raise NotImplementedError

    def outcome_key(self) -> tuple[str, ...]:
        """The AML outcome this event reports; two deliveries with equal keys are the same outcome."""
        raise NotImplementedError


def _flatten(prefix: str, values: Mapping[str, str]) -> dict[str, str]:
    return {f"{prefix}.{k}": v for k, v in values.items()}


@dataclass(frozen=True)
class RunEventData(EventData):
    """RunCompleted and RunStatusChanged. A RunCompleted *is* a run whose status became Completed, so its
    ``run_status`` is ``"Completed"``: routes can then treat both event types alike."""

    experiment_id: str
    experiment_name: str
    run_id: str
    run_type: str | None
    run_status: str
    run_tags: dict[str, str] = field(default_factory=dict)
    run_properties: dict[str, str] = field(default_factory=dict)

    field_names = ("experimentId", "experimentName", "runId", "runType", "runStatus")
    map_names = ("runTags", "runProperties")
    identity_fields = ("runId",)  # the status is fixed by the route: one run ends one way

    @classmethod
    def parse(cls, event_type: str, raw: Mapping[str, Any]) -> RunEventData:
        d = _Data(event_type, raw)
        status = "Completed" if event_type == RUN_COMPLETED else d.text("runStatus", required=True) or ""
        return cls(
            experiment_id=d.text("experimentId", required=True) or "",
            experiment_name=d.text("experimentName", required=True) or "",
            run_id=d.text("runId", required=True) or "",
            run_type=d.text("runType", required=True, nullable=True),
            run_status=status,
            run_tags=d.mapping("runTags"),
            run_properties=d.mapping("runProperties"),
        )

    def fields(self) -> dict[str, str]:
        out = {
            "experimentId": self.experiment_id,
            "experimentName": self.experiment_name,
            "runId": self.run_id,
            "runStatus": self.run_status,
        }
        if self.run_type is not None:
            out["runType"] = self.run_type
        return out | _flatten("runTags", self.run_tags) | _flatten("runProperties", self.run_properties)

    def outcome_key(self) -> tuple[str, ...]:
        return ("run", self.run_id.lower(), self.run_status.lower())


@dataclass(frozen=True)
class ModelRegisteredData(EventData):
    model_name: str
    model_version: str
    model_tags: dict[str, str] = field(default_factory=dict)
    model_properties: dict[str, str] = field(default_factory=dict)

    field_names = ("modelName", "modelVersion")
    map_names = ("modelTags", "modelProperties")
    identity_fields = ("modelName", "modelVersion")

    @classmethod
    def parse(cls, event_type: str, raw: Mapping[str, Any]) -> ModelRegisteredData:
        d = _Data(event_type, raw)
        return cls(
            model_name=d.text("modelName", required=True) or "",
            model_version=d.text("modelVersion", required=True, integer=True) or "",
            model_tags=d.mapping("modelTags"),
            model_properties=d.mapping("modelProperties"),
        )

    def fields(self) -> dict[str, str]:
        out = {"modelName": self.model_name, "modelVersion": self.model_version}
        return out | _flatten("modelTags", self.model_tags) | _flatten("modelProperties", self.model_properties)

    def outcome_key(self) -> tuple[str, ...]:
        return ("model", self.model_name.lower(), self.model_version.lower())


@dataclass(frozen=True)
class ModelDeployedData(EventData):
    service_name: str
    service_compute_type: str
    model_ids: tuple[str, ...]
    service_tags: dict[str, str] = field(default_factory=dict)
    service_properties: dict[str, str] = field(default_factory=dict)

    field_names = ("serviceName", "serviceComputeType", "modelIds")
    map_names = ("serviceTags", "serviceProperties")
    identity_fields = ("serviceName", "modelIds")

    @classmethod
    def parse(cls, event_type: str, raw: Mapping[str, Any]) -> ModelDeployedData:
        d = _Data(event_type, raw)
        ids = d.text("modelIds", required=True) or ""
        return cls(
            service_name=d.text("serviceName", required=True) or "",
            service_compute_type=d.text("serviceComputeType", required=True) or "",
            model_ids=tuple(part.strip() for part in ids.split(",") if part.strip()),
            service_tags=d.mapping("serviceTags"),
            service_properties=d.mapping("serviceProperties"),
        )

    def fields(self) -> dict[str, str]:
        out = {
            "serviceName": self.service_name,
            "serviceComputeType": self.service_compute_type,
            "modelIds": ",".join(self.model_ids),
        }
        return out | _flatten("serviceTags", self.service_tags) | _flatten(
            "serviceProperties", self.service_properties
        )

    def outcome_key(self) -> tuple[str, ...]:
        return ("deployment", self.service_name.lower(), ",".join(m.lower() for m in self.model_ids))


@dataclass(frozen=True)
class DatasetDriftData(EventData):
    data_drift_id: str
    data_drift_name: str | None
    run_id: str | None
    base_dataset_id: str | None
    target_dataset_id: str | None
    drift_coefficient: float | None
    start_time: str | None
    end_time: str | None

    field_names = (
        "dataDriftId", "dataDriftName", "runId", "baseDatasetId", "targetDatasetId",
        "driftCoefficient", "startTime", "endTime",
    )  # fmt: skip
    identity_fields = ("dataDriftId", "runId")

    @classmethod
    def parse(cls, event_type: str, raw: Mapping[str, Any]) -> DatasetDriftData:
        d = _Data(event_type, raw)
        return cls(
            data_drift_id=d.text("dataDriftId", required=True) or "",
            data_drift_name=d.text("dataDriftName", required=False),
            run_id=d.text("runId", required=False),
            base_dataset_id=d.text("baseDatasetId", required=False),
            target_dataset_id=d.text("targetDatasetId", required=False),
            drift_coefficient=d.number("driftCoefficient"),
            start_time=d.text("startTime", required=False),
            end_time=d.text("endTime", required=False),
        )

    def fields(self) -> dict[str, str]:
        values: dict[str, str | float | None] = {
            "dataDriftId": self.data_drift_id,
            "dataDriftName": self.data_drift_name,
            "runId": self.run_id,
            "baseDatasetId": self.base_dataset_id,
            "targetDatasetId": self.target_dataset_id,
            "driftCoefficient": self.drift_coefficient,
            "startTime": self.start_time,
            "endTime": self.end_time,
        }
        return {k: str(v) for k, v in values.items() if v is not None}

    def outcome_key(self) -> tuple[str, ...]:
        return ("drift", self.data_drift_id.lower(), (self.run_id or "").lower())


DATA_MODELS: dict[str, type[EventData]] = {
    RUN_COMPLETED: RunEventData,
    RUN_STATUS_CHANGED: RunEventData,
    MODEL_REGISTERED: ModelRegisteredData,
    MODEL_DEPLOYED: ModelDeployedData,
    DATASET_DRIFT_DETECTED: DatasetDriftData,
}

ENVELOPE_FIELDS = ("eventId", "eventType", "subject", "eventTime", "workspaceId", "workspaceName")


def parse_data(short_type: str, raw: Any) -> EventData:
    if not isinstance(raw, Mapping):
        raise InvalidEventError(
            f"{short_type} event: data must be a JSON object, got {json_kind(raw)}.",
            hint="Only events shaped like Azure ML's Event Grid events can be relayed.",
        )
    model = DATA_MODELS[short_type]
    parsed: EventData = model.parse(short_type, raw)  # type: ignore[attr-defined]
    return parsed


@dataclass(frozen=True)
class AmlEvent:
    """One AML event, whichever envelope schema delivered it."""

    id: str
    type: str  # short name, e.g. "RunCompleted"
    source: str  # the workspace resource id (Event Grid ``topic`` / CloudEvents ``source``)
    subject: str
    time: datetime | None
    schema: str  # "EventGridSchema", "CloudEventSchemaV1_0" or "Manual"
    data: EventData

    @property
    def full_type(self) -> str:
        return AML_PREFIX + self.type

    @property
    def workspace_name(self) -> str:
        return self.source.rstrip("/").rsplit("/", 1)[-1]

    def fields(self) -> dict[str, str]:
        """Every value a route can filter on or template with; see the README's field table."""
        envelope = {
            "eventId": self.id,
            "eventType": self.type,
            "subject": self.subject,
            "eventTime": self.time.isoformat() if self.time else "",
            "workspaceId": self.source,
            "workspaceName": self.workspace_name,
        }
        return envelope | self.data.fields()

    def outcome_key(self) -> str:
        """Ledger key for the AML outcome, independent of the event id (RunCompleted and
        RunStatusChanged(Completed) of one run share it). A contract with every handler that claims the
        ledger (the Logic App builds it with ``toLower(concat(...))``): the lower-cased workspace id, then
        ``run|<runId>|<status>``, ``model|<name>|<version>``, ``deployment|<service>|<modelIds>`` or
        ``drift|<dataDriftId>|<runId>``, joined by ``|``; the relay appends ``|<route>``."""
        parts = (self.source.rstrip("/").lower(), *self.data.outcome_key())
        return "|".join(parts)
