"""The exactly-once bench runs end to end (--quick): every figure is printed and every hard requirement holds.

Marked slow (about 40 s, starts its own Azurite unless AMLRELAY_LEDGER_CONNECTION_STRING is set): run it with
``scripts/test -m slow``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "exactly_once.py"
FIGURES = ("1. DUPLICATES", "2. FAULT MATRIX", "3. FUZZING", "4. THROUGHPUT")


@pytest.mark.slow
def test_exactly_once_bench_quick_passes(request: pytest.FixtureRequest) -> None:
    if "slow" not in (request.config.option.markexpr or ""):
        pytest.skip("slow figure suite: run with -m slow (scripts/test -m slow)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMLRELAY_") or k.startswith("AMLRELAY_AZURITE_")}
    if os.environ.get("AMLRELAY_LEDGER_CONNECTION_STRING"):  # an Azurite the caller runs: the bench uses it
        env["AMLRELAY_LEDGER_CONNECTION_STRING"] = os.environ["AMLRELAY_LEDGER_CONNECTION_STRING"]
    done = subprocess.run([sys.executable, str(BENCH), "--quick"], env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output[-4000:]
    for figure in FIGURES:
        assert figure in done.stdout, output[-4000:]
    assert done.returncode == 0, done.stdout[-6000:]
    assert "\nPASS (" in done.stdout


@pytest.mark.slow
def test_waiter_bench_quick_prints_every_figure(request: pytest.FixtureRequest) -> None:
    """bench/waiter.py --quick (about 10 s, no az needed: the baseline rows are then left out)."""
    if "slow" not in (request.config.option.markexpr or ""):
        pytest.skip("slow figure suite: run with -m slow (scripts/test -m slow)")
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "waiter.py"), "--quick"], capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    for figure in ("amlrelay poll (long-lived waiter)", "detection latency, real clock", "3 h job, poll 5 s"):
        assert figure in done.stdout, done.stdout
