"""The conformance suite (`prunetune.orchestrator.searchers.testing`) on every built-in
searcher and on a toy searcher a user would write, plus the registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from prunetune.orchestrator import searchers as searchers_pkg
from prunetune.orchestrator.searchers import (
    SEARCHERS,
    PolicySearcher,
    SameRatioSearcher,
    SearcherError,
    make_searcher,
)
from prunetune.orchestrator.searchers.testing import (
    SearcherConformance,
    TuneConformance,
    small_space,
)
from prunetune.search_spaces import PruningSpace, SearchSpace


class _ByName(SearcherConformance):
    name = ""

    def make_searcher(self, space: SearchSpace, *, metric: str = "accuracy",
                      mode: str = "max", seed: int = 0) -> PolicySearcher:
        return make_searcher(self.name, space=space, metric=metric, mode=mode, seed=seed)


class TestRandom(_ByName, TuneConformance):
    name = "random"


class TestSameRatio(_ByName, TuneConformance):
    name = "same_ratio"


class TestBO(_ByName, TuneConformance):
    name = "bo"


class TestRL(_ByName, TuneConformance):
    name = "rl"


class JitterSearcher(PolicySearcher):
    """What a user might write: the box's centre, jittered, and the best point seen so far
    kept as its state."""

    def __init__(self, *, space: SearchSpace, metric: str | None = None,
                 mode: str | None = None, seed: int = 0) -> None:
        super().__init__(space=space, metric=metric, mode=mode, seed=seed)
        self.best: list[float] | None = None

    def _propose(self, trial_id: str) -> np.ndarray:
        lo, hi = (np.asarray(b, dtype=float) for b in self.space.bounds)
        rng = np.random.default_rng([self.seed, self.n_suggested])
        centre = np.asarray(self.best) if self.best else (lo + hi) / 2
        return np.clip(centre + 0.1 * rng.standard_normal(self.space.dim), lo, hi)

    def _observe(self, trial_id: str, x: np.ndarray, values: Any) -> None:
        _, y = self.finished()
        if y.max() == (1.0 if self.mode == "max" else -1.0) * values[self.metric]:
            self.best = x.tolist()

    def _algorithm_state(self) -> dict[str, Any]:
        return {"best": self.best}

    def _load_algorithm_state(self, state: dict[str, Any]) -> None:
        self.best = state["best"]


class TestUserSearcher(SearcherConformance, TuneConformance):
    def make_searcher(self, space: SearchSpace, *, metric: str = "accuracy",
                      mode: str = "max", seed: int = 0) -> PolicySearcher:
        return JitterSearcher(space=space, metric=metric, mode=mode, seed=seed)


def test_every_named_searcher_is_covered() -> None:
    assert sorted(SEARCHERS) == sorted(c.name for c in (TestRandom, TestSameRatio, TestBO,
                                                        TestRL))


def test_every_builtin_searcher_is_exported() -> None:
    for target in SEARCHERS.values():
        cls_name = target.partition(":")[2]
        assert cls_name in searchers_pkg.__all__
        assert issubclass(getattr(searchers_pkg, cls_name), PolicySearcher)
    for extra in ("RollbackSchedule", "GPSettings", "AcqSettings"):
        assert getattr(searchers_pkg, extra).__name__ == extra


@pytest.fixture(scope="module")
def space() -> PruningSpace:
    return small_space()


def test_unknown_searcher_options_and_bad_state(space: PruningSpace, tmp_path: Path) -> None:
    def make(name: str, **options: Any) -> PolicySearcher:
        return make_searcher(name, space=space, metric="accuracy", mode="max", seed=0,
                             options=options)

    with pytest.raises(SearcherError, match="unknown searcher 'nope'"):
        make("nope")
    with pytest.raises(SearcherError, match="cannot import"):
        make("no.such.module:Searcher")
    with pytest.raises(SearcherError, match="not a PolicySearcher subclass"):
        make("numpy:ndarray")
    with pytest.raises(SearcherError, match=r"\['n_inti'\] not options of searcher 'bo'; "
                                            r"its options are .*n_init"):
        make("bo", n_inti=5)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SearcherError, match="cannot read searcher state"):
        make("random").restore(str(tmp_path / "bad.json"))
    make("random").save(str(tmp_path / "r.json"))
    with pytest.raises(SearcherError, match="saved by 'RandomSearcher'"):
        make("same_ratio").restore(str(tmp_path / "r.json"))


def test_same_ratio_baseline_uses_one_value(space: PruningSpace) -> None:
    x = np.asarray(SameRatioSearcher(space=space, metric="accuracy", mode="max").suggest("t")["x"])
    assert np.allclose(x, x[0])
