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
policy — a read is safe to repeat — or no answer) fail the event. The subject must have the documented shape
for its event type and name what ``data`` names (``verify._decide._subject_shape`` and ``_subject_mismatch``).

Tag and property values (``verify.judge_values``): every ``runTags.*`` / ``runProperties.*`` (run and drift
events) or ``modelTags.*`` / ``modelProperties.*`` (ModelRegistered) field that a *matched* route's filters
or templates read (``verify.fields_read``, from the same parsed routes) must equal the job's / model
version's ``properties.tags`` / ``properties.properties``, "absent" included; judged only once the status
confirms the event, as the runbook does (a job behind the claim fails the event first). Folded into the
``Confirmed`` expression (no extra action); a routes file whose check would not fit WDL's 8,192 characters
is refused by :func:`check_fits` rather than verified less.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import RoutesError
from ..models import DATASET_DRIFT_DETECTED, MODEL_DEPLOYED, MODEL_REGISTERED, RUN_COMPLETED, RUN_STATUS_CHANGED
from ..routes import Route
from ..verify import fields_read
from . import _fields as f
from ._fields import call, fact, q
from ._wdl import MAX_EXPRESSION

_MAPS = {"runtags": "tags", "runproperties": "properties", "modeltags": "tags", "modelproperties": "properties"}

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


def _subject_wrong() -> str:
    """``verify._decide``'s subject rules: the documented shape for the event type (``_subject_shape``)
    naming what ``data`` names (``_subject_mismatch``). Together: the subject is exactly the one built from
    ``data`` and splits at '/' into as many parts as the shape has (so no part holds a '/'; the parts are
    non-empty because validity requires those data fields), the model version holds no ':', and a drift
    subject is ``datadrift[s]/*/run[s]/*``."""
    subject = f.field("subject")
    parts = call("split", subject, "'/'")

    def built(count: int, *pieces: str) -> str:
        return call("and", call("equals", call("length", parts), str(count)),
                    call("equals", subject, call("concat", *pieces)))

    version = _s(f.field("modelVersion"))
    drift = call("and", call("equals", call("length", parts), "4"),
                 call("contains", "createArray('datadrift', 'datadrifts')", f"{parts}[0]"),
                 call("contains", "createArray('run', 'runs')", f"{parts}?[2]"))
    shaped = call("if", is_run(), built(4, "'experiments/'", _s(f.field("experimentId")), "'/runs/'",
                                        _s(f.field("runId"))),
                  call("if", f.is_type(MODEL_REGISTERED),
                       call("and", call("not", call("contains", version, "':'")),
                            built(2, "'models/'", _s(f.field("modelName")), "':'", version)),
                       call("if", f.is_type(MODEL_DEPLOYED), built(2, "'endpoints/'", _s(f.field("serviceName"))),
                            drift)))
    return call("not", shaped)


def _held(name: str) -> str:
    """AML's value for a ``runTags.k``-like field: ``properties.tags|properties``, key as written or
    lower-cased (the runbook looks keys up in any case)."""
    head, _, key = name.partition(".")
    maps = f"{_B}?['properties']?[{q(_MAPS[head.lower()])}]"
    keys = list(dict.fromkeys([key, key.lower()]))
    return call("coalesce", *(f"{maps}?[{q(k)}]" for k in keys)) if len(keys) > 1 else f"{maps}?[{q(key)}]"


def _tag_fields(route: Route) -> list[str]:
    """The ``runTags.*``-like fields ``route`` reads (filters and templates: ``verify.fields_read``)."""
    return [n for n in fields_read([route]) if n.lower().split(".")[0] in _MAPS]


def _checked(routes: Sequence[Route]) -> list[str]:
    """Every field some route reads, once each, in file order."""
    return list(dict.fromkeys(n for r in routes for n in _tag_fields(r)))


