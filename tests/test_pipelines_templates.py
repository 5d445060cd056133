"""The ADO templates under pipelines/: valid against the Azure Pipelines schema, and consistent with the CLI.

Schema: ``check-jsonschema --builtin-schema vendor.azure-pipelines`` (offline; see ADO-PIPELINES.md §5 for
its quirks, which the templates follow: job-level ``timeoutInMinutes`` quoted, boolean parameter defaults
quoted, no conditional insertion in step lists). ``--regex-variant python`` is needed because the schema's
branch-filter patterns use an escape the default (ECMAScript) engine of check-jsonschema rejects with a crash.

Beyond the schema, the template's bash is *run* with a stand-in ``amlrelay`` on PATH for every pipeline that
uses it, and the arguments it would pass are parsed by amlrelay's real argument parser: a renamed flag or a
wrong exit-code mapping fails here, not in a customer's pipeline.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from amlrelay.aml._cli import OUTPUT_VARIABLES
from amlrelay.cli import _parser

ROOT = Path(__file__).resolve().parent.parent
PIPELINES = ROOT / "pipelines"
TEMPLATE = PIPELINES / "templates" / "aml-wait-steps.yml"
FILES = sorted([*PIPELINES.glob("*.yml"), *PIPELINES.glob("templates/*.yml")])
HOSTED_MAX = {"60"}  # free/private hosted jobs; the templates aim at the strictest limit


def check_jsonschema(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--regex-variant", "python",
                           "--builtin-schema", "vendor.azure-pipelines", *map(str, paths)],
                          capture_output=True, text=True, timeout=120, check=False)


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def template_uses() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(pipeline, job, parameters) for every use of the steps template."""
    uses = []
    for path in PIPELINES.glob("*.yml"):
        spec = load(path)
        for job in spec.get("jobs") or [j for stage in spec["stages"] for j in stage["jobs"]]:
            for step in job["steps"]:
                if isinstance(step, dict) and step.get("template") == "templates/aml-wait-steps.yml":
                    uses.append((path.name, job, step["parameters"]))
    return uses


def test_there_is_a_template_for_every_pattern() -> None:
    names = {p.name for p in FILES}
    assert {"build-validation.yml", "async-submit.yml", "relay-triggered.yml", "handoff.yml", "self-hosted.yml",
            "resumable-wait.yml", "resumable-wait-stages.yml", "aml-wait-steps.yml"} <= names


def test_every_file_passes_the_azure_pipelines_schema(tmp_path: Path) -> None:
    """The template's step name is ``${{ parameters.stepName }}``: ADO expands it before any check, but the
    vendored schema checks the raw text against the name pattern, so the template is checked with the
    default name expanded (the only expansion made; everything else is checked as written)."""
    rendered = tmp_path / TEMPLATE.name
    text = TEMPLATE.read_text(encoding="utf-8")
    assert text.count("name: ${{ parameters.stepName }}") == 1
    rendered.write_text(text.replace("name: ${{ parameters.stepName }}", "name: amlWait"), encoding="utf-8")
    result = check_jsonschema(*[rendered if f == TEMPLATE else f for f in FILES])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok -- validation done" in result.stdout


@pytest.mark.parametrize(("old", "new"), [
    ("scriptLocation: inlineScript", "scriptLocaton: inlineScript"),  # a typo in a task input
    ("timeoutInMinutes: '60'", "timeoutInMinutes: 60"),  # the schema wants a string at job level
])
def test_the_schema_check_catches_mistakes(tmp_path: Path, old: str, new: str) -> None:
    source = PIPELINES / "build-validation.yml" if "timeout" in old else TEMPLATE
    broken = tmp_path / source.name
    text = source.read_text(encoding="utf-8").replace("name: ${{ parameters.stepName }}", "name: amlWait")
    assert old in text
    assert check_jsonschema(_write(tmp_path / "ok" / source.name, text)).returncode == 0  # fails only by the typo
    broken.write_text(text.replace(old, new), encoding="utf-8")
    assert check_jsonschema(broken).returncode == 1


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_job_limits_fit_the_agents() -> None:
    for name, job, params in template_uses():
        timeout = str(job["timeoutInMinutes"])
        if "vmImage" in job["pool"]:
            assert timeout in HOSTED_MAX or int(timeout) < 60, (name, job["job"])
            handoff = params.get("handoffAfter")
            if handoff:  # hand off well before the agent kills the step
                assert _minutes(handoff) <= int(timeout) - 5, (name, handoff)
        else:
            assert name == "self-hosted.yml"
            assert timeout == "0"  # unlimited: only meaningful on self-hosted agents


