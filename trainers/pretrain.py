"""Dense pretraining with a content-addressed checkpoint cache.

The cache key hashes (model, dataset, training config), minus settings that do not change the
result (device, threads, loader workers), so a second pretraining of the same thing is a load.
An interrupted pretraining resumes from its last completed epoch: each epoch leaves a partial
checkpoint beside the cached one (`trainers.resume`), removed once the finished model is saved.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
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
    get_task,
    load_data,
)
from .models import build_model
from .resume import (
    load_partial,
    partial_path,
    restore_rng,
    rng_state,
    run_fingerprint,
    save_partial,
)
from .settings import ModelConfig
from .tasks import DEFAULT_TASK
from .train import (
    FitResume,
    TrainConfig,
    evaluate,
    fit,
    fit_epochs,
    resolve_device,
    seed_everything,
)

__all__ = ["ModelConfig", "PretrainResult", "check_dense_inputs", "default_cache_dir",
           "pretrain_cache_key", "pretrain_checkpoint_path", "pretrain_dense", "still_improving",
           "STILL_IMPROVING_RATE"]

# A dense model is "still improving" when, over the last quarter of its evaluated epochs (at
# least the last epoch-to-epoch step), val accuracy rose above the best it had before that
# quarter by more than STILL_IMPROVING_RATE per epoch, and by more than twice the val split's
# sampling noise (sqrt(p(1-p)/n): a smaller rise on a few hundred images is chance). 0.1 points
# per epoch: 4 more epochs of a 3-epoch ResNet-20 on Fashion-MNIST gained 2.0 points (0.5 per
# epoch; issue 25), while a long cosine run that has levelled off rises a few hundredths of a
# point per epoch over its last quarter (its low-learning-rate end included). Fewer than
# MIN_CURVE_EPOCHS evaluated epochs is no curve to judge.
STILL_IMPROVING_RATE = 0.001  # val accuracy (a fraction) per epoch
LATE_FRACTION = 0.25
MIN_CURVE_EPOCHS = 3


@dataclass
class PretrainResult:
    model: nn.Module
    checkpoint_path: Path
    metrics: dict[str, float]  # val/test accuracy and loss, epochs, wall_s of the training
    cached: bool  # True when loaded from the cache instead of trained
    checkpoint: dict[str, Any]
    # The still-improving warning (`still_improving`), None for a model that levelled off or
    # whose checkpoint has no training curve (older ones, fewer than 3 epochs, no val split).
    warning: str | None = None


def default_cache_dir() -> Path:
    """`$PRUNETUNE_CACHE`, else `~/.cache/prunetune`."""
    return Path(os.environ.get("PRUNETUNE_CACHE", "~/.cache/prunetune")).expanduser()


def pretrain_cache_key(model_cfg: ModelConfig, data_cfg: DataConfig, train_cfg: TrainConfig) -> str:
    # The default task is left out of the key, so checkpoints cached before there were tasks
    # are still found.
    default_task = {"task"} if data_cfg.task == DEFAULT_TASK else set()
    data = data_cfg.model_dump(exclude={"workers", "eval_batch_size"} | default_task)
    # Likewise SGD, the default optimizer: checkpoints cached before there was a choice.
    default_optimizer = {"optimizer"} if train_cfg.optimizer == "sgd" else set()
    train = train_cfg.model_dump(exclude={"device", "threads"} | default_optimizer)
    model = model_cfg.model_dump(exclude={"checkpoint"})
    return content_hash({"model": model, "data": data, "train": train, "format": CHECKPOINT_FORMAT})


def pretrain_checkpoint_path(model_cfg: ModelConfig, data_cfg: DataConfig,
                             train_cfg: TrainConfig,
                             cache_dir: str | os.PathLike | None = None) -> Path:
    """Where `pretrain_dense` caches this dense model (`cache_dir`: default, the
    `default_cache_dir`); its partial checkpoint goes beside it (`resume.partial_path`)."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = pretrain_cache_key(model_cfg, data_cfg, train_cfg)
    slug = f"{model_cfg.name.replace(':', '-').replace('/', '-')}-{data_cfg.name}-{key}.pt"
    return cache / "checkpoints" / slug


_FACTORY_FIX = ("a model factory must build its first layer for the in_channels and its "
                "classifier for the num_classes it is called with")


