"""`Budget`: the resource budget every decoded policy of a search space meets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prunetune.errors import SpaceError

__all__ = ["BUDGET_KINDS", "Budget"]

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
