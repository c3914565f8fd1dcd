"""Datasets, model zoo, training / fine-tuning / evaluation, and the Ray Tune trial function."""

from .checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint
from .data import DataBundle, DataConfig, DatasetNotFoundError, load_data
from .models import ModelNotFoundError, build_model, zoo_names
from .pretrain import ModelConfig, PretrainResult, default_cache_dir, pretrain_dense
from .prune import PrunedModel, prune_and_evaluate
from .train import (
    EvalResult,
    FinetuneConfig,
    TrainConfig,
    evaluate,
    fit,
    resolve_device,
    seed_everything,
)
from .trial import FINAL_KEY, TrialSetup, dense_reference_ms, evaluate_policy, run_trial

__all__ = [
    "CheckpointError",
    "DataBundle",
    "DataConfig",
    "DatasetNotFoundError",
    "EvalResult",
    "FinetuneConfig",
    "FINAL_KEY",
    "ModelConfig",
    "ModelNotFoundError",
    "PretrainResult",
    "PrunedModel",
    "TrainConfig",
    "TrialSetup",
    "build_model",
    "default_cache_dir",
    "dense_reference_ms",
    "evaluate",
    "evaluate_policy",
    "fit",
    "load_checkpoint",
    "load_data",
    "model_from_checkpoint",
    "pretrain_dense",
    "prune_and_evaluate",
    "resolve_device",
    "run_trial",
    "save_checkpoint",
    "seed_everything",
    "zoo_names",
]
