"""A small executor for the workflow definitions amlrelay generates, so tests can *run* the Logic App
against the same loopback stand-ins as the runbook instead of comparing strings.

It implements exactly the action types the generator emits, with the documented semantics (LOGICAPPS.md,
EXC, LIM, the loops article):

* ``runAfter``: an action runs when every predecessor ended in one of its listed statuses, else it is
  ``Skipped`` (which then propagates); statuses are Succeeded, Failed, Skipped, TimedOut;
* ``Http``: 2xx succeeds, anything else fails; ``retryPolicy`` none/fixed/exponential/default (4 retries on
  408, 429 and 5xx and connection failures); ``limit.timeout`` ends the action ``TimedOut``;
  ``ManagedServiceIdentity`` authentication asks an identity endpoint for a token for the audience;
* ``Foreach``/``If``/``Scope``: Failed when an action inside failed ("when any action in the scope fails ...
  the scope's status is marked Failed"); ``Until``: the status of its *last* iteration (loops article);
* ``Response``: the answer to the caller; none at all means Event Grid never gets one (504 here);
* ``runtimeConfiguration.secureData`` (SEC): :attr:`RunResult.history` is what run history shows, a
  secured ``inputs``/``outputs`` as ``HIDDEN`` (on Compose, Parse JSON and Response, secure inputs hide the
  outputs too). Nothing is hidden by propagation, which Azure adds for some readers of secured values: the
  history here shows at least what Azure's does. A setting an action type does not support is an error.

Billing (PRICE): every executed trigger and action counts, Skipped ones do not; a loop counts once plus its
inner actions per iteration. :attr:`RunResult.billable` is that count. Waits use a virtual clock.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import requests

from ._expressions import evaluate_value
from ._wdl import ExpressionError

TokenSource = Callable[[str], str]
"""audience -> access token: the workflow's managed identity."""


@dataclass
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: Any


@dataclass
class RunResult:
    response: HttpAnswer
    actions: list[tuple[str, str]] = field(default_factory=list)  # (name, status) in execution order
    billable: int = 1  # the trigger
    failures: list[tuple[str, Any]] = field(default_factory=list)  # (name, error or outputs) of failed actions
    history: list[dict[str, Any]] = field(default_factory=list)  # name, status, inputs, outputs, as shown

    def statuses(self, name: str) -> list[str]:
        return [status for action, status in self.actions if action == name]


class _Scope:
    """Action results visible at one nesting level (an iteration sees its own and its parents')."""

    def __init__(self, parent: _Scope | None = None, item: tuple[str, Any] | None = None) -> None:
        self.parent, self.item = parent, item
        self.results: dict[str, dict[str, Any]] = {}

    def find(self, name: str) -> dict[str, Any] | None:
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.results:
                return scope.results[name]
            scope = scope.parent
        return None


class _Context:
    def __init__(self, run: _Run, scope: _Scope) -> None:
        self.run, self.scope = run, scope

    def trigger_outputs(self) -> dict[str, Any]:
        return self.run.trigger

    def parameter(self, name: str) -> Any:
        if name not in self.run.parameters:
            raise ExpressionError(f"the workflow parameter '{name}' is not found")
        return self.run.parameters[name]

    def variable(self, name: str) -> Any:
        if name not in self.run.variables:
            raise ExpressionError(f"the variable '{name}' is not initialized")
        return self.run.variables[name]

    def action(self, name: str) -> dict[str, Any]:
        result = self.scope.find(name)
        if result is None:
            raise ExpressionError(f"the action '{name}' has not run")
        if result["status"] == "Skipped":
            raise ExpressionError(f"the action '{name}' was skipped: its outputs cannot be referenced")
        return result

    def loop_item(self, name: str | None) -> Any:
        scope: _Scope | None = self.scope
        while scope is not None:
            if scope.item is not None and (name is None or scope.item[0] == name):
                return scope.item[1]
            scope = scope.parent
        raise ExpressionError(f"items('{name}') is used outside that For each")

    def workflow(self) -> dict[str, Any]:
        return {"name": self.run.name, "run": {"name": self.run.run_id}}

    def now(self) -> datetime:
        return self.run.now()


