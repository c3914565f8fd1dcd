"""The RL searcher: budget-meeting episodes, learning, save / restore, transfer, GNN state."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from prunetune.orchestrator.searchers import SearcherError, make_searcher
from prunetune.orchestrator.searchers._rl import RLSearcher, load_searcher_state
from prunetune.search_spaces import Budget, Policy, PruningSpace, count_cost
from prunetune.trainers import build_model

KEEP = 0.5


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return build_model("resnet20", num_classes=10, in_channels=1)


@pytest.fixture(scope="module")
def space(model: torch.nn.Module) -> PruningSpace:
    return PruningSpace(model, torch.zeros(1, 1, 8, 8), schemes=("channel",),
                        budget=Budget(kind="flops", keep=KEEP), seed=0)


def _rl(space: PruningSpace, seed: int = 0, **options: object) -> RLSearcher:
    s = make_searcher("rl", space=space, metric="accuracy", mode="max", seed=seed,
                      options={"warmup": 3, **options})
    assert isinstance(s, RLSearcher)
    return s


def _reward(x: list[float]) -> float:
    """A smooth stand-in for accuracy: prune the early units, keep the late ones."""
    x = np.asarray(x)
    w = np.linspace(1.0, -1.0, len(x))
    return float(0.5 + 0.1 * np.tanh(w @ x))


def _run(s: RLSearcher, n: int, start: int = 0) -> list[float]:
    rewards = []
    for i in range(start, start + n):
        cfg = s.suggest(f"t{i}")
        r = _reward(cfg["x"])
        s.on_trial_complete(f"t{i}", {"accuracy": r, "final": True})
        rewards.append(r)
    return rewards


@pytest.mark.parametrize("gnn", [False, True])
def test_every_episode_meets_the_budget_without_projection(space: PruningSpace,
                                                           model: torch.nn.Module,
                                                           gnn: bool) -> None:
    s = _rl(space, gnn=gnn)
    cfgs = [s.suggest(f"t{i}") for i in range(4)]  # warm-up (random) episodes
    for i, c in enumerate(cfgs):
        s.on_trial_complete(f"t{i}", {"accuracy": _reward(c["x"]), "final": True})
    cfgs += [s.suggest(f"u{i}") for i in range(4)]  # the actor's, with exploration noise
    limit = KEEP * space.analysis.dense_flops
    example = torch.zeros(1, 1, 8, 8)
    for c in cfgs:
        # The action wall alone keeps the raw point within budget: the space's projection
        # has nothing left to do.
        assert space.cost(c["x"], project=False)["flops"] <= limit * (1 + 1e-9)
        assert space.decode(c["x"]).to_json() == c["policy"]
    # and the pruned model, counted on the real module, meets it too
    from prunetune.search_spaces import apply_policy
    pruned = apply_policy(model, Policy.from_json(cfgs[-1]["policy"]), example)
    assert count_cost(pruned, example).effective_flops <= limit * 1.001


@pytest.mark.parametrize("gnn", [False, True])
def test_learns_and_beats_its_warmup(space: PruningSpace, gnn: bool) -> None:
    s = _rl(space, seed=1, gnn=gnn, warmup=10, delta_decay=0.9)
    rewards = _run(s, 50)
    assert s.agent.buffer.size == 50 * space.k
    assert np.mean(rewards[-10:]) > np.mean(rewards[:10])


def test_save_restore_resumes_identically_after_learning(space: PruningSpace,
                                                         tmp_path: Path) -> None:
    s = _rl(space, seed=2, gnn=True)
    _run(s, 6)
    s.suggest("live")
    s.save(str(tmp_path / "rl.json"))
    nxt = s.suggest("next")
    s.on_trial_complete("next", {"accuracy": 0.6, "final": True})
    after = s.suggest("after")

    fresh = _rl(space, seed=99, gnn=True)
    fresh.restore(str(tmp_path / "rl.json"))
    assert fresh.suggest("next") == nxt
    fresh.on_trial_complete("next", {"accuracy": 0.6, "final": True})
    assert fresh.suggest("after") == after  # the same learning step was taken
    assert "live" in fresh._walks


def test_transfer_from_another_model_and_budget(space: PruningSpace, tmp_path: Path) -> None:
    small = build_model("resnet20", num_classes=10, in_channels=1)
    source_space = PruningSpace(small, torch.zeros(1, 1, 8, 8), schemes=("channel",),
                                budget=Budget(kind="flops", keep=0.7), n_groups=5, seed=0)
    src = _rl(source_space, seed=3)
    _run(src, 15)
    src.save(str(tmp_path / "src.json"))

    t = _rl(space, seed=4, warm_start=str(tmp_path / "src.json"))
    assert t.warm_started and t.screen == 4
    assert t.agent.buffer.size == src.agent.buffer.size  # source experience joined
    assert len(t.source_history) == 15
    # Transferred weights: the target's first actor action equals the source's on a state
    for a, b in zip(t.agent.actor.parameters(), src.agent.actor.parameters(), strict=True):
        assert torch.equal(a, b)
    # ... acting at this tighter budget's level: actions scaled by the two budgets' levels
    assert src.level is not None and t.level > src.level
    assert t.agent.action_scale == pytest.approx(t.level / src.level)
    state, graph = np.full(t.agent.state_dim, 0.3), t._graph[0]
    assert t.agent.act(state, graph) == pytest.approx(
        min(1.0, t.agent.action_scale * src.agent.act(state, graph)), rel=1e-6)
    t.save(str(tmp_path / "t.json"))  # and a restored search keeps the scale
    again = _rl(space, seed=4)
    again.restore(str(tmp_path / "t.json"))
    assert again.agent.action_scale == t.agent.action_scale
    _run(t, 3)  # no warm-up: the actor (screened by the assistant) acts at once
    assert t._assistant is not None
    # A folder of saved states (a Tune experiment folder) works too
    (tmp_path / "exp").mkdir()
    src.save(str(tmp_path / "exp" / "searcher-state-2026.pkl"))
    assert load_searcher_state(tmp_path / "exp")["searcher"] == "RLSearcher"


def test_bad_warm_start_and_options(space: PruningSpace, tmp_path: Path) -> None:
    rnd = make_searcher("random", space=space, metric="accuracy", mode="max", seed=0)
    rnd.save(str(tmp_path / "random.json"))
    with pytest.raises(SearcherError, match="warm_start needs the state of an RLSearcher"):
        _rl(space, warm_start=str(tmp_path / "random.json"))
    src = _rl(space, gnn=True)
    src.save(str(tmp_path / "gnn.json"))
    with pytest.raises(SearcherError, match="same gnn setting"):
        _rl(space, warm_start=str(tmp_path / "gnn.json"))
    with pytest.raises(SearcherError, match="no searcher-state"):
        _rl(space, warm_start=str(tmp_path))
    with pytest.raises(SearcherError, match="reward must be one of"):
        _rl(space, reward="speed")


def test_failed_trials_leave_nothing_behind(space: PruningSpace) -> None:
    s = _rl(space)
    s.suggest("a")
    s.suggest("b")
    s.on_trial_complete("a", None, error=True)
    s.on_trial_complete("b", {"accuracy": 0.9, "final": False})
    assert s._walks == {} and s.agent.buffer.size == 0


def test_relative_actions_put_one_half_on_the_fair_share(space: PruningSpace,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    s = _rl(space, warmup=0, action="relative")
    assert s._relative(0.5, 0.2, 0.6) == pytest.approx(0.6)
    assert s._relative(0.0, 0.2, 0.6) == pytest.approx(0.2)  # the wall: the least allowed
    assert s._relative(1.0, 0.2, 0.6) == pytest.approx(1.0)
    # An actor that always says 0.5 ("this step's share") walks the uniform policy that
    # just meets the budget, whatever the budget.
    monkeypatch.setattr(s.agent, "act", lambda state, graph: 0.5)
    x = np.asarray(s._walk(explore=False)["x"])
    assert np.ptp(x) < 0.05  # channel counts round the shares a little
    assert 0.49 < space.cost(x, project=False)["flops_share"] <= KEEP + 1e-9
    absolute = _rl(space, warmup=0, action="absolute")
    # AMC's absolute actions: an actor that prunes too little early is walled late
    monkeypatch.setattr(absolute.agent, "act", lambda state, graph: 0.1)
    x = np.asarray(absolute._walk(explore=False)["x"])
    assert x[0] == pytest.approx(0.1) and x[space.k - 1] > 0.5


def test_buffer_keeps_raw_rewards_and_states_say_their_version(space: PruningSpace,
                                                               tmp_path: Path) -> None:
    s = _rl(space, action="relative")
    rewards = _run(s, 4)
    stored = s.agent.buffer.data["r"][:s.agent.buffer.size, 0]
    assert np.allclose(stored, np.repeat(rewards, space.k))  # every step: the episode's reward
    s.save(str(tmp_path / "rl.json"))
    state = load_searcher_state(tmp_path / "rl.json")
    with pytest.raises(SearcherError, match="action='relative'"):
        _rl(space, action="absolute", warm_start=str(tmp_path / "rl.json"))
    state["schema"] = 0  # a state of another layout version is refused, not guessed at
    (tmp_path / "old.json").write_text(json.dumps(state))
    with pytest.raises(SearcherError, match="schema 0; this prunetune reads schema 1"):
        _rl(space, action="relative", warm_start=str(tmp_path / "old.json"))
    with pytest.raises(SearcherError, match="restore: the searcher state has schema 0"):
        _rl(space, action="relative").restore(str(tmp_path / "old.json"))
    with pytest.raises(SearcherError, match="action must be one of"):
        _rl(space, action="logit")


def test_a_search_with_rl_says_it_is_experimental_and_the_others_do_not() -> None:
    from prunetune.orchestrator.driver import searcher_note

    note = searcher_note("rl")
    assert note is not None and "experimental" in note and "below random search" in note
    assert "bo is the recommended searcher" in note
    assert [searcher_note(n) for n in ("bo", "random", "same_ratio")] == [None, None, None]


def test_a_space_warmup_runs_random_searchs_own_points_and_learns_from_them(
        space: PruningSpace) -> None:
    rl = _rl(space, seed=3, warmup=4, warmup_from="space")
    rnd = make_searcher("random", space=space, metric="accuracy", mode="max", seed=3)
    for i in range(4):  # the same generator, the same draws: the same policies
        a, b = rl.suggest(f"t{i}"), rnd.suggest(f"t{i}")
        assert a["policy"] == b["policy"]
        rl.on_trial_complete(f"t{i}", {"accuracy": _reward(a["x"]), "final": True})
    assert rl.agent.buffer.size == 4 * space.k  # every warm-up episode's steps, learned from
    after = rl.suggest("t4")  # the actor's own episode: no longer random search's
    assert after["policy"] != rnd.suggest("t4")["policy"]
    assert space.cost(after["x"], project=False)["flops"] <= (
        KEEP * space.analysis.dense_flops * (1 + 1e-9))


def test_an_unknown_warmup_is_refused(space: PruningSpace) -> None:
    with pytest.raises(SearcherError, match="warmup_from must be one of actions, space"):
        _rl(space, warmup_from="sobol")
