"""Prune, fine-tune, evaluate: the one path a policy takes to a scored model.

Trials (`trial.py`), `prunetune apply` and `prunetune promote` all go through
`prune_and_evaluate`, so a policy is pruned, fine-tuned (with the dense model as teacher when
`kd_alpha > 0`, masks re-applied after every step) and costed the same way wherever it is
scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from prunetune.search_spaces import Cost, Policy, apply_policy, count_cost, enforce_masks

from .data import DataBundle
from .train import (
    EpochCallback,
    EvalResult,
    TrainConfig,
    evaluate,
    fit,
    resolve_device,
    seed_everything,
)

__all__ = ["PrunedModel", "prune_and_evaluate"]


@dataclass
class PrunedModel:
    """A policy applied to the dense model, fine-tuned and evaluated."""

    model: nn.Module  # the pruned copy, in eval mode, on the evaluation device
    policy: Policy
    cost: Cost  # of the pruned model
    dense_cost: Cost
    scores: dict[str, EvalResult] = field(default_factory=dict)  # split -> result

    def cost_metrics(self) -> dict[str, float]:
        """Effective FLOPs / params of the pruned model, their ratios to the dense model's, and
        the weight sparsity (the cost columns every trial and promotion reports)."""
        return {"flops": self.cost.effective_flops, "params": self.cost.effective_params,
                "flops_ratio": self.cost.effective_flops / self.dense_cost.flops,
                "params_ratio": self.cost.effective_params / self.dense_cost.params,
                "sparsity": self.cost.sparsity}


def prune_and_evaluate(dense: nn.Module, policy: Policy, data: DataBundle,
                       finetune: TrainConfig, *, seed: int,
                       splits: Sequence[str] = ("val",),
                       on_epoch_end: EpochCallback | None = None,
                       device: torch.device | str | None = None, progress: bool = False,
                       desc: str = "finetune") -> PrunedModel:
    """Apply `policy` to a copy of `dense`, fine-tune it for `finetune.epochs` (seeded by
    `seed`: data order and initial randomness), and evaluate it on `splits`.

    `on_epoch_end(epoch, metrics)` sees each fine-tuning epoch's train loss and validation
    accuracy / loss. `device`: where to evaluate (default: `finetune.device`). Raises
    PolicyError when the policy does not fit the model.
    """
    seed_everything(seed)
    example = data.example_input(1)
    pruned = apply_policy(dense, policy, example)
    dense_cost, cost = count_cost(dense, example), count_cost(pruned, example)
    if finetune.epochs > 0:
        teacher = dense if finetune.kd_alpha > 0 else None
        fit(pruned, data.loader("train", seed=seed), finetune,
            val_loader=data.loader("val") if on_epoch_end is not None else None,
            teacher=teacher, after_step=enforce_masks, on_epoch_end=on_epoch_end,
            progress=progress, desc=desc)
    dev = resolve_device(finetune.device) if device is None else torch.device(device)
    pruned = pruned.to(dev).eval()
    scores = {split: evaluate(pruned, data.loader(split), dev) for split in splits}
    return PrunedModel(pruned, policy, cost, dense_cost, scores)
