"""Recover the Event Grid body from the ``sys.argv`` of a Python runbook started by a webhook.

Python runbooks have no named parameters: Automation serialises the WEBHOOKDATA object and hands it to
the script in ``sys.argv``, split on whitespace, in one of these shapes (seen in Microsoft's own samples;
Microsoft does not document them, see the README):

* JSON: ``{"WebhookName":"...","RequestBody":"[...]","RequestHeader":{...}}`` (portal test pane, REST);
* the PowerShell-hashtable shape with unquoted keys:
  ``{WebhookName:relay,RequestBody:[{"id":...}],RequestHeader:{Connection:Keep-Alive,...}}``;
* either of them with the body escaped (``\\"`` for quotes, literal ``\\r\\n``).

The argv items are re-joined with single spaces: JSON tolerates whitespace between tokens, and whitespace
inside AML names is never significant for routing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from .errors import InvalidEventError
from .events import MAX_BODY_BYTES, load_body, utf8

_HINT = (
    "Start the runbook from an Automation webhook subscribed to Event Grid, or by hand with parameters "
    "(see `--help`)."
)
_BODY_KEY = re.compile(r"[{,\s]\s*\"?RequestBody\"?\s*:", re.IGNORECASE)
_NAME_KEY = re.compile(r"\"?WebhookName\"?\s*:\s*\"?([^,\"}\s]*)", re.IGNORECASE)


@dataclass(frozen=True)
class WebhookData:
    """What a webhook start delivered: the decoded body and, when known, the webhook's name."""

    body: Any
    webhook_name: str | None


def looks_like_webhook(argv: list[str]) -> bool:
    """True when the arguments carry WEBHOOKDATA or a raw event body rather than ``--flags`` or portal
    ``name=value`` boxes."""
    if not argv or argv[0].startswith("-") or "=" in argv[0].split("{")[0]:
        return False
    text = " ".join(argv).lstrip()
    return text.startswith(("{", "[")) or "requestbody" in text[:4096].lower()


def parse_webhook_argv(argv: list[str]) -> WebhookData:
    """Parse ``sys.argv[1:]`` of a webhook-started job into its body; raise with a clear reason otherwise."""
    text = " ".join(part.strip() for part in argv).strip()
    if not text:
        raise InvalidEventError("The runbook was started without WEBHOOKDATA or parameters.", hint=_HINT)
    size = len(utf8(text, "The webhook data"))
    if size > 2 * MAX_BODY_BYTES:
        raise InvalidEventError(
            f"The webhook data is larger than the {MAX_BODY_BYTES}-byte limit of Azure Automation webhooks.",
            hint="Lower the subscription's preferredBatchSizeInKilobytes.",
        )
    try:
        decoded = json.loads(text)
    except RecursionError:
        raise InvalidEventError("The webhook data is nested too deeply.", hint=_HINT) from None
    except ValueError:
        return _from_hashtable_form(text)
    if isinstance(decoded, dict):
        lower = {str(k).lower(): v for k, v in decoded.items()}
        if "requestbody" in lower:
            name = lower.get("webhookname")
            return WebhookData(_decode_body(lower["requestbody"]), name if isinstance(name, str) else None)
    _check_size(size)
    return WebhookData(decoded, None)  # a bare event or array of events, e.g. from a test


def _decode_body(body: Any) -> Any:
    if isinstance(body, str):
        return load_body(body)
    if isinstance(body, (list, dict)):
        _check_size(len(json.dumps(body, separators=(",", ":")).encode("utf-8")))
        return body
    raise InvalidEventError("WEBHOOKDATA.RequestBody is empty or not JSON.", hint=_HINT)


def _check_size(size: int) -> None:
    """Every path to a body passes here or through :func:`load_body`: Automation never delivers more."""
    if size > MAX_BODY_BYTES:
        raise InvalidEventError(
            f"The request body is {size} bytes; Azure Automation webhooks accept at most {MAX_BODY_BYTES}.",
            hint="Lower the subscription's maxEventsPerBatch / preferredBatchSizeInKilobytes.",
        )


def _from_hashtable_form(text: str) -> WebhookData:
    match = _BODY_KEY.search(text)
    if not match:
        raise InvalidEventError(
            "The runbook arguments are neither JSON nor WEBHOOKDATA (no RequestBody found).", hint=_HINT
        )
    name_match = _NAME_KEY.search(text[: match.start() + 1])
    rest = text[match.end():].lstrip()
    if rest.startswith('"'):  # RequestBody given as a JSON string literal
        try:
            literal, _ = json.JSONDecoder().raw_decode(rest)
        except ValueError:
            raise InvalidEventError("WEBHOOKDATA.RequestBody is a malformed string.", hint=_HINT) from None
        return WebhookData(_decode_body(literal), name_match.group(1) if name_match else None)
    if _is_escaped(rest):
        rest = _unescape(rest)
    end = _matching_end(rest)
    if end is None:
        raise InvalidEventError(
            "WEBHOOKDATA.RequestBody is not a complete JSON array or object (unbalanced brackets).", hint=_HINT
        )
    return WebhookData(load_body(rest[:end]), name_match.group(1) if name_match else None)


def _is_escaped(rest: str) -> bool:
    """An escaped body shows ``\\"`` before any bare quote."""
    escaped = rest.find('\\"')
    bare = re.search(r'(?<!\\)"', rest)
    return escaped != -1 and (bare is None or escaped < bare.start())


_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|.)", re.DOTALL)
_SIMPLE = {'"': '"', "\\": "\\", "/": "/", "r": " ", "n": " ", "t": " ", "b": " ", "f": " "}


def _unescape(text: str) -> str:
    """Undo one level of JSON-string escaping, in one left-to-right pass so ``\\\\\\"`` (an escaped quote
    inside an escaped body) becomes ``\\"`` again. Escaped line breaks are formatting: they become spaces."""

    def replace(match: re.Match[str]) -> str:
        code = match.group(1)
        if code.startswith("u") and len(code) == 5:
            return chr(int(code[1:], 16))
        return _SIMPLE.get(code, match.group(0))

    return _ESCAPE.sub(replace, text)


def _matching_end(text: str) -> int | None:
    """Index just past the bracket that closes ``text[0]`` (``[`` or ``{``), aware of JSON strings."""
    if not text or text[0] not in "[{":
        return None
    depth = 0
    in_string = False
    escaped = False
    for index, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
            if depth == 0:
                return index + 1
    return None
