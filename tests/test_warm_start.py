"""`search.warm_start`: a search learns from earlier searches of its MLflow store, whichever
searcher runs it (issue 27, Build point 4): `bo` takes their finished trials as prior
observations, `rl` the agent one of them kept, every searcher skips the start policies they
ran; a resumed search keeps what it took, and a name that is not a search of the store is
refused before any training."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from prunetune.errors import SearchError
from prunetune.orchestrator.config import load_config
from prunetune.orchestrator.driver import run_search
from prunetune.orchestrator.results import find_search
from prunetune.orchestrator.searchers import (
    PriorTrial,
    SearcherError,
    make_searcher,
    searcher_class,
)
from prunetune.orchestrator.warm_start import prior_trials, read_history
from prunetune.search_spaces import Budget, Policy, PruningSpace
from prunetune.search_spaces.baselines import baseline_policies
from prunetune.trainers import build_model

from .search_helpers import children, final_reports, write_config

# A bo search whose initial design (3 points) the 4 trials of the earlier search replace.
BO = {"searcher": "bo", "start_from": [], "max_concurrent": 1,
      "searcher_options": {"n_init": 3}}
RL = {"searcher": "rl", "start_from": [], "max_concurrent": 1,
      "searcher_options": {"warmup": 1}}


def _config(root: Path, name: str, **search: object) -> Path:
    return write_config(root, name, finetune={"epochs": 0}, search=search)


def _first_policy(uri: str, name: str, tmp: Path) -> Policy:
    """The policy the search's first trial ran, from its MLflow child run."""
    first = min(children(uri, name), key=lambda t: t.name)
    path = MlflowClient(uri).download_artifacts(first.run_id, "policy.json", str(tmp / name))
    return Policy.from_json(Path(path).read_text())


def _state(storage: Path) -> dict:
    """The searcher's newest saved state (Tune names the files by when each run started)."""
    return json.loads(max(storage.glob("searcher-state-*"), key=lambda p: p.name).read_text())


def _space(cfg) -> PruningSpace:
    """The config's space, rebuilt as the search built it (the dense model is cached)."""
    from prunetune.orchestrator.spaces import build_space
    from prunetune.trainers import load_data, pretrain_dense

    dense = pretrain_dense(cfg.model, cfg.data, cfg.pretrain, cache_dir=cfg.cache_dir,
                           progress=False)
    return build_space(cfg, dense.model, load_data(cfg.data).example_input(1),
                       cfg.workdir_path())


