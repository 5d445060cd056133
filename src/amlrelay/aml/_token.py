"""The continuation token of a wait: everything a later ADO job needs to carry on waiting, and nothing else.

Like an azure-core poller's ``continuation_token()``, it is an opaque string the caller stores (here: an
ADO output variable) and hands back (``amlrelay aml wait --resume TOKEN``). It is versioned base64url JSON
so it survives YAML, shell quoting and logging commands unescaped, and it carries only non-secret facts:
the workspace id, the job names, when each job's current queue spell began, its earlier queue time,
when it was first seen running (epoch seconds, so the
queue and run deadlines keep counting across agents) and the deadlines themselves. No token, no URL
with credentials: printing it in a build log is safe.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from ._client import check_job_name
from ._errors import AmlError
from ._workspace import Workspace

VERSION = 1
MAX_TOKEN_CHARS = 16_000  # ADO variables are fine with this; a bigger "token" is not one of ours
_HINT = ("Pass the value of the amlWaitToken output variable of the step that started the wait, unchanged "
         "(or wait on the job by name: amlrelay aml wait --workspace ... JOB).")


@dataclass
class JobClock:
    """Since when a job has been waiting for compute in its current queue spell, how long its earlier spells
    lasted (a preempted job goes back to Queued; its earlier queue time still counts, its running time does
    not), and when it was first seen past the queue (epoch seconds)."""

    name: str
    queued_since: float | None = None
    running_since: float | None = None
    last_status: str = ""
    queued_before: float = 0.0

    def queued_for(self, now: float) -> float:
        """Seconds spent in queue states so far, over every spell."""
        return self.queued_before + (now - self.queued_since if self.queued_since is not None else 0.0)


@dataclass
class WaitState:
    workspace: Workspace
    jobs: list[JobClock]
    started: float
    queue_timeout: float | None = None
    run_timeout: float | None = None
    resumes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def encode(state: WaitState) -> str:
    payload = {
        "v": VERSION, "ws": state.workspace.arm_path, "t0": round(state.started, 3), "n": state.resumes,
        "qt": state.queue_timeout, "rt": state.run_timeout,
        "jobs": [{"n": j.name, "q": _round(j.queued_since), "r": _round(j.running_since), "s": j.last_status,
                  **({"qb": _round(j.queued_before)} if j.queued_before else {})} for j in state.jobs],
    }
    raw = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode(token: str) -> WaitState:
    text = (token or "").strip()
    if not text or len(text) > MAX_TOKEN_CHARS:
        raise AmlError("The continuation token is empty or too long to be an amlrelay wait token.",
                       status=None, hint=_HINT)
    try:
        data = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise AmlError("The continuation token is not an amlrelay wait token (not base64url JSON).",
                       status=None, hint=_HINT) from None
    if not isinstance(data, dict) or "v" not in data:
        raise AmlError("The continuation token is not an amlrelay wait token.", status=None, hint=_HINT)
    if data["v"] != VERSION:
        raise AmlError(f"The continuation token has version {data['v']!r}; this amlrelay reads version {VERSION}.",
                       status=None, hint="Use the same amlrelay version in the step that waits and in the step "
                       "that resumes (pin it in the pipeline).")
    try:
        jobs = [JobClock(check_job_name(j["n"]), _num(j.get("q")), _num(j.get("r")), str(j.get("s") or ""),
                         _num(j.get("qb")) or 0.0) for j in data["jobs"]]
        state = WaitState(Workspace.parse(data["ws"]), jobs, float(data["t0"]), _num(data.get("qt")),
                          _num(data.get("rt")), int(data.get("n", 0)))
    except (KeyError, TypeError, ValueError, AmlError):
        raise AmlError("The continuation token is damaged (fields missing or of the wrong type).", status=None,
                       hint=_HINT) from None
    if not jobs:
        raise AmlError("The continuation token names no job.", status=None, hint=_HINT)
    return state


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _num(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("not a number")
    return float(value)
