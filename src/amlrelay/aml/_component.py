"""The AML trigger component's logic (``components/trigger_ado_pipeline``): the last step of a training
pipeline starts the next ADO pipeline, through the very same relay as an Event Grid delivery.

Why it cannot start a second run when Event Grid also delivers the training run's completion: it does not
call ADO itself. It builds the event Event Grid would deliver for that run — a ``RunCompleted`` of the run
that logged the model (``run_id`` from the MLmodel file, read as YAML), or a ``ModelRegistered`` when a
version is given — and hands it to the runbook's manual-start path (:func:`amlrelay.runbook.main`). So it
takes the same routes, claims the same ledger key (workspace + run id + status + route), uses the same
retries and reconciliation, and whichever path comes second reports ``duplicate`` with the first's run.

The event is the one Event Grid sends, not one assembled from the component's inputs: before relaying,
the component reads the training run (``Jobs_Get``) or the model version with the compute's identity and
takes the run's *own* tags, experiment and status (refusing a run that is not ``Completed``), so a route
whose template reads a tag (``{{ runTags.branch | main }}``) builds the same ADO request whichever path
wins the ledger. Tags given as inputs must agree with the run's: an event carrying tags the run does not
have is one Event Grid never sends. The one field that differs is the event id (``manual-<uuid>``).

AML specifics handled here, so the entry point stays three lines:

* the workspace comes from ``AZUREML_ARM_SUBSCRIPTION/_RESOURCEGROUP/_WORKSPACE_NAME`` (set in every job),
  and is the only allowed one unless ``allowed_workspaces`` says otherwise;
* identity: the compute's managed identity (``MSI_ENDPOINT``/``MSI_SECRET``, which azure-identity's
  ManagedIdentityCredential uses on AML compute), with ``DEFAULT_IDENTITY_CLIENT_ID`` as the user-assigned
  identity when AML sets it; ``auth=pat`` reads a PAT from Key Vault with that identity instead;
* tag-back's MLflow URL defaults to the job's ``MLFLOW_TRACKING_URI`` (right for private link too);
* the experiment comes from ``MLFLOW_EXPERIMENT_NAME``/``_ID`` when not given.

The step's output is a small JSON file (``ado_run.json``: the ADO run id and URL, and every outcome), and
the step fails — non-zero exit, ``ERROR:`` lines saying what to do — whenever no ADO run stands for the
training run at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import AmlRelayError
from ._errors import ComponentError
from ._training_run import Source, SourceReader, agreed_tags, read_run_id, read_source, target_of

__all__ = ["ComponentError", "main", "read_run_id", "runbook_argv"]

OUTPUT_FILE = "ado_run.json"
_SETTINGS_PASSED = ("ado_organization", "ado_base_url", "routes", "allowed_workspaces", "auth", "key_vault_url",
                    "pat_secret_name", "ledger_table_url", "ledger_table", "managed_identity_client_id",
                    "tag_back", "aml_region", "mlflow_url", "arm_url", "arm_audience", "dry_run")
Printer = Callable[[str], None]


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="trigger_ado_pipeline", description="Start the ADO pipeline for this AML training run, "
                "exactly once with the Event Grid path (same routes, same ledger key).")
    p.add_argument("--model", help="the model folder (mlflow_model or uri_folder): its MLmodel gives the run id")
    p.add_argument("--run-id", help="the AML run to report (default: run_id from MLmodel)")
    p.add_argument("--model-name", help="with --model-version: report the model registration instead of the run")
    p.add_argument("--model-version")
    p.add_argument("--experiment-name", help="default: MLFLOW_EXPERIMENT_NAME of the job")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                   help="run tags the event carries (log the same tags in training so both paths agree)")
    p.add_argument("--route", help="use this route only (its filters are not applied)")
    p.add_argument("--pipeline-id", type=int, help="override the route's pipeline id (needs --route)")
    p.add_argument("--branch", help="override the route's branch")
    p.add_argument("--workspace", help="AML workspace resource id (default: this job's workspace)")
    p.add_argument("--output", help="folder for ado_run.json (the component's output)")
    p.add_argument("--busy-wait", type=float, default=120.0, metavar="SECONDS",
                   help="how long to wait for a racing job (Event Grid) to record the run it is starting")
    for name in _SETTINGS_PASSED:
        p.add_argument("--" + name.replace("_", "-"), dest=name, metavar="VALUE")
    return p


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise ComponentError(f"Component arguments: {message}.", hint="See the component's inputs "
                             "(components/trigger_ado_pipeline/trigger_ado_pipeline.yml).")


def workspace_from_env(env: Mapping[str, str]) -> str | None:
    """The job's workspace, from the variables AML sets in every job."""
    sub, rg, ws = (env.get(f"AZUREML_ARM_{n}") for n in ("SUBSCRIPTION", "RESOURCEGROUP", "WORKSPACE_NAME"))
    if sub and rg and ws:
        return f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.MachineLearningServices/workspaces/{ws}"
    return None


