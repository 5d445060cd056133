"""``amlrelay aml wait``: every status, both deadlines, cancel, backoff, heartbeat, several jobs, resume from a
token, errors, exit codes, logging commands and credentials, against the AML stand-in with a fake clock.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from amlrelay.aml import EXIT_INTERNAL, EXIT_RESUMABLE, JobsClient, JobStatus, WaitOptions, WaitOutcome, begin_wait
from amlrelay.aml._ado import escape_property, log_issue, set_output
from amlrelay.aml._cli import _PIPELINES_ENV, OUTPUT_VARIABLES, _credential, duration, run
from amlrelay.aml._submit import Submission, Submitted
from amlrelay.cli import _parser
from tests.aml_waiting import TOY_JOB, FakeClock, cli
from tests.servers.aml import ARM_RESOURCE, AmlServer
from tests.servers.identity import IdentityServer
from tests.servers.mlflow import MlflowServer

QUEUED_STATES = ["NotStarted", "Starting", "Provisioning", "Preparing", "Queued"]
RUNNING_STATES = ["Running", "Finalizing", "CancelRequested", "NotResponding", "Paused", "Unknown"]

pytestmark = pytest.mark.usefixtures("agent_temp")
_WORKSPACE = ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-contoso-ml/providers/"
              "Microsoft.MachineLearningServices/workspaces/mlw-contoso")


# -- the happy path, the outputs, no real waiting -------------------------------------------------------------
def test_completed_job_sets_outputs_and_exits_0(aml_server: AmlServer, aml_credential: Any) -> None:
    aml_server.add_job("train-1", "Queued", experiment_name="toy")
    clock = FakeClock()
    clock.at(120, lambda: aml_server.set_status("train-1", "Running"))
    clock.at(3 * 3600, lambda: aml_server.set_status("train-1", "Completed"))
    result = cli(aml_server, clock, "wait", "train-1", credential=aml_credential)
    assert result.code == 0
    out = result.outputs()
    assert (out["amlJobName"], out["amlJobStatus"], out["amlOutcome"], out["amlExitCode"]) == (
        "train-1", "Completed", "completed", "0")
    assert out["amlStudioUrl"].startswith("https://ml.azure.com/runs/train-1")
    assert set(out) == set(OUTPUT_VARIABLES)
    summary = next(line for _, line in result.lines if line.startswith("##vso[task.uploadsummary]"))
    text = Path(summary.split("]", 1)[1]).read_text(encoding="utf-8")
    assert f"| train-1 | Completed | completed | [studio]({out['amlStudioUrl']}) |" in text
    assert 3 * 3600 <= clock.elapsed <= 3 * 3600 + 30  # noticed within one capped poll interval
    assert len(aml_server.job_gets("train-1")) <= 3 * 3600 / 30 + 10  # one GET per 30 s cap; a 15 s loop: 720


def test_heartbeat_at_least_every_minute_even_with_slow_polls(aml_server: AmlServer, aml_credential: Any) -> None:
    aml_server.add_job("j", "Running")
    clock = FakeClock()
    clock.at(2 * 3600, lambda: aml_server.set_status("j", "Completed"))
    result = cli(aml_server, clock, "wait", "j", "--poll-max", "10m", credential=aml_credential)
    assert result.code == 0
    times = [t for t, _ in result.lines]
    assert max(b - a for a, b in itertools.pairwise(times)) <= 60
    beats = [line for _, line in result.lines if line.startswith("[heartbeat]")]
    assert len(beats) >= 100
    assert "j Running (running 1h" in beats[70]
    assert "next poll in" in beats[70]


def test_heartbeat_over_a_minute_is_refused(aml_server: AmlServer, aml_credential: Any) -> None:
    aml_server.add_job("j", "Running")
    result = cli(aml_server, FakeClock(), "wait", "j", "--heartbeat", "5m", credential=aml_credential)
    assert result.code == 2
    assert aml_server.requests == []


def test_backoff_grows_to_the_cap_and_resets_on_a_change(aml_server: AmlServer, aml_credential: Any) -> None:
    aml_server.add_job("j", "Running")
    clock = FakeClock()
    gets: list[float] = []
    client = JobsClient(aml_server.workspace_id, aml_credential, arm_url=aml_server.arm_url, audience=ARM_RESOURCE)
    original = client.get_job

    def timed(name: str) -> Any:
        gets.append(clock.elapsed)
        return original(name)

    client.get_job = timed  # type: ignore[method-assign]
    clock.at(1800, lambda: aml_server.set_status("j", "Finalizing"))
    clock.at(2400, lambda: aml_server.set_status("j", "Completed"))
    result = begin_wait(client, ["j"], WaitOptions(poll_min=5, poll_max=60, backoff=1.5), clock=clock).result()
    assert result.outcome is WaitOutcome.COMPLETED
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(gets)]
    assert gaps[:5] == [5, 7.5, 11.25, 16.875, 25.312]
    assert max(gaps) == 60
    after_change = next(i for i, t in enumerate(gets) if t > 1800)
    assert gaps[after_change] == 5  # back to poll-min once Finalizing was seen


def test_public_names_do_not_clash_with_the_relay() -> None:
    """``from amlrelay.aml import *`` next to ``amlrelay.record``: no second ``Outcome``; the type of
    ``WaitResult.jobs`` items is public."""
    import amlrelay.aml as aml
    import amlrelay.record as record

    assert not set(aml.__all__) & {"Outcome"}
    assert aml.WaitOutcome.__name__ != record.Outcome.__name__
    assert aml.JobResult("j").name == "j"
    assert {"JobResult", "WaitOutcome", "waiter_client"} <= set(aml.__all__)
    with pytest.raises(AttributeError):
        getattr(aml, "Outcome")  # noqa: B009


def test_the_relay_uses_the_aml_subpackage_through_its_public_surface() -> None:
    """Subpackages keep their modules private: the runbook and the relay import amlrelay.aml, not aml._x (the
    CLI's COMMAND_GROUPS names the _cli modules by design)."""
    import re as regex

    source = Path(__file__).resolve().parent.parent / "src" / "amlrelay"
    for name in ("runbook.py", "relay.py"):
        text = (source / name).read_text(encoding="utf-8")
        assert regex.findall(r"from (?:\.|amlrelay\.)aml\._\w+ import", text) == [], name


# -- every status -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("status", "code", "outcome"), [("Completed", 0, "completed"), ("Failed", 1, "failed"),
                                                          ("Canceled", 3, "canceled")])