def _check_fits(model: nn.Module, cfg: DataConfig, shape: DatasetShape, what: str,
                fix: str) -> None:
    """One forward pass of the task's example input for two samples (image classification: two
    blank images of the dataset's shape): a model that cannot take them (a factory that
    ignores `in_channels`, a checkpoint for other images) or gives outputs the task cannot
    score (the wrong number of classes) is refused before any training, naming both shapes."""
    import torch

    task = get_task(cfg.task)
    inputs = task.example_input(shape, 2)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = task.forward(model, inputs)
    except (RuntimeError, TypeError) as err:  # TypeError: a model of other inputs' count
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelMismatchError(f"{what} does not take the dataset's "
                                 f"{task.describe_input(shape)} (torch: {first}); "
                                 f"{fix}") from None
    finally:
        model.train(was_training)
    mismatch = task.check_output(out, shape, 2)
    if mismatch is not None:
        raise ModelMismatchError(f"{what} {mismatch}; {fix}")


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
    _check_fits(model, data_cfg, shape, f"model.checkpoint {model_cfg.checkpoint}", fix)
    return PretrainResult(model, Path(model_cfg.checkpoint), dict(ckpt.get("metrics", {})), True,
                          ckpt, _warn(ckpt, f"model.checkpoint {model_cfg.checkpoint}"))


def _fresh_model(model_cfg: ModelConfig, data_cfg: DataConfig) -> nn.Module:
    """The model built for the dataset's images and classes, refused when it does not fit."""
    shape = dataset_shape(data_cfg)
    model = build_model(model_cfg.name, num_classes=shape.num_classes,
                        in_channels=shape.in_channels, **model_cfg.kwargs)
    _check_fits(model, data_cfg, shape, f"model {model_cfg.name!r}", _FACTORY_FIX)
    return model


def check_dense_inputs(model_cfg: ModelConfig, data_cfg: DataConfig) -> None:
    """What `pretrain_dense` would refuse, refused without training or reading the data: the
    task (`data.task`) exists, the dataset's files are there, the checkpoint (or the freshly
    built model) fits the dataset's images and classes. Seconds; a search runs it before it
    creates any folder."""
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
    get_task(data_cfg.task)  # a bad data.task: a ConfigError before anything else
    if model_cfg.checkpoint:
        return _from_checkpoint(model_cfg, data_cfg)
    key = pretrain_cache_key(model_cfg, data_cfg, train_cfg)
    path = pretrain_checkpoint_path(model_cfg, data_cfg, train_cfg, cache_dir)
    if path.is_file() and not force:
        ckpt = load_checkpoint(path)
        if progress:
            print(f"[pretrain] cache hit: {path}", flush=True)
        return PretrainResult(model_from_checkpoint(ckpt), path, dict(ckpt["metrics"]), True,
                              ckpt, _warn(ckpt, f"{model_cfg.name} on {data_cfg.name}"))

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
                           progress, force)


def _train_and_save(model: nn.Module, data: DataBundle, model_cfg: ModelConfig,
                    data_cfg: DataConfig, train_cfg: TrainConfig, device: Any, key: str,
                    path: Path, progress: bool, force: bool) -> PretrainResult:
    curve, wall_s = _train(model, data, train_cfg, device, key, path, progress, force)
    test = evaluate(model, data.loader("test"), device)
    metrics = {"test_accuracy": test.accuracy, "test_loss": test.loss,
               "epochs": float(train_cfg.epochs), "wall_s": wall_s}
    # the last epoch's running train accuracy / loss (augmented batches, weights moving)
    metrics.update({k: float(curve[k][-1]) for k in ("train_accuracy", "train_loss")
                    if curve.get(k)})
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
        # per-epoch training curve (lists of floats, keyed as fit's epoch metrics) and the val
        # split's size; checkpoints written before it have none (and load as before)
        "curve": {**curve, "val_samples": float(len(data.val))},
    }
    save_checkpoint(path, ckpt)
    partial_path(path).unlink(missing_ok=True)  # only once the finished model is saved
    if progress:
        print(f"[pretrain] test accuracy {test.accuracy:.4f} after {wall_s:.0f}s; saved {path}",
              flush=True)
    return PretrainResult(model, path, metrics, False, ckpt,
                          _warn(ckpt, f"{model_cfg.name} on {data_cfg.name}"))


