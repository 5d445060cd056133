"""scripts/: shellcheck-clean, --help everywhere, and scripts/deploy against a fake `az` (tests/infra/fake_az.py)
that refuses every command and option the real azure-cli 2.91.0 lacks, checks `az rest` calls against the
Automation SDK's operations, and models the Azure behaviour the deployment must cope with: package imports
that take several polls, RBAC propagation (403 on the first uploads), principal types, soft-deleted vaults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .arm_routes import sdk_routes, site_packages
from .conftest import REPO, VENV, infra_tool
from .fake_az import PACKAGE_STEPS, initial_state

SCRIPTS = ["deploy", "teardown", "grant-ado-access", "send-test-event", "setup-infra-tools",
           "gen-az-command-table"]
TABLE = REPO / "tests" / "fixtures" / "az" / "command-table.json"
SECRET_URI = initial_state()["webhook_uri"]


class FakeAz:
    """A bin/ directory whose `az` is fake_az.py run by the infra venv's python, and its world."""

    def __init__(self, tmp_path: Path, **state: Any) -> None:
        self.tmp = tmp_path
        self.bin = tmp_path / "bin"
        self.bin.mkdir(exist_ok=True)
        python = infra_tool("python")
        az = self.bin / "az"
        az.write_text(f'#!/bin/sh\nexec "{python}" "{REPO / "tests" / "infra" / "fake_az.py"}" "$@"\n')
        az.chmod(0o755)
        routes = tmp_path / "routes.json"
        routes.write_text(json.dumps(sdk_routes(site_packages(VENV), "automation")))
        self.state_path = tmp_path / "world.json"
        self.state_path.write_text(json.dumps(initial_state(**state)))
        self.log = tmp_path / "az.log"
        self.env = {**os.environ, "PATH": f"{self.bin}:{os.environ['PATH']}", "FAKE_AZ_LOG": str(self.log),
                    "FAKE_AZ_TABLE": str(TABLE), "FAKE_AZ_ROUTES": str(routes), "FAKE_AZ_STATE": str(self.state_path),
                    "TMPDIR": str(tmp_path), "AMLRELAY_POLL_SECONDS": "0", "AMLRELAY_RETRY_SECONDS": "0"}

    @property
    def world(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads(self.state_path.read_text())
        return state

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def az(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.bin / "az"), *args], capture_output=True, text=True, check=False,
                              env=self.env, timeout=60)

    def script(self, name: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(REPO / "scripts" / name), *args], capture_output=True, text=True, check=False,
                              env=self.env, cwd=self.tmp, timeout=120, input=stdin)


def test_scripts_are_shellcheck_clean() -> None:
    shellcheck = infra_tool("shellcheck")
    paths = [str(REPO / "scripts" / s) for s in SCRIPTS] + [str(REPO / "scripts" / "lib" / "common.sh")]
    done = subprocess.run([str(shellcheck), "-x", *paths], capture_output=True, text=True, check=False,
                          cwd=REPO / "scripts")
    assert done.returncode == 0, done.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script: str) -> None:
    done = subprocess.run([str(REPO / "scripts" / script), "--help"], capture_output=True, text=True, check=False)
    assert done.returncode == 0
    assert done.stdout.startswith("Usage: scripts/")


# ------------------------------------------------------------------------------------------ the fake az

def test_the_command_table_comes_from_the_pinned_azure_cli() -> None:
    table = json.loads(TABLE.read_text())
    pin = next(line for line in (REPO / "scripts" / "gen-az-command-table").read_text().splitlines()
               if line.startswith("AZURE_CLI_VERSION="))
    assert table["azure-cli"] == pin.split('"')[1]
    assert len(table["commands"]) > 5000
    # The finding of issue 9: Automation (runbooks, webhooks, schedules, jobs) is an extension, not core az.
    assert not [c for c in table["commands"] if c.startswith("automation ")]
    assert "--yes" in table["commands"]["eventgrid system-topic event-subscription delete"]["options"]