def facts(routes: Sequence[Route]) -> dict[str, Any]:
    """The event's side of the checks, computed once per event in the ``Event`` Compose (:mod:`._event`):
    the route loop's ``Confirmed`` then only compares them with AML's answer, so its size grows with the
    distinct fields read, not with the routes. ``values``: per field, its value as a one-item JSON array
    (null, "absent", differs from any string); ``readers``: per route that reads fields, its name if it
    took the event, else ``'-'``."""
    prefix = call("concat", call("toLower", f.trim_slash(call("trim", f.source()))), "'/'")
    drift_without_run = call("and", f.is_type(DATASET_DRIFT_DETECTED), call("not", f.nonempty(f.field("runId"))))
    return {
        "subjectWrong": "@" + _subject_wrong(), "workspace": "@" + prefix,
        "experiment": "@" + call("toLower", _s(f.field("experimentName"))), "claimed": "@" + claimed(),
        "run": "@" + is_run(), "drift": "@" + f.is_type(DATASET_DRIFT_DETECTED),
        "registered": "@" + f.is_type(MODEL_REGISTERED), "driftWithoutRun": "@" + drift_without_run,
        "values": ["@" + call("string", call("createArray", f.field(n))) for n in _checked(routes)],
        "readers": ["@" + call("if", f.route_matches(r), q(r.name), "'-'") for r in routes if _tag_fields(r)],
    }


def values_ok(routes: Sequence[Route]) -> str:
    """``verify.judge_values`` for the fields the *matched* routes read: each field some matched route reads
    (``intersection`` of the readers that took the event with the field's readers) must hold AML's value
    (the runbook checks the union of the matched routes' fields for every route of the event, so one
    route's forged value refuses them all)."""
    job: list[str] = []
    model: list[str] = []
    for index, name in enumerate(_checked(routes)):
        readers = [q(r.name) for r in routes if name in _tag_fields(r)]
        unread = call("empty", call("intersection", fact("readers"), call("createArray", *readers)))
        same = call("equals", f"{fact('values')}[{index}]", call("string", call("createArray", _held(name))))
        (model if name.lower().startswith("model") else job).append(call("or", unread, same))
    parts = []
    if job:
        parts.append(call("or", call("not", call("or", fact("run"), fact("drift"))), f.all_of(job)))
    if model:
        parts.append(call("or", call("not", fact("registered")), f.all_of(model)))
    return f.all_of(parts)


def refuted() -> str:
    """AML refutes the event (or it could never have come from AML): rejected, answered 200."""
    elsewhere = call("not", call("startsWith", call("toLower", _s(f"{_B}?['id']")), fact("workspace")))
    experiment = call("not", call("equals", call("toLower", _s(f"{_B}?['properties']?['experimentName']")),
                                  fact("experiment")))
    unknown_claim = call("less", _rank(fact("claimed")), "0")
    ended_otherwise = call("and", _final(fact("claimed")), _final(current()),
                           call("not", call("equals", current(), fact("claimed"))))
    run = call("and", fact("run"), call("or", unknown_claim, experiment, ended_otherwise))
    return call("or", fact("subjectWrong"), elsewhere, run, fact("driftWithoutRun"))


def _status_ok() -> str:
    run_ok = call("and", call("not", call("less", _rank(current()), "0")),
                  call("not", call("less", _rank(current()), _rank(fact("claimed")))))
    return call("or", call("not", fact("run")), run_ok)


def confirmed(routes: Sequence[Route] = ()) -> str:
    """AML confirms the event and every tag/property value the matched routes read: the claim may proceed."""
    return call("and", call("not", refuted()), _status_ok(), values_ok(routes))


def not_yet() -> str:
    """Not refuted, but AML does not show the claimed status yet: failed (Event Grid retries). A confirmed
    status with a value AML does not hold is refuted (``verify.judge_values`` runs after ``judge_job``)."""
    return call("and", call("not", refuted()), call("not", _status_ok()))


def check_fits(routes: Sequence[Route], source: object = "routes") -> None:
    """Refuse routes whose verification would not fit one WDL expression, naming the fields and the routes
    that read them: verifying fewer values than the runbook would let a forger choose them."""
    size = len(confirmed(routes)) + 1
    if size > MAX_EXPRESSION:
        readers = [r.name for r in routes if _tag_fields(r)]
        raise RoutesError(
            f"{source}: the Logic App's verification of the tag/property values that routes read would be "
            f"{size} characters, over WDL's {MAX_EXPRESSION}-character limit for one expression "
            f"({len(_checked(routes))} distinct fields; routes reading tags or properties: {', '.join(readers)})",
            hint="Read fewer distinct runTags/runProperties/modelTags/modelProperties fields across the routes "
                 "(filters and templates; routes reading the same field share its check), use the runbook "
                 "handler, or build with --verify false (no AML verification).")
