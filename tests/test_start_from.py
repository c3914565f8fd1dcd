"""`search.start_from`: a search's first trials are the free baseline policies, verbatim, and
every searcher learns from them (issue 25, Build item 2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from prunetune.orchestrator.config import load_config
from prunetune.orchestrator.driver import run_search
from prunetune.orchestrator.searchers import SearcherError, make_searcher
from prunetune.search_spaces import Budget, Policy, PruningSpace, UnitPolicy
from prunetune.search_spaces.baselines import baseline_policies
from prunetune.trainers import build_model

from .search_helpers import children, write_config

SEARCHERS = ("random", "same_ratio", "bo", "rl")


@pytest.fixture(scope="module")
def space_and_starts() -> tuple[PruningSpace, dict[str, Policy]]:
    """ResNet-20 on 1 x 8 x 8 inputs at 60% FLOPs in 4 groups, and its uniform and
    Torch-Pruning magnitude baselines."""
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=1)
    example = torch.zeros(1, 1, 8, 8)
    space = PruningSpace(model, example, schemes=("channel",), n_groups=4,
                         budget=Budget(kind="flops", keep=0.6), fill_budget=True)
    found = baseline_policies(space, model, example, ["uniform", "tp-magnitude"])
    return space, {b.method: b.policy for b in found}


def _searcher(name: str, space: PruningSpace, starts: dict[str, Policy] | None,
              **options: object) -> object:
    return make_searcher(name, space=space, metric="accuracy", mode="max", seed=3,
                         options=options or None, start_policies=starts)


def _final(value: float) -> dict[str, object]:
    return {"accuracy": value, "final": True}


@pytest.mark.parametrize("name", SEARCHERS)
def test_first_suggestions_are_the_start_policies_verbatim(space_and_starts, name: str) -> None:
    space, starts = space_and_starts
    s = _searcher(name, space, starts)
    cfgs = [s.suggest(f"t{i}") for i in range(4)]
    assert [c.get("start_from") for c in cfgs] == ["uniform", "tp-magnitude", None, None]
    for c in cfgs[:2]:
        # The baseline's own policy (its importance, its ratios), not a decode of a point.
        assert c["policy"] == starts[c["start_from"]].to_json()
        assert c["policy"] != space.decode(c["x"]).to_json()
        near = space.nearest_point(starts[c["start_from"]])
        # RL records the episode that walks to the point: equal where no action wall binds.
        assert np.abs(np.asarray(c["x"]) - near).max() < (0.1 if name == "rl" else 1e-12)
    for c in cfgs[2:]:  # then the searcher's own points
        assert c["policy"] == space.decode(c["x"]).to_json()
    # Seeds stay distinct and per suggestion index, start policies included.
    assert len({c["seed"] for c in cfgs}) == 4


@pytest.mark.parametrize("name", SEARCHERS)
def test_restore_mid_way_does_not_repeat_start_policies(space_and_starts, name: str,
                                                        tmp_path: Path) -> None:
    space, starts = space_and_starts
    s = _searcher(name, space, starts)
    s.suggest("t0")
    s.on_trial_complete("t0", _final(0.6))
    s.save(str(tmp_path / "one.json"))
    rest = [s.suggest(f"t{i}") for i in (1, 2)]
    # A resumed search (Tune restores the pickled searcher, then its state): the second
    # baseline next, then the searcher's own points, as the uninterrupted searcher had them.
    for given in (starts, None):
        fresh = _searcher(name, space, given)
        fresh.restore(str(tmp_path / "one.json"))
        again = [fresh.suggest(f"t{i}") for i in (1, 2)]
        assert again[0]["start_from"] == "tp-magnitude" and "start_from" not in again[1]
        assert again == rest
    s.on_trial_complete("t1", _final(0.7))
    s.save(str(tmp_path / "two.json"))
    fresh = _searcher(name, space, starts)
    fresh.restore(str(tmp_path / "two.json"))
    assert fresh.starts_given == 2
    assert "start_from" not in fresh.suggest("t3")


def test_bo_counts_start_policies_in_its_initial_design(space_and_starts) -> None:
    space, starts = space_and_starts
    plain = _searcher("bo", space, None, n_init=4)
    sobol = [plain.suggest(f"p{i}")["x"] for i in range(2)]
    s = _searcher("bo", space, starts, n_init=4)
    cfgs = [s.suggest(f"t{i}") for i in range(4)]
    # 4 points of initial design: the 2 baselines, then the Sobol sequence from its start.
    assert [c["x"] for c in cfgs[2:]] == sobol
    for i, value in enumerate((0.5, 0.9, 0.6, 0.7)):
        s.on_trial_complete(f"t{i}", _final(value))
    X, y = s.finished()
    assert len(X) == 4 and y.max() == 0.9  # the baselines' results are in the GP's data
    assert np.allclose(X[1], cfgs[1]["x"])
    s.suggest("t4")
    assert s._hypers is not None  # the fifth point came from the fitted GP, not Sobol


def test_rl_learns_start_policies_as_transitions(space_and_starts) -> None:
    space, starts = space_and_starts
    s = _searcher("rl", space, starts, warmup=3)
    first = s.suggest("t0")
    buffered = s.agent.buffer.size
    s.on_trial_complete("t0", _final(0.8))
    # One transition per step of the episode that walks to the baseline's point, carrying
    # its reward, and one episode of the warm-up's history.
    assert s.agent.buffer.size == buffered + space.k
    assert s.agent.buffer.data["r"][buffered:buffered + space.k].ravel().tolist() == pytest.approx(
        [0.8] * space.k)
    assert len(s.history) == 1 and s.history[0]["reward"] == pytest.approx(0.8)
    lo, hi = (np.asarray(b)[:space.k] for b in space.bounds)
    actions = s.agent.buffer.data["a"][buffered:buffered + space.k].ravel()
    assert np.allclose(lo + actions * (hi - lo), first["x"][:space.k], atol=1e-6)


def test_relative_rl_walks_to_the_start_policy(space_and_starts) -> None:
    space, starts = space_and_starts
    s = _searcher("rl", space, starts, action="relative")
    cfg = s.suggest("t0")
    near = space.nearest_point(starts["uniform"])
    assert np.abs(np.asarray(cfg["x"]) - near).max() < 0.1


def test_nearest_point_approximates_any_policy(space_and_starts) -> None:
    space, starts = space_and_starts
    decoded = space.decode(np.full(space.dim, 0.4))
    assert np.allclose(space.nearest_point(decoded), space.encode(decoded))  # exact
    for policy in starts.values():
        near = space.nearest_point(policy)
        lo, hi = (np.asarray(b) for b in space.bounds)
        assert near.shape == (space.dim,) and np.all(near >= lo) and np.all(near <= hi)
        cost = space.cost(near)["flops_share"]
        assert 0.5 < cost <= 0.6 + 1e-9  # close to the baseline's, on the budget
    with pytest.raises(Exception, match="does not prune"):
        space.nearest_point(Policy({"no.such.layer": UnitPolicy("channel", 0.5)}))


def test_start_policies_refused_once_suggesting_or_of_another_model(space_and_starts) -> None:
    space, starts = space_and_starts
    s = _searcher("random", space, None)
    with pytest.raises(SearcherError, match="does not fit the space"):
        s.set_start_policies([Policy({"no.such.layer": UnitPolicy("channel", 0.5)})])
    s.set_start_policies(list(starts.values()))  # a sequence: labelled start-0, start-1
    assert [label for label, _ in s.start_policies] == ["start-0", "start-1"]
    assert s.suggest("t0")["start_from"] == "start-0"
    with pytest.raises(SearcherError, match="before the first suggestion"):
        s.set_start_policies(starts)


def _space_and_baselines(cfg, methods: list[str]) -> tuple[PruningSpace, dict[str, str]]:
    """The config's space and baseline policies as JSON, recomputed as a user would: the
    (cached) dense model, the config's space."""
    from prunetune.orchestrator.spaces import build_space
    from prunetune.trainers import load_data, pretrain_dense

    dense = pretrain_dense(cfg.model, cfg.data, cfg.pretrain, cache_dir=cfg.cache_dir,
                           progress=False)
    example = load_data(cfg.data).example_input(1)
    space = build_space(cfg, dense.model, example, cfg.workdir_path())
    return space, {b.method: b.policy.to_json()
                   for b in baseline_policies(space, dense.model, example, methods)}


