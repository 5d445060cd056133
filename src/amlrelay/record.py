"""Record: what happened to each event, as one JSON line for machines and a table for people.

The JSON line is the contract of the runbook's Output stream (one per event and route): tooling can
parse a job's output, and the demo and ``amlrelay status`` render the same records as a table.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

OutcomeKind = Literal["triggered", "duplicate", "skipped", "rejected", "failed", "dry-run"]
FAILING: frozenset[str] = frozenset({"failed", "rejected"})


@dataclass(frozen=True)
class Outcome:
    event_id: str
    event_type: str
    subject: str
    outcome: OutcomeKind
    route: str | None = None
    ado_run_id: int | None = None
    ado_run_url: str | None = None
    reason: str | None = None
    request: dict[str, Any] | None = None  # dry runs only: the exact request that would be sent
    warning: str | None = None  # something to fix that did not fail the event (tag-back); exit code unchanged

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None}, separators=(",", ":"))


def exit_code(outcomes: Iterable[Outcome]) -> int:
    """0 when every event was handled; 1 when one failed (retry may help) or was triggered but not recorded;
    2 when one was rejected and none failed. The worst wins, so a mixed batch of triggered and rejected
    events exits 2: the job shows *Failed* and someone looks at the refusal, while the triggered events are
    in the ledger and stay duplicates. See the README's exit-code table."""
    outcomes = list(outcomes)
    kinds = {o.outcome for o in outcomes}
    if "failed" in kinds or any(o.outcome == "triggered" and o.reason for o in outcomes):
        return 1
    if "rejected" in kinds:
        return 2
    return 0


def table(rows: Sequence[Sequence[str]], headers: Sequence[str], *, width: int = 48) -> str:
    """A plain-text table; long cells are cut with an ellipsis so one bad value cannot wreck the layout."""

    def cut(text: str) -> str:
        return text if len(text) <= width else text[: width - 1] + "…"

    cells = [[cut(str(c)) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join([line.rstrip(), rule, *body])


def outcomes_table(outcomes: Sequence[Outcome]) -> str:
    rows = [
        (o.event_type, o.route or "-", o.outcome, str(o.ado_run_id or "-"), o.ado_run_url or o.reason or "")
        for o in outcomes
    ]
    return table(rows, ("event", "route", "outcome", "ado run", "link / reason"), width=70)
