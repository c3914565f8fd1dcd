"""The narrow base every prunetune searcher shares.

A searcher proposes points `x` in a `SearchSpace`'s box `[0, 1]^d`; the space decodes each
point into a `Policy` that meets the resource budget. The base owns the Ray Tune protocol
(`suggest`, `on_trial_complete`, `save` / `restore`), following Ray's own `OptunaSearch`: a map
from Tune trial id to the live point, each completion mapped to one `TrialOutcome`, a second
completion of the same trial ignored (and logged), and explicit JSON state written atomically.
Algorithms fill in hooks instead of overriding the protocol (as Optuna's samplers fill in
`after_trial`):

- `_propose(trial_id) -> np.ndarray | None`: the next `d` vector (None: not ready, ask later);
- `_observe(trial_id, x, values)`: a trial ended with its final result; `values` holds every
  finite number it reported (each of `objectives` among them);
- `_discard(trial_id, outcome)`: a trial ended without one (stopped early, or failed);
- `objectives`: the metrics a final result must carry, finite, to count (default: `metric`);
- `_algorithm_state()` / `_load_algorithm_state(state)`: the algorithm's own explicit state;
- `_start(trial_id, x) -> np.ndarray`: a start policy goes out as trial `trial_id` at point
  `x` (the space's `nearest_point` of it); returns the point to learn it at (default `x`);
- `_learn_prior()`: prior trials were set (`self.prior`); default: nothing to learn.

Prior trials (`set_prior`, from `search.warm_start`): earlier searches' finished trials, each
kept as its label, its point (the space's `nearest_point` of its policy) and its metrics, in
the saved state, so a resumed search neither loses nor repeats them. The base only drops the
start policies a prior trial already ran (its result is known); what else they teach is the
algorithm's (`bo`: prior observations in its GP's data; `rl`: source experience).

Start policies (`start_policies=` or `set_start_policies`, e.g. the free baselines of
`search.start_from`): `suggest` hands them out first, each verbatim as the trial's `policy`
(never a decode of a point), with `start_from` naming it and `x` the space's nearest point, so
the algorithm learns from its result like from its own trials (they count toward an initial
design or warm-up, which `n_suggested` measures). The state keeps which went out already.

Tune's semantics, for any objective: `metric` and `mode` come from the searcher's arguments or
from `tune.TuneConfig` (Tune hands those to a searcher with the `param_space`; the searcher then
re-reads its objective directions); a result counts once Tune completes its trial. prunetune's
trial function also marks its last report `final`: then a trial completed with a result not so
marked was stopped early by a scheduler such as ASHA, and is recorded as stopped, never learned
from, unless a `RunConfig(stop=...)` rule ended it (Tune passes its stop rules to a searcher only
along with a non-empty `param_space`). With `learn_from_stopped=True` the last result of every
trial a scheduler or stop rule ended is learned from, as Ray's own searchers (Optuna, HyperOpt)
learn from `on_trial_complete`'s result: the choice when trials end at ASHA's `max_t` or a stop
rule before their last report. Without it, the first trial recorded as stopped while none has
been learned from logs one warning that says so and what to do. An objective that never reports
`final` has each trial's last result learned from (and one warning says that scheduler-stopped
trials cannot then be told apart). A `param_space` holding search domains is refused
(`set_search_properties` returns False, and Tune says so): the space is the searcher's.
"""

from __future__ import annotations

import abc
import enum
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from ray.tune.search import Searcher

from prunetune.errors import SearcherError
from prunetune.files import atomic_write_json
from prunetune.search_spaces import Policy, SearchSpace
from prunetune.trainers.trial import FINAL_KEY

__all__ = ["FINAL_KEY", "SEARCHER_STATE_SCHEMA", "Observation", "PolicySearcher", "PriorTrial",
           "SearcherError", "StartPolicies", "TrialOutcome", "check_state_schema"]

logger = logging.getLogger(__name__)

# Version of the saved state's layout; a state of another version is refused, not guessed at.
SEARCHER_STATE_SCHEMA = 1


class TrialOutcome(enum.StrEnum):
    """How a trial ended, as the searcher sees it."""

    FINAL = "final"  # its final result, carrying every objective: learned from
    STOPPED = "stopped"  # ended early by a scheduler: its result is an intermediate one
    ERROR = "error"  # raised, or its final result lacks a finite objective value


