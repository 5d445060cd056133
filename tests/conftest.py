"""Shared fixtures: the official sample events (copied into tests/fixtures, see SOURCES.md) and paths."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from tests import secret_guard

pytest_plugins = ["tests.servers.pytest_plugin", "tests.azurite_plugin", "tests.aml_waiting", "tests.mutation.ordering",
                  "tests.ledger_clock"]

# Property tests: reproducible by default (the same examples on every run and machine, no example database),
# exploratory on demand: HYPOTHESIS_PROFILE=explore scripts/test (random seeds, many more examples).
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, max_examples=2000, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
EXAMPLES = FIXTURES / "eventgrid" / "examples"
ROUTES_FILE = ROOT / "routes.json"
SAMPLE_WORKSPACE = (
    "/subscriptions/{subscription-id}/resourceGroups/{resource-group-name}/providers/"
    "Microsoft.MachineLearningServices/workspaces/{workspace-name}"
)
SAMPLE_TYPES = ("run_completed", "run_status_changed", "model_registered", "model_deployed", "dataset_drift_detected")
SCHEMAS = ("event-grid-schema", "cloud-events-schema")


def sample(schema: str, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EXAMPLES / schema / f"{name}.json").read_text(encoding="utf-8"))
    return data


def all_samples() -> list[tuple[str, str]]:
    return [(schema, name) for schema in SCHEMAS for name in SAMPLE_TYPES]


@pytest.fixture
def routes_file() -> Path:
    return ROUTES_FILE


# --- secret hygiene over every output stream of the suite (see tests/secret_guard.py) ------------------

def pytest_configure(config: pytest.Config) -> None:
    secret_guard.register_defaults()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for stream, text in (("stdout", report.capstdout), ("stderr", report.capstderr), ("log", report.caplog)):
        secret_guard.record(f"{report.nodeid} ({report.when}, {stream})", text)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    found = secret_guard.leaks()
    if found:
        session.config.stash[_LEAKS] = found
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    found = terminalreporter.config.stash.get(_LEAKS, [])
    if found:
        terminalreporter.section("SECRET LEAKED INTO OUTPUT", red=True)
        for line in found:
            terminalreporter.write_line(line)


_LEAKS = pytest.StashKey[list[str]]()
