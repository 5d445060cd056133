"""``amlrelay aml submit`` / ``submit-and-wait``: submission through azure-ai-ml (the real SDK against the AML
stand-in over TLS, ``load_job`` of the example YAML, an injected submitter), and its refusals.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from amlrelay.aml import AmlError
from amlrelay.aml._cli import run
from amlrelay.aml._submit import Submission, Submitted, sdk_submitter
from amlrelay.cli import _parser
from tests.aml_waiting import TOY_JOB, FakeClock, cli
from tests.servers.aml import AmlServer
from tests.servers.identity import CONFLICTING_ENV, IdentityServer

pytestmark = pytest.mark.usefixtures("agent_temp")


# -- submit --------------------------------------------------------------------------------------------------------
def test_submit_and_wait_with_an_injected_submitter(aml_server: AmlServer, aml_credential: Any) -> None:
    calls: list[Submission] = []

    def submitter(request: Submission) -> Submitted:
        calls.append(request)
        aml_server.add_job("toy-train-1", "NotStarted", tags=request.tags)
        return Submitted("toy-train-1", "https://ml.azure.com/runs/toy-train-1", "NotStarted")

    clock = FakeClock()
    clock.at(300, lambda: aml_server.set_status("toy-train-1", "Completed"))
    result = cli(aml_server, clock, "submit-and-wait", str(TOY_JOB), "--experiment", "pr-42", "--tag",
                 "ado.buildId=1234", credential=aml_credential, submitter=submitter)
    assert result.code == 0
    assert calls == [Submission(TOY_JOB, "pr-42", {"ado.buildId": "1234"}, None)]
    assert result.outputs()["amlJobName"] == "toy-train-1"


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")  # azure-ai-ml's noise
def test_a_refused_second_job_file_does_not_orphan_the_first(aml_server: AmlServer, aml_credential: Any) -> None:
    """Two job files, the second refused by AML: the first job runs on, so its name and a wait token are
    published before the step fails, and a later step can wait for it (or cancel it) without resubmitting."""

    submitted: list[str] = []

    def submitter(request: Submission) -> Submitted:
        if submitted:
            raise AmlError("AML refused to create the job from 'second.yml': compute not found", status=400,
                           code="SubmitRefused", hint="Check the compute name.")
        submitted.append("first-1")
        aml_server.add_job("first-1", "Running")
        return Submitted("first-1", "https://ml.azure.com/runs/first-1", "NotStarted")

    clock = FakeClock()
    result = cli(aml_server, clock, "submit-and-wait", str(TOY_JOB), str(TOY_JOB), credential=aml_credential,
                 submitter=submitter)
    assert result.code == 6
    out = result.outputs()
    assert out["amlJobNames"] == "first-1"
    assert "submitted before the failure and still running: first-1" in result.text()
    aml_server.set_status("first-1", "Completed")
    assert cli(aml_server, clock, "wait", "--resume", out["amlWaitToken"], credential=aml_credential).code == 0


def test_sdk_submitter_loads_the_yaml_and_calls_create_or_update(aml_server: AmlServer, aml_credential: Any) -> None:
    pytest.importorskip("azure.ai.ml")  # the [aml] extra; installed by the dev extra, so CI runs this

    class Jobs:
        def __init__(self) -> None:
            self.calls: list[tuple[Any, dict[str, Any]]] = []

        def create_or_update(self, job: Any, **kwargs: Any) -> Any:
            self.calls.append((job, kwargs))
            job.name = "toy-train-abc"
            return job

    class FakeMLClient:
        jobs = Jobs()

    from amlrelay.aml import Workspace

    submit = sdk_submitter(Workspace.parse(aml_server.workspace_id), aml_credential, ml_client=FakeMLClient())
    done = submit(Submission(TOY_JOB, "pr-42", {"ado.buildId": "7"}))
    ((job, kwargs),) = FakeMLClient.jobs.calls
    assert type(job).__name__ == "Command"
    assert job.compute == "cpu-cluster"
    assert kwargs == {"experiment_name": "pr-42", "tags": {"purpose": "build-validation", "ado.buildId": "7"}}
    assert done.name == "toy-train-abc"


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")  # azure-ai-ml's noise
def test_submit_refuses_a_missing_or_invalid_job_file(aml_server: AmlServer, aml_credential: Any, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("azure.ai.ml")
    assert cli(aml_server, FakeClock(), "submit", str(tmp_path / "none.yml"), credential=aml_credential).code == 2
    bad = tmp_path / "bad.yml"
    bad.write_text("type: command\ncommand: [unclosed\n")
    assert cli(aml_server, FakeClock(), "submit", str(bad), credential=aml_credential).code == 2
    assert "could not load job file" in capsys.readouterr().err


def test_submit_without_the_sdk_says_how_to_install_it(aml_server: AmlServer, aml_credential: Any,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "azure.ai.ml", None)
    assert cli(aml_server, FakeClock(), "submit", str(TOY_JOB), credential=aml_credential).code == 2
    assert "amlrelay[aml]" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")  # azure-ai-ml's noise
def test_submit_and_wait_through_the_real_sdk(tmp_path: Path, loopback_tls: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """azure-ai-ml's own ``create_or_update`` PUTs the job to the stand-in (HTTPS: azure-core sends bearer
    tokens only over TLS), as a custom cloud whose ARM endpoint is the stand-in; then amlrelay waits for it."""
    pytest.importorskip("azure.ai.ml")
    from tests.servers.identity import KNOWN_RESOURCES

    job_file = tmp_path / "job.yml"  # no local code: uploading it needs a datastore the stand-in lacks
    job_file.write_text("type: command\ncommand: python -c 'print(1)'\n"
                        "environment: azureml:AzureML-sklearn-1.0-ubuntu20.04-py38-cpu:1\n"
                        "compute: azureml:cpu-cluster\ntags:\n  purpose: build-validation\n")
    with AmlServer(tls=loopback_tls, own_audience=True) as aml, \
            IdentityServer(resources={*KNOWN_RESOURCES, aml.url}) as identity:
        for name in CONFLICTING_ENV:
            monkeypatch.delenv(name, raising=False)
        ca = str(loopback_tls.cert_file)
        env = {**identity.env(), "REQUESTS_CA_BUNDLE": ca, "SSL_CERT_FILE": ca, "AZUREML_CURRENT_CLOUD": "AzureCloud"}
        for name, value in env.items():
            monkeypatch.setenv(name, value)  # setenv also restores what the SDK changes (AZUREML_CURRENT_CLOUD)
        clock = FakeClock()

        def finish_all() -> None:
            for job in aml.job_names():
                aml.set_status(job, "Completed")

        clock.at(600, finish_all)
        ns = _parser().parse_args(["aml", "submit-and-wait", str(job_file), "--workspace", aml.workspace_id,
                                   "--arm-url", aml.url, "--credential", "managed-identity", "--ado", "on",
                                   "--experiment", "pr-7", "--tag", "ado.buildId=9"])
        lines: list[str] = []
        code = run(ns, clock=clock, out=lines.append)
        (put,) = [r for r in aml.requests if r.method == "PUT"]
    assert code == 0, "\n".join(lines)
    body = put.json["properties"]
    assert (body["jobType"], body["experimentName"]) == ("Command", "pr-7")
    assert body["tags"] == {"purpose": "build-validation", "ado.buildId": "9"}
    name = put.path.rsplit("/", 1)[1]
    assert any(line == f"##vso[task.setvariable variable=amlJobName;isOutput=true;isSecret=false]{name}"
               for line in lines)
