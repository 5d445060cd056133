"""A settable clock for every ledger holder, shared by the ledger and settings tests (stale-claim timing)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest

import amlrelay.ledger as ledger_module

T0 = datetime(2026, 11, 30, 12, 0, 0, tzinfo=timezone.utc)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[timedelta], datetime]:
    """Every holder's clock, set by the test: ``clock(offset)`` makes "now" T0 + offset."""
    now = [T0]
    monkeypatch.setattr(ledger_module, "_now", lambda: now[0])

    def move(offset: timedelta) -> datetime:
        now[0] = T0 + offset
        return now[0]

    return move
