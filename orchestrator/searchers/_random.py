"""Random search and the uniform-ratio baseline."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._base import PolicySearcher

__all__ = ["RandomSearcher", "UniformSearcher"]


class _SeededSearcher(PolicySearcher):
    """A searcher whose only state is a NumPy generator, saved as its bit-generator state."""

    def __init__(self, *, space: Any, metric: str = "accuracy", mode: str = "max",
                 seed: int = 0) -> None:
        super().__init__(space=space, metric=metric, mode=mode, seed=seed)
        self._rng = np.random.default_rng(seed)

    def _algorithm_state(self) -> dict[str, Any]:
        return {"rng": self._rng.bit_generator.state}

    def _load_algorithm_state(self, state: dict[str, Any]) -> None:
        self._rng = np.random.default_rng()
        self._rng.bit_generator.state = state["rng"]


class RandomSearcher(_SeededSearcher):
    """Independent uniform points in the space's current bounds."""

    def _propose(self, trial_id: str) -> np.ndarray:
        lo, hi = (np.asarray(b, dtype=float) for b in self.space.bounds)
        return lo + (hi - lo) * self._rng.random(self.space.dim)


class UniformSearcher(_SeededSearcher):
    """The uniform-ratio baseline: every dimension gets the same random value."""

    def _propose(self, trial_id: str) -> np.ndarray:
        return np.full(self.space.dim, self._rng.random())
