"""Conformance suite every PolicySearcher must pass, plus the registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from prunetune.orchestrator.searchers import SEARCHERS, PolicySearcher, SearcherError, make_searcher
from prunetune.search_spaces import Budget, Policy, PruningSpace
from prunetune.trainers import build_model


@pytest.fixture(scope="module")
def space() -> PruningSpace:
    model = build_model("resnet20", num_classes=10, in_channels=1)
    return PruningSpace(model, torch.zeros(1, 1, 8, 8), schemes=("channel",),
                        budget=Budget(kind="flops", keep=0.6), n_groups=4, seed=0)


def _make(name: str, space: PruningSpace, seed: int = 0) -> PolicySearcher:
    return make_searcher(name, space=space, metric="accuracy", mode="max", seed=seed)


def _final(acc: float) -> dict:
    return {"accuracy": acc, "final": True}


@pytest.mark.parametrize("name", sorted(SEARCHERS))
class TestConformance:
    def test_suggestions_lie_in_bounds_and_decode(self, name: str, space: PruningSpace) -> None:
        s = _make(name, space)
        lo, hi = (np.asarray(b) for b in space.bounds)
        for i in range(5):
            cfg = s.suggest(f"t{i}")
            assert cfg is not None
            x = np.asarray(cfg["x"])
            assert x.shape == (space.dim,) and np.all(x >= lo - 1e-9) and np.all(x <= hi + 1e-9)
            assert Policy.from_json(cfg["policy"]).to_json() == cfg["policy"]
        assert s.pending.shape == (5, space.dim)

    def test_completion_protocol(self, name: str, space: PruningSpace) -> None:
        s = _make(name, space)
        for t in ("a", "b", "c", "d"):
            s.suggest(t)
        s.on_trial_complete("a", _final(0.9))
        s.on_trial_complete("a", _final(0.1))  # a second completion is ignored
        s.on_trial_complete("b", {"accuracy": 0.99, "final": False})  # stopped early
        s.on_trial_complete("c", None, error=True)
        s.on_trial_complete("d", {"accuracy": float("nan"), "final": True})
        s.on_trial_complete("never-suggested", _final(1.0))
        status = {o.trial_id: (o.status, o.value) for o in s.observations}
        assert status == {"a": ("final", 0.9), "b": ("stopped", None), "c": ("error", None),
                          "d": ("error", None)}
        X, y = s.finished()
        assert X.shape == (1, space.dim) and y.tolist() == [0.9]
        assert s.pending.shape == (0, space.dim)

    def test_save_restore_gives_same_next_suggestion(self, name: str, space: PruningSpace,
                                                     tmp_path: Path) -> None:
        s = _make(name, space, seed=7)
        for i in range(3):
            s.suggest(f"t{i}")
            s.on_trial_complete(f"t{i}", _final(0.5 + 0.1 * i))
        s.suggest("live")
        s.save(str(tmp_path / "state.json"))
        nxt = s.suggest("t-next")
        fresh = _make(name, space, seed=123)
        fresh.restore(str(tmp_path / "state.json"))
        assert fresh.suggest("t-next") == nxt
        assert [o.trial_id for o in fresh.observations] == ["t0", "t1", "t2"]
        assert fresh.pending.shape == (2, space.dim)


def test_unknown_searcher_and_bad_state(space: PruningSpace, tmp_path: Path) -> None:
    with pytest.raises(SearcherError, match="unknown searcher 'nope'"):
        _make("nope", space)
    with pytest.raises(SearcherError, match="cannot import"):
        _make("no.such.module:Searcher", space)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SearcherError, match="cannot read searcher state"):
        _make("random", space).restore(str(tmp_path / "bad.json"))
    _make("random", space).save(str(tmp_path / "r.json"))
    with pytest.raises(SearcherError, match="saved by 'RandomSearcher'"):
        _make("uniform", space).restore(str(tmp_path / "r.json"))


def test_uniform_baseline_uses_one_value(space: PruningSpace) -> None:
    x = np.asarray(_make("uniform", space).suggest("t")["x"])
    assert np.allclose(x, x[0])
