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


def _epochs_objective(epochs: int = 4) -> Any:
    """prunetune's trial function's reporting: one result per epoch, `final` only on the last
    (a plain Tune objective that a scheduler or stop rule may end before its last report)."""
    final = FINAL_KEY

    def objective(config: dict[str, Any]) -> None:
        import numpy
        from ray import tune as t

        x = numpy.asarray(config["x"], dtype=float)
        for epoch in range(1, epochs + 1):
            t.report({"loss": float(numpy.mean((x - 0.7) ** 2)) / epoch,
                      final: epoch == epochs})

    return objective


def _fit_without_param_space(searcher: Any, tmp_path: Path, *, asha: bool) -> Any:
    """A plain Tune run with no param_space (so Tune tells the searcher nothing): ASHA with
    max_t=2, or a RunConfig(stop=) rule at 2 iterations, ends 4-epoch trials at epoch 2."""
    from ray.tune.schedulers import ASHAScheduler

    scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=2, grace_period=2,
                               metric="loss", mode="min") if asha else None)
    tuner = tune.Tuner(
        _epochs_objective(),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=3,
                                    max_concurrent_trials=1),
        run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0,
                                  stop=None if asha else {"training_iteration": 2}))
    grid = tuner.fit()
    assert not grid.errors and len(grid) == 3
    assert all(r.metrics["training_iteration"] == 2 and not r.metrics[FINAL_KEY] for r in grid)
    return grid


@pytest.mark.parametrize("asha", [True, False], ids=["asha-max_t", "stop-rule"])
def test_trials_ended_by_max_t_or_a_stop_rule_without_param_space(
        space: PruningSpace, local_ray: Any, tmp_path: Path, asha: bool,
        caplog: pytest.LogCaptureFixture) -> None:
    """Issue 26, point 12. Tune passes neither the scheduler nor (without a param_space) the
    stop rules to a searcher. By default the trials ended before their `final` report are
    discarded, and one warning says the searcher learns nothing and what to do; with
    `learn_from_stopped=True` every ended trial's last result is learned from, as Ray's own
    searchers learn from `on_trial_complete`'s result."""
    quiet = RandomSearcher(space=space, metric="loss", mode="min", seed=0)
    with caplog.at_level(logging.WARNING):
        _fit_without_param_space(quiet, tmp_path / "default", asha=asha)
    assert [o.status for o in quiet.observations] == [TrialOutcome.STOPPED] * 3
    warned = [r.getMessage() for r in caplog.records if "none learned from" in r.getMessage()]
    assert len(warned) == 1 and "learn_from_stopped=True" in warned[0], warned

    learner = BOSearcher(space=space, metric="loss", mode="min", seed=0, n_init=2,
                         learn_from_stopped=True)
    grid = _fit_without_param_space(learner, tmp_path / "learn", asha=asha)
    learned = [o for o in learner.observations if o.status is TrialOutcome.FINAL]
    assert len(learned) == 3
    assert sorted(o.value for o in learned) == pytest.approx(
        sorted(r.metrics["loss"] for r in grid))  # the last result of each ended trial
    assert learner.finished()[1].shape == (3,)


def test_a_stop_rule_counts_in_a_real_run_once_tune_passes_it(
        space: PruningSpace, local_ray: Any, tmp_path: Path) -> None:
    """With any non-empty param_space Tune hands the searcher its stop rules: trials the rule
    ended are learned from without any option."""
    searcher = RandomSearcher(space=space, seed=0)
    tuner = tune.Tuner(
        _epochs_objective(), param_space={"tag": "prune"},
        tune_config=tune.TuneConfig(search_alg=searcher, metric="loss", mode="min",
                                    num_samples=2, max_concurrent_trials=1),
        run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0,
                                  stop={"training_iteration": 2}))
    assert not tuner.fit().errors
    assert [o.status for o in searcher.observations] == [TrialOutcome.FINAL] * 2
