"""BOCR: Bayesian optimisation over clustered layer groups with roll-back.

Bayesian optimisation of a pruning policy stays sample-efficient on deep models by searching
first over a few clusters of similar layers (the space's groups), then *rolling back* to finer
groupings (a bridge grouping, then one dimension per unit), each time re-expressing every past
observation in the finer space and narrowing the search box to the range of the best policies
(BOCR, "Bayesian Optimization with Clustering and Rollback for CNN Auto Pruning", ECCV 2022).
The space owns grouping, re-expression and narrowing (`PruningSpace.refine`); this searcher
owns when to do it and the BO loop:

- an initial design of `n_init` points: the start policies (`start_policies`, e.g. the free
  baselines), then scrambled Sobol points; prior trials of earlier searches (`set_prior`,
  `search.warm_start`) join the GP's data as observations at their nearest points (re-expressed
  at each roll-back like the search's own) and shrink the design by one point each, but do not
  count toward a roll-back's trial counts;
- one `SingleTaskGP` per objective (`Normalize` over the current box, `Standardize`),
  hyper-parameters warm-started from the previous fit with capped L-BFGS iterations so that
  `suggest` stays fast;
- `qLogNoisyExpectedImprovement` (single objective) or `qLogNoisyExpectedHypervolumeImprovement`
  over a `ModelListGP` (`objectives=("accuracy", "latency_ms")`), with the live trials as
  `X_pending` so concurrent trials get different suggestions;
- `optimize_acqf` over the current box with bounded restarts and raw samples.

Every suggestion is a function of the saved state (the torch RNG is seeded from the searcher's
seed and the number of suggestions so far; fitted GP hyper-parameters are part of the state),
so `save` / `restore` resumes with the same next suggestion.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from torch.quasirandom import SobolEngine

from prunetune.kernels.latency import torch_threads
from prunetune.search_spaces import SearchSpace

from ._base import Observation, PolicySearcher, SearcherError, StartPolicies, TrialOutcome
from ._bo_models import (
    DTYPE,
    AcqSettings,
    GPSettings,
    Hypers,
    fit_gps,
    pareto_mask,
    propose_multi,
    propose_single,
    reference_point,
    seeded,
)

__all__ = ["OBJECTIVE_MODES", "AcqSettings", "BOSearcher", "GPSettings", "RollbackSchedule"]

# Direction of the metrics trials report, for multi-objective searches.
OBJECTIVE_MODES: dict[str, str] = {
    "accuracy": "max", "speedup": "max", "latency_ms": "min", "flops_ratio": "min",
    "params_ratio": "min", "flops": "min", "params": "min", "accuracy_drop": "min",
}
# Hypervolume reference values the dense model gives (raw units): a pruned model that is no
# faster / smaller than the dense one adds nothing. latency_ms comes from the trials' reports.
_DENSE_REFERENCE: dict[str, float] = {"flops_ratio": 1.0, "params_ratio": 1.0, "speedup": 1.0}
_DENSE_KEYS: dict[str, str] = {"latency_ms": "dense_latency_ms"}


@dataclass(frozen=True)
class RollbackSchedule:
    """When and how BOCR rolls back to a finer grouping.

    A roll-back happens when the current stage has at least `min_trials` finished trials (the
    first stage counting from the end of the initial design) and either the last `stall`
    finished trials brought no improvement (a stall; `None` disables) or the search has
    `at[stage]` finished trials in all (scheduled; `()` disables).
    `stages` lists the groupings to roll back to, in order: an int is a number of groups,
    `"bridge"` the geometric mean of the current dimension and the number of units, `"full"`
    one dimension per unit. `top_n`, `margin`: the box is narrowed to the range of the best
    `top_n` policies, widened by `margin` on each side (a wider margin leaves BO room to leave
    the coarse stage's optimum, which matters when the coarse grouping was too coarse).
    `margin` is one number for every roll-back or one per entry of `stages` (for example
    narrow for the bridge stage and 1.0, the whole box, for the full one).
    `design`: Sobol points drawn in the new box right after each roll-back, before BO resumes.
    The re-expressed observations vary only group by group (the coarse stage moved a group's
    units together), so they cannot tell the GP which of a group's units matter; a few
    points that move every dimension on its own can.
    """

    # The defaults are the best schedule measured in benchmarks/search_efficiency.py (margins
    # 0.1-0.5 and the whole box, roll-backs at 30/60 and 40/80, stalls of 10 and 15, with and
    # without the Sobol points): a clustered stage that stalls or reaches 30 trials hands
    # over to the bridge grouping, which hands over to one dimension per unit at 60, so a
    # search of 100-200 trials spends most of them in the finest space.
    stall: int | None = 10
    at: tuple[int, ...] = (30, 60)
    stages: tuple[int | str, ...] = ("bridge", "full")
    top_n: int = 5
    margin: float | tuple[float, ...] = 0.5
    min_trials: int = 10
    design: int = 5

    def __post_init__(self) -> None:
        for stage in self.stages:
            if not (stage in ("bridge", "full") or (isinstance(stage, int) and stage >= 1)):
                raise SearcherError(f"rollback.stages entries must be 'bridge', 'full' or a "
                                    f"number of groups >= 1, got {stage!r}")
        if self.stall is not None and self.stall < 1:
            raise SearcherError(f"rollback.stall must be >= 1 or None, got {self.stall}")
        if self.top_n < 1:
            raise SearcherError(f"rollback.top_n must be >= 1, got {self.top_n}")
        if isinstance(self.design, bool) or not isinstance(self.design, int) or self.design < 0:
            raise SearcherError(f"rollback.design must be an integer >= 0 (Sobol points after "
                                f"each roll-back), got {self.design!r}")
        margins = self.margin if isinstance(self.margin, tuple) else (self.margin,)
        if isinstance(self.margin, tuple) and len(margins) != len(self.stages):
            raise SearcherError(f"rollback.margin must be one number or one per stage "
                                f"({len(self.stages)}: {list(self.stages)}), got "
                                f"{list(self.margin)}")
        if any(isinstance(m, bool) or not isinstance(m, (int, float)) or not 0.0 <= m <= 1.0
               for m in margins):
            raise SearcherError(f"rollback.margin must be in [0, 1] (one number or one per "
                                f"stage), got {self.margin!r}")
        if list(self.at) != sorted(self.at):
            raise SearcherError(f"rollback.at must be increasing trial counts, got {self.at}")
        if self.stall is None and not self.at:
            raise SearcherError("rollback needs a trigger: set rollback.stall (trials without "
                                "improvement) and/or rollback.at (trial counts), or disable "
                                "roll-back with rollback: false")

    def margin_at(self, stage: int) -> float:
        """The margin of the roll-back into `stages[stage]`."""
        return float(self.margin[stage] if isinstance(self.margin, tuple) else self.margin)


def _settings(cls: type, value: Any, name: str) -> Any:
    """Build a settings dataclass from an instance, a mapping (YAML) or None (defaults)."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        allowed = {f.name for f in fields(cls)}
        unknown = set(value) - allowed
        if unknown:
            raise SearcherError(f"unknown {name} option(s) {sorted(unknown)}; allowed: "
                                f"{sorted(allowed)}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as err:
            raise SearcherError(f"{name}: {err}") from err
    raise SearcherError(f"{name} must be a {cls.__name__}, a mapping or None, got {value!r}")


class BOSearcher(PolicySearcher):
    """BOCR Bayesian optimisation as a Ray Tune `Searcher` (see the module docstring).

    Keyword-only arguments beyond the base's: `n_init` points of initial design before BO
    (the start policies first, then Sobol points); `rollback` a
    `RollbackSchedule`, a mapping of its fields, or False / None for no roll-back (plain BO over
    the space's groups); `objectives` None for single-objective on `metric`, or metric names
    with `objectives[0] == metric` for multi-objective; `objective_modes` their directions
    (default from `OBJECTIVE_MODES`); `ref_point` the hypervolume reference in raw units
    (default: from the dense model where known, else inferred); `gp` / `acq` fitting and
    acquisition budgets; `max_fit_points` caps the GP's training set (best half plus most
    recent), keeping `suggest` fast on long searches; `threads` torch threads while
    suggesting (None: leave torch's setting).
    """

    # BOCR starts from clustered layer groups and rolls back to one dimension per unit.
    default_groups = "auto"
    # Points decoded onto the budget: BO's initial design and first proposals then prune no
    # more than they must (measured: benchmarks/README, search efficiency).
    default_fill_budget = True

    def __init__(self, *, space: SearchSpace, metric: str | None = None,
                 mode: str | None = None,
                 seed: int = 0, n_init: int = 10,
                 rollback: RollbackSchedule | Mapping[str, Any] | bool | None = True,
                 objectives: Sequence[str] | None = None,
                 objective_modes: Sequence[str] | None = None,
                 ref_point: Sequence[float] | None = None,
                 gp: GPSettings | Mapping[str, Any] | None = None,
                 acq: AcqSettings | Mapping[str, Any] | None = None,
                 max_fit_points: int | None = 300, threads: int | None = 1,
                 learn_from_stopped: bool = False,
                 start_policies: StartPolicies | None = None) -> None:
        super().__init__(space=space, metric=metric, mode=mode, seed=seed,
                         learn_from_stopped=learn_from_stopped, start_policies=start_policies)
        if n_init < 1:
            raise SearcherError(f"n_init must be >= 1, got {n_init}")
        self.n_init = n_init
        if rollback is True:
            rollback = RollbackSchedule()
        self.rollback: RollbackSchedule | None = (
            None if rollback is False or rollback is None
            else _settings(RollbackSchedule, rollback, "rollback"))
        # The directions follow `metric` / `mode`, which Tune may set later
        # (`_search_properties_changed`), so the arguments are kept and resolved on use.
        self._objective_args = (None if objectives is None else list(objectives),
                                None if objective_modes is None else list(objective_modes))
        if self.metric is not None and self.mode is not None:
            self._resolve_objectives()
        n_objectives = len(objectives) if objectives is not None else 1
        if ref_point is not None and len(ref_point) != n_objectives:
            raise SearcherError(f"ref_point needs one value per objective "
                                f"({n_objectives}: {objectives or [metric]}), got "
                                f"{list(ref_point)}")
        self.ref_point = None if ref_point is None else [float(v) for v in ref_point]
        self.gp_settings: GPSettings = _settings(GPSettings, gp, "gp")
        self.acq_settings: AcqSettings = _settings(AcqSettings, acq, "acq")
        if max_fit_points is not None and max_fit_points < 4:
            raise SearcherError(f"max_fit_points must be >= 4 or None, got {max_fit_points}")
        self.max_fit_points = max_fit_points
        self.threads = threads
        self._root_space = space
        self._hypers: list[Hypers] | None = None
        self._fit_key: list[int] | None = None
        self._rollbacks: list[dict[str, Any]] = []
        self._x_now: dict[str, list[float]] = {}
        self._extra: dict[str, list[float]] = {}
        self._dense: dict[str, float] = {}

    def _resolve_objectives(self) -> tuple[list[str], list[str]]:
        """(objective names, their directions) for the current metric and mode; raises
        SearcherError when the `objectives` / `objective_modes` given do not fit them."""
        objectives, modes = self._objective_args
        if objectives is None:
            return [self.metric], [self.mode]
        objectives = list(objectives)
        if not objectives or objectives[0] != self.metric:
            raise SearcherError(f"objectives must start with the searched metric "
                                f"{self.metric!r}, got {objectives}; e.g. objectives: "
                                f"[{self.metric}, latency_ms]")
        if modes is None:
            unknown = [o for o in objectives[1:] if o not in OBJECTIVE_MODES]
            if unknown:
                raise SearcherError(f"no default direction for objective(s) {unknown}; give "
                                    f"objective_modes (one 'max' / 'min' per objective)")
            modes = [self.mode] + [OBJECTIVE_MODES[o] for o in objectives[1:]]
        modes = list(modes)
        if len(modes) != len(objectives) or any(m not in ("max", "min") for m in modes):
            raise SearcherError(f"objective_modes must be one 'max' / 'min' per objective "
                                f"{objectives}, got {modes}")
        if modes[0] != self.mode:
            raise SearcherError(f"objective_modes[0] must equal mode {self.mode!r}, got "
                                f"{modes[0]!r}")
        return objectives, modes

    def _search_properties_changed(self) -> None:
        self._resolve_objectives()  # a metric or mode that does not fit fails now, not later

    @property
    def objectives(self) -> tuple[str, ...]:
        return tuple(self._resolve_objectives()[0])

    @property
    def objective_modes(self) -> list[str]:
        return self._resolve_objectives()[1]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    # -- data -------------------------------------------------------------------------------
    def _finals(self) -> list[Observation]:
        obs = [o for o in self.observations if o.status is TrialOutcome.FINAL]
        if self.multi_objective:
            obs = [o for o in obs if o.trial_id in self._extra]
        return obs

    def _prior_rows(self) -> list[tuple[Observation, list[float]]]:
        """The prior trials (`search.warm_start`) as observations of the first space, with
        their outcomes (metric first); those lacking an objective are left out."""
        rows = []
        for i, p in enumerate(self.prior):
            values = [p["values"].get(k) for k in self.objectives]
            if all(v is not None and math.isfinite(v) for v in values):
                rows.append((Observation(f"prior:{i}", p["x"], values[0], TrialOutcome.FINAL,
                                         0), values))
        return rows

    def _design(self) -> int:
        """Points of initial design (start policies, then Sobol): `n_init`, less one per
        prior trial, since those already tell the GP what the space looks like."""
        return max(0, self.n_init - len(self._prior_rows()))

    def _point(self, obs: Observation) -> list[float]:
        """An observation's point in the current space (re-expressed if from an earlier one)."""
        if obs.stage == self.stage and len(obs.x) == self.space.dim:
            return obs.x
        if obs.trial_id in self._x_now:
            return self._x_now[obs.trial_id]
        raise SearcherError(f"observation {obs.trial_id!r} of stage {obs.stage} was not "
                            f"re-expressed in stage {self.stage}; the searcher state is "
                            "inconsistent")

    def _data(self, prior: bool = True) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(trial ids, `n x d` points in the current space, `n x m` outcomes to maximise):
        the prior trials first (unless `prior=False`), then this search's."""
        rows = [(o, [o.value] + self._extra.get(o.trial_id, [])) for o in self._finals()]
        if prior:
            rows = self._prior_rows() + rows
        d, m = self.space.dim, len(self.objectives)
        if not rows:
            return [], np.zeros((0, d)), np.zeros((0, m))
        signs = np.array([1.0 if md == "max" else -1.0 for md in self.objective_modes])
        return ([o.trial_id for o, _ in rows], np.asarray([self._point(o) for o, _ in rows]),
                np.asarray([r for _, r in rows], dtype=float) * signs)

    def finished(self, stage: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Final observations as (`n x d` points, `n` rewards, sign-flipped for mode 'min').

        With `stage=None` every observation is given in the current space (earlier ones
        re-expressed by roll-back), unlike the base, whose points keep their own stage's
        dimension."""
        if stage is not None:
            return super().finished(stage)
        _, X, Y = self._data(prior=False)
        return X, Y[:, 0] if len(Y) else np.zeros(0)

    def pareto(self) -> list[dict[str, Any]]:
        """The non-dominated finished trials: [{"trial_id", objective name: raw value, ...}]."""
        tids, _, Y = self._data(prior=False)
        if not tids:
            return []
        mask = pareto_mask(torch.as_tensor(Y, dtype=DTYPE)).numpy()
        signs = [1.0 if md == "max" else -1.0 for md in self.objective_modes]
        return [{"trial_id": t, **{k: float(v * s) for k, v, s in
                                   zip(self.objectives, Y[i], signs, strict=True)}}
                for i, t in enumerate(tids) if mask[i]]

    def _observe(self, trial_id: str, x: np.ndarray, values: Mapping[str, float]) -> None:
        # The base checked that every objective is there; the GP reads the metric from the
        # observation and the other objectives from here.
        if not self.multi_objective:
            return
        self._extra[trial_id] = [values[k] for k in self.objectives[1:]]
        for objective, key in _DENSE_KEYS.items():
            if key in values and objective not in self._dense:
                self._dense[objective] = values[key]

    # -- proposing --------------------------------------------------------------------------
    def _bounds(self) -> torch.Tensor:
        b = torch.as_tensor(np.asarray(self.space.bounds, dtype=float), dtype=DTYPE)
        if b.shape != (2, self.space.dim):
            raise SearcherError(f"space.bounds must be 2 x {self.space.dim}, got "
                                f"{tuple(b.shape)}")
        return b

    def _seed_for(self, salt: int) -> int:
        return (self.seed * 1_000_003 + self.n_suggested * 7_919 + salt) % (2**31 - 1)

    def _sobol(self) -> np.ndarray:
        # One scrambled sequence per (seed, stage), indexed by the suggestion count, so the
        # initial design is reproducible after restore without saving an engine.
        engine = SobolEngine(self.space.dim, scramble=True, seed=self.seed + 7 * self.stage)
        # The first stage's start policies took the design's first places, not its points.
        start = self._stage_start() if self._rollbacks else self.starts_given
        if self.n_suggested > start:  # a stage's design starts at its sequence's start
            engine.fast_forward(self.n_suggested - start)
        u = engine.draw(1, dtype=DTYPE).reshape(-1)
        lo, hi = self._bounds()
        return (lo + (hi - lo) * u).numpy()

    def _subsample(self, X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cap = self.max_fit_points
        if cap is None or len(X) <= cap:
            return X, Y
        # Best half by the first objective (where the optimum is) plus the most recent rest
        # (what the current box looks like); an exact GP on all of them would cost O(n^3).
        order = np.argsort(-Y[:, 0], kind="stable")
        keep = set(order[: cap // 2].tolist())
        for i in range(len(X) - 1, -1, -1):
            if len(keep) >= cap:
                break
            keep.add(i)
        idx = np.array(sorted(keep))
        return X[idx], Y[idx]

    def _reference(self, Y: torch.Tensor) -> torch.Tensor:
        signs = [1.0 if md == "max" else -1.0 for md in self.objective_modes]
        if self.ref_point is not None:
            return torch.tensor([v * s for v, s in zip(self.ref_point, signs, strict=True)],
                                dtype=DTYPE)
        known = []
        for name, s in zip(self.objectives, signs, strict=True):
            value = self._dense.get(name, _DENSE_REFERENCE.get(name))
            known.append(None if value is None else value * s)
        return reference_point(Y, known)

    def _bo_point(self, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
        n = len(X)  # the data the GP learns from, prior trials included
        X, Y = self._subsample(X, Y)
        Xt, Yt = torch.as_tensor(X, dtype=DTYPE), torch.as_tensor(Y, dtype=DTYPE)
        bounds = self._bounds()
        # Refit when the space changed or the data grew enough (GPSettings.refit_growth);
        # otherwise the GP is rebuilt from the saved hyper-parameters, exactly as it would be
        # after a restore, so a suggestion does not depend on an in-memory model.
        n = len(X)
        key = [self.stage, n]
        refit = (self._hypers is None or self._fit_key is None
                 or self._fit_key[0] != self.stage
                 or n - self._fit_key[1] >= max(1.0, self.gp_settings.refit_growth
                                                * self._fit_key[1]))
        with seeded(self._seed_for(1)):
            model, hypers = fit_gps(Xt, Yt, bounds, self._hypers, fit=refit,
                                    settings=self.gp_settings,
                                    categorical=self.space.categorical_dims() or None)
        if refit:
            self._hypers, self._fit_key = hypers, key
        pending = torch.as_tensor(self.pending, dtype=DTYPE)
        with seeded(self._seed_for(2)):
            if self.multi_objective:
                x = propose_multi(model, Xt, pending, bounds, self._reference(Yt),
                                  self.acq_settings)
            else:
                x = propose_single(model, Xt, pending, bounds, self.acq_settings)
        return x.numpy()

    def _stage_start(self) -> int:
        """Suggestions made before the current stage began (0 in the first stage)."""
        return self._rollbacks[-1]["n_suggested"] if self._rollbacks else 0

    def _in_rollback_design(self) -> bool:
        """Whether the next suggestion is one of the Sobol points after the last roll-back."""
        if not self._rollbacks or self.rollback is None:
            return False
        return self.n_suggested - self._stage_start() < self.rollback.design

    def _propose(self, trial_id: str) -> np.ndarray:
        self._maybe_rollback()
        _, X, Y = self._data()
        need = 3 if self.multi_objective else 2
        if self.n_suggested < self._design() or len(X) < need or self._in_rollback_design():
            return self._sobol()
        with torch_threads(self.threads):
            return self._bo_point(X, Y)

    # -- roll-back --------------------------------------------------------------------------
    def _improvements(self, Y: np.ndarray) -> np.ndarray:
        """Length-`n` booleans: did observation i improve on all before it? (single objective:
        a new best; multi-objective: not dominated by any earlier one)."""
        out = np.zeros(len(Y), dtype=bool)
        for i in range(len(Y)):
            if i == 0:
                out[i] = True
            elif Y.shape[1] == 1:
                out[i] = Y[i, 0] > Y[:i, 0].max()
            else:
                out[i] = not np.any(np.all(Y[:i] >= Y[i], axis=1)
                                    & np.any(Y[:i] > Y[i], axis=1))
        return out

    def _rollback_due(self, Y: np.ndarray) -> bool:
        rb = self.rollback
        if rb is None or self.stage >= len(rb.stages):
            return False
        # A stage starts after the last roll-back, or after the initial design: a stall is
        # counted over BO's own proposals, never over the Sobol points. `Y` holds this
        # search's trials only: prior ones do not hasten a roll-back.
        since = self._rollbacks[-1]["n_final"] if self._rollbacks else self._design()
        in_stage = len(Y) - since
        if in_stage < rb.min_trials:
            return False
        if self.stage < len(rb.at) and len(Y) >= rb.at[self.stage]:
            return True
        return (rb.stall is not None and in_stage >= rb.stall
                and not self._improvements(Y)[-rb.stall:].any())

    def _target_groups(self, spec: int | str) -> int | None:
        """The `n_groups` to pass to `space.refine` for a stage spec; None: one per unit."""
        units, k = self.space.n_units, self.space.k
        if spec == "bridge":
            target = max(k + 1, round(math.sqrt(k * units)))
        elif spec == "full":
            target = units
        else:
            target = max(k + 1, int(spec))
        return None if target >= units else target

    def _score(self, Y: np.ndarray) -> np.ndarray:
        """One number per observation for `refine`'s top-n (higher is better): the objective,
        or for several objectives minus the Pareto rank, ties broken by the first one."""
        if Y.shape[1] == 1:
            return Y[:, 0]
        rank = np.zeros(len(Y))
        left = np.arange(len(Y))
        level = 0
        while len(left):
            front = pareto_mask(torch.as_tensor(Y[left], dtype=DTYPE)).numpy()
            rank[left[front]] = level
            left = left[~front]
            level += 1
        span = np.ptp(Y[:, 0]) or 1.0
        return -rank + 0.5 * (Y[:, 0] - Y[:, 0].min()) / span

    def _maybe_rollback(self) -> None:
        tids, X, Y = self._data()
        own = len(self._data(prior=False)[0])
        if not self._rollback_due(Y[len(Y) - own:]):
            return
        if self.space.k >= self.space.n_units:
            return  # already one dimension per unit: nothing finer to roll back to
        score = self._score(Y)
        live_ids = list(self._live)
        live = np.asarray([self._live[t] for t in live_ids], dtype=float).reshape(
            -1, self.space.dim)
        # Live points are re-expressed along with the observations (they finish in the new
        # space); they get the lowest score and top_n is capped at the observations, so they
        # never shape the narrowed box.
        # Prior trials are re-expressed too (they stay in the GP's data); `n_final` counts
        # this search's own.
        record = {"n_final": own, "n_suggested": self.n_suggested,
                  "n_groups": self._target_groups(
                      self.rollback.stages[self.stage]),
                  "top_n": min(self.rollback.top_n, len(tids)),
                  "margin": self.rollback.margin_at(self.stage),
                  "X": np.vstack([X, live]).tolist(),
                  "y": np.concatenate([score, np.full(len(live), score.min() - 1.0)]).tolist()}
        new_space, X_new = self._refine(self.space, record)
        self._rollbacks.append(record)
        self._x_now = dict(zip(tids, X_new[:len(tids)].tolist(), strict=True))
        self._live = dict(zip(live_ids, X_new[len(tids):].tolist(), strict=True))
        self.space = new_space
        self.stage += 1

    @staticmethod
    def _refine(space: SearchSpace, record: dict[str, Any]) -> tuple[SearchSpace, np.ndarray]:
        """Apply one recorded roll-back to `space`: the finer space and the recorded points
        re-expressed in it (`n x d'`, each decoding to the same policy as before)."""
        new_space, X_new = space.refine(np.asarray(record["X"], dtype=float),
                                        np.asarray(record["y"], dtype=float),
                                        n_groups=record["n_groups"], top_n=record["top_n"],
                                        margin=record["margin"])
        return new_space, np.asarray(X_new, dtype=float).reshape(-1, new_space.dim)

    # -- persistence ------------------------------------------------------------------------
    def _algorithm_state(self) -> dict[str, Any]:
        return {
            "hypers": self._hypers,
            "fit_key": self._fit_key,
            "rollbacks": self._rollbacks,
            "x_now": self._x_now,
            "extra": self._extra,
            "dense": self._dense,
            "settings": {"n_init": self.n_init, "objectives": list(self.objectives),
                         "rollback": None if self.rollback is None else asdict(self.rollback)},
        }

    def _load_algorithm_state(self, state: dict[str, Any]) -> None:
        saved = state["settings"]
        if saved["objectives"] != list(self.objectives):
            raise SearcherError(f"state was saved with objectives {saved['objectives']}, this "
                                f"searcher has {list(self.objectives)}; build it with the same "
                                "objectives")
        self._hypers, self._fit_key = state["hypers"], state["fit_key"]
        self._rollbacks = list(state["rollbacks"])
        self._x_now = {k: list(v) for k, v in state["x_now"].items()}
        self._extra = {k: list(v) for k, v in state["extra"].items()}
        self._dense = dict(state["dense"])
        # The refined spaces are not saved: each roll-back is replayed from the recorded
        # inputs, which is deterministic, so the space comes back exactly.
        space = self._root_space
        for record in self._rollbacks:
            space, _ = self._refine(space, record)
        self.space = space