@dataclass
class Workflow:
    """A definition plus what the deployment gives it: parameter values and a managed identity."""

    definition: Mapping[str, Any]
    parameters: Mapping[str, Any]
    tokens: TokenSource
    name: str = "amlrelay"
    verify: bool | str = True  # CA bundle for HTTPS stand-ins
    sleep: Callable[[float], None] | None = None  # None: virtual time only (tests never really sleep)

    def post(self, body: bytes, headers: Mapping[str, str] | None = None) -> RunResult:
        """Deliver one request to the Request trigger, run the workflow, and return the caller's answer."""
        headers = dict(headers or {"Content-Type": "application/json"})
        if not any(k.lower() == "content-length" for k in headers):  # as the HTTP front end reports it
            headers["Content-Length"] = str(len(body))
        ctype = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
        parsed: Any = body.decode("utf-8", "replace")
        if "json" in ctype.lower():
            try:
                parsed = json.loads(body) if body else None
            except ValueError:  # assumed, not verified against the service: refused as invalid content
                return RunResult(HttpAnswer(400, {}, {"error": {"code": "InvalidRequestContent"}}))
        params = {n: self.parameters.get(n, spec.get("defaultValue"))
                  for n, spec in self.definition.get("parameters", {}).items()}
        missing = [n for n, v in params.items() if v is None]
        if missing:
            raise ValueError(f"workflow parameters without a value: {', '.join(missing)}")
        run = _Run(self, params, {"headers": headers, "body": parsed})
        run.block(self.definition["actions"], _Scope())
        answer = run.response or HttpAnswer(504, {}, {"error": "the workflow finished without a Response"})
        return RunResult(answer, run.log, run.billable, run.failures, run.history)


_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$")


def seconds(duration: str) -> float:
    match = _DURATION.match(duration)
    if not match:
        raise ValueError(f"not an ISO 8601 duration: {duration!r}")
    d, h, m, s = (float(g) if g else 0.0 for g in match.groups())
    return d * 86400 + h * 3600 + m * 60 + s


