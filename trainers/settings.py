"""The trainers' config sections (dataset, model, training, fine-tuning) as pydantic models.

Kept apart from the code that uses them and free of torch, so a config file is read and
checked (`prunetune.orchestrator.config`) in well under a second, before torch is imported.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DataConfig", "FinetuneConfig", "ModelConfig", "TrainConfig"]


class DataConfig(BaseModel):
    """Which dataset, how it is split, and how it is loaded."""

    model_config = ConfigDict(extra="forbid")

    # What the model is trained and scored on: how batches become inputs and targets, the
    # loss, the metric, the example and calibration inputs, the data itself
    # (`prunetune.trainers.tasks`): a registered task's name, or "package.module:attr" naming
    # a `Task` outside the package. The default classifies `name`'s images.
    task: str = "image-classification"
    # The image dataset (image-classification; another task reads it as it says).
    name: Literal["fashion-mnist", "digits", "cifar10", "imagefolder"] = "fashion-mnist"
    # Folder with the dataset's files; None searches the usual places (see load_data).
    root: str | None = None
    # Share of the training set carved out as validation (deterministic, seeded).
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    # Optional sizes of the splits actually used (first n of the seeded order); None: all.
    train_subset: int | None = Field(None, ge=1)
    val_subset: int | None = Field(None, ge=1)
    test_subset: int | None = Field(None, ge=1)
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(512, ge=1)
    # DataLoader worker processes; 0 loads in the training process (best for in-memory sets).
    workers: int = Field(0, ge=0)
    # Random crop (pad 2 for 28x28, 4 for 32x32) and horizontal flip on the training split.
    augment: bool = True
    # Only fashion-mnist / cifar10 can be downloaded, and only when this is true.
    allow_download: bool = False
    # Seed of the train/val carving; the same seed gives the same splits.
    split_seed: int = 0
    # Side length images are resized to (imagefolder only).
    image_size: int = Field(32, ge=8)


class ModelConfig(BaseModel):
    """The model to prune: a zoo name, `torchvision:NAME` or `package.module:factory`."""

    model_config = ConfigDict(extra="forbid")

    name: str = "resnet20"
    # Extra keyword arguments for the model factory (e.g. {"width": 0.5} for mobilenetv2).
    kwargs: dict[str, Any] = Field(default_factory=dict)
    # A dense checkpoint to start from instead of pretraining (a prunetune checkpoint file).
    checkpoint: str | None = None


class TrainConfig(BaseModel):
    """Optimisation settings for pretraining and fine-tuning."""

    model_config = ConfigDict(extra="forbid")

    # May be fractional (0.5 trains on half an epoch of batches); 0 trains nothing.
    epochs: float = Field(10, ge=0)
    # SGD with momentum suits CNNs; transformers train far faster with AdamW (decoupled weight
    # decay, a peak lr near 1e-3). momentum and nesterov apply to SGD only.
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)  # peak learning rate
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

    # 0 scores the candidate without fine-tuning. Left unset in a search's config, the search
    # chooses: 0 for a model with BatchNorm, a few steps for one without.
    epochs: float = Field(0, ge=0)
    lr: float = Field(0.01, gt=0)
    warmup_epochs: float = Field(0.0, ge=0)
    # Training images the pruned model's BatchNorm statistics are re-estimated on before it is
    # evaluated (no weight changes); 0 keeps the statistics it has. Without it, a pruned but
    # not fine-tuned model scores near chance (the dense model's statistics no longer fit).
    bn_calibration: int = Field(512, ge=0)
