"""The narrow base every prunetune searcher shares.

A searcher proposes points `x` in the pruning space's box `[0, 1]^d`; the space decodes each
point into a `Policy` that meets the resource budget. Subclasses implement three methods:

- `_propose(trial_id) -> np.ndarray | None`: the next `d` vector (None: not ready, ask later);
- `_observe(trial_id, x, value) -> None`: a trial finished normally with reward `value`;
- `_algorithm_state() / _load_algorithm_state(state)`: the algorithm's own explicit state.

The base owns the Ray Tune protocol, following Ray's own `OptunaSearch` recipe: a map from Tune
trial id to the live point, a result taken as final only when the trial function marked it
`final` (trials stopped early by a scheduler such as ASHA reach `on_trial_complete` with an
intermediate result: those are recorded as "stopped", never as observations), errors
recorded as such, a second completion of the same trial ignored, and `save` / `restore` of
explicit JSON state written atomically.
"""

from __future__ import annotations

import abc
import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from ray.tune.search import Searcher

from prunetune.trainers.trial import FINAL_KEY

__all__ = ["PolicySearcher", "Observation", "FINAL_KEY", "SearcherError"]



class SearcherError(RuntimeError):
    """A searcher was used in a way it does not support (bad state file, unknown metric, ...)."""


@dataclass
class Observation:
    trial_id: str
    x: list[float]  # the point in the space of its `stage`
    value: float | None  # reward (None unless status == "final")
    status: str  # "final" | "stopped" | "error"
    stage: int = 0  # index of the space the point was proposed in (BO roll-back)


class PolicySearcher(Searcher, abc.ABC):
    """Base class: a Ray Tune `Searcher` over a `PruningSpace`'s vector.

    Suggested configs carry `x` (the point), `policy` (the decoded Policy as JSON: what the
    trial applies and what is recorded), `stage` (which space the point belongs to; searchers
    that refine the space, like BOCR's roll-back, bump it) and `dim`.
    """

    def __init__(self, *, space: Any, metric: str = "accuracy", mode: str = "max",
                 seed: int = 0) -> None:
        if mode not in ("max", "min"):
            raise SearcherError(f"mode must be 'max' or 'min', got {mode!r}")
        super().__init__(metric=metric, mode=mode)
        self.space = space
        self.seed = seed
        self.stage = 0
        self._live: dict[str, list[float]] = {}
        self.observations: list[Observation] = []

    # -- what subclasses implement --------------------------------------------------------
    @abc.abstractmethod
    def _propose(self, trial_id: str) -> np.ndarray | None:
        """The next point, a length-`d` array in `[0, 1]^d`, or None when not ready."""

    def _observe(self, trial_id: str, x: np.ndarray, value: float) -> None:
        """A trial finished normally: learn from it (no-op for model-free searchers)."""

    def _algorithm_state(self) -> dict[str, Any]:
        """The algorithm's own state, JSON-able. The base saves observations itself."""
        return {}

    def _load_algorithm_state(self, state: dict[str, Any]) -> None:
        """Inverse of `_algorithm_state`."""

    # -- Ray Tune protocol -------------------------------------------------------------------
    def set_search_properties(self, metric: str | None, mode: str | None, config: dict,
                              **spec: Any) -> bool:
        if metric:
            self._metric = metric
        if mode:
            self._mode = mode
        return True

    @property
    def pending(self) -> np.ndarray:
        """Points of live trials, an `n_live x d` array (BoTorch's `X_pending`)."""
        pts = [x for x in self._live.values() if len(x) == self.space.dim]
        return np.asarray(pts, dtype=float).reshape(-1, self.space.dim)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        x = self._propose(trial_id)
        if x is None:
            return None
        x = np.clip(np.asarray(x, dtype=float).reshape(-1), 0.0, 1.0)
        if x.shape[0] != self.space.dim:
            raise SearcherError(f"{type(self).__name__} proposed {x.shape[0]} values for a "
                                f"{self.space.dim}-dimensional space")
        policy = self.space.decode(x)
        self._live[trial_id] = x.tolist()
        return {"x": x.tolist(), "policy": policy.to_json(), "stage": self.stage,
                "dim": self.space.dim}

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        x = self._live.pop(trial_id, None)
        if x is None:  # unknown trial or a second completion: Tune can call twice
            return
        if error or result is None:
            self.observations.append(Observation(trial_id, x, None, "error", self.stage))
            return
        if not result.get(FINAL_KEY):
            # Stopped early by a scheduler: its accuracy is an intermediate one.
            self.observations.append(Observation(trial_id, x, None, "stopped", self.stage))
            return
        value = result.get(self.metric)
        if value is None or not math.isfinite(float(value)):
            self.observations.append(Observation(trial_id, x, None, "error", self.stage))
            return
        self.observations.append(Observation(trial_id, x, float(value), "final", self.stage))
        self._observe(trial_id, np.asarray(x), float(value))

    # -- helpers for subclasses --------------------------------------------------------------
    def finished(self, stage: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Final observations as (`n x d` points, `n` rewards), sign-flipped for mode 'min'."""
        obs = [o for o in self.observations if o.status == "final"
               and (stage is None or o.stage == stage)]
        if not obs:
            return np.zeros((0, self.space.dim)), np.zeros(0)
        sign = 1.0 if self.mode == "max" else -1.0
        return (np.asarray([o.x for o in obs], dtype=float),
                sign * np.asarray([o.value for o in obs], dtype=float))

    # -- persistence -------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        return {
            "searcher": type(self).__name__,
            "metric": self.metric,
            "mode": self.mode,
            "seed": self.seed,
            "stage": self.stage,
            "live": self._live,
            "observations": [asdict(o) for o in self.observations],
            "algorithm": self._algorithm_state(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("searcher") != type(self).__name__:
            raise SearcherError(f"state was saved by {state.get('searcher')!r}, cannot restore "
                                f"it into {type(self).__name__}")
        self._metric, self._mode = state["metric"], state["mode"]
        self.seed, self.stage = state["seed"], state["stage"]
        self._live = {k: list(v) for k, v in state["live"].items()}
        self.observations = [Observation(**o) for o in state["observations"]]
        self._load_algorithm_state(state["algorithm"])

    def save(self, checkpoint_path: str) -> None:
        folder = os.path.dirname(os.path.abspath(checkpoint_path))
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".searcher-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.get_state(), f)
            os.replace(tmp, checkpoint_path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def restore(self, checkpoint_path: str) -> None:
        try:
            with open(checkpoint_path) as f:
                state = json.load(f)
        except (OSError, json.JSONDecodeError) as err:
            raise SearcherError(f"cannot read searcher state {checkpoint_path}: {err}") from err
        self.set_state(state)
