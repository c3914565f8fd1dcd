"""The free baselines: policies a practitioner gets without any search, at a space's budget.

`uniform`: one channel ratio for every channel-pruned unit, the least common ratio (bisection)
that meets the budget, then whole channels given back unit by unit while the budget still
holds, so the policy lands as close under the budget as whole channels allow.

`tp-magnitude`, `tp-bn-scale`, `tp-taylor`: Torch-Pruning's global importance pruning
(`global_pruning=True`; `GroupMagnitudeImportance(p=2)`, `BNScaleImportance`,
`GroupTaylorImportance` on a labelled calibration batch), its global ratio bisected onto the
budget; the pruned model's width per unit is read back as a per-unit channel ratio, and the
same give-back step closes the gap whole channels leave.

Every cost here is the space's own analytic cost (FLOPs, params, or the latency model of a
latency budget): the one `apply_policy`'s pruned model measures (`channel.kept_channels` is
shared). Units whose scheme is not `channel` stay dense in every baseline.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from prunetune.errors import BudgetError, SpaceError

from .analysis import has_batchnorm
from .channel import kept_channels
from .heads import timm_attentions
from .policy import Policy, UnitPolicy

__all__ = ["BASELINE_METHODS", "TAYLOR_BATCH", "Baseline", "baseline_policies", "taylor_batch",
           "tp_global_policy", "uniform_policy"]

BASELINE_METHODS = ("uniform", "tp-magnitude", "tp-bn-scale", "tp-taylor")
TAYLOR_BATCH = 64  # labelled training images tp-taylor's gradients are taken on


def taylor_batch(batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                 size: int = TAYLOR_BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `size` (inputs, labels) of `batches` (a training loader): tp-taylor's batch."""
    inputs, labels = [], []
    for x, y in batches:
        inputs.append(x)
        labels.append(y)
        if sum(len(b) for b in labels) >= size:
            break
    return torch.cat(inputs)[:size], torch.cat(labels)[:size]

# Method -> (Torch-Pruning importance factory, the policy's own importance when applied).
_TP_IMPORTANCE: dict[str, tuple[Callable[[], Any], str]] = {
    "tp-magnitude": (lambda: tp.importance.GroupMagnitudeImportance(p=2), "magnitude"),
    "tp-bn-scale": (lambda: tp.importance.BNScaleImportance(), "bn_scale"),
    # Taylor scores need gradients, which `apply_policy` does not have: the widths are
    # Taylor's, the channels within a unit are then chosen by magnitude.
    "tp-taylor": (lambda: tp.importance.GroupTaylorImportance(), "magnitude"),
}
_BISECT_STEPS = 12  # global ratio to 2**-12; the give-back step closes what is left
_MAX_GLOBAL_RATIO = 0.95


@dataclass
class Baseline:
    """One baseline policy with its analytic cost shares and the seconds it took."""

    method: str
    policy: Policy
    flops_share: float
    params_share: float
    units_pruned: int
    seconds: float