def test_final_statuses(aml_server: AmlServer, aml_credential: Any, status: str, code: int, outcome: str) -> None:
    aml_server.add_job("j", "Running")
    clock = FakeClock()
    clock.at(600, lambda: aml_server.set_status("j", status))
    result = cli(aml_server, clock, "wait", "j", credential=aml_credential)
    assert (result.code, result.outputs()["amlOutcome"], result.outputs()["amlJobStatus"]) == (code, outcome, status)
    issues = [line for _, line in result.lines if line.startswith("##vso[task.logissue type=error]")]
    assert len(issues) == (0 if status == "Completed" else 1)


@pytest.mark.parametrize("status", [*QUEUED_STATES, *RUNNING_STATES, "Hibernating"])
def test_non_final_statuses_are_waited_on(aml_server: AmlServer, aml_credential: Any, status: str) -> None:
    aml_server.add_job("j", "NotStarted")
    aml_server.set_status("j", status, allow_unknown=True)
    clock = FakeClock()
    clock.at(1200, lambda: aml_server.set_status("j", "Completed"))
    result = cli(aml_server, clock, "wait", "j", credential=aml_credential)
    assert result.code == 0
    assert clock.elapsed >= 1200
    if status in ("Unknown", "Hibernating"):
        assert "not one amlrelay knows" in result.text()
    assert JobStatus.COMPLETED.value in result.outputs()["amlJobStatus"]


