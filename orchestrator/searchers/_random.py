"""Random search, and the same-ratio baseline (one ratio shared by every layer group)."""

from __future__ import annotations

from typing import Any

import numpy as np

from prunetune.search_spaces import SearchSpace

from ._base import PolicySearcher, StartPolicies

__all__ = ["RandomSearcher", "SameRatioSearcher"]


class _SeededSearcher(PolicySearcher):
    """A searcher whose only state is a NumPy generator, saved as its bit-generator state."""

    def __init__(self, *, space: SearchSpace, metric: str | None = None,
                 mode: str | None = None, seed: int = 0,
                 learn_from_stopped: bool = False,
                 start_policies: StartPolicies | None = None) -> None:
        super().__init__(space=space, metric=metric, mode=mode, seed=seed,
                         learn_from_stopped=learn_from_stopped, start_policies=start_policies)
        self._rng = np.random.default_rng(seed)

    def _algorithm_state(self) -> dict[str, Any]:
        return {"rng": self._rng.bit_generator.state}

    def _load_algorithm_state(self, state: dict[str, Any]) -> None:
        self._rng = np.random.default_rng()
        self._rng.bit_generator.state = state["rng"]


class RandomSearcher(_SeededSearcher):
    """Independent uniform points in the space's current bounds (after any start policies,
    which are just its first trials). Prior trials of earlier searches (`search.warm_start`)
    only spare it the start policies they ran: its own points do not depend on them."""

    # Uniform points under a 50% FLOPs budget decode to 25-35% of the dense FLOPs without
    # the fill, throwing accuracy away (measured: benchmarks/README, search efficiency).
    default_fill_budget = True

    def _propose(self, trial_id: str) -> np.ndarray:
        lo, hi = (np.asarray(b, dtype=float) for b in self.space.bounds)
        return lo + (hi - lo) * self._rng.random(self.space.dim)


class SameRatioSearcher(_SeededSearcher):
    """The same-ratio baseline: one random value for every dimension, so every group sits at
    the same position of its ratio range (config name `same_ratio`). Start policies run as its
    first trials, verbatim; their points (a Torch-Pruning policy's is not one shared value)
    lie off the diagonal its own points keep to, and it learns from neither."""

    def _propose(self, trial_id: str) -> np.ndarray:
        return np.full(self.space.dim, self._rng.random())