class _Units:
    """The space's channel units, kept counts per channel group, and their cost."""

    def __init__(self, space: Any) -> None:
        self.space = space
        self.tmpl = [space.templates[u.name] for u in space.units]
        self.index = [i for i, t in enumerate(self.tmpl) if t.scheme == "channel"]
        if not self.index:
            raise SpaceError("the baselines prune channels, and no unit of this space is "
                             "channel-pruned; add 'channel' to space.schemes")
        units = [space.units[i] for i in self.index]
        step = space.round_to or 1
        self.per_group = np.array([u.channels // u.ch_groups for u in units])
        self.mult = np.array([math.lcm(max(u.multiple, 1), step) for u in units])
        self.floor = np.array([max(min(m, p), 1) for m, p in zip(self.mult, self.per_group,
                                                                  strict=True)])
        self.units = units
        self.limit = space.limit
        self.kind = space.budget.kind if space.budget else "flops"

    def ratios(self, kept: np.ndarray) -> np.ndarray:
        """Per channel unit, the ratio that keeps `kept` channels per group: the middle of the
        ratios that do, so float rounding cannot move it to a neighbouring count."""
        r = (self.per_group - kept - 0.5) / self.per_group
        return np.where(kept >= self.per_group, 0.0, np.maximum(r, 0.0))

    def kept_at(self, ratio: float) -> np.ndarray:
        return np.array([kept_channels(int(p), 1, min(ratio, u.max_ratio("channel")), int(m))
                         for p, m, u in zip(self.per_group, self.mult, self.units, strict=True)])

    def costs(self, kept: np.ndarray) -> dict[str, float]:
        full = np.zeros(len(self.tmpl))
        full[self.index] = self.ratios(kept)
        return self.space._costs(full, self.tmpl)

    def cost(self, kept: np.ndarray) -> float:
        return self.costs(kept)[self.kind]

    def fits(self, kept: np.ndarray) -> bool:
        return self.limit is None or self.cost(kept) <= self.limit

    def give_back(self, kept: np.ndarray) -> np.ndarray:
        """Whole channels returned, one step per unit per pass, while the budget holds."""
        if self.limit is None:
            return kept
        kept = kept.copy()
        changed = True
        while changed:
            changed = False
            for j in range(len(kept)):
                if kept[j] + self.mult[j] > self.per_group[j]:
                    continue
                kept[j] += self.mult[j]
                if self.fits(kept):
                    changed = True
                else:
                    kept[j] -= self.mult[j]
        return kept

    def policy(self, kept: np.ndarray, importance: str) -> Policy:
        ratios = self.ratios(kept)
        units = {u.name: UnitPolicy("channel", float(r))
                 for u, r in zip(self.units, ratios, strict=True)}
        return Policy(units, importance=importance, round_to=self.space.round_to)

    def check_reachable(self, kept: np.ndarray, method: str) -> None:
        if not self.fits(kept):
            dense = self.limit / self.space.budget.keep
            raise BudgetError(f"baseline {method!r} cannot meet budget keep="
                              f"{self.space.budget.keep:g} of {self.kind}: pruning every "
                              f"channel unit as far as it goes leaves "
                              f"{self.cost(kept) / dense:.3f} of the dense cost; raise "
                              "space.budget.keep")


def _least_fitting(fits: Callable[[float], bool], hi: float, steps: int) -> float:
    """Least value in [0, hi] that fits (monotone: false below a point, true above)."""
    if fits(0.0):
        return 0.0
    lo = 0.0
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


def uniform_policy(space: Any) -> Policy:
    """The uniform baseline of a `PruningSpace` (see the module docstring)."""
    units = _Units(space)
    hi = max(u.max_ratio("channel") for u in units.units)
    units.check_reachable(units.kept_at(hi), "uniform")
    ratio = _least_fitting(lambda r: units.fits(units.kept_at(r)), hi, 48)
    return units.policy(units.give_back(units.kept_at(ratio)), space.importance)


def _tp_kept(model: nn.Module, example: torch.Tensor, units: _Units, method: str,
             ratio: float, grads: dict[str, torch.Tensor] | None) -> np.ndarray:
    """Kept channels per group of each channel unit after Torch-Pruning's global pruning of a
    copy of `model` at `ratio`."""
    work = copy.deepcopy(model).eval()
    modules = dict(work.named_modules())
    pruned = {n for u in units.units for n in u.layers}
    weighted = (nn.Linear, nn.modules.conv._ConvNd)
    ignored = [m for n, m in modules.items() if isinstance(m, weighted) and n not in pruned]
    importance = _TP_IMPORTANCE[method][0]()
    if grads is not None:
        for name, param in work.named_parameters():
            param.grad = grads[name].clone() if name in grads else None
    # Heads units: Torch-Pruning's own head pruning (whole heads of timm attentions, ranked
    # globally, head dimensions kept); it cannot remove heads of nn.MultiheadAttention or of
    # torchvision's Swin (whose projections its graph never sees), so those stay dense.
    heads = {qkv: attn.num_heads for qkv, attn in timm_attentions(work).items()
             if qkv not in ignored}
    pruner = tp.pruner.MetaPruner(work, example, importance=importance, pruning_ratio=ratio,
                                  global_pruning=True, ignored_layers=ignored,
                                  max_pruning_ratio=_MAX_GLOBAL_RATIO, num_heads=heads,
                                  prune_num_heads=bool(heads), prune_head_dims=not heads,
                                  head_pruning_ratio=ratio if heads else 0.0)
    pruner.step()
    kept = []
    for u, mult, floor in zip(units.units, units.mult, units.floor, strict=True):
        weight = getattr(modules[u.name], "weight", None)
        if weight is None:  # an nn.MultiheadAttention or Swin heads unit
            kept.append(u.channels // u.ch_groups)
            continue
        width = int(weight.shape[0]) // u.ch_groups
        kept.append(max(width - width % mult if mult > 1 else width, floor))
    return np.array(kept)


def _gradients(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
               ) -> dict[str, torch.Tensor]:
    """The cross-entropy gradients of `model`'s parameters on a labelled batch, computed once
    (every bisection step's copy gets them), `model` left without gradients."""
    work = copy.deepcopy(model).eval()
    work.zero_grad()
    inputs, labels = batch
    nn.functional.cross_entropy(work(inputs), labels).backward()
    return {n: p.grad.detach().clone() for n, p in work.named_parameters() if p.grad is not None}


def tp_global_policy(space: Any, model: nn.Module, example: torch.Tensor, method: str,
                     batch: tuple[torch.Tensor, torch.Tensor] | None = None) -> Policy:
    """Torch-Pruning global importance pruning (`method`: tp-magnitude, tp-bn-scale or
    tp-taylor) bisected onto the space's budget, as a per-unit Policy. `batch`: (inputs,
    labels), needed by tp-taylor only."""
    if method not in _TP_IMPORTANCE:
        raise SpaceError(f"unknown Torch-Pruning baseline {method!r}; use one of "
                         f"{', '.join(_TP_IMPORTANCE)}")
    if method == "tp-taylor" and batch is None:
        raise SpaceError("tp-taylor needs a labelled calibration batch (inputs, labels) for "
                         "its gradients; pass batch= or leave tp-taylor out")
    if method == "tp-bn-scale" and not has_batchnorm(model):
        raise SpaceError("tp-bn-scale ranks channels by their BatchNorm scales and the model "
                         "has no BatchNorm; leave tp-bn-scale out (tp-magnitude and "
                         "tp-taylor rank any model)")
    units = _Units(space)
    model = model.eval()
    grads = _gradients(model, batch) if method == "tp-taylor" else None
    cache: dict[float, np.ndarray] = {}

    def kept_at(ratio: float) -> np.ndarray:
        if ratio not in cache:
            try:
                cache[ratio] = _tp_kept(model, example, units, method, ratio, grads)
            except (RuntimeError, ValueError, KeyError, TypeError) as err:
                raise SpaceError(f"Torch-Pruning cannot prune this model globally "
                                 f"({method}): {type(err).__name__}: {err}; use the "
                                 "uniform baseline") from None
        return cache[ratio]

    most = kept_at(_MAX_GLOBAL_RATIO)
    if (most == units.per_group).all():
        raise SpaceError(f"Torch-Pruning's {method} pruned no channel even at global ratio "
                         f"{_MAX_GLOBAL_RATIO:g}: its scores tie across all channels (e.g. the "
                         "BatchNorm scales of 1 of an untrained model); use the pretrained "
                         "model or another method")
    units.check_reachable(most, method)
    ratio = _least_fitting(lambda r: units.fits(kept_at(r)), _MAX_GLOBAL_RATIO, _BISECT_STEPS)
    kept = units.give_back(kept_at(ratio))
    return units.policy(kept, _TP_IMPORTANCE[method][1])


def baseline_policies(space: Any, model: nn.Module, example: torch.Tensor,
                      methods: Sequence[str] = BASELINE_METHODS,
                      batch: tuple[torch.Tensor, torch.Tensor] | None = None,
                      ) -> list[Baseline]:
    """Each of `methods` (see `BASELINE_METHODS`) as a Baseline, in order. tp-taylor without
    a `batch` raises SpaceError (a caller that wants it skipped leaves it out)."""
    bad = [m for m in methods if m not in BASELINE_METHODS]
    if bad:
        raise SpaceError(f"unknown baseline method(s) {bad}; use "
                         f"{', '.join(BASELINE_METHODS)}")
    out = []
    for method in methods:
        start = time.perf_counter()
        policy = (uniform_policy(space) if method == "uniform"
                  else tp_global_policy(space, model, example, method, batch))
        seconds = time.perf_counter() - start
        costs = space._costs(*_policy_ratios(space, policy))
        cm = space.analysis.cost_model
        out.append(Baseline(method, policy, costs["flops"] / cm.dense_flops,
                            costs["params"] / cm.dense_params,
                            sum(up.ratio > 0 for up in policy.units.values()), seconds))
    return out


def _policy_ratios(space: Any, policy: Policy) -> tuple[np.ndarray, list[UnitPolicy]]:
    """The space's per-unit ratio array and templates of a baseline policy."""
    tmpl = [space.templates[u.name] for u in space.units]
    ratios = np.array([policy.units[u.name].ratio if u.name in policy.units else 0.0
                       for u in space.units])
    return ratios, tmpl