def test_paused_is_final_only_when_asked(aml_server: AmlServer, aml_credential: Any) -> None:
    aml_server.add_job("j", "Paused")
    result = cli(aml_server, FakeClock(), "wait", "j", "--paused-is-final", credential=aml_credential)
    assert (result.code, result.outputs()["amlOutcome"]) == (1, "failed")


def test_not_responding_is_capped_but_may_recover(aml_server: AmlServer, aml_credential: Any) -> None:
    aml_server.add_job("stuck", "NotResponding")
    clock = FakeClock()
    stuck = cli(aml_server, clock, "wait", "stuck", "--not-responding-timeout", "20m", credential=aml_credential)
    assert stuck.code == 4
    assert 1200 <= clock.elapsed <= 1200 + 60
    aml_server.add_job("back", "NotResponding")
    clock = FakeClock()
    clock.at(900, lambda: aml_server.set_status("back", "Running"))
    clock.at(1500, lambda: aml_server.set_status("back", "NotResponding"))
    clock.at(2400, lambda: aml_server.set_status("back", "Completed"))
    back = cli(aml_server, clock, "wait", "back", "--not-responding-timeout", "20m", credential=aml_credential)
    assert back.code == 0


# -- deadlines and cancel -----------------------------------------------------------------------------------------
def test_queue_deadline(aml_server: AmlServer, aml_credential: Any) -> None:
    aml_server.add_job("j", "Queued")
    clock = FakeClock()
    result = cli(aml_server, clock, "wait", "j", "--queue-timeout", "30m", "--run-timeout", "10h",
                 credential=aml_credential)
    assert (result.code, result.outputs()["amlOutcome"]) == (4, "timed-out")
    assert 1800 <= clock.elapsed <= 1801  # woken for the deadline, not at the next poll
    assert "queue deadline 30m00s" in result.text()
    assert aml_server.cancels() == []


def test_queue_deadline_sums_queue_spells_of_a_preempted_job(aml_server: AmlServer, aml_credential: Any) -> None:
    """Queued 10 min, Running 2 h, preempted back to Queued: 10 min in the queue so far, not 2 h 10 min."""
    aml_server.add_job("j", "Queued")
    clock = FakeClock()
    clock.at(600, lambda: aml_server.set_status("j", "Running"))
    clock.at(600 + 7200, lambda: aml_server.set_status("j", "Queued"))
    clock.at(600 + 7200 + 900, lambda: aml_server.set_status("j", "Running"))
    clock.at(600 + 7200 + 900 + 3600, lambda: aml_server.set_status("j", "Completed"))
    result = cli(aml_server, clock, "wait", "j", "--queue-timeout", "30m", "--cancel-on-timeout",
                 credential=aml_credential)
    assert (result.code, aml_server.cancels()) == (0, [])
    aml_server.add_job("k", "Queued")
    clock = FakeClock()
    clock.at(600, lambda: aml_server.set_status("k", "Running"))
    clock.at(600 + 7200, lambda: aml_server.set_status("k", "Queued"))  # then stays queued
    result = cli(aml_server, clock, "wait", "k", "--queue-timeout", "30m", credential=aml_credential)
    assert result.code == 4
    assert 600 + 7200 + 1200 <= clock.elapsed <= 600 + 7200 + 1200 + 35  # 10 + 20 min queued, give or take a poll
    assert "queue deadline 30m00s" in result.text()


def test_queue_time_of_earlier_spells_survives_a_resume(aml_server: AmlServer, aml_credential: Any) -> None:
    aml_server.add_job("j", "Queued")
    clock = FakeClock()
    client = JobsClient(aml_server.workspace_id, aml_credential, arm_url=aml_server.arm_url, audience=ARM_RESOURCE)
    poller = begin_wait(client, ["j"], WaitOptions(queue_timeout=1800), clock=clock)
    poller.poll()
    clock.sleep(1200)
    aml_server.set_status("j", "Running")
    poller.poll()
    token = poller.continuation_token()
    aml_server.set_status("j", "Queued")
    clock.sleep(3600)
    result = cli(aml_server, clock, "wait", "--resume", token, credential=aml_credential)
    assert result.code == 4
    assert "still Queued after 30m00s in the queue" in result.text()  # 20 min before the token + 10 min after


