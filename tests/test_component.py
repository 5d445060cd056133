"""The AML trigger component (components/trigger_ado_pipeline), offline.

* The component and the example pipeline load with azure-ai-ml's own loaders and validate.
* The component runs as AML runs it: its ``command`` from the YAML with the inputs substituted
  (tests/aml_command.py), in a subprocess, with the AML compute's identity endpoint (MSI_ENDPOINT), the
  strict ADO stand-in, Azurite for the ledger; then the Event Grid path (the runbook, with Automation's
  identity) delivers the same run's completion: exactly one ADO run in total, in either order and racing.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from amlrelay.aml._component import ComponentError, read_run_id
from amlrelay.ledger import Ledger
from tests import secret_guard
from tests.aml_command import CommandError, render_command
from tests.conftest import ROOT, ROUTES_FILE, sample
from tests.servers.ado import ADO_RESOURCE
from tests.servers.aml import AmlServer
from tests.servers.aml_identity import AmlComputeIdentityServer
from tests.servers.mlflow import MlflowServer
from tests.servers.tls import TlsMaterial
from tests.stack import PAT, PAT_SECRET, Stack, local_stack
from tests.test_webhook import argv_forms

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")  # azure-ai-ml's noise
COMPONENT_DIR = ROOT / "components" / "trigger_ado_pipeline"
COMPONENT_YML = COMPONENT_DIR / "trigger_ado_pipeline.yml"
PIPELINE_YML = ROOT / "components" / "examples" / "train_and_trigger.yml"
WORKSPACE = ("/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-contoso/providers/"
             "Microsoft.MachineLearningServices/workspaces/contoso-ml")
RUN_ID = "Train_Step_7f3a9c"  # mixed case on purpose: AML run ids are case-sensitive
EXPERIMENT = "amlrelay-example"
ROUTE = "evaluate-trained-model"
MLMODEL = f"""artifact_path: model
flavors:
  python_function:
    env:
      conda: conda.yaml
    loader_module: mlflow.sklearn
    model_path: model.pkl
    python_version: 3.11.7
  sklearn:
    code: null
    pickled_model: model.pkl
    serialization_format: cloudpickle
    sklearn_version: 1.5.1
