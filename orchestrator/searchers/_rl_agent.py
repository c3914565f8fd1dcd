"""The RL searcher's learning parts: DDPG networks, the replay buffer, the graph encoder.

Kept apart from `_rl.py` (the episode walk and the Ray Tune side) so each file stays small.
Everything here serialises to JSON-able dicts: tensors as base64 float32 bytes, so a saved
agent restores bit for bit and the state file stays a few hundred kB.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import torch
from torch import nn

from prunetune.errors import SearcherStateError

__all__ = ["DDPGAgent", "GraphEncoder", "ReplayBuffer", "decode_array", "encode_array"]


def encode_array(a: np.ndarray) -> dict[str, Any]:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return {"shape": list(a.shape), "data": base64.b64encode(a.tobytes()).decode("ascii")}


def decode_array(d: dict[str, Any]) -> np.ndarray:
    raw = np.frombuffer(base64.b64decode(d["data"]), dtype=np.float32)
    return raw.reshape(d["shape"]).copy()


def _module_state(m: nn.Module) -> dict[str, Any]:
    return {k: encode_array(v.detach().cpu().numpy()) for k, v in m.state_dict().items()}


def _load_module_state(m: nn.Module, state: dict[str, Any]) -> None:
    m.load_state_dict({k: torch.from_numpy(decode_array(v)) for k, v in state.items()})


class GraphEncoder(nn.Module):
    """Per-unit embeddings from the unit dependency graph (AutoSculpt's graph-aware state).

    A SIGN-style graph network (Frasca et al., 2020): the propagated features `[X, A X, A^2 X]`
    (A: the symmetric-normalised adjacency with self-loops) are computed once per model, and
    a learned MLP maps them to embeddings. Because propagation is fixed, a replay transition
    can store its unit's propagated row and the encoder still trains through the critic, and
    the encoder transfers between models (it never sees the graph's size).

    Input: `n x (3 * f)` propagated features; output: `n x out_dim` embeddings.
    """

    def __init__(self, in_dim: int, out_dim: int = 8, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3 * in_dim, hidden), nn.ReLU(),
                                 nn.Linear(hidden, out_dim), nn.Tanh())

    @staticmethod
    def propagate(features: np.ndarray, edges: list[tuple[int, int]]) -> np.ndarray:
        """`n x f` node features and undirected edges -> `n x 3f` `[X, A X, A^2 X]`."""
        n = len(features)
        adj = np.eye(n)
        for i, j in edges:
            adj[i, j] = adj[j, i] = 1.0
        deg = adj.sum(1)
        norm = adj / np.sqrt(np.outer(deg, deg))
        ax = norm @ features
        return np.hstack([features, ax, norm @ ax])

    def forward(self, propagated: torch.Tensor) -> torch.Tensor:
        return self.net(propagated)


class _Actor(nn.Module):
    """state (`b x s`, plus `b x 3f` propagated graph features) -> action in (0, 1), `b x 1`."""

    def __init__(self, state_dim: int, hidden: int, encoder: GraphEncoder | None) -> None:
        super().__init__()
        self.encoder = encoder
        extra = encoder.net[-2].out_features if encoder is not None else 0
        self.net = nn.Sequential(nn.Linear(state_dim + extra, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1),
                                 nn.Sigmoid())

    def forward(self, s: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
        if self.encoder is not None:
            s = torch.cat([s, self.encoder(g)], 1)
        return self.net(s)


class _Critic(nn.Module):
    """(state `b x s`, graph `b x 3f`, action `b x 1`) -> Q, `b x 1`."""

    def __init__(self, state_dim: int, hidden: int, encoder: GraphEncoder | None) -> None:
        super().__init__()
        self.encoder = encoder
        extra = encoder.net[-2].out_features if encoder is not None else 0
        self.state = nn.Sequential(nn.Linear(state_dim + extra, hidden), nn.ReLU())
        self.net = nn.Sequential(nn.Linear(hidden + 1, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, s: torch.Tensor, g: torch.Tensor | None, a: torch.Tensor) -> torch.Tensor:
        if self.encoder is not None:
            s = torch.cat([s, self.encoder(g)], 1)
        return self.net(torch.cat([self.state(s), a], 1))


class ReplayBuffer:
    """A ring of transitions `(state, graph, action, reward, next_state, next_graph, done)`.

    `source` marks transitions loaded from an earlier search (augmented transfer): they are
    the first to be overwritten once the buffer is full, so the new model's own experience
    takes over.
    """

    FIELDS = ("s", "g", "a", "r", "s2", "g2", "done", "source")

    def __init__(self, capacity: int, state_dim: int, graph_dim: int) -> None:
        self.capacity = capacity
        self.data = {"s": np.zeros((capacity, state_dim), np.float32),
                     "g": np.zeros((capacity, graph_dim), np.float32),
                     "a": np.zeros((capacity, 1), np.float32),
                     "r": np.zeros((capacity, 1), np.float32),
                     "s2": np.zeros((capacity, state_dim), np.float32),
                     "g2": np.zeros((capacity, graph_dim), np.float32),
                     "done": np.zeros((capacity, 1), np.float32),
                     "source": np.zeros((capacity, 1), np.float32)}
        self.size = 0

    def add(self, **t: Any) -> None:
        if self.size < self.capacity:
            i = self.size
            self.size += 1
        else:  # full: overwrite a source transition if any is left, else the oldest own one
            src = np.nonzero(self.data["source"][:, 0] > 0)[0]
            i = int(src[0]) if len(src) else 0
            if not len(src):  # keep insertion order: drop the oldest, append at the end
                for v in self.data.values():
                    v[:-1] = v[1:].copy()
                i = self.capacity - 1
        for k in self.FIELDS:
            self.data[k][i] = t.get(k, 0.0)

    def sample(self, batch: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        idx = rng.integers(0, self.size, size=min(batch, self.size))
        return {k: torch.from_numpy(v[idx]) for k, v in self.data.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "size": self.size,
                "data": {k: encode_array(v[:self.size]) for k, v in self.data.items()}}

    def load(self, state: dict[str, Any], *, as_source: bool = False) -> None:
        """Put a saved buffer's transitions in this one (newest first kept if too many)."""
        rows = {k: decode_array(v) for k, v in state["data"].items()}
        n = min(int(state["size"]), self.capacity)
        for k in self.FIELDS:
            if rows[k].shape[1:] != self.data[k].shape[1:]:
                raise SearcherStateError(f"saved transitions have {k} of width "
                                         f"{rows[k].shape[1:]}, this agent "
                                         f"{self.data[k].shape[1:]}")
            self.data[k][:n] = rows[k][-n:]
        if as_source:
            self.data["source"][:n] = 1.0
        self.size = n


class DDPGAgent:
    """DDPG (Lillicrap et al., 2016) as AMC uses it: actor and critic MLPs with target
    networks updated by Polyak averaging, a replay buffer, Adam.

    AMC's reward assignment: every step of an episode gets the episode's reward, and the
    critic's target is `r + discount * (1 - done) * Q'(s', mu'(s'))` with the target networks
    (`discount=0`: the reward alone). The buffer keeps raw rewards; `update` standardises them
    (AMC subtracts a moving baseline when storing, see `RLSearcher._reward_norm`).
    """


    def __init__(self, *, state_dim: int, graph_dim: int, seed: int, hidden: int = 64,
                 gnn: bool = False, lr_actor: float = 1e-3, lr_critic: float = 2e-3,
                 tau: float = 0.02, discount: float = 0.0, batch_size: int = 64,
                 buffer_size: int = 4000) -> None:
        self.state_dim, self.graph_dim, self.gnn = state_dim, graph_dim, gnn
        self.tau, self.discount, self.batch_size = tau, discount, batch_size
        feat = graph_dim // 3

        def enc() -> GraphEncoder | None:
            return GraphEncoder(feat) if gnn else None

        # The networks' initial weights follow the searcher's seed, without reseeding the
        # process's own generator (the driver's, or a test's).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.actor = _Actor(state_dim, hidden, enc())
            self.critic = _Critic(state_dim, hidden, enc())
            self.actor_target = _Actor(state_dim, hidden, enc())
            self.critic_target = _Critic(state_dim, hidden, enc())
        self.actor_target.load_state_dict(self.actor.state_dict())
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=lr_actor)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=lr_critic)
        self.buffer = ReplayBuffer(buffer_size, state_dim, graph_dim)
        # Executed action = actor output x action_scale: 1 unless the actor was transferred
        # from a search at another budget (see RLSearcher._warm_start).
        self.action_scale = 1.0

    def _graph(self, g: np.ndarray | torch.Tensor) -> torch.Tensor | None:
        return torch.as_tensor(g, dtype=torch.float32) if self.gnn else None

    @torch.no_grad()
    def act(self, state: np.ndarray, graph: np.ndarray) -> float:
        """The actor's action for one `s` state and `3f` graph row."""
        s = torch.as_tensor(state, dtype=torch.float32)[None]
        g = self._graph(np.asarray(graph)[None])
        return float(self._mu(self.actor, s, g)[0, 0])

    def _mu(self, actor: _Actor, s: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
        """The executed action: the actor's output times `action_scale`, at most 1."""
        out = actor(s, g)
        return out if self.action_scale == 1.0 else torch.clamp(out * self.action_scale, max=1.0)

    @torch.no_grad()
    def q_value(self, states: np.ndarray, graphs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """Critic's Q for `n x s` states, `n x 3f` graph rows, `n` actions -> `n`."""
        s = torch.as_tensor(states, dtype=torch.float32)
        a = torch.as_tensor(actions, dtype=torch.float32).reshape(-1, 1)
        return self.critic(s, self._graph(graphs), a)[:, 0].numpy()

    def update(self, rng: np.random.Generator, *, actor: bool = True,
               reward_norm: tuple[tuple[float, float], tuple[float, float]] = ((0.0, 1.0),
                                                                               (0.0, 1.0)),
               ) -> float:
        """One DDPG step on a minibatch; returns the critic loss. `actor=False` trains the
        critic alone (pre-training it on transferred experience). `reward_norm`: (mean, std)
        that standardise the stored raw rewards of own and of source transitions."""
        if self.buffer.size == 0:
            return 0.0
        b = self.buffer.sample(self.batch_size, rng)
        g, g2 = self._graph(b["g"]), self._graph(b["g2"])
        (m_own, s_own), (m_src, s_src) = reward_norm
        src = b["source"] > 0
        r = torch.where(src, (b["r"] - m_src) / s_src, (b["r"] - m_own) / s_own)
        with torch.no_grad():
            q_next = self.critic_target(b["s2"], g2, self._mu(self.actor_target, b["s2"], g2))
            target = r + self.discount * (1.0 - b["done"]) * q_next
        loss = nn.functional.mse_loss(self.critic(b["s"], g, b["a"]), target)
        self.critic_opt.zero_grad()
        loss.backward()
        self.critic_opt.step()
        if actor:
            policy_loss = -self.critic(b["s"], g, self._mu(self.actor, b["s"], g)).mean()
            self.actor_opt.zero_grad()
            policy_loss.backward()
            self.actor_opt.step()
        for net, tgt in ((self.actor, self.actor_target), (self.critic, self.critic_target)):
            with torch.no_grad():
                for p, pt in zip(net.parameters(), tgt.parameters(), strict=True):
                    pt.mul_(1.0 - self.tau).add_(self.tau * p)
        return float(loss.detach())

    # -- persistence ---------------------------------------------------------------------------
    def state_dict(self, *, buffer: bool = True) -> dict[str, Any]:
        out = {"state_dim": self.state_dim, "graph_dim": self.graph_dim, "gnn": self.gnn,
               "actor": _module_state(self.actor), "critic": _module_state(self.critic),
               "actor_target": _module_state(self.actor_target),
               "critic_target": _module_state(self.critic_target),
               "actor_opt": _optimizer_state(self.actor_opt),
               "critic_opt": _optimizer_state(self.critic_opt)}
        if buffer:
            out["buffer"] = self.buffer.state_dict()
        return out

    def load(self, state: dict[str, Any], *, transfer: bool = False) -> None:
        """Load a saved agent. `transfer=True`: the weights only (fresh optimisers), and the
        saved buffer joins this one as source experience."""
        if (state["state_dim"], state["graph_dim"], state["gnn"]) != (
                self.state_dim, self.graph_dim, self.gnn):
            raise SearcherStateError(f"the saved agent has state_dim {state['state_dim']}, "
                                     f"graph_dim {state['graph_dim']}, gnn {state['gnn']}; this "
                                     f"one has {self.state_dim}, {self.graph_dim}, {self.gnn}: "
                                     "warm-start only from a search with the same gnn setting")
        for name in ("actor", "critic", "actor_target", "critic_target"):
            _load_module_state(getattr(self, name), state[name])
        if not transfer:
            _load_optimizer_state(self.actor_opt, state["actor_opt"])
            _load_optimizer_state(self.critic_opt, state["critic_opt"])
        if "buffer" in state:
            self.buffer.load(state["buffer"], as_source=transfer)


def _optimizer_state(opt: torch.optim.Optimizer) -> dict[str, Any]:
    sd = opt.state_dict()
    return {"param_groups": sd["param_groups"],
            "state": {str(k): {n: (encode_array(v.numpy()) if torch.is_tensor(v) and v.dim()
                                   else float(v)) for n, v in s.items()}
                      for k, s in sd["state"].items()}}


def _load_optimizer_state(opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    opt.load_state_dict({
        "param_groups": state["param_groups"],
        "state": {int(k): {n: (torch.from_numpy(decode_array(v)) if isinstance(v, dict)
                               else torch.tensor(v)) for n, v in s.items()}
                  for k, s in state["state"].items()}})