def test_run_deadline_counts_from_leaving_the_queue(aml_server: AmlServer, aml_credential: Any) -> None:
    aml_server.add_job("j", "Queued")
    clock = FakeClock()
    clock.at(2 * 3600, lambda: aml_server.set_status("j", "Running"))
    result = cli(aml_server, clock, "wait", "j", "--queue-timeout", "3h", "--run-timeout", "1h",
                 credential=aml_credential)
    assert result.code == 4
    assert 3 * 3600 <= clock.elapsed <= 3 * 3600 + 65  # 2 h queued did not count against the 1 h run deadline
    assert "run deadline 1h00m00s" in result.text()


def test_cancel_on_timeout(aml_server: AmlServer, aml_credential: Any) -> None:
    aml_server.add_job("j", "Running")
    clock = FakeClock()
    result = cli(aml_server, clock, "wait", "j", "--run-timeout", "1h", "--cancel-on-timeout",
                 credential=aml_credential)
    assert result.code == 4
    assert len(aml_server.cancels()) == 1
    assert aml_server.status("j") == "Canceled"
    assert "canceled by amlrelay; then Canceled" in result.text()


# -- several jobs -------------------------------------------------------------------------------------------------
def test_several_jobs_all_complete(aml_server: AmlServer, aml_credential: Any) -> None:
    for name in ("a", "b", "c"):
        aml_server.add_job(name, "Running")
    clock = FakeClock()
    for i, name in enumerate(("a", "b", "c")):
        clock.at(600 * (i + 1), lambda n=name: aml_server.set_status(n, "Completed"))  # type: ignore[misc]
    result = cli(aml_server, clock, "wait", "a", "b", "c", "a", credential=aml_credential)
    assert result.code == 0
    assert result.outputs()["amlJobNames"] == "a,b,c"
    assert clock.elapsed >= 1800


def test_job_names_chain_from_a_submit_step(aml_server: AmlServer, aml_credential: Any) -> None:
    """amlJobNames is comma-separated; the template's jobNames and the command line split on spaces: both work."""
    for name in ("a", "b", "c"):
        aml_server.add_job(name, "Completed")
    submitted = cli(aml_server, FakeClock(), "submit", str(TOY_JOB), str(TOY_JOB), credential=aml_credential,
                    submitter=_fake_submitter(["a", "b"]))
    chained = submitted.outputs()["amlJobNames"]
    assert chained == "a,b"
    result = cli(aml_server, FakeClock(), "wait", chained, "c", credential=aml_credential)
    assert result.code == 0
    assert result.outputs()["amlJobNames"] == "a,b,c"


def _fake_submitter(names: list[str]) -> Any:
    pending = list(names)

    def submit(request: Submission) -> Submitted:
        name = pending.pop(0)
        return Submitted(name, f"https://ml.azure.com/runs/{name}", "NotStarted")

    return submit


@pytest.mark.parametrize("fail_fast", [True, False])
def test_fail_fast(aml_server: AmlServer, aml_credential: Any, fail_fast: bool) -> None:
    aml_server.add_job("ok", "Running")
    aml_server.add_job("bad", "Running")
    clock = FakeClock()
    clock.at(600, lambda: aml_server.set_status("bad", "Failed"))
    clock.at(7200, lambda: aml_server.set_status("ok", "Completed"))
    args = ["wait", "ok", "bad", *(["--fail-fast"] if fail_fast else [])]
    result = cli(aml_server, clock, *args, credential=aml_credential)
    assert result.code == 1
    assert (clock.elapsed < 700) is fail_fast
    assert aml_server.cancels() == []  # not asked to cancel: "ok" keeps running


