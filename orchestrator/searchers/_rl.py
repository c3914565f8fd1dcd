"""RL searcher: AMC-style DDPG that prunes unit by unit, with transfer and a graph-aware state.

One episode is one policy is one Tune trial. The agent walks the space's ratio dimensions in
order (one per unit in a full space, one per group in a clustered one). At step t the state
is AMC's layer embedding, normalised so it means the same on any model (which is what lets an
agent move from ResNet-20 to ResNet-56):

    index t/(T-1), linear?, depthwise?, log2 in / out channels / 12, stride / 2, kernel / 7,
    FLOPs and params relative to the largest step, depth | FLOPs reduced so far, FLOPs left
    after this step (shares of dense), previous action, the budget's keep, the action wall

and the action is the step's position in the space's bounds, clipped from below by AMC's
action wall (`PruningSpace.action_floor`: the least pruning that still lets the budget be met
if every later step prunes all it may), so every episode meets the budget by construction.
Reward: the trial's metric ("metric", AMC's constrained mode) or `-error * log(FLOPs)`
("error_log_flops"), minus a moving-average baseline, given to every step of the episode.
Rewards are standardised by the spread of those seen so far. Because every step already
carries the whole episode's reward, the critic's target is that reward (`discount=0`, the
default); AMC's `discount=1` bootstraps a sum over the remaining steps through the target
networks, and on the ResNet-56 benchmark (seed 0, 100 episodes) it collapsed onto a
chance-level policy (mean reward 0.13 over episodes 41-80, best 0.508) where `discount=0`
climbed (mean 0.49 over the last 20, best 0.572). Exploration noise never drops below
`min_delta`, so an actor that collapsed onto a bad policy still tries its neighbours.
An episode's actions never depend on its reward, so several episodes can be in flight for
concurrent trials: each is walked in full when suggested and learned from when it finishes.

Transfer ("Boosting the convergence of RL-based auto-pruning using historical data"):
`warm_start` names the saved state of an earlier RL search (same or another model, another
budget). Its actor and critic are loaded (transfer learning), its replay buffer joins the new
one as source experience that is overwritten first (augmented transfer), the critic is
pre-trained on it, and an assistant reward model (a gradient-boosting regressor from an
episode's action profile to its standardised reward, trained on the history of both searches)
screens `screen` candidate episodes per suggestion and keeps the most promising one
(assistant learning). Warm-up random episodes are skipped and exploration starts lower.

Graph-aware state (AutoSculpt): `gnn=True` adds per-step embeddings of a graph network over
the unit dependency graph (`_rl_agent.GraphEncoder`), trained through the critic and actor.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ._base import PolicySearcher, SearcherError
from ._rl_agent import DDPGAgent, GraphEncoder

__all__ = ["RLSearcher", "load_searcher_state"]

_STATIC = 10  # static features per step (see the module docstring)
_STATE_DIM = _STATIC + 5  # + reduced so far, left after, previous action, keep, wall
_PROFILE_BINS = 8  # the assistant's view of an episode: mean action per depth bin, + FLOPs
_REWARDS = ("metric", "error_log_flops")


def load_searcher_state(path: str | Path) -> dict[str, Any]:
    """A saved searcher state: a state file, or a Tune experiment folder (its newest
    `searcher-state-*` file)."""
    p = Path(path).expanduser()
    if p.is_dir():
        found = sorted(p.glob("searcher-state-*"), key=lambda f: f.stat().st_mtime)
        if not found:
            raise SearcherError(f"warm_start folder {p} holds no searcher-state-* file; give "
                                "a searcher state file, a search's Tune folder or its name")
        p = found[-1]
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SearcherError(f"cannot read searcher state {p} for warm_start: {err}") from err


def _unit_graph(space: Any) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Static `T x 10` step features and the steps' dependency edges (unit u feeds unit v when
    a layer v owns reads u's channels), for a space's ratio dimensions."""
    group_of = {name: g for g, names in enumerate(space.groups) for name in names}
    T = space.k
    raw, count = np.zeros((T, _STATIC)), np.zeros(T)
    for u in space.units:
        f, g = u.features, group_of[u.name]
        # index, linear?, depthwise?, in, out, stride, kernel: averaged over the step's units
        raw[g, 1:7] += [str(f.get("type", "")) == "linear", float(f.get("depthwise", 0)),
                        math.log2(max(1, f.get("in_channels", 1))) / 12.0,
                        math.log2(max(1, f.get("out_channels", 1))) / 12.0,
                        f.get("stride", 1) / 2.0, f.get("kernel", 1) / 7.0]
        raw[g, 9] += f.get("depth", 0.0)
        # FLOPs and params: summed over the step's units
        raw[g, 7] += f.get("flops_share", 0.0)
        raw[g, 8] += f.get("params_share", 0.0)
        count[g] += 1
    for col in (*range(1, 7), 9):
        raw[:, col] /= np.maximum(count, 1)
    raw[:, 0] = np.arange(T) / max(1, T - 1)
    owner = {layer: group_of[u.name] for u in space.units for layer in u.layers}
    edges = sorted({(group_of[u.name], owner[lay]) for u in space.units for lay in u.in_layers
                    if lay in owner and owner[lay] != group_of[u.name]})
    return raw, edges


