"""Verification against AML in the workflow (``generate(verify=True)``): the same reads and judgements as
:mod:`amlrelay.verify`, as WDL, so a forged event with an allowed topic starts nothing.

One ARM read per event and route, with the workflow's identity (audience ``armAudience``, by default
``https://management.azure.com/``), to the AML jobs REST (AML-JOBS.md, api-version 2025-09-01):
``{workspace}/jobs/{runId}`` for run and drift events, ``{workspace}/models/{name}/versions/{version}`` for
ModelRegistered (and the *first* model version of a ModelDeployed; the runbook reads every one). Then, like
``verify.judge_job``: the answer must come from the event's workspace; a run must be in the event's
experiment; a final status must match exactly; a job ahead of the claim confirms it, one behind it is "not
yet" (failed: Event Grid retries). After a 404 the workspace is read too, as ``verify._reader`` does: if it
exists, AML has no such run or model version and the event is refuted (rejected); if it is not found or
cannot be read, amlrelay is misconfigured (a wrong ``armUrl``, a deleted workspace) and the event fails
rather than every event being refused for ever. Other failures (403, 429/5xx after the GET's default retry
policy — a read is safe to repeat — or no answer) fail the event. The subject, when it has the documented
shape, must name what ``data`` names.
"""

from __future__ import annotations

from ..models import DATASET_DRIFT_DETECTED, MODEL_DEPLOYED, MODEL_REGISTERED, RUN_COMPLETED, RUN_STATUS_CHANGED
from . import _fields as f
from ._fields import call, q

API_VERSION = "2025-09-01"
FINAL = ("completed", "failed", "canceled")
RANKS = {
    "notstarted": 0, "starting": 1, "provisioning": 2, "preparing": 3, "queued": 4, "running": 5,
    "notresponding": 5, "paused": 5, "finalizing": 6, "cancelrequested": 7,
    "completed": 9, "failed": 9, "canceled": 9,
}
"""The lifecycle order of the spec's JobStatus values (tests check every pair against verify.judge_job)."""

_B = "body('Verify')"


def _s(expr: str) -> str:
    return call("string", call("coalesce", expr, "''"))


def is_run() -> str:
    return call("or", f.is_type(RUN_COMPLETED), f.is_type(RUN_STATUS_CHANGED))


def uri() -> str:
    """The ARM URL of what confirms the current event."""
    first_model = call("first", call("split", f.field("modelIds"), "','"))
    deployed = call("concat", "'models/'", call("uriComponent", call("first", call("split", first_model, "':'"))),
                    "'/versions/'", call("uriComponent", call("last", call("split", first_model, "':'"))))
    registered = call("concat", "'models/'", call("uriComponent", _s(f.field("modelName"))), "'/versions/'",
                      call("uriComponent", _s(f.field("modelVersion"))))
    job = call("concat", "'jobs/'", call("uriComponent", _s(f.field("runId"))))
    path = call("if", f.is_type(MODEL_REGISTERED), registered, call("if", f.is_type(MODEL_DEPLOYED), deployed, job))
    return (f"@{{parameters('armUrl')}}@{{{f.trim_slash(call('trim', f.source()))}}}/@{{{path}}}"
            f"?api-version={API_VERSION}")


def workspace_uri() -> str:
    """The ARM URL of the event's workspace (read after a 404, to tell a misconfiguration apart)."""
    return f"@{{parameters('armUrl')}}@{{{f.trim_slash(call('trim', f.source()))}}}?api-version={API_VERSION}"


def claimed() -> str:
    return call("if", f.is_type(RUN_COMPLETED), "'completed'", call("toLower", _s(f.field("runStatus"))))


def current() -> str:
    return call("toLower", _s(f"{_B}?['properties']?['status']"))


def _rank(status: str) -> str:
    return call("coalesce", f"parameters('jobStatusRanks')?[{status}]", "-1")


def _final(status: str) -> str:
    return call("contains", call("createArray", *(q(s) for s in FINAL)), status)


def _subject_mismatch() -> str:
    subject = f.field("subject")
    parts = call("split", subject, "'/'")
    run = call("and", call("equals", call("length", parts), "4"), call("equals", f"{parts}[0]", "'experiments'"),
               call("equals", f"{parts}?[2]", "'runs'"),
               call("not", call("equals", subject, call("concat", "'experiments/'", _s(f.field("experimentId")),
                                                        "'/runs/'", _s(f.field("runId"))))))
    model = call("and", call("equals", call("length", parts), "2"), call("equals", f"{parts}[0]", "'models'"),
                 call("contains", subject, "':'"),
                 call("not", call("equals", subject, call("concat", "'models/'", _s(f.field("modelName")), "':'",
                                                          _s(f.field("modelVersion"))))))
    service = call("and", call("equals", call("length", parts), "2"), call("equals", f"{parts}[0]", "'endpoints'"),
                   call("not", call("equals", subject, call("concat", "'endpoints/'", _s(f.field("serviceName"))))))
    return call("or", call("and", is_run(), run), call("and", f.is_type(MODEL_REGISTERED), model),
                call("and", f.is_type(MODEL_DEPLOYED), service))


def refuted() -> str:
    """AML refutes the event (or it could never have come from AML): rejected, answered 200."""
    prefix = call("concat", call("toLower", f.trim_slash(call("trim", f.source()))), "'/'")
    elsewhere = call("not", call("startsWith", call("toLower", _s(f"{_B}?['id']")), prefix))
    experiment = call("not", call("equals", call("toLower", _s(f"{_B}?['properties']?['experimentName']")),
                                  call("toLower", _s(f.field("experimentName")))))
    unknown_claim = call("less", _rank(claimed()), "0")
    ended_otherwise = call("and", _final(claimed()), _final(current()), call("not", call("equals", current(),
                                                                                      claimed())))
    run = call("and", is_run(), call("or", unknown_claim, experiment, ended_otherwise))
    drift_without_run = call("and", f.is_type(DATASET_DRIFT_DETECTED), call("not", f.nonempty(f.field("runId"))))
    return call("or", _subject_mismatch(), elsewhere, run, drift_without_run)


def confirmed() -> str:
    """AML confirms the event: the claim may proceed."""
    run_ok = call("and", call("not", call("less", _rank(current()), "0")),
                  call("not", call("less", _rank(current()), _rank(claimed()))))
    return call("and", call("not", refuted()), call("or", call("not", is_run()), run_ok))
