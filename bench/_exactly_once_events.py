"""Synthetic AML events for bench/exactly_once.py, made from Microsoft's samples, and the way back from an
ADO run (or a recorded Run Pipeline request) to the AML outcome that started it.

Every event gets unique identity values (run id, model name + version, ...), so each AML outcome the bench
creates is distinct and can be recognised in the ADO stand-in's runs by the values the route sends.
"""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "tests" / "fixtures" / "eventgrid" / "examples"
SCHEMAS = ("event-grid-schema", "cloud-events-schema")
KINDS = ("run_completed", "run_failed", "model_registered", "model_deployed", "drift")
AML = "Microsoft.MachineLearningServices."

# Which pipeline each kind of outcome starts (routes.json), and the values that identify the outcome there.
PIPELINE_OF = {"run_completed": 12, "run_failed": 13, "model_registered": 20, "model_deployed": 21, "drift": 30}
_SAMPLES: dict[tuple[str, str], dict[str, Any]] = {}

Identity = tuple[str, ...]


def sample(schema: str, name: str) -> dict[str, Any]:
    key = (schema, name)
    if key not in _SAMPLES:
        _SAMPLES[key] = json.loads((EXAMPLES / schema / f"{name}.json").read_text(encoding="utf-8"))
    return copy.deepcopy(_SAMPLES[key])


def bench_routes() -> dict[str, Any]:
    """routes.json as shipped, except that retrain-on-drift also sends the drift id and run id.

    routes.json's retrain-on-drift sends only the monitor name and the drift coefficient, which do not
    identify the outcome (the ledger keys drift outcomes by drift id + run id). The bench must recognise
    every outcome among the ADO runs, and the relay's reconciliation needs the same values, so they are added.
    """
    routes: dict[str, Any] = json.loads((ROOT / "routes.json").read_text(encoding="utf-8"))
    routes.pop("$schema", None)
    for route in routes["routes"]:
        if route["name"] == "retrain-on-drift":
            route["pipeline"]["variables"].update({"AML_DRIFT_ID": "{{ dataDriftId }}",
                                                   "AML_DRIFT_RUN_ID": "{{ runId | none }}"})
    names = {r["name"]: r["pipeline"]["id"] for r in routes["routes"]}
    expected = {"evaluate-trained-model": 12, "triage-failed-run": 13, "deploy-registered-model": 20,
                "smoke-test-endpoint": 21, "retrain-on-drift": 30}
    if names != expected:
        raise SystemExit(f"routes.json changed (routes {names}); update bench/_exactly_once_events.py")
    return routes


def _set(data: dict[str, Any], name: str, value: Any) -> None:
    """Set ``data[name]`` keeping the sample's spelling of the key (the samples use ModelName, runId...)."""
    key = next((k for k in data if k.lower() == name.lower()), name)
    data[key] = value


def identity(kind: str, tag: str, n: int) -> Identity:
    """The identity of outcome number ``n`` of ``kind`` in the bench section ``tag``."""
    base = f"{tag}-{n}"
    if kind == "run_completed":
        return ("run_completed", f"run-{base}")
    if kind == "run_failed":
        return ("run_failed", f"run-{base}", "Failed")
    if kind == "model_registered":
        return ("model_registered", f"sklearn_{tag}_{n}", str(1 + n % 97))
    if kind == "model_deployed":
        return ("model_deployed", f"svc-{base}", f"sklearn_{tag}_{n}:1")
    if kind == "drift":
        return ("drift", f"drift-{base}", f"drift-{base}_1571590300380")
    raise ValueError(kind)


def make_event(ident: Identity, schema: str, *, status_change: bool = False, event_id: str | None = None,
               workspace: str | None = None) -> dict[str, Any]:
    """A delivery of the outcome ``ident`` in ``schema``; ``status_change`` turns a RunCompleted outcome into
    the RunStatusChanged(Completed) event that AML sends for the same run."""
    kind = ident[0]
    name = {"run_completed": "run_status_changed" if status_change else "run_completed",
            "run_failed": "run_status_changed", "model_registered": "model_registered",
            "model_deployed": "model_deployed", "drift": "dataset_drift_detected"}[kind]
    event = sample(schema, name)
    data = event["data"]
    if kind in ("run_completed", "run_failed"):
        _set(data, "runId", ident[1])
        event["subject"] = f"experiments/{data['experimentId']}/runs/{ident[1]}"
        if name == "run_status_changed":
            _set(data, "runStatus", "Completed" if kind == "run_completed" else ident[2])
    elif kind == "model_registered":
        _set(data, "modelName", ident[1])
        _set(data, "modelVersion", int(ident[2]))
        event["subject"] = f"models/{ident[1]}:{ident[2]}"
    elif kind == "model_deployed":
        _set(data, "serviceName", ident[1])
        _set(data, "modelIds", ident[2])
        event["subject"] = f"endpoints/{ident[1]}"
    else:
        _set(data, "dataDriftId", ident[1])
        _set(data, "runId", ident[2])
        event["subject"] = f"datadrifts/{ident[1]}/runs/{ident[2]}"
    event["id"] = event_id or str(uuid.uuid4())
    if workspace is not None:
        event["topic" if "topic" in event else "source"] = workspace
    return event


def _var(section: Any, name: str) -> str | None:
    value = section.get(name) if isinstance(section, dict) else None
    if isinstance(value, dict):
        value = value.get("value")
    return value if isinstance(value, str) else None


def identity_of(pipeline_id: int, body: Any) -> Identity | None:
    """The outcome a Run Pipeline request body, or a run as ADO returns it, was started for."""
    if not isinstance(body, dict):
        return None
    variables, params = body.get("variables") or {}, body.get("templateParameters") or {}
    found: tuple[str | None, ...]
    if pipeline_id == 12:
        found = ("run_completed", _var(variables, "AML_RUN_ID"))
    elif pipeline_id == 13:
        found = ("run_failed", _var(variables, "AML_RUN_ID"), _var(variables, "AML_RUN_STATUS"))
    elif pipeline_id == 20:
        found = ("model_registered", _var(params, "modelName"), _var(params, "modelVersion"))
    elif pipeline_id == 21:
        found = ("model_deployed", _var(variables, "AML_SERVICE"), _var(variables, "AML_MODEL_IDS"))
    elif pipeline_id == 30:
        found = ("drift", _var(variables, "AML_DRIFT_ID"), _var(variables, "AML_DRIFT_RUN_ID"))
    else:
        return None
    return None if any(v is None for v in found) else tuple(v for v in found if v is not None)


def run_identity(run: dict[str, Any]) -> Identity | None:
    pipeline = run.get("pipeline") or {}
    return identity_of(int(pipeline.get("id", -1)), run)


def request_identity(path: str, body: Any) -> Identity | None:
    """Identity of a recorded POST ``/{org}/{project}/_apis/pipelines/{id}/runs``."""
    parts = path.strip("/").split("/")
    try:
        pipeline_id = int(parts[4])
    except (IndexError, ValueError):
        return None
    return identity_of(pipeline_id, body)
