"""The replay runbook's webhook-expiry check (review SHOULD 12 of issue 9): Azure Monitor has no metric for
an Automation webhook's expiry, so the hourly replay runbook reads AMLRELAY_WEBHOOK_EXPIRES (an Automation
variable infra/main.bicep sets to the webhook's expiryTime) and fails its job with an ERROR line within the
warning period -- the failed-runbook-jobs alert then fires while there is time to re-run scripts/deploy."""

from __future__ import annotations

import datetime as dt
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.timezone.utc)


def _runbook() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "runbooks" / "replay_dead_letters.py"
    spec = importlib.util.spec_from_file_location("replay_dead_letters_runbook", path)
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("expires", "warn_days", "code", "says"), [
    ("2027-11-30T12:00:00Z", "", 0, ""),  # a fresh one-year webhook
    ("2026-12-31T12:00:01Z", "", 0, ""),  # just outside the default 30 days
    ("2026-12-11T12:00:00Z", "", 1, "expires in 10 day(s), at 2026-12-11T12:00:00Z"),
    ("2026-12-11T12:00:00+00:00", "7", 0, ""),  # a shorter warning period
    ("2026-11-30T00:00:00Z", "", 1, "expired at 2026-11-30T00:00:00Z"),
    ("2026-12-11T12:00:00", "", 1, "expires in 10 day(s)"),  # no offset: UTC, as ARM writes it
    ("", "", 0, ""),  # no webhook (Logic App handler)
    ("next year", "", 1, "cannot check the webhook's expiry"),
    ("2027-11-30T12:00:00Z", "soon", 1, "cannot check the webhook's expiry"),
])
def test_expiry_within_the_warning_period_fails_the_job(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str], expires: str,
                                                        warn_days: str, code: int, says: str) -> None:
    monkeypatch.setenv("AMLRELAY_WEBHOOK_EXPIRES", expires)
    monkeypatch.setenv("AMLRELAY_WEBHOOK_EXPIRY_WARN_DAYS", warn_days)
    assert _runbook().webhook_expiry(NOW) == code
    out = capsys.readouterr()
    assert out.err == ""  # Automation's Python sandbox drops stderr
    if says:
        assert out.out.startswith("ERROR: ")
        assert says in out.out
        assert "scripts/deploy" in out.out
    else:
        assert out.out == ""


def test_the_job_exit_code_includes_the_check() -> None:
    text = (Path(__file__).resolve().parents[1] / "runbooks" / "replay_dead_letters.py").read_text()
    assert "sys.exit(max(swept, replayed, webhook_expiry()))" in text