class RLSearcher(PolicySearcher):
    """AMC's DDPG agent as a Ray Tune searcher (see the module docstring)."""

    def __init__(self, *, space: Any, metric: str = "accuracy", mode: str = "max",
                 seed: int = 0, reward: str = "metric", warmup: int = 20,
                 init_delta: float = 0.5, delta_decay: float = 0.95,
                 min_delta: float = 0.05, hidden: int = 64,
                 gnn: bool = False, discount: float = 0.0, baseline_alpha: float = 0.5,
                 buffer_size: int = 4000, batch_size: int = 64,
                 updates_per_episode: int | None = None, warm_start: str | None = None,
                 transfer_delta: float = 0.2, critic_pretrain: int = 200,
                 screen: int | str = "auto") -> None:
        super().__init__(space=space, metric=metric, mode=mode, seed=seed)
        if reward not in _REWARDS:
            raise SearcherError(f"reward must be one of {', '.join(_REWARDS)}, got {reward!r}")
        if warmup < 0 or not 0.0 < init_delta <= 1.0 or not 0.0 < delta_decay <= 1.0:
            raise SearcherError(f"need warmup >= 0, init_delta in (0, 1], delta_decay in (0, 1]; "
                                f"got {warmup}, {init_delta}, {delta_decay}")
        if not (screen == "auto" or (isinstance(screen, int) and screen >= 1)):
            raise SearcherError(f"screen must be 'auto' or an integer >= 1, got {screen!r}")
        self.reward, self.warmup = reward, warmup
        if not 0.0 <= min_delta <= init_delta:
            raise SearcherError(f"min_delta must be in [0, init_delta={init_delta}], got "
                                f"{min_delta}")
        self.init_delta, self.delta_decay, self.min_delta = init_delta, delta_decay, min_delta
        self.baseline_alpha, self.transfer_delta = baseline_alpha, transfer_delta
        self.updates_per_episode = updates_per_episode or space.k
        static, edges = _unit_graph(space)
        # FLOPs after each step (shares of dense); then FLOPs and params relative to the
        # largest step, so a feature means the same on a 20- and a 56-layer model.
        self._left = np.concatenate([np.cumsum(static[::-1, 7])[::-1][1:], [0.0]])
        static[:, 7:9] /= np.maximum(static[:, 7:9].max(0), 1e-12)
        self._features = static
        self._graph = GraphEncoder.propagate(static, edges)
        self.agent = DDPGAgent(state_dim=_STATE_DIM, graph_dim=self._graph.shape[1], seed=seed,
                               hidden=hidden, gnn=gnn, discount=discount,
                               batch_size=batch_size, buffer_size=buffer_size)
        self._rng = np.random.default_rng(seed)
        self._episodes = 0  # episodes proposed (AMC's episode counter drives exploration)
        self._baseline: float | None = None
        self._walks: dict[str, dict[str, list]] = {}  # live episodes by trial id
        self.history: list[dict[str, Any]] = []  # finished: action profile and raw reward
        self.source_history: list[dict[str, Any]] = []
        self.warm_started = False
        if warm_start is not None:
            self._warm_start(load_searcher_state(warm_start), critic_pretrain)
        self.screen = (4 if self.warm_started else 1) if screen == "auto" else screen
        self._assistant: Any = None
        self._fit_assistant()

    # -- the episode walk ------------------------------------------------------------------
    def _delta(self) -> float:
        """Exploration noise: AMC's decaying sigma, floored at `min_delta` so an agent whose
        actor collapsed onto a bad policy still tries its neighbours."""
        if self.warm_started:
            delta = self.transfer_delta * self.delta_decay ** self._episodes
        else:
            delta = self.init_delta * self.delta_decay ** max(0, self._episodes - self.warmup)
        return max(delta, self.min_delta)

    def _state(self, t: int, x: np.ndarray, prev: float, wall: float) -> np.ndarray:
        reduced = 1.0 - self.space.cost(x, project=False)["flops_share"]
        keep = self.space.budget.keep if self.space.budget is not None else 1.0
        return np.concatenate([self._features[t],
                               [reduced, self._left[t], prev, keep, wall]])

    def _walk(self, explore: bool) -> dict[str, list]:
        """One episode: states, graph rows, actions (walled, in [0, 1]) and the point."""
        sp = self.space
        lo, hi = (np.asarray(b, dtype=float)[:sp.k] for b in sp.bounds)
        x = np.zeros(sp.dim)
        x[:sp.k] = lo
        states, actions, prev = [], [], 0.0
        random_phase = not self.warm_started and self._episodes < self.warmup
        delta = self._delta()
        for t in range(sp.k):
            span = max(hi[t] - lo[t], 1e-12)
            wall = (sp.action_floor(x, t) - lo[t]) / span
            s = self._state(t, x, prev, wall)
            if random_phase:
                a = float(self._rng.random())
            else:
                a = self.agent.act(s, self._graph[t])
                if explore:
                    a = _truncated_normal(self._rng, a, delta)
            a = float(min(1.0, max(a, wall)))
            x[t] = lo[t] + a * span
            states.append(s.tolist())
            actions.append(a)
            prev = a
        return {"states": states, "actions": actions, "x": x.tolist()}

    def _propose(self, trial_id: str) -> np.ndarray:
        n = self.screen if self._assistant is not None else 1
        walks = [self._walk(explore=True) for _ in range(n)]
        if n > 1:
            feats = np.array([self._profile(w["actions"], w["x"]) for w in walks])
            walks = [walks[int(np.argmax(self._assistant.predict(feats)))]]
        self._episodes += 1
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

    def _observe(self, trial_id: str, x: np.ndarray, value: float) -> None:
        walk = self._walks.pop(trial_id, None)
        if walk is None:
            return
        R = self._episode_reward(x, value)
        if self._baseline is None:
            self._baseline = R
        # Standardised by the spread of the rewards so far: accuracy differences of a few
        # points would otherwise leave the critic fitting targets of ~0.01, and its action
        # gradients (what trains the actor) drowned in noise.
        seen = [h["reward"] for h in self.history] + [R]
        scale = float(np.std(seen)) if len(seen) > 2 else 0.0
        r = (R - self._baseline) / (scale if scale > 1e-8 else 1.0)
        self._baseline = (1 - self.baseline_alpha) * self._baseline + self.baseline_alpha * R
        S, A = np.asarray(walk["states"]), walk["actions"]
        T = len(A)
        for t in range(T):
            last = t == T - 1
            self.agent.buffer.add(s=S[t], g=self._graph[t], a=A[t], r=r,
                                  s2=S[t] if last else S[t + 1],
                                  g2=self._graph[t] if last else self._graph[t + 1],
                                  done=float(last))
        self.history.append({"profile": self._profile(A, walk["x"]), "reward": R})
        if self.warm_started or len(self.history) > self.warmup:
            for _ in range(self.updates_per_episode):
                self.agent.update(self._rng)
        self._fit_assistant()

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        super().on_trial_complete(trial_id, result, error)
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
        if state.get("searcher") != type(self).__name__:
            raise SearcherError(f"warm_start needs the state of an {type(self).__name__} "
                                f"search, got one of {state.get('searcher')!r}")
        alg = state["algorithm"]
        try:
            self.agent.load(alg["agent"], transfer=True)
        except ValueError as err:
            raise SearcherError(f"warm_start: {err}") from err
        self.source_history = alg["history"] + alg.get("source_history", [])
        for _ in range(critic_pretrain):
            self.agent.update(self._rng, actor=False)
        self.warm_started = True

    # -- persistence -------------------------------------------------------------------------
    def _algorithm_state(self) -> dict[str, Any]:
        return {"rng": self._rng.bit_generator.state, "episodes": self._episodes,
                "baseline": self._baseline, "walks": self._walks, "history": self.history,
                "source_history": self.source_history, "warm_started": self.warm_started,
                "screen": self.screen, "agent": self.agent.state_dict()}

    def _load_algorithm_state(self, state: dict[str, Any]) -> None:
        self._rng = np.random.default_rng()
        self._rng.bit_generator.state = state["rng"]
        self._episodes, self._baseline = state["episodes"], state["baseline"]
        self._walks = {k: dict(v) for k, v in state["walks"].items()}
        self.history, self.source_history = state["history"], state["source_history"]
        self.warm_started, self.screen = state["warm_started"], state["screen"]
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
