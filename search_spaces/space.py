"""`PruningSpace`: the box [0, 1]^d that searchers see, decoded into budget-meeting Policies.

It implements the `SearchSpace` protocol searchers are typed against (`protocol.py`).

Encoding. Units are clustered into k groups (`clustering.py`). Dimension g (< k) is group g's
position `s` in [0, 1]; unit u of the group gets ratio `lo_u + s * (hi_u - lo_u)`, where
[lo_u, hi_u] is `ratio_bounds` clipped to what the unit allows. With `scheme_search`, dimension
k + g picks group g's scheme among its options (rounded: option `floor(x * n_options)`), the
first option being the rule-based mapping's choice; a unit the chosen scheme does not apply to
keeps its mapped scheme.

Budget projection (AMC's action wall, generalised). If a vector's policy costs more than the
budget, every group position moves toward its upper bound by a common fraction t,
`s + t * (1 - s)`, and t is the smallest (bisection) that meets the budget on the analytic cost
model. Cost only falls as t grows, so this always terminates, is deterministic, and leaves
vectors that already meet the budget untouched, unless `fill_budget`: then a vector that
prunes more than the budget requires has every position scaled toward its lower bound by a
common factor u, `u * s`, the least u (bisection) that still meets the budget, so its policy
keeps its shape and prunes no more than it must.

Roll-back (BOCR). `refine` re-expresses every evaluated point in a finer grouping by its
*projected* positions: these meet the budget, so the finer space decodes them to the very same
policies; the returned bounds narrow the box to the range of the best points.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from prunetune.errors import BudgetError, SpaceError

from .analysis import ModelAnalysis, PrunableUnit, analyze
from .budget import BUDGET_KINDS, Budget, infeasible_message
from .clustering import cluster_units
from .cost import LatencyWeights
from .mapping import map_schemes, unit_template
from .policy import IMPORTANCES, Policy, PolicyError, UnitPolicy
from .protocol import StepFeatures, step_features_of
from .schemes import SCHEMES

__all__ = ["BUDGET_KINDS", "Budget", "BudgetError", "PruningSpace", "SpaceError"]

_BISECT_STEPS = 48  # t is found to 2**-48: far below one channel of any unit


def _least_fitting(fits: Callable[[float], bool], lo: float, hi: float, steps: int) -> float:
    """Bisection for the least value in (lo, hi] that fits, when `fits` is monotone (false
    below some point, true above), `fits(hi)` holds and `fits(lo)` does not."""
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


class PruningSpace:
    """Search space over pruning policies of one model (see the module docstring).

    model, example_input: the dense model and an input such as a `(1, 3, 32, 32)` tensor; only
    their analysis is kept (no modules, no graph), so the space pickles small.
    latency: a linear latency model over the analysis's cost model (`LatencyWeights`); needed
    by a latency budget, and with it `cost()` also reports `latency_ms`.
    templates: each unit's scheme (a ratio-0 `UnitPolicy`, e.g. from `map_schemes(...,
    method="measured")`); default: the rule-based mapping for `device`.
    """

    def __init__(self, model: nn.Module | None, example_input: Any = None, *,
                 schemes: Sequence[str] = ("channel",),
                 ratio_bounds: tuple[float, float] = (0.0, 0.8),
                 budget: Budget | None = None, n_groups: int | str | None = None,
                 scheme_search: bool = False, fill_budget: bool = False, seed: int = 0,
                 device: str = "gpu",
                 importance: str = "magnitude", round_to: int | None = None,
                 analysis: ModelAnalysis | None = None,
                 latency: LatencyWeights | None = None,
                 templates: Mapping[str, UnitPolicy] | None = None) -> None:
        schemes = tuple(schemes)
        if not schemes or any(s not in SCHEMES for s in schemes):
            raise SpaceError(f"schemes must be a non-empty subset of {list(SCHEMES)}, got "
                             f"{list(schemes)}")
        lo, hi = (float(v) for v in ratio_bounds)
        if not 0.0 <= lo <= hi < 1.0:
            raise SpaceError(f"ratio_bounds must satisfy 0 <= low <= high < 1, got "
                             f"{tuple(ratio_bounds)}")
        if not (n_groups is None or n_groups == "auto"
                or (isinstance(n_groups, int) and not isinstance(n_groups, bool)
                    and n_groups >= 1)):
            raise SpaceError(f"n_groups must be None, 'auto' or an integer >= 1, got "
                             f"{n_groups!r}")
        if budget is not None and not isinstance(budget, Budget):
            raise SpaceError(f"budget must be a Budget or None, got {type(budget).__name__}")
        if importance not in IMPORTANCES:
            raise SpaceError(f"importance must be one of {', '.join(IMPORTANCES)}, got "
                             f"{importance!r}")
        if analysis is None:
            if model is None:
                raise SpaceError("PruningSpace needs a model and example_input (or analysis=)")
            analysis = analyze(model, example_input, importance=importance)
        self.analysis = analysis
        self.latency = self._check_latency(latency, budget, analysis)
        self.schemes, self.ratio_bounds = schemes, (lo, hi)
        self.budget, self.scheme_search, self.seed = budget, bool(scheme_search), int(seed)
        self.fill_budget = bool(fill_budget)
        self.device, self.importance, self.round_to = device, importance, round_to
        self.templates = (map_schemes(analysis, device, schemes) if templates is None
                          else self._check_templates(templates, analysis, schemes))
        self.units: list[PrunableUnit] = [u for u in analysis.units if u.name in self.templates]
        if not self.units:
            raise SpaceError(f"none of the schemes {list(schemes)} applies to any unit of this "
                             "model")
        self.n_groups = n_groups
        self._setup(cluster_units(self.units, n_groups))
        self._check_feasible()

    # ---- construction helpers -------------------------------------------------------------
    @staticmethod
    def _check_latency(latency: LatencyWeights | None, budget: Budget | None,
                       analysis: ModelAnalysis) -> LatencyWeights | None:
        if latency is None:
            if budget is not None and budget.kind == "latency":
                raise SpaceError("a latency budget needs latency= weights fitted from a latency "
                                 "table (prunetune.kernels.LatencyPredictor.linear_terms, then "
                                 "LatencyWeights.from_layers); or use budget kind 'flops'")
            return None
        if not isinstance(latency, LatencyWeights):
            raise SpaceError(f"latency must be LatencyWeights or None, got "
                             f"{type(latency).__name__}")
        n = len(analysis.cost_model.w_flops)
        if latency.w_ms.shape != (n,) or latency.o_ms.shape != (n,):
            raise SpaceError(f"latency weights must have one entry per cost-model module ({n}), "
                             f"got {latency.w_ms.shape} / {latency.o_ms.shape}: fit them on this "
                             "model's analysis")
        if not latency.dense_ms > 0:
            raise SpaceError(f"latency weights must give the dense model a latency > 0 ms, got "
                             f"{latency.dense_ms}")
        return latency

    @staticmethod
    def _check_templates(templates: Mapping[str, UnitPolicy], analysis: ModelAnalysis,
                         schemes: tuple[str, ...]) -> dict[str, UnitPolicy]:
        known = {u.name for u in analysis.units}
        out: dict[str, UnitPolicy] = {}
        for name, up in templates.items():
            if name not in known or not isinstance(up, UnitPolicy):
                raise SpaceError(f"templates must map this model's unit names to UnitPolicy, "
                                 f"got {name!r}: {up!r}; map them on this model's analysis")
            if up.scheme not in schemes:
                raise SpaceError(f"template of unit {name!r} has scheme {up.scheme!r}, not one "
                                 f"of the space's schemes {list(schemes)}")
            try:
                analysis.unit(name).check(up)
            except PolicyError as err:
                raise SpaceError(f"template of unit {name!r}: {err}") from err
            out[name] = UnitPolicy(up.scheme, 0.0, block=up.block, m=up.m, pattern=up.pattern)
        return out

    def _setup(self, groups: list[list[str]], bounds: np.ndarray | None = None) -> None:
        self.groups = groups
        index = {u.name: i for i, u in enumerate(self.units)}
        self._group_of = np.zeros(len(self.units), dtype=np.int64)
        for g, names in enumerate(groups):
            for n in names:
                self._group_of[index[n]] = g
        self._lo = np.zeros(len(self.units))
        self._hi = np.zeros(len(self.units))
        allowed = [self._unit_schemes(u) for u in self.units]
        self._cap = np.array([min(u.max_ratio(s) for s in opts) for u, opts in zip(
            self.units, allowed, strict=True)])
        for i, cap in enumerate(self._cap):
            self._hi[i] = min(self.ratio_bounds[1], cap)
            self._lo[i] = min(self.ratio_bounds[0], self._hi[i])
        # Scheme options per group: the most common mapped scheme first.
        self._options: list[list[str]] = []
        for names in groups:
            mapped = [self.templates[n].scheme for n in names]
            first = max(sorted(set(mapped)), key=mapped.count)
            rest = [s for s in self.schemes if s != first and any(
                s in self.analysis_unit(n).schemes for n in names)]
            self._options.append([first, *rest])
        pos = {u.name: i for i, u in enumerate(self.analysis.units)}
        self._cost_index = np.array([pos[u.name] for u in self.units], dtype=np.int64)
        d = self.dim
        self._bounds = (np.stack([np.zeros(d), np.ones(d)]) if bounds is None
                        else np.asarray(bounds, dtype=float))

    def _unit_schemes(self, unit: PrunableUnit) -> list[str]:
        """Schemes a unit can take in this space (its mapped one, plus searchable ones)."""
        if not self.scheme_search:
            return [self.templates[unit.name].scheme]
        return [s for s in self.schemes if s in unit.schemes]

    def analysis_unit(self, name: str) -> PrunableUnit:
        return self.analysis.unit(name)

    # ---- the box ------------------------------------------------------------------------------
    @property
    def k(self) -> int:
        """Number of unit groups (ratio dimensions)."""
        return len(self.groups)

    @property
    def dim(self) -> int:
        return self.k * (2 if self.scheme_search else 1)

    @property
    def n_units(self) -> int:
        """Prunable units the space searches (`k == n_units`: one dimension per unit)."""
        return len(self.units)

    def categorical_dims(self) -> dict[int, int]:
        """`{column: n_options}` of the scheme dimensions: with `scheme_search`, column k + g
        picks group g's scheme among its options (empty without scheme search)."""
        if not self.scheme_search:
            return {}
        return {self.k + g: len(opts) for g, opts in enumerate(self._options)}

    def step_features(self) -> StepFeatures:
        """Features of the ratio dimensions (layer groups) and the dependencies between
        them, for sequential searchers (see `protocol.StepFeatures`)."""
        return step_features_of(self.groups, self.units)

    @property
    def bounds(self) -> torch.Tensor:
        """(2, dim) float64 tensor: lower and upper bounds inside [0, 1]."""
        return torch.tensor(self._bounds, dtype=torch.float64)

    def _vector(self, x: Any) -> np.ndarray:
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().double().numpy()
        try:
            arr = np.asarray(x, dtype=float).reshape(-1)
        except (TypeError, ValueError):
            raise SpaceError(f"x must be a sequence of {self.dim} numbers, got {x!r}") from None
        if arr.shape[0] != self.dim:
            raise SpaceError(f"x must have length {self.dim} (the space's dim), got "
                             f"{arr.shape[0]}")
        if not np.all(np.isfinite(arr)) or arr.min() < -1e-9 or arr.max() > 1 + 1e-9:
            raise SpaceError(f"x must lie in [0, 1]^{self.dim}, got values in "
                             f"[{arr.min():g}, {arr.max():g}]")
        return np.clip(arr, 0.0, 1.0)

    # ---- decoding -----------------------------------------------------------------------------
    def _schemes_for(self, cat: np.ndarray) -> list[UnitPolicy]:
        """Template UnitPolicy (ratio 0) per space unit for categorical coordinates `cat`."""
        if not self.scheme_search:
            return [self.templates[u.name] for u in self.units]
        chosen = []
        for g, opts in enumerate(self._options):
            chosen.append(opts[min(int(cat[g] * len(opts)), len(opts) - 1)])
        out = []
        for i, u in enumerate(self.units):
            scheme = chosen[self._group_of[i]]
            tmpl = self.templates[u.name]
            out.append(tmpl if scheme == tmpl.scheme or scheme not in u.schemes
                       else unit_template(u, scheme))
        return out

    def _ratios(self, s_unit: np.ndarray, tmpl: list[UnitPolicy],
                high: float | None = None) -> np.ndarray:
        """Per-unit ratios of positions `s_unit`; `high`: as if ratio_bounds' high end were it."""
        hi = self._hi if high is None else np.minimum(high, self._cap)
        r = np.minimum(self._lo, hi) + s_unit * (hi - np.minimum(self._lo, hi))
        for i, t in enumerate(tmpl):
            if t.spec.option_fields:  # a scheme may prune at some ratios only (N:M: 1 - n/m)
                r[i] = t.spec.snap_ratio(r[i], t.options)
        return r

    def _costs(self, ratios: np.ndarray, tmpl: list[UnitPolicy]) -> dict[str, float]:
        """Analytic effective FLOPs and params (and latency_ms with latency weights) of
        per-unit ratios and schemes."""
        cm = self.analysis.cost_model
        n = cm.n_units
        full = np.zeros(n)
        channel = np.zeros(n, dtype=bool)
        row = np.full(n, -1, dtype=np.int64)
        full[self._cost_index] = ratios
        channel[self._cost_index] = [t.spec.structural for t in tmpl]
        row[self._cost_index] = [-1 if t.spec.structural else cm.keys.index(t.spec.key(t))
                                 for t in tmpl]
        scale_w, f_out = cm.scales(full, channel, row, self.round_to)
        flops, params = cm.totals(scale_w, f_out)
        out = {"flops": flops, "params": params}
        if self.latency is not None:
            # Sparse masks save time only as far as the device's kernels run them.
            scale_lat = scale_w if not (row >= 0).any() else cm.scales(
                full, channel, row, self.round_to, sparse_gain=self.latency.gains)[0]
            out["latency"] = self.latency.ms(scale_lat, f_out)
        return out

    def _cost(self, ratios: np.ndarray, tmpl: list[UnitPolicy]) -> float:
        """The budgeted cost (FLOPs without a budget)."""
        return self._costs(ratios, tmpl)[self.budget.kind if self.budget else "flops"]

    @property
    def limit(self) -> float | None:
        """The budget in absolute units (FLOPs, params or ms), None without a budget."""
        if self.budget is None:
            return None
        dense = {"flops": self.analysis.dense_flops, "params": self.analysis.dense_params,
                 "latency": self.latency.dense_ms if self.latency else None}[self.budget.kind]
        return self.budget.keep * dense

    def _project(self, s: np.ndarray, tmpl: list[UnitPolicy]) -> np.ndarray:
        """Group positions moved toward 1 just enough to meet the budget (with `fill_budget`,
        those that prune more than it requires moved toward 0 until they just meet it)."""
        limit = self.limit
        if limit is None:
            return s
        g = self._group_of
        if self._cost(self._ratios(s[g], tmpl), tmpl) <= limit:
            return self._fill(s, tmpl) if self.fill_budget else s
        if self._cost(self._ratios(np.ones(len(g)), tmpl), tmpl) > limit:
            raise BudgetError(self._budget_message(tmpl))
        t = _least_fitting(lambda t: self._cost(self._ratios((s + t * (1.0 - s))[g], tmpl),
                                                tmpl) <= limit, 0.0, 1.0, _BISECT_STEPS)
        return s + t * (1.0 - s)

    def _fill(self, s: np.ndarray, tmpl: list[UnitPolicy]) -> np.ndarray:
        """Positions `u * s` with the least u in [0, 1] that meets the budget (`s` meets it)."""
        g, limit = self._group_of, self.limit
        if self._cost(self._ratios(np.zeros(len(g)), tmpl), tmpl) <= limit:
            return np.zeros_like(s)  # the least pruning the bounds allow meets it already
        u = _least_fitting(lambda u: self._cost(self._ratios((u * s)[g], tmpl), tmpl) <= limit,
                           0.0, 1.0, _BISECT_STEPS)
        return u * s

    def _state(self, x: Any) -> tuple[np.ndarray, list[UnitPolicy]]:
        """(projected group positions (k,), template per unit) of a vector."""
        arr = self._vector(x)
        tmpl = self._schemes_for(self._reachable_schemes(arr[self.k:]))
        return self._project(arr[:self.k], tmpl), tmpl

    def _reachable_schemes(self, cat: np.ndarray) -> np.ndarray:
        """Scheme coordinates `cat` (k,) under which the budget can be met: while even full
        ratios under the chosen schemes miss it, the group whose move to its most-pruning
        option lowers that cost most moves there (a random point may pick, say, block sparsity
        for a ViT's patch embedding, which cannot reach the budget where channel pruning can).
        """
        if not self.scheme_search or self.limit is None:
            return cat
        full_cost = self._full_cost

        def option(c: np.ndarray, g: int) -> int:
            return min(int(c[g] * len(self._options[g])), len(self._options[g]) - 1)

        cat, best = cat.copy(), self._most_pruning_cat
        while full_cost(cat) > self.limit:
            moves = [g for g in range(self.k) if option(cat, g) != option(best, g)]
            if not moves:
                break
            costs = [full_cost(np.where(np.arange(self.k) == g, best, cat)) for g in moves]
            g = moves[int(np.argmin(costs))]
            cat[g] = best[g]
        return cat

    def _policy(self, s: np.ndarray, tmpl: list[UnitPolicy]) -> Policy:
        ratios = self._ratios(s[self._group_of], tmpl)
        units = {}
        for u, t, r in zip(self.units, tmpl, ratios, strict=True):
            r = float(min(max(r, 0.0), u.max_ratio(t.scheme)))
            units[u.name] = t.with_ratio(r)  # the template's options (N:M's n follows r)
        return Policy(units, importance=self.importance, round_to=self.round_to)

    def decode(self, x: Any) -> Policy:
        """The budget-meeting Policy of a vector `x` in [0, 1]^dim (sequence, numpy, tensor)."""
        s, tmpl = self._state(x)
        return self._policy(s, tmpl)

    def cost(self, x: Any, *, project: bool = True) -> dict[str, float]:
        """Analytic effective FLOPs / params (and their share of dense; with latency weights
        also `latency_ms` / `latency_share`) of a vector's policy;
        `project=False`: of the vector as it is, before the budget projection."""
        if project:
            s, tmpl = self._state(x)
        else:
            arr = self._vector(x)
            s, tmpl = arr[:self.k], self._schemes_for(arr[self.k:])
        costs = self._costs(self._ratios(s[self._group_of], tmpl), tmpl)
        cm = self.analysis.cost_model
        out = {"flops": costs["flops"], "params": costs["params"],
               "flops_share": costs["flops"] / cm.dense_flops,
               "params_share": costs["params"] / cm.dense_params}
        if self.latency is not None:
            out["latency_ms"] = costs["latency"]
            out["latency_share"] = costs["latency"] / self.latency.dense_ms
        return out

    def action_floor(self, x: Any, i: int) -> float:
        """AMC's action wall for ratio dimension `i` (< k): the least value it may take so that
        the budget can still be met once the dimensions after it take their upper bounds
        (`x[:i]` and the scheme dimensions as given, `x[i:k]` ignored). The bound's lower end
        without a budget; its upper end when even that does not meet the budget."""
        return self._least_fitting_step(x, i, rest="upper")

    def fair_share(self, x: Any, i: int) -> float:
        """The least value dimension `i` could take, with dimensions `i+1..k-1` at the same
        relative position in their own bounds, and meet the budget (`x[:i]` and the scheme
        dimensions as given): the step's share of the pruning still owed. The bound's lower
        end without a budget (or when no pruning is owed); its upper end when even the upper
        bounds do not meet it."""
        return self._least_fitting_step(x, i, rest="same")

    def _least_fitting_step(self, x: Any, i: int, rest: str) -> float:
        if not 0 <= i < self.k:
            raise SpaceError(f"i must be a ratio dimension in [0, {self.k}), got {i}")
        arr = self._vector(x)
        tmpl = self._schemes_for(arr[self.k:])
        lo_b, hi_b = self._bounds[0, :self.k], self._bounds[1, :self.k]
        s = arr[:self.k].copy()
        s[i + 1:] = hi_b[i + 1:]
        limit = self.limit
        g = self._group_of

        def fits(v: float) -> bool:
            if rest == "same":  # v is a position in step i's bounds, the same for the rest
                s[i:] = lo_b[i:] + (v - lo_b[i]) / max(hi_b[i] - lo_b[i], 1e-12) * (
                    hi_b[i:] - lo_b[i:])
            else:
                s[i] = v
            return self._cost(self._ratios(s[g], tmpl), tmpl) <= limit

        if limit is None or fits(lo_b[i]):
            return float(lo_b[i])
        if not fits(hi_b[i]):
            return float(hi_b[i])
        # 2**-30 of the range: finer than one channel
        return _least_fitting(fits, float(lo_b[i]), float(hi_b[i]), 30)

    def _check_feasible(self) -> None:
        if self.limit is None:
            return
        tmpl = self._schemes_for(np.zeros(self.k))
        if self.scheme_search:  # per group, the option that prunes most at full ratio: the
            # search may pick it, so the budget is feasible when that meets it
            cat = np.zeros(self.k)
            for g, opts in enumerate(self._options):
                costs = []
                for j in range(len(opts)):
                    trial = cat.copy()
                    trial[g] = (j + 0.5) / len(opts)
                    costs.append(self._full_cost(trial))
                cat[g] = (int(np.argmin(costs)) + 0.5) / len(opts)
            self._most_pruning_cat = cat
            tmpl = self._schemes_for(cat)
        if self._cost(self._ratios(np.ones(len(self.units)), tmpl), tmpl) > self.limit:
            raise BudgetError(self._budget_message(tmpl))

    def _full_cost(self, cat: np.ndarray) -> float:
        """The cost of every group at its full ratio under the schemes of coordinates `cat`
        (k,): the most pruning those schemes allow."""
        t = self._schemes_for(cat)
        return self._cost(self._ratios(np.ones(len(self.units)), t), t)

    def _budget_message(self, tmpl: list[UnitPolicy]) -> str:
        ones = np.ones(len(self.units))
        # Searching the schemes can only reach further: it may pick the most-pruning one.
        more = ("" if self.scheme_search or len(self.schemes) < 2 else
                ", or let the search choose each group's scheme (space.scheme_search: true)")
        return infeasible_message(
            self.budget, self.limit / self.budget.keep,
            lambda h: self._cost(self._ratios(ones, tmpl, h), tmpl), self.ratio_bounds[1],
            float(self._cap.max()), self.schemes, more)

    # ---- encoding and roll-back ---------------------------------------------------------------
    def _encode_state(self, s_unit: np.ndarray, schemes: list[str]) -> np.ndarray:
        """Vector of this space whose (unprojected) state is per-unit positions `s_unit` and
        per-unit schemes; raises SpaceError when units of one group disagree."""
        x = np.zeros(self.dim)
        index = {u.name: i for i, u in enumerate(self.units)}
        for g, names in enumerate(self.groups):
            vals = {float(s_unit[index[n]]) for n in names}
            if len(vals) != 1:
                raise SpaceError(f"group {g} mixes units at different positions; it cannot hold "
                                 "this point exactly (refine to a finer grouping)")
            x[g] = vals.pop()
            if self.scheme_search:
                opts = self._options[g]
                for j in range(len(opts)):
                    trial = x.copy()
                    trial[self.k + g] = (j + 0.5) / len(opts)
                    got = self._schemes_for(trial[self.k:])
                    if all(got[index[n]].scheme == schemes[index[n]] for n in names):
                        x[self.k + g] = trial[self.k + g]
                        break
                else:
                    raise SpaceError(f"group {g}: no scheme option reproduces the point's schemes "
                                     f"{sorted({schemes[index[n]] for n in names})}")
        return x

    def refine(self, X: Any, y: Any, *, n_groups: int | None = None, top_n: int = 5,
               maximize: bool = True, margin: float = 0.05) -> tuple[PruningSpace, Any]:
        """BOCR roll-back: a finer space and every past point re-expressed in it.

        X: (n, dim) evaluated points; y: (n,) their objective (higher is better unless
        `maximize=False`). n_groups: the finer group count (None: one dimension per unit); the
        new groups split the current ones. Every row of the returned X_new decodes in the new
        space to the same Policy as the row of X in this one. The new bounds are the range of
        the `top_n` best points' coordinates, widened by `margin` (scheme dimensions stay
        [0, 1]). X_new is a tensor if X was one, else a numpy array.
        """
        as_tensor = isinstance(X, torch.Tensor)
        xs = X.detach().cpu().double().numpy() if as_tensor else np.asarray(X, dtype=float)
        ys = y.detach().cpu().double().numpy() if isinstance(y, torch.Tensor) else np.asarray(
            y, dtype=float)
        xs = xs.reshape(-1, self.dim)
        ys = ys.reshape(-1)
        if len(ys) != len(xs):
            raise SpaceError(f"X has {len(xs)} rows but y has {len(ys)} values")
        if n_groups is not None and n_groups <= self.k:
            raise SpaceError(f"n_groups must exceed the current {self.k} groups (or be None for "
                             f"one per unit), got {n_groups}")
        new = self.__class__.__new__(self.__class__)
        new.__dict__.update({k: v for k, v in self.__dict__.items() if not k.startswith("_")})
        new.n_groups = n_groups
        new._setup(cluster_units(self.units, n_groups, within=self.groups))
        new._check_feasible()  # the most-pruning scheme per new group (finer reaches as far)
        rows = []
        for row in xs:
            s, tmpl = self._state(row)
            rows.append(new._encode_state(s[self._group_of], [t.scheme for t in tmpl]))
        x_new = np.array(rows).reshape(-1, new.dim)
        if len(x_new) and top_n > 0:
            order = np.argsort(-ys if maximize else ys, kind="stable")[:top_n]
            best = x_new[order]
            lo = np.clip(best.min(0) - margin, 0.0, 1.0)
            hi = np.clip(best.max(0) + margin, 0.0, 1.0)
            lo[new.k:], hi[new.k:] = 0.0, 1.0
            new._bounds = np.stack([lo, hi])
        return new, (torch.tensor(x_new, dtype=torch.float64) if as_tensor else x_new)

    def encode(self, policy: Policy) -> np.ndarray:
        """A vector that decodes to `policy` when the policy fits this space's grouping (as
        decoded policies do); raises SpaceError otherwise."""
        return self._encode_state(*self._unit_positions(policy))

    def nearest_point(self, policy: Policy) -> np.ndarray:
        """A point of the current box that approximates any `policy` of this model (see
        `SearchSpace.nearest_point`): per group, the mean of its units' positions in their
        ratio ranges, clipped into the box; per scheme dimension, the option most of the
        group's units have (ties: the earlier option). Units the policy leaves out count as
        unpruned; a unit this space does not have raises SpaceError."""
        unknown = sorted(set(policy.units) - {u.name for u in self.units})
        if unknown:
            raise SpaceError(f"the policy names unit(s) {unknown[:5]} this space does not "
                             f"prune ({len(unknown)} in all); give a policy of this model")
        s_unit, schemes = self._unit_positions(policy)
        x = np.zeros(self.dim)
        x[:self.k] = [s_unit[self._group_of == g].mean() for g in range(self.k)]
        for g, opts in enumerate(self._options if self.scheme_search else []):
            votes = [sum(schemes[i] == o for i in np.flatnonzero(self._group_of == g))
                     for o in opts]
            x[self.k + g] = (int(np.argmax(votes)) + 0.5) / len(opts)
        return np.clip(x, self._bounds[0], self._bounds[1])

    def _unit_positions(self, policy: Policy) -> tuple[np.ndarray, list[str]]:
        """Per space unit, the policy's ratio as a position in the unit's range (clipped to
        [0, 1]) and its scheme; a unit the policy leaves out is unpruned in its mapped one."""
        s_unit, schemes = np.zeros(len(self.units)), []
        for i, u in enumerate(self.units):
            up = policy.units.get(u.name) or self.templates[u.name].with_ratio(0.0)
            span = self._hi[i] - self._lo[i]
            s_unit[i] = 0.0 if span <= 0 else min(1.0, max(0.0, (up.ratio - self._lo[i]) / span))
            schemes.append(up.scheme)
        return s_unit, schemes

    # ---- description and pickling -------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """JSON-able summary: settings, groups, bounds, per-unit ranges and schemes."""
        return {
            "dim": self.dim, "n_groups": self.k, "requested_groups": self.n_groups,
            "schemes": list(self.schemes), "scheme_search": self.scheme_search,
            "fill_budget": self.fill_budget,
            "ratio_bounds": list(self.ratio_bounds),
            "budget": self.budget.to_dict() if self.budget else None,
            "device": self.device, "importance": self.importance, "round_to": self.round_to,
            "seed": self.seed, "groups": [list(g) for g in self.groups],
            "options": [list(o) for o in self._options] if self.scheme_search else None,
            "bounds": self._bounds.tolist(),
            "dense": {"flops": self.analysis.dense_flops, "params": self.analysis.dense_params},
            "units": {u.name: {"low": float(self._lo[i]), "high": float(self._hi[i]),
                               "scheme": self.templates[u.name].scheme,
                               "group": int(self._group_of[i]), "channels": u.channels,
                               "ch_groups": u.ch_groups, "multiple": u.multiple,
                               "heads": u.heads}
                      for i, u in enumerate(self.units)},
        }
