"""The searchers under Ray Tune's own semantics, as a plain Tune user drives them: metric and
mode from `TuneConfig` (BO's directions included, with and without a `ConcurrencyLimiter`),
objectives that never report `final`, stop rules, search domains refused, no metric at all."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ray import tune
from ray.tune.search import ConcurrencyLimiter

from prunetune.orchestrator.searchers import (
    FINAL_KEY,
    BOSearcher,
    RandomSearcher,
    RLSearcher,
    SearcherError,
    TrialOutcome,
)
from prunetune.orchestrator.searchers.testing import small_space
from prunetune.search_spaces import PruningSpace

TARGET = 0.7  # the toy loss's optimum, in every dimension


@pytest.fixture(scope="module")
def space() -> PruningSpace:
    return small_space()


def _toy_loss() -> Any:
    """A loss of the point itself (no `final` key: a plain Tune objective)."""
    target = TARGET

    def objective(config: dict[str, Any]) -> None:
        import numpy
        from ray import tune as t

        x = numpy.asarray(config["x"], dtype=float)
        t.report({"loss": float(numpy.mean((x - target) ** 2))})

    return objective


@pytest.mark.parametrize("limiter", [False, True])
def test_bo_minimises_a_loss_set_only_in_tune_config(space: PruningSpace, local_ray: Any,
                                                     tmp_path: Path, limiter: bool) -> None:
    n_init = 5
    searcher = BOSearcher(space=space, n_init=n_init, seed=1)  # no metric, no mode
    assert searcher.metric is None and searcher.mode is None
    alg = ConcurrencyLimiter(searcher, max_concurrent=1) if limiter else searcher
    tuner = tune.Tuner(
        _toy_loss(), param_space={"task": "toy"},
        tune_config=tune.TuneConfig(search_alg=alg, metric="loss", mode="min",
                                    num_samples=16, reuse_actors=True,
                                    **({} if limiter else {"max_concurrent_trials": 1})),
        run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0))
    grid = tuner.fit()
    assert not grid.errors
    assert (searcher.metric, searcher.mode, searcher.objective_modes) == ("loss", "min",
                                                                            ["min"])
    obs = [o for o in searcher.observations if o.status is TrialOutcome.FINAL]
    assert len(obs) == 16  # every trial learned from, although none reported `final`
    design = min(o.value for o in obs[:n_init])
    bo = min(o.value for o in obs[n_init:])
    assert bo < design  # BO improved the loss over its Sobol design: it minimised


def test_search_domains_in_param_space_are_refused(space: PruningSpace, local_ray: Any,
                                                   tmp_path: Path) -> None:
    searcher = RandomSearcher(space=space)
    assert searcher.set_search_properties("loss", "min", {"lr": tune.uniform(0, 1)}) is False
    assert searcher.set_search_properties("loss", "min", {"grid": {"grid_search": [1, 2]}}) \
        is False
    assert searcher.metric is None  # nothing taken from a refused call
    tuner = tune.Tuner(_toy_loss(), param_space={"lr": tune.uniform(0, 1)},
                       tune_config=tune.TuneConfig(search_alg=searcher, metric="loss",
                                                   mode="min", num_samples=1),
                       run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0))
    with pytest.raises(Exception, match="unresolved parameters"):
        tuner.fit()


def test_an_unset_metric_is_a_clear_error(space: PruningSpace) -> None:
    for cls in (RandomSearcher, BOSearcher, RLSearcher):
        with pytest.raises(SearcherError, match="no metric / mode.*non-empty param_space"):
            cls(space=space).suggest("t0")
    with pytest.raises(SearcherError, match="mode must be 'max' or 'min'"):
        RandomSearcher(space=space).set_search_properties("loss", "lowest", {"a": 1})


def test_results_without_final_are_learned_from_with_one_warning(
        space: PruningSpace, caplog: pytest.LogCaptureFixture) -> None:
    s = RandomSearcher(space=space, metric="loss", mode="min")
    with caplog.at_level(logging.WARNING):
        for i in range(3):
            s.suggest(f"t{i}")
            s.on_trial_complete(f"t{i}", {"loss": 0.1 * i, "training_iteration": 3})
    assert [o.status for o in s.observations] == [TrialOutcome.FINAL] * 3
    warnings = [r for r in caplog.records if "carry no 'final' flag" in r.getMessage()]
    assert len(warnings) == 1


def test_a_stop_rule_ends_a_trial_as_finished(space: PruningSpace) -> None:
    s = RandomSearcher(space=space)
    assert s.set_search_properties("accuracy", "max", {"tag": "x"},
                                   stop={"training_iteration": 2})
    for t in ("by-rule", "early"):
        s.suggest(t)
    s.on_trial_complete("by-rule", {"accuracy": 0.6, FINAL_KEY: False, "training_iteration": 2})
    s.on_trial_complete("early", {"accuracy": 0.7, FINAL_KEY: False, "training_iteration": 1})
    status = {o.trial_id: o.status for o in s.observations}
    assert status == {"by-rule": TrialOutcome.FINAL, "early": TrialOutcome.STOPPED}


def test_bo_refreshes_its_directions_when_tune_sets_them(space: PruningSpace) -> None:
    s = BOSearcher(space=space, metric="accuracy", mode="max")
    assert s.objective_modes == ["max"]
    s.set_search_properties("loss", "min", {"tag": "x"})
    assert (s.objectives, s.objective_modes) == (("loss",), ["min"])
    for i, loss in enumerate((0.3, 0.1, 0.2)):
        s.suggest(f"t{i}")
        s.on_trial_complete(f"t{i}", {"loss": loss})
    _, y = s.finished()
    assert np.argmax(y) == 1  # the smallest loss is the best reward
    multi = BOSearcher(space=space, metric="accuracy", mode="max",
                       objectives=["accuracy", "latency_ms"])
    with pytest.raises(SearcherError, match="objectives must start with the searched metric "
                                            "'loss'"):
        multi.set_search_properties("loss", "min", {"tag": "x"})


def test_rl_threads_option(space: PruningSpace) -> None:
    import torch

    before = torch.get_num_threads()
    s = RLSearcher(space=space, metric="accuracy", mode="max", warmup=0, threads=1)
    for i in range(2):
        s.suggest(f"t{i}")
        s.on_trial_complete(f"t{i}", {"accuracy": 0.5, FINAL_KEY: True})
    assert torch.get_num_threads() == before  # restored after each step
    with pytest.raises(SearcherError, match="threads must be a positive integer or None"):
        RLSearcher(space=space, threads=0)
