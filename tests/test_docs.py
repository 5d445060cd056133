"""The README documents what the code offers: every command, every setting, every user-facing script.

In the spirit of sqlite-utils' documentation tests: the lists come from the code (the real argparse parser,
the ``Settings`` dataclass, the files in ``scripts/``), so a command, setting or script added without a word
in the README fails here, naming what is missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from amlrelay.cli import _parser
from amlrelay.settings import Settings, env_name

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
INFRA_README = (ROOT / "infra" / "README.md").read_text(encoding="utf-8")

# Scripts that are not run by a user: helpers other scripts source or call, and code generators for CI.
INTERNAL_SCRIPTS = {"_mutation_report.py", "demo.py", "lib"}


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command path, walking nested subparsers (``("aml", "submit-and-wait")``)."""
    for action in parser._actions:  # argparse has no public accessor for its subparsers
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                path = (*prefix, name)
                yield path
                yield from _commands(sub, path)


COMMANDS = sorted(_commands(_parser()))


def test_the_parser_walk_finds_the_command_groups() -> None:
    """Guards the walk itself: without it an empty list would pass every check below."""
    for expected in [("run",), ("sweep",), ("retag",), ("aml", "submit-and-wait"), ("logicapp", "build")]:
        assert expected in COMMANDS


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
def test_every_command_is_in_the_readme(command: tuple[str, ...]) -> None:
    text = "amlrelay " + " ".join(command)
    # the command in a code span or a shell example; `amlrelay aml submit` must not count for `amlrelay aml`
    # only by luck, so a word boundary (not a hyphen) follows
    assert re.search(re.escape(text) + r"(?![\w-])", README), f"README.md never mentions `{text}`"


SETTINGS = [f.name for f in dataclasses.fields(Settings)]


def _settings_section() -> str:
    """README's settings tables: the runbook's "Settings" section and the tag-back table."""
    start = README.index("### Settings")
    end = README.index("\n## ", start)
    tagback = README.index("### Tag-back")
    return README[start:end] + README[tagback:README.index("\n### ", tagback + 1)]


def test_the_settings_section_is_found() -> None:
    assert "AMLRELAY_ADO_ORGANIZATION" in _settings_section()


@pytest.mark.parametrize("name", SETTINGS)
def test_every_setting_is_documented(name: str) -> None:
    variable = env_name(name)
    assert re.search(re.escape(variable) + r"(?!\w)", _settings_section()), (
        f"{variable} (Settings.{name}) is not in README.md's settings tables")


SCRIPTS = sorted(p.name for p in (ROOT / "scripts").iterdir() if p.name not in INTERNAL_SCRIPTS)


def test_scripts_are_listed() -> None:
    assert {"deploy", "test"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_user_facing_script_is_documented(script: str) -> None:
    pattern = re.compile(r"scripts/" + re.escape(script) + r"(?![\w.-])")
    assert pattern.search(README) or pattern.search(INFRA_README), (
        f"scripts/{script} is in neither README.md nor infra/README.md (or add it to INTERNAL_SCRIPTS with a reason)")
