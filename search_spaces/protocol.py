"""`SearchSpace`: what a searcher may use of a pruning space, and nothing more.

Searchers (Ray Tune `Searcher`s in `prunetune.orchestrator.searchers`) are typed against this
protocol, not against `PruningSpace`, so a searcher never reaches into a space's logging
summary (`describe()`) or its units' internals, and another space (a user's own) can stand in
for `PruningSpace` by offering these members.

The box is `[0, 1]^dim`. Its first `k` coordinates are ratio dimensions (one per layer group,
ordered from the input to the output); the remaining `dim - k` are categorical (a group's
scheme under scheme search), described by `categorical_dims()`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch

from .budget import Budget

if TYPE_CHECKING:
    from .policy import Policy

__all__ = ["STEP_FEATURES", "SearchSpace", "StepFeatures", "step_features_of"]

# Columns of `StepFeatures.values`, each normalised so it means the same on any model (what lets
# an RL agent learned on ResNet-20 act on ResNet-56): the step's position in the walk, whether
# its layers are linear / depthwise, log2 of its in / out channels over 12, stride over 2,
# kernel over 7 (averaged over the step's units), its FLOPs and params as shares of the dense
# model (summed over its units) and its mean depth (0 = first layer, 1 = last).
STEP_FEATURES = ("index", "linear", "depthwise", "log2_in", "log2_out", "stride", "kernel",
                 "flops_share", "params_share", "depth")


@dataclass(frozen=True)
class StepFeatures:
    """Per ratio dimension ("step" of a sequential searcher): its features and dependencies.

    values: `k x len(STEP_FEATURES)` array (columns named by `STEP_FEATURES`);
    edges: `(i, j)` pairs of steps where a layer of step j reads step i's output channels
    (step i feeds step j).
    """

    values: np.ndarray
    edges: tuple[tuple[int, int], ...]

    def column(self, name: str) -> np.ndarray:
        """The length-`k` column `name` of `values`."""
        return self.values[:, STEP_FEATURES.index(name)]


@runtime_checkable
class SearchSpace(Protocol):
    """The members of a pruning space a searcher may use (see the module docstring)."""

    @property
    def dim(self) -> int:
        """Dimensions of the box: `k` ratio dimensions, then the categorical ones."""

    @property
    def k(self) -> int:
        """Ratio dimensions (layer groups); coordinates `0 .. k-1` of a point."""

    @property
    def n_units(self) -> int:
        """Prunable units; `k == n_units` means one dimension per unit (nothing finer)."""

    @property
    def bounds(self) -> torch.Tensor:
        """`2 x dim` float64 tensor: the current search box (lower, upper) inside [0, 1]."""

    @property
    def budget(self) -> Budget | None:
        """The resource budget every decoded point meets (None: no budget)."""

    def decode(self, x: Any) -> Policy:
        """The budget-meeting `Policy` of a length-`dim` point in `[0, 1]^dim`."""

    def cost(self, x: Any, *, project: bool = True) -> dict[str, float]:
        """Analytic cost of a point's policy: `flops`, `params`, `flops_share`,
        `params_share` (shares of the dense model); `project=False`: of the raw point."""

    def refine(self, X: Any, y: Any, *, n_groups: int | None = None, top_n: int = 5,
               maximize: bool = True, margin: float = 0.05) -> tuple[SearchSpace, Any]:
        """A finer space (`n_groups` groups; None: one per unit) and the `n x dim` points `X`
        re-expressed in it (each decoding to the same policy); bounds narrowed to the best
        `top_n` points by `y`, widened by `margin`."""

    def nearest_point(self, policy: Policy) -> Any:
        """A length-`dim` point of the current box that approximates `policy`, any policy of
        this model (a baseline's, a file's), not only a decoded one: per ratio dimension, the
        mean of its units' ratios as positions in their ratio ranges, clipped into the box;
        per scheme dimension, the option most of the group's units have. Its decoding need
        not equal `policy`: a searcher that runs `policy` itself as a trial (a start policy)
        learns from its result at this point. Raises SpaceError for a policy naming units
        the space does not have."""

    def categorical_dims(self) -> dict[int, int]:
        """Categorical coordinates and their option counts, `{column: n_options}`; a value
        `c` in [0, 1] picks option `floor(c * n_options)`. Empty without scheme search."""

    def step_features(self) -> StepFeatures:
        """Features of the `k` ratio dimensions and the dependencies between them."""

    def action_floor(self, x: Any, i: int) -> float:
        """AMC's action wall: the least value ratio dimension `i` may take so the budget can
        still be met when dimensions `i+1 .. k-1` take their upper bounds."""

    def fair_share(self, x: Any, i: int) -> float:
        """The least value dimension `i` could take, with the later ratio dimensions at the
        same relative position in their bounds, and meet the budget."""


def step_features_of(groups: Sequence[Sequence[str]], units: Sequence[Any]) -> StepFeatures:
    """`StepFeatures` of ratio dimensions that are `groups` of `units` (`PrunableUnit`s whose
    `features` come from `analyze`); the steps are the groups, in order."""
    group_of = {name: g for g, names in enumerate(groups) for name in names}
    T = len(groups)
    raw, count = np.zeros((T, len(STEP_FEATURES))), np.zeros(T)
    averaged = [STEP_FEATURES.index(c) for c in ("linear", "depthwise", "log2_in", "log2_out",
                                                  "stride", "kernel", "depth")]
    for u in units:
        f, g = u.features, group_of[u.name]
        raw[g, averaged] += [str(f.get("type", "")) == "linear", float(f.get("depthwise", 0)),
                             math.log2(max(1, f.get("in_channels", 1))) / 12.0,
                             math.log2(max(1, f.get("out_channels", 1))) / 12.0,
                             f.get("stride", 1) / 2.0, f.get("kernel", 1) / 7.0,
                             f.get("depth", 0.0)]
        raw[g, STEP_FEATURES.index("flops_share")] += f.get("flops_share", 0.0)
        raw[g, STEP_FEATURES.index("params_share")] += f.get("params_share", 0.0)
        count[g] += 1
    raw[:, averaged] /= np.maximum(count, 1)[:, None]
    raw[:, STEP_FEATURES.index("index")] = np.arange(T) / max(1, T - 1)
    owner = {layer: group_of[u.name] for u in units for layer in u.layers}
    edges = sorted({(group_of[u.name], owner[lay]) for u in units for lay in u.in_layers
                    if lay in owner and owner[lay] != group_of[u.name]})
    return StepFeatures(raw, tuple(edges))
