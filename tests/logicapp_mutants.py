"""The Logic App and the runbook on mutated sample events (figure 3 of bench/logicapp_cost.py, and a
regression test in tests/test_logicapp_equivalence.py).

Each sample event (both schemas) gets one random mutation — a key dropped, set to null, to an object or
array, to '', to a number, to a boolean, its case changed, its value padded, the topic changed, tags
replaced — and is delivered to both handlers (their own identical stand-ins). Agreement = the same answer
and the same ADO requests. Disagreements are split by direction: the workflow starting a run the runbook
refuses is the one that matters (it must be 0 outside the documented caveats); the reverse only means the
workflow is stricter."""

from __future__ import annotations

import copy
import json
import random
from typing import Any

from tests.conftest import all_samples, sample
from tests.logicapp_stack import Pair

OPS = ("drop", "null", "type", "case", "tag", "topic", "empty", "int", "bool", "space")


def mutate(rng: random.Random, event: dict[str, Any]) -> tuple[dict[str, Any], str]:
    event = copy.deepcopy(event)
    data = event.get("data") if isinstance(event.get("data"), dict) else None
    op = rng.choice(OPS)
    target = event if data is None or rng.random() < 0.4 else data
    key = rng.choice(sorted(target))
    if op == "drop":
        target.pop(key)
    elif op == "null":
        target[key] = None
    elif op == "type":
        target[key] = {"x": 1} if rng.random() < 0.5 else [1]
    elif op == "case":
        target[key.lower() if key != key.lower() else key.upper()] = target.pop(key)
    elif op == "tag" and data is not None:
        for name in ("runTags", "ModelTags", "ServiceTags"):
            if name in data:
                data[name] = {"branch": rng.choice(["dev", "", "x y"]),
                              "amlrelay-started-by": rng.choice(["ado", "me"]), "area": rng.choice(["a", "B"])}
    elif op == "topic":
        where = "topic" if "topic" in event else "source"
        event[where] = str(event.get(where, "")) + rng.choice(["/", "x", " "])
    elif op == "empty":
        target[key] = ""
    elif op == "int":
        target[key] = rng.randint(0, 99)
    elif op == "bool":
        target[key] = True
    elif op == "space":
        target[key] = " " + str(target[key])
    return event, op


def agreement(p: Pair, count: int, seed: int) -> tuple[int, dict[str, list[str]]]:
    """(agreeing deliveries, {direction: [op/schema/name of each disagreement]})."""
    rng = random.Random(seed)
    agree = 0
    split: dict[str, list[str]] = {"workflow started a run the runbook refused": [],
                                   "runbook started a run the workflow refused": [],
                                   "other differences (answer or request body)": []}
    for i in range(count):
        schema, name = rng.choice(all_samples())
        event, op = mutate(rng, sample(schema, name))
        event["id"] = f"mutant-{seed}-{i}"
        data = event.get("data")
        if isinstance(data, dict):  # a new outcome per delivery, so duplicates do not blur the comparison
            for key in ("runId", "ModelName", "ServiceName", "DataDriftId"):
                if isinstance(data.get(key), str):
                    data[key] += f"-{seed}-{i}"
        runbook, logicapp = p.deliver(json.dumps([event]).encode())
        if (runbook.status, runbook.requests) == (logicapp.status, logicapp.requests):
            agree += 1
        elif len(logicapp.requests) > len(runbook.requests):
            split["workflow started a run the runbook refused"].append(f"{op}/{schema}/{name}")
        elif len(logicapp.requests) < len(runbook.requests):
            split["runbook started a run the workflow refused"].append(f"{op}/{schema}/{name}")
        else:
            split["other differences (answer or request body)"].append(f"{op}/{schema}/{name}")
    return agree, split
