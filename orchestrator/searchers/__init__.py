"""Searchers: Ray Tune `Searcher`s over a `PruningSpace`, one algorithm per private module."""

from __future__ import annotations

import importlib
from typing import Any

from ._base import FINAL_KEY, Observation, PolicySearcher, SearcherError
from ._random import RandomSearcher, UniformSearcher

__all__ = ["FINAL_KEY", "Observation", "PolicySearcher", "RandomSearcher", "SearcherError",
           "UniformSearcher", "make_searcher", "SEARCHERS"]

SEARCHERS: dict[str, str] = {
    "random": "prunetune.orchestrator.searchers._random:RandomSearcher",
    "uniform": "prunetune.orchestrator.searchers._random:UniformSearcher",
    "bo": "prunetune.orchestrator.searchers._bo:BOSearcher",
    "rl": "prunetune.orchestrator.searchers._rl:RLSearcher",
}


def make_searcher(name: str, *, space: Any, metric: str, mode: str, seed: int,
                  options: dict[str, Any] | None = None) -> PolicySearcher:
    """Build a searcher by short name (`random`, `uniform`, ...) or `package.module:Class`."""
    target = SEARCHERS.get(name, name)
    if ":" not in target:
        raise SearcherError(f"unknown searcher {name!r}; use one of {', '.join(SEARCHERS)} or "
                            "'package.module:Class'")
    module_name, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise SearcherError(f"searcher {name!r}: cannot import {attr!r} from {module_name!r} "
                            f"({err})") from err
    return cls(space=space, metric=metric, mode=mode, seed=seed, **(options or {}))
