"""What the trigger component reports, and what AML says about it: the run id from the model's MLmodel
(YAML, not scraped), and the run's (or model version's) own tags, experiment and status read with the
compute's identity — so the component's event is the one Event Grid sends for that run."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ._errors import AmlError, ComponentError

_MLMODEL_DEPTH = 2  # a uri_folder may hold the MLflow model one level down (e.g. <folder>/model/MLmodel)


def read_run_id(model: str | Path) -> str:
    """``run_id`` of an MLflow model: MLmodel is YAML, so it is parsed as such (not scraped). ``model`` is
    the model folder, a folder holding it, or the MLmodel file itself."""
    import yaml

    path = _find_mlmodel(Path(model))
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ComponentError(f"{path} is not valid YAML{where}.",
                             hint="Pass the folder of an MLflow model (mlflow.<flavor>.save_model / log_model).") \
            from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ComponentError(f"Cannot read {path}: {exc}.", hint="Check the model input.") from None
    run_id = document.get("run_id") if isinstance(document, dict) else None
    if not isinstance(run_id, str) or not run_id.strip():
        raise ComponentError(f"{path} has no run_id: the model was not logged from an MLflow run.",
                             hint="Log the model inside the training run (mlflow.<flavor>.log_model), or pass "
                             "run_id to the component.")
    return run_id.strip()


def _find_mlmodel(root: Path) -> Path:
    if root.is_file():
        return root
    if not root.is_dir():
        raise ComponentError(f"The model input {root} does not exist.",
                             hint="Bind the training step's model output to the component's model input.")
    level = [root]
    for _ in range(_MLMODEL_DEPTH):
        found = sorted(d / "MLmodel" for d in level if (d / "MLmodel").is_file())
        if len(found) > 1:
            raise ComponentError(f"Several MLflow models under {root}: {', '.join(map(str, found))}.",
                                 hint="Pass the one model's folder, or run_id.")
        if found:
            return found[0]
        level = sorted(c for d in level for c in d.iterdir() if c.is_dir())
    raise ComponentError(f"No MLmodel file in {root}.",
                         hint="Pass an MLflow model folder (mlflow_model), or give run_id for a plain folder.")


@dataclass(frozen=True)
class Source:
    """What AML says about the entity the event reports (read with the compute's identity): the event's
    tags, experiment and status come from here, as Event Grid's do."""

    tags: dict[str, str]
    experiment_name: str | None = None
    status: str | None = None


SourceReader = Callable[[str, "Target"], Source]


@dataclass(frozen=True)
class Target:
    """The entity to report: a run (``name`` = run id) or a model version."""

    kind: str  # "run" or "model"
    name: str
    version: str | None = None


def target_of(ns: argparse.Namespace) -> Target:
    if ns.model_version is not None:
        if not ns.model_name:
            raise ComponentError("A model registration needs both model_name and model_version.",
                                 hint="Give both, or no model_version to report the training run.")
        return Target("model", ns.model_name, ns.model_version)
    run_id = ns.run_id or (read_run_id(ns.model) if ns.model else None)
    if not run_id:
        raise ComponentError("No AML run to report: neither a model with an MLmodel file nor run_id.",
                             hint="Bind the training step's mlflow_model output to model.")
    return Target("run", run_id)


def read_source(ns: argparse.Namespace, env: Mapping[str, str]) -> SourceReader:
    """Reads the run (``Jobs_Get``) or model version through :class:`amlrelay.aml.JobsClient` with the compute's
    managed identity (``DEFAULT_IDENTITY_CLIENT_ID`` when AML sets it), on ARM (``arm_url``, default public)."""

    def read(workspace: str, target: Target) -> Source:
        from ..auth import managed_identity
        from ._client import JobsClient
        from ._contract import DEFAULT_ARM_URL

        client_id = ns.managed_identity_client_id or env.get("DEFAULT_IDENTITY_CLIENT_ID") or None
        client = JobsClient(workspace, managed_identity(client_id), arm_url=ns.arm_url or DEFAULT_ARM_URL,
                            audience=ns.arm_audience or None, retries=3, max_retry_after=30.0)
        try:
            if target.kind == "model":
                version = client.get_model_version(target.name, target.version or "")
                return Source(dict(version.tags))
            job = client.get_job(target.name)
        except AmlError as exc:
            if exc.code != "NoArmToken":
                raise
            raise AmlError(exc.message, status=None, code=exc.code, hint="Give the step a managed identity "
                           "(identity: {type: managed} on the step, an identity on the compute cluster; a "
                           "user-assigned one through managed_identity_client_id) with a role that may read "
                           "the workspace's jobs, e.g. AzureML Data Scientist.") from None
        return Source(dict(job.tags), job.experiment_name, job.status_text or str(job.status))

    return read


def agreed_tags(target: Target, actual: dict[str, str], given: dict[str, str]) -> dict[str, str]:
    """The entity's own tags; an input tag it lacks, or has with another value, is refused: Event Grid would
    send the entity's tags, so the two paths would start different ADO requests."""
    wrong = {k: v for k, v in given.items() if actual.get(k) != v}
    if wrong:
        what = "run" if target.kind == "run" else "model version"
        listed = ", ".join(f"{k}={v!r} (the {what} has {actual[k]!r})" if k in actual else f"{k}={v!r} (not on "
                           f"the {what})" for k, v in sorted(wrong.items()))
        raise ComponentError(f"The component's tags disagree with AML {what} {target.name!r}: {listed}.",
                             hint="Set the tags in training (mlflow.set_tag) or at registration, and drop them "
                             "from the component's inputs (model_name is a tag too): Event Grid sends the "
                             f"{what}'s own tags, and both paths must send the same event.")
    return actual
