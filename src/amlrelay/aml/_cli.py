"""``amlrelay aml submit | wait | submit-and-wait``: the sync half of the sync-async pattern, for ADO steps.

Exit codes (also in the README): 0 completed, 1 failed, 2 usage error (bad arguments, job file, token),
3 canceled, 4 timed out (queue, run or NotResponding deadline), 5 handed off to the async relay, 6 AML could
not be read, tagged or submitted to (no token, 401/403/404, a refused submission), 7 resumable: the credential
stopped giving tokens in the middle of a wait (the jobs keep running, the token is published), 8 amlrelay
itself failed unexpectedly (the exception is named; the jobs keep running), 130
interrupted (the jobs keep running; the token is printed).
In ADO a step fails on any non-zero code, so the hand-off template turns 5 into success when a hand-off was
asked for; the output variable ``amlOutcome`` tells later steps which outcome it was.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _ado
from ._contract import (
    DEFAULT_API_VERSION,
    DEFAULT_ARM_URL,
    EXIT_ERROR,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_RESUMABLE,
    EXIT_USAGE,
    WaitOutcome,
)
from ._errors import AmlError

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from ._client import JobsClient
    from ._submit import Submitter
    from ._wait_types import Clock, JobResult, WaitResult

_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?$")
Out = Callable[[str], None]
OUTPUT_VARIABLES = ("amlJobName", "amlJobNames", "amlJobStatus", "amlStudioUrl", "amlOutcome", "amlWaitToken",
                    "amlExitCode")
"""What later steps can read as ``$(STEP.NAME)`` / ``dependencies.JOB.outputs['STEP.NAME']``."""


def duration(text: str) -> float:
    """``90m``, ``1h30m``, ``2d``, ``45s`` or plain seconds."""
    match = _DURATION.match(text.strip().lower())
    if not text.strip() or match is None or not any(match.groups()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (examples: 45s, 90m, 1h30m, 2d)")
    days, hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return days * 86400 + hours * 3600 + minutes * 60 + seconds


def register(commands: Any) -> None:
    aml = commands.add_parser("aml", help="submit AML jobs and wait for them (sync builds, hand-off, resume)")
    sub = aml.add_subparsers(required=True, metavar="ACTION")
    submit = sub.add_parser("submit", help="submit job YAML(s) with azure-ai-ml; print names, no waiting")
    wait = sub.add_parser("wait", help="wait for existing jobs (names or --resume TOKEN)")
    both = sub.add_parser("submit-and-wait", help="submit job YAML(s), then wait for them")
    for parser in (submit, wait, both):
        _common(parser)
    for parser in (submit, both):
        parser.add_argument("job_files", nargs="+", type=Path, metavar="JOB_YAML")
        parser.add_argument("--experiment", help="experiment name (default: the YAML's)")
        parser.add_argument("--display-name")
        parser.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="repeatable")
    wait.add_argument("jobs", nargs="*", metavar="JOB", help="job names (= run ids), separated by spaces or commas "
                      "(amlJobNames of a submit step works as it is)")
    wait.add_argument("--resume", metavar="TOKEN", help="continue a wait from its amlWaitToken")
    for parser in (wait, both):
        _wait_options(parser)
    submit.set_defaults(handler=lambda ns: run(ns))
    wait.set_defaults(handler=lambda ns: run(ns))
    both.set_defaults(handler=lambda ns: run(ns))
    submit.set_defaults(action="submit")
    wait.set_defaults(action="wait")
    both.set_defaults(action="submit-and-wait")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", default=os.environ.get("AMLRELAY_AML_WORKSPACE"),
                        help="the workspace's ARM id (env AMLRELAY_AML_WORKSPACE)")
    parser.add_argument("--credential", choices=("default", "cli", "managed-identity", "azure-pipelines"),
                        default="default",
                        help="azure-pipelines: the service connection's workload identity, refreshed for hours "
                        "(in AzureCLI@2 with SYSTEM_ACCESSTOKEN in env); cli: az's login (under workload identity "
                        "federation it expires after about an hour); managed-identity on an agent with one; "
                        "default tries the environment, the identity and az")
    parser.add_argument("--client-id", help="user-assigned managed identity client id (with azure-pipelines: "
                        "overrides AZURESUBSCRIPTION_CLIENT_ID)")
    parser.add_argument("--arm-url", default=DEFAULT_ARM_URL, help="ARM endpoint of the workspace's cloud")
    parser.add_argument("--audience", help=argparse.SUPPRESS)  # token audience when --arm-url is a proxy/test
    parser.add_argument("--api-version", default=DEFAULT_API_VERSION)
    parser.add_argument("--ado", choices=("auto", "on", "off"), default="auto",
                        help="print ADO logging commands (auto: when TF_BUILD is set)")


def _wait_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--queue-timeout", type=duration, help="max time queued (NotStarted..Queued) per job")
    parser.add_argument("--run-timeout", type=duration,
                        help="max time from leaving the queue to an outcome, counted from when this wait first "
                        "sees the job past the queue (for a job already running: the first poll)")
    parser.add_argument("--handoff-after", type=duration,
                        help="after this long on this agent, tag still-running jobs and exit 5 (handed off)")
    parser.add_argument("--agent-job-start", type=float, metavar="EPOCH",
                        help="when the agent job started (date +%%s in its first step): --handoff-after counts "
                        "from then, not from when waiting began after installing and submitting")
    parser.add_argument("--handoff-route",
                        help="value of the amlrelay-handoff tag that a relay route filters on (required with "
                        "--handoff-after); empty: no tag, a later job resumes the wait with the token")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: the workspace's)")
    parser.add_argument("--cancel-on-timeout", action="store_true", help="cancel a job whose deadline passed")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first job that does not complete")
    parser.add_argument("--cancel-on-fail-fast", action="store_true",
                        help="with --fail-fast, cancel the jobs still running when one does not complete")
    parser.add_argument("--poll-min", type=duration, default=5.0)
    parser.add_argument("--poll-max", type=duration, default=30.0,
                        help="cap of the backoff (default 30s; the worst-case delay in noticing the end)")
    parser.add_argument("--heartbeat", type=duration, default=60.0, help="at most 60s")
    parser.add_argument("--not-responding-timeout", type=duration, default=1800.0)
    parser.add_argument("--paused-is-final", action="store_true", help="a Paused job fails the wait")


def run(ns: argparse.Namespace, *, credential: TokenCredential | None = None, submitter: Submitter | None = None,
        clock: Clock | None = None, out: Out | None = None) -> int:
    """The command; the keyword arguments are the seams the tests and the benchmark use.

    An unexpected exception (a bug, a full disk, an unwritable agent folder) must not exit 1, which means "the
    AML job failed": it exits 8 with the exception named; the AML jobs keep running, and the token published
    after the first poll still resumes the wait."""
    say: Out = out or (lambda line: print(line, flush=True))
    try:
        return _run(ns, credential, submitter, clock, say)
    except Exception as exc:  # the last line of defence; AmlError is handled inside
        lines = str(exc).strip().splitlines()
        text = f"amlrelay failed unexpectedly: {type(exc).__name__}: {(lines[0] if lines else '')[:300]}"
        print(f"error: {text}", file=sys.stderr)
        print("what to do: the AML jobs were not touched; rerun, or resume with the amlWaitToken output if it was "
              "set. If it repeats, report it with this message.", file=sys.stderr)
        if ns.ado == "on" or (ns.ado == "auto" and os.environ.get("TF_BUILD", "").lower() == "true"):
            say(_ado.log_issue("error", text))
            say(_ado.set_output("amlExitCode", str(EXIT_INTERNAL)))
        return EXIT_INTERNAL


def _run(ns: argparse.Namespace, credential: TokenCredential | None, submitter: Submitter | None,
         clock: Clock | None, say: Out) -> int:
    from ._wait import begin_wait, waiter_client
    from ._wait_types import WaitOptions

    ado = ns.ado == "on" or (ns.ado == "auto" and os.environ.get("TF_BUILD", "").lower() == "true")
    try:
        if not ns.workspace:
            raise AmlError("No workspace given.", status=None,
                           hint="Pass --workspace <ARM id> or set AMLRELAY_AML_WORKSPACE.")
        credential = credential or _credential(ns.credential, ns.client_id)
        client = waiter_client(ns.workspace, credential, arm_url=ns.arm_url, api_version=ns.api_version,
                               audience=ns.audience)
        if getattr(ns, "handoff_after", None) is not None and ns.handoff_route is None:
            raise AmlError("--handoff-after needs --handoff-route.", status=None,
                           hint="Pass the value a route of your routes.json filters on (runTags.amlrelay-handoff), "
                           "e.g. --handoff-route ci-handoff, or --handoff-route '' to end the step untagged and "
                           "resume with the amlWaitToken. A tag no route knows would continue nothing.")
        # "a,b" as amlJobNames publishes it, or "a b" as the template's jobNames passes it: both name two jobs
        names = [n for arg in getattr(ns, "jobs", []) or [] for n in re.split(r"[,\s]+", arg) if n]
        if ns.action in ("submit", "submit-and-wait"):
            names = _submit(ns, client, credential, submitter, say, ado, clock)
            if ns.action == "submit":
                return 0
        options = WaitOptions(ns.queue_timeout, ns.run_timeout, ns.handoff_after, ns.poll_min, ns.poll_max,
                              heartbeat=ns.heartbeat, cancel_on_timeout=ns.cancel_on_timeout,
                              fail_fast=ns.fail_fast, cancel_on_fail_fast=ns.cancel_on_fail_fast,
                              not_responding_timeout=ns.not_responding_timeout,
                              paused_is_final=ns.paused_is_final, handoff_from=ns.agent_job_start)
        poller = begin_wait(client, names, options, continuation_token=ns.resume if ns.action == "wait" else None,
                            clock=clock, report=lambda kind, message, job: say(_line(kind, message, job, ado)))
        poller.poll()
        if ado:  # published early: if ADO kills the step, a later job can still resume from this token
            say(_ado.set_output("amlWaitToken", poller.continuation_token()))
        try:
            result = poller.result()
        except AmlError as exc:
            if not _lost_credential(exc):
                raise
            return _resumable(exc, poller.continuation_token(), say, ado)
        except KeyboardInterrupt:  # Ctrl-C, or ADO canceling the step (SIGINT): the AML jobs keep running
            token = poller.continuation_token()
            say(f"interrupted: the AML jobs keep running; resume with: amlrelay aml wait --resume {token}")
            if ado:
                say(_ado.set_output("amlWaitToken", token))
                say(_ado.log_issue("warning", "The wait was interrupted; the AML jobs keep running."))
            return EXIT_INTERRUPTED
    except AmlError as exc:
        return _fail(exc, say, ado)
    return _finish(ns, client, credential, result, say, ado)


def _orphans(client: JobsClient, names: list[str], clock: Clock | None, say: Out, ado: bool) -> None:
    """A later job file was refused: the earlier jobs were created and run. Publishing their names and a wait
    token (no request needed) lets a later step wait for or cancel them instead of losing track."""
    from ._wait import begin_wait

    token = begin_wait(client, names, clock=clock).continuation_token()
    say(f"submitted before the failure and still running: {', '.join(names)}; wait for them with: "
        f"amlrelay aml wait --resume {token}")
    if ado:
        say(_ado.set_output("amlJobName", names[0]))
        say(_ado.set_output("amlJobNames", ",".join(names)))
        say(_ado.set_output("amlWaitToken", token))
        say(_ado.log_issue("warning", f"AML jobs {', '.join(names)} were submitted before a later job file "
                           "was refused; they keep running (amlJobNames, amlWaitToken)."))


def _submit(ns: argparse.Namespace, client: JobsClient, credential: TokenCredential, submitter: Submitter | None,
            say: Out, ado: bool, clock: Clock | None = None) -> list[str]:
    from ._submit import Submission, sdk_submitter

    tags = dict(_pair(t) for t in ns.tag)
    submit = submitter or sdk_submitter(client.workspace, credential, arm_url=client.arm_url)
    names: list[str] = []
    for path in ns.job_files:
        try:
            done = submit(Submission(path, ns.experiment, tags, ns.display_name))
        except AmlError:
            if names:  # the jobs already submitted run on: say which, and how to wait for them
                _orphans(client, names, clock, say, ado)
            raise
        say(f"submitted {path} as {done.name} ({done.status}): {done.studio_url}")
        names.append(done.name)
    if ado:
        say(_ado.set_output("amlJobName", names[0]))
        say(_ado.set_output("amlJobNames", ",".join(names)))
    return names


def _finish(ns: argparse.Namespace, client: JobsClient, credential: TokenCredential, result: WaitResult,
            say: Out, ado: bool) -> int:
    from ..record import table

    code = result.exit_code
    if result.outcome is WaitOutcome.HANDED_OFF and not ns.handoff_route:
        say("handed off without a relay tag (empty --handoff-route): resume with the amlWaitToken output")
    elif result.outcome is WaitOutcome.HANDED_OFF:
        from ._handoff import HANDOFF_TAG, finished_meanwhile, tag_handoffs

        try:
            tagged = tag_handoffs(client, credential, result.jobs, ns.handoff_route, tracking_uri=ns.tracking_uri,
                                  audience=ns.audience)
        except AmlError as exc:
            say("the jobs are still running but could not be tagged for the relay: NOT handed off")
            return _resumable(exc, result.token, say, ado) if _lost_credential(exc) else _fail(exc, say, ado)
        say(f"tagged {', '.join(tagged)} with {HANDOFF_TAG}={ns.handoff_route}: the relay's route continues "
            "when they finish")
        for late in finished_meanwhile(client, tagged):
            warning = (f"AML job {late.name} became {late.status_text} while it was being handed off: if AML sent "
                       "its completion event before the tag was written, no route picks it up. Check that "
                       f"route {ns.handoff_route!r} ran (amlrelay status), or rerun the continuation by hand.")
            say(_ado.log_issue("warning", warning) if ado else f"[warning] {warning}")
    rows = [(j.name, j.status_text or str(j.status), str(j.outcome or "still waiting"), j.reason, j.studio_url)
            for j in result.jobs]
    say(table(rows, ("job", "status", "outcome", "why", "studio"), width=90))
    say(f"outcome: {result.outcome} after {round(result.elapsed)} s, {result.polls} polls (exit {code})")
    if ado:
        first = result.jobs[0]
        outputs = {"amlJobName": first.name, "amlJobNames": ",".join(j.name for j in result.jobs),
                   "amlJobStatus": first.status_text or str(first.status), "amlStudioUrl": first.studio_url,
                   "amlOutcome": str(result.outcome), "amlWaitToken": result.token, "amlExitCode": str(code)}
        for name, value in outputs.items():
            say(_ado.set_output(name, value))
        say(_ado.upload_summary(_summary_file(result, ns.handoff_route or "")))
        for job in result.jobs:
            if job.outcome in (WaitOutcome.FAILED, WaitOutcome.CANCELED, WaitOutcome.TIMED_OUT):
                say(_ado.log_issue("error", f"AML job {job.name} {job.outcome}: {job.reason} - {job.studio_url}"))
            elif job.outcome is WaitOutcome.HANDED_OFF:
                say(_ado.log_issue("warning", f"AML job {job.name} handed off to the relay ({ns.handoff_route}): "
                                   f"{job.reason} - {job.studio_url}"))
    return code


def _summary_file(result: WaitResult, route: str) -> str:
    """The run-summary tab of ADO: one row per AML job with its studio link."""
    import tempfile

    lines = ["### AML jobs", "", "| job | status | outcome | |", "|---|---|---|---|"]
    lines += [f"| {j.name} | {j.status_text or j.status} | {j.outcome or 'still waiting'} | [studio]({j.studio_url}) |"
              for j in result.jobs]
    if result.outcome is WaitOutcome.HANDED_OFF and route:
        lines += ["", f"Handed off: the relay route for `amlrelay-handoff={route}` continues when the jobs end."]
    folder = os.environ.get("AGENT_TEMPDIRECTORY") or tempfile.gettempdir()
    with tempfile.NamedTemporaryFile("w", suffix=".md", prefix="aml-jobs-", dir=folder, delete=False,
                                     encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return handle.name


def _lost_credential(exc: AmlError) -> bool:
    """A token that worked for the first poll and stopped working later: the login expired (AzureCLI@2 under
    workload identity federation cannot refresh az's token after about an hour), not a wrong setup."""
    return exc.code == "NoArmToken" or exc.status == 401


def _resumable(exc: AmlError, token: str, say: Out, ado: bool) -> int:
    print(f"error: {exc.message}", file=sys.stderr)
    say("the credential stopped giving ARM tokens during the wait; the AML jobs keep running. Resume with: "
        f"amlrelay aml wait --resume {token} (use --credential azure-pipelines or managed-identity for waits "
        "over an hour)")
    if ado:
        for name, value in (("amlWaitToken", token), ("amlOutcome", "resumable"),
                            ("amlExitCode", str(EXIT_RESUMABLE))):
            say(_ado.set_output(name, value))
        say(_ado.log_issue("warning", "The wait lost its ARM credential; the AML jobs keep running. Resume "
                           f"with the amlWaitToken output. {exc.message}"))
    return EXIT_RESUMABLE


def _line(kind: str, message: str, job: JobResult | None, ado: bool) -> str:
    if ado and kind in ("warning", "timeout"):
        return f"##[warning]{_ado.escape_data(message)}"
    return f"[{kind}] {message}"


def _fail(exc: AmlError, say: Out, ado: bool) -> int:
    usage = exc.status is None and exc.code is None and not exc.retryable  # what the caller passed was wrong
    print(f"error: {exc.message}", file=sys.stderr)
    if exc.hint:
        print(f"what to do: {exc.hint}", file=sys.stderr)
    code = EXIT_USAGE if usage else EXIT_ERROR
    if ado:
        say(_ado.log_issue("error", f"{exc.message} {exc.hint}".strip()))
        say(_ado.set_output("amlExitCode", str(code)))
    return code


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise AmlError(f"--tag {text!r} is not KEY=VALUE.", status=None,
                       hint="Write it as KEY=VALUE, e.g. --tag ado.buildId=1234.")
    return key.strip(), value


_PIPELINES_ENV = {"tenant_id": "AZURESUBSCRIPTION_TENANT_ID", "client_id": "AZURESUBSCRIPTION_CLIENT_ID",
                  "service_connection_id": "AZURESUBSCRIPTION_SERVICE_CONNECTION_ID",
                  "system_access_token": "SYSTEM_ACCESSTOKEN"}
"""AzurePipelinesCredential's arguments and where ADO puts them: AzureCLI@2 exports the three
AZURESUBSCRIPTION_* variables of its service connection; System.AccessToken reaches a script only when the
step maps it (``env: SYSTEM_ACCESSTOKEN: $(System.AccessToken)``)."""


def _credential(kind: str, client_id: str | None) -> TokenCredential:
    if kind == "azure-pipelines":
        values = {arg: os.environ.get(env, "") for arg, env in _PIPELINES_ENV.items()}
        values["client_id"] = client_id or values["client_id"]
        missing = [_PIPELINES_ENV[arg] for arg, value in values.items() if not value]
        if missing:
            raise AmlError(f"--credential azure-pipelines needs {', '.join(missing)} in the environment.",
                           status=None, hint="Run inside AzureCLI@2 with a workload identity federation service "
                           "connection (it exports AZURESUBSCRIPTION_*) and map the token into the step: "
                           "env: SYSTEM_ACCESSTOKEN: $(System.AccessToken).")
        from azure.identity import AzurePipelinesCredential

        return AzurePipelinesCredential(**values)
    if kind == "cli":
        from azure.identity import AzureCliCredential

        return AzureCliCredential()
    from ..auth import managed_identity

    return managed_identity(client_id, kind="default" if kind == "default" else "managed-identity")