class _Run:
    def __init__(self, workflow: Workflow, parameters: dict[str, Any], trigger: dict[str, Any]) -> None:
        self.workflow, self.parameters, self.trigger = workflow, parameters, trigger
        self.name, self.run_id = workflow.name, "08585" + uuid.uuid4().hex[:27].upper()
        self.variables: dict[str, Any] = {}
        self.response: HttpAnswer | None = None
        self.log: list[tuple[str, str]] = []
        self.failures: list[tuple[str, Any]] = []
        self.history: list[dict[str, Any]] = []
        self.billable = 1
        self.offset = 0.0
        self.started = datetime.now(timezone.utc)
        self.tokens: dict[str, str] = {}

    def now(self) -> datetime:
        return datetime.now(timezone.utc) + timedelta(seconds=self.offset)

    def wait(self, secs: float) -> None:
        if self.workflow.sleep is not None:
            self.workflow.sleep(secs)
        else:
            self.offset += secs

    def block(self, actions: Mapping[str, Any], scope: _Scope) -> bool:
        """Run a set of actions in runAfter order; True when none of them ended Failed/TimedOut."""
        pending = dict(actions)
        clean = True
        while pending:
            ready = [n for n, a in pending.items() if all(p in scope.results for p in a.get("runAfter", {}))]
            if not ready:
                raise ValueError(f"runAfter cycle or unknown predecessor among {', '.join(pending)}")
            for name in ready:
                action = pending.pop(name)
                wanted = action.get("runAfter", {})
                runs = all(scope.results[p]["status"] in s for p, s in wanted.items())
                result = self.execute(name, action, scope) if runs else {"status": "Skipped"}
                scope.results[name] = result
                self.log.append((name, result["status"]))
                shown = _shown(name, action, result)
                self.history.append(shown)
                if result["status"] in ("Failed", "TimedOut") and action["type"] not in ("If", "Foreach", "Until"):
                    self.failures.append((name, result.get("error") or shown["outputs"]))
                clean = clean and result["status"] not in ("Failed", "TimedOut")
        return clean

    def execute(self, name: str, action: Mapping[str, Any], scope: _Scope) -> dict[str, Any]:
        self.billable += 1
        ctx = _Context(self, scope)
        kind = action["type"]
        try:
            if kind in ("If", "Foreach", "Until", "Scope"):
                return self.control(name, kind, action, scope, ctx)
            inputs = evaluate_value(action.get("inputs", {}), ctx)
        except ExpressionError as exc:
            return {"status": "Failed", "error": {"code": "InvalidTemplate", "message": str(exc)}}
        if kind == "Http":
            return {**self.http(inputs, action), "inputs": inputs}
        if kind == "Response":
            if self.response is not None:
                return {"status": "Failed", "error": {"code": "ResponseAlreadySent"}}
            self.response = HttpAnswer(int(inputs.get("statusCode", 200)), dict(inputs.get("headers") or {}),
                                       inputs.get("body"))
            return {"status": "Succeeded", "inputs": inputs}
        if kind == "InitializeVariable":
            for var in inputs["variables"]:
                self.variables[var["name"]] = var.get("value")
            return {"status": "Succeeded", "inputs": inputs}
        if kind == "AppendToArrayVariable":
            self.variables[inputs["name"]].append(inputs["value"])
            return {"status": "Succeeded", "inputs": inputs}
        if kind == "SetVariable":
            self.variables[inputs["name"]] = inputs["value"]
            return {"status": "Succeeded", "inputs": inputs}
        if kind == "Compose":
            return {"status": "Succeeded", "inputs": inputs, "outputs": inputs}
        if kind == "Wait":
            interval = inputs["interval"]
            unit = {"Second": 1, "Minute": 60, "Hour": 3600}[interval["unit"]]
            self.wait(float(interval["count"]) * unit)
            return {"status": "Succeeded", "inputs": inputs}
        raise ValueError(f"action type {kind!r} is not implemented by this executor")

    def control(self, name: str, kind: str, action: Mapping[str, Any], scope: _Scope, ctx: _Context) -> dict[str, Any]:
        if kind == "Scope":
            return {"status": "Succeeded" if self.block(action["actions"], _Scope(scope)) else "Failed"}
        if kind == "If":
            condition = _condition(action["expression"], ctx)
            branch = action.get("actions", {}) if condition else action.get("else", {}).get("actions", {})
            return {"status": "Succeeded" if self.block(branch, _Scope(scope)) else "Failed"}
        if kind == "Foreach":
            items = evaluate_value(action["foreach"], ctx)
            if not isinstance(items, list):
                return {"status": "Failed", "error": {"code": "InvalidTemplate", "message": "foreach is not an array"}}
            clean = True
            for item in items:
                clean = self.block(action["actions"], _Scope(scope, (name, item))) and clean
            return {"status": "Succeeded" if clean else "Failed"}
        limit = action.get("limit", {})
        count = int(limit.get("count", 60))
        deadline = self.now() + timedelta(seconds=seconds(limit.get("timeout", "PT1H")))
        inner, last = _Scope(scope), True
        for _ in range(count):
            inner = _Scope(scope)
            last = self.block(action["actions"], inner)
            done = _condition(action["expression"], _Context(self, inner))
            if done or self.now() >= deadline:
                break
        _expose(scope, inner)
        return {"status": "Succeeded" if last else "Failed"}

    def token(self, audience: str) -> str:
        if audience not in self.tokens:
            self.tokens[audience] = self.workflow.tokens(audience)
        return self.tokens[audience]

    def http(self, inputs: Mapping[str, Any], action: Mapping[str, Any]) -> dict[str, Any]:
        headers = {k: str(v) for k, v in (inputs.get("headers") or {}).items()}
        auth = inputs.get("authentication")
        if auth is not None:
            if auth.get("type") != "ManagedServiceIdentity":
                raise ValueError(f"authentication type {auth.get('type')!r} is not implemented")
            headers["Authorization"] = "Bearer " + self.token(auth["audience"])
        body = inputs.get("body")
        data = None if body is None else body.encode() if isinstance(body, str) else json.dumps(body).encode()
        timeout = min(seconds(action.get("limit", {}).get("timeout", "PT120S")), 120.0)
        policy = inputs.get("retryPolicy") or {"type": "default"}
        attempt = 0
        while True:
            result = self.send(inputs["method"], inputs["uri"], headers, data, timeout)
            status = result.get("outputs", {}).get("statusCode")
            retryable = status is None or status in (408, 429) or status >= 500
            delay = _retry_delay(policy, attempt, result) if retryable and result["status"] != "Succeeded" else None
            if delay is None:
                return result
            attempt += 1
            self.wait(delay)

    def send(self, method: str, uri: str, headers: dict[str, str], data: bytes | None,
             timeout: float) -> dict[str, Any]:
        try:
            reply = requests.request(method, uri, headers=headers, data=data, timeout=timeout,
                                     verify=self.workflow.verify, allow_redirects=False)
        except requests.exceptions.Timeout:
            return {"status": "TimedOut", "error": {"code": "ActionTimedOut"}, "outputs": {}}
        except requests.exceptions.RequestException as exc:
            return {"status": "Failed", "error": {"code": "ConnectionFailure", "message": type(exc).__name__},
                    "outputs": {}}
        body: Any = reply.text or None
        if body is not None and "json" in reply.headers.get("Content-Type", ""):
            with contextlib.suppress(ValueError):
                body = reply.json()
        outputs = {"statusCode": reply.status_code, "headers": dict(reply.headers), "body": body}
        return {"status": "Succeeded" if 200 <= reply.status_code < 300 else "Failed", "outputs": outputs}