def workspace_of(ns: argparse.Namespace, env: Mapping[str, str]) -> str:
    workspace = ns.workspace or workspace_from_env(env)
    if not workspace:
        raise ComponentError("Cannot tell which AML workspace this run belongs to.",
                             hint="Run the component inside an AML job (AZUREML_ARM_* are set there) or pass "
                             "workspace.")
    return str(workspace)



def runbook_argv(ns: argparse.Namespace, env: Mapping[str, str], source: Source | None = None) -> list[str]:
    """The manual start the runbook would get for this run: the same event, route and settings. With
    ``source`` (what AML says about the run or model), its tags, experiment and status make the event; the
    component's tag inputs must agree with them."""
    workspace = workspace_of(ns, env)
    target = target_of(ns)
    argv = ["--workspace", workspace]
    given = _given_tags(ns)
    if target.kind == "model":
        argv += ["--event-type", "ModelRegistered", "--model-name", target.name,
                 "--model-version", target.version or ""]
    else:
        given = {"model_name": ns.model_name, **given} if ns.model_name else given
        experiment = (source.experiment_name if source is not None else None) or ns.experiment_name \
            or env.get("MLFLOW_EXPERIMENT_NAME")
        if not experiment:
            raise ComponentError(f"The experiment of run {target.name!r} is unknown.",
                                 hint="Pass experiment_name (inside AML, MLFLOW_EXPERIMENT_NAME gives it).")
        if source is not None and source.status is not None and source.status.lower() != "completed":
            raise ComponentError(f"AML run {target.name!r} is {source.status}, not Completed: Event Grid sends "
                                 "no RunCompleted for it, so neither does the component.",
                                 hint="Put the component after the training step (bind its model output), so "
                                 "it runs once training completed; or report a run that completed.")
        same_experiment = experiment == env.get("MLFLOW_EXPERIMENT_NAME")
        argv += ["--event-type", "RunCompleted", "--run-id", target.name, "--experiment-name", experiment,
                 "--experiment-id", (env.get("MLFLOW_EXPERIMENT_ID") if same_experiment else None) or "component"]
    tags = given if source is None else agreed_tags(target, source.tags, given)
    for key, value in tags.items():
        argv += ["--tag", f"{key}={value}"]
    for flag in ("route", "pipeline_id", "branch"):
        if getattr(ns, flag) is not None:
            argv += ["--" + flag.replace("_", "-"), str(getattr(ns, flag))]
    settings = {name: getattr(ns, name) for name in _SETTINGS_PASSED if getattr(ns, name) not in (None, "")}
    if not env.get("AMLRELAY_ALLOWED_WORKSPACES"):
        settings.setdefault("allowed_workspaces", workspace)  # the job's own workspace is the event's source
    if env.get("DEFAULT_IDENTITY_CLIENT_ID") and not env.get("AMLRELAY_MANAGED_IDENTITY_CLIENT_ID"):
        settings.setdefault("managed_identity_client_id", env["DEFAULT_IDENTITY_CLIENT_ID"])
    if env.get("MLFLOW_TRACKING_URI", "").startswith("azureml://") and not env.get("AMLRELAY_MLFLOW_URL"):
        settings.setdefault("mlflow_url", env["MLFLOW_TRACKING_URI"])
    for name, value in settings.items():
        if name == "dry_run":
            argv += ["--dry-run"] if str(value).lower() in ("1", "true", "yes") else []
        else:
            argv += ["--" + name.replace("_", "-"), str(value)]
    return argv


def _given_tags(ns: argparse.Namespace) -> dict[str, str]:
    tags: dict[str, str] = {}
    for tag in ns.tag:
        if "=" not in tag:
            raise ComponentError(f"Tag {tag!r} is not KEY=VALUE.",
                                 hint="Write it as KEY=VALUE, e.g. --tag branch=main.")
        key, value = tag.split("=", 1)
        tags[key] = value
    return tags


