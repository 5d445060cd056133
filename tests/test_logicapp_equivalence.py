"""The Logic App behaves like the runbook, by execution: for the same delivery, the same ADO requests, the
same ledger rows and the same answer to Event Grid (see tests/logicapp_stack.py for the two sides)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import all_samples, sample
from tests.logicapp_stack import Observed, Pair, pair


@pytest.fixture
def both(azurite: str, table_name: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pair]:
    with pair(azurite, table_name) as p:
        for name, value in p.env.items():  # the relay runs in process: the environment a job gets
            monkeypatch.setenv(name, value)
        yield p


def same(logicapp: Observed, runbook: Observed) -> None:
    assert logicapp.requests == runbook.requests
    assert logicapp.rows == runbook.rows
    assert logicapp.status == runbook.status


def body(*events: Any) -> bytes:
    return json.dumps(list(events)).encode()


@pytest.mark.parametrize(("schema", "name"), all_samples())
def test_each_sample_event(both: Pair, schema: str, name: str) -> None:
    runbook, logicapp = both.deliver(body(sample(schema, name)))
    same(logicapp, runbook)
    assert runbook.status == 200
