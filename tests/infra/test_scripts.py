"""scripts/: shellcheck-clean, --help everywhere, and scripts/deploy against a fake `az` that records its calls
and answers with JSON shaped like the real CLI's, so the order and arguments of a deployment are asserted."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, infra_tool

SCRIPTS = ["deploy", "teardown", "grant-ado-access", "send-test-event", "setup-infra-tools"]
SECRET_URI = "https://0000.webhook.we.azure-automation.net/webhooks?token=SECRET-TOKEN"
SAS_URI = "https://amlrst.blob.core.windows.net/packages/amlrelay.whl?sv=x&sig=SECRET-SIG"

FAKE_AZ = r'''#!/usr/bin/env python3
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_AZ_LOG"], "a") as log:
    log.write(json.dumps(args) + "\n")
words = [a for a in args if not a.startswith("-")]
cmd = " ".join(words[:4])
outputs = {
    "handler": {"type": "String", "value": "runbook"},
    "storageAccountName": {"type": "String", "value": "amlrst123"},
    "packagesContainerName": {"type": "String", "value": "packages"},
    "automationAccountName": {"type": "String", "value": "amlr-aa-123"},
    "runbookName": {"type": "String", "value": "trigger-ado-pipeline"},
    "replayRunbookName": {"type": "String", "value": "replay_dead_letters"},
    "replayScheduleName": {"type": "String", "value": ""},
    "systemTopicName": {"type": "String", "value": "ws-amlrelay"},
    "systemTopicResourceGroup": {"type": "String", "value": "rg-ml"},
    "handlerPrincipalId": {"type": "String", "value": "11111111-1111-1111-1111-111111111111"},
    "subscriptionNames": {"type": "Array", "value": ["triage-failed-run"]},
}
def out(value):
    print(json.dumps(value) if "tsv" not in args else value)
if cmd.startswith("bicep build-params"):
    path = args[args.index("--outfile") + 1]
    parameters = {"namePrefix": {"value": "amlr"}, **json.loads(os.environ.get("FAKE_BUILD_PARAMS") or "{}")}
    json.dump({"$schema": "x", "contentVersion": "1.0.0.0", "parameters": parameters}, open(path, "w"))
    out({})
elif cmd.startswith("ad signed-in-user show"):
    out("22222222-2222-2222-2222-222222222222")
elif cmd.startswith("deployment group what-if"):
    print("Resource changes: 12 to create.")
elif cmd.startswith("deployment group create"):
    params = json.load(open(args[args.index("--parameters") + 1][1:]))
    with open(os.environ["FAKE_AZ_LOG"] + ".params", "a") as log:
        log.write(json.dumps(params) + "\n")
    # Like the template: a replay schedule exists once a name is passed, unless switched off.
    p = params["parameters"]
    schedule = p.get("replayScheduleName", {}).get("value", "")
    if not p.get("replayScheduleEnabled", {}).get("value", True):
        schedule = ""
    outputs["replayScheduleName"]["value"] = schedule
    if schedule:
        with open(os.environ["FAKE_AZ_LOG"] + ".schedules", "a") as log:
            log.write(schedule + "\n")
    out({"name": args[args.index("--name") + 1], "properties": {"provisioningState": "Succeeded",
         "outputs": outputs}})
elif cmd.startswith("storage blob upload"):
    out({"etag": "\"0x1\"", "lastModified": "2026-01-01T00:00:00+00:00"})
elif cmd.startswith("storage blob generate-sas"):
    out(os.environ["FAKE_SAS"])
elif cmd.startswith("automation runbook replace-content") or cmd.startswith("automation runbook publish"):
    out({})
elif cmd.startswith("automation account show"):
    out("/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Automation/automationAccounts/amlr-aa-123")
elif cmd.startswith("rest"):
    out(os.environ["FAKE_WEBHOOK"])
elif cmd.startswith("eventgrid system-topic event-subscription list"):
    out([{"name": "triage-failed-run", "labels": ["amlrelay"]}, {"name": "old-route", "labels": ["amlrelay"]},
         {"name": "someone-elses", "labels": []}])
elif cmd.startswith("automation webhook list"):
    out([{"name": "amlrelay-eventgrid-20200101000000"}, {"name": "manual-hook"}])
elif cmd.startswith("automation schedule list"):
    made = os.environ["FAKE_AZ_LOG"] + ".schedules"
    current = open(made).read().split() if os.path.exists(made) else []
    out([{"name": n, "frequency": "Hour", "interval": 1, "isEnabled": True, "timeZone": "UTC"}
         for n in ["amlrelay-replay-20200101000000", "nightly-report", *current]])
else:
    out({})
'''


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


def _deploy(tmp_path: Path, param_file: Path | None = None,
            build_params: dict[str, object] | None = None) -> subprocess.CompletedProcess[str]:
    """Run scripts/deploy against the fake az; build_params is what `az bicep build-params` would emit."""
    fake = tmp_path / "bin" / "az"
    fake.parent.mkdir()
    fake.write_text(FAKE_AZ)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    dist = tmp_path / "dist"
    dist.mkdir()
    log = tmp_path / "az.log"
    pip_report = {"install": [
        {"metadata": {"name": "amlrelay", "version": "0.1.0"}, "download_info": {"url": "file:///x"}},
        {"metadata": {"name": "requests", "version": "2.32.3"}, "download_info": {
            "url": "https://example.invalid/requests-2.32.3-py3-none-any.whl",
            "archive_info": {"hashes": {"sha256": "ab" * 32}}}}]}
    fake_python = tmp_path / "bin" / "python"
    fake_python.write_text(
        "#!/usr/bin/env bash\n"
        "if [[ \"$1 $2\" == '-m build' ]]; then touch \"$5/amlrelay-0.1.0-py3-none-any.whl\"; exit 0; fi\n"
        "if [[ \"$1 $2\" == '-m pip' ]]; then for a in \"$@\"; do [[ $prev == --report ]] && "
        f"printf '%s' '{json.dumps(pip_report)}' > \"$a\"; prev=$a; done; exit 0; fi\n"
        f"exec {sys.executable} \"$@\"\n")
    fake_python.chmod(0o755)
    runbook = tmp_path / "runbook.py"
    runbook.write_text("print('hello')\n")
    generated = REPO / "infra" / "generated" / "subscriptions.json"
    before = generated.read_text()
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}", "FAKE_AZ_LOG": str(log),
           "FAKE_WEBHOOK": SECRET_URI, "FAKE_SAS": SAS_URI, "PYTHON": str(fake_python), "TMPDIR": str(tmp_path),
           "AMLRELAY_DIST_DIR": str(dist), "FAKE_BUILD_PARAMS": json.dumps(build_params or {})}
    where = ["--param-file", str(param_file)] if param_file else ["--env", "dev"]
    done = subprocess.run(
        [str(REPO / "scripts" / "deploy"), "-g", "rg-amlrelay", *where, "--yes", "--runbook", str(runbook)],
        capture_output=True, text=True, check=False, env=env, cwd=tmp_path, timeout=60,
    )
    assert generated.read_text() == before
    return done


def _calls(tmp_path: Path) -> list[list[str]]:
    return [json.loads(line) for line in (tmp_path / "az.log").read_text().splitlines()]


def test_deploy_runs_the_steps_in_order_and_never_prints_secrets(tmp_path: Path) -> None:
    done = _deploy(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SECRET" not in done.stdout + done.stderr
    calls = _calls(tmp_path)
    assert all("SECRET" not in " ".join(call) for call in calls), "a secret was passed on a command line"
    heads = [" ".join(w for w in call if not w.startswith("-"))[:80] for call in calls]
    order = ["bicep build-params", "ad signed-in-user show", "deployment group what-if",
             "deployment group create", "storage blob upload", "storage blob generate-sas",
             "automation runbook replace-content", "automation runbook publish",
             "automation runbook replace-content", "automation runbook publish", "automation account show",
             "rest", "deployment group create", "eventgrid system-topic event-subscription list",
             "eventgrid system-topic event-subscription delete", "automation webhook list",
             "automation webhook delete", "automation schedule list", "automation schedule delete"]
    positions = []
    for step in order:
        index = next(i for i, h in enumerate(heads) if h.startswith(step) and i not in positions)
        positions.append(index)
    assert positions == sorted(positions), heads
    deletes = [c for c in calls if "delete" in c]
    assert any("old-route" in c for c in deletes)
    assert not any("someone-elses" in c or "manual-hook" in c for c in deletes)

    # Both runbooks are published (draft content, then publish) before the handler pass links the schedule.
    def value(call: list[str], flag: str) -> str:
        return call[call.index(flag) + 1]

    content = [(value(c, "--name"), value(c, "--content")) for c in calls if c[:3] == ["automation", "runbook",
                                                                                       "replace-content"]]
    assert content == [("trigger-ado-pipeline", f"@{tmp_path / 'runbook.py'}"),
                       ("replay_dead_letters", f"@{REPO / 'runbooks' / 'replay_dead_letters.py'}")]
    published = [value(c, "--name") for c in calls if c[:3] == ["automation", "runbook", "publish"]]
    assert published == ["trigger-ado-pipeline", "replay_dead_letters"]
    for call in calls:
        if call[:2] == ["automation", "runbook"]:
            assert value(call, "--automation-account-name") == "amlr-aa-123"
            assert value(call, "--resource-group") == "rg-amlrelay"

    params = [json.loads(line) for line in (tmp_path / "az.log.params").read_text().splitlines()]
    assert "replayScheduleName" not in params[0]["parameters"], "no job schedule before the runbook is published"
    schedule = params[1]["parameters"]["replayScheduleName"]["value"]
    assert schedule.startswith("amlrelay-replay-")
    assert schedule != "amlrelay-replay-20200101000000"
    # Only the older amlrelay schedule goes: not the one just made, not someone else's.
    schedule_deletes = [value(c, "--name") for c in calls if c[:3] == ["automation", "schedule", "delete"]]
    assert schedule_deletes == ["amlrelay-replay-20200101000000"]
    assert "--yes" in next(c for c in calls if c[:3] == ["automation", "schedule", "delete"])
    assert schedule in done.stdout
    assert ("az automation runbook start --resource-group rg-amlrelay --automation-account-name amlr-aa-123 "
            "--name replay_dead_letters") in done.stdout
    assert "webhookUri" not in params[0]["parameters"]
    assert params[0]["parameters"]["deployerPrincipalId"]["value"] == "22222222-2222-2222-2222-222222222222"
    second = params[1]["parameters"]
    assert second["webhookUri"]["value"] == SECRET_URI
    assert second["amlrelayPackageUri"]["value"] == SAS_URI
    assert second["runbookPackages"]["value"][0]["sha256"] == "ab" * 32
    assert not list(tmp_path.glob("amlrelay.*")), "the secret parameters file was left behind"


def test_deploy_with_the_replay_schedule_off_removes_the_old_one(tmp_path: Path) -> None:
    param_file = tmp_path / "off.bicepparam"
    dev = (REPO / "infra" / "env" / "dev.bicepparam").read_text()
    param_file.write_text(dev.replace("using '../main.bicep'", f"using '{REPO / 'infra' / 'main.bicep'}'")
                          + "param replayScheduleEnabled = false\n")
    # The fake `bicep build-params` does not read the file: tell it what the real one would emit.
    done = _deploy(tmp_path, param_file, {"replayScheduleEnabled": {"value": False}})
    assert done.returncode == 0, done.stderr[-3000:]
    calls = _calls(tmp_path)
    assert [c[c.index("--name") + 1] for c in calls if c[:3] == ["automation", "schedule", "delete"]] == [
        "amlrelay-replay-20200101000000"]
    assert "by hand only" in done.stdout
