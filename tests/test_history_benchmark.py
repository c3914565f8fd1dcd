"""`benchmarks/history.py`'s yardsticks: trials to reach a from-scratch search's best, and the
paired final-best difference, on hand-made reward sequences (the searches themselves, warm
started through the product's path, are tests/test_warm_start.py's)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def history():  # noqa: ANN201 - a benchmark script imported by name
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module("history")


def test_trials_to_reach_counts_the_first_trial_whose_running_best_gets_there(history) -> None:
    assert history.trials_to_reach([0.1, 0.5, 0.3, 0.7], 0.5) == 2
    assert history.trials_to_reach([0.1, 0.5, 0.3, 0.7], 0.6) == 4
    assert history.trials_to_reach([0.1, 0.2], 0.3) is None


def test_summary_measures_warm_searches_against_both_scratch_searches(history) -> None:
    rows = {"bo/scratch": {0: [0.5, 0.6, 0.7, 0.8], 1: [0.4, 0.7, 0.7, 0.7]},
            "rl/scratch": {0: [0.5, 0.5, 0.6, 0.6], 1: [0.4, 0.5, 0.5, 0.5]},
            "bo/budget": {0: [0.8, 0.8, 0.8, 0.8], 1: [0.5, 0.6, 0.7, 0.7]},
            "rl/budget": {0: [0.5, 0.6, 0.6, 0.6], 1: [0.4, 0.4, 0.4, 0.45]},
            "rl/depth": {1: [0.9, 0.9, 0.9, 0.9]}}  # its scratch searches: seed 1 only
    out = history.summary(rows, trials=4)
    assert set(out) == {"bo/budget", "rl/budget", "rl/depth"}
    bo = out["bo/budget"]
    assert bo["share_to_bo_scratch_best"] == [0.25, 0.75] and bo["met"] == 1
    assert bo["final_minus_scratch"] == pytest.approx(0.0)
    rl = out["rl/budget"]  # the yardstick is bo's scratch best, for rl too
    assert rl["share_to_bo_scratch_best"] == [None, None] and rl["met"] == 0
    assert rl["share_to_own_scratch_best"] == [0.5, None]
    assert rl["final_minus_scratch"] == pytest.approx(-0.025)
    assert out["rl/depth"]["seeds"] == 1 and out["rl/depth"]["met"] == 1
    assert "rl/depth" in history.report({"summary": out})


@pytest.mark.slow  # eight small searches through the product's path: minutes
def test_smoke_runs_every_scenario_through_the_product_path(history, local_ray,
                                                            tmp_path: Path) -> None:
    result = history.main(["--smoke", "--searchers", "bo", "--work", str(tmp_path / "w")])
    assert result["complete"] and result["trials"] == 5
    assert set(result["rewards"]) == {f"bo/{s}" for s in history.SCENARIOS}
    assert all(len(r["0"]) == 5 for r in result["rewards"].values())
    assert set(result["summary"]) == {"bo/budget", "bo/depth", "bo/unrelated"}
    # the first trials are the free baselines at the target's budget, the same in every search
    firsts = {tuple(r["0"][:3]) for r in result["rewards"].values()}
    assert len(firsts) == 1
