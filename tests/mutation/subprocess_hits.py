"""Installed by scripts/mutation as ``sitecustomize`` of the mutated package (mutants/src), never imported here.

mutmut learns which tests reach which function by recording calls in the test process. The runbook,
sweeper and component tests start the package in a *child* process, as Automation does, so their calls
were never recorded: those tests were never run against the mutants they would kill, and the report
listed survivors that the suite in fact kills. When mutmut collects its stats (MUTANT_UNDER_TEST=stats),
this file makes a child process write the functions it called to MUTMUT_AMLRELAY_HITS (a folder the test
process set, see tests/mutation/ordering.py), and the test process adds them to the test that started it.
"""

from __future__ import annotations

import atexit
import contextlib
import os

_HITS = os.environ.get("MUTMUT_AMLRELAY_HITS", "")


def _install() -> None:
    from mutmut.mutation import trampoline  # type: ignore[import-not-found,unused-ignore]  # under mutmut only

    seen: set[str] = set()

    def record(name: str, caller: str | None = None) -> None:
        seen.add(name)

    def dump() -> None:
        if seen:
            path = os.path.join(_HITS, f"{os.getpid()}.hits")
            with open(path, "w", encoding="utf-8") as out:
                out.write("\n".join(sorted(seen)))

    setattr(trampoline, "record_trampoline_hit", record)  # noqa: B010 (not an exported name)
    atexit.register(dump)


if _HITS and os.environ.get("MUTANT_UNDER_TEST") == "stats":
    with contextlib.suppress(Exception):  # a stats helper must never change what the child does
        _install()