def _train(model: nn.Module, data: DataBundle, train_cfg: TrainConfig, device: Any, key: str,
           path: Path, progress: bool, force: bool) -> tuple[dict[str, list[float]], float]:
    """Train `model`, after each epoch saving a partial checkpoint beside `path`, and resuming
    from the one a matching interrupted run left (`trainers.resume`; `force`: start over);
    returns the per-epoch training curve and the seconds trained, this run and the ones
    resumed."""
    loader = data.loader("train", seed=train_cfg.seed)
    partial_file = partial_path(path)
    expected = run_fingerprint(key, len(data.train), len(loader))
    threads = train_cfg.threads or torch.get_num_threads()
    run = {"device": str(device), "threads": threads}
    partial = None
    if train_cfg.epochs > 0 and not force:
        partial = load_partial(partial_file, expected, fit_epochs(train_cfg, len(loader)))
    resume, curve, before = None, {}, 0.0
    if partial is not None:
        model.load_state_dict(partial["state_dict"])
        restore_rng(partial["rng"], loader.generator)
        resume = FitResume(partial["epoch"], partial["optimizer"])
        curve = {k: list(v) for k, v in partial["curve"].items()}
        before = float(partial["elapsed_s"])
        _say_resumed(partial, partial_file, fit_epochs(train_cfg, len(loader)), run, progress)
    t0 = time.perf_counter()

    def record(epoch: int, epoch_metrics: dict[str, float]) -> None:
        # the last epoch of a fractional count is partial: placed at where training ended
        curve.setdefault("epoch", []).append(min(float(epoch), float(train_cfg.epochs)))
        for k in ("train_loss", "train_accuracy", "val_accuracy", "val_loss"):
            if k in epoch_metrics:
                curve.setdefault(k, []).append(float(epoch_metrics[k]))

    def checkpoint(epoch: int, optimizer: torch.optim.Optimizer) -> None:
        save_partial(partial_file, model=model, optimizer=optimizer, epoch=epoch, curve=curve,
                     elapsed_s=before + time.perf_counter() - t0, fingerprint=expected,
                     rng=rng_state(loader.generator, device), run=run)

    fit(model, loader, train_cfg, val_loader=data.loader("val") if len(data.val) else None,
        progress=progress, desc="pretrain", on_epoch_end=record, resume=resume,
        on_checkpoint=checkpoint)
    return curve, before + time.perf_counter() - t0


def _say_resumed(partial: dict[str, Any], path: Path, epochs: int, run: dict[str, Any],
                 progress: bool) -> None:
    """The resume's progress line; and, on stderr, that a resume on another device or thread
    count continues the same training but is not bit-identical to an uninterrupted run."""
    if progress:
        print(f"[pretrain] resuming from epoch {partial['epoch']} of {epochs}: {path}",
              flush=True)
    was = partial.get("run") or {}
    if was and was != run:
        print(f"[pretrain] note: the resumed epochs ran on {was.get('device')} with "
              f"{was.get('threads')} threads, these run on {run['device']} with "
              f"{run['threads']}: the same training, but floating-point sums in another order, "
              "so not bit-identical to an uninterrupted run", file=sys.stderr, flush=True)


def still_improving(epochs: list[float], val_accuracy: list[float], val_samples: float
                    ) -> tuple[float, float] | None:
    """(gain, span): val accuracy's rise over the last quarter of the curve above its best
    before it, and the epochs that quarter spans, when that rise says the model was still
    improving at the end (see STILL_IMPROVING_RATE); None for a curve that levelled off, or
    with fewer than MIN_CURVE_EPOCHS points."""
    n = min(len(epochs), len(val_accuracy))
    if n < MIN_CURVE_EPOCHS or val_samples <= 0:
        return None
    late = max(1, math.ceil(LATE_FRACTION * (n - 1)))  # epoch-to-epoch steps judged
    start = n - 1 - late
    gain = val_accuracy[n - 1] - max(val_accuracy[:start + 1])
    span = epochs[n - 1] - epochs[start]
    p = min(max(val_accuracy[n - 1], 0.0), 1.0)
    noise = 2.0 * math.sqrt(p * (1.0 - p) / val_samples)
    if span <= 0 or gain <= noise or gain / span <= STILL_IMPROVING_RATE:
        return None
    return gain, span


def _warn(ckpt: dict[str, Any], what: str) -> str | None:
    """The one-line still-improving warning of a checkpoint's curve, printed on stderr; None
    (and nothing printed) when the curve levelled off or there is none to judge."""
    curve = ckpt.get("curve") or {}
    epochs, val = curve.get("epoch", []), curve.get("val_accuracy", [])
    verdict = still_improving(list(epochs), list(val), float(curve.get("val_samples", 0)))
    if verdict is None:
        return None
    gain, span = verdict
    trained = float(ckpt.get("train", {}).get("epochs", epochs[-1]))
    more = max(math.ceil(2 * trained), math.ceil(trained) + 1)
    line = (f"[pretrain] warning: {what} was still improving when its pretraining ended: val "
            f"accuracy rose {100 * gain:.1f} points over its last {span:g} of {trained:g} "
            f"epochs ({100 * gain / span:.2f} points per epoch; a model that levelled off "
            f"gains under {100 * STILL_IMPROVING_RATE:g}); pruned models will be compared with an "
            f"under-trained dense one. Set pretrain.epochs: {more} (or more) and pretrain again")
    print(line, file=sys.stderr, flush=True)
    return line
