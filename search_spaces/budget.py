"""`Budget`: the resource budget every decoded policy of a search space meets."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from prunetune.errors import SpaceError

__all__ = ["BUDGET_KINDS", "Budget", "infeasible_message"]

BUDGET_KINDS = ("flops", "params", "latency")


@dataclass(frozen=True)
class Budget:
    """Allowed cost as a fraction `keep` of the dense model's `kind`: "flops", "params" or
    "latency". Sparse schemes count at their effective (non-zero) cost. A latency budget needs
    the space's `latency` weights (fitted from a latency table by
    `prunetune.kernels.LatencyPredictor.linear_terms`)."""

    kind: str = "flops"
    keep: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in BUDGET_KINDS:
            raise SpaceError(f"budget kind must be one of {', '.join(BUDGET_KINDS)}, got "
                             f"{self.kind!r}")
        if isinstance(self.keep, bool) or not isinstance(self.keep, (int, float)) \
                or not 0.0 < float(self.keep) <= 1.0:
            raise SpaceError(f"budget keep must be in (0, 1] (fraction of the dense cost), "
                             f"got {self.keep!r}")
        object.__setattr__(self, "keep", float(self.keep))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "keep": self.keep}


def _keep_at_least(cost: float, dense: float) -> float:
    """The least keep with three decimals whose budget `keep * dense` admits `cost`."""
    keep = math.ceil(cost / dense * 1000) / 1000
    while keep * dense < cost:  # float rounding of the product
        keep += 0.001
    return min(round(keep, 3), 1.0)


def infeasible_message(budget: Budget, dense: float, full_cost: Callable[[float], float],
                       high: float, high_max: float, schemes: Sequence[str],
                       more: str = "") -> str:
    """The refusal of a budget no policy of a space meets, with advice that is accepted when
    followed: the least ratio_bounds high end that meets it when one (up to `high_max`, the
    units' largest ratio) does, else the least budget keep.

    dense: the dense cost; full_cost(h): the cost with every unit at its largest ratio under
    a high end h (falls as h grows); high: the space's high end; more: a further hint.
    """
    limit = budget.keep * dense
    best = full_cost(high)
    head = (f"budget keep={budget.keep:g} of {budget.kind} cannot be met: the most pruning this "
            f"space allows (ratio_bounds high={high:g}, schemes {list(schemes)}) leaves "
            f"{best / dense:.3f} of the dense cost")
    keep_now = _keep_at_least(best, dense)
    if high_max > high and full_cost(high_max) <= limit:
        lo, hi = high, high_max
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            lo, hi = (lo, mid) if full_cost(mid) <= limit else (mid, hi)
        advice = min(math.ceil(hi * 100) / 100, high_max)  # two decimals, still fitting
        return (f"{head}; raise ratio_bounds' high end to at least {advice:g} or budget.keep "
                f"to at least {keep_now:g}{more}")
    best_max = full_cost(high_max)
    if high_max <= high or best_max >= best:
        return f"{head}; raise budget.keep to at least {keep_now:g}{more}"
    return (f"{head}, and {best_max / dense:.3f} with every unit at its largest ratio "
            f"(ratio_bounds high={high_max:g}); raise budget.keep to at least {keep_now:g}, or "
            f"to {_keep_at_least(best_max, dense):g} with ratio_bounds high={high_max:g}{more}")
