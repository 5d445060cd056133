"""Manual starts: the runbook parameters a person types (portal boxes or ``--flags``) and the event built
from them.

A module of its own because two edges start jobs by hand — the runbook (:mod:`amlrelay.runbook`) and the AML
component (:mod:`amlrelay.aml._component`), which re-reads the argv it hands the runbook — and neither edge
should import the other just to parse those parameters.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from typing import Any

from .errors import InvalidEventError
from .events import Parsed, manual_event
from .routes import Routes
from .settings import Settings

SETTING_FLAGS = [f.name for f in dataclasses.fields(Settings)]
"""Every setting is also a runbook parameter (``--org-url`` …), so a manual start can override it."""
_PORTAL_PAIR = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*=")


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="trigger_ado_pipeline.py",
        description="Start the ADO pipeline(s) that amlrelay's routes give for an AML event. Started by a "
        "webhook, the arguments are the WEBHOOKDATA; started by hand, give the event's fields below "
        "(in the portal: one value per box, e.g. '--model-name' 'churn' or 'model_name=churn').",
    )
    event = p.add_argument_group("the event (by hand)")
    event.add_argument("--event-type", help="RunCompleted, RunStatusChanged, ModelRegistered, ModelDeployed or "
                       "DatasetDriftDetected (default: from the fields given)")
    event.add_argument("--workspace", help="AML workspace resource id (default: the only allowed workspace)")
    event.add_argument("--run-id")
    event.add_argument("--experiment-name")
    event.add_argument("--experiment-id")
    event.add_argument("--run-status")
    event.add_argument("--run-type")
    event.add_argument("--model-name")
    event.add_argument("--model-version")
    event.add_argument("--service-name")
    event.add_argument("--compute-type", default="manual")
    event.add_argument("--model-ids")
    event.add_argument("--drift-id")
    event.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                       help="a run/model/service tag (repeatable)")
    target = p.add_argument_group("the target")
    target.add_argument("--route", help="use this route only (filters are not applied)")
    target.add_argument("--pipeline-id", type=int, help="override the route's pipeline id (needs --route)")
    target.add_argument("--branch", help="override the route's branch")
    target.add_argument("--dry-run", action="store_true", help="print the exact ADO request, send nothing")
    settings = p.add_argument_group("settings (default: Automation variables, then AMLRELAY_* variables)")
    for name in SETTING_FLAGS:
        if name != "dry_run":
            settings.add_argument("--" + name.replace("_", "-"), dest=name, metavar="VALUE")
    return p


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage to stderr (which Automation does not capture)."""

    def error(self, message: str) -> Any:
        raise InvalidEventError(f"Runbook parameters: {message}.", hint="Run with --help to list them.")


def parse_manual(args: list[str]) -> argparse.Namespace:
    p = parser()
    flags = {a.dest: a for a in p._actions}
    normalized: list[str] = []
    expects_value = False
    for item in args:  # portal boxes: 'model_name=churn' is as good as '--model-name churn'
        key = item.split("=", 1)[0].replace("-", "_").lower()
        if not expects_value and _PORTAL_PAIR.match(item) and key in flags:
            normalized += ["--" + key.replace("_", "-"), item.split("=", 1)[1]]
        else:
            normalized.append(item)
        action = flags.get(item.lstrip("-").replace("-", "_")) if item.startswith("--") else None
        expects_value = action is not None and action.nargs != 0
    namespace = p.parse_args(normalized)
    if namespace.pipeline_id and not namespace.route:
        raise InvalidEventError("--pipeline-id needs --route.", hint="Name the route whose pipeline to replace.")
    return namespace


def manual_items(ns: argparse.Namespace, settings: Settings, routes: Routes) -> tuple[list[Parsed], list[Any]]:
    workspace = ns.workspace
    if not workspace:
        if len(settings.allowed_workspaces) != 1:
            raise InvalidEventError("Several workspaces are allowed: say which one with --workspace.")
        workspace = settings.allowed_workspaces[0]
    tags = dict(t.split("=", 1) for t in ns.tag if "=" in t)
    event_type = ns.event_type or _infer_type(ns)
    data: dict[str, Any] = {
        "runId": ns.run_id, "experimentName": ns.experiment_name, "experimentId": ns.experiment_id or "manual",
        "runType": ns.run_type, "runStatus": ns.run_status, "runTags": tags,
        "modelName": ns.model_name, "modelVersion": ns.model_version, "modelTags": tags,
        "serviceName": ns.service_name, "serviceComputeType": ns.compute_type, "modelIds": ns.model_ids,
        "serviceTags": tags, "dataDriftId": ns.drift_id,
    }
    data = {k: v for k, v in data.items() if v is not None or k == "runType"}  # runType is nullable
    event = manual_event(event_type, workspace, data)
    return [event], [None]


def _infer_type(ns: argparse.Namespace) -> str:
    if ns.model_name:
        return "ModelRegistered"
    if ns.service_name:
        return "ModelDeployed"
    if ns.drift_id:
        return "DatasetDriftDetected"
    if ns.run_id:
        return "RunStatusChanged" if ns.run_status else "RunCompleted"
    raise InvalidEventError("No event given.", hint="Pass --run-id, --model-name, --service-name or --drift-id "
                            "(or --help).")
