"""Hostile inputs for bench/exactly_once.py: random and mutated payloads made from Microsoft's samples.

Every case says, *by construction*, which of its events must reach ADO (``valid``: exactly once, with the
identity given) and how many must not (``invalid``). The judgement is made here from what the mutation did
(a required field dropped, a foreign workspace, ...), not by asking amlrelay. Where a mutation may or may not
leave a usable event (a random value for an optional field, a corrupted byte in WEBHOOKDATA), the case is
``undetermined``: it still counts for crashes, and its ADO calls are reported apart.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from _exactly_once_events import AML, KINDS, SCHEMAS, Identity, identity, make_event

MAX_BODY = 512 * 1024
MAX_FIELD = 4096

REQUIRED_DATA = {
    "run_completed": ("experimentId", "experimentName", "runId"),
    "run_failed": ("experimentId", "experimentName", "runId", "runStatus"),
    "model_registered": ("modelName", "modelVersion"),
    "model_deployed": ("serviceName", "serviceComputeType", "modelIds"),
    "drift": ("dataDriftId",),
}
MAPPINGS = {"run_completed": ("runTags", "runProperties"), "run_failed": ("runTags", "runProperties"),
            "model_registered": ("modelTags", "modelProperties"),
            "model_deployed": ("serviceTags", "serviceProperties"), "drift": ()}
REQUIRED_ENVELOPE = {"event-grid-schema": ("id", "eventType", "eventTime", "data", "subject", "topic"),
                     "cloud-events-schema": ("id", "source", "type", "specversion", "data")}
SPOOFS = (
    "/subscriptions/{subscription-id}/resourceGroups/{resource-group-name}/providers/"
    "Microsoft.MachineLearningServices/workspaces/evil",
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/{resource-group-name}/providers/"
    "Microsoft.MachineLearningServices/workspaces/{workspace-name}",
    "/subscriptions/{subscription-id}/resourceGroups/{resource-group-name}/providers/"
    "Microsoft.MachineLearningServices/workspaces/{workspace-name}-evil",
    "/subscriptions/{subscription-id}/resourceGroups/{resource-group-name}/providers/"
    "Microsoft.MachineLearningServices/workspaces/{workspace-name}/../evil",
    "/subscriptions/{subscription-id}/resourceGroups/{resource-group-name}/providers/"
    "Microsoft.MachineLearningServices/workspaces/{workspace-name}\x00",
    "/subscriptions/{subscription-id}/resourceGroups/{resource-group-name}/providers/"
    "Microsoft.MachineLe\u0430rningServices/workspaces/{workspace-name}",  # a Cyrillic a (U+0430)
    "/subscriptions/{subscription-id}/resourceGroups/{resource-group-name}/providers/"
    "Microsoft.Storage/storageAccounts/{workspace-name}",
    "https://evil.example/workspaces/{workspace-name}",
    "",
)
_ALPHABET = "{}[]:,\"'\\ \t\r\nabcRequestBodyWebhookName0123456789-_.é✓\u2028\x00"


@dataclass
class Case:
    category: str
    kind: str  # "body" (decoded JSON), "text" (the webhook body as text) or "argv" (a job's sys.argv[1:])
    payload: Any
    valid: list[Identity] = field(default_factory=list)  # must each start exactly one run
    invalid: int = 0  # events that must never reach ADO
    undetermined: bool = False


def _key(mapping: dict[str, Any], name: str) -> str | None:
    return next((k for k in mapping if k.lower() == name.lower()), None)


class Fuzzer:
    def __init__(self, rng: random.Random, tag: str = "fz") -> None:
        self.rng = rng
        self.tag = tag
        self.count = 0

    # ---- building blocks ------------------------------------------------------------------------------

    def fresh(self, kind: str | None = None, schema: str | None = None) -> tuple[Identity, str, dict[str, Any]]:
        self.count += 1
        kind = kind or self.rng.choice(KINDS)
        schema = schema or self.rng.choice(SCHEMAS)
        ident = identity(kind, self.tag, self.count)
        status_change = kind == "run_completed" and self.rng.random() < 0.3
        return ident, schema, make_event(ident, schema, status_change=status_change)

    def text(self, low: int = 0, high: int = 40) -> str:
        rng = self.rng
        return "".join(rng.choice(_ALPHABET) if rng.random() < 0.7 else chr(rng.randint(1, 0x2FFF))
                       for _ in range(rng.randint(low, high)))

    def value(self, depth: int = 0) -> Any:
        rng = self.rng
        choice = rng.randint(0, 9 if depth < 3 else 5)
        if choice == 0:
            return None
        if choice == 1:
            return rng.choice([True, False])
        if choice == 2:
            return rng.choice([0, -1, 7, 2**31, -(2**63), 10**30])
        if choice == 3:
            return rng.choice([0.0, -0.0, 1.5, 1e308, -2.5e-308])
        if choice in (4, 5):
            return self.text()
        if choice in (6, 7):
            return [self.value(depth + 1) for _ in range(rng.randint(0, 4))]
        return {self.text(0, 12): self.value(depth + 1) for _ in range(rng.randint(0, 4))}

    def bad_scalar(self) -> Any:
        """A value no required AML field may hold."""
        return self.rng.choice([[], {}, True, False, None, "", "   ", [1, 2], {"a": "b"}, [None]])

    @staticmethod
    def nested(depth: int, leaf: Any = "x") -> Any:
        value = leaf
        for i in range(depth):
            value = {"n": value} if i % 2 else [value]
        return value

    # ---- cases ----------------------------------------------------------------------------------------

    def pristine(self) -> Case:
        ident, _, event = self.fresh()
        return Case("pristine samples (control)", "body", [event], valid=[ident])

    def neutral(self) -> Case:
        """Changes a real AML event may carry: still valid, must start exactly one run."""
        rng = self.rng
        ident, _, event = self.fresh()
        data = event["data"]
        how = rng.randint(0, 5)
        if (how == 4 and ident[0] not in ("run_completed", "run_failed")) or (
                how == 5 and ident[0] != "model_registered"):
            how = 0
        if how == 0:
            data[f"x_bench_{rng.randint(0, 10**6)}"] = rng.choice(["", "v", 3, None, [1], {"k": "v"}])
        elif how == 1:
            for key in list(data):
                data[rng.choice([key.upper(), key.lower(), key[:1].upper() + key[1:]])] = data.pop(key)
        elif how == 2:
            maps = MAPPINGS[ident[0]]
            target = _key(data, rng.choice(maps)) if maps else None
            data[target or "x_bench_nested"] = {"deep": self.nested(rng.randint(50, 400))}
        elif how == 3:
            key = "topic" if "topic" in event else "source"
            event[key] = rng.choice([event[key].upper(), event[key] + "/", event[key].lower()])
        elif how == 4:
            odd = rng.choice(["{{ workspaceName }}", "ünïcødé-✓-名前", "a'; DROP TABLE runs; --", "../../x"])
            run_id = f"{odd}-{self.tag}-{self.count}"
            data[_key(data, "runId") or "runId"] = run_id
            ident = (ident[0], run_id, *ident[2:])
        else:
            data[_key(data, "modelVersion") or "modelVersion"] = ident[2]  # a string, not a number
        return Case("neutral changes (still valid)", "body", [event], valid=[ident])

    def dropped(self) -> Case:
        ident, schema, event = self.fresh()
        if self.rng.random() < 0.5:
            name = self.rng.choice(REQUIRED_DATA[ident[0]])
            event["data"].pop(_key(event["data"], name) or name, None)
        else:
            name = self.rng.choice(REQUIRED_ENVELOPE[schema])
            event.pop(_key(event, name) or name, None)
        return Case("required key dropped", "body", [event], invalid=1)

    def wrong_type(self) -> Case:
        rng = self.rng
        ident, schema, event = self.fresh()
        if rng.random() < 0.6:
            name = rng.choice(REQUIRED_DATA[ident[0]])
            event["data"][_key(event["data"], name) or name] = self.bad_scalar()
        elif rng.random() < 0.5 and MAPPINGS[ident[0]]:
            name = rng.choice(MAPPINGS[ident[0]])
            event["data"][_key(event["data"], name) or name] = rng.choice(["tags", 5, [["a", "b"]], True])
        else:
            name = rng.choice(["data", "topic" if schema.startswith("event") else "source",
                               "eventType" if schema.startswith("event") else "type"])
            event[name] = rng.choice([[], 5, "text", True, None, [event.get("data")], 1.5])
        return Case("wrong types", "body", [event], invalid=1)

    def random_edit(self) -> Case:
        """Hypothesis-style: one random key, anywhere, dropped or given a random value."""
        rng = self.rng
        ident, schema, event = self.fresh()
        in_data = rng.random() < 0.6
        target = event["data"] if in_data else event
        keys = sorted(target)
        name = rng.choice(keys) if keys and rng.random() < 0.8 else self.text(1, 10)
        existing = _key(target, name)
        drop = existing is not None and rng.random() < 0.4
        value = None if drop else self.value()
        if drop:
            target.pop(existing)  # type: ignore[arg-type]
        else:
            target[existing or name] = value
        invalid = self._surely_invalid(ident[0], schema, in_data, (existing or name).lower(), drop, value)
        if invalid:
            return Case("random drop/replace", "body", [event], invalid=1)
        return Case("random drop/replace", "body", [event], undetermined=True)

    @staticmethod
    def _surely_invalid(kind: str, schema: str, in_data: bool, name: str, drop: bool, value: Any) -> bool:
        usable = (isinstance(value, str) and value.strip() and len(value) <= MAX_FIELD) or (
            isinstance(value, (int, float)) and not isinstance(value, bool))
        if in_data:
            if name in (n.lower() for n in REQUIRED_DATA[kind]):
                return drop or not usable
            if name in (n.lower() for n in MAPPINGS[kind]):
                return not drop and value is not None and not isinstance(value, dict)
            return False
        if name in ("topic", "source", "eventtype", "type", "data", "specversion"):
            # no random value is an allowed workspace, an AML type, AML data or "1.0"
            return name in (n.lower() for n in REQUIRED_ENVELOPE[schema])
        if name == "subject" and schema.startswith("event"):
            return drop or not isinstance(value, str)
        return False

    def deep(self) -> Case:
        rng = self.rng
        how = rng.randint(0, 2)
        if how == 0:  # the whole data object is a deep structure
            event = self.fresh()[2]
            event["data"] = self.nested(rng.randint(100, 900))
            return Case("deep nesting", "body", [event], invalid=1)
        if how == 1:  # far beyond the JSON parser's recursion limit, as the webhook body text
            depth = rng.randint(2_000, 100_000)
            return Case("deep nesting", "text", "[" * depth + "]" * depth, invalid=1)
        return Case("deep nesting", "body", [self.nested(rng.randint(100, 900))], invalid=1)

    def huge(self) -> Case:
        rng = self.rng
        ident, _, event = self.fresh()
        size = rng.choice([MAX_FIELD + 1, 10_000, 100_000, 400_000])
        big = rng.choice("xé✓") * size
        data = event["data"]
        if rng.random() < 0.7:
            name = rng.choice(REQUIRED_DATA[ident[0]])
            data[_key(data, name) or name] = big
        elif MAPPINGS[ident[0]]:
            name = rng.choice(MAPPINGS[ident[0]])
            data[_key(data, name) or name] = {"note": big}
        else:
            data[_key(data, "dataDriftId") or "dataDriftId"] = big
        return Case("huge strings", "body", [event], invalid=1)

    def padded_events(self) -> list[dict[str, Any]]:
        """Valid RunCompleted events, each ~20 KB (run properties of 4,000 characters), together > 512 KB even
        as compact JSON (the smallest form the body could have had)."""
        events: list[dict[str, Any]] = []
        while len(json.dumps(events, separators=(",", ":"))) <= MAX_BODY:
            event = self.fresh("run_completed")[2]
            properties = event["data"][_key(event["data"], "runProperties") or "runProperties"]
            properties.update({f"pad{i}": "p" * 4_000 for i in range(5)})
            events.append(event)
        return events

    def oversize_text(self) -> Case:
        """Valid events, but the body is over the 512 KB webhook limit: refused whole, nothing triggered."""
        events = self.padded_events()
        return Case("body over 512 KB", "text", json.dumps(events), invalid=len(events))

    def spoofed(self) -> Case:
        _, schema, event = self.fresh()
        event["topic" if schema.startswith("event") else "source"] = self.rng.choice(SPOOFS)
        return Case("spoofed topic/source", "body", [event], invalid=1)

    def confused(self) -> Case:
        rng = self.rng
        ident, schema, event = self.fresh()
        spec = _key(event, "specversion")
        how = rng.randint(0, 4)
        if schema.startswith("cloud"):
            if how == 0:
                event["eventType"] = event["type"]
            elif how == 1:
                event["topic"] = event["source"]
            elif how == 2:
                event["topic"] = event.pop("source")
            elif how == 3:
                event[spec or "specversion"] = rng.choice(["0.3", "2.0", "", "1.0.0", None])
            else:
                event["data_base64"] = "eyJhIjoxfQ=="
                event.pop("data")
        elif how in (0, 1):
            event["specversion"] = "1.0"
            if how == 1:
                event["type"] = event["eventType"]
                event["source"] = event["topic"]
        elif how == 2:
            event["source"] = event.pop("topic")
        else:  # an Event Grid envelope whose type announces other data than it carries
            other = rng.choice([k for k in KINDS if k[:3] != ident[0][:3]])
            event["eventType"] = AML + {"run_completed": "RunCompleted", "run_failed": "RunStatusChanged",
                                        "model_registered": "ModelRegistered", "model_deployed": "ModelDeployed",
                                        "drift": "DatasetDriftDetected"}[other]
            if other == "drift":  # drift needs only dataDriftId: make sure the data cannot provide it
                event["data"].pop(_key(event["data"], "dataDriftId") or "dataDriftId", None)
        return Case("CloudEvent/Event Grid confusion", "body", [event], invalid=1)

    def random_json(self) -> Case:
        rng = self.rng
        if rng.random() < 0.3:
            return Case("random JSON", "text", self.text(0, 200), invalid=1)
        payload = self.value() if rng.random() < 0.5 else [self.value() for _ in range(rng.randint(1, 5))]
        return Case("random JSON", "body", payload, invalid=max(1, len(payload) if isinstance(payload, list) else 1))

    def mixed_batch(self) -> Case:
        """Valid events batched with invalid ones: the valid ones still start exactly one run each."""
        rng = self.rng
        makers: list[Callable[[], Case]] = [self.dropped, self.wrong_type, self.spoofed, self.confused, self.huge]
        good = [self.pristine() for _ in range(rng.randint(1, 3))]
        bad = [rng.choice(makers)() for _ in range(rng.randint(1, 4))]
        items = [c.payload[0] for c in good + bad]
        order = list(range(len(items)))
        rng.shuffle(order)
        return Case("mixed batches", "body", [items[i] for i in order],
                    valid=[c.valid[0] for c in good], invalid=len(bad))

    # ---- WEBHOOKDATA argv ------------------------------------------------------------------------------

    @staticmethod
    def argv_forms(body: list[Any]) -> list[list[str]]:
        """The shapes in which Automation hands WEBHOOKDATA to a Python runbook (see amlrelay.webhook)."""
        compact, pretty = json.dumps(body), json.dumps(body, indent=2)
        headers = "{Connection:Keep-Alive,Aeg-Event-Type:Notification,Aeg-Subscription-Name:AMLRELAY}"

        def hashtable(text: str) -> str:
            return f"{{WebhookName:amlrelay,RequestBody:{text},RequestHeader:{headers}}}"

        escaped = json.dumps(pretty.replace("\n", "\r\n"))[1:-1]
        return [
            [json.dumps({"WebhookName": "w", "RequestBody": compact, "RequestHeader": {}})],
            json.dumps({"WebhookName": "w", "RequestBody": pretty, "RequestHeader": {"a": "b"}}).split(),
            [hashtable(compact)],
            hashtable(pretty).split(),
            hashtable(escaped).split(),
            hashtable(json.dumps(compact)).split(),
            pretty.split(),
        ]

    def argv_valid(self) -> Case:
        ident, _, event = self.fresh()
        argv = self.rng.choice(self.argv_forms([event]))
        return Case("argv: WEBHOOKDATA forms", "argv", argv, valid=[ident])

    def argv_random(self) -> Case:
        rng = self.rng
        argv = [self.text(0, 30) for _ in range(rng.randint(0, 8))]
        if argv and rng.random() < 0.5:
            argv[0] = rng.choice(["{", "[", "{WebhookName:", '{"RequestBody":', "{RequestBody:"]) + argv[0]
        if argv and argv[0].lstrip().startswith("-"):
            argv[0] = "{" + argv[0]  # '--flags' would be a manual start, which is not WEBHOOKDATA
        return Case("argv: random", "argv", argv, invalid=1)

    def argv_corrupted(self) -> Case:
        rng = self.rng
        event = self.fresh()[2]
        text = " ".join(rng.choice(self.argv_forms([event])))
        at = rng.randrange(len(text))
        how = rng.randint(0, 2)
        if how == 0:
            text = text[:at]
        elif how == 1:
            text = text[:at] + self.text(1, 4) + text[at:]
        else:
            text = text[:at] + text[at + 1:]
        return Case("argv: corrupted WEBHOOKDATA", "argv", text.split(), undetermined=True)

    def argv_oversize(self) -> Case:
        """Over 512 KB in each WEBHOOKDATA shape amlrelay.webhook accepts (all under its 1 MB argv cut-off)."""
        events = self.padded_events()
        compact = json.dumps(events)
        forms = {
            "json, RequestBody string": [json.dumps({"WebhookName": "w", "RequestBody": compact})],
            "json, RequestBody array": [json.dumps({"WebhookName": "w", "RequestBody": events})],
            "hashtable": f"{{WebhookName:w,RequestBody:{compact},RequestHeader:{{}}}}".split(),
            "raw array": compact.split(),
        }
        name = self.rng.choice(sorted(forms))
        return Case(f"argv over 512 KB: {name}", "argv", forms[name], invalid=len(events))


WEIGHTS: dict[str, float] = {
    "pristine": 6, "neutral": 10, "dropped": 10, "wrong_type": 10, "random_edit": 16, "deep": 4, "huge": 5,
    "oversize_text": 0.6, "spoofed": 8, "confused": 8, "random_json": 5, "mixed_batch": 5,
    "argv_valid": 4, "argv_random": 5, "argv_corrupted": 4, "argv_oversize": 0.6,
}


def generate(rng: random.Random, n: int) -> list[Case]:
    """``n`` cases: every kind at least a few times, the rest drawn by ``WEIGHTS``."""
    fuzzer = Fuzzer(rng)
    names = list(WEIGHTS)
    picks = [name for name in names for _ in range(2)]  # each kind at least twice, even in a small run
    picks += rng.choices(names, weights=[WEIGHTS[k] for k in names], k=max(0, n - len(picks)))
    rng.shuffle(picks)
    return [getattr(fuzzer, name)() for name in picks[:max(n, len(names) * 2)]]