def test_relay_triggered_pipeline_declares_what_the_routes_send() -> None:
    declared = {p["name"] for p in load(PIPELINES / "relay-triggered.yml")["parameters"]}
    routes = json.loads((ROOT / "routes.json").read_text(encoding="utf-8"))["routes"]
    evaluate = next(r for r in routes if r["name"] == "evaluate-trained-model")
    assert set(evaluate["pipeline"]["templateParameters"]) <= declared
    assert {"runId", "experimentName", "modelName", "modelVersion"} <= declared


FINAL = ("'completed', 'failed', 'canceled', 'timed-out'")


def _jobs_by_stage(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    stages = spec.get("stages") or [{"stage": "", "jobs": spec["jobs"]}]
    return {f"{st['stage']}.{j['job']}".lstrip("."): j for st in stages for j in st["jobs"]}


@pytest.mark.parametrize("name", ["resumable-wait.yml", "resumable-wait-stages.yml"])
def test_resumed_waits_follow_any_unfinished_wait(name: str) -> None:
    """A wait killed at the job limit (no amlOutcome, only the early token) or ended resumable (7) must be
    resumed too, not only a handed-off one; and every token expression names a job and step that exist."""
    spec = load(PIPELINES / name)
    jobs = _jobs_by_stage(spec)
    text = (PIPELINES / name).read_text(encoding="utf-8")
    assert "'handed-off')" not in text  # keyed on the token and a non-final outcome instead
    conditions = [j.get("condition", "") for j in jobs.values()] + [s.get("condition", "") for s in
                                                                   spec.get("stages", [])]
    resuming = [c for c in conditions if "amlWaitToken" in c]
    assert resuming
    for condition in resuming:
        assert "ne(" in condition
        assert "not(in(" in condition
        assert FINAL in condition
        assert "not(canceled())" in condition  # runs after a job the limit killed (canceled/failed)
    for stage, job, step in re.findall(r"stageDependencies\.(\w+)\.(\w+)\.outputs\['(\w+)\.amlWaitToken'\]", text):
        assert f"{stage}.{job}" in jobs
        assert step == "amlWait"
    for stage, job, step in re.findall(r"dependencies\.(\w+)\.outputs\['(\w+)\.(\w+)\.amlWaitToken'\]", text):
        assert f"{stage}.{job}" in jobs
        assert step == "amlWait"


def _strings_at(node: Any, keys: set[str]) -> list[str]:
    if isinstance(node, dict):
        found = [v for k, v in node.items() if k in keys and isinstance(v, str)]
        return found + [s for v in node.values() for s in _strings_at(v, keys)]
    if isinstance(node, list):
        return [s for v in node for s in _strings_at(v, keys)]
    return []


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_parameters_never_become_script_or_expression_text(path: Path) -> None:
    """${{ parameters.x }} is pasted into the text before it runs: in a script a model name from an AML event
    like 'x"; curl …' would run as code, in a condition it would change the expression. Parameters go
    through env: and variables, which the script and the expression read as data."""
    texts = _strings_at(load(path), {"script", "inlineScript", "bash", "pwsh", "powershell", "condition"})
    assert texts
    allowed = {"${{ parameters.condition }}"}  # the template's condition parameter is an expression by contract
    assert [t for t in texts if "${{" in t and t not in allowed] == []


def test_the_step_name_is_a_parameter() -> None:
    """Two uses of the template in one job (e.g. submit two jobs, then wait) need two step names."""
    spec = load(TEMPLATE)
    step = next(s for s in spec["steps"] if s.get("task") == "AzureCLI@2")
    assert step["name"] == "${{ parameters.stepName }}"
    assert next(p for p in spec["parameters"] if p["name"] == "stepName")["default"] == "amlWait"


def test_output_variables_used_by_the_pipelines_exist() -> None:
    used = set()
    for path in PIPELINES.glob("*.yml"):
        used |= set(re.findall(r"amlWait\.(\w+)", path.read_text(encoding="utf-8")))
    assert used
    assert used <= set(OUTPUT_VARIABLES)


def test_job_files_referenced_by_the_pipelines_exist() -> None:
    for _, _, params in template_uses():
        if params.get("jobFile"):
            assert (ROOT / params["jobFile"]).is_file()


# -- the template's script, run ------------------------------------------------------------------------------
def render_env(params: dict[str, Any]) -> dict[str, str]:
    """The step's env: as ADO renders ${{ parameters.x }} (booleans as True/False)."""
    spec = load(TEMPLATE)
    values = {p["name"]: p.get("default") for p in spec["parameters"]} | params
    step = next(s for s in spec["steps"] if s.get("task") == "AzureCLI@2")
    env = {}
    for key, expr in step["env"].items():
        if key == "SYSTEM_ACCESSTOKEN":
            assert expr == "$(System.AccessToken)"  # a secret variable reaches a script only when mapped
            continue
        if key == "AML_JOB_START":
            assert expr == "$(amlrelayJobStart)"  # set by the template's first step
            env[key] = str(params.get("_job_start", "$(amlrelayJobStart)"))
            continue
        name = re.fullmatch(r"\$\{\{ parameters\.(\w+) \}\}", expr)
        assert name, expr
        value = values[name.group(1)]
        env[key] = str(value).capitalize() if isinstance(value, bool) or value in ("true", "false") else str(value)
    return env


def run_script(tmp_path: Path, params: dict[str, Any], exit_code: int,
               agent_env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    bash = shutil.which("bash")
    assert bash
    script = next(s for s in load(TEMPLATE)["steps"] if s.get("task") == "AzureCLI@2")["inputs"]["inlineScript"]
    argv_file = tmp_path / "argv.json"
    fake = tmp_path / "bin" / "amlrelay"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text(f"#!{sys.executable}\nimport json, sys\njson.dump(sys.argv[1:], open({str(argv_file)!r}, 'w'))\n"
                    f"sys.exit({exit_code})\n")
    fake.chmod(0o755)
    env = {"PATH": f"{fake.parent}:/usr/bin:/bin", "BUILD_BUILDID": "4242", "BUILD_DEFINITIONNAME": "ci",
           "SYSTEM_COLLECTIONURI": "https://dev.azure.com/contoso/", "SYSTEM_TEAMPROJECTID": "p-1",
           **render_env(params), **(agent_env or {})}
    done = subprocess.run([bash, "-c", script], env=env, capture_output=True, text=True, timeout=30, check=False)
    return done.returncode, json.loads(argv_file.read_text())


@pytest.mark.parametrize("use", template_uses(), ids=lambda u: f"{u[0]}:{u[1]['job']}")
def test_template_script_passes_arguments_the_cli_accepts(tmp_path: Path, use: tuple[str, Any, Any]) -> None:
    _, _, params = use
    params = {k: ("TOKEN" if "$(" in str(v) and k == "resumeToken" else v) for k, v in params.items()}
    code, argv = run_script(tmp_path, {**params, "_job_start": 1_900_000_000}, 0)
    assert code == 0
    ns = _parser().parse_args(argv)  # raises SystemExit(2) on an unknown flag or a bad duration
    assert ns.action == params.get("mode", "submit-and-wait")
    assert ns.credential == "cli"  # no workload identity connection exported in this environment
    assert ns.ado == "on"
    if ns.action != "submit":
        assert ns.cancel_on_timeout is (str(params.get("cancelOnTimeout", "true")).lower() == "true")
        assert ns.cancel_on_fail_fast is (ns.cancel_on_timeout and ns.fail_fast)
        assert ns.handoff_after == (None if not params.get("handoffAfter") else _minutes(params["handoffAfter"]) * 60)
        if params.get("handoffAfter"):
            assert ns.agent_job_start == 1_900_000_000  # the hand-off budget counts from the job's start
        if params.get("handoffAfter"):  # a route the relay filters on, or explicitly none
            route = params.get("handoffRoute")
            assert ns.handoff_route == ("" if route == "resume-only" else route)
            assert ns.handoff_route is not None
    if params.get("jobFile"):
        assert ns.job_files == [Path(params["jobFile"])]
        assert "ado.buildId=4242" in ns.tag  # the AML run links back to the ADO run
        assert "ado.runUrl=https://dev.azure.com/contoso/p-1/_build/results?buildId=4242" in ns.tag
    if params.get("resumeToken"):
        assert ns.resume == "TOKEN"


@pytest.mark.parametrize(("pipeline", "async_route_runs"), [
    ("build-validation.yml", False),  # sync: the result is used in this run; the relay must not start pipeline 12
    ("handoff.yml", False),  # evaluated in-job when it fits; the hand-off route (no loop guard) continues if not
    ("self-hosted.yml", False),
    ("async-submit.yml", True),  # the async path: the relay's route is the continuation
])
def test_sync_submissions_do_not_also_trigger_the_async_route(tmp_path: Path, pipeline: str,
                                                              async_route_runs: bool) -> None:
    """The tags the template gives a submitted job reach AML's completion event as data.runTags; run through
    the shipped routes.json, a sync run's completion is skipped by evaluate-trained-model's loop guard."""
    from amlrelay.events import parse_events
    from amlrelay.models import AmlEvent
    from amlrelay.router import select
    from amlrelay.routes import load_routes
    from tests.conftest import sample

    _, _, params = next(u for u in template_uses() if u[0] == pipeline)
    _, argv = run_script(tmp_path, params, 0)
    tags = dict(t.split("=", 1) for t in _parser().parse_args(argv).tag)
    event = sample("event-grid-schema", "run_completed")
    event["data"]["runTags"] = tags
    parsed = parse_events([event])[0]
    assert isinstance(parsed, AmlEvent)
    matched, _ = select(load_routes(ROOT / "routes.json"), parsed)
    assert ("evaluate-trained-model" in [r.name for r in matched]) is async_route_runs
    assert (tags.get("amlrelay-started-by") == "ado") is not async_route_runs


def run_install(tmp_path: Path, params: dict[str, Any]) -> list[list[str]]:
    """The template's install step, run with a ``python`` on PATH that records pip calls (and runs the
    metadata query with the real interpreter, where amlrelay is installed)."""
    bash = shutil.which("bash")
    assert bash
    spec = load(TEMPLATE)
    step = next(s for s in spec["steps"] if s.get("displayName") == "Install amlrelay")
    values = {p["name"]: p.get("default") for p in spec["parameters"]} | params
    env = {k: re.sub(r"\$\{\{ parameters\.(\w+) \}\}", lambda m: str(values[m.group(1)]), v)
           for k, v in step["env"].items()}
    env = {k: v.replace("$(Build.SourcesDirectory)", "/agent/_work/1/s") for k, v in env.items()}  # ADO macro
    calls = tmp_path / "pip-calls.jsonl"
    fake = tmp_path / "bin" / "python"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text(f"#!{sys.executable}\nimport json, os, sys\nif sys.argv[1] == '-m':\n"
                    f"    open({str(calls)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
                    f"else:\n    os.execv({sys.executable!r}, [{sys.executable!r}, *sys.argv[1:]])\n")
    fake.chmod(0o755)
    done = subprocess.run([bash, "-c", step["script"]], env={"PATH": f"{fake.parent}:/usr/bin:/bin", **env},
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in calls.read_text().splitlines()]


@pytest.mark.parametrize("mode", ["wait", "submit", "submit-and-wait"])
def test_install_step_works_from_a_foreign_checkout(tmp_path: Path, mode: str) -> None:
    """In a team's own repo Build.SourcesDirectory is their code: the package is a required parameter (here
    amlrelay checked out next to it with resources.repositories), and only submitting pulls azure-ai-ml."""
    assert "default" not in next(p for p in load(TEMPLATE)["parameters"] if p["name"] == "package")
    calls = run_install(tmp_path, {"package": "$(Build.SourcesDirectory)/amlrelay", "mode": mode})
    assert calls[0][-1] == "/agent/_work/1/s/amlrelay"  # no [aml]: a wait needs no 140 MB SDK
    extra = calls[1][calls[1].index("-q") + 1:] if len(calls) > 1 else []
    assert any(r.startswith("azure-ai-ml") for r in extra) is (mode != "wait")
    assert len(calls) == (1 if mode == "wait" else 2)


def test_shipped_pipelines_pin_the_package() -> None:
    for name, _, params in template_uses():
        assert params["package"] == "$(amlrelayPackage)", name
        assert "@v" in load(PIPELINES / name)["variables"]["amlrelayPackage"], name  # a release, not a branch


WIF = {"AZURESUBSCRIPTION_CLIENT_ID": "c", "AZURESUBSCRIPTION_TENANT_ID": "t",
       "AZURESUBSCRIPTION_SERVICE_CONNECTION_ID": "s", "SYSTEM_ACCESSTOKEN": "ado-token"}


@pytest.mark.parametrize(("credential", "agent_env", "expected"), [
    ("auto", WIF, "azure-pipelines"),  # federation: refreshable for hours, unlike az's login
    ("auto", {}, "cli"),  # a secret-based connection exports no AZURESUBSCRIPTION_SERVICE_CONNECTION_ID
    ("auto", {k: v for k, v in WIF.items() if k != "SYSTEM_ACCESSTOKEN"}, "cli"),
    ("managed-identity", WIF, "managed-identity"),
])
def test_template_picks_a_credential_that_outlives_an_hour(tmp_path: Path, credential: str,
                                                           agent_env: dict[str, str], expected: str) -> None:
    params = {"azureSubscription": "sc", "workspace": "/subscriptions/s/resourceGroups/r/providers/"
              "Microsoft.MachineLearningServices/workspaces/mlw", "mode": "wait", "jobNames": "j",
              "credential": credential}
    code, argv = run_script(tmp_path, params, 0, agent_env)
    assert code == 0
    assert _parser().parse_args(argv).credential == expected


@pytest.mark.parametrize(("handoff", "cli_code", "step_code"), [
    ("50m", 5, 0),  # handed off: the step succeeds
    ("", 5, 5),  # without hand-off configured a 5 is not expected; it fails the step
    ("50m", 1, 1), ("50m", 4, 4), ("", 0, 0), ("", 3, 3), ("50m", 7, 7),  # 7: resumable, not a success
])
def test_template_exit_codes(tmp_path: Path, handoff: str, cli_code: int, step_code: int) -> None:
    params = {"azureSubscription": "sc", "workspace": "/subscriptions/s/resourceGroups/r/providers/"
              "Microsoft.MachineLearningServices/workspaces/mlw", "jobFile": "pipelines/aml/toy-train.yml",
              "handoffAfter": handoff, "handoffRoute": "ci-handoff"}
    assert run_script(tmp_path, params, cli_code)[0] == step_code


def _minutes(text: str) -> float:
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?", text)
    assert match, text
    assert any(match.groups()), text
    return int(match.group(1) or 0) * 60 + int(match.group(2) or 0)
