"""``amlrelay logicapp build [--check]``: write (or verify) the generated workflow definition.

The checked-in ``logicapps/workflow.json`` is what Bicep deploys; ``--check`` fails when it is stale, so
CI catches a routes change that was not regenerated."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(commands: Any) -> None:
    group = commands.add_parser("logicapp", help="the Logic App handler generated from the routes file")
    sub = group.add_subparsers(required=True, metavar="COMMAND")
    build = sub.add_parser("build", help="generate the workflow definition from the routes file")
    build.add_argument("--routes", default="routes.json", help="routes file (default routes.json)")
    build.add_argument("--output", help="one file for --auth (default: logicapps/workflow.json for managed "
                       "identity and logicapps/workflow-pat.json for PAT mode, the two files infra/ deploys)")
    build.add_argument("--check", action="store_true", help="fail (exit 1) if a file is not up to date")
    build.add_argument("--auth", choices=("managed-identity", "pat"), default="managed-identity")
    build.add_argument("--throttle-retries", type=int, default=4, help="ADO calls after a 429/503 (default 4)")
    build.add_argument("--verify", choices=("true", "false"), default="true",
                       help="read the event's run or model version back from AML before claiming (default true)")
    build.set_defaults(handler=_build)


def render(routes_path: str, *, auth: str = "managed-identity", throttle_retries: int = 4, verify: bool = True) -> str:
    from ..routes import load_routes
    from ._generate import generate
    from ._run import check_expressions

    definition = generate(load_routes(routes_path), auth=auth, throttle_retries=throttle_retries, verify=verify)
    check_expressions(definition)
    return json.dumps(definition, indent=2, ensure_ascii=False) + "\n"


DEFAULT_OUTPUTS = (("logicapps/workflow.json", "managed-identity", True), ("logicapps/workflow-pat.json", "pat", True),
                   ("logicapps/workflow-unverified.json", "managed-identity", False),
                   ("logicapps/workflow-pat-unverified.json", "pat", False))
"""What infra/modules/logic-app deploys, by ``auth`` and ``verifyEvents``."""


def _build(ns: argparse.Namespace) -> int:
    targets = [(ns.output, ns.auth, ns.verify == "true")] if ns.output else list(DEFAULT_OUTPUTS)
    stale = 0
    for name, auth, verify in targets:
        text = render(ns.routes, auth=auth, throttle_retries=ns.throttle_retries, verify=verify)
        output = Path(name)
        if ns.check:
            current = output.read_text(encoding="utf-8") if output.exists() else ""
            if current != text:
                print(f"{output} is stale: run `amlrelay logicapp build --routes {ns.routes}` and commit it.",
                      file=sys.stderr)
                stale += 1
            else:
                print(f"{output} is up to date with {ns.routes}")
            continue
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
        print(f"wrote {output} ({len(text):,} bytes, {auth}, verify {verify}) from {ns.routes}")
    return 1 if stale else 0
