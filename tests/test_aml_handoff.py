"""``--handoff-after``: still-running jobs are tagged ``amlrelay-handoff: <route>`` through AML's MLflow endpoint,
the step ends with exit 5, and the relay routes the tagged run's completion event to the next pipeline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.aml_waiting import ROOT, FakeClock, cli
from tests.servers.aml import AmlServer
from tests.servers.mlflow import MlflowServer

pytestmark = pytest.mark.usefixtures("agent_temp")


# -- hand-off -------------------------------------------------------------------------------------------------------
def test_handoff_tags_the_job_and_exits_5(aml_server: AmlServer, mlflow_server: MlflowServer,
                                          aml_credential: Any) -> None:
    aml_server.add_job("long", "Running", tags={"purpose": "build-validation"})
    mlflow_server.add_run("long", {"purpose": "build-validation"})
    clock = FakeClock()
    result = cli(aml_server, clock, "wait", "long", "--handoff-after", "50m", "--handoff-route", "evaluate-after-ci",
                 credential=aml_credential)
    assert result.code == 5
    assert 3000 <= clock.elapsed <= 3001
    assert mlflow_server.run_tags("long") == {"purpose": "build-validation", "amlrelay-handoff": "evaluate-after-ci"}
    assert result.outputs()["amlOutcome"] == "handed-off"
    assert any(line.startswith("##vso[task.logissue type=warning]AML job long handed off")
               for _, line in result.lines)
    assert aml_server.cancels() == []  # the job keeps running


def test_handoff_budget_counts_from_the_agent_job_start(aml_server: AmlServer, mlflow_server: MlflowServer,
                                                        aml_credential: Any) -> None:
    """Installing and submitting took 20 min of a 60-min job: with --agent-job-start the hand-off comes 30 min
    into the wait (50 min into the job), not 50 min into the wait, when the agent would already be gone."""
    aml_server.add_job("long", "Running")
    mlflow_server.add_run("long")
    clock = FakeClock()
    job_start = clock.now - 20 * 60
    result = cli(aml_server, clock, "wait", "long", "--handoff-after", "50m", "--handoff-route", "ci-handoff",
                 "--agent-job-start", str(job_start), credential=aml_credential)
    assert result.code == 5
    assert 30 * 60 <= clock.elapsed <= 30 * 60 + 1


def test_a_job_that_finishes_at_the_handoff_point_is_not_handed_off(aml_server: AmlServer,
                                                                    mlflow_server: MlflowServer,
                                                                    aml_credential: Any) -> None:
    aml_server.add_job("j", "Running")
    mlflow_server.add_run("j")
    clock = FakeClock()
    clock.at(3000, lambda: aml_server.set_status("j", "Completed"))
    result = cli(aml_server, clock, "wait", "j", "--handoff-after", "50m", "--handoff-route", "ci-handoff",
                 credential=aml_credential)
    assert result.code == 0
    assert mlflow_server.tag_requests == []


def test_handoff_that_cannot_tag_fails_the_step(aml_server: AmlServer, mlflow_server: MlflowServer,
                                                aml_credential: Any, capsys: pytest.CaptureFixture[str]) -> None:
    aml_server.add_job("long", "Running")  # no MLflow run: the tag is refused with RESOURCE_DOES_NOT_EXIST
    result = cli(aml_server, FakeClock(), "wait", "long", "--handoff-after", "10m", "--handoff-route", "ci-handoff",
                 credential=aml_credential)
    assert result.code == 6
    assert "NOT handed off" in result.text()
    assert "RESOURCE_DOES_NOT_EXIST" in capsys.readouterr().err


def test_the_relay_routes_the_handed_off_run_when_it_completes(aml_server: AmlServer, mlflow_server: MlflowServer,
                                                               aml_credential: Any, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end: hand-off tags the run; AML's RunCompleted then carries the tag in data.runTags; a route that
    filters on runTags.amlrelay-handoff starts the continuation pipeline with the run's identity."""
    from amlrelay.events import parse_events
    from amlrelay.routes import load_routes
    from amlrelay.runbook import build_relay
    from amlrelay.settings import resolve
    from tests.conftest import sample
    from tests.servers.ado import PipelineDef
    from tests.stack import local_stack

    aml_server.add_job("train-7", "Running", experiment_name="build-validation")
    mlflow_server.add_run("train-7")
    assert cli(aml_server, FakeClock(), "wait", "train-7", "--handoff-after", "5m", "--handoff-route",
               "ci-handoff", credential=aml_credential).code == 5
    routes = tmp_path / "routes.json"
    routes.write_text(json.dumps({"version": 1, "defaults": {"project": "mlops"}, "routes": [
        {"name": "continue-handed-off-run", "events": ["RunCompleted", "RunStatusChanged"],
         "filters": {"runStatus": {"in": ["Completed"]}, "runTags.amlrelay-handoff": {"in": ["ci-handoff"]}},
         "pipeline": {"id": 41, "templateParameters": {"runId": "{{ runId }}",
                                                         "experimentName": "{{ experimentName }}"}}}]}))
    event = sample("event-grid-schema", "run_completed")
    event["data"].update({"runId": "train-7", "experimentName": "build-validation",
                          "runTags": mlflow_server.run_tags("train-7")})
    untagged = json.loads(json.dumps(event))
    untagged["id"], untagged["data"]["runId"], untagged["data"]["runTags"] = "other", "other-run", {}
    with local_stack(routes) as stack:
        # pipeline 41 is pipelines/relay-triggered.yml: ADO accepts only the parameters its YAML declares
        declared = yaml.safe_load((ROOT / "pipelines" / "relay-triggered.yml").read_text(encoding="utf-8"))
        stack.ado.add_pipeline("mlops", 41, PipelineDef(
            name="relay-triggered", template_parameters=frozenset(p["name"] for p in declared["parameters"]),
            parameter_types={p["name"]: p["type"] for p in declared["parameters"]}))
        env = stack.env()
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        relay = build_relay(resolve({}, env=env), load_routes(routes))
        outcomes = relay.handle(parse_events([event, untagged]), raw=[event, untagged])
        runs = stack.ado.runs
    assert [(o.outcome, o.route) for o in outcomes] == [("triggered", "continue-handed-off-run"), ("skipped", None)]
    assert len(runs) == 1
    assert runs[0]["templateParameters"] == {"runId": "train-7", "experimentName": "build-validation"}


