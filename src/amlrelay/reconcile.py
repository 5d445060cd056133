"""Reconcile: after an answer that leaves it open whether ADO queued a run, find out before sending again.

A 500/502/504, a read timeout or a reset after the POST, and a ledger claim whose holder died mid-call
all leave the same question: did the run start? ADO has no idempotency key for "Run Pipeline", so amlrelay
looks at the pipeline's recent runs (newest first, created since the attempt) and reads each one's
variables and template parameters. A run whose values equal the request's *fingerprint* — the values
templated from the event's data (run id, model name and version...), not from the delivery's id or time —
is the one this outcome started, and is adopted instead of starting another.

A route whose body carries no such value cannot be reconciled: then amlrelay does not guess, it fails the
event with the reason, and the ledger keeps it for a person to decide.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any, Protocol

from .errors import AmlRelayError
from .router import PipelineRunRequest
from .trigger import PipelineRun, _run_from

CLOCK_SKEW = timedelta(minutes=5)
MAX_RUNS_EXAMINED = 200


class RunReader(Protocol):
    def list_runs(self, project: str, pipeline_id: int) -> list[dict[str, Any]]: ...

    def get_run(self, project: str, pipeline_id: int, run_id: int) -> dict[str, Any]: ...


class CannotReconcileError(AmlRelayError):
    """The request has nothing that identifies its AML outcome among the pipeline's runs."""


def find_started_run(reader: RunReader, request: PipelineRunRequest, *, since: datetime) -> PipelineRun | None:
    """The run this request already started, or ``None`` when none was (so sending is safe)."""
    if not request.fingerprint:
        raise CannotReconcileError(
            f"Route {request.route!r} does not send the values that identify this AML outcome, so amlrelay cannot "
            "tell whether an earlier attempt already started its run.",
            hint="Add variables or template parameters with the outcome's identity ('{{ runId }}'; "
            "'{{ modelName }}' and '{{ modelVersion }}'; '{{ serviceName }}' and '{{ modelIds }}'; "
            "'{{ dataDriftId }}' and '{{ runId | none }}') that are not isSecret (ADO never returns secret values), "
            "see `amlrelay check-routes`; until then, check the "
            "pipeline's runs and replay by hand if none was started.",
        )
    earliest = since - CLOCK_SKEW
    for summary in reader.list_runs(request.project, request.pipeline_id)[:MAX_RUNS_EXAMINED]:
        created = _parse_time(summary.get("createdDate"))
        if created is not None and created < earliest:
            break  # newest first: everything further is older than the attempt
        run = reader.get_run(request.project, request.pipeline_id, int(summary["id"]))
        if _matches(run, request):
            return _run_from(run)
    return None


def _matches(run: dict[str, Any], request: PipelineRunRequest) -> bool:
    for key, expected in request.fingerprint.items():
        section, name = key.split(".", 1)
        value = (run.get(section) or {}).get(name)
        if isinstance(value, dict):
            value = value.get("value")
        if value != expected:
            return False
    return True


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    # ADO writes 7 fractional digits; Python 3.10's fromisoformat takes at most 6
    text = re.sub(r"(\.\d{6})\d+", r"\1", value.replace("Z", "+00:00"))
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else None