def _retry_delay(policy: Mapping[str, Any], attempt: int, result: Mapping[str, Any]) -> float | None:
    """Seconds before the next attempt, or None to stop (EXC, LIM; Retry-After on 429 is honoured: HTTP)."""
    kind = str(policy.get("type", "default")).lower()
    if kind == "none":
        return None
    count = int(policy.get("count", 4))
    if attempt >= count:
        return None
    retry_after = result.get("outputs", {}).get("headers", {}).get("Retry-After")
    if result.get("outputs", {}).get("statusCode") == 429 and retry_after and retry_after.isdigit():
        return float(retry_after)
    if kind == "fixed":
        return seconds(policy.get("interval", "PT20S"))
    low = seconds(policy.get("minimumInterval", "PT5S"))
    high = seconds(policy.get("maximumInterval", "PT45S" if kind == "default" else "PT1H"))
    base = seconds(policy.get("interval", "PT7.5S" if kind == "default" else "PT7S"))
    return float(min(high, max(low, random.uniform(0.8, 1.2) * base * 2 ** attempt)))  # noqa: S311


HIDDEN = "(secured: hidden in run history)"
_NO_SECURE_INPUTS = {"AppendToArrayVariable", "InitializeVariable", "SetVariable", "Foreach", "If", "Scope", "Until"}
_NO_SECURE_OUTPUTS = _NO_SECURE_INPUTS | {"Compose", "ParseJson", "Response", "Wait"}


def _shown(name: str, action: Mapping[str, Any], result: Mapping[str, Any]) -> dict[str, Any]:
    """One action as run history shows it (SEC): its own secureData settings applied."""
    kind = action["type"]
    secured = set(action.get("runtimeConfiguration", {}).get("secureData", {}).get("properties", []))
    unsupported = {p for p in secured if kind in (_NO_SECURE_INPUTS if p == "inputs" else _NO_SECURE_OUTPUTS)}
    if unsupported or not secured <= {"inputs", "outputs"}:
        raise ValueError(f"action {name!r}: a {kind} cannot secure {', '.join(sorted(secured))} (SEC)")
    if kind in ("Compose", "ParseJson", "Response") and "inputs" in secured:
        secured.add("outputs")
    return {"name": name, "status": result["status"],
            **{part: HIDDEN if part in secured else result.get(part) for part in ("inputs", "outputs")}}


def _condition(expression: Any, ctx: _Context) -> bool:
    value = evaluate_value(expression, ctx)
    if not isinstance(value, bool):
        raise ExpressionError(f"the condition must be a boolean, got {value!r}")
    return value


def _expose(scope: _Scope, inner: _Scope) -> None:
    """After a loop, its inner actions' last results are visible to the actions after it."""
    scope.results.update(inner.results)


def check_expressions(definition: Mapping[str, Any]) -> int:
    """Parse every expression of a definition; returns how many there are."""
    from ._expressions import FUNCTION_NAMES, function_names
    from ._wdl import expressions_in, parse_template

    count = 0
    for text in expressions_in(definition):
        template = parse_template(text)
        for part in template.parts:
            if not isinstance(part, str):
                unknown = function_names(part) - FUNCTION_NAMES
                if unknown:
                    raise ExpressionError(f"functions not implemented by the evaluator: {', '.join(sorted(unknown))}")
                count += 1
    return count
