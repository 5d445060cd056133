"""WDL's timestamps for the evaluator: what the service parses and how it writes them back.

Apart from the function table because these are .NET's rules, not Python's: the service writes up to seven
fractional digits (Python parses six), its round-trip format ``o`` ends in seven digits and ``Z``, and
``ticks`` counts 100-nanosecond intervals from 0001-01-01.
"""

from __future__ import annotations

from datetime import datetime, timezone

from ._wdl import ExpressionError

_EPOCH = datetime(1, 1, 1, tzinfo=timezone.utc)


def parse_timestamp(text: str) -> datetime:
    """A timestamp as the service reads it; one without a zone is UTC."""
    text = text.strip()
    match = text.replace("Z", "+00:00")
    if "." in match:  # .NET writes up to 7 fractional digits; Python parses up to 6
        head, _, rest = match.partition(".")
        digits = "".join(c for c in rest if c.isdigit())
        zone = rest[len(digits):]
        match = f"{head}.{digits[:6].ljust(6, '0')}{zone}"
    try:
        parsed = datetime.fromisoformat(match)
    except ValueError:
        raise ExpressionError(f"'{text}' is not a valid timestamp") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def format_timestamp(moment: datetime, fmt: str = "o") -> str:
    """The two formats the generated workflow uses; any other is refused rather than guessed."""
    moment = moment.astimezone(timezone.utc)
    if fmt == "o":
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}0Z"
    if fmt == "yyyy-MM-ddTHH:mm:ss.ffffffzzz":
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}+00:00"
    raise ExpressionError(f"format {fmt!r} is not supported by this evaluator")


def ticks(moment: datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 10_000_000 + delta.microseconds * 10