def _policies(uri: str, name: str, tmp_path: Path) -> list[tuple[str, str | None, str]]:
    """(trial name, start_from param, policy.json) of the search's trials, by name."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    out = []
    for t in sorted(children(uri, name), key=lambda t: t.name):
        path = client.download_artifacts(t.run_id, "policy.json", str(tmp_path / t.run_id))
        out.append((t.name, t.params.get("start_from"), Path(path).read_text()))
    return out


def test_a_search_starts_from_the_baselines(local_ray, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    cfg = load_config(write_config(tmp_path, "sf-on", finetune={"epochs": 0},
                                   search={"start_from": ["uniform", "tp-magnitude"],
                                           "trials": 4, "max_concurrent": 1}))
    summary = run_search(cfg, progress=True)
    out = capsys.readouterr().out
    assert summary.trials_finished == 4
    for method in ("uniform", "tp-magnitude"):
        assert f"[search] start_from {method}: flops x0." in out
    _, expected = _space_and_baselines(cfg, ["uniform", "tp-magnitude"])
    trials = _policies(cfg.tracking_uri(), "sf-on", tmp_path)
    assert [(n, s) for n, s, _ in trials] == [("trial-001", "uniform"),
                                              ("trial-002", "tp-magnitude"),
                                              ("trial-003", None), ("trial-004", None)]
    for _, method, text in trials[:2]:
        assert Policy.from_json(text) == Policy.from_json(expected[method])


def test_an_empty_start_from_runs_the_searchers_own_points(local_ray, tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, "sf-off", finetune={"epochs": 0},
                                   search={"start_from": [], "trials": 2,
                                           "max_concurrent": 1}))
    run_search(cfg, progress=False)
    trials = _policies(cfg.tracking_uri(), "sf-off", tmp_path)
    assert [s for _, s, _ in trials] == [None, None]
    space, _ = _space_and_baselines(cfg, [])
    own = make_searcher(cfg.search.searcher, space=space, metric="accuracy", mode="max",
                        seed=cfg.seed)
    assert Policy.from_json(trials[0][2]) == Policy.from_json(own.suggest("t0")["policy"])


def test_a_space_without_budget_skips_start_from_with_one_line(tmp_path: Path, capsys) -> None:
    from prunetune.orchestrator.stages import SearchRun, start_policies

    cfg = load_config(write_config(tmp_path, "sf-nb", space={"budget": None},
                                   search={"start_from": ["uniform", "tp-taylor"]}))
    space = PruningSpace(build_model("resnet20", num_classes=10, in_channels=1),
                         torch.zeros(1, 1, 8, 8), n_groups=4)
    run = SearchRun(cfg, "sf-nb", tmp_path, tmp_path, dense=None, space=space, options={},
                    progress=True)
    assert start_policies(run) == {}
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "space.budget is not set" in out[0], out