def test_fail_fast_cancels_the_other_jobs_when_asked(aml_server: AmlServer, aml_credential: Any) -> None:
    aml_server.add_job("ok", "Running")
    aml_server.add_job("bad", "Running")
    clock = FakeClock()
    clock.at(600, lambda: aml_server.set_status("bad", "Failed"))
    result = cli(aml_server, clock, "wait", "ok", "bad", "--fail-fast", "--cancel-on-fail-fast",
                 credential=aml_credential)
    assert result.code == 1  # failed outranks the canceled bystander
    assert clock.elapsed < 700
    assert [r.path.rsplit("/", 2)[-2] for r in aml_server.cancels()] == ["ok"]
    assert "canceled by amlrelay: another job did not complete" in result.text()


# -- resume -------------------------------------------------------------------------------------------------------
def test_resume_keeps_the_deadlines_counting(aml_server: AmlServer, mlflow_server: MlflowServer,
                                             aml_credential: Any) -> None:
    aml_server.add_job("long", "Running")
    mlflow_server.add_run("long")
    clock = FakeClock()
    first = cli(aml_server, clock, "wait", "long", "--handoff-after", "50m", "--handoff-route", "ci",
                "--run-timeout", "3h", credential=aml_credential)
    assert first.code == 5
    token = first.outputs()["amlWaitToken"]
    assert len(token) < 400
    assert "Bearer" not in base64.urlsafe_b64decode(token + "==").decode()
    clock.sleep(3600)  # the next ADO job starts an hour later, on another agent
    second = cli(aml_server, clock, "wait", "--resume", token, credential=aml_credential)
    assert second.code == 4  # the run deadline (from the token) passed 3 h after the job was first seen running
    assert 3 * 3600 <= clock.elapsed <= 3 * 3600 + 65


def test_resume_sees_a_completed_job_without_resubmitting(aml_server: AmlServer, aml_credential: Any) -> None:
    aml_server.add_job("j", "Running")
    clock = FakeClock()
    token = _token_for(aml_server, aml_credential, clock)
    aml_server.set_status("j", "Completed")
    result = cli(aml_server, clock, "wait", "--resume", token, credential=aml_credential, submitter=_no_submit)
    assert result.code == 0


def _token_for(server: AmlServer, aml_credential: Any, clock: FakeClock) -> str:
    client = JobsClient(server.workspace_id, aml_credential, arm_url=server.arm_url, audience=ARM_RESOURCE)
    poller = begin_wait(client, ["j"], WaitOptions(run_timeout=600), clock=clock)
    poller.poll()
    return poller.continuation_token()


def _no_submit(request: Submission) -> Submitted:
    raise AssertionError("resuming must not submit")


@pytest.mark.parametrize(("token", "message"), [
    ("not a token!", "not an amlrelay wait token"),
    (base64.urlsafe_b64encode(b'{"v":99,"jobs":[]}').decode(), "version 99"),
    (base64.urlsafe_b64encode(b'{"v":1,"ws":"x","jobs":[]}').decode(), "damaged"),
])
def test_bad_tokens_are_usage_errors(aml_server: AmlServer, aml_credential: Any, capsys: pytest.CaptureFixture[str],
                                     token: str, message: str) -> None:
    result = cli(aml_server, FakeClock(), "wait", "--resume", token, credential=aml_credential)
    assert result.code == 2
    assert message in capsys.readouterr().err
    assert aml_server.requests == []


