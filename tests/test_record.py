"""Record: the JSON line tooling parses, the exit code Automation shows, the table people read."""

from __future__ import annotations

import json

import pytest

from amlrelay.record import FAILING, Outcome, exit_code, outcomes_table, table


def outcome(kind: str, **kw: object) -> Outcome:
    return Outcome("e1", "ModelRegistered", "models/m:1", kind, **kw)  # type: ignore[arg-type]


def test_the_json_line_has_exactly_the_fields_that_are_set_in_a_fixed_order() -> None:
    line = outcome("triggered", route="deploy", ado_run_id=7, ado_run_url="https://x/7").to_json()
    assert line == ('{"event_id":"e1","event_type":"ModelRegistered","subject":"models/m:1","outcome":"triggered",'
                    '"route":"deploy","ado_run_id":7,"ado_run_url":"https://x/7"}')
    assert "\n" not in outcome("failed", reason="a\nb").to_json()
    assert json.loads(outcome("dry-run", request={"method": "POST"}).to_json())["request"] == {"method": "POST"}
    assert json.loads(outcome("skipped", reason="").to_json())["reason"] == ""  # empty is set, only None is left out


@pytest.mark.parametrize(("kinds", "code"), [
    ([], 0),
    (["triggered", "duplicate", "skipped", "dry-run"], 0),
    (["triggered", "rejected"], 2),
    (["rejected", "failed"], 1),
    (["failed"], 1),
    (["skipped", "rejected", "duplicate"], 2),
])
def test_the_worst_outcome_decides_the_exit_code(kinds: list[str], code: int) -> None:
    assert exit_code(outcome(k) for k in kinds) == code  # a generator works: it is read once


def test_triggered_but_not_recorded_fails_the_job() -> None:
    assert exit_code([outcome("triggered", reason="triggered, but the ledger could not record it")]) == 1
    assert exit_code([outcome("triggered", reason=None), outcome("rejected")]) == 2


def test_failing_kinds() -> None:
    assert frozenset({"failed", "rejected"}) == FAILING


def test_table_pads_columns_and_cuts_long_cells_with_an_ellipsis() -> None:
    text = table([("a", "x" * 10), ("bbb", "y")], ("h1", "header2"), width=5)
    assert text.splitlines() == ["h1   header2", "---  -------", "a    xxxx…", "bbb  y"]
    assert table([("12345",)], ("h",), width=5).splitlines()[2] == "12345"  # exactly the width is kept
    assert table([("a", "a long value")], ("h1", "h2")).splitlines()[0] == "h1  h2"  # no trailing blanks
    assert table([("x" * 60,)], ("h",)).splitlines()[2] == "x" * 47 + "…"  # 48 characters by default


def test_outcomes_table_shows_the_run_or_the_reason() -> None:
    rows = outcomes_table([outcome("triggered", route="deploy", ado_run_id=7, ado_run_url="https://x/7"),
                           outcome("skipped", reason="no route matches")]).splitlines()
    assert rows[0].split() == ["event", "route", "outcome", "ado", "run", "link", "/", "reason"]
    assert rows[2].split() == ["ModelRegistered", "deploy", "triggered", "7", "https://x/7"]
    assert rows[3].split() == ["ModelRegistered", "-", "skipped", "-", "no", "route", "matches"]
    long_reason = outcomes_table([outcome("failed", reason="r" * 100)]).splitlines()[2]
    assert long_reason.split()[-1] == "r" * 69 + "…"  # 70 characters per cell
    bare = outcomes_table([outcome("duplicate", route="deploy")]).splitlines()[2]
    assert bare.split() == ["ModelRegistered", "deploy", "duplicate", "-"]  # neither link nor reason: blank
