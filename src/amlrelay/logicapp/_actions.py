"""The actions of one route iteration of the generated workflow: Claim → Start → Record, the duplicate
branch (Read, Decide, Take_over) and the expressions they share.

Why its own module: :mod:`._generate` lays out the workflow around the routes (trigger, event gate, verify,
Response); this is the per-event, per-route graph, the part that must behave like ``relay.py`` + the
Python ledger (see the equivalence tests). It needs nothing from :mod:`._generate`, which imports it.

* **Claim → Start → Record**, branched with ``runAfter`` instead of conditions: the ledger insert fails
  with 409 when the key exists, and only then does the duplicate branch (Read, Decide) run.
* **ADO retries** only on 429/503, in an ``Until`` loop waiting ``Retry-After``; after an ambiguous
  answer nothing is resent and the failure is recorded ``[ambiguous]`` (see :mod:`._generate`).
* Every failure is appended to the ``failures`` array variable that :func:`._generate.generate` creates.
"""

from __future__ import annotations

from typing import Any

from ..ledger import PARTITION
from ..relay import AMBIGUOUS
from ..routes import Routes
from . import _fields as f
from ._event import has_secrets, secure_inputs
from ._fields import EVENT, ROUTE, call, fact, q

ADO_AUDIENCE = "499b84ac-1321-427f-aa17-267ca6975798"
STORAGE_AUDIENCE = "https://storage.azure.com/"
TABLE_HEADERS = {"x-ms-version": "2019-02-02", "DataServiceVersion": "3.0",
                 "Accept": "application/json;odata=nometadata"}
_EVENT_CHARS = 32_000


def msi(audience: str) -> dict[str, str]:
    """Managed-identity authentication for an HTTP action (the workflow's own identity)."""
    return {"type": "ManagedServiceIdentity", "audience": audience}