def test_token_for_another_workspace_is_refused(aml_server: AmlServer, aml_credential: Any,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    aml_server.add_job("j", "Running")
    token = _token_for(aml_server, aml_credential, FakeClock())
    state = json.loads(base64.urlsafe_b64decode(token + "=="))
    state["ws"] = state["ws"].replace("mlw-contoso", "mlw-other")
    forged = base64.urlsafe_b64encode(json.dumps(state).encode()).decode()
    assert cli(aml_server, FakeClock(), "wait", "--resume", forged, credential=aml_credential).code == 2
    assert "is for workspace" in capsys.readouterr().err


# -- errors -------------------------------------------------------------------------------------------------------
def test_transient_errors_are_polled_through(aml_server: AmlServer, aml_credential: Any) -> None:
    aml_server.add_job("j", "Running")
    aml_server.fail(503, times=3)
    client = JobsClient(aml_server.workspace_id, aml_credential, arm_url=aml_server.arm_url, audience=ARM_RESOURCE,
                        retries=0)
    seen: list[str] = []
    clock = FakeClock()
    clock.at(900, lambda: aml_server.set_status("j", "Completed"))
    result = begin_wait(client, ["j"], clock=clock, report=lambda kind, msg, job: seen.append(kind)).result()
    assert result.outcome is WaitOutcome.COMPLETED
    assert seen.count("warning") == 3


def test_throttling_does_not_block_a_poll(aml_server: AmlServer, aml_credential: Any,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """429 with Retry-After 120 s, four times: each is one poll's warning on the fake clock; no real sleep inside
    a request (urllib3's retries would block minutes with no heartbeat and overrun the hand-off)."""
    aml_server.add_job("j", "Running")
    aml_server.add_job("warm", "Completed")
    clock = FakeClock()
    clock.at(900, lambda: aml_server.set_status("j", "Completed"))
    assert cli(aml_server, clock, "wait", "warm", credential=aml_credential).code == 0  # token cached
    aml_server.fail(429, times=4, method="GET", retry_after=120)

    def no_real_sleep(seconds: float) -> None:
        raise AssertionError(f"a real sleep of {seconds} s inside a poll")

    monkeypatch.setattr("time.sleep", no_real_sleep)
    result = cli(aml_server, clock, "wait", "j", credential=aml_credential)
    assert result.code == 0
    assert result.text().count("could not read the status") == 4
    times = [t for t, _ in result.lines]
    assert max(b - a for a, b in itertools.pairwise(times)) <= 60


@pytest.mark.parametrize("problem", ["forbidden", "missing"])
def test_permanent_errors_exit_6(aml_server: AmlServer, identity_server: IdentityServer, aml_credential: Any,
                                 capsys: pytest.CaptureFixture[str], problem: str) -> None:
    aml_server.add_job("j", "Running")
    if problem == "forbidden":
        aml_server.forbid(identity_server.object_id)
    result = cli(aml_server, FakeClock(), "wait", "j" if problem == "forbidden" else "nope", credential=aml_credential)
    assert result.code == 6
    err = capsys.readouterr().err
    assert ("AzureML Data Scientist" if problem == "forbidden" else "case-sensitive") in err
    assert any(line.startswith("##vso[task.logissue type=error]") for _, line in result.lines)


def test_an_unexpected_error_is_not_reported_as_a_failed_job(aml_server: AmlServer, aml_credential: Any,
                                                              monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """The run summary cannot be written (the agent's temp folder is gone): exit 8 naming the exception, not
    1 ("the AML job failed") with a traceback."""
    aml_server.add_job("j", "Completed")
    monkeypatch.setenv("AGENT_TEMPDIRECTORY", str(tmp_path / "gone"))
    result = cli(aml_server, FakeClock(), "wait", "j", credential=aml_credential)
    assert result.code == EXIT_INTERNAL == 8
    assert "amlrelay failed unexpectedly: FileNotFoundError" in capsys.readouterr().err
    assert result.outputs()["amlExitCode"] == "8"
    assert result.outputs()["amlWaitToken"]  # published before the failure: the wait can be resumed


def test_usage_errors_exit_2(aml_server: AmlServer, aml_credential: Any) -> None:
    assert cli(aml_server, FakeClock(), "wait", credential=aml_credential).code == 2  # no job
    assert cli(aml_server, FakeClock(), "wait", "bad/name", credential=aml_credential).code == 2
    with pytest.raises(SystemExit) as info:
        _parser().parse_args(["aml", "wait", "j", "--run-timeout", "soon"])
    assert info.value.code == 2


def test_durations() -> None:
    assert [duration(t) for t in ("45s", "90m", "1h30m", "2d", "600")] == [45, 5400, 5400, 172800, 600]


# -- ADO logging commands -----------------------------------------------------------------------------------------
def test_logging_commands_are_escaped() -> None:
    assert log_issue("error", "line1\nline2 100%") == "##vso[task.logissue type=error]line1%0Aline2 100%AZP25"
    assert escape_property("a;b]c") == "a%3Bb%5Dc"
    with pytest.raises(ValueError, match="variable name"):
        set_output("bad;name", "x")


# -- credentials the way ADO agents have them ----------------------------------------------------------------------
def test_managed_identity_credential_from_the_command_line(aml_server: AmlServer, aml_credential: Any) -> None:
    aml_server.add_job("j", "Completed")
    result = cli(aml_server, FakeClock(), "wait", "j", "--credential", "managed-identity")
    assert result.code == 0


def _fake_az(folder: Path, token: str, expired_flag: Path) -> None:
    """AzureCLI@2 leaves a logged-in ``az`` on PATH; AzureCliCredential runs ``az account get-access-token``.
    Under workload identity federation az cannot refresh its login: once ``expired_flag`` exists, it fails the
    way az does then (AADSTS700024, the federated ID token expired)."""
    fake_az = folder / "az"
    fake_az.write_text(f"""#!{sys.executable}
import json, os, sys
args = sys.argv[1:]
assert args[:2] == ["account", "get-access-token"], args
resource = args[args.index("--resource") + 1] if "--resource" in args else args[args.index("--scope") + 1]
assert resource.rstrip("/").removesuffix("/.default") == "{ARM_RESOURCE}", resource
if os.path.exists({str(expired_flag)!r}):
    sys.stderr.write("ERROR: AADSTS700024: Client assertion is not within its valid time range.\\n")
    sys.exit(1)
print(json.dumps({{"accessToken": "{token}", "expiresOn": "2100-01-01 00:00:00.000000",
                  "expires_on": 4102444800, "tokenType": "Bearer"}}))
""")
    fake_az.chmod(fake_az.stat().st_mode | stat.S_IEXEC)


def test_azure_cli_credential_after_azurecli_login(aml_server: AmlServer, identity_server: IdentityServer,
                                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = identity_server.token_for(ARM_RESOURCE)
    _fake_az(tmp_path, token, tmp_path / "expired")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    aml_server.add_job("j", "Completed")
    result = cli(aml_server, FakeClock(), "wait", "j", "--credential", "cli")
    assert result.code == 0
    assert aml_server.job_gets("j")[0].headers["Authorization"] == f"Bearer {token}"


def test_a_login_that_expires_mid_wait_is_resumable(aml_server: AmlServer, identity_server: IdentityServer,
                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    aml_credential: Any) -> None:
    """AzureCLI@2 + workload identity federation: az's login ends after about an hour while training runs.
    The step publishes the token and exits 7 (not 6, which means "fix your setup"); a later job resumes."""
    expired = tmp_path / "expired"
    _fake_az(tmp_path, identity_server.token_for(ARM_RESOURCE), expired)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    aml_server.add_job("j", "Running")
    clock = FakeClock()
    clock.at(3600, expired.touch)
    clock.at(3 * 3600, lambda: aml_server.set_status("j", "Completed"))
    first = cli(aml_server, clock, "wait", "j", "--credential", "cli", "--run-timeout", "5h", "--cancel-on-timeout")
    assert first.code == EXIT_RESUMABLE == 7
    out = first.outputs()
    assert (out["amlOutcome"], out["amlExitCode"]) == ("resumable", "7")
    assert 3600 <= clock.elapsed <= 3600 + 60
    assert aml_server.cancels() == []
    assert aml_server.status("j") == "Running"
    second = cli(aml_server, clock, "wait", "--resume", out["amlWaitToken"], credential=aml_credential)
    assert second.code == 0
    assert first.code != cli(aml_server, FakeClock(), "wait", "j", "--credential", "cli").code == 6  # setup: 6


def test_azure_pipelines_credential_from_the_service_connection(monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """--credential azure-pipelines builds azure-identity's AzurePipelinesCredential from what AzureCLI@2
    exports and the mapped System.AccessToken; without them it is a usage error naming what is missing."""
    from azure.identity import AzurePipelinesCredential

    for name in _PIPELINES_ENV.values():
        monkeypatch.delenv(name, raising=False)
    ns = _parser().parse_args(["aml", "wait", "j", "--workspace", _WORKSPACE, "--credential",
                                "azure-pipelines"])
    assert run(ns, clock=FakeClock(), out=lambda line: None) == 2
    err = capsys.readouterr().err
    assert "AZURESUBSCRIPTION_SERVICE_CONNECTION_ID" in err
    assert "SYSTEM_ACCESSTOKEN" in err
    env = {"AZURESUBSCRIPTION_TENANT_ID": "11111111-1111-1111-1111-111111111111",
           "AZURESUBSCRIPTION_CLIENT_ID": "22222222-2222-2222-2222-222222222222",
           "AZURESUBSCRIPTION_SERVICE_CONNECTION_ID": "33333333-3333-3333-3333-333333333333",
           "SYSTEM_ACCESSTOKEN": "ado-job-token"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    credential = _credential("azure-pipelines", None)
    assert isinstance(credential, AzurePipelinesCredential)
    connection = credential._service_connection_id
    assert connection == env["AZURESUBSCRIPTION_SERVICE_CONNECTION_ID"]
    assert credential._system_access_token == "ado-job-token"
    aad = credential._client_assertion_credential._client
    assert (aad._client_id, aad._tenant_id) == (env["AZURESUBSCRIPTION_CLIENT_ID"], env["AZURESUBSCRIPTION_TENANT_ID"])


def test_azure_pipelines_credential_end_to_end(aml_server: AmlServer, loopback_tls: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The real AzurePipelinesCredential, from the environment AzureCLI@2 gives a federated connection: it asks
    the job's OIDC endpoint (with System.AccessToken and the service connection id) for a federated token,
    exchanges it at the Entra endpoint for an ARM token, and the wait reads AML with that token."""
    from tests.servers.identity import CONFLICTING_ENV
    from tests.servers.pipelines_federation import FederationServer

    with FederationServer(loopback_tls) as federation:
        for name in CONFLICTING_ENV:
            monkeypatch.delenv(name, raising=False)
        ca = str(loopback_tls.cert_file)
        for name, value in {**federation.env(), "REQUESTS_CA_BUNDLE": ca, "SSL_CERT_FILE": ca}.items():
            monkeypatch.setenv(name, value)
        aml_server.add_job("j", "Running")
        clock = FakeClock()
        clock.at(2 * 3600, lambda: aml_server.set_status("j", "Completed"))
        result = cli(aml_server, clock, "wait", "j", "--credential", "azure-pipelines")
        monkeypatch.setenv("SYSTEM_ACCESSTOKEN", "not-this-jobs-token")  # System.AccessToken not mapped right
        refused = cli(aml_server, FakeClock(), "wait", "j", "--credential", "azure-pipelines")
    assert refused.code == 6  # at the first poll: a setup error, not resumable
    assert result.code == 0
    assert federation.oidc_requests
    assert federation.oidc_requests[0].query["serviceConnectionId"] == federation.service_connection_id
    assert {r["client_id"] for r in federation.token_requests} == {federation.client_id}
    used = {r.headers["Authorization"].removeprefix("Bearer ") for r in aml_server.job_gets("j")}
    assert used <= set(federation.issued)


def test_an_interrupted_wait_leaves_the_job_running_and_prints_the_token(aml_server: AmlServer,
                                                                          aml_credential: Any) -> None:
    aml_server.add_job("j", "Running")
    clock = FakeClock()

    def interrupt() -> None:
        raise KeyboardInterrupt  # what Ctrl-C or ADO's cancel (SIGINT) does to the sleeping waiter

    clock.at(300, interrupt)
    result = cli(aml_server, clock, "wait", "j", "--cancel-on-timeout", "--run-timeout", "1h",
                 credential=aml_credential)
    assert result.code == 130
    assert aml_server.cancels() == []  # the job is not canceled by an interrupt
    assert "resume with: amlrelay aml wait --resume " in result.text()
