"""Dense training, fine-tuning (optionally distilled from the dense teacher) and evaluation,
all through the data's task (`trainers.tasks`: inputs, loss, metric)."""

from __future__ import annotations

import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from prunetune.errors import ConfigError, DatasetError

from .data import IMAGE_CLASSIFICATION
from .settings import FinetuneConfig, TrainConfig
from .tasks import Inputs, Task, TaskLoader

__all__ = ["TrainConfig", "FinetuneConfig", "EvalResult", "EpochCallback", "EpochCheckpoint",
           "FitResume", "evaluate", "fit", "fit_epochs", "resolve_device", "seed_everything",
           "task_of"]


@dataclass(frozen=True)
class EvalResult:
    accuracy: float  # the task's metric, higher is better (image classification: top-1)
    loss: float  # the task's mean loss (image classification: cross-entropy)
    samples: int


EpochCallback = Callable[[int, dict[str, float]], None]
"""Called after each epoch with (epoch number from 1, metrics); may raise to stop training."""


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` is CUDA when present, else CPU; anything else is passed to `torch.device`."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device {device!r} is not a device name; use auto, cpu, cuda or "
                          "cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but this machine has no usable CUDA "
                          "GPU (torch.cuda.is_available() is false); use auto or cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r} asked for, but this machine has "
                          f"{torch.cuda.device_count()} CUDA GPU(s); use cuda:0 .. "
                          f"cuda:{torch.cuda.device_count() - 1}, auto or cpu")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def task_of(loader: DataLoader) -> Task:
    """The task a loader's batches are for (`DataBundle.loader` says); a plain DataLoader's
    are image classification's `(images, labels)`."""
    return loader.task if isinstance(loader, TaskLoader) else IMAGE_CLASSIFICATION


def _to_device(inputs: Inputs, targets: torch.Tensor, device: torch.device
               ) -> tuple[Inputs, torch.Tensor]:
    return (tuple(t.to(device, non_blocking=True) for t in inputs),
            targets.to(device, non_blocking=True))


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device | str = "cpu",
             *, max_batches: int | None = None, task: Task | None = None) -> EvalResult:
    """The task's metric (image classification: top-1 accuracy) and mean loss (cross-entropy)
    of `model` over `loader` (eval mode). `task`: default, the loader's (`task_of`)."""
    device = torch.device(device)
    task = task or task_of(loader)
    was_training = model.training
    model.eval()
    score, loss_sum, n = 0.0, 0.0, 0
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        inputs, y = _to_device(*task.split(batch), device)
        outputs = task.forward(model, inputs)
        loss_sum += task.loss(outputs, y, None, reduction="sum").item()
        score += task.metric(outputs, y)
        n += len(y)
    model.train(was_training)
    if n == 0:
        raise DatasetError("no samples to evaluate on: the split is empty; give it samples "
                           "(data.val_fraction > 0, a *_subset >= 1)")
    return EvalResult(accuracy=score / n, loss=loss_sum / n, samples=n)


def _lr_at(step: int, total: int, warmup: int, cfg: TrainConfig) -> float:
    if warmup and step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * min(1.0, progress)))


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # No weight decay on BN / bias parameters: standard practice, and it keeps decay from
    # fighting the masks of pruned weights (they are zero and stay zero).
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                           nesterov=cfg.nesterov and cfg.momentum > 0)


def _batch_loss(task: Task, model: nn.Module, inputs: Inputs, y: torch.Tensor,
                cfg: TrainConfig, teacher: nn.Module | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, outputs) of one training batch: the task's loss, mixed with its distillation
    term from `teacher` by `cfg.kd_alpha` when there is one."""
    outputs = task.forward(model, inputs)
    loss = task.loss(outputs, y, cfg)
    if teacher is not None:
        with torch.no_grad():
            t_outputs = task.forward(teacher, inputs)
        loss = (1 - cfg.kd_alpha) * loss + cfg.kd_alpha * task.distill(outputs, t_outputs, cfg)
    return loss, outputs


def fit_epochs(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """The epochs `fit` runs (a fractional count's last one partly)."""
    total_steps = max(1, int(round(cfg.epochs * steps_per_epoch)))
    return math.ceil(total_steps / max(1, steps_per_epoch))


@dataclass(frozen=True)
class FitResume:
    """Where an interrupted `fit` continues: the epochs it completed and its optimiser's
    `state_dict()` (SGD's momentum buffers, AdamW's moments). The learning rate needs no state
    of its own: it is a function of the step, and the step is `epoch` times the batches per
    epoch. The model's weights, the RNG states and the loader's generator are the caller's to
    restore."""

    epoch: int
    optimizer_state: dict[str, Any]


EpochCheckpoint = Callable[[int, torch.optim.Optimizer], None]
"""Called after each epoch (after `on_epoch_end`) with (epoch number from 1, the optimiser),
the moment to save what `FitResume` and the RNG states need."""


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    cfg: TrainConfig,
    *,
    val_loader: DataLoader | None = None,
    teacher: nn.Module | None = None,
    after_step: Callable[[nn.Module], None] | None = None,
    on_epoch_end: EpochCallback | None = None,
    progress: bool = True,
    desc: str = "train",
    task: Task | None = None,
    resume: FitResume | None = None,
    on_checkpoint: EpochCheckpoint | None = None,
) -> dict[str, float]:
    """Train `model` in place with the configured optimizer and schedule; returns the last
    metrics.

    `teacher` enables distillation (`cfg.kd_alpha > 0`). `after_step(model)` runs after every
    optimiser step (the pruning engine re-applies masks there, so pruned weights stay zero).
    `on_epoch_end(epoch, metrics)` sees train loss and, with `val_loader`, val accuracy / loss
    (`accuracy` is the task's metric). `task`: default, the loader's (`task_of`). `resume`:
    continue after its epoch (the model already holding that epoch's weights);
    `on_checkpoint(epoch, optimizer)` after each epoch, to save what a resume needs.
    """
    if cfg.epochs == 0:
        return {}
    task = task or task_of(train_loader)
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model.to(device).train()
    if teacher is not None:
        teacher.to(device).eval()
    optimizer = _optimizer(model, cfg)
    if resume is not None:  # after model.to(device): the buffers are cast to the params' device
        optimizer.load_state_dict(resume.optimizer_state)
    steps_per_epoch = len(train_loader)
    total_steps = max(1, int(round(cfg.epochs * steps_per_epoch)))
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    n_epochs = fit_epochs(cfg, steps_per_epoch)
    kd_teacher = teacher if teacher is not None and cfg.kd_alpha > 0 else None
    first = resume.epoch + 1 if resume is not None else 1
    step, metrics = (first - 1) * steps_per_epoch, {}
    for epoch in range(first, n_epochs + 1):
        t0, loss_sum, seen, score = time.perf_counter(), 0.0, 0, 0.0
        batches = tqdm(train_loader, desc=f"{desc} epoch {epoch}/{n_epochs}", leave=False,
                       disable=not progress, mininterval=2.0)
        for batch in batches:
            if step >= total_steps:
                break
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, total_steps, warmup, cfg)
            inputs, y = _to_device(*task.split(batch), device)
            loss, outputs = _batch_loss(task, model, inputs, y, cfg, kd_teacher)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step(model)
            step += 1
            loss_sum += loss.item() * len(y)
            score += task.metric(outputs, y)
            seen += len(y)
        metrics = {"epoch": float(epoch), "train_loss": loss_sum / max(1, seen),
                   "train_accuracy": score / max(1, seen), "epoch_s": time.perf_counter() - t0}
        _end_epoch(model, metrics, val_loader, device, task,
                   f"[{desc}] epoch {epoch}/{n_epochs}" if progress else None)
        if on_epoch_end is not None:
            on_epoch_end(epoch, metrics)
        if on_checkpoint is not None:
            on_checkpoint(epoch, optimizer)
    return metrics


def _end_epoch(model: nn.Module, metrics: dict[str, float], val_loader: DataLoader | None,
               device: torch.device, task: Task, label: str | None) -> None:
    """Add the val metrics to an epoch's `metrics` and print its line (with a `label`)."""
    if val_loader is not None:
        res = evaluate(model, val_loader, device, task=task)
        metrics.update(val_accuracy=res.accuracy, val_loss=res.loss)
    if label is not None:
        shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k != "epoch")
        tqdm.write(f"{label}: {shown}")
        sys.stdout.flush()  # seen as it happens when stdout is a pipe or a log file
