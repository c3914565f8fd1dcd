"""Dense training, fine-tuning (optionally distilled from the dense teacher) and evaluation."""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

__all__ = ["TrainConfig", "FinetuneConfig", "EvalResult", "EpochCallback", "evaluate", "fit",
           "resolve_device", "seed_everything"]


class TrainConfig(BaseModel):
    """Optimisation settings for pretraining and fine-tuning."""

    model_config = ConfigDict(extra="forbid")

    # May be fractional (0.5 trains on half an epoch of batches); 0 trains nothing.
    epochs: float = Field(10, ge=0)
    lr: float = Field(0.1, gt=0)  # peak learning rate of SGD
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)  # linear warm-up before the schedule starts
    # Knowledge distillation from the dense teacher (fine-tuning only): loss =
    # (1 - kd_alpha) * CE + kd_alpha * T^2 * KL(student_T || teacher_T).
    kd_alpha: float = Field(0.0, ge=0, le=1)
    kd_temperature: float = Field(4.0, gt=0)
    seed: int = 0
    device: str = "auto"  # "auto" picks CUDA when present, else CPU
    # Threads for CPU work; None leaves PyTorch's default.
    threads: int | None = Field(None, ge=1)


class FinetuneConfig(TrainConfig):
    """Fine-tuning of each pruned candidate: `TrainConfig` with the defaults fine-tuning
    wants (the same whether the config's `finetune` section is absent or partly given)."""

    epochs: float = Field(0, ge=0)  # 0 scores the candidate without fine-tuning
    lr: float = Field(0.01, gt=0)
    warmup_epochs: float = Field(0.0, ge=0)
    # Training images the pruned model's BatchNorm statistics are re-estimated on before it is
    # evaluated (no weight changes); 0 keeps the statistics it has. Without it, a pruned but
    # not fine-tuned model scores near chance (the dense model's statistics no longer fit).
    bn_calibration: int = Field(512, ge=0)


@dataclass(frozen=True)
class EvalResult:
    accuracy: float  # top-1, in [0, 1]
    loss: float  # mean cross-entropy
    samples: int


EpochCallback = Callable[[int, dict[str, float]], None]
"""Called after each epoch with (epoch number from 1, metrics); may raise to stop training."""


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` is CUDA when present, else CPU; anything else is passed to `torch.device`."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available; use 'auto' "
                         "or 'cpu'")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device | str = "cpu",
             *, max_batches: int | None = None) -> EvalResult:
    """Top-1 accuracy and mean cross-entropy of `model` over `loader` (eval mode)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    correct, loss_sum, n = 0, 0.0, 0
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        n += len(y)
    model.train(was_training)
    if n == 0:
        raise ValueError("evaluate() got an empty loader")
    return EvalResult(accuracy=correct / n, loss=loss_sum / n, samples=n)


def _lr_at(step: int, total: int, warmup: int, cfg: TrainConfig) -> float:
    if warmup and step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * min(1.0, progress)))


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
) -> dict[str, float]:
    """Train `model` in place with SGD and the configured schedule; returns the last metrics.

    `teacher` enables distillation (`cfg.kd_alpha > 0`). `after_step(model)` runs after every
    optimiser step (the pruning engine re-applies masks there, so pruned weights stay zero).
    `on_epoch_end(epoch, metrics)` sees train loss and, with `val_loader`, val accuracy / loss.
    """
    if cfg.epochs == 0:
        return {}
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model.to(device).train()
    if teacher is not None:
        teacher.to(device).eval()
    # No weight decay on BN / bias parameters: standard practice, and it keeps decay from
    # fighting the masks of pruned weights (they are zero and stay zero).
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=cfg.lr, momentum=cfg.momentum,
                                nesterov=cfg.nesterov and cfg.momentum > 0)
    steps_per_epoch = len(train_loader)
    total_steps = max(1, int(round(cfg.epochs * steps_per_epoch)))
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    n_epochs = math.ceil(total_steps / steps_per_epoch)
    use_kd = teacher is not None and cfg.kd_alpha > 0
    step, metrics = 0, {}
    for epoch in range(1, n_epochs + 1):
        t0, loss_sum, seen, correct = time.perf_counter(), 0.0, 0, 0
        batches = tqdm(train_loader, desc=f"{desc} epoch {epoch}/{n_epochs}", leave=False,
                       disable=not progress, mininterval=2.0)
        for x, y in batches:
            if step >= total_steps:
                break
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, total_steps, warmup, cfg)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            if use_kd:
                with torch.no_grad():
                    t_logits = teacher(x)
                t = cfg.kd_temperature
                kd = F.kl_div(F.log_softmax(logits / t, 1), F.log_softmax(t_logits / t, 1),
                              reduction="batchmean", log_target=True) * t * t
                loss = (1 - cfg.kd_alpha) * loss + cfg.kd_alpha * kd
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step(model)
            step += 1
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
        metrics = {"epoch": float(epoch), "train_loss": loss_sum / max(1, seen),
                   "train_accuracy": correct / max(1, seen), "epoch_s": time.perf_counter() - t0}
        if val_loader is not None:
            res = evaluate(model, val_loader, device)
            metrics.update(val_accuracy=res.accuracy, val_loss=res.loss)
        if progress:
            shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k != "epoch")
            tqdm.write(f"[{desc}] epoch {epoch}/{n_epochs}: {shown}")
        if on_epoch_end is not None:
            on_epoch_end(epoch, metrics)
    return metrics