def main(argv: Sequence[str] | None = None, *, env: Mapping[str, str] | None = None,
         out: Printer | None = None, reader: SourceReader | None = None) -> int:
    """Run the component: 0 when an ADO run stands for this training run (started now or before), else
    non-zero with ``ERROR:`` lines (1: ADO/identity/ledger trouble, a retry may help; 2: bad inputs)."""
    from ..runbook import main as runbook_main

    emit = out or _print
    environ = os.environ if env is None else env
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        ns = parser().parse_args(args)
        workspace, target = workspace_of(ns, environ), target_of(ns)
    except AmlRelayError as exc:
        return _refused(exc, emit, 2)
    try:
        source = (reader or read_source(ns, environ))(workspace, target)
    except AmlRelayError as exc:  # AML unreachable, no role, no such run: nothing was sent
        return _refused(exc, emit, 1)
    try:
        relay_argv = runbook_argv(ns, environ, source)
    except AmlRelayError as exc:
        return _refused(exc, emit, 2)
    code, lines, outcomes = _relay_until_recorded(relay_argv, ns.busy_wait, emit, runbook_main)
    for line in lines:
        emit(line)
    summary = summarize(outcomes)
    _tag_pipeline_root(relay_argv, environ, summary, emit)
    if ns.output:
        try:
            write_output(Path(ns.output), summary)
        except AmlRelayError as exc:
            emit(f"ERROR: {exc.message} (the ADO run is {summary['ado_run_url'] or 'not started'})")
            emit(f"ERROR: What to do: {exc.hint}")
            return code or 1
    if code == 0 and summary["ado_run_id"] is None and summary["outcome"] != "dry-run":
        reasons = "; ".join(str(o.get("reason")) for o in outcomes if o.get("reason")) or "no outcome"
        emit(f"ERROR: No ADO pipeline run was started for this AML run: {reasons}.")
        emit("ERROR: What to do: name the route (route input), or check the routes' filters against this run.")
        return 1
    return code


def _refused(exc: AmlRelayError, emit: Printer, code: int) -> int:
    emit(f"ERROR: {exc.message}")
    if exc.hint:
        emit(f"ERROR: What to do: {exc.hint}")
    return code


def _tag_pipeline_root(relay_argv: list[str], env: Mapping[str, str], summary: Mapping[str, Any],
                       emit: Printer) -> None:
    """With tag-back on, also tag the pipeline's root run (``AZUREML_ROOT_RUN_ID``): the relay tags the
    training run the event names, but the studio shows a pipeline's tags on its root job. Best effort: a
    failure is a warning (the ledger only owes the training run's tag)."""
    import dataclasses

    from .._manual import parse_manual
    from ..settings import Settings, resolve
    from ._tagback import TagTarget, tag_back_from_settings

    root = env.get("AZUREML_ROOT_RUN_ID")
    run_id = summary.get("ado_run_id")
    if not root or run_id is None or summary.get("event_type") != "RunCompleted":
        return
    try:
        ns = parse_manual(relay_argv)
        params = {f.name: getattr(ns, f.name) for f in dataclasses.fields(Settings)
                  if f.name != "dry_run" and getattr(ns, f.name, None) is not None}
        tag_back = tag_back_from_settings(resolve(params))
    except AmlRelayError as exc:
        emit(f"WARNING: the pipeline run {root!r} was not tagged: {exc.message}")
        return
    if tag_back is None or root == ns.run_id:
        return
    warning = tag_back.apply(TagTarget(ns.workspace, "run", root).to_json(), int(run_id), summary.get("ado_run_url"))
    if warning is not None:
        emit(f"WARNING: pipeline run: {warning.split(' (the tag is retried')[0]} (not retried: tag it by hand if "
             "needed)")


def _relay_until_recorded(relay_argv: list[str], busy_wait: float, emit: Printer,
                          runbook_main: Callable[..., int]) -> tuple[int, list[str], list[dict[str, Any]]]:
    """Run the relay; while another job (the Event Grid handler, racing) holds the claim and has not yet
    recorded its run, look again with backoff, up to ``busy_wait`` seconds. Asking again is safe: the claim
    makes it a duplicate. The step can then hand the *winner's* run id to later steps."""
    waited, delay = 0.0, 1.0
    while True:
        lines: list[str] = []
        code = runbook_main(["trigger_ado_pipeline", *relay_argv], out=lines.append)
        outcomes = [json.loads(line) for line in lines if line.startswith("{")]
        busy = [o for o in outcomes if o.get("outcome") == "duplicate" and not o.get("ado_run_id")]
        if not busy or waited >= busy_wait:
            return code, lines, outcomes
        emit(f"another job is starting the same ADO run ({busy[0].get('reason')}); looking again in {delay:.0f} s")
        time.sleep(delay)
        waited += delay
        delay = min(delay * 2, 15.0, max(busy_wait - waited, 0.1))


def summarize(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    """What later steps read: the (first) ADO run that stands for this AML outcome, and every outcome."""
    standing = [o for o in outcomes if o.get("outcome") in ("triggered", "duplicate") and o.get("ado_run_id")]
    first = standing[0] if standing else (outcomes[0] if outcomes else {})
    return {"outcome": first.get("outcome"), "route": first.get("route"), "ado_run_id": first.get("ado_run_id"),
            "ado_run_url": first.get("ado_run_url"), "event_type": first.get("event_type"), "outcomes": outcomes}


def write_output(folder: Path, summary: Mapping[str, Any]) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / OUTPUT_FILE
        target.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise ComponentError(f"Cannot write the component's output to {folder}: {exc}.",
                                hint="Check the output binding (uri_folder, rw_mount or upload).") from None
    return target


def _print(line: str) -> None:
    print(line, flush=True)