@pytest.fixture(scope="module")
def store(local_ray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding a finished bo search (4 trials) and a finished rl search (3)."""
    root = tmp_path_factory.mktemp("warm-start")
    run_search(load_config(_config(root, "ws-bo-src", trials=4, **BO)), progress=False)
    run_search(load_config(_config(root, "ws-rl-src", trials=3, **RL)), progress=False)
    return root


@pytest.mark.slow  # real Ray searches: `make test-slow` runs it
def test_bo_warm_start_changes_the_first_suggestions(store: Path, capsys) -> None:
    cfg = load_config(_config(store, "ws-bo", trials=2, warm_start="ws-bo-src", **BO))
    summary = run_search(cfg, progress=True)
    out = capsys.readouterr().out
    assert summary.trials_finished == 2
    assert "[search] warm start from ws-bo-src: 4 earlier trial(s) as prior trials" in out
    state = _state(summary.storage_dir)
    # The prior trials are in the saved state once each, apart from the search's own.
    assert [p["label"] for p in state["prior"]] == [f"ws-bo-src/trial-00{i}" for i in (1, 2, 3, 4)]
    assert len(state["observations"]) == 2
    uri = cfg.tracking_uri()
    # The earlier search ran from scratch with the same seed and options: its first trial is
    # the Sobol point the warm-started one would have run; the warm start's comes from the GP.
    scratch, warm = (_first_policy(uri, n, store) for n in ("ws-bo-src", "ws-bo"))
    assert warm != scratch
    space = _space(cfg)
    history = read_history(cfg, uri, cfg.workdir_path(), searcher_class("bo"))
    prior, _ = prior_trials(history, space)
    rebuilt = [make_searcher("bo", space=space, metric="accuracy", mode="max", seed=cfg.seed,
                             options={"n_init": 3}, prior=p) for p in (None, prior)]
    assert [Policy.from_json(s.suggest("t0")["policy"]) for s in rebuilt] == [scratch, warm]


@pytest.mark.slow  # real Ray searches: `make test-slow` runs it
def test_rl_warm_start_through_the_search_field(store: Path, capsys) -> None:
    # The bo search kept a BOSearcher state: rl takes the first RL state named, not its trials.
    cfg = load_config(_config(store, "ws-rl", trials=2, warm_start=["ws-bo-src", "ws-rl-src"],
                              **RL))
    summary = run_search(cfg, progress=True)
    out = capsys.readouterr().out
    assert "rl transfers the searcher state search ws-rl-src kept" in out
    state = _state(summary.storage_dir)
    assert state["algorithm"]["warm_started"] and state["prior"] == []
    assert len(state["algorithm"]["source_history"]) == 3
    # From scratch (the earlier search, same seed) its first episode was a random warm-up
    # one; the transferred agent's is its actor's.
    uri = cfg.tracking_uri()
    assert _first_policy(uri, "ws-rl", store) != _first_policy(uri, "ws-rl-src", store)


def test_a_missing_search_is_refused_in_seconds(store: Path, tmp_path: Path, capsys) -> None:
    from prunetune.orchestrator.cli import main

    slow = {"searcher": "bo", "trials": 1, "warm_start": ["ws-bo-src", "no-such-search"]}
    path = _config(store, "ws-missing", **slow)
    cache = tmp_path / "cache"  # an empty cache: reaching the pretraining would fill it
    path.write_text(path.read_text() + f"cache_dir: {cache}\n")
    start = time.monotonic()
    assert main(["search", str(path)]) == 2
    assert time.monotonic() - start < 15
    err = capsys.readouterr().err
    # It names the missing search, the store's searches and how to list them all.
    assert "no-such-search" in err and "ws-bo-src" in err and "ws-rl-src" in err, err
    assert "prunetune ui --tracking-uri" in err
    assert not cache.exists() and not (load_config(path).storage_dir() / "ws-missing").exists()
    # A workdir with no store yet holds no search to warm-start from.
    fresh = load_config(_config(tmp_path, "ws-nostore", **slow))
    with pytest.raises(SearchError, match="no MLflow store"):
        run_search(fresh, progress=False)


# -- the searchers themselves (no Ray): what prior trials change ----------------------------
@pytest.fixture(scope="module")
def space_and_prior() -> tuple[PruningSpace, list[PriorTrial]]:
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=1)
    example = torch.zeros(1, 1, 8, 8)
    space = PruningSpace(model, example, schemes=("channel",), n_groups=4,
                         budget=Budget(kind="flops", keep=0.6), fill_budget=True)
    rng = np.random.default_rng(0)
    prior = [PriorTrial(f"old/trial-{i}", space.decode(rng.random(space.dim)),
                        {"accuracy": float(rng.random())}) for i in range(6)]
    baselines = baseline_policies(space, model, example, ["uniform"])
    prior.append(PriorTrial("old/trial-uniform", baselines[0].policy, {"accuracy": 0.9}))
    return space, prior


def _make(name: str, space: PruningSpace, **kw: object) -> object:
    return make_searcher(name, space=space, metric="accuracy", mode="max", seed=2, **kw)


@pytest.mark.parametrize("name", ["random", "same_ratio", "bo", "rl"])
def test_no_searcher_reruns_a_start_policy_an_earlier_search_ran(space_and_prior,
                                                                 name: str) -> None:
    space, prior = space_and_prior
    starts = {"uniform": prior[-1].policy,
              "other": Policy(dict(list(prior[1].policy.units.items())[:3]))}
    s = _make(name, space, start_policies=starts, prior=prior[-1:])
    assert [label for label, _ in s.start_policies] == ["other"]
    assert s.suggest("t0")["start_from"] == "other"


def test_bo_prior_trials_shrink_its_design_and_survive_restore(space_and_prior,
                                                               tmp_path: Path) -> None:
    space, prior = space_and_prior
    s = _make("bo", space, options={"n_init": 10}, prior=prior)
    assert s._design() == 3  # 10 less 7 prior trials
    X, _ = s.finished()
    assert len(X) == 0 and len(s._data()[0]) == 7  # in the GP's data, not the search's own
    cfgs = []
    for i in range(4):
        cfgs.append(s.suggest(f"t{i}"))
        s.on_trial_complete(f"t{i}", {"accuracy": 0.5, "final": True})
    assert s._hypers is not None  # the 4th point came from the GP
    s.save(str(tmp_path / "bo.json"))
    nxt = s.suggest("t4")
    again = _make("bo", space, options={"n_init": 10})
    again.restore(str(tmp_path / "bo.json"))
    assert len(again.prior) == 7 and again.suggest("t4") == nxt
    with pytest.raises(SearcherError, match="once, before the first suggestion"):
        again.set_prior(prior)


def test_rl_without_a_kept_state_learns_from_the_trials(space_and_prior) -> None:
    space, prior = space_and_prior
    s = _make("rl", space, prior=prior)
    assert not s.warm_started
    assert s.agent.buffer.size == len(prior) * space.k  # one episode per prior trial
    assert [h["reward"] for h in s.source_history] == pytest.approx(
        [p.values["accuracy"] for p in prior])


def test_another_depth_keeps_the_shared_units(space_and_prior) -> None:
    """A ResNet-20 trial warm-starts a ResNet-32 space on the units both have; a policy of
    another model altogether is left out, not refused."""
    from prunetune.orchestrator.warm_start import History

    _, prior = space_and_prior
    deeper = PruningSpace(build_model("resnet32", num_classes=10, in_channels=1),
                          torch.zeros(1, 1, 8, 8), schemes=("channel",), n_groups=4,
                          budget=Budget(kind="flops", keep=0.5), fill_budget=True)
    foreign = Policy({"features.0": prior[0].policy.units[next(iter(prior[0].policy.units))]})
    history = History(searches=["old"], trials=[(p.label, p.policy.to_json(), p.values)
                                                for p in prior] + [("x/t", foreign.to_json(),
                                                                    {"accuracy": 0.5})])
    mapped, line = prior_trials(history, deeper)
    assert len(mapped) == len(prior) and "1 left out" in line
    names = {u.name for u in deeper.units}
    assert all(set(p.policy.units) <= names for p in mapped)
    s = _make("bo", deeper, prior=mapped)
    assert len(s.prior) == len(prior)


# -- resume -------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_resumed_search_keeps_its_warm_start(store: Path) -> None:
    path = _config(store, "ws-resume", trials=5, warm_start=["ws-bo-src"], **BO)
    cfg = load_config(path)
    uri = cfg.tracking_uri()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "prunetune.orchestrator.cli", "search", str(path)]
    proc = subprocess.Popen(cmd, env=env, cwd=store, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while sum(t.status == "finished" for t in children(uri, "ws-resume")) < 2:
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "search did not get going"
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    first, _ = proc.communicate(timeout=120)
    assert "[search] warm start from ws-bo-src: 4 earlier trial(s)" in first
    done = subprocess.run(cmd + ["--resume"], env=env, cwd=store, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    state = _state(cfg.storage_dir() / "ws-resume")
    # Neither lost nor counted twice: the 4 prior trials once, the search's 5 trials once.
    assert len(state["prior"]) == 4
    assert sum(o["status"] == "final" for o in state["observations"]) == 5
    finals = final_reports(cfg.storage_dir() / "ws-resume")
    assert sum(finals.values()) == 5 and set(finals.values()) == {1}, finals
    # The state kept in MLflow for later warm starts is the resumed run's final one.
    client = MlflowClient(uri)
    parent = find_search(client, "prunetune", "ws-resume")
    kept = json.loads(Path(client.download_artifacts(
        parent.info.run_id, "searcher/state.json", str(store / "kept"))).read_text())
    assert kept == state