@dataclass
class Observation:
    trial_id: str
    x: list[float]  # the point in the space of its `stage`
    value: float | None  # the metric's value (None unless status is FINAL)
    status: TrialOutcome
    stage: int = 0  # index of the space the point was proposed in (BO roll-back)

    def to_dict(self) -> dict[str, Any]:
        return {"trial_id": self.trial_id, "x": self.x, "value": self.value,
                "status": self.status.value, "stage": self.stage}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Observation:
        return cls(raw["trial_id"], list(raw["x"]), raw["value"], TrialOutcome(raw["status"]),
                   int(raw["stage"]))


@dataclass
class PriorTrial:
    """A finished trial of an earlier search (`search.warm_start`): its policy, of this model's
    units only, and its final metrics (the searched metric among them)."""

    label: str  # where it came from: `search/trial-007`
    policy: Policy
    values: dict[str, float]


def _check_mode(mode: str | None) -> None:
    if mode not in (None, "max", "min"):
        raise SearcherError(f"mode must be 'max' or 'min', got {mode!r}")


def check_state_schema(state: Mapping[str, Any], what: str) -> None:
    """Refuse a saved searcher state of another layout version (`SEARCHER_STATE_SCHEMA`)."""
    if state.get("schema") != SEARCHER_STATE_SCHEMA:
        raise SearcherError(f"{what}: the searcher state has schema {state.get('schema')!r}; "
                            f"this prunetune reads schema {SEARCHER_STATE_SCHEMA}. Start a new "
                            "search (a state saved by another version cannot be read)")


StartPolicies = Sequence[Policy | str] | Mapping[str, Policy | str]


def _labelled(policies: StartPolicies) -> list[tuple[str, Policy]]:
    """(label, Policy) pairs of start policies: a mapping's keys label them, a sequence's get
    `start-<i>`; a policy may be given as its JSON."""
    pairs = (list(policies.items()) if isinstance(policies, Mapping) else
             [(f"start-{i}", p) for i, p in enumerate(policies)])
    out = []
    for label, policy in pairs:
        if isinstance(policy, str):
            policy = Policy.from_json(policy)
        if not isinstance(policy, Policy):
            raise SearcherError(f"start policy {label!r} is a {type(policy).__name__}; give "
                                "a Policy or its JSON")
        out.append((str(label), policy))
    return out


def _has_search_domains(config: Any) -> bool:
    """Whether a Tune `param_space` holds something to sample (`tune.uniform`, grid search)."""
    from ray.tune.search.sample import Domain

    if isinstance(config, Domain):
        return True
    if isinstance(config, Mapping):
        return "grid_search" in config or any(_has_search_domains(v) for v in config.values())
    if isinstance(config, (list, tuple)):
        return any(_has_search_domains(v) for v in config)
    return False


