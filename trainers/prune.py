"""Prune, fine-tune, calibrate, evaluate: the one path a policy takes to a scored model.

Trials (`trial.py`), `prunetune apply` and `prunetune promote` all go through
`prune_and_evaluate`, so a policy is pruned, fine-tuned (with the dense model as teacher when
`kd_alpha > 0`, masks re-applied after every step), has its BatchNorm statistics re-estimated
on a fixed batch of training samples ("adaptive BN", EagleEye) and is costed the same way
wherever it is scored. The data's task (`trainers.tasks`) gives the example input traced, the
loss and metric, and the calibration batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from prunetune.search_spaces import Cost, Policy, apply_policy, count_cost, enforce_masks

from .data import DataBundle
from .tasks import ModelInput, Task, as_inputs, as_model_input
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


def calibration_images(data: DataBundle, n: int) -> ModelInput | None:
    """The task's calibration batch: `n` training samples' inputs (image classification: the
    first `n` training images, without augmentation), the same fixed batch for every policy of
    a dataset split (the split itself is a seeded permutation). None when n is 0."""
    inputs = data.task.calibration_inputs(data, n)
    return None if inputs is None else as_model_input(inputs)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, images: ModelInput | None,
                   device: torch.device | str | None = None, *,
                   task: Task | None = None) -> nn.Module:
    """Re-estimate `model`'s BatchNorm running statistics on `images` (the calibration batch:
    `n x C x H x W` images, or a tuple of a multi-input model's inputs, n first) as a
    cumulative average, as `torch.optim.swa_utils.update_bn` does, no weight changing; returns
    `model` in eval mode. `task` runs the forward passes (default: `model(*inputs)`). Without
    BatchNorm layers or images, nothing changes."""
    momenta = {m: m.momentum for m in model.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    if images is None or not momenta:
        return model.eval()
    inputs = as_inputs(images)
    for bn in momenta:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batches
    model.train()
    for i in range(0, len(inputs[0]), _CALIBRATION_BATCH):
        chunk = tuple(t[i:i + _CALIBRATION_BATCH] for t in inputs)
        if device is not None:
            chunk = tuple(t.to(device) for t in chunk)
        if task is not None:
            task.forward(model, chunk)
        else:
            model(*chunk)
    for bn, momentum in momenta.items():
        bn.momentum = momentum
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
    pruned = recalibrate_bn(pruned.to(dev), images, dev, task=data.task)
    scores = {split: evaluate(pruned, data.loader(split), dev) for split in splits}
    return PrunedModel(pruned, policy, cost, dense_cost, scores)
