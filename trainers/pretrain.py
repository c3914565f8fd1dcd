"""Dense pretraining with a content-addressed checkpoint cache.

The cache key hashes (model, dataset, training config), minus settings that do not change the
result (device, threads, loader workers), so a second pretraining of the same thing is a load.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from .checkpoint import (
    CHECKPOINT_FORMAT,
    content_hash,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from .data import DataBundle, DataConfig, load_data
from .models import build_model
from .train import TrainConfig, evaluate, fit, resolve_device, seed_everything

__all__ = ["ModelConfig", "PretrainResult", "default_cache_dir", "pretrain_cache_key",
           "pretrain_dense"]


class ModelConfig(BaseModel):
    """The model to prune: a zoo name, `torchvision:NAME` or `package.module:factory`."""

    model_config = ConfigDict(extra="forbid")

    name: str = "resnet20"
    # Extra keyword arguments for the model factory (e.g. {"width": 0.5} for mobilenetv2).
    kwargs: dict[str, Any] = Field(default_factory=dict)
    # A dense checkpoint to start from instead of pretraining (a prunetune checkpoint file).
    checkpoint: str | None = None


@dataclass
class PretrainResult:
    model: nn.Module
    checkpoint_path: Path
    metrics: dict[str, float]  # val/test accuracy and loss, epochs, wall_s of the training
    cached: bool  # True when loaded from the cache instead of trained
    checkpoint: dict[str, Any]


def default_cache_dir() -> Path:
    """`$PRUNETUNE_CACHE`, else `~/.cache/prunetune`."""
    return Path(os.environ.get("PRUNETUNE_CACHE", "~/.cache/prunetune")).expanduser()


def pretrain_cache_key(model_cfg: ModelConfig, data_cfg: DataConfig, train_cfg: TrainConfig) -> str:
    data = data_cfg.model_dump(exclude={"workers", "eval_batch_size"})
    train = train_cfg.model_dump(exclude={"device", "threads"})
    model = model_cfg.model_dump(exclude={"checkpoint"})
    return content_hash({"model": model, "data": data, "train": train, "format": CHECKPOINT_FORMAT})


def pretrain_dense(
    model_cfg: ModelConfig,
    data_cfg: DataConfig,
    train_cfg: TrainConfig,
    *,
    cache_dir: str | os.PathLike | None = None,
    data: DataBundle | None = None,
    force: bool = False,
    progress: bool = True,
) -> PretrainResult:
    """Train the dense model (or load it from the cache) and evaluate it on val and test."""
    if model_cfg.checkpoint:
        ckpt = load_checkpoint(model_cfg.checkpoint)
        return PretrainResult(model_from_checkpoint(ckpt), Path(model_cfg.checkpoint),
                              dict(ckpt.get("metrics", {})), True, ckpt)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = pretrain_cache_key(model_cfg, data_cfg, train_cfg)
    slug = f"{model_cfg.name.replace(':', '-').replace('/', '-')}-{data_cfg.name}-{key}.pt"
    path = cache / "checkpoints" / slug
    if path.is_file() and not force:
        ckpt = load_checkpoint(path)
        if progress:
            print(f"[pretrain] cache hit: {path}")
        return PretrainResult(model_from_checkpoint(ckpt), path, dict(ckpt["metrics"]), True, ckpt)

    data = data or load_data(data_cfg)
    seed_everything(train_cfg.seed)
    model = build_model(model_cfg.name, num_classes=data.num_classes,
                        in_channels=data.in_channels, **model_cfg.kwargs)
    device = resolve_device(train_cfg.device)
    if progress:
        print(f"[pretrain] {model_cfg.name} on {data.name} ({len(data.train)} train / "
              f"{len(data.val)} val / {len(data.test)} test) for {train_cfg.epochs} epochs on "
              f"{device}")
    t0 = time.perf_counter()
    fit(model, data.loader("train", seed=train_cfg.seed), train_cfg,
        val_loader=data.loader("val") if len(data.val) else None, progress=progress,
        desc="pretrain")
    wall_s = time.perf_counter() - t0
    test = evaluate(model, data.loader("test"), device)
    metrics = {"test_accuracy": test.accuracy, "test_loss": test.loss,
               "epochs": float(train_cfg.epochs), "wall_s": wall_s}
    if len(data.val):
        val = evaluate(model, data.loader("val"), device)
        metrics.update(val_accuracy=val.accuracy, val_loss=val.loss)
    model.cpu().eval()
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "model": {"name": model_cfg.name, "kwargs": dict(model_cfg.kwargs),
                  "num_classes": data.num_classes, "in_channels": data.in_channels},
        "data": data_cfg.model_dump(),
        "train": train_cfg.model_dump(),
        "cache_key": key,
        "state_dict": model.state_dict(),
        "metrics": metrics,
    }
    save_checkpoint(path, ckpt)
    if progress:
        print(f"[pretrain] test accuracy {test.accuracy:.4f} after {wall_s:.0f}s; saved {path}")
    return PretrainResult(model, path, metrics, False, ckpt)
