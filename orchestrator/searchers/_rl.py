"""RL searcher: AMC-style DDPG that prunes unit by unit, with transfer and a graph-aware state.

One episode is one policy is one Tune trial. The agent walks the space's ratio dimensions in
order (one per unit in a full space, one per group in a clustered one). At step t the state
is AMC's layer embedding, normalised so it means the same on any model (which is what lets an
agent move from ResNet-20 to ResNet-56): the space's step features (`SearchSpace.
step_features`, with FLOPs and params relative to the largest step), then FLOPs reduced so far,
FLOPs left after this step (shares of dense), the previous action, the budget's keep and the
action wall. The action in [0, 1] never goes below AMC's action wall
(`SearchSpace.action_floor`: the least pruning that still lets the budget be met if every
later step prunes all it may), so every episode meets the budget by construction.
`action="absolute"` (AMC, the default) takes the action as the step's position in the space's
bounds, clipped at the wall. `action="relative"` spans [wall, upper bound] with a power curve
that puts 0.5 on the step's fair share of the pruning still owed (`SearchSpace.fair_share`),
so an action means the same at any budget; it is not the default because it transferred worse
(benchmarks/README.md, "RL").
Reward: the trial's metric ("metric", AMC's constrained mode) or `-error * log(FLOPs)`
("error_log_flops"), given to every step of the episode. The buffer keeps it raw; the critic
learns it standardised by the search's reward mean and spread (source transitions by the
source search's), so old and new transitions stay on one scale (AMC subtracts a moving
baseline when storing, see `_reward_norm` for why not here). Because every step already
carries the whole episode's reward, the critic's target is that reward (`discount=0`, the
default); AMC's `discount=1` bootstraps a sum over the remaining steps through the target
networks, which collapsed onto a chance-level policy on the ResNet-56 benchmark
(benchmarks/README.md). Exploration noise never drops below `min_delta`, so an actor that
collapsed onto a bad policy still tries its neighbours. An episode's actions never depend on
its reward, so several episodes can be in flight for concurrent trials: each is walked in full
when suggested and learned from when it finishes. A start policy (`start_policies`, e.g. the
free baselines) is an episode too: the actions that walk to its point (`_action_to`), stored in
the replay buffer when its trial ends and counted in the warm-up, in place of random episodes.
The warm-up's own episodes (`warmup`, 20) are AMC's uniform random actions held above the wall
(`warmup_from="actions"`, the default), or random search's points, uniform in the space and
decoded onto the budget, walked to as a start policy is (`warmup_from="space"`): the former
prune the later layers hardest, whatever the earlier ones left.

Transfer ("Boosting the convergence of RL-based auto-pruning using historical data"):
`warm_start` names the saved state of an earlier RL search (same or another model, another
budget). Its actor and critic are loaded (transfer learning), its replay buffer joins the new
one as source experience that is overwritten first (augmented transfer), the critic is
pre-trained on it, and an assistant reward model (a gradient-boosting regressor from an
episode's action profile to its standardised reward, trained on the history of both searches)
screens `screen` candidate episodes per suggestion and keeps the most promising one
(assistant learning). Warm-up random episodes are skipped and exploration starts lower. From
a search at another budget, the actor's (absolute) actions are scaled by the ratio of the
two budgets' uniform levels (`level`: the ratio every step could take and just meet the
budget), so it starts at the new budget with the source's per-layer profile. Prior trials of
searches that kept no RL state (`set_prior`, `search.warm_start`) join the replay buffer as
source experience: the episodes that walk to their points, with their results.

Graph-aware state (AutoSculpt): `gnn=True` adds per-step embeddings of a graph network over
the step dependency graph (`_rl_agent.GraphEncoder`), trained through the critic and actor.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from prunetune.kernels.latency import torch_threads
from prunetune.search_spaces import STEP_FEATURES, SearchSpace

from ._base import (
    PolicySearcher,
    SearcherError,
    StartPolicies,
    TrialOutcome,
    check_state_schema,
)
from ._rl_agent import DDPGAgent, GraphEncoder

if TYPE_CHECKING:
    from sklearn.ensemble import GradientBoostingRegressor

__all__ = ["RLSearcher", "load_searcher_state"]

_STATIC = len(STEP_FEATURES)  # static features per step (the space's step features)
_STATE_DIM = _STATIC + 5  # + reduced so far, left after, previous action, keep, wall
_FLOPS, _PARAMS = STEP_FEATURES.index("flops_share"), STEP_FEATURES.index("params_share")
_PROFILE_BINS = 8  # the assistant's view of an episode: mean action per depth bin, + FLOPs
_REWARDS = ("metric", "error_log_flops")
_ACTIONS = ("relative", "absolute")
# Warm-up episodes: "actions", AMC's uniform random actions, each held above the action wall
# (the later layers of an episode take what the earlier ones left: its points are not random
# search's); "space", random search's own points (uniform in the space's bounds, decoded onto
# the budget as the random searcher's are), walked to as a start policy is.
_WARMUPS = ("actions", "space")


def load_searcher_state(path: str | Path) -> dict[str, Any]:
    """A saved searcher state: a state file, or a Tune experiment folder (its newest
    `searcher-state-*` file)."""
    p = Path(path).expanduser()
    if p.is_dir():
        # Named by when each run started, so the last by name is the newest (a resumed
        # run's end rewrites the older files too: their mtimes say nothing).
        found = sorted(p.glob("searcher-state-*"), key=lambda f: f.name)
        if not found:
            raise SearcherError(f"warm_start folder {p} holds no searcher-state-* file; give "
                                "a searcher state file, a search's Tune folder or its name")
        p = found[-1]
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SearcherError(f"cannot read searcher state {p} for warm_start: {err}") from err


class RLSearcher(PolicySearcher):
    """AMC's DDPG agent as a Ray Tune searcher (see the module docstring)."""

    # Episodes decoded onto the budget: the action wall keeps each one above it, the fill
    # keeps it from pruning more than it must (measured: benchmarks/README, search
    # efficiency).
    default_fill_budget = True
    experimental = ("its defaults scored below random search on every model measured so far "
                    "(ResNet-56, MobileNetV2, VGG-16; benchmarks/README.md, search efficiency); "
                    "bo is the recommended searcher")

    def __init__(self, *, space: SearchSpace, metric: str | None = None,
                 mode: str | None = None,
                 seed: int = 0, reward: str = "metric", warmup: int = 20,
                 init_delta: float = 0.5, delta_decay: float = 0.95,
                 min_delta: float = 0.05, hidden: int = 64,
                 gnn: bool = False, discount: float = 0.0,
                 buffer_size: int = 4000, batch_size: int = 64,
                 updates_per_episode: int | None = None, warm_start: str | None = None,
                 transfer_delta: float = 0.2, critic_pretrain: int = 200,
                 screen: int | str = "auto", action: str = "absolute",
                 warmup_from: str = "actions",
                 lr_actor: float = 1e-3, lr_critic: float = 2e-3,
                 threads: int | None = 1,
                 learn_from_stopped: bool = False,
                 start_policies: StartPolicies | None = None) -> None:
        super().__init__(space=space, metric=metric, mode=mode, seed=seed,
                         learn_from_stopped=learn_from_stopped, start_policies=start_policies)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or threads < 1):
            raise SearcherError(f"threads must be a positive integer or None, got {threads!r}")
        # The agent's networks are small: one thread is fastest, and on a loaded 2-core
        # machine torch's default (all cores) made one update 25x slower (13.9 s vs 0.56 s).
        self.threads = threads
        if reward not in _REWARDS:
            raise SearcherError(f"reward must be one of {', '.join(_REWARDS)}, got {reward!r}")
        if warmup < 0 or not 0.0 < init_delta <= 1.0 or not 0.0 < delta_decay <= 1.0:
            raise SearcherError(f"need warmup >= 0, init_delta in (0, 1], delta_decay in (0, 1]; "
                                f"got {warmup}, {init_delta}, {delta_decay}")
        if not (screen == "auto" or (isinstance(screen, int) and screen >= 1)):
            raise SearcherError(f"screen must be 'auto' or an integer >= 1, got {screen!r}")
        if action not in _ACTIONS:
            raise SearcherError(f"action must be one of {', '.join(_ACTIONS)}, got {action!r}")
        if warmup_from not in _WARMUPS:
            raise SearcherError(f"warmup_from must be one of {', '.join(_WARMUPS)}, got "
                                f"{warmup_from!r}")
        self.reward, self.warmup, self.action = reward, warmup, action
        self.warmup_from = warmup_from
        if not 0.0 <= min_delta <= init_delta:
            raise SearcherError(f"min_delta must be in [0, init_delta={init_delta}], got "
                                f"{min_delta}")
        self.init_delta, self.delta_decay, self.min_delta = init_delta, delta_decay, min_delta
        self.transfer_delta = transfer_delta
        self.updates_per_episode = updates_per_episode or space.k
        steps = space.step_features()
        static = steps.values.copy()
        # FLOPs after each step (shares of dense); then FLOPs and params relative to the
        # largest step, so a feature means the same on a 20- and a 56-layer model.
        self._left = np.concatenate([np.cumsum(static[::-1, _FLOPS])[::-1][1:], [0.0]])
        shares = [_FLOPS, _PARAMS]
        static[:, shares] /= np.maximum(static[:, shares].max(0), 1e-12)
        self._features = static
        self._graph = GraphEncoder.propagate(static, list(steps.edges))
        self.agent = DDPGAgent(state_dim=_STATE_DIM, graph_dim=self._graph.shape[1], seed=seed,
                               hidden=hidden, gnn=gnn, discount=discount,
                               lr_actor=lr_actor, lr_critic=lr_critic,
                               batch_size=batch_size, buffer_size=buffer_size)
        self.level = self._budget_level()
        self._rng = np.random.default_rng(seed)
        self._walks: dict[str, dict[str, list]] = {}  # live episodes by trial id
        self.history: list[dict[str, Any]] = []  # finished: action profile and raw reward
        self.source_history: list[dict[str, Any]] = []
        self.warm_started = False
        if warm_start is not None:
            with torch_threads(self.threads):
                self._warm_start(load_searcher_state(warm_start), critic_pretrain)
        self.screen = (4 if self.warm_started else 1) if screen == "auto" else screen
        self._assistant: GradientBoostingRegressor | None = None
        self._fit_assistant()

    # -- the episode walk ------------------------------------------------------------------
    def _delta(self) -> float:
        """Exploration noise: AMC's decaying sigma, floored at `min_delta` so an agent whose
        actor collapsed onto a bad policy still tries its neighbours."""
        # AMC's episode counter (the episodes proposed so far) drives exploration.
        if self.warm_started:
            delta = self.transfer_delta * self.delta_decay ** self.n_suggested
        else:
            delta = self.init_delta * self.delta_decay ** max(0, self.n_suggested - self.warmup)
        return max(delta, self.min_delta)

    def _state(self, t: int, x: np.ndarray, prev: float, wall: float) -> np.ndarray:
        reduced = 1.0 - self.space.cost(x, project=False)["flops_share"]
        keep = self.space.budget.keep if self.space.budget is not None else 1.0
        return np.concatenate([self._features[t],
                               [reduced, self._left[t], prev, keep, wall]])

    def _walk(self, explore: bool, target: np.ndarray | None = None) -> dict[str, list]:
        """One episode: states, graph rows, actions (walled, in [0, 1]) and the point. With
        `target` (a start policy's point), the actions are those that walk to it."""
        sp = self.space
        lo, hi = (np.asarray(b, dtype=float)[:sp.k] for b in sp.bounds)
        x = np.zeros(sp.dim)
        x[:sp.k] = lo
        if target is not None:
            x[sp.k:] = target[sp.k:]
        states, actions, prev = [], [], 0.0
        random_phase = self._random_phase()
        delta = self._delta()
        for t in range(sp.k):
            span = max(hi[t] - lo[t], 1e-12)
            wall = (sp.action_floor(x, t) - lo[t]) / span
            s = self._state(t, x, prev, wall)
            fair = ((sp.fair_share(x, t) - lo[t]) / span if self.action == "relative"
                    else 0.0)
            if target is not None:
                a = self._action_to(float((target[t] - lo[t]) / span), wall, fair)
            elif random_phase:
                a = float(self._rng.random())
            else:
                a = self.agent.act(s, self._graph[t])
                if explore:
                    a = _truncated_normal(self._rng, a, delta)
            if self.action == "relative":
                x[t] = lo[t] + span * self._relative(a, wall, fair)
            else:
                a = float(min(1.0, max(a, wall)))
                x[t] = lo[t] + a * span
            states.append(s.tolist())
            actions.append(a)
            prev = a
        return {"states": states, "actions": actions, "x": x.tolist()}

    def _relative(self, a: float, wall: float, fair: float) -> float:
        """A budget-relative action -> the step's position in its bounds: `a` in [0, 1] spans
        [wall, 1] through the power curve that puts a = 0.5 on the step's fair share of the
        pruning still owed (`SearchSpace.fair_share`). So 0.5 means "this step's share" at
        any budget and on any model; without a budget the curve is the identity."""
        if self.space.budget is None or wall >= 1.0:
            return min(1.0, max(a, wall))
        q = min(0.98, max(0.02, (fair - wall) / (1.0 - wall)))
        return wall + (1.0 - wall) * float(a) ** (math.log(q) / math.log(0.5))

    def _action_to(self, pos: float, wall: float, fair: float) -> float:
        """The action that puts a step at position `pos` of its bounds (the inverse of
        `_relative` in relative mode; walled like the agent's own actions)."""
        pos = min(1.0, max(pos, 0.0))
        if self.action == "absolute" or self.space.budget is None or wall >= 1.0:
            return float(max(pos, wall)) if self.action == "absolute" else pos
        q = min(0.98, max(0.02, (fair - wall) / (1.0 - wall)))
        u = max(0.0, (pos - wall) / (1.0 - wall))
        return float(u ** (math.log(0.5) / math.log(q)))

    def _start(self, trial_id: str, x: np.ndarray) -> np.ndarray:
        # A start policy is an episode the agent did not choose: the actions that walk to
        # its point, stored and learned from like its own (and counted in the warm-up).
        with torch_threads(self.threads):
            walk = self._walk(explore=False, target=x)
        self._walks[trial_id] = walk
        return np.asarray(walk["x"])

    def _random_phase(self) -> bool:
        return not self.warm_started and self.n_suggested < self.warmup

    def _propose(self, trial_id: str) -> np.ndarray:
        if self.warmup_from == "space" and self._random_phase():
            lo, hi = (np.asarray(b, dtype=float) for b in self.space.bounds)
            point = lo + (hi - lo) * self._rng.random(self.space.dim)
            return self._start(trial_id, self.space.nearest_point(self.space.decode(point)))
        n = self.screen if self._assistant is not None else 1
        with torch_threads(self.threads):
            walks = [self._walk(explore=True) for _ in range(n)]
        if n > 1:
            feats = np.array([self._profile(w["actions"], w["x"]) for w in walks])
            walks = [walks[int(np.argmax(self._assistant.predict(feats)))]]
        self._walks[trial_id] = walks[0]
        return np.asarray(walks[0]["x"])

    # -- learning ----------------------------------------------------------------------------
    def _profile(self, actions: list[float], x: list[float]) -> list[float]:
        """The assistant's features: mean action per depth bin, then the FLOPs share."""
        T = len(actions)
        centres = (np.arange(T) + 0.5) / T
        bins = (np.arange(_PROFILE_BINS) + 0.5) / _PROFILE_BINS
        prof = np.interp(bins, centres, np.asarray(actions, dtype=float))
        return [*prof.tolist(), self.space.cost(np.asarray(x), project=False)["flops_share"]]

    def _episode_reward(self, x: np.ndarray, value: float) -> float:
        sign = 1.0 if self.mode == "max" else -1.0
        if self.reward == "metric":
            return sign * value
        flops = self.space.cost(x)["flops"]
        return -(1.0 - value) * math.log(max(flops, 1.0))

    def _observe(self, trial_id: str, x: np.ndarray, values: Mapping[str, float]) -> None:
        walk = self._walks.pop(trial_id, None)
        if walk is None:
            return
        R = self._episode_reward(x, values[self.metric])
        self._store(walk, R)
        self.history.append({"profile": self._profile(walk["actions"], walk["x"]), "reward": R})
        if self.warm_started or len(self.history) > self.warmup:
            norm = self._reward_norm()
            with torch_threads(self.threads):
                for _ in range(self.updates_per_episode):
                    self.agent.update(self._rng, reward_norm=norm)
        self._fit_assistant()

    def _store(self, walk: dict[str, list], R: float) -> None:
        """An episode's transitions into the replay buffer, every step carrying its reward."""
        S, A = np.asarray(walk["states"]), walk["actions"]
        T = len(A)
        for t in range(T):
            last = t == T - 1
            self.agent.buffer.add(s=S[t], g=self._graph[t], a=A[t], r=R,
                                  s2=S[t] if last else S[t + 1],
                                  g2=self._graph[t] if last else self._graph[t + 1],
                                  done=float(last))

    def _learn_prior(self) -> None:
        # Earlier searches' trials with no agent of theirs to transfer (another searcher ran
        # them; `search.warm_start` transfers a saved RL state instead where one exists): the
        # episodes that walk to their points join the buffer as source experience.
        with torch_threads(self.threads):
            for p in self.prior:
                walk = self._walk(explore=False, target=np.asarray(p["x"], dtype=float))
                R = self._episode_reward(np.asarray(walk["x"]), p["values"][self.metric])
                self._store(walk, R)
                self.source_history.append({"profile": self._profile(walk["actions"],
                                                                     walk["x"]), "reward": R})
        self._fit_assistant()

    def _reward_norm(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """(mean, std) of this search's episode rewards and of the source search's. The buffer
        keeps raw rewards and the critic learns them standardised by these, so an old
        transition and a new one are on one scale. Why not AMC's moving baseline: stored
        baseline-relative rewards score every era of the search near zero, so after a
        collapse onto a bad policy the critic could no longer tell it from the better ones
        it had seen, and the actor never came back (seen on the ResNet-56 benchmark)."""
        def stats(hist: list[dict[str, Any]]) -> tuple[float, float]:
            r = np.array([h["reward"] for h in hist], dtype=float)
            if len(r) < 2:
                return (float(r[0]) if len(r) else 0.0), 1.0
            return float(r.mean()), max(float(r.std()), 1e-8)

        return stats(self.history), stats(self.source_history)

    def _discard(self, trial_id: str, outcome: TrialOutcome) -> None:
        self._walks.pop(trial_id, None)  # failed or stopped early: nothing to learn

    def _fit_assistant(self) -> None:
        """Refit the assistant reward model on the history (standardised per search); it is
        deterministic, so a restored searcher refits the same model."""
        if self.screen <= 1 or len(self.source_history) + len(self.history) < 10:
            self._assistant = None
            return
        from sklearn.ensemble import GradientBoostingRegressor

        X, y = [], []
        for hist in (self.source_history, self.history):
            if len(hist) < 2:
                continue
            r = np.array([h["reward"] for h in hist])
            y.extend(((r - r.mean()) / (r.std() + 1e-9)).tolist())
            X.extend(h["profile"] for h in hist)
        if len(y) < 10:
            self._assistant = None
            return
        self._assistant = GradientBoostingRegressor(n_estimators=100, max_depth=3,
                                                    random_state=0).fit(np.array(X), y)

    # -- transfer ----------------------------------------------------------------------------
    def _warm_start(self, state: dict[str, Any], critic_pretrain: int) -> None:
        check_state_schema(state, "warm_start")
        if state.get("searcher") != type(self).__name__:
            raise SearcherError(f"warm_start needs the state of an {type(self).__name__} "
                                f"search, got one of {state.get('searcher')!r}")
        alg = state["algorithm"]
        self._check_action(alg, "warm_start")
        try:
            self.agent.load(alg["agent"], transfer=True)
        except ValueError as err:
            raise SearcherError(f"warm_start: {err}") from err
        self.source_history = alg["history"] + alg["source_history"]
        # An absolute actor learned at one budget prunes to that budget's level; at a tighter
        # one the action wall then takes the last layers to the bound (measured: transfer from
        # 70% to 50% FLOPs chance-level for 2 of 3 seeds). Scale its actions by the ratio of
        # the two budgets' uniform levels so it starts at this budget with the source's profile.
        src_level, src_scale = alg["level"], alg["action_scale"]
        if self.action == "absolute" and src_level and self.level:
            self.agent.action_scale = float(np.clip(src_scale * self.level / src_level,
                                                    0.25, 4.0))
        norm = ((0.0, 1.0), self._reward_norm()[1])  # only source transitions so far
        for _ in range(critic_pretrain):
            self.agent.update(self._rng, actor=False, reward_norm=norm)
        self.warm_started = True

    # -- persistence -------------------------------------------------------------------------
    def _algorithm_state(self) -> dict[str, Any]:
        return {"rng": self._rng.bit_generator.state, "walks": self._walks, "history": self.history,
                "source_history": self.source_history, "warm_started": self.warm_started,
                "screen": self.screen, "action": self.action, "level": self.level,
                "action_scale": self.agent.action_scale, "agent": self.agent.state_dict()}

    def _budget_level(self) -> float | None:
        """The position in the first step's bounds that every step could take and just meet
        the budget (None without one, or when nothing need be pruned)."""
        sp = self.space
        if sp.budget is None:
            return None
        lo, hi = (np.asarray(b, dtype=float) for b in sp.bounds)
        x = lo.copy()
        level = (sp.fair_share(x, 0) - lo[0]) / max(hi[0] - lo[0], 1e-12)
        return float(level) if level > 0 else None

    def _check_action(self, alg: dict[str, Any], what: str) -> None:
        """An agent learned its actor in one action mode; read in another, its outputs would
        mean other ratios."""
        saved = alg["action"]
        if saved != self.action:
            raise SearcherError(f"{what}: the saved agent acts with action={saved!r}, this "
                                f"searcher with action={self.action!r}; set the option "
                                f"action: {saved} to use it")

    def _load_algorithm_state(self, state: dict[str, Any]) -> None:
        self._check_action(state, "restore")
        self._rng = np.random.default_rng()
        self._rng.bit_generator.state = state["rng"]
        self._walks = {k: dict(v) for k, v in state["walks"].items()}
        self.history, self.source_history = state["history"], state["source_history"]
        self.warm_started, self.screen = state["warm_started"], state["screen"]
        self.agent.action_scale = state["action_scale"]
        try:
            self.agent.load(state["agent"])
        except ValueError as err:
            raise SearcherError(f"cannot restore the RL agent: {err}") from err
        self._fit_assistant()


def _truncated_normal(rng: np.random.Generator, mean: float, sigma: float) -> float:
    """A sample of N(mean, sigma) truncated to [0, 1] (rejection; clipped after 100 tries)."""
    for _ in range(100):
        v = rng.normal(mean, sigma)
        if 0.0 <= v <= 1.0:
            return float(v)
    return float(min(1.0, max(0.0, mean)))
