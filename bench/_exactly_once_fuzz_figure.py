"""Figure 3 of bench/exactly_once.py: the hostile inputs of _exactly_once_fuzz through parse + relay."""

from __future__ import annotations

import contextlib
import json
import random
from collections import Counter
from dataclasses import dataclass, field

from _exactly_once_common import Bench, apply_env, build, note, say
from _exactly_once_events import Identity, request_identity
from _exactly_once_fuzz import generate
from tests.stack import PAT

from amlrelay import runbook
from amlrelay.errors import AmlRelayError
from amlrelay.events import load_body, parse_events
from amlrelay.record import table
from amlrelay.webhook import looks_like_webhook, parse_webhook_argv


def takes_webhook_path(argv: list[str]) -> bool:
    """Mirrors runbook._run: which argv a job treats as WEBHOOKDATA (the rest is a manual start)."""
    return bool(argv) and not argv[0].startswith("-") and "=" not in argv[0].split("{")[0] and \
        looks_like_webhook(argv)


@dataclass
class FuzzTally:
    inputs: int = 0
    clear_errors: int = 0
    refused_events: int = 0
    crashes: int = 0
    invalid_calls: int = 0
    valid: int = 0
    valid_once: int = 0
    undetermined_calls: int = 0
    secret_leaks: int = 0
    examples: list[str] = field(default_factory=list)


def run_fuzz(bench: Bench) -> None:
    cases = generate(random.Random(bench.seed + 3), bench.cfg.fuzz_inputs)
    table_name = bench.table("fuzz")
    env = bench.job_env(table_name)
    apply_env(env)  # runbook.main reads its settings from the environment, as a job does
    relay = build(env)
    stack = bench.stack
    secrets = (stack.token, PAT)
    tallies: dict[str, FuzzTally] = {}
    note(f"fuzzing: {len(cases):,} inputs")
    for case in cases:
        t = tallies.setdefault(case.category, FuzzTally())
        stack.ado.reset_state()
        lines: list[str] = []
        crash = ""
        try:
            if case.kind == "argv" and takes_webhook_path(case.payload):
                code = runbook.main(["trigger_ado_pipeline.py", *case.payload], out=lines.append)
                if code == 3:
                    crash = next((line for line in lines if line.startswith("ERROR")), "exit 3")
                elif code == 2 and not any(line.startswith("{") for line in lines):
                    t.clear_errors += 1
            else:
                if case.kind == "argv":
                    body = parse_webhook_argv(case.payload).body
                elif case.kind == "text":
                    body = load_body(case.payload)
                else:
                    body = case.payload
                items = parse_events(body)
                outcomes = relay.handle(items, raw=body if isinstance(body, list) else [body])
                runbook.report(outcomes, lines.append)
        except AmlRelayError:
            t.clear_errors += 1
        except Exception as exc:
            crash = f"{type(exc).__name__}: {str(exc)[:150]}"
        if any("Traceback" in line for line in lines):
            crash = crash or "traceback in the job output"
        t.inputs += 1
        if crash:
            t.crashes += 1
            if len(t.examples) < 2:
                t.examples.append(crash)
        for line in lines:
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    if json.loads(line).get("outcome") in ("rejected", "skipped"):
                        t.refused_events += 1
            if any(s in line for s in secrets):
                t.secret_leaks += 1
        wanted = Counter(case.valid)
        seen: Counter[Identity] = Counter()
        for request in stack.ado.requests:
            ident = request_identity(request.path, request.json) if request.method == "POST" else None
            if ident is not None and ident in wanted:
                seen[ident] += 1
            elif case.undetermined:
                t.undetermined_calls += 1
            else:
                t.invalid_calls += 1
        t.valid += len(wanted)
        t.valid_once += sum(1 for ident in wanted if seen[ident] == 1)
    stack.ado.reset_state()
    total = FuzzTally()
    rows = []
    for name in sorted(tallies, key=lambda c: (ORDER.index(c) if c in ORDER else len(ORDER), c)):
        t = tallies[name]
        for attr in ("inputs", "clear_errors", "refused_events", "crashes", "invalid_calls", "valid", "valid_once",
                     "undetermined_calls", "secret_leaks"):
            setattr(total, attr, getattr(total, attr) + getattr(t, attr))
        rows.append(_fuzz_row(name, t))
    rows.append(_fuzz_row("TOTAL", total))
    v = bench.verdict
    v.require(total.crashes == 0, f"fuzzing: {total.crashes} crashes")
    v.require(total.invalid_calls == 0, f"fuzzing: {total.invalid_calls} ADO calls for invalid input")
    v.require(total.valid_once == total.valid, f"fuzzing: {total.valid - total.valid_once} valid events not "
              "started exactly once")
    say(f"3. FUZZING  {total.inputs:,} inputs (seed {bench.seed}) through parse + relay (argv: the runbook's own "
        "main(), WEBHOOKDATA parsed by amlrelay.webhook.parse_webhook_argv), with the stack and a ledger.\n")
    say(table(rows, ("input kind", "inputs", "clear errors", "events refused", "crashes",
                     "ADO calls for invalid input", "valid: exactly 1 run", "ADO calls (undetermined)"), width=44))
    say("   clear errors = the whole input refused with an AmlRelayError (job exit 2); events refused = events "
        "answered 'rejected' or 'skipped'; crash = any other exception, exit 3, or a traceback in the output.")
    say("   Validity is decided by construction, not by amlrelay: 'invalid' inputs must make no ADO call at all; "
        "'valid' events must start exactly one run; undetermined mutations (a random value in an optional field,")
    say(f"   a corrupted byte in WEBHOOKDATA) may do either and are counted apart. Secret values in the output: "
        f"{total.secret_leaks}.")
    for name, t in sorted(tallies.items()):
        for example in t.examples:
            say(f"   crash in {name}: {example}")
    say()


ORDER = ["pristine samples (control)", "neutral changes (still valid)", "mixed batches", "required key dropped",
         "wrong types", "random drop/replace", "deep nesting", "huge strings", "spoofed topic/source",
         "CloudEvent/Event Grid confusion", "random JSON", "body over 512 KB", "argv: WEBHOOKDATA forms",
         "argv: random", "argv: corrupted WEBHOOKDATA"]


def _fuzz_row(name: str, t: FuzzTally) -> tuple[str, ...]:
    return (name, f"{t.inputs:,}", f"{t.clear_errors:,}", f"{t.refused_events:,}", f"{t.crashes:,}",
            f"{t.invalid_calls:,}", f"{t.valid_once:,}/{t.valid:,}" if t.valid else "-", f"{t.undetermined_calls:,}")