def _numbers(result: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a Tune result (booleans and non-numbers left out)."""
    return {k: float(v) for k, v in result.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class PolicySearcher(Searcher, abc.ABC):
    """Base class: a Ray Tune `Searcher` over a `SearchSpace`'s vector.

    Suggested configs carry `x` (the point), `policy` (the decoded Policy as JSON: what the
    trial applies and what is recorded), `stage` (which space the point belongs to; searchers
    that refine the space, like BOCR's roll-back, bump it), `dim` and `seed` (the trial's own
    seed, derived from the searcher's `seed` and the suggestion's index); a start policy's
    also `start_from` (its label). `start_policies`: see the module docstring.
    """

    # The space a config's defaults build for this searcher: its layer grouping under
    # `space.groups: auto` (an int, "auto" for clustered groups, None for one dimension per
    # unit) and whether decoded points are moved onto the budget under `space.budget.fill:
    # null` (see `PruningSpace(n_groups=, fill_budget=)`). Each built-in searcher's values are
    # the ones benchmarks/search_efficiency.py measured best for it; a searcher whose points
    # differ only in how much they prune (same_ratio) must not fill: they would all decode
    # to one policy.
    default_groups: ClassVar[int | str | None] = None
    default_fill_budget: ClassVar[bool] = False
    # Why a searcher is experimental (a search that uses it says so), None when it is not: a
    # searcher measured below random search stays selectable but never silently.
    experimental: ClassVar[str | None] = None

    def __init__(self, *, space: SearchSpace, metric: str | None = None,
                 mode: str | None = None, seed: int = 0,
                 learn_from_stopped: bool = False,
                 start_policies: StartPolicies | None = None) -> None:
        _check_mode(mode)
        super().__init__(metric=metric, mode=mode)
        self.space: SearchSpace = space
        self.seed = seed
        self.stage = 0
        self.n_suggested = 0  # suggestions made so far (the next one's index)
        self._live: dict[str, list[float]] = {}
        self.observations: list[Observation] = []
        self._stop: dict[str, float] = {}  # Tune's RunConfig(stop={...}) rules, if any
        self._warned_no_final = False
        self.learn_from_stopped = bool(learn_from_stopped)
        self._warned_stopped = False
        self._starts: list[tuple[str, Policy]] = []
        self.starts_given = 0  # start policies suggested so far (they go first)
        # Earlier searches' trials: {"label", "x" (point in the first space), "values"}.
        self.prior: list[dict[str, Any]] = []
        if start_policies is not None:
            self.set_start_policies(start_policies)

    # -- what subclasses implement --------------------------------------------------------
    @abc.abstractmethod
    def _propose(self, trial_id: str) -> np.ndarray | None:
        """The next point, a length-`d` array in `[0, 1]^d`, or None when not ready."""

    def _observe(self, trial_id: str, x: np.ndarray, values: Mapping[str, float]) -> None:
        """A trial ended with its final result (no-op for model-free searchers)."""

    def _discard(self, trial_id: str, outcome: TrialOutcome) -> None:
        """A trial ended without a final result (`STOPPED` or `ERROR`)."""

    @property
    def objectives(self) -> tuple[str, ...]:
        """The metrics a final result must carry (finite) to count; `metric` first."""
        return (self.metric,)

    def _search_properties_changed(self) -> None:
        """Tune set another metric or mode (`set_search_properties`): re-read what depends on
        them (BO's objective directions)."""

    def _start(self, trial_id: str, x: np.ndarray) -> np.ndarray:
        """A start policy goes out as trial `trial_id`, approximated by the point `x`: return
        the point to learn its result at (RL records the episode that reaches it)."""
        return x

    def _learn_prior(self) -> None:
        """Prior trials were set (`self.prior`, before any suggestion): learn from them."""

    def _algorithm_state(self) -> dict[str, Any]:
        """The algorithm's own state, JSON-able. The base saves observations itself."""
        return {}

    def _load_algorithm_state(self, state: dict[str, Any]) -> None:
        """Inverse of `_algorithm_state`."""

    # -- Ray Tune protocol -------------------------------------------------------------------
    def set_search_properties(self, metric: str | None, mode: str | None, config: dict,
                              **spec: Any) -> bool:
        """Take Tune's metric, mode and stop rules; False (Ray's "cannot honour this") when
        `config` holds search domains, which this searcher's space replaces."""
        if _has_search_domains(config):
            return False
        _check_mode(mode)
        changed = bool((metric and metric != self._metric) or (mode and mode != self._mode))
        if metric:
            self._metric = metric
        if mode:
            self._mode = mode
        stop = spec.get("stop")
        if isinstance(stop, Mapping):
            self._stop = {k: float(v) for k, v in stop.items()
                          if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if changed:
            self._search_properties_changed()
        return True

    def _require_objective(self) -> None:
        if self.metric is None or self.mode is None:
            raise SearcherError(
                f"{type(self).__name__} has no metric / mode (metric={self.metric!r}, "
                f"mode={self.mode!r}): give metric= and mode= to the searcher, or to "
                "tune.TuneConfig with a non-empty param_space (Tune hands them to a searcher "
                "only along with one; constants such as {'tag': 'prune'} will do)")

    @property
    def pending(self) -> np.ndarray:
        """Points of live trials, an `n_live x d` array (BoTorch's `X_pending`)."""
        pts = [x for x in self._live.values() if len(x) == self.space.dim]
        return np.asarray(pts, dtype=float).reshape(-1, self.space.dim)

    def trial_seed(self, index: int) -> int:
        """The seed of the `index`-th suggested trial: distinct per trial, a function of the
        searcher's `seed` (so a search with the same seed fine-tunes its trials alike)."""
        return int(np.random.SeedSequence([self.seed, index]).generate_state(1)[0])

    def set_start_policies(self, policies: StartPolicies) -> None:
        """The policies the first suggestions run, in order, verbatim (a mapping's keys name
        them in the trials' `start_from`); before the first suggestion only."""
        if self.n_suggested:
            raise SearcherError(f"{type(self).__name__}: start policies must be set before "
                                f"the first suggestion ({self.n_suggested} made); build a new "
                                "searcher")
        starts = _labelled(policies)
        for label, policy in starts:  # a policy of another model fails here, not mid-search
            try:
                self.space.nearest_point(policy)
            except Exception as err:  # a user's space raises what it raises
                raise SearcherError(f"start policy {label!r} does not fit the space: "
                                    f"{err}") from err
        self._starts = starts

    def set_prior(self, trials: Sequence[PriorTrial]) -> None:
        """Finished trials of earlier searches to learn from (`search.warm_start`), before the
        first suggestion only: each is placed at the space's nearest point of its policy (a
        trial without a finite `metric` value is left out), and a start policy one of them
        ran already is dropped (its result is known). Then `_learn_prior`."""
        self._require_objective()
        if self.n_suggested or self.prior:
            raise SearcherError(f"{type(self).__name__}: prior trials must be set once, before "
                                f"the first suggestion ({self.n_suggested} made); build a new "
                                "searcher")
        for trial in trials:
            value = trial.values.get(self.metric)
            if value is None or not math.isfinite(value):
                continue
            try:
                x = np.clip(np.asarray(self.space.nearest_point(trial.policy), dtype=float)
                            .reshape(-1), 0.0, 1.0)
            except Exception as err:  # a user's space raises what it raises
                raise SearcherError(f"prior trial {trial.label!r} does not fit the space: "
                                    f"{err}") from err
            self.prior.append({"label": trial.label, "x": x.tolist(),
                               "values": {k: float(v) for k, v in trial.values.items()}})
        ran = [t.policy for t in trials]
        self._starts = [(label, p) for label, p in self._starts if p not in ran]
        if self.prior:
            self._learn_prior()

    @property
    def start_policies(self) -> list[tuple[str, Policy]]:
        """The start policies as (label, Policy), in the order they go out."""
        return list(self._starts)

    def _suggest_start(self, trial_id: str) -> dict[str, Any]:
        label, policy = self._starts[self.starts_given]
        x = np.clip(np.asarray(self.space.nearest_point(policy), dtype=float).reshape(-1),
                    0.0, 1.0)
        x = np.clip(np.asarray(self._start(trial_id, x), dtype=float).reshape(-1), 0.0, 1.0)
        self.starts_given += 1
        return self._suggested(trial_id, x, policy, start_from=label)

    def _suggested(self, trial_id: str, x: np.ndarray, policy: Policy,
                   **extra: Any) -> dict[str, Any]:
        """Record a suggestion as live and make its trial config."""
        self._live[trial_id] = x.tolist()
        seed = self.trial_seed(self.n_suggested)
        self.n_suggested += 1
        return {"x": x.tolist(), "policy": policy.to_json(), "stage": self.stage,
                "dim": self.space.dim, "seed": seed, **extra}

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        self._require_objective()
        if self.starts_given < len(self._starts):
            return self._suggest_start(trial_id)
        x = self._propose(trial_id)
        if x is None:
            return None
        x = np.clip(np.asarray(x, dtype=float).reshape(-1), 0.0, 1.0)
        if x.shape[0] != self.space.dim:
            raise SearcherError(f"{type(self).__name__} proposed {x.shape[0]} values for a "
                                f"{self.space.dim}-dimensional space")
        return self._suggested(trial_id, x, self.space.decode(x))

    def _outcome(self, result: dict | None, error: bool) -> tuple[TrialOutcome, dict]:
        if error:
            return TrialOutcome.ERROR, {}
        if result is None:  # removed before it reported anything
            return TrialOutcome.STOPPED, {}
        if FINAL_KEY not in result:
            self._warn_no_final()
        elif (not result[FINAL_KEY] and not self.learn_from_stopped
              and not self._ended_by_stop_rule(result)):
            return TrialOutcome.STOPPED, {}
        values = _numbers(result)
        if any(name not in values for name in self.objectives):
            return TrialOutcome.ERROR, {}
        return TrialOutcome.FINAL, values

    def _ended_by_stop_rule(self, result: Mapping[str, Any]) -> bool:
        """A `RunConfig(stop={metric: value})` rule ended the trial (Tune stops at >=)."""
        return any(isinstance(result.get(k), (int, float)) and result[k] >= v
                   for k, v in self._stop.items())

    def _warn_no_final(self) -> None:
        if not self._warned_no_final:
            self._warned_no_final = True
            logger.warning(
                "%s: results carry no %r flag, so each trial's last result is learned from as "
                "its final one, and a trial an early-stopping scheduler (ASHA) ended cannot be "
                "told from a finished one. Report %r: True on a trial's last result (as "
                "prunetune's trial function does) to tell them apart.",
                type(self).__name__, FINAL_KEY, FINAL_KEY)

    def _warn_nothing_learned(self, trial_id: str) -> None:
        """One warning when a trial is recorded as stopped and no trial has been learned from:
        the searcher may be discarding every trial (a scheduler's `max_t` or a stop rule that
        ends trials before their `final` report) and would otherwise search blind, silently."""
        if self._warned_stopped or any(o.status is TrialOutcome.FINAL
                                       for o in self.observations):
            return
        self._warned_stopped = True
        stopped = sum(o.status is TrialOutcome.STOPPED for o in self.observations)
        logger.warning(
            "%s: trial %s ended on a result marked %r: False (a scheduler such as ASHA, or a "
            "RunConfig(stop=...) rule, ended it) and is not learned from; %d trial(s) ended so "
            "far, none learned from. Early-stopped trials are discarded by design. If your "
            "trials end at ASHA's max_t or a stop rule before their final report, pass "
            "learn_from_stopped=True to the searcher (it then learns from each ended trial's "
            "last result, as Ray's own searchers do), or give tune.Tuner a non-empty "
            "param_space such as {'tag': 'prune'} so Tune passes its stop rules to the "
            "searcher, or make max_t the trials' length.",
            type(self).__name__, trial_id, FINAL_KEY, stopped)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        x = self._live.pop(trial_id, None)
        if x is None:  # Tune can complete a trial twice; a trial never suggested is foreign
            logger.debug("%s: ignoring the completion of trial %s (not live: completed "
                         "already, or never suggested here)", type(self).__name__, trial_id)
            return
        outcome, values = self._outcome(result, error)
        value = values[self.metric] if outcome is TrialOutcome.FINAL else None
        self.observations.append(Observation(trial_id, x, value, outcome, self.stage))
        if outcome is TrialOutcome.FINAL:
            self._observe(trial_id, np.asarray(x), values)
        else:
            if outcome is TrialOutcome.STOPPED and result is not None:
                self._warn_nothing_learned(trial_id)
            self._discard(trial_id, outcome)

    # -- helpers for subclasses --------------------------------------------------------------
    def finished(self, stage: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Final observations as (`n x d` points, `n` rewards), sign-flipped for mode 'min'."""
        obs = [o for o in self.observations if o.status is TrialOutcome.FINAL
               and (stage is None or o.stage == stage)]
        if not obs:
            return np.zeros((0, self.space.dim)), np.zeros(0)
        sign = 1.0 if self.mode == "max" else -1.0
        return (np.asarray([o.x for o in obs], dtype=float),
                sign * np.asarray([o.value for o in obs], dtype=float))

    # -- persistence -------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        return {
            "schema": SEARCHER_STATE_SCHEMA,
            "searcher": type(self).__name__,
            "metric": self.metric,
            "mode": self.mode,
            "seed": self.seed,
            "stage": self.stage,
            "n_suggested": self.n_suggested,
            "stop": self._stop,
            "live": self._live,
            "observations": [o.to_dict() for o in self.observations],
            "start": {"policies": [[label, p.to_json()] for label, p in self._starts],
                      "given": self.starts_given},
            "prior": self.prior,
            "algorithm": self._algorithm_state(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        check_state_schema(state, "restore")
        if state.get("searcher") != type(self).__name__:
            raise SearcherError(f"state was saved by {state.get('searcher')!r}, cannot restore "
                                f"it into {type(self).__name__}")
        self._metric, self._mode = state["metric"], state["mode"]
        self.seed, self.stage = state["seed"], state["stage"]
        self.n_suggested = int(state["n_suggested"])
        self._stop = dict(state["stop"])
        self._live = {k: list(v) for k, v in state["live"].items()}
        self.observations = [Observation.from_dict(o) for o in state["observations"]]
        start = state.get("start")
        if start is not None:  # what the search ran wins over what this object was given
            self._starts = _labelled(dict(start["policies"]))
            self.starts_given = int(start["given"])
        else:  # saved before start policies existed: never run them mid-search
            self.starts_given = len(self._starts) if self.n_suggested else 0
        # What the search learned from earlier ones (none in a state saved before warm starts).
        self.prior = [dict(p) for p in state.get("prior", [])]
        self._load_algorithm_state(state["algorithm"])

    def save(self, checkpoint_path: str) -> None:
        atomic_write_json(checkpoint_path, self.get_state())

    def restore(self, checkpoint_path: str) -> None:
        try:
            with open(checkpoint_path) as f:
                state = json.load(f)
        except (OSError, json.JSONDecodeError) as err:
            raise SearcherError(f"cannot read searcher state {checkpoint_path}: {err}") from err
        if not isinstance(state, dict):
            raise SearcherError(f"searcher state {checkpoint_path} holds a "
                                f"{type(state).__name__}, not a state object")
        self.set_state(state)
