"""BOSearcher (BOCR): pending points, roll-back, save / restore, multi-objective, schemes.

The conformance suite (test_searchers.py) covers the Ray Tune protocol; these tests drive the
BO steps themselves on a small ResNet-20 space with cheap GP / acquisition budgets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from prunetune.orchestrator.searchers import SearcherError, make_searcher
from prunetune.orchestrator.searchers._bo import BOSearcher, RollbackSchedule
from prunetune.orchestrator.searchers._bo_models import SnapCategorical
from prunetune.search_spaces import Budget, PruningSpace, analyze
from prunetune.trainers import build_model

EXAMPLE = torch.zeros(1, 1, 8, 8)
CHEAP = {"gp": {"cold_maxiter": 30, "maxiter": 15},
         "acq": {"restarts": 2, "raw_samples": 32, "maxiter": 15, "mc_samples": 16}}


@pytest.fixture(scope="module")
def analysis() -> Any:
    return analyze(build_model("resnet20", num_classes=10, in_channels=1).eval(), EXAMPLE)


@pytest.fixture(scope="module")
def space(analysis: Any) -> PruningSpace:
    return PruningSpace(None, budget=Budget("flops", 0.6), n_groups=3, analysis=analysis)


def _bo(space: PruningSpace, seed: int = 0, **options: Any) -> BOSearcher:
    opts = {**CHEAP, "n_init": 4, "rollback": False, **options}
    s = make_searcher("bo", space=space, metric="accuracy", mode="max", seed=seed,
                      options=opts)
    assert isinstance(s, BOSearcher)
    return s


def _reward(x: list[float]) -> float:
    return float(1.0 - np.mean((np.asarray(x) - 0.35) ** 2))


def _run(s: BOSearcher, n: int, start: int = 0, **extra: float) -> None:
    for i in range(start, start + n):
        cfg = s.suggest(f"t{i}")
        s.on_trial_complete(f"t{i}", {"accuracy": _reward(cfg["x"]), "final": True, **extra})


def test_concurrent_suggestions_differ_and_use_pending(space: PruningSpace,
                                                       tmp_path: Path) -> None:
    s = _bo(space)
    _run(s, 5)
    first = s.suggest("live-a")
    s.save(str(tmp_path / "with-live.json"))
    second = s.suggest("live-b")
    assert first["x"] != second["x"] and first["stage"] == second["stage"] == 0
    assert s.pending.shape == (2, space.dim)
    # The same state without the live trial suggests something else: the pending point is
    # what moved the suggestion, not only the per-suggestion seed.
    state = json.loads((tmp_path / "with-live.json").read_text())
    del state["live"]["live-a"]
    (tmp_path / "without-live.json").write_text(json.dumps(state))
    without = _bo(space)
    without.restore(str(tmp_path / "without-live.json"))
    assert without.pending.shape == (0, space.dim)
    assert without.suggest("live-b")["x"] != second["x"]


def test_rollback_keeps_every_observation(space: PruningSpace) -> None:
    s = _bo(space, n_init=3, rollback={"stall": None, "at": [6], "stages": ["full"],
                                       "min_trials": 3, "top_n": 3, "margin": 0.1})
    _run(s, 5)
    live = s.suggest("live")  # stays live across the roll-back
    _run(s, 1, start=5)
    before = {o.trial_id: space.decode(o.x) for o in s.observations}
    assert s.stage == 0 and live["dim"] == space.dim
    cfg = s.suggest("after")  # 6 finished trials: the roll-back happens here
    assert s.stage == 1 and cfg["stage"] == 1 and cfg["dim"] == len(space.units)
    assert s.space.dim == len(space.units) and s.space is not space
    X, y = s.finished()
    assert X.shape == (6, len(space.units)) and len(y) == 6
    for obs in s.observations:  # each re-expressed point decodes to the same policy
        assert s.space.decode(s._point(obs)) == before[obs.trial_id]
    # The live trial was re-expressed too and finishes in the new space.
    assert s.space.decode(s._live["live"]) == space.decode(live["x"])
    s.on_trial_complete("live", {"accuracy": 0.5, "final": True})
    assert s.finished()[0].shape == (7, len(space.units))
    lo, hi = (np.asarray(b) for b in s.space.bounds)
    assert np.all(hi - lo <= 1.0) and np.any(hi - lo < 1.0)  # narrowed to the top-3 range
    assert np.all((np.asarray(cfg["x"]) >= lo - 1e-9) & (np.asarray(cfg["x"]) <= hi + 1e-9))


def test_stall_triggers_bridge_then_full(space: PruningSpace) -> None:
    s = _bo(space, n_init=2, rollback={"stall": 3, "min_trials": 3})
    dims = []
    for i in range(10):
        dims.append(s.suggest(f"t{i}")["dim"])
        s.on_trial_complete(f"t{i}", {"accuracy": 0.5, "final": True})  # never improves
    k, units = len(space.groups), len(space.units)
    assert dims[0] == k and dims[-1] == units
    assert any(k < d < units for d in dims)  # the bridge grouping came in between
    assert s.stage == 2


def test_margin_per_stage_narrows_the_bridge_and_frees_the_full_stage(
        space: PruningSpace) -> None:
    s = _bo(space, n_init=3, rollback={"stall": None, "at": [6, 9], "min_trials": 3, "top_n": 2,
                                       "margin": [0.0, 1.0]})
    _run(s, 6)
    s.suggest("bridge")
    assert s.stage == 1 and len(space.groups) < s.space.dim < len(space.units)
    lo, hi = (np.asarray(b) for b in s.space.bounds)
    assert np.any(hi - lo < 1.0)  # margin 0: the range of the best 2 points
    s.on_trial_complete("bridge", {"accuracy": 0.5, "final": True})
    _run(s, 2, start=6)
    s.suggest("full")
    assert s.stage == 2 and s.space.dim == len(space.units)
    lo, hi = (np.asarray(b) for b in s.space.bounds)
    assert np.all(lo == 0.0) and np.all(hi == 1.0)  # margin 1: the whole box again
    assert s.finished()[0].shape == (9, len(space.units))


def test_rollback_design_draws_sobol_points_in_the_new_box(space: PruningSpace) -> None:
    s = _bo(space, n_init=3, rollback={"stall": None, "at": [6], "stages": ["full"],
                                       "min_trials": 3, "design": 2})
    _run(s, 6)
    engine = torch.quasirandom.SobolEngine(len(space.units), scramble=True, seed=0 + 7 * 1)
    u = engine.draw(2, dtype=torch.float64).numpy()
    cfgs = [s.suggest(f"d{i}") for i in range(3)]
    assert s.stage == 1
    lo, hi = (np.asarray(b) for b in s.space.bounds)
    for i in range(2):  # the first two after the roll-back: the new stage's Sobol points
        assert np.allclose(cfgs[i]["x"], lo + (hi - lo) * u[i])
    assert not np.allclose(cfgs[2]["x"], lo + (hi - lo) * engine.draw(1).numpy()[0])


def test_save_restore_after_rollback_resumes_identically(space: PruningSpace,
                                                         tmp_path: Path) -> None:
    opts = {"rollback": {"stall": None, "at": [5], "stages": ["bridge"], "min_trials": 1}}
    s = _bo(space, seed=3, **opts)
    _run(s, 6)
    assert s.stage == 1
    s.suggest("live")
    s.save(str(tmp_path / "bo.json"))
    nxt = s.suggest("next")
    fresh = _bo(space, seed=99, **opts)
    fresh.restore(str(tmp_path / "bo.json"))
    assert fresh.stage == 1 and fresh.space.dim == s.space.dim
    assert torch.equal(fresh.space.bounds, s.space.bounds)
    assert fresh.suggest("next") == nxt


def test_multi_objective_pareto_front(analysis: Any) -> None:
    space = PruningSpace(None, budget=None, n_groups=3, analysis=analysis)
    s = _bo(space, objectives=["accuracy", "flops_ratio"], n_init=5)
    for i in range(7):
        cfg = s.suggest(f"t{i}")
        x = np.asarray(cfg["x"])
        share = space.cost(x)["flops_share"]
        s.on_trial_complete(f"t{i}", {"accuracy": float(share - 0.1 * x[0]),
                                      "flops_ratio": share, "final": True})
    assert s.suggest("mo")["dim"] == space.dim  # a qLogNEHVI step
    s.suggest("x")
    s.on_trial_complete("x", {"accuracy": 0.9, "final": True})  # no flops_ratio: unusable
    assert s.observations[-1].status == "error"
    front = s.pareto()
    assert front and all(set(p) == {"trial_id", "accuracy", "flops_ratio"} for p in front)
    values = np.array([[p["accuracy"], -p["flops_ratio"]] for p in front])
    for row in values:  # no front member dominates another
        assert not np.any(np.all(values >= row, axis=1) & np.any(values > row, axis=1))


def test_scheme_search_columns_are_snapped(analysis: Any) -> None:
    snap = SnapCategorical([1], [3])
    X = torch.tensor([[0.2, 0.05], [0.2, 0.3], [0.2, 0.34], [0.2, 1.0]], dtype=torch.float64)
    assert snap.transform(X)[:, 1].tolist() == pytest.approx([1 / 6, 1 / 6, 0.5, 5 / 6])
    space = PruningSpace(None, schemes=("channel", "unstructured"), budget=Budget("flops", 0.6),
                         n_groups=2, scheme_search=True, analysis=analysis)
    s = _bo(space, n_init=3)
    assert space.categorical_dims() == {space.k + g: len(o)
                                        for g, o in enumerate(space.describe()["options"])}
    _run(s, 4)
    assert len(s.observations) == 4 and s.n_suggested == 4


@pytest.mark.parametrize("options, match", [
    ({"rollback": {"stages": ["coarse"]}}, "rollback.stages"),
    ({"rollback": {"stall": None, "at": []}}, "rollback needs a trigger"),
    ({"rollback": {"nope": 1}}, r"unknown rollback option\(s\) \['nope'\]"),
    ({"rollback": {"margin": [0.1]}}, r"one number or one per stage \(2: \['bridge', 'full'\]\)"),
    ({"rollback": {"margin": 1.5}}, r"rollback.margin must be in \[0, 1\]"),
    ({"rollback": {"design": -1}}, r"rollback.design must be an integer >= 0"),
    ({"objectives": ["latency_ms", "accuracy"]}, "objectives must start with"),
    ({"objectives": ["accuracy", "mystery"]}, "no default direction"),
    ({"gp": {"iters": 3}}, r"unknown gp option\(s\)"),
    ({"acq": {"restarts": 8, "raw_samples": 4}}, r"acq: raw_samples must be a number >= 8"),
    ({"n_init": 0}, "n_init must be >= 1"),
])
def test_bad_options_name_the_field(space: PruningSpace, options: dict, match: str) -> None:
    with pytest.raises(SearcherError, match=match):
        make_searcher("bo", space=space, metric="accuracy", mode="max", seed=0,
                      options=options)


def test_schedule_object_and_restore_guard(space: PruningSpace, tmp_path: Path) -> None:
    s = _bo(space, rollback=RollbackSchedule(stall=5))
    s.save(str(tmp_path / "s.json"))
    other = _bo(space, objectives=["accuracy", "flops_ratio"])
    with pytest.raises(SearcherError, match="saved with objectives"):
        other.restore(str(tmp_path / "s.json"))