def test_handoff_without_a_route_only_ends_this_agent_job(aml_server: AmlServer, mlflow_server: MlflowServer,
                                                          aml_credential: Any) -> None:
    aml_server.add_job("long", "Running")
    mlflow_server.add_run("long")
    result = cli(aml_server, FakeClock(), "wait", "long", "--handoff-after", "55m", "--handoff-route", "",
                 credential=aml_credential)
    assert result.code == 5
    assert mlflow_server.tag_requests == []
    assert result.outputs()["amlWaitToken"]


def test_handoff_without_a_named_route_is_refused(aml_server: AmlServer, aml_credential: Any,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A default tag value no shipped route filters on would end the step 'handed off' with nothing to continue."""
    aml_server.add_job("long", "Running")
    result = cli(aml_server, FakeClock(), "wait", "long", "--handoff-after", "50m", credential=aml_credential)
    assert result.code == 2
    assert "--handoff-after needs --handoff-route" in capsys.readouterr().err
    assert aml_server.requests == []


class FinishingMlflow(MlflowServer):
    """AML's MLflow endpoint, plus the job finishing right as the tag lands (the hand-off race)."""

    def __init__(self, workspace_id: str, aml: AmlServer) -> None:
        super().__init__(workspace_id)
        self.aml = aml

    def handle(self, request: Any) -> Any:
        reply = super().handle(request)
        if request.path.endswith("/runs/set-tag"):
            self.aml.set_status(request.json["run_id"], "Completed")
        return reply


def test_a_job_finishing_during_the_handoff_is_reported(aml_server: AmlServer, aml_credential: Any) -> None:
    with FinishingMlflow(aml_server.workspace_id, aml_server) as mlflow:
        aml_server.tracking_uri = mlflow.tracking_url
        aml_server.add_job("racy", "Running")
        mlflow.add_run("racy")
        result = cli(aml_server, FakeClock(), "wait", "racy", "--handoff-after", "50m", "--handoff-route",
                     "ci-handoff", credential=aml_credential)
    assert result.code == 5  # the tag is written: the relay may well continue, so the step does not redo it
    warnings = [line for _, line in result.lines if line.startswith("##vso[task.logissue type=warning]")]
    assert any("became Completed while it was being handed off" in w for w in warnings)