@pytest.mark.parametrize(("argv", "message"), [
    (["automation", "webhook", "list", "-g", "rg", "--automation-account-name", "aa"], "not a command"),
    (["automation", "runbook", "publish", "-g", "rg", "--automation-account-name", "aa", "-n", "x"], "not a command"),
    (["storage", "blob", "upload", "--account-name", "a", "--bogus", "1"], "unrecognized arguments: --bogus"),
    (["rest", "--method", "get"], "the following arguments are required: --uri/--url/-u"),
    (["deployment", "group", "list"], "the following arguments are required: --resource-group/-g"),
    (["rest", "--method", "fetch", "--url", "/x"], "invalid choice"),
    (["rest", "--method", "get", "--url", "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Automation/"
      "automationAccounts/aa/webhooks?api-version=2015-10-31"], "not the pinned api-version"),
    (["rest", "--method", "post", "--url", "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Automation/"
      "automationAccounts/aa/webhooks/generateUri?api-version=2024-10-23"], ""),
    (["rest", "--method", "get", "--url", "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Automation/"
      "automationAccounts/aa/webhookz?api-version=2024-10-23"], "no operation of the management SDK"),
])
def test_the_fake_az_refuses_what_the_real_one_refuses(tmp_path: Path, argv: list[str], message: str) -> None:
    done = FakeAz(tmp_path).az(*argv)
    if message:
        assert done.returncode != 0
        assert message in done.stderr
    else:
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout).startswith("https://")


# ------------------------------------------------------------------------------------------ deploy

