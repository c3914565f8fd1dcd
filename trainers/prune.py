"""Prune, fine-tune, calibrate, evaluate: the one path a policy takes to a scored model.

Trials (`trial.py`), `prunetune apply` and `prunetune promote` all go through
`prune_and_evaluate`, so a policy is pruned, fine-tuned (with the dense model as teacher when
`kd_alpha > 0`, masks re-applied after every step), has its BatchNorm statistics re-estimated
on a fixed batch of training images ("adaptive BN", EagleEye) and is costed the same way
wherever it is scored.
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

__all__ = ["PrunedModel", "calibration_images", "prune_and_evaluate", "recalibrate_bn"]

# Images per forward pass while re-estimating BatchNorm statistics.
_CALIBRATION_BATCH = 128


def calibration_images(data: DataBundle, n: int) -> torch.Tensor | None:
    """The first `n` training images, without augmentation: the same fixed batch for every
    policy of a dataset split (the split itself is a seeded permutation). None when n is 0."""
    if n <= 0:
        return None
    train = data.train.with_augment(False) if hasattr(data.train, "with_augment") else data.train
    return torch.stack([train[i][0] for i in range(min(n, len(train)))])


@torch.no_grad()
def recalibrate_bn(model: nn.Module, images: torch.Tensor | None,
                   device: torch.device | str | None = None) -> nn.Module:
    """Re-estimate `model`'s BatchNorm running statistics on `images` (`n x C x H x W`) as a
    cumulative average (`torch.optim.swa_utils.update_bn`), no weight changing; returns
    `model` in eval mode. Without BatchNorm layers or images, nothing changes."""
    from torch.optim.swa_utils import update_bn

    if images is not None and any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                  for m in model.modules()):
        update_bn([images[i:i + _CALIBRATION_BATCH]
                   for i in range(0, len(images), _CALIBRATION_BATCH)], model, device=device)
    return model.eval()


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
    accuracy / loss. `device`: where to evaluate (default: `finetune.device`). BatchNorm
    statistics are re-estimated before evaluation on `finetune.bn_calibration` training images
    (a `FinetuneConfig`'s; none for a plain `TrainConfig`). Raises PolicyError when the
    policy does not fit the model.
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
    images = calibration_images(data, getattr(finetune, "bn_calibration", 0))
    pruned = recalibrate_bn(pruned.to(dev), images, dev)
    scores = {split: evaluate(pruned, data.loader(split), dev) for split in splits}
    return PrunedModel(pruned, policy, cost, dense_cost, scores)
