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

from torch import nn

from prunetune.errors import ConfigError, ModelMismatchError
from prunetune.files import check_writable

from .checkpoint import (
    CHECKPOINT_FORMAT,
    content_hash,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from .data import (
    DataBundle,
    DataConfig,
    DatasetShape,
    check_data_present,
    dataset_shape,
    load_data,
)
from .models import build_model
from .settings import ModelConfig
from .train import TrainConfig, evaluate, fit, resolve_device, seed_everything

__all__ = ["ModelConfig", "PretrainResult", "check_dense_inputs", "default_cache_dir",
           "pretrain_cache_key", "pretrain_dense"]


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


_FACTORY_FIX = ("a model factory must build its first layer for the in_channels and its "
                "classifier for the num_classes it is called with")


def _check_fits(model: nn.Module, shape: DatasetShape, what: str, fix: str) -> None:
    """One forward pass of two blank images of the dataset's shape: a model that cannot take
    them (a factory that ignores `in_channels`, a checkpoint for other images) or gives the
    wrong number of classes is refused before any training, naming both shapes."""
    import torch

    c, (h, w) = shape.in_channels, shape.image_size
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, c, h, w))
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelMismatchError(f"{what} does not take the dataset's {c}x{h}x{w} images "
                                 f"(torch: {first}); {fix}") from None
    finally:
        model.train(was_training)
    if tuple(out.shape) != (2, shape.num_classes):
        raise ModelMismatchError(f"{what} gives outputs of shape {tuple(out.shape)[1:]} per "
                                 f"image, the dataset has {shape.num_classes} classes; {fix}")


def _from_checkpoint(model_cfg: ModelConfig, data_cfg: DataConfig) -> PretrainResult:
    """The dense model of `model.checkpoint`, refused (before any training) when it was made
    for images of another shape or another number of classes than `data`'s."""
    ckpt = load_checkpoint(model_cfg.checkpoint)
    spec, shape = ckpt["model"], dataset_shape(data_cfg)
    fix = (f"use a checkpoint pretrained on {data_cfg.name} (prunetune pretrain), or remove "
           "model.checkpoint to pretrain one")
    if (spec.get("in_channels"), spec.get("num_classes")) != (shape.in_channels,
                                                              shape.num_classes):
        raise ModelMismatchError(
            f"model.checkpoint {model_cfg.checkpoint} holds a model for "
            f"{spec.get('in_channels')}-channel images and {spec.get('num_classes')} classes, "
            f"but data {data_cfg.name} has {shape.in_channels}-channel images and "
            f"{shape.num_classes} classes; {fix}")
    model = model_from_checkpoint(ckpt)
    _check_fits(model, shape, f"model.checkpoint {model_cfg.checkpoint}", fix)
    return PretrainResult(model, Path(model_cfg.checkpoint), dict(ckpt.get("metrics", {})), True,
                          ckpt)


def _fresh_model(model_cfg: ModelConfig, data_cfg: DataConfig) -> nn.Module:
    """The model built for the dataset's images and classes, refused when it does not fit."""
    shape = dataset_shape(data_cfg)
    model = build_model(model_cfg.name, num_classes=shape.num_classes,
                        in_channels=shape.in_channels, **model_cfg.kwargs)
    _check_fits(model, shape, f"model {model_cfg.name!r}", _FACTORY_FIX)
    return model


def check_dense_inputs(model_cfg: ModelConfig, data_cfg: DataConfig) -> None:
    """What `pretrain_dense` would refuse, refused without training or reading the data: the
    dataset's files are there, the checkpoint (or the freshly built model) fits the dataset's
    images and classes. Seconds; a search runs it before it creates any folder."""
    check_data_present(data_cfg)
    if model_cfg.checkpoint:
        _from_checkpoint(model_cfg, data_cfg)
        return
    _fresh_model(model_cfg, data_cfg)


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
    """Train the dense model (or load it from the cache) and evaluate it on val and test.

    Before any training: the device must exist and the model must fit the dataset's images and
    classes (`ModelMismatchError` otherwise), so a bad setting fails in seconds."""
    if model_cfg.checkpoint:
        return _from_checkpoint(model_cfg, data_cfg)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = pretrain_cache_key(model_cfg, data_cfg, train_cfg)
    slug = f"{model_cfg.name.replace(':', '-').replace('/', '-')}-{data_cfg.name}-{key}.pt"
    path = cache / "checkpoints" / slug
    if path.is_file() and not force:
        ckpt = load_checkpoint(path)
        if progress:
            print(f"[pretrain] cache hit: {path}", flush=True)
        return PretrainResult(model_from_checkpoint(ckpt), path, dict(ckpt["metrics"]), True, ckpt)

    try:
        device = resolve_device(train_cfg.device)
    except ConfigError as err:
        raise ConfigError(f"pretrain.device: {err}") from None
    check_writable(path.parent, "cache_dir")  # not after the training, where it is saved
    seed_everything(train_cfg.seed)
    model = _fresh_model(model_cfg, data_cfg)
    if progress:  # flushed: a pretraining can run for minutes, and stdout may be a pipe or file
        print(f"[pretrain] no cached checkpoint: training {model_cfg.name} on {data_cfg.name} "
              f"for {train_cfg.epochs} epochs on {device}; loading the data", flush=True)
    data = data or load_data(data_cfg)
    if progress:
        print(f"[pretrain] {len(data.train)} train / {len(data.val)} val / {len(data.test)} "
              f"test images, {len(data.loader('train'))} batches of {data_cfg.batch_size} per "
              "epoch; a line per epoch follows", flush=True)
    return _train_and_save(model, data, model_cfg, data_cfg, train_cfg, device, key, path,
                           progress)


def _train_and_save(model: nn.Module, data: DataBundle, model_cfg: ModelConfig,
                    data_cfg: DataConfig, train_cfg: TrainConfig, device: Any, key: str,
                    path: Path, progress: bool) -> PretrainResult:
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
        print(f"[pretrain] test accuracy {test.accuracy:.4f} after {wall_s:.0f}s; saved {path}",
              flush=True)
    return PretrainResult(model, path, metrics, False, ckpt)