class Builder:
    """The actions of one route iteration (Claim → Start → Record, and the duplicate branch)."""

    def __init__(self, routes: Routes, auth: str, retries: int, max_retry_after: int, timeout: str,
                 stale_after: int) -> None:
        self.routes, self.auth, self.retries = routes, auth, retries
        self.max_retry_after, self.timeout, self.stale_after = max_retry_after, timeout, stale_after
        self.key = f.outcome_key()
        self.row = f.row_key()

    def entity_url(self) -> str:
        return (f"@{{parameters('ledgerTableUrl')}}/@{{parameters('ledgerTable')}}(PartitionKey='{PARTITION}',"
                f"RowKey='@{{{self.row}}}')")

    def table(self, method: str, uri: str, body: Any = None, etag: str | None = None) -> dict[str, Any]:
        headers = dict(TABLE_HEADERS)
        if body is not None:
            headers["Content-Type"] = "application/json"
            headers["Prefer"] = "return-no-content"
        if etag is not None:
            headers["If-Match"] = etag
        inputs: dict[str, Any] = {"method": method, "uri": uri, "headers": headers,
                                  "authentication": msi(STORAGE_AUDIENCE), "retryPolicy": {"type": "none"}}
        if body is not None:
            inputs["body"] = body
        return inputs

    def claim_entity(self, attempts: str) -> dict[str, Any]:
        return {
            "PartitionKey": PARTITION, "RowKey": f"@{{{self.row}}}", "schema": 1, "key": f"@{{{self.key}}}",
            "route": f"@{{{ROUTE}}}", "event_id": f"@{{{EVENT}?['id']}}", "event_type": f"@{{{f.short_type()}}}",
            "state": "claimed", "claimed_at": "@{utcNow()}", "claimed_at@odata.type": "Edm.DateTime",
            "updated_at": "@{utcNow()}", "updated_at@odata.type": "Edm.DateTime", "attempts": attempts,
            "holder": "@{concat('logicapp/', workflow()?['run']?['name'])}", "claim_id": "@{guid()}",
            # one Table property holds 32,000 characters here (amlrelay._ledger_rows._CHUNK); a longer event is cut and
            # flagged, as the Python ledger flags what exceeds its chunks (replay then skips it)
            "event_json": "@" + call("substring", f.event_json(), "0",
                                     call("min", call("length", f.event_json()), str(_EVENT_CHARS))),
            "event_json_truncated": "@" + call("greater", call("length", f.event_json()), str(_EVENT_CHARS)),
        }

    def note(self, after: dict[str, list[str]], reason: str) -> dict[str, Any]:
        return self.note_for(after, reason)

    @staticmethod
    def note_for(after: dict[str, list[str]], reason: str) -> dict[str, Any]:
        return {"type": "AppendToArrayVariable", "runAfter": after,
                "inputs": {"name": "failures", "value": {"event_id": f"@{{{EVENT}?['id']}}", "route": f"@{{{ROUTE}}}",
                                                         "reason": reason}}}

    def route_actions(self) -> dict[str, Any]:
        insert = "@{parameters('ledgerTableUrl')}/@{parameters('ledgerTable')}"
        actions: dict[str, Any] = {
            "Claim": {"type": "Http", "runAfter": {},
                      "inputs": self.table("POST", insert, self.claim_entity("@int(1)"))},
        }
        actions.update(self.start_and_record("", {"Claim": ["Succeeded"]}, "outputs('Claim')?['headers']?['ETag']"))
        actions["Read"] = {"type": "Http", "runAfter": {"Claim": ["Failed", "TimedOut"]},
                           "inputs": self.table("GET", self.entity_url())}
        actions["Note_ledger_failed"] = self.note({"Read": ["Failed", "TimedOut"]},
                                                  "the ledger could not be claimed or read: nothing was triggered")
        state = "body('Read')?['state']"
        updated = call("coalesce", "body('Read')?['updated_at']", "'0001-01-01T00:00:00Z'")
        fresh = call("greater", call("ticks", updated), call("ticks", call("addSeconds", "utcNow()",
                                                                            str(-self.stale_after))))
        settled = call("or", call("equals", state, "'triggered'"),
                       call("and", call("equals", state, "'claimed'"), fresh))
        retry = call("and", call("equals", state, "'failed'"),
                     call("not", call("startsWith", call("coalesce", "body('Read')?['reason']", "''"),
                                      q(AMBIGUOUS.strip()))))
        taken = self.claim_entity("@add(int(coalesce(body('Read')?['attempts'], 1)), 1)")
        retry_actions: dict[str, Any] = {
            "Take_over": {"type": "Http", "runAfter": {},
                          "inputs": self.table("PUT", self.entity_url(), taken,
                                               "@{outputs('Read')?['headers']?['ETag']}")},
            "Note_take_over_failed": self.note({"Take_over": ["Failed", "TimedOut"]},
                                               "another holder took the failed record over first"),
        }
        retry_actions.update(self.start_and_record("_again", {"Take_over": ["Succeeded"]},
                                                   "outputs('Take_over')?['headers']?['ETag']"))
        unsettled = ("@{concat('the ledger record is ', string(body('Read')?['state']), ' (', "
                     "string(body('Read')?['reason']), '): an earlier attempt may have started the run; "
                     "amlrelay replay --stale --failed reconciles it')}")
        actions["Decide"] = {
            "type": "If", "runAfter": {"Read": ["Succeeded"]}, "expression": "@" + call("not", settled),
            "actions": {"Retry_failed": {
                "type": "If", "runAfter": {}, "expression": "@" + retry, "actions": retry_actions,
                "else": {"actions": {"Note_unsettled": self.note({}, unsettled)}}}},
            "else": {"actions": {}},
        }
        return actions

    def start_and_record(self, suffix: str, after: dict[str, list[str]], etag: str) -> dict[str, Any]:
        """Start the run, record the answer on the claim. The success path is two actions (Start, Record);
        only a failed Start enters ``After_failure``, where 429/503 are retried in an Until loop."""
        start, record = f"Start{suffix}", f"Record{suffix}"
        retry, until, record_retry = f"Start_retry{suffix}", f"Until_not_throttled{suffix}", f"Record_retry{suffix}"
        record_failure = f"Record_failure{suffix}"
        actions: dict[str, Any] = {start: self.start(after)}
        actions.update(self.record_run({start: ["Succeeded"]}, start, etag, record, f"Note_failed_2xx{suffix}",
                                       f"Note_unrecorded{suffix}"))
        inner = {
            retry: self.start({}),
            f"Wait_for_ADO{suffix}": self.wait({retry: ["Failed", "TimedOut"]}, retry),
        }
        throttled_branch: dict[str, Any] = {
            f"Wait_first{suffix}": self.wait({}, start),
            until: {"type": "Until", "runAfter": {f"Wait_first{suffix}": ["Succeeded"]},
                    "expression": "@" + call("not", _throttled(retry)),
                    "limit": {"count": max(self.retries, 1), "timeout": "PT1H"}, "actions": inner},
        }
        throttled_branch.update(self.record_run({until: ["Succeeded", "Failed", "TimedOut"]}, retry, etag,
                                                record_retry, f"Note_failed_retry{suffix}",
                                                f"Note_unrecorded_retry{suffix}"))
        other_branch: dict[str, Any] = {
            record_failure: self.record({}, start, "@{" + etag + "}"),
            f"Note_failed{suffix}": self.note({record_failure: ["Succeeded"]}, "@{" + _reason(start) + "}"),
            f"Note_unrecorded_failure{suffix}": self.note({record_failure: ["Failed", "TimedOut"]}, _UNRECORDED),
        }
        actions[f"After_failure{suffix}"] = {
            "type": "If", "runAfter": {start: ["Failed", "TimedOut"]},
            "expression": "@" + (_throttled(start) if self.retries > 0 else "false"),
            "actions": throttled_branch if self.retries > 0 else {}, "else": {"actions": other_branch},
        }
        return actions

    def record_run(self, after: dict[str, list[str]], start: str, etag: str, record: str, note_failed: str,
                   note_unrecorded: str) -> dict[str, Any]:
        """Record ADO's answer after an HTTP action that may have *succeeded without a run*: a 203 sign-in
        page (how ADO answers a credential it does not accept) or a 2xx without a run id. The runbook fails
        such an event (``AdoClient._refusal``), so Event Grid must get a 5xx; but telling it apart with an
        ``If`` would bill one more action on every successful event. Instead ``record`` carries an ETag that
        can never match when there is no run (Table storage answers 412 and writes nothing), and only then
        does ``<record>_failure`` write the failure with the claim's real ETag and note it. The success path
        stays one action; a ``record`` that fails for a real reason (lost claim) makes the second write
        fail too (its ETag never matches when there *is* a run), which is noted as unrecorded, as before."""
        ok = _ok(start)
        second = f"{record}_no_run"
        return {
            record: self.record(after, start, "@{" + call("if", ok, etag, q(_NEVER_ETAG)) + "}"),
            second: self.record({record: ["Failed", "TimedOut"]}, start,
                                "@{" + call("if", ok, q(_NEVER_ETAG), etag) + "}"),
            note_failed: self.note({second: ["Succeeded"]}, "@{" + _reason(start) + "}"),
            note_unrecorded: self.note({second: ["Failed", "TimedOut"]}, _UNRECORDED),
        }

    def start(self, after: dict[str, list[str]]) -> dict[str, Any]:
        http: dict[str, Any] = {
            "method": "POST", "uri": f"@{{parameters('adoOrganizationUrl')}}@{{parameters('routes')[{ROUTE}]['path']}}",
            "headers": {"Content-Type": "application/json", "Accept": "application/json"},
            "body": f"@{fact('bodies')}[{ROUTE}]", "retryPolicy": {"type": "none"},
        }
        if self.auth == "pat":
            http["headers"]["Authorization"] = "@{concat('Basic ', base64(concat(':', body('Get_PAT')?['value'])))}"
        else:
            http["authentication"] = msi(ADO_AUDIENCE)
        action: dict[str, Any] = {"type": "Http", "runAfter": after, "inputs": http, "limit": {"timeout": self.timeout},
                                  "operationOptions": "DisableAsyncPattern"}
        if self.auth == "pat" or has_secrets(self.routes):  # the PAT's header; a secret variable in the body
            action["runtimeConfiguration"] = secure_inputs()
        return action

    def wait(self, after: dict[str, list[str]], start: str) -> dict[str, Any]:
        """Wait what ADO's Retry-After asks (capped), after a 429/503 of ``start``."""
        seconds = call("min", call("int", call("coalesce", f"outputs('{start}')?['headers']?['Retry-After']", "'1'")),
                       str(self.max_retry_after))
        return {"type": "Wait", "runAfter": after,
                "inputs": {"interval": {"count": "@" + call("if", _throttled(start), seconds, "1"), "unit": "Second"}}}

    def record(self, after: dict[str, list[str]], start: str, etag: str) -> dict[str, Any]:
        """Merge ADO's answer into the claim (If-Match its ETag): triggered with the run, or failed."""
        answer = _answer(start)
        run_id = f"{answer}?['id']"
        ok = _ok(start)
        url = call("coalesce", f"{answer}?['_links']?['web']?['href']", f"{answer}?['url']", "''")
        triggered = call("setProperty", call("setProperty", "json('{\"state\":\"triggered\"}')", "'ado_run_id'",
                                             run_id), "'ado_run_url'", url)
        failed = call("setProperty", "json('{\"state\":\"failed\"}')", "'reason'", _reason(start))
        merge = call("setProperty", call("setProperty", call("if", ok, triggered, failed), "'updated_at'", "utcNow()"),
                     "'updated_at@odata.type'", "'Edm.DateTime'")
        return {"type": "Http", "runAfter": after, "inputs": self.table("PATCH", self.entity_url(), "@" + merge, etag)}


