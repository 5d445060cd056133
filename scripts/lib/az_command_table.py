"""Dump the command table of the installed azure-cli: every command with the options its parser accepts.

Run by scripts/gen-az-command-table with the python of a venv that holds the pinned azure-cli. It loads
every core command module the way azure-cli's own documentation build does
(``azure.cli.core.file_util.create_invoker_and_load_cmds_and_args``) and reads the argparse parser of each
command, so the table holds exactly what ``az`` would accept on a command line (global options such as
``--output``, ``--query``, ``--subscription`` and ``--ids`` included). Extensions are not loaded: amlrelay's
scripts must need none. The fake ``az`` of tests/infra refuses any command or option missing here.
Output: JSON {"azure-cli": version, "global": [options every command takes], "commands": {name: {
"options": [...], "flags": [options without a value], "multi": [options taking several values],
"optional_value": [options whose value may be left out], "required": [...], "choices": {option: [...]}}}}
(empty keys left out).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any

OUTPUT_CHOICES = ["json", "jsonc", "none", "table", "tsv", "yaml", "yamlc"]


def _describe(parser: argparse.ArgumentParser) -> dict[str, Any]:
    options: list[str] = []
    flags: list[str] = []
    multi: list[str] = []
    optional: list[str] = []
    required: list[str] = []
    choices: dict[str, list[str]] = {}
    for action in parser._actions:  # argparse has no public accessor
        # Hidden arguments (help suppressed: the internal `cmd`, progress callbacks) are not part of the CLI.
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        options.extend(action.option_strings)
        if action.nargs == 0:
            flags.extend(action.option_strings)
        elif action.nargs in ("+", "*", argparse.REMAINDER):
            multi.extend(action.option_strings)
        elif action.nargs == "?":
            optional.extend(action.option_strings)
        if action.required:  # any alias satisfies it: "--resource-group/-g"
            required.append("/".join(sorted(action.option_strings, key=lambda o: (-len(o), o))))
        if action.choices is not None and not callable(action.choices):
            try:
                values = sorted({str(c) for c in action.choices})
            except TypeError:
                values = []
            if values and len(values) <= 40:  # enums, not location lists
                choices[max(action.option_strings, key=len)] = values
    return {"options": sorted(set(options)), "flags": sorted(set(flags)), "multi": sorted(set(multi)),
            "optional_value": sorted(set(optional)),
            "required": sorted(required),
            "choices": choices}


def main(out_path: str) -> None:
    # An empty config dir: no user extensions, no telemetry, no cached command index.
    os.environ["AZURE_CONFIG_DIR"] = tempfile.mkdtemp(prefix="az-table-")
    os.environ["AZURE_CORE_COLLECT_TELEMETRY"] = "no"
    from azure.cli.core import __version__ as core_version
    from azure.cli.core import get_default_cli
    from azure.cli.core.file_util import create_invoker_and_load_cmds_and_args

    cli = get_default_cli()
    create_invoker_and_load_cmds_and_args(cli)
    parser_map = cli.invocation.parser.subparser_map
    commands = {name: _describe(parser_map[name]) for name in sorted(parser_map)}
    # Options every command accepts (--output, --query, --only-show-errors, ...) are listed once.
    common = set.intersection(*(set(c["options"]) for c in commands.values()))
    for spec in commands.values():
        spec["options"] = [o for o in spec["options"] if o not in common]
        spec["flags"] = [o for o in spec["flags"] if o not in common]
        if spec["choices"].get("--output") == OUTPUT_CHOICES:
            del spec["choices"]["--output"]
        if not spec["choices"]:
            del spec["choices"]
        if not spec["required"]:
            del spec["required"]
        for key in ("flags", "multi", "optional_value"):
            if not spec[key]:
                del spec[key]
    doc = {"azure-cli": core_version, "generator": "scripts/gen-az-command-table", "global": sorted(common),
           "global_choices": {"--output": OUTPUT_CHOICES},
           "commands": commands}
    # One command per line, so a regenerated table diffs command by command.
    with open(out_path, "w", encoding="utf-8") as handle:
        handle.write("{\n")
        for key in ("azure-cli", "generator", "global", "global_choices"):
            handle.write(f"{json.dumps(key)}: {json.dumps(doc[key])},\n")
        handle.write('"commands": {\n')
        lines = [f"{json.dumps(n)}: {json.dumps(commands[n], sort_keys=True, separators=(',', ':'))}"
                 for n in sorted(commands)]
        handle.write(",\n".join(lines))
        handle.write("\n}}\n")
    print(f"{len(commands)} commands from azure-cli {core_version}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1])
