"""The searcher conformance suite, as pytest mixins any `PolicySearcher` can run.

Like `optuna.testing.pytest_samplers`: mix the classes into a test class of your own and say
how to build your searcher; pytest then runs every check on it::

    from prunetune.orchestrator.searchers.testing import SearcherConformance, TuneConformance

    class TestMySearcher(SearcherConformance, TuneConformance):
        def make_searcher(self, space, *, metric="accuracy", mode="max", seed=0):
            return MySearcher(space=space, metric=metric, mode=mode, seed=seed)

`SearcherConformance` checks the protocol without Ray Tune's loop (bounds, decoding, the
completion protocol, per-trial seeds, save / restore, start policies first and verbatim);
`TuneConformance` runs the searcher in a real three-trial `tune.Tuner` search on a local Ray.
Override the `space` fixture to test on another `SearchSpace`. Needs pytest (prunetune's
`dev` extra).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from prunetune.search_spaces import Budget, Policy, PruningSpace, SearchSpace

from ._base import FINAL_KEY, PolicySearcher, SearcherError, TrialOutcome

__all__ = ["SearcherConformance", "TuneConformance", "small_space"]


def small_space() -> PruningSpace:
    """ResNet-20 on 1 x 8 x 8 inputs, channel pruning at 60% FLOPs in 4 groups: a space that
    builds in about a second."""
    import torch

    from prunetune.trainers import build_model

    model = build_model("resnet20", num_classes=10, in_channels=1)
    return PruningSpace(model, torch.zeros(1, 1, 8, 8), schemes=("channel",),
                        budget=Budget(kind="flops", keep=0.6), n_groups=4, seed=0)


def _final(value: float, **more: Any) -> dict[str, Any]:
    return {"accuracy": value, FINAL_KEY: True, **more}


class SearcherConformance:
    """The protocol checks every `PolicySearcher` passes (see the module docstring)."""

    @pytest.fixture(scope="class")
    @classmethod
    def space(cls) -> SearchSpace:
        return small_space()

    def make_searcher(self, space: SearchSpace, *, metric: str = "accuracy",
                      mode: str = "max", seed: int = 0) -> PolicySearcher:
        """Build the searcher under test; a test class mixing this in must override it."""
        raise NotImplementedError("override make_searcher(space, *, metric, mode, seed)")

    def test_is_a_policy_searcher(self, space: SearchSpace) -> None:
        s = self.make_searcher(space)
        assert isinstance(s, PolicySearcher)
        assert s.metric == "accuracy" and s.mode == "max"

    def test_suggestions_lie_in_bounds_and_decode(self, space: SearchSpace) -> None:
        s = self.make_searcher(space)
        lo, hi = (np.asarray(b) for b in space.bounds)
        for i in range(5):
            cfg = s.suggest(f"t{i}")
            assert cfg is not None
            x = np.asarray(cfg["x"])
            assert x.shape == (space.dim,) and np.all(x >= lo - 1e-9) and np.all(x <= hi + 1e-9)
            assert cfg["dim"] == space.dim
            assert Policy.from_json(cfg["policy"]).to_json() == cfg["policy"]
            if space.budget is not None:
                share = space.cost(x)[f"{space.budget.kind}_share"]
                assert share <= space.budget.keep + 1e-9
        assert s.pending.shape == (5, space.dim)

    def test_completion_protocol(self, space: SearchSpace) -> None:
        s = self.make_searcher(space)
        for t in ("a", "b", "c", "d"):
            s.suggest(t)
        s.on_trial_complete("a", _final(0.9))
        s.on_trial_complete("a", _final(0.1))  # a second completion is ignored
        s.on_trial_complete("b", {"accuracy": 0.99, FINAL_KEY: False})  # stopped early
        s.on_trial_complete("c", None, error=True)
        s.on_trial_complete("d", _final(float("nan")))  # no finite metric: an error
        s.on_trial_complete("never-suggested", _final(1.0))
        status = {o.trial_id: (o.status, o.value) for o in s.observations}
        assert status == {"a": (TrialOutcome.FINAL, 0.9), "b": (TrialOutcome.STOPPED, None),
                          "c": (TrialOutcome.ERROR, None), "d": (TrialOutcome.ERROR, None)}
        X, y = s.finished()
        assert X.shape == (1, space.dim) and y.tolist() == [0.9]
        assert s.pending.shape == (0, space.dim)

    def test_mode_min_is_minimised(self, space: SearchSpace) -> None:
        s = self.make_searcher(space, metric="loss", mode="min")
        for i, loss in enumerate((0.3, 0.1, 0.2)):
            s.suggest(f"t{i}")
            s.on_trial_complete(f"t{i}", {"loss": loss, FINAL_KEY: True})
        _, y = s.finished()
        assert y.tolist() == [-0.3, -0.1, -0.2]  # rewards: higher is better

    def test_trials_get_distinct_seeds_derived_from_the_searcher_seed(
            self, space: SearchSpace) -> None:
        first = self.make_searcher(space, seed=3).suggest("t0")["seed"]
        s = self.make_searcher(space, seed=3)
        mine = [s.suggest(f"t{i}")["seed"] for i in range(4)]
        assert len(set(mine)) == 4 and all(isinstance(v, int) for v in mine)
        assert mine[0] == first  # a function of the searcher's seed and the trial's index
        assert self.make_searcher(space, seed=4).suggest("t0")["seed"] != first

    def test_save_restore_gives_same_next_suggestion(self, space: SearchSpace,
                                                     tmp_path: Path) -> None:
        s = self.make_searcher(space, seed=7)
        for i in range(3):
            s.suggest(f"t{i}")
            s.on_trial_complete(f"t{i}", _final(0.5 + 0.1 * i))
        s.suggest("live")
        s.save(str(tmp_path / "state.json"))
        nxt = s.suggest("t-next")
        fresh = self.make_searcher(space, seed=123)
        fresh.restore(str(tmp_path / "state.json"))
        assert fresh.suggest("t-next") == nxt
        assert [o.trial_id for o in fresh.observations] == ["t0", "t1", "t2"]
        assert fresh.pending.shape == (2, space.dim)

    def test_start_policies_go_first_verbatim(self, space: SearchSpace,
                                              tmp_path: Path) -> None:
        lo, hi = (np.asarray(b, dtype=float) for b in space.bounds)
        # Two policies of the space's model (the free baselines play this part in a search).
        starts = {"low": space.decode(lo), "mid": space.decode(lo + 0.5 * (hi - lo))}
        s = self.make_searcher(space, seed=5)
        s.set_start_policies(starts)
        first = s.suggest("s0")
        assert first["start_from"] == "low" and first["policy"] == starts["low"].to_json()
        x = np.asarray(first["x"])
        assert x.shape == (space.dim,) and np.all(x >= lo - 1e-9) and np.all(x <= hi + 1e-9)
        s.on_trial_complete("s0", _final(0.7))
        assert s.finished()[1].tolist() == [0.7]  # learned from like its own trials
        s.save(str(tmp_path / "state.json"))
        fresh = self.make_searcher(space, seed=5)  # given no start policies: the state has them
        fresh.restore(str(tmp_path / "state.json"))
        for searcher in (s, fresh):
            second = searcher.suggest("s1")
            assert second["start_from"] == "mid"
            assert second["policy"] == starts["mid"].to_json()
            own = searcher.suggest("s2")  # then the searcher's own points
            assert "start_from" not in own
            assert own["policy"] == space.decode(own["x"]).to_json()
        with pytest.raises(SearcherError, match="before the first suggestion"):
            s.set_start_policies(starts)


def _toy_objective() -> Any:
    """A Tune function trainable: a smooth score of the point, reported once as final. Made
    inside a function, so Ray ships it by value and a trial process imports nothing of
    prunetune (seconds saved per trial)."""
    final = FINAL_KEY

    def objective(config: dict[str, Any]) -> None:
        import numpy
        from ray import tune

        x = numpy.asarray(config["x"], dtype=float)
        tune.report({"accuracy": float(1.0 - numpy.mean((x - 0.3) ** 2)), final: True})

    return objective


class TuneConformance:
    """The searcher inside a real Ray Tune search (3 trials, one at a time, local Ray)."""

    @pytest.fixture(scope="class")
    @classmethod
    def ray_runtime(cls) -> Any:
        import ray

        started = not ray.is_initialized()
        if started:
            ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
        yield
        if started:
            ray.shutdown()

    def test_runs_in_a_real_tune_search(self, space: SearchSpace, ray_runtime: Any,
                                        tmp_path: Path) -> None:
        from ray import tune

        searcher = self.make_searcher(space, seed=0)  # type: ignore[attr-defined]
        tuner = tune.Tuner(
            _toy_objective(),
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=3,
                                        max_concurrent_trials=1, metric="accuracy",
                                        mode="max", reuse_actors=True),
            run_config=tune.RunConfig(name="conformance", storage_path=str(tmp_path),
                                      verbose=0))
        grid = tuner.fit()
        assert len(grid) == 3 and not grid.errors
        finals = [o for o in searcher.observations if o.status is TrialOutcome.FINAL]
        assert len(finals) == 3
        reported = sorted(r.metrics["accuracy"] for r in grid)
        assert sorted(o.value for o in finals) == pytest.approx(reported)
        assert all(math.isfinite(v) for v in reported)