_UNRECORDED = "the ledger could not record the outcome (the claim was lost?)"
# A well-formed Table ETag no entity can carry (its timestamp is year 1): If-Match with it is always a 412.
_NEVER_ETAG = "W/\"datetime'0001-01-01T00%3A00%3A00.0000000Z'\""


def _ok(start: str) -> str:
    """ADO started a run: HTTP 200 with a run id (the runbook's ``_run_from`` needs an int id)."""
    return call("and", call("equals", _code(start), "200"), f.present(f"{_answer(start)}?['id']"))


def _code(start: str) -> str:
    return f"coalesce(outputs('{start}')?['statusCode'], 0)"


def _answer(start: str) -> str:
    """ADO's answer as an object, or {} (a 502 page is HTML: ``?[`` on a string would fail the action)."""
    return f"json(if(startsWith(string(body('{start}')), '{{'), string(body('{start}')), '{{}}'))"


def _throttled(start: str) -> str:
    return call("contains", "createArray(429, 503)", _code(start))


def _reason(start: str) -> str:
    """The failure reason; ``[ambiguous]`` exactly when relay.py would (ADO may have queued the run)."""
    code, answer = _code(start), _answer(start)
    ambiguous = call("or", call("contains", "createArray(500, 502, 504)", code), call("equals", code, "0"))
    return call("concat", call("if", ambiguous, q(AMBIGUOUS), "''"), "'ADO answered '",
                call("if", call("equals", code, "0"), "'nothing (timeout or reset)'",
                     call("concat", "'HTTP '", call("string", code))),
                call("if", call("contains", "createArray(200, 203)", code),
                     "' without a run (a sign-in page: was the credential accepted?)'", "''"),
                "' for '", f"parameters('routes')[{ROUTE}]['path']",
                call("if", f.present(f"{answer}?['message']"),
                     call("concat", "': '", f"string({answer}?['message'])"), "''"))
