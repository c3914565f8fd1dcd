"""Datasets and tasks, model zoo, training / fine-tuning / evaluation, and the Ray Tune trial
function.

The names below are imported on first use (PEP 562), so `prunetune.trainers.settings`, the
config sections, is read without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
    from .data import load_data
    from .models import build_model, zoo_names
    from .pretrain import PretrainResult, default_cache_dir, pretrain_dense
    from .prune import PrunedModel, prune_and_evaluate
    from .settings import DataConfig, FinetuneConfig, ModelConfig, TrainConfig
    from .tasks import DataBundle, DatasetShape, Task, TaskBase, get_task, register_task, task_names
    from .train import EvalResult, evaluate, fit, resolve_device, seed_everything
    from .trial import FINAL_KEY, TrialSetup, dense_reference_ms, evaluate_policy, run_trial

_WHERE = {
    "CheckpointError": "prunetune.errors",
    "DatasetNotFoundError": "prunetune.errors",
    "ModelNotFoundError": "prunetune.errors",
    "DataConfig": ".settings",
    "FinetuneConfig": ".settings",
    "ModelConfig": ".settings",
    "TrainConfig": ".settings",
    "load_checkpoint": ".checkpoint",
    "model_from_checkpoint": ".checkpoint",
    "save_checkpoint": ".checkpoint",
    "DataBundle": ".tasks",
    "DatasetShape": ".tasks",
    "Task": ".tasks",
    "TaskBase": ".tasks",
    # through .data, which registers the built-in task: the registry is never seen without it
    "get_task": ".data",
    "register_task": ".data",
    "task_names": ".data",
    "load_data": ".data",
    "build_model": ".models",
    "zoo_names": ".models",
    "PretrainResult": ".pretrain",
    "default_cache_dir": ".pretrain",
    "pretrain_dense": ".pretrain",
    "PrunedModel": ".prune",
    "prune_and_evaluate": ".prune",
    "EvalResult": ".train",
    "evaluate": ".train",
    "fit": ".train",
    "resolve_device": ".train",
    "seed_everything": ".train",
    "FINAL_KEY": ".trial",
    "TrialSetup": ".trial",
    "dense_reference_ms": ".trial",
    "evaluate_policy": ".trial",
    "run_trial": ".trial",
}

__all__ = [
    "CheckpointError",
    "DataBundle",
    "DataConfig",
    "DatasetNotFoundError",
    "DatasetShape",
    "EvalResult",
    "FINAL_KEY",
    "FinetuneConfig",
    "ModelConfig",
    "ModelNotFoundError",
    "PretrainResult",
    "PrunedModel",
    "Task",
    "TaskBase",
    "TrainConfig",
    "TrialSetup",
    "build_model",
    "default_cache_dir",
    "dense_reference_ms",
    "evaluate",
    "evaluate_policy",
    "fit",
    "get_task",
    "load_checkpoint",
    "load_data",
    "model_from_checkpoint",
    "pretrain_dense",
    "prune_and_evaluate",
    "register_task",
    "resolve_device",
    "run_trial",
    "save_checkpoint",
    "seed_everything",
    "task_names",
    "zoo_names",
]


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(where, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
