"""The mutation tooling's own promises (scripts/mutation, README "Tests"): a mutant's tests run fastest first
within the time budget, and the report's kill rate, survivor list and warnings are what they claim — the
≥ 90 % figures and the equivalence list are only as good as these. The report runs against a made-up
mutmut run in a temp folder; the real mutants/ is never read or written here."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from tests.mutation.ordering import budget, order_and_cap

REPO = Path(__file__).resolve().parents[1]


def _report_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mutation_report", REPO / "scripts" / "_mutation_report.py")
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report = _report_module()


# -- ordering: fastest first, within the budget -----------------------------------------------------------------

def test_tests_run_fastest_first_and_every_test_runs_without_a_budget() -> None:
    nodeids = ["slow", "fast", "middle"]
    assert order_and_cap(nodeids, {"slow": 3.0, "fast": 0.1, "middle": 1.5}, 0) == ([1, 2, 0], [])


def test_equal_durations_keep_the_collection_order() -> None:
    assert order_and_cap(["a", "b", "c"], {"a": 2.0, "b": 0.5, "c": 2.0}, 0) == ([1, 0, 2], [])


def test_a_test_never_timed_counts_as_one_second() -> None:
    nodeids = ["new", "quick", "long", "almost"]
    durations = {"quick": 0.5, "long": 2.0, "almost": 0.99}
    assert order_and_cap(nodeids, durations, 0) == ([1, 3, 0, 2], [])
    # and that second counts against the budget: 0.5 + 1.0 fit in 1.5 s, not in 1.4 s
    assert order_and_cap(["new", "quick"], {"quick": 0.5}, 1.5) == ([1, 0], [])
    assert order_and_cap(["new", "quick"], {"quick": 0.5}, 1.4) == ([1], [0])


def test_the_budget_keeps_the_fastest_tests_that_fit_and_drops_the_rest() -> None:
    nodeids = ["c", "a", "d", "b"]
    durations = {"a": 0.25, "b": 0.25, "c": 0.75, "d": 2.0}
    keep, drop = order_and_cap(nodeids, durations, 0.5)
    assert [nodeids[i] for i in keep] == ["a", "b"]  # 0.25 + 0.25 reaches the budget exactly: both run
    assert [nodeids[i] for i in drop] == ["c", "d"]
    keep, drop = order_and_cap(nodeids, durations, 1.25)
    assert ([nodeids[i] for i in keep], [nodeids[i] for i in drop]) == (["a", "b", "c"], ["d"])


def test_a_budget_smaller_than_every_test_still_runs_the_fastest_one() -> None:
    """A mutant with no test run would count as a survivor of nothing; the fastest test always runs."""
    assert order_and_cap(["big", "huge"], {"big": 10.0, "huge": 60.0}, 1.0) == ([0], [1])
    assert order_and_cap(["only"], {"only": 60.0}, 0.001) == ([0], [])


def test_a_budget_of_zero_or_less_means_no_cap() -> None:
    durations = {"a": 100.0, "b": 200.0}
    assert order_and_cap(["b", "a"], durations, 0) == ([1, 0], [])
    assert order_and_cap(["b", "a"], durations, -5) == ([1, 0], [])


def test_no_tests_is_nothing_to_run() -> None:
    assert order_and_cap([], {}, 5.0) == ([], [])


@pytest.mark.parametrize(("value", "seconds"), [
    (None, 0.0), ("", 0.0), ("  ", 0.0), ("0", 0.0), ("30", 30.0), (" 2.5 ", 2.5), ("-5", 0.0), ("1e1", 10.0),
])
def test_the_budget_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, value: str | None,
                                               seconds: float) -> None:
    if value is None:
        monkeypatch.delenv("AMLRELAY_MUTATION_BUDGET", raising=False)
    else:
        monkeypatch.setenv("AMLRELAY_MUTATION_BUDGET", value)
    assert budget() == seconds


@pytest.mark.parametrize("value", ["abc", "30s", "1,5"])
def test_a_budget_that_is_not_a_number_stops_the_run_with_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                                                        value: str) -> None:
    monkeypatch.setenv("AMLRELAY_MUTATION_BUDGET", value)
    with pytest.raises(pytest.UsageError) as info:
        budget()
    assert str(info.value) == f"AMLRELAY_MUTATION_BUDGET={value!r} is not a number of seconds (0 = no budget)"


# -- the equivalence list ---------------------------------------------------------------------------------------

def test_the_equivalence_list_maps_each_mutant_to_its_reason(tmp_path: Path) -> None:
    listed = tmp_path / "equivalent.txt"
    listed.write_text("# a comment\n\namlrelay.record.x_a__mutmut_1 zip(strict=False): never fires\n"
                      "  amlrelay.record.x_b__mutmut_2   slices alike  \n", encoding="utf-8")
    assert report.load_equivalent(listed) == {"amlrelay.record.x_a__mutmut_1": "zip(strict=False): never fires",
                                              "amlrelay.record.x_b__mutmut_2": "slices alike"}


@pytest.mark.parametrize("line", ["amlrelay.record.x_b__mutmut_2", "amlrelay.record.x_b__mutmut_2   "])
def test_a_listed_mutant_without_a_reason_is_refused_with_file_and_line(tmp_path: Path, line: str) -> None:
    listed = tmp_path / "equivalent.txt"
    listed.write_text(f"# header\namlrelay.record.x_a__mutmut_1 a reason\n{line}\n", encoding="utf-8")
    with pytest.raises(SystemExit) as info:
        report.load_equivalent(listed)
    assert str(info.value) == (f"{listed}:3: amlrelay.record.x_b__mutmut_2 has no reason; say in one line why it "
                               "cannot be killed")


def test_no_equivalence_list_is_an_empty_one(tmp_path: Path) -> None:
    assert report.load_equivalent(tmp_path / "missing.txt") == {}


def test_the_checked_in_equivalence_list_is_well_formed() -> None:
    listed = report.load_equivalent()
    assert listed, "tests/mutation/equivalent.txt lists no mutant"
    assert all(name.startswith("amlrelay.") and "__mutmut_" in name for name in listed)


# -- the report -------------------------------------------------------------------------------------------------

# mutmut's exit codes: 1 a test failed, 36 timeout, 255 caught by the type checker, 0 survived, 33 no test
# reaches it, None not run yet.
RECORD = {
    "amlrelay.record.x_a__mutmut_1": 1,
    "amlrelay.record.x_a__mutmut_2": 36,
    "amlrelay.record.x_a__mutmut_3": 255,
    "amlrelay.record.x_b__mutmut_1": 0,
    "amlrelay.record.x_b__mutmut_2": None,
    "amlrelay.record.x_b__mutmut_3": 33,
    "amlrelay.record.x_c__mutmut_1": 0,  # listed as equivalent, survives
    "amlrelay.record.x_c__mutmut_2": 1,  # listed as equivalent, but a test kills it now
}
EQUIVALENT = {
    "amlrelay.record.x_c__mutmut_1": "behaves the same",
    "amlrelay.record.x_c__mutmut_2": "was thought to behave the same",
    "amlrelay.record.x_gone__mutmut_1": "its code was rewritten since",
    "amlrelay.routes.x_elsewhere__mutmut_1": "another module's, not reported here",
    "amlrelay.models.x_m__mutmut_1": "behaves the same",
}


class FakeRun:
    """A mutmut run as scripts/mutation leaves it: mutants/src/amlrelay/<module>.py.meta, time-<module>.txt."""

    def __init__(self, root: Path) -> None:
        self.mutants = root / "mutants"
        self.equivalent = root / "equivalent.txt"
        self.equivalent.write_text("".join(f"{name} {reason}\n" for name, reason in EQUIVALENT.items()),
                                   encoding="utf-8")

    def results(self, module: str, codes: dict[str, int | None]) -> None:
        meta = self.mutants / "src" / "amlrelay" / f"{module.replace('.', '/')}.py.meta"
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps({"exit_code_by_key": codes, "durations_by_key": {}}), encoding="utf-8")

    def report(self, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
        code = report.main(list(argv), mutants=self.mutants, equivalent_file=self.equivalent)
        assert isinstance(code, int)
        return code, capsys.readouterr().out


def row(out: str, module: str) -> list[str]:
    lines = [line.split() for line in out.splitlines() if line.split()[:1] == [module]]
    assert len(lines) == 1, out
    return lines[0]


@pytest.fixture
def run(tmp_path: Path) -> FakeRun:
    fake = FakeRun(tmp_path)
    fake.results("record", RECORD)
    return fake


def test_the_kill_rate_leaves_the_equivalent_mutants_out(run: FakeRun, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run.report(capsys, "--no-diffs", "record")
    # 8 mutants, 2 listed as equivalent, 3 killed: 3 / (8 - 2) = 50 %, under the 90 % target
    assert row(out, "record") == ["record", "8", "3", "2", "3", "50.0", "%"]
    assert code == 1


def test_a_module_at_the_target_passes(run: FakeRun, capsys: pytest.CaptureFixture[str]) -> None:
    assert run.report(capsys, "--no-diffs", "--target", "50", "record")[0] == 0
    assert run.report(capsys, "--no-diffs", "--target", "50.1", "record")[0] == 1


def test_every_module_must_reach_the_target(run: FakeRun, capsys: pytest.CaptureFixture[str]) -> None:
    run.results("routes", {"amlrelay.routes.x_d__mutmut_1": 1, "amlrelay.routes.x_d__mutmut_2": 3,
                           "amlrelay.routes.x_elsewhere__mutmut_1": 0})
    code, out = run.report(capsys, "--no-diffs", "routes")
    assert (code, row(out, "routes")) == (0, ["routes", "3", "2", "1", "0", "100.0", "%"])
    code, out = run.report(capsys, "--no-diffs", "routes", "record")
    assert code == 1
    assert row(out, "record")[-2:] == ["50.0", "%"]


def test_a_module_whose_every_survivor_is_equivalent_passes(run: FakeRun,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    run.results("models", {"amlrelay.models.x_m__mutmut_1": 0})
    code, out = run.report(capsys, "--no-diffs", "models")
    assert (code, row(out, "models")) == (0, ["models", "1", "0", "1", "0", "100.0", "%"])


def test_a_module_with_no_results_is_not_run_and_fails(run: FakeRun, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run.report(capsys, "--no-diffs", "ledger")
    assert (code, row(out, "ledger")) == (1, ["ledger", "0", "0", "0", "0", "not", "run"])


def test_a_module_of_a_subpackage_is_found(run: FakeRun, capsys: pytest.CaptureFixture[str]) -> None:
    run.results("journal.sweeper", {"amlrelay.journal.sweeper.x_s__mutmut_1": 1})
    code, out = run.report(capsys, "--no-diffs", "journal.sweeper")
    assert (code, row(out, "journal.sweeper")) == (0, ["journal.sweeper", "1", "1", "0", "0", "100.0", "%"])


def test_the_survivors_are_listed_with_why_they_survived(run: FakeRun, capsys: pytest.CaptureFixture[str]) -> None:
    _, out = run.report(capsys, "--no-diffs", "record")
    listed = [line.strip() for line in out.splitlines() if line.startswith("  amlrelay.")]
    assert listed == ["amlrelay.record.x_b__mutmut_1 [survived]", "amlrelay.record.x_b__mutmut_2 [not run]",
                      "amlrelay.record.x_b__mutmut_3 [no test reaches it]"]
    assert "survivors in amlrelay.record (3):" in out


def test_survivors_mode_prints_only_the_unexplained_survivors(run: FakeRun,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """scripts/mutation --recheck feeds these names to mutmut, so nothing else may be printed; a mutant not run
    yet is not a survivor to re-check with every test (--resume runs those, within the budget)."""
    code, out = run.report(capsys, "--survivors", "record")
    assert code == 0
    assert out.splitlines() == ["amlrelay.record.x_b__mutmut_1", "amlrelay.record.x_b__mutmut_3"]


def test_pending_mode_prints_only_the_mutants_not_run_yet(run: FakeRun, capsys: pytest.CaptureFixture[str]) -> None:
    """scripts/mutation --resume feeds these names to mutmut."""
    code, out = run.report(capsys, "--pending", "record")
    assert code == 0
    assert out.splitlines() == ["amlrelay.record.x_b__mutmut_2"]


def test_a_stale_equivalence_is_warned_about(run: FakeRun, capsys: pytest.CaptureFixture[str]) -> None:
    _, out = run.report(capsys, "--no-diffs", "record")
    warnings = [line for line in out.splitlines() if line.startswith("WARNING:")]
    assert warnings == [
        "WARNING: amlrelay.record.x_c__mutmut_2: listed as equivalent but killed now; remove it from "
        "equivalent.txt",
        "WARNING: amlrelay.record.x_gone__mutmut_1: listed as equivalent but no such mutant (code changed?); "
        "re-check it",
    ]


def test_the_last_run_time_is_shown(run: FakeRun, capsys: pytest.CaptureFixture[str]) -> None:
    (run.mutants / "time-record.txt").write_text("412 s (with: record; budget 20 s)\n", encoding="utf-8")
    _, out = run.report(capsys, "--no-diffs", "record")
    assert "last run time per module: record 412 s (with: record; budget 20 s)" in out


def test_a_missing_diff_does_not_stop_the_report(run: FakeRun, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The diff is a convenience: when mutmut cannot produce one the survivor is still listed, the table
    still printed, and the report does not leave the caller in another directory."""
    caller = tmp_path / "caller"
    caller.mkdir()
    monkeypatch.chdir(caller)
    code, out = run.report(capsys, "record")
    assert code == 1
    assert "  amlrelay.record.x_b__mutmut_1 [survived]" in out.splitlines()
    assert row(out, "record")[-2:] == ["50.0", "%"]
    assert Path.cwd() == caller
