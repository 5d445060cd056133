"""Shared fixtures: the official sample events (copied into tests/fixtures, see SOURCES.md) and paths."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

# TODO(before merge): list both plainly once they exist.
pytest_plugins = [p for p in ("tests.servers.pytest_plugin", "tests.azurite_plugin") if importlib.util.find_spec(p)]

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