def _deploy(fake: FakeAz, *extra: str, param_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run scripts/deploy against the fake az, with a fake `python -m build` / `pip` for the wheel step."""
    dist = fake.tmp / "dist"
    dist.mkdir(exist_ok=True)
    pip_report = {"install": [
        {"metadata": {"name": "amlrelay", "version": "0.1.0"}, "download_info": {"url": "file:///x"}},
        {"metadata": {"name": "requests", "version": "2.32.3"}, "download_info": {
            "url": "https://example.invalid/requests-2.32.3-py3-none-any.whl",
            "archive_info": {"hashes": {"sha256": "ab" * 32}}}}]}
    fake_python = fake.bin / "python"
    fake_python.write_text(
        "#!/usr/bin/env bash\n"
        "if [[ \"$1 $2\" == '-m build' ]]; then touch \"$5/amlrelay-0.1.0-py3-none-any.whl\"; exit 0; fi\n"
        "if [[ \"$1 $2\" == '-m pip' ]]; then for a in \"$@\"; do [[ $prev == --report ]] && "
        f"printf '%s' '{json.dumps(pip_report)}' > \"$a\"; prev=$a; done; exit 0; fi\n"
        f"exec {sys.executable} \"$@\"\n")
    fake_python.chmod(0o755)
    runbook = fake.tmp / "runbook.py"
    runbook.write_text("print('hello')\n")
    generated = REPO / "infra" / "generated" / "subscriptions.json"
    before = generated.read_text()
    fake.env.update({"PYTHON": str(fake_python), "AMLRELAY_DIST_DIR": str(dist)})
    where = ["--param-file", str(param_file)] if param_file else ["--env", "dev"]
    done = fake.script("deploy", "-g", "rg-amlrelay", *where, "--yes", "--runbook", str(runbook), *extra)
    assert generated.read_text() == before
    return done


def _value(call: list[str], flag: str) -> str:
    return call[call.index(flag) + 1]


def _rest(calls: list[list[str]]) -> list[tuple[str, str]]:
    return [(_value(c, "--method"), _value(c, "--url").split("/automationAccounts/amlr-aa-123/")[-1])
            for c in calls if c[0] == "rest"]


def test_deploy_goes_live_only_after_packages_and_runbooks_and_never_prints_secrets(tmp_path: Path) -> None:
    fake = FakeAz(tmp_path)
    done = _deploy(fake)
    assert done.returncode == 0, done.stderr[-3000:]
    world = fake.world
    assert world["violations"] == []
    assert "SECRET" not in done.stdout + done.stderr
    calls = fake.calls()
    assert all("SECRET" not in " ".join(call) for call in calls), "a secret was passed on a command line"
    names = [d["name"].rsplit("-", 1)[0] for d in world["deployments"]]
    assert names == ["amlrelay-infra", "amlrelay-packages", "amlrelay-handler"]
    infra, packages, handler = world["params"]
    assert infra["deployerPrincipalId"]["value"] == "22222222-2222-2222-2222-222222222222"
    assert infra["deployerPrincipalType"]["value"] == "User"
    assert "webhookUri" not in infra
    assert "runbookContentUri" not in infra
    # The packages pass publishes both runbooks from hashed content links; no webhook yet.
    assert packages["runbookContentUri"]["value"].endswith("/runbook.py?sv=x&sig=SECRET-SIG")
    assert packages["replayRunbookContentUri"]["value"].endswith("/replay_dead_letters.py?sv=x&sig=SECRET-SIG")
    assert len(packages["runbookContentSha256"]["value"]) == 64
    assert packages["runbookPackages"]["value"][0]["sha256"] == "ab" * 32
    assert "webhookUri" not in packages
    # The handler pass goes live: webhook, schedule, subscriptions; it re-PUTs neither packages nor runbooks.
    assert handler["webhookUri"]["value"] == SECRET_URI
    assert "runbookContentUri" not in handler
    assert "amlrelayPackageUri" not in handler
    assert handler["replayScheduleName"]["value"].startswith("amlrelay-replay-")
    # Every Automation call is core `az rest` at the Bicep's api-version; packages were polled until done.
    rest = _rest(calls)
    polls = [r for r in rest if r[1].startswith("runtimeEnvironments/amlrelay-python310/packages")]
    assert len(polls) == len(PACKAGE_STEPS)
    assert "0/2 Succeeded; waiting for amlrelay: Creating, requests: Creating" in done.stderr
    assert all(url.endswith("api-version=2024-10-23") for _, url in rest)
    assert ("post", "webhooks/generateUri?api-version=2024-10-23") in rest
    # Only the older amlrelay webhook/schedule/subscription go, never someone else's.
    assert world["webhooks"] == ["manual-hook", handler["webhookName"]["value"]]
    # This run's replay schedules (one per 15-minute offset, sweepIntervalMinutes' default) all stay.
    base = handler["replayScheduleName"]["value"]
    assert world["schedules"] == ["nightly-report", *(f"{base}-m{m}" for m in (0, 15, 30, 45))]
    # Only this deployment's label (amlrelay:rg-amlrelay): another amlrelay deployment's subscription stays.
    assert [s["name"] for s in world["subscriptions"]] == ["someone-elses", "other-deployment", "triage-failed-run"]
    assert "--yes" in next(c for c in calls if c[:4] == ["eventgrid", "system-topic", "event-subscription",
                                                          "delete"])
    assert handler["replayScheduleName"]["value"] in done.stdout
    assert not list(tmp_path.glob("amlrelay.*")) or all(p.stat().st_size == 0 for p in tmp_path.glob("amlrelay.*"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("amlrelay.")], "secret parameters file left"


def test_deploy_as_a_service_principal_passes_its_type_and_waits_out_rbac_propagation(tmp_path: Path) -> None:
    """CI deploys as a service principal; its role assignment on the packages container takes minutes to
    propagate, so the first uploads are refused (the fake refuses a principal type that does not match)."""
    app = "33333333-0000-0000-0000-000000000000"
    fake = FakeAz(tmp_path, account={"id": "00000000-0000-0000-0000-000000000000",
                                     "user": {"name": app, "type": "servicePrincipal"}},
                  service_principals={app: {"id": "44444444-4444-4444-4444-444444444444", "appId": app}},
                  principal_types={"44444444-4444-4444-4444-444444444444": "ServicePrincipal"}, upload_403=2)
    done = _deploy(fake)
    assert done.returncode == 0, done.stderr[-3000:]
    infra = fake.world["params"][0]
    assert infra["deployerPrincipalType"]["value"] == "ServicePrincipal"
    assert infra["deployerPrincipalId"]["value"] == "44444444-4444-4444-4444-444444444444"
    assert done.stderr.count("waiting 0s for the new role assignment to propagate") == 2
    uploads = [c for c in fake.calls() if c[:3] == ["storage", "blob", "upload"]]
    assert len(uploads) == 5  # two refused, then the wheel and both runbooks


def test_a_service_principal_without_graph_rights_is_found_by_its_token(tmp_path: Path) -> None:
    """Review SHOULD 10: `az ad sp show` needs a Graph read CI principals usually lack; the oid claim of the
    principal's own ARM token does not (the fake has no service principal to show: Graph would fail)."""
    app, oid = "33333333-0000-0000-0000-000000000000", "44444444-4444-4444-4444-444444444444"
    fake = FakeAz(tmp_path, account={"id": "00000000-0000-0000-0000-000000000000",
                                     "user": {"name": app, "type": "servicePrincipal"}},
                  token_claims={"oid": oid, "appid": app, "idtyp": "app"},
                  principal_types={oid: "ServicePrincipal"})
    done = _deploy(fake, "--package-timeout", "0")
    assert "still importing" in done.stderr  # stopped after the infrastructure pass, which is all this needs
    infra = fake.world["params"][0]
    assert infra["deployerPrincipalId"]["value"] == oid
    assert infra["deployerPrincipalType"]["value"] == "ServicePrincipal"
    assert not [c for c in fake.calls() if c[:2] == ["ad", "sp"]]
    assert "SECRET-SIG" not in done.stdout + done.stderr


def test_deploy_with_a_managed_identity_login_asks_for_the_object_id(tmp_path: Path) -> None:
    fake = FakeAz(tmp_path, account={"id": "0", "user": {"name": "systemAssignedIdentity",
                                                         "type": "servicePrincipal"}})
    done = _deploy(fake)
    assert done.returncode != 0
    assert "AMLRELAY_DEPLOYER_OBJECT_ID" in done.stderr
    assert fake.world["deployments"] == []


def test_deploy_gives_up_on_upload_after_the_bounded_retries(tmp_path: Path) -> None:
    fake = FakeAz(tmp_path, upload_403=50)
    fake.env["AMLRELAY_RETRY_ATTEMPTS"] = "3"
    done = _deploy(fake)
    assert done.returncode != 0
    assert "AuthorizationPermissionMismatch" in done.stderr
    assert "could not upload" in done.stderr
    assert len(fake.world["deployments"]) == 1


def test_a_failed_package_import_stops_before_anything_goes_live(tmp_path: Path) -> None:
    fake = FakeAz(tmp_path, failing_package="requests")
    done = _deploy(fake)
    assert done.returncode != 0
    assert "package import failed: requests" in done.stderr
    assert "not cp310" in done.stderr
    world = fake.world
    assert world["webhooks"] == initial_state()["webhooks"], "a webhook went live"
    assert [d["name"].rsplit("-", 1)[0] for d in world["deployments"]] == ["amlrelay-infra", "amlrelay-packages"]


def test_package_wait_is_bounded(tmp_path: Path) -> None:
    fake = FakeAz(tmp_path)
    done = _deploy(fake, "--package-timeout", "0")
    assert done.returncode != 0
    assert "still importing after 0s" in done.stderr
    assert "were NOT changed" in done.stderr
    assert fake.world["violations"] == []
    assert len(fake.world["deployments"]) == 2


def _pat_params(tmp_path: Path) -> Path:
    param_file = tmp_path / "pat.bicepparam"
    dev = (REPO / "infra" / "env" / "dev.bicepparam").read_text()
    param_file.write_text(dev.replace("using '../main.bicep'", f"using '{REPO / 'infra' / 'main.bicep'}'")
                          + "param auth = 'pat'\n")
    return param_file


def test_redeploy_after_teardown_recovers_the_soft_deleted_vault(tmp_path: Path) -> None:
    vault: dict[str, Any] = {
        "name": "amlr-kv-123", "id": "/subscriptions/0/providers/Microsoft.KeyVault/locations/westeurope/"
        "deletedVaults/amlr-kv-123", "properties": {
                 "vaultId": "/subscriptions/0/resourceGroups/rg-amlrelay/providers/Microsoft.KeyVault/vaults/"
                            "amlr-kv-123",
                 "tags": {"amlrelay-handler": "runbook"}, "purgeProtectionEnabled": True,
                 "scheduledPurgeDate": "2027-03-01T00:00:00Z"}}
    someone_elses = {**vault, "name": "other-kv", "properties": {**vault["properties"], "tags": {}}}
    # The fake `bicep build-params` does not read the file: tell it what the real one would emit.
    fake = FakeAz(tmp_path, deleted_vaults=[someone_elses, vault], build_params={"auth": {"value": "pat"}})
    done = _deploy(fake, param_file=_pat_params(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "recovering it" in done.stderr
    assert fake.world["recovered_vaults"] == ["amlr-kv-123"]
    assert fake.world["params"][0]["keyVaultCreateMode"]["value"] == "recover"
    # A second redeploy finds no deleted vault and creates normally.
    again = _deploy(fake, param_file=_pat_params(tmp_path))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "keyVaultCreateMode" not in fake.world["params"][3]


def test_the_fake_refuses_a_redeploy_that_ignores_the_soft_deleted_vault(tmp_path: Path) -> None:
    fake = FakeAz(tmp_path, deleted_vaults=[{"name": "amlr-kv-123", "properties": {}}])
    params = tmp_path / "p.json"
    params.write_text(json.dumps({"parameters": {"auth": {"value": "pat"}}}))
    done = fake.az("deployment", "group", "create", "-g", "rg-amlrelay", "-n", "x", "--template-file", "main.bicep",
                   "--parameters", f"@{params}")
    assert done.returncode != 0
    assert "soft deleted vault" in done.stderr


def test_deploy_with_the_replay_schedule_off_removes_the_old_one(tmp_path: Path) -> None:
    param_file = tmp_path / "off.bicepparam"
    dev = (REPO / "infra" / "env" / "dev.bicepparam").read_text()
    param_file.write_text(dev.replace("using '../main.bicep'", f"using '{REPO / 'infra' / 'main.bicep'}'")
                          + "param replayScheduleEnabled = false\n")
    fake = FakeAz(tmp_path, build_params={"replayScheduleEnabled": {"value": False}})
    done = _deploy(fake, param_file=param_file)
    assert done.returncode == 0, done.stderr[-3000:]
    assert fake.world["schedules"] == ["nightly-report"]
    assert ("delete", "schedules/amlrelay-replay-20200101000000?api-version=2024-10-23") in _rest(fake.calls())
    assert "by hand only" in done.stdout


def test_a_redeploy_at_another_sweep_interval_keeps_only_the_new_runs_schedules(tmp_path: Path) -> None:
    """Rotation with several offset schedules: this run's <name>-m* stay, every older amlrelay-replay-*
    (a single old schedule, or a previous run's four) goes, someone else's stays."""
    param_file = tmp_path / "every30.bicepparam"
    dev = (REPO / "infra" / "env" / "dev.bicepparam").read_text()
    param_file.write_text(dev.replace("using '../main.bicep'", f"using '{REPO / 'infra' / 'main.bicep'}'")
                          + "param sweepIntervalMinutes = 30\n")
    previous = [f"amlrelay-replay-20250101000000-m{m}" for m in (0, 15, 30, 45)]
    fake = FakeAz(tmp_path, build_params={"sweepIntervalMinutes": {"value": 30}},
                  schedules=["amlrelay-replay-20200101000000", "nightly-report", *previous])
    done = _deploy(fake, param_file=param_file)
    assert done.returncode == 0, done.stderr[-3000:]
    base = next(p for p in fake.world["params"] if "replayScheduleName" in p)["replayScheduleName"]["value"]
    assert fake.world["schedules"] == ["nightly-report", f"{base}-m0", f"{base}-m30"]
    deleted = {url for verb, url in _rest(fake.calls()) if verb == "delete" and url.startswith("schedules/")}
    assert deleted == {f"schedules/{n}?api-version=2024-10-23" for n in ["amlrelay-replay-20200101000000", *previous]}


# ------------------------------------------------------------------------------------------ send-test-event

def test_send_test_event_finds_an_azd_deployment_and_starts_a_job_through_az_rest(tmp_path: Path) -> None:
    fake = FakeAz(tmp_path)
    params = tmp_path / "p.json"
    params.write_text(json.dumps({"parameters": {}}))
    # azd names the deployment after its environment, not amlrelay-infra-*.
    made = fake.az("deployment", "group", "create", "-g", "rg-amlrelay", "-n", "dev-1767225600",
                   "--template-file", "main.bicep", "--parameters", f"@{params}")
    assert made.returncode == 0, made.stderr
    done = fake.script("send-test-event", "-g", "rg-amlrelay", "--event", "RunCompleted")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "started run 7" in done.stdout
    jobs = fake.world["jobs"]
    assert [j["runbook"] for j in jobs] == ["trigger-ado-pipeline"]
    put = next(c for c in fake.calls() if c[:3] == ["rest", "--method", "put"])
    assert "/jobs/" in _value(put, "--url")
    assert _value(put, "--url").endswith("?api-version=2024-10-23")


def test_scripts_without_a_deployment_say_what_to_do(tmp_path: Path) -> None:
    done = FakeAz(tmp_path).script("send-test-event", "-g", "rg-amlrelay")
    assert done.returncode != 0
    assert "run scripts/deploy (or azd provision) first" in done.stderr


def test_deploy_with_the_logic_app_handler_schedules_the_replay_runbook_without_a_webhook(tmp_path: Path) -> None:
    """Beside the Logic App the Automation account runs only the replay runbook (the workflow answers 500 for
    [ambiguous] failures and stale claims until replay settles them): its packages and the replay runbook are
    published before the schedules exist, and no webhook or trigger runbook is ever made."""
    fake = FakeAz(tmp_path, build_params={"handler": {"value": "logicapp"}})
    done = _deploy(fake)
    assert done.returncode == 0, done.stderr[-3000:]
    world = fake.world
    assert world["violations"] == []
    names = [d["name"].rsplit("-", 1)[0] for d in world["deployments"]]
    assert names == ["amlrelay-infra", "amlrelay-packages", "amlrelay-handler"]
    assert world["published"] == ["replay_dead_letters"]
    handler = world["params"][2]
    assert handler["webhookUri"]["value"] == ""
    assert ("post", "webhooks/generateUri?api-version=2024-10-23") not in _rest(fake.calls())
    assert "amlrelay-eventgrid-20200101000000" not in world["webhooks"]  # a runbook handler's old webhook goes
    base = handler["replayScheduleName"]["value"]
    assert world["schedules"] == ["nightly-report", *(f"{base}-m{m}" for m in (0, 15, 30, 45))]
    assert "replay_dead_letters" in done.stdout
