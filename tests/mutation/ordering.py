"""Under mutmut only: run a mutant's tests fastest first, within a time budget (see scripts/mutation).

mutmut runs every test that reaches the mutated function, stops at the first failure, and hands them to pytest
in no particular order. Most mutants die in the first fast test, but a survivor pays for every test that
reaches it (a minute for the core's shared functions), which makes a whole-core run take most of a day on two
cores. Ordering by the duration mutmut recorded makes kills cheap; the budget (AMLRELAY_MUTATION_BUDGET seconds
of recorded test time, 0 = none) caps what a survivor costs. A budget can only turn a kill into a survivor,
never the other way round, so the figures it gives are a floor; `scripts/mutation --recheck` re-runs the
survivors with no budget before anyone writes a test or an equivalence for them.

While mutmut collects its stats, it also hands the calls that child processes made (the runbook tests
start the package as Automation does; see tests/mutation/subprocess_hits.py) to the test that started them.

Outside mutmut (the normal suite) this plugin does nothing.
"""

from __future__ import annotations

import json
import os
import tempfile
from functools import cache
from pathlib import Path

import pytest

HITS_ENV = "MUTMUT_AMLRELAY_HITS"  # not AMLRELAY_*: the runbook tests keep those out of a child's environment
UNKNOWN_DURATION = 1.0  # a test mutmut has not timed yet: assume it is slow-ish, not free


def _mutant_under_test() -> str:
    return os.environ.get("MUTANT_UNDER_TEST", "")


@cache
def _durations() -> dict[str, float]:
    path = Path.cwd() / "mutmut-stats.json"  # mutmut runs the tests from inside mutants/
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {name: float(seconds) for name, seconds in data.get("duration_by_test", {}).items()}


def budget() -> float:
    raw = os.environ.get("AMLRELAY_MUTATION_BUDGET", "0").strip() or "0"
    try:
        return max(0.0, float(raw))
    except ValueError:
        message = f"AMLRELAY_MUTATION_BUDGET={raw!r} is not a number of seconds (0 = no budget)"
        raise pytest.UsageError(message) from None


def order_and_cap(nodeids: list[str], durations: dict[str, float], seconds: float) -> tuple[list[int], list[int]]:
    """Indexes to keep (fastest first) and to drop, for nodeids whose recorded durations are given."""
    ranked = sorted(range(len(nodeids)), key=lambda i: (durations.get(nodeids[i], UNKNOWN_DURATION), i))
    if seconds <= 0:
        return ranked, []
    keep: list[int] = []
    spent = 0.0
    for position, index in enumerate(ranked):
        cost = durations.get(nodeids[index], UNKNOWN_DURATION)
        if keep and spent + cost > seconds:
            return keep, ranked[position:]
        keep.append(index)
        spent += cost
    return keep, []


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "__mutmut_" not in _mutant_under_test():
        return
    keep, drop = order_and_cap([item.nodeid for item in items], _durations(), budget())
    if drop:
        config.hook.pytest_deselected(items=[items[i] for i in drop])
    items[:] = [items[i] for i in keep]


def pytest_configure(config: pytest.Config) -> None:
    if _mutant_under_test() == "stats" and not os.environ.get(HITS_ENV):
        os.environ[HITS_ENV] = tempfile.mkdtemp(prefix="amlrelay-mutmut-hits-")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    """Before mutmut's own teardown hook files this test's calls, add those its child processes made."""
    folder = os.environ.get(HITS_ENV, "")
    if _mutant_under_test() != "stats" or not folder:
        return
    from mutmut.state import state  # type: ignore[import-not-found,unused-ignore]  # under mutmut only

    for path in Path(folder).glob("*.hits"):
        state()._stats.update(path.read_text(encoding="utf-8").split())
        path.unlink()
