"""Reconcile: after an ambiguous answer, find the run this request started among the pipeline's runs — and
only that one: not another outcome's, not one older than the attempt (minus clock skew), not past the newest
200, and never by a value ADO does not return."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from amlrelay.auth import EntraCredential, managed_identity
from amlrelay.events import parse_events
from amlrelay.models import AmlEvent
from amlrelay.reconcile import CLOCK_SKEW, MAX_RUNS_EXAMINED, CannotReconcileError, _parse_time, find_started_run
from amlrelay.router import PipelineRunRequest, build_request
from amlrelay.routes import parse_routes
from amlrelay.trigger import AdoClient
from tests.conftest import sample
from tests.servers.ado import ADO_RESOURCE, AdoServer, PipelineDef
from tests.servers.identity import IdentityServer

ROUTES = parse_routes(json.dumps({"version": 1, "routes": [
    {"name": "deploy", "events": ["ModelRegistered"],
     "pipeline": {"project": "mlops", "id": 60, "variables": {"M": "{{ modelName }}"},
                  "templateParameters": {"v": "{{ modelVersion }}"}}},
    {"name": "vague", "events": ["ModelRegistered"], "pipeline": {"project": "mlops", "id": 60,
                                                                  "variables": {"M": "{{ modelName }}"}}}]}))
PIPELINE = PipelineDef("deploy", variables_settable_at_queue_time=frozenset({"M"}),
                       template_parameters=frozenset({"v"}))


@pytest.fixture
def ado(identity_server: IdentityServer, azure_env: dict[str, str]) -> Iterator[AdoServer]:
    with AdoServer("contoso", pipelines={("mlops", 60): PIPELINE},
                   bearer_tokens={identity_server.token_for(ADO_RESOURCE)}) as server:
        yield server


def reader(ado: AdoServer) -> AdoClient:
    return AdoClient(ado.org_url, EntraCredential(managed_identity(None)), retries=0, backoff=0)


def request(version: str = "20", route: str = "deploy") -> PipelineRunRequest:
    raw = sample("event-grid-schema", "model_registered")
    raw["data"]["ModelVersion"] = version
    [event] = parse_events([raw])
    assert isinstance(event, AmlEvent)
    return build_request(ROUTES.by_name(route), event)


def seed(ado: AdoServer, version: str, created: datetime | None = None) -> dict[str, Any]:
    return ado.seed_run("mlops", 60, created=created, variables={"M": "sklearn_regression_model"},
                        template_parameters={"v": version})


def test_the_fingerprint_is_made_of_the_templated_identity() -> None:
    assert request().fingerprint == {"variables.M": "sklearn_regression_model", "templateParameters.v": "20"}


def test_a_route_without_the_identity_cannot_be_reconciled_and_says_what_to_add(ado: AdoServer) -> None:
    with pytest.raises(CannotReconcileError) as caught:
        find_started_run(reader(ado), request(route="vague"), since=datetime.now(timezone.utc))
    assert caught.value.message == ("Route 'vague' does not send the values that identify this AML outcome, so "
                                    "amlrelay cannot tell whether an earlier attempt already started its run.")
    assert caught.value.hint == (
        "Add variables or template parameters with the outcome's identity ('{{ runId }}'; '{{ modelName }}' and "
        "'{{ modelVersion }}'; '{{ serviceName }}' and '{{ modelIds }}'; '{{ dataDriftId }}' and "
        "'{{ runId | none }}') that are not isSecret (ADO never returns secret values), see `amlrelay "
        "check-routes`; until then, check the pipeline's runs and replay by hand if none was started.")
    assert ado.requests == []  # it does not even look


def test_the_newest_matching_run_since_the_attempt_is_found(ado: AdoServer) -> None:
    now = ado.now()
    seed(ado, "20", now - timedelta(minutes=1))
    mine = seed(ado, "20", now)
    seed(ado, "21", now)  # another outcome, newer
    found = find_started_run(reader(ado), request("20"), since=datetime.now(timezone.utc))
    assert found is not None
    assert found.id == mine["id"]
    assert found.url == mine["_links"]["web"]["href"]


def test_runs_older_than_the_attempt_minus_clock_skew_are_not_examined(ado: AdoServer) -> None:
    assert timedelta(minutes=5) == CLOCK_SKEW
    attempt = datetime.now(timezone.utc)
    seed(ado, "20", ado.now() - CLOCK_SKEW - timedelta(seconds=5))
    seed(ado, "21", ado.now())
    assert find_started_run(reader(ado), request("20"), since=attempt) is None
    reads = [r for r in ado.requests if r.method == "GET" and r.path.rstrip("/").split("/")[-1].isdigit()]
    assert len(reads) == 1  # the newer run was read; the list stops at the first older one


def test_at_most_the_newest_200_runs_are_read(ado: AdoServer) -> None:
    assert MAX_RUNS_EXAMINED == 200
    seed(ado, "20")
    for _ in range(200):
        seed(ado, "other")
    assert find_started_run(reader(ado), request("20"), since=datetime.now(timezone.utc)) is None
    reads = [r for r in ado.requests if r.method == "GET" and r.path.rstrip("/").split("/")[-1].isdigit()]
    assert len(reads) == 200


def test_a_run_is_only_the_same_when_every_identity_value_matches(ado: AdoServer) -> None:
    ado.seed_run("mlops", 60, variables={"M": "other_model"}, template_parameters={"v": "20"})
    ado.seed_run("mlops", 60, template_parameters={"v": "20"})  # no variables at all
    ado.seed_run("mlops", 60, variables={"M": "sklearn_regression_model"})  # no parameters
    assert find_started_run(reader(ado), request("20"), since=datetime.now(timezone.utc)) is None


@pytest.mark.parametrize(("text", "parsed"), [
    ("2026-12-01T10:00:00.1234567Z", datetime(2026, 12, 1, 10, 0, 0, 123456, tzinfo=timezone.utc)),
    ("2026-12-01T10:00:00Z", datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)),
    ("2026-12-01T10:00:00+02:00", datetime(2026, 12, 1, 8, 0, tzinfo=timezone.utc)),
    ("2026-12-01T10:00:00", None),  # no zone: cannot be compared, so the run is examined
    ("yesterday", None),
    (None, None),
    (1764583200, None),
])
def test_ados_timestamps(text: Any, parsed: datetime | None) -> None:
    assert _parse_time(text) == parsed


def test_a_run_without_a_readable_creation_time_is_examined(ado: AdoServer) -> None:
    class Undated:
        def list_runs(self, project: str, pipeline_id: int) -> list[dict[str, Any]]:
            runs = reader(ado).list_runs(project, pipeline_id)
            return [{"id": run["id"], "createdDate": "not a date"} for run in runs]

        def get_run(self, project: str, pipeline_id: int, run_id: int) -> dict[str, Any]:
            return reader(ado).get_run(project, pipeline_id, run_id)

    seed(ado, "20", ado.now() - timedelta(days=30))
    assert find_started_run(Undated(), request("20"), since=datetime.now(timezone.utc)) is not None


def test_a_run_created_exactly_at_the_window_start_is_examined(ado: AdoServer) -> None:
    created = ado.now().replace(microsecond=123456)
    seed(ado, "20", created)
    assert find_started_run(reader(ado), request("20"), since=created + CLOCK_SKEW) is not None
    assert find_started_run(reader(ado), request("20"),
                            since=created + CLOCK_SKEW + timedelta(microseconds=1)) is None


def test_variable_and_parameter_names_may_hold_dots(identity_server: IdentityServer,
                                                    azure_env: dict[str, str]) -> None:
    dotted = parse_routes(json.dumps({"version": 1, "routes": [{
        "name": "dotted", "events": ["ModelRegistered"],
        "pipeline": {"project": "mlops", "id": 61, "variables": {"aml.model.name": "{{ modelName }}"},
                     "templateParameters": {"model.version": "{{ modelVersion }}"}}}]}))
    pipeline = PipelineDef("dotted", variables_settable_at_queue_time=frozenset({"aml.model.name"}),
                           template_parameters=frozenset({"model.version"}))
    with AdoServer("contoso", pipelines={("mlops", 61): pipeline},
                   bearer_tokens={identity_server.token_for(ADO_RESOURCE)}) as server:
        [event] = parse_events([sample("event-grid-schema", "model_registered")])
        assert isinstance(event, AmlEvent)
        req = build_request(dotted.routes[0], event)
        assert req.fingerprint == {"variables.aml.model.name": "sklearn_regression_model",
                                   "templateParameters.model.version": "20"}
        run = server.seed_run("mlops", 61, variables={"aml.model.name": "sklearn_regression_model"},
                              template_parameters={"model.version": "20"})
        found = find_started_run(reader(server), req, since=datetime.now(timezone.utc))
        assert found is not None
        assert found.id == run["id"]
