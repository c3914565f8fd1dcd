"""Searchers: Ray Tune `Searcher`s over a `SearchSpace`, one algorithm per private module.

Every built-in searcher is importable from here (`from prunetune.orchestrator.searchers import
BOSearcher`); the BoTorch- and torch-based ones load on first use, so importing this package
stays cheap. `make_searcher` builds one by its config name. The conformance suite a searcher
must pass ships as pytest mixins in `prunetune.orchestrator.searchers.testing`.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Sequence
from typing import Any

from prunetune.search_spaces import SearchSpace

from ._base import (
    FINAL_KEY,
    SEARCHER_STATE_SCHEMA,
    Observation,
    PolicySearcher,
    PriorTrial,
    SearcherError,
    StartPolicies,
    TrialOutcome,
)
from ._random import RandomSearcher, SameRatioSearcher

__all__ = ["FINAL_KEY", "SEARCHERS", "SEARCHER_STATE_SCHEMA", "AcqSettings", "BOSearcher",
           "GPSettings", "Observation", "PolicySearcher", "PriorTrial", "RLSearcher",
           "RandomSearcher", "RollbackSchedule", "SameRatioSearcher", "SearcherError",
           "StartPolicies", "TrialOutcome", "check_options", "make_searcher", "searcher_class"]

# Config names (`search.searcher`) of the built-in searchers.
SEARCHERS: dict[str, str] = {
    "random": "prunetune.orchestrator.searchers._random:RandomSearcher",
    "same_ratio": "prunetune.orchestrator.searchers._random:SameRatioSearcher",
    "bo": "prunetune.orchestrator.searchers._bo:BOSearcher",
    "rl": "prunetune.orchestrator.searchers._rl:RLSearcher",
}
# Names exported lazily, by the private module that defines them.
_LAZY = {"BOSearcher": "_bo", "RollbackSchedule": "_bo", "GPSettings": "_bo_models",
         "AcqSettings": "_bo_models", "RLSearcher": "_rl"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def searcher_class(name: str) -> type[PolicySearcher]:
    """The class behind a searcher name: a config name (`random`, `same_ratio`, `bo`, `rl`) or
    `package.module:Class`. Raises SearcherError for an unknown or unimportable name."""
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
    if not (isinstance(cls, type) and issubclass(cls, PolicySearcher)):
        raise SearcherError(f"searcher {name!r} is {cls!r}, not a PolicySearcher subclass")
    return cls


def check_options(name: str, options: dict[str, Any] | None) -> type[PolicySearcher]:
    """The searcher class of `name`, once its constructor is known to take `options` (so a
    misspelt option fails before any training, not after)."""
    cls = searcher_class(name)
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return cls
    allowed = sorted(n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY
                     and n not in ("space", "metric", "mode", "seed", "start_policies"))
    unknown = sorted(set(options or {}) - set(allowed))
    if unknown:
        raise SearcherError(f"search.searcher_options: {unknown} not options of searcher "
                            f"{name!r}; its options are {', '.join(allowed) or 'none'}")
    return cls


def make_searcher(name: str, *, space: SearchSpace, metric: str, mode: str, seed: int,
                  options: dict[str, Any] | None = None,
                  start_policies: StartPolicies | None = None,
                  prior: Sequence[PriorTrial] | None = None) -> PolicySearcher:
    """Build a searcher by config name or `package.module:Class` (see `searcher_class`);
    `start_policies` go out first (`PolicySearcher.set_start_policies`, so a user's searcher
    whose constructor does not take them gets them too); `prior`: earlier searches' finished
    trials to learn from (`PolicySearcher.set_prior`, `search.warm_start`)."""
    cls = check_options(name, options)
    searcher = cls(space=space, metric=metric, mode=mode, seed=seed, **(options or {}))
    if start_policies:
        searcher.set_start_policies(start_policies)
    if prior:
        searcher.set_prior(prior)
    return searcher
