"""Kill rate per module and the unexplained survivors, from mutmut's results in mutants/ (see scripts/mutation).

A mutant counts as killed when a test failed, timed out or the type checker refused it. The rate is
``killed / (total - equivalent)``: an equivalent mutant (listed with its reason in tests/mutation/equivalent.txt)
behaves exactly like the original, so no test can kill it. Every other survivor is printed with its diff; a
listed mutant that is now killed, or that no longer exists, is reported too, so the list cannot rot silently.
Exit code 0 when every module reached the target (default 90 %), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = ROOT / "mutants"  # mutmut's working copy; main() takes another one (tests use a temp dir)
EQUIVALENT = ROOT / "tests" / "mutation" / "equivalent.txt"
KILLED = {1, 3, 36, 37, -24, 24, 152, 255}  # test failed, pytest error, timeouts, caught by the type checker
SURVIVED = {0}
NO_TESTS = {5, 33}


def load_equivalent(path: Path = EQUIVALENT) -> dict[str, str]:
    """``name  reason`` per line; ``#`` starts a comment. The reason is required."""
    out: dict[str, str] = {}
    if not path.exists():
        return out
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, reason = line.partition(" ")
        if not reason.strip():
            raise SystemExit(f"{path}:{number}: {name} has no reason; say in one line why it cannot be killed")
        out[name] = reason.strip()
    return out


def module_results(module: str, mutants: Path = MUTANTS) -> dict[str, int | None]:
    meta = mutants / "src" / "amlrelay" / f"{module.replace('.', '/')}.py.meta"
    if not meta.exists():
        return {}
    data: dict[str, dict[str, int | None]] = json.loads(meta.read_text(encoding="utf-8"))
    return data["exit_code_by_key"]


def diff_of(name: str, module: str, root: Path = ROOT) -> str:
    """mutmut reads the mutant from ``root``/mutants, relative to the working directory."""
    try:
        from mutmut.mutation.diff_apply import get_diff_for_mutant
    except ImportError:
        return "    (install mutmut to see the diff)"
    cwd = Path.cwd()
    os.chdir(root)
    try:
        text = get_diff_for_mutant(name, path=f"src/amlrelay/{module.replace('.', '/')}.py")
    except Exception as exc:  # a diff is a convenience; the name is what matters
        return f"    (no diff: {type(exc).__name__})"
    finally:
        os.chdir(cwd)
    changed = [line for line in text.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    return "\n".join(f"    {line}" for line in changed)


def main(argv: list[str] | None = None, *, mutants: Path = MUTANTS, equivalent_file: Path = EQUIVALENT) -> int:
    """The CLI; ``mutants`` and ``equivalent_file`` let a test point it at a made-up run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("modules", nargs="*")
    parser.add_argument("--target", type=float, default=90.0)
    parser.add_argument("--no-diffs", action="store_true")
    parser.add_argument("--survivors", action="store_true", help="only print the survivors' names, one a line")
    parser.add_argument("--pending", action="store_true", help="only print the names of mutants not run yet")
    ns = parser.parse_args(argv)
    equivalent = load_equivalent(equivalent_file)
    if ns.survivors or ns.pending:
        # survivors: run and not killed (not the listed equivalents); pending: not run yet
        for module in ns.modules:
            for name, code in sorted(module_results(module, mutants).items()):
                wanted = code is None if ns.pending else code is not None and code not in KILLED
                if wanted and name not in equivalent:
                    print(name)
        return 0
    rows: list[tuple[str, int, int, int, int, float | None]] = []
    problems: list[str] = []
    for module in ns.modules:
        results = module_results(module, mutants)
        prefix = f"amlrelay.{module}."
        if not results:
            rows.append((module, 0, 0, 0, 0, None))
            continue
        counts: Counter[str] = Counter()
        survivors: list[str] = []
        for name, code in sorted(results.items()):
            if name in equivalent:
                counts["equivalent"] += 1
                if code in KILLED:
                    problems.append(f"{name}: listed as equivalent but killed now; remove it from "
                                    f"{equivalent_file.name}")
            elif code in KILLED:
                counts["killed"] += 1
            else:
                counts["survived"] += 1
                survivors.append(name)
        for name in equivalent:
            if name.startswith(prefix) and name not in results:
                problems.append(f"{name}: listed as equivalent but no such mutant (code changed?); re-check it")
        scored = len(results) - counts["equivalent"]
        rate = 100.0 * counts["killed"] / scored if scored else 100.0
        rows.append((module, len(results), counts["killed"], counts["equivalent"], counts["survived"], rate))
        if survivors:
            print(f"\nsurvivors in amlrelay.{module} ({len(survivors)}):")
            for name in survivors:
                code = results[name]
                state = "no test reaches it" if code in NO_TESTS else "not run" if code is None else "survived"
                print(f"  {name} [{state}]")
                if not ns.no_diffs:
                    print(diff_of(name, module, mutants.parent))
    print()
    print(f"{'module':<12} {'mutants':>7} {'killed':>7} {'equiv.':>7} {'survived':>8} {'kill rate':>9}")
    failing = False
    for module, total, killed, equiv, survived, score in rows:
        shown = "not run" if score is None else f"{score:.1f} %"
        failing |= score is None or score < ns.target
        print(f"{module:<12} {total:>7} {killed:>7} {equiv:>7} {survived:>8} {shown:>9}")
    timed = [(m, (mutants / f"time-{m}.txt")) for m, *_ in rows]
    times = [f"{m} {t.read_text().strip()}" for m, t in timed if t.exists()]
    if times:
        print("\nlast run time per module: " + ", ".join(times))
    for problem in problems:
        print(f"WARNING: {problem}")
    print(f"\nkill rate = killed / (mutants - equivalent); target {ns.target:g} % per module")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