mlflow_version: 2.16.0
model_size_bytes: 911
model_uuid: 6c1d5b1f2b0e4f1a9f0c7a2d1e3b4c5d
run_id: {RUN_ID}
utc_time_created: '2026-11-30 10:15:02.123456'
"""


def _quiet_sdk() -> None:
    import logging

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    logging.getLogger("azure.ai.ml").setLevel(logging.ERROR)


# ---- the SDK's own offline validation ------------------------------------------------------------------

def test_component_loads_and_validates_with_azure_ai_ml() -> None:
    from azure.ai.ml import MLClient, load_component

    _quiet_sdk()
    component = load_component(source=str(COMPONENT_YML))
    assert component.name == "trigger_ado_pipeline"
    assert component.is_deterministic is False  # a side effect: AML must never reuse a previous run of it

    class NoToken:
        def get_token(self, *scopes: str, **kwargs: Any) -> Any:
            raise AssertionError("validation must stay offline")

    client = MLClient(NoToken(), "00000000-0000-0000-0000-000000000001", "rg-contoso", "contoso-ml")
    result = client.components.validate(component)
    assert result.passed, result.error_messages
    assert {"model", "model_folder", "routes", "ado_organization", "route", "branch", "tag_back"} <= set(
        component.inputs)


def test_example_pipeline_loads_and_ends_with_the_trigger() -> None:
    from azure.ai.ml import load_job
    from azure.ai.ml.entities import PipelineJob

    _quiet_sdk()
    job = load_job(source=str(PIPELINE_YML))
    assert isinstance(job, PipelineJob)
    assert list(job.jobs) == ["train", "trigger"]
    assert job._validate().passed
    trigger = job.jobs["trigger"]
    assert trigger.component.is_deterministic is False
    assert trigger.identity.type == "managed_identity"
    raw = yaml.safe_load(PIPELINE_YML.read_text())
    assert raw["jobs"]["trigger"]["inputs"]["model"] == "${{parent.jobs.train.outputs.model}}"  # runs after train
    assert raw["settings"]["force_rerun"] is True


def test_the_environment_pins_every_runtime_dependency() -> None:
    from importlib.metadata import requires

    runtime = [r for r in requires("amlrelay") or [] if "extra ==" not in r]  # pyproject's dependencies
    wanted = {_name(d) for d in runtime} | {"pyyaml"}
    assert len(wanted) > 5
    conda = yaml.safe_load((COMPONENT_DIR / "environment" / "conda.yml").read_text())
    pip = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    pinned = {line.split("==")[0].lower(): line.split("==")[1] for line in pip if "==" in line}
    assert wanted <= set(pinned), f"not pinned: {sorted(wanted - set(pinned))}"
    assert all(line.count("==") == 1 for line in pip)
    image = yaml.safe_load(COMPONENT_YML.read_text())["environment"]["image"]
    assert not image.endswith(":latest")
    assert ":" in image.rsplit("/", 1)[-1]  # a tag, not whatever the registry serves today


def _name(requirement: str) -> str:
    import re

    return re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower()


# ---- rendering the command as AML does -------------------------------------------------------------------

COMPONENT = {"inputs": {"a": {"type": "string"}, "b": {"type": "string", "optional": True},
                        "n": {"type": "integer", "default": 3}, "flag": {"type": "boolean", "default": False}},
             "outputs": {"out": {"type": "uri_folder"}},
             "command": "run ${{inputs.a}} $[[--b ${{inputs.b}}]] --n ${{inputs.n}} --flag ${{inputs.flag}} "
                        "-o ${{outputs.out}}"}


def test_render_substitutes_and_drops_optional_blocks() -> None:
    assert render_command(COMPONENT, {"a": "x"}, {"out": "/o"}) == "run x --n 3 --flag False -o /o"
    assert render_command(COMPONENT, {"a": "x", "b": "y", "n": 5}, {"out": "/o"}) == (
        "run x --b y --n 5 --flag False -o /o")


@pytest.mark.parametrize(("inputs", "message"), [
    ({}, "inputs.a is required"),
    ({"a": "x", "zzz": 1}, "not declared by the component: zzz"),
])
def test_render_refuses_what_aml_refuses(inputs: dict[str, Any], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        render_command(COMPONENT, inputs, {"out": "/o"})
    with pytest.raises(CommandError, match=r"inputs\.nope is not declared"):
        render_command({**COMPONENT, "command": "x ${{inputs.nope}}"}, {"a": "x"}, {"out": "/o"})


# ---- reading the run id (MLmodel is YAML) ----------------------------------------------------------------

def test_run_id_is_read_from_mlmodel_as_yaml(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "MLmodel").write_text(MLMODEL)
    assert read_run_id(tmp_path / "m") == RUN_ID
    assert read_run_id(tmp_path) == RUN_ID  # a uri_folder holding the model one level down
    assert read_run_id(tmp_path / "m" / "MLmodel") == RUN_ID
    (tmp_path / "q").mkdir()  # quoted and commented: a string scraper would get this wrong
    (tmp_path / "q" / "MLmodel").write_text("# run_id: not-this\nflavors: {}\nrun_id: 'Quoted_Run'  # the run\n")
    assert read_run_id(tmp_path / "q") == "Quoted_Run"


@pytest.mark.parametrize(("content", "message"), [
    ("flavors: {}\n", "has no run_id"),
    ("run_id: [unclosed\n", "not valid YAML"),
    ("run_id: 42\n", "has no run_id"),
    (None, "No MLmodel file"),
])
def test_bad_models_are_refused_clearly(tmp_path: Path, content: str | None, message: str) -> None:
    if content is not None:
        (tmp_path / "MLmodel").write_text(content)
    with pytest.raises(ComponentError, match=message):
        read_run_id(tmp_path)


# ---- the component as AML runs it, and the Event Grid path next to it -------------------------------------

@dataclass
class World:
    stack: Stack
    compute: AmlComputeIdentityServer
    mlflow: MlflowServer
    ledger_env: dict[str, str]
    tmp: Path
    aml: AmlServer
    routes: Path = ROUTES_FILE

    def component_env(self, **extra: str) -> dict[str, str]:
        """What an AML job has, plus only what no component input can carry: the Azurite ledger's
        connection string (an account key: deliberately not an input; the Table-URL path is tested in
        test_everything_through_inputs_…) and the stand-ins' no-wait retry knobs. ADO URL, routes and the
        allowed workspace (the job's own, by default) come from the inputs."""
        kept = (*self.ledger_env, "AMLRELAY_BACKOFF", "AMLRELAY_MAX_RETRY_AFTER", "AMLRELAY_TIMEOUT")
        env = {k: v for k, v in self.stack.env(**self.ledger_env).items()
               if not k.startswith("AMLRELAY_") or k in kept}
        for name in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER"):  # not set on AML compute
            env.pop(name, None)
        env |= self.compute.env() | {
            "AZUREML_ARM_SUBSCRIPTION": "00000000-0000-0000-0000-000000000001",
            "AZUREML_ARM_RESOURCEGROUP": "rg-contoso", "AZUREML_ARM_WORKSPACE_NAME": "contoso-ml",
            "MLFLOW_EXPERIMENT_NAME": EXPERIMENT, "MLFLOW_EXPERIMENT_ID": "0b1c2d3e",
            "AZUREML_RUN_ID": "trigger_step_1", "MLFLOW_RUN_ID": "trigger_step_1",
            # `python` in the command is the environment's interpreter: here, the test's own
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        }
        return env | extra

    def component_command(self, **inputs: Any) -> tuple[str, Path]:
        spec = yaml.safe_load(COMPONENT_YML.read_text())
        model = self.tmp / "model"
        model.mkdir(exist_ok=True)
        (model / "MLmodel").write_text(MLMODEL)
        out = self.tmp / f"ado_run_{len(list(self.tmp.glob('ado_run_*')))}"
        given = {"model": str(model), "ado_organization": "contoso", "routes": str(self.routes),
                 "model_name": "contoso-churn", "arm_url": self.aml.url, "ado_base_url": self.stack.ado.url, **inputs}
        return render_command(spec, given, {"ado_run": str(out)}), out

    def start_component(self, env: dict[str, str] | None = None, **inputs: Any) -> tuple[subprocess.Popen[str], Path]:
        command, out = self.component_command(**inputs)
        process = subprocess.Popen(["bash", "-c", command], cwd=COMPONENT_DIR / "src", env=env or self.component_env(),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return process, out

    def run_component(self, env: dict[str, str] | None = None, **inputs: Any) -> tuple[int, list[str], Any]:
        process, out = self.start_component(env, **inputs)
        return _finish(process, out)

    def event_grid_event(self, run_id: str = RUN_ID) -> dict[str, Any]:
        """The RunCompleted Event Grid sends for a run: its own tags, as the workspace holds them."""
        event = copy.deepcopy(sample("event-grid-schema", "run_completed"))
        event["topic"] = WORKSPACE
        event["subject"] = f"experiments/0b1c2d3e/runs/{run_id}"
        event["data"].update(runId=run_id, experimentName=EXPERIMENT, experimentId="0b1c2d3e",
                             runTags=self.aml.job_tags(run_id), runProperties={})
        return event

    def start_runbook(self, run_id: str = RUN_ID, **overrides: str) -> subprocess.Popen[str]:
        argv = argv_forms([self.event_grid_event(run_id)])["hashtable-split"]
        env = self.stack.env(**self.ledger_env, AMLRELAY_ALLOWED_WORKSPACES=WORKSPACE, **overrides)
        if self.routes != ROUTES_FILE:
            env["AMLRELAY_ROUTES"] = str(self.routes)
        return subprocess.Popen(self.stack.runbook_command(*argv), env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def run_runbook(self, run_id: str = RUN_ID) -> tuple[int, list[str], Any]:
        return _finish(self.start_runbook(run_id), None)


def _finish(process: subprocess.Popen[str], out: Path | None) -> tuple[int, list[str], Any]:
    stdout, stderr = process.communicate(timeout=120)
    secret_guard.record("component/runbook stdout", stdout)
    secret_guard.record("component/runbook stderr", stderr)
    output = json.loads((out / "ado_run.json").read_text()) if out is not None and (out / "ado_run.json").exists() \
        else None
    return process.returncode, stdout.splitlines(), output


@contextmanager
def make_world(azurite: str, table_name: str, tmp_path: Path, *, pat: bool = False,
               tags: dict[str, str] | None = None) -> Iterator[World]:
    """The stand-ins; the workspace holds the completed training run ``RUN_ID`` (tagged as train.py tags it),
    which the component reads with the compute's identity (on the stand-in's own ARM URL)."""
    with local_stack(pat=pat) as stack, AmlComputeIdentityServer() as compute, \
            AmlServer(subscription="00000000-0000-0000-0000-000000000001", resource_group="rg-contoso",
                      workspace="contoso-ml", own_audience=True) as aml, \
            MlflowServer(WORKSPACE, audience=aml.url) as mlflow:
        stack.ado.add_bearer_token(compute.token_for(ADO_RESOURCE))  # the compute's identity may queue builds
        aml.add_job(RUN_ID, "Completed", experiment_name=EXPERIMENT, tags=tags or {"model_name": "contoso-churn"})
        ledger_env = {"AMLRELAY_LEDGER": "true", "AMLRELAY_LEDGER_CONNECTION_STRING": azurite,
                      "AMLRELAY_LEDGER_TABLE": table_name}
        Ledger.from_connection_string(azurite, table=table_name).ensure_table()
        yield World(stack, compute, mlflow, ledger_env, tmp_path, aml)


@pytest.fixture
def world(azurite: str, table_name: str, tmp_path: Path) -> Iterator[World]:
    with make_world(azurite, table_name, tmp_path) as built:
        yield built


def test_the_component_starts_the_pipeline_with_the_computes_identity(world: World) -> None:
    code, lines, output = world.run_component(route=ROUTE)
    assert code == 0, lines
    [run] = world.stack.ado.runs
    assert output["outcome"] == "triggered"
    assert (output["ado_run_id"], output["ado_run_url"]) == (run["id"], run["_links"]["web"]["href"])
    [request] = world.stack.ado.run_requests
    assert request.headers["Authorization"] == f"Bearer {world.compute.token_for(ADO_RESOURCE)}"
    body = request.json
    assert body is not None
    assert body["variables"]["AML_RUN_ID"]["value"] == RUN_ID  # from MLmodel, case kept
    assert body["templateParameters"]["experimentName"] == EXPERIMENT
    token_request = world.compute.token_requests[0]
    assert token_request.query["api-version"] == "2017-09-01"
    assert token_request.headers["secret"] == world.compute.secret
    assert world.stack.identity.requests == []  # the Automation identity is not the component's


def test_component_first_then_event_grid_is_one_run(world: World) -> None:
    code, _, output = world.run_component()  # no route named: the routes' filters pick it, as for Event Grid
    assert code == 0
    code, lines, _ = world.run_runbook()
    assert code == 0, lines
    [record] = [json.loads(line) for line in lines if line.startswith("{")]
    assert (record["outcome"], record["route"], record["ado_run_id"]) == ("duplicate", ROUTE, output["ado_run_id"])
    assert len(world.stack.ado.runs) == 1


def test_event_grid_first_then_component_is_one_run_and_the_output_names_it(world: World) -> None:
    code, lines, _ = world.run_runbook()
    assert code == 0, lines
    code, lines, output = world.run_component(route=ROUTE)
    assert code == 0, lines
    assert output["outcome"] == "duplicate"
    assert output["ado_run_id"] == world.stack.ado.runs[0]["id"]
    assert len(world.stack.ado.runs) == 1


@pytest.mark.parametrize("rounds", [3])
def test_component_and_event_grid_racing_start_one_run(world: World, rounds: int) -> None:
    world.stack.ado.delay(0.5, times=1)  # the first POST is slow, so the other path arrives mid-call
    component, out = world.start_component(route=ROUTE)
    runbooks = [world.start_runbook() for _ in range(rounds - 1)]  # Event Grid redelivers, too
    results = [_finish(component, out)] + [_finish(p, None) for p in runbooks]
    assert all(code == 0 for code, _, _ in results), [lines for _, lines, _ in results]
    assert len(world.stack.ado.runs) == 1
    assert results[0][2]["ado_run_id"] == world.stack.ado.runs[0]["id"]  # the loser waits for the winner's id


def test_failure_fails_the_step_with_a_clear_message_and_an_output(world: World) -> None:
    world.stack.ado.forbid(world.compute.token_for(ADO_RESOURCE))
    code, lines, output = world.run_component(route=ROUTE)
    assert code == 1
    assert output["outcome"] == "failed"
    assert any(line.startswith("ERROR: ") and "Queue builds" in line for line in lines), lines
    assert "Traceback" not in "\n".join(lines)


@pytest.mark.parametrize(("inputs", "message"), [
    ({"run_id": None, "model": None}, "No AML run to report"),
    ({"model_version": "3", "model_name": None}, "needs both model_name and model_version"),
])
def test_bad_inputs_exit_2_before_any_call(world: World, inputs: dict[str, Any], message: str) -> None:
    env = world.component_env()
    command, out = world.component_command()
    spec = yaml.safe_load(COMPONENT_YML.read_text())
    given = {"ado_organization": "contoso", "routes": str(ROUTES_FILE), "model": str(world.tmp / "model"),
             "model_name": "contoso-churn", "arm_url": world.aml.url, "ado_base_url": world.stack.ado.url, **inputs}
    command = render_command(spec, {k: v for k, v in given.items() if v is not None}, {"ado_run": str(out)})
    done = subprocess.run(["bash", "-c", command], cwd=COMPONENT_DIR / "src", env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert any(message in line for line in done.stdout.splitlines()), done.stdout
    assert world.stack.ado.requests == []


def test_component_tags_the_training_run_and_survives_a_tag_outage(world: World) -> None:
    world.mlflow.add_run(RUN_ID)
    world.mlflow.down()
    env = world.component_env(AMLRELAY_MLFLOW_URL=world.mlflow.url)
    code, lines, output = world.run_component(env, route=ROUTE, tag_back=True)
    assert code == 0, lines  # the run stands; the tag is owed
    assert any(line.startswith("WARNING: ") and "tagging AML run" in line for line in lines), lines
    assert len(world.stack.ado.runs) == 1
    world.mlflow.up()
    from amlrelay.aml import TagBack, retry_tags

    ledger = Ledger.from_connection_string(world.ledger_env["AMLRELAY_LEDGER_CONNECTION_STRING"],
                                           table=world.ledger_env["AMLRELAY_LEDGER_TABLE"])
    credential = _compute_credential(world)
    [retried] = retry_tags(ledger, TagBack(credential, mlflow_url=world.mlflow.url, arm_url=world.aml.url))
    assert retried.ok, retried.warning
    assert world.mlflow.run_tags(RUN_ID) == {"amlrelay.ado_run_id": str(output["ado_run_id"]),
                                             "amlrelay.ado_run_url": output["ado_run_url"]}


def test_component_tag_back_writes_the_tags_once_and_tags_the_pipeline_too(world: World) -> None:
    world.mlflow.add_run(RUN_ID)
    world.mlflow.add_run("pipeline_root_1")
    env = world.component_env(AMLRELAY_MLFLOW_URL=world.mlflow.url, AZUREML_ROOT_RUN_ID="pipeline_root_1")
    code, lines, output = world.run_component(env, route=ROUTE, tag_back=True)
    assert code == 0, lines
    expected = {"amlrelay.ado_run_id": str(output["ado_run_id"]), "amlrelay.ado_run_url": output["ado_run_url"]}
    assert world.mlflow.run_tags(RUN_ID) == expected
    assert world.mlflow.run_tags("pipeline_root_1") == expected  # the studio shows a pipeline's tags on its root
    code, _, _ = world.run_component(env, route=ROUTE, tag_back=True)  # a rerun of the step: a duplicate
    assert code == 0
    training = [r for r in world.mlflow.tag_requests if r.json and r.json.get("run_id") == RUN_ID]
    assert len(training) == 2  # the relay tags the training run once, not on the duplicate
    assert len(world.stack.ado.runs) == 1


def test_pipeline_root_tag_failure_is_only_a_warning(world: World) -> None:
    world.mlflow.add_run(RUN_ID)  # the root run is unknown to MLflow: 404 for its tags
    env = world.component_env(AMLRELAY_MLFLOW_URL=world.mlflow.url, AZUREML_ROOT_RUN_ID="pipeline_root_1")
    code, lines, _ = world.run_component(env, route=ROUTE, tag_back=True)
    assert code == 0, lines
    assert any(line.startswith("WARNING: pipeline run:") and "404" in line for line in lines), lines


def _compute_credential(world: World) -> Any:
    """The compute identity's token, as the sweeper's own identity would get one (ARM audience)."""
    from azure.core.credentials import AccessToken

    class Fixed:
        def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
            return AccessToken(world.compute.token_for(scopes[0].removesuffix("/.default")), 4_102_444_800)

    return Fixed()


def test_a_user_assigned_compute_identity_is_used_from_default_identity_client_id(world: World) -> None:
    """AML sets DEFAULT_IDENTITY_CLIENT_ID for a user-assigned identity; the component asks for that one
    (``clientid`` in the 2017 protocol), not the system-assigned one."""
    user_assigned = "55555555-5555-5555-5555-555555555555"
    with AmlComputeIdentityServer(user_assigned={user_assigned: "66666666-6666-6666-6666-666666666666"},
                                  default_client_id=user_assigned) as compute:
        world.stack.ado.add_bearer_token(compute.token_for(ADO_RESOURCE, user_assigned))
        env = world.component_env() | compute.env()
        code, lines, output = world.run_component(env, route=ROUTE)
        assert code == 0, lines
        assert compute.token_requests[0].query["clientid"] == user_assigned
        [request] = world.stack.ado.run_requests
        assert request.headers["Authorization"] == f"Bearer {compute.token_for(ADO_RESOURCE, user_assigned)}"
        assert output["ado_run_id"] == world.stack.ado.runs[0]["id"]


def test_component_arriving_while_event_grid_is_mid_call_waits_for_its_run(world: World) -> None:
    """Deterministic race: the Event Grid job has claimed the key and its POST is in ADO's hands when the
    component starts. The component must not send, and must hand on the winner's run id once recorded."""
    import time

    world.stack.ado.delay(6.0, times=1)  # longer than the component's start, even on a loaded machine
    runbook = world.start_runbook(AMLRELAY_TIMEOUT="30")  # a slow answer, not a timeout
    deadline = time.monotonic() + 60
    while not world.stack.ado.run_requests and time.monotonic() < deadline:
        time.sleep(0.05)  # wait for the runbook's POST to reach ADO: its claim is in the ledger by then
    assert world.stack.ado.run_requests, "the runbook never reached ADO"
    code, lines, output = world.run_component(route=ROUTE)
    runbook_code, runbook_lines, _ = _finish(runbook, None)
    assert (code, runbook_code) == (0, 0), lines + runbook_lines
    assert any("another job is starting the same ADO run" in line for line in lines), lines
    assert output["outcome"] == "duplicate"
    assert output["ado_run_id"] == world.stack.ado.runs[0]["id"]
    assert len(world.stack.ado.runs) == 1
    assert len(world.stack.ado.run_requests) == 1


def test_pat_from_key_vault_read_with_the_computes_identity(azurite: str, table_name: str, tmp_path: Path) -> None:
    with make_world(azurite, table_name, tmp_path, pat=True) as world:
        vault = world.stack.vault
        assert vault is not None
        given_by_inputs = ("AMLRELAY_AUTH", "AMLRELAY_KEY_VAULT_URL", "AMLRELAY_PAT_SECRET_NAME")
        env = {k: v for k, v in world.component_env().items() if k not in given_by_inputs}
        code, lines, output = world.run_component(env, route=ROUTE, auth="pat", key_vault_url=vault.url,
                                                  pat_secret_name=PAT_SECRET)
        assert code == 0, lines
        [request] = world.stack.ado.run_requests
        assert request.headers["Authorization"].startswith("Basic ")
        assert vault.requests, "the PAT was not read from Key Vault"
        assert world.compute.token_requests, "Key Vault was not asked with the compute's identity"
        assert PAT not in "\n".join(lines) + json.dumps(output)


# ---- one ADO run per training pipeline (the example's routes), and the very event Event Grid sends ------------

EXAMPLE_ROUTES = (PIPELINE_YML.parent / yaml.safe_load(PIPELINE_YML.read_text())["inputs"]["routes"]["path"]).resolve()
ROOT_RUN, TRIGGER_RUN = "pipeline_root_1", "trigger_step_1"


def test_the_example_pipeline_starts_one_ado_run_for_its_three_completions(world: World) -> None:
    """Event Grid sends RunCompleted for the training step, the trigger step and the pipeline's root run:
    three run ids, three ledger keys. The example's routes (the file its pipeline YAML binds) take only the
    training run, so with the component that is one ADO run in all; the shipped top-level routes.json,
    which takes every completed run, would start three."""
    world.routes = EXAMPLE_ROUTES
    world.aml.add_job(ROOT_RUN, "Completed", experiment_name=EXPERIMENT, job_type="Pipeline")
    world.aml.add_job(TRIGGER_RUN, "Completed", experiment_name=EXPERIMENT, tags={"project": "amlrelay"})
    trigger_inputs = yaml.safe_load(PIPELINE_YML.read_text())["jobs"]["trigger"]["inputs"]
    assert "route" not in trigger_inputs  # the component applies the route filters, as Event Grid's path does
    code, lines, output = world.run_component(model_name=trigger_inputs["model_name"])
    assert code == 0, lines
    outcomes: dict[str, list[str]] = {}
    for run_id in (RUN_ID, TRIGGER_RUN, ROOT_RUN):
        code, lines, _ = world.run_runbook(run_id)
        assert code == 0, lines
        outcomes[run_id] = [json.loads(line)["outcome"] for line in lines if line.startswith("{")]
    assert outcomes[RUN_ID] == ["duplicate"]
    assert "triggered" not in outcomes[TRIGGER_RUN] + outcomes[ROOT_RUN], outcomes
    assert len(world.stack.ado.runs) == 1
    assert world.stack.ado.runs[0]["id"] == output["ado_run_id"]


@pytest.mark.parametrize("first", ["component", "event-grid"])
def test_either_order_sends_the_same_request_built_from_the_runs_own_tags(
        azurite: str, table_name: str, tmp_path: Path, first: str) -> None:
    """The training run is tagged branch=release (not an input of the component). Whichever path claims the
    ledger first, ADO gets the same request: branch from the run's tag, experiment from the run."""
    bodies: dict[str, tuple[str, Any]] = {}
    for order in ("component", "event-grid"):
        with make_world(azurite, f"{table_name}{order[0]}", tmp_path / order,
                        tags={"model_name": "contoso-churn", "branch": "release"}) as world:
            world.routes = EXAMPLE_ROUTES
            (tmp_path / order).mkdir(exist_ok=True)
            steps: list[Callable[[], tuple[int, list[str], Any]]] = [world.run_component, world.run_runbook]
            for step in steps if order == "component" else steps[::-1]:
                code, lines, _ = step()
                assert code == 0, lines
            [request] = world.stack.ado.run_requests
            bodies[order] = (request.path, request.json)
    assert bodies["component"] == bodies["event-grid"]
    body = bodies[first][1]
    assert body is not None
    assert body["resources"]["repositories"]["self"]["refName"] == "refs/heads/release"
    assert body["variables"]["AML_EXPERIMENT"]["value"] == EXPERIMENT


def test_a_run_that_is_not_completed_is_refused_before_any_call(world: World) -> None:
    world.aml.set_status(RUN_ID, "Running")
    code, lines, output = world.run_component()
    assert code == 2
    assert any(line.startswith("ERROR: ") and "is Running, not Completed" in line for line in lines), lines
    assert world.stack.ado.requests == []
    assert output is None
    assert world.aml.job_gets(RUN_ID), "the run was not read from AML"
    assert world.aml.job_gets(RUN_ID)[0].headers["Authorization"] == (
        f"Bearer {world.compute.token_for(world.aml.url)}")  # the compute's identity, on ARM


def test_input_tags_that_disagree_with_the_run_are_refused(world: World) -> None:
    code, lines, _ = world.run_component(model_name="another-model")
    assert code == 2
    assert any("disagree with AML run" in line and "model_name='another-model'" in line for line in lines), lines
    assert world.stack.ado.requests == []


def test_no_token_for_the_compute_identity_says_how_to_give_the_step_one(world: World) -> None:
    unknown = "77777777-7777-7777-7777-777777777777"  # not assigned to the compute: the endpoint answers 400
    code, lines, _ = world.run_component(managed_identity_client_id=unknown)
    assert code == 1
    assert any(line.startswith("ERROR: No token for ARM") for line in lines), lines
    assert any("What to do: Give the step a managed identity" in line for line in lines), lines
    assert "AzureCLI@2" not in "\n".join(lines)  # the waiter's advice is not the component's
    assert world.stack.ado.requests == []


def test_aml_refusing_the_compute_identity_fails_the_step_with_what_to_do(world: World) -> None:
    from tests.servers.aml_identity import COMPUTE_OBJECT_ID

    world.aml.forbid(COMPUTE_OBJECT_ID)
    code, lines, _ = world.run_component()
    assert code == 1
    assert any("HTTP 403" in line for line in lines), lines
    assert any("jobs/read" in line and "What to do" in line for line in lines), lines
    assert world.stack.ado.requests == []


# ---- as on AML compute: no AMLRELAY_* variables, everything through the component's inputs ----------------

def test_everything_through_inputs_ledger_by_table_url_with_the_computes_identity(
        azurite_oauth: str, loopback_tls: TlsMaterial, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """AML compute has no AMLRELAY_* variables: the component gets ADO, routes, the ledger (a Table URL, no
    key: the compute identity's Storage token, checked by Azurite in oauth mode over HTTPS), the ARM URL and
    tag-back from its inputs, and the MLflow URL from the job's own MLFLOW_TRACKING_URI (AML's azureml://…
    /mlflow/v1.0/… shape). The Event Grid path (the runbook, Automation's identity) then shares that ledger."""
    import uuid

    from tests.servers.identity import CONFLICTING_ENV

    endpoints = dict(part.split("=", 1) for part in azurite_oauth.split(";") if "=" in part)
    table = "t" + uuid.uuid4().hex[:20]
    trust = {"REQUESTS_CA_BUNDLE": str(loopback_tls.cert_file), "SSL_CERT_FILE": str(loopback_tls.cert_file)}
    for name, value in trust.items():
        monkeypatch.setenv(name, value)
    Ledger.from_connection_string(azurite_oauth, table=table).ensure_table()
    with make_world(azurite_oauth, table, tmp_path) as world, \
            MlflowServer(WORKSPACE, audience=world.aml.url, tls=loopback_tls) as mlflow:
        mlflow.add_run(RUN_ID)
        world.routes = EXAMPLE_ROUTES
        env = {k: v for k, v in os.environ.items() if not k.startswith("AMLRELAY_") and k not in CONFLICTING_ENV}
        env |= world.compute.env() | trust | {
            "AZUREML_ARM_SUBSCRIPTION": "00000000-0000-0000-0000-000000000001",
            "AZUREML_ARM_RESOURCEGROUP": "rg-contoso", "AZUREML_ARM_WORKSPACE_NAME": "contoso-ml",
            "MLFLOW_EXPERIMENT_NAME": EXPERIMENT, "MLFLOW_EXPERIMENT_ID": "0b1c2d3e",
            "MLFLOW_TRACKING_URI": mlflow.workspace_tracking_uri, "AZUREML_RUN_ID": TRIGGER_RUN,
            "PYTHONPATH": str(ROOT / "src"),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        assert not [k for k in env if k.startswith("AMLRELAY_")]
        code, lines, output = world.run_component(
            env, ado_base_url=world.stack.ado.url, ledger_table_url=endpoints["TableEndpoint"], ledger_table=table,
            tag_back=True)
        assert code == 0, lines
        [run] = world.stack.ado.runs
        assert output["ado_run_id"] == run["id"]
        storage = [r for r in world.compute.token_requests if r.query.get("resource") == "https://storage.azure.com"]
        assert storage, "the ledger was not opened with the compute's identity"
        assert mlflow.run_tags(RUN_ID) == {"amlrelay.ado_run_id": str(run["id"]),
                                           "amlrelay.ado_run_url": run["_links"]["web"]["href"]}
        assert all("/mlflow/v2.0/" in r.path for r in mlflow.tag_requests)
        runbook_env = world.stack.env(AMLRELAY_LEDGER="true", AMLRELAY_LEDGER_TABLE_URL=endpoints["TableEndpoint"],
                                      AMLRELAY_LEDGER_TABLE=table, AMLRELAY_ALLOWED_WORKSPACES=WORKSPACE,
                                      AMLRELAY_ROUTES=str(EXAMPLE_ROUTES), **trust)
        argv = argv_forms([world.event_grid_event()])["hashtable-split"]
        runbook = subprocess.Popen(world.stack.runbook_command(*argv), env=runbook_env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        code, lines, _ = _finish(runbook, None)
        assert code == 0, lines
        [record] = [json.loads(line) for line in lines if line.startswith("{")]
        assert (record["outcome"], record["ado_run_id"]) == ("duplicate", run["id"])
        assert len(world.stack.ado.runs) == 1


def test_a_model_registration_is_reported_with_the_versions_own_tags(world: World) -> None:
    """With model_version the component reports the registration (ModelRegistered), whose modelTags Event Grid
    takes from the version: read from AML (models/versions GET), as for a run."""
    world.aml.add_model_version("contoso-churn", "3", tags={"area": "vision"})
    code, lines, output = world.run_component(model_version="3", route="deploy-registered-model")
    assert code == 0, lines
    assert output["event_type"] == "ModelRegistered"
    [request] = world.stack.ado.run_requests
    assert request.json is not None
    assert request.json["templateParameters"]["area"] == "vision"  # {{ modelTags.area | general }}
    assert request.json["templateParameters"]["modelVersion"] == "3"
    assert any(r.path.endswith("/models/contoso-churn/versions/3") for r in world.aml.requests)
