"""The task seam: what a model is trained and scored on, apart from the model itself.

A task owns how a dataset's batches become the model's inputs and targets, the loss (label
smoothing and the distillation term included), the metric a trial reports as `accuracy`
(higher is better), the example input that analysis, cost and latency trace, the calibration
batch BatchNorm statistics are re-estimated on, and the data itself (its splits and shape).
Training, evaluation, pretraining, pruning, the sensitivity scan and trials all go through it,
so a non-image or multi-input model is one module: a `TaskBase` subclass.

The built-in task is `image-classification` (`trainers.data.ImageClassification`: image
tensors, `logits = model(x)`, cross-entropy, top-1 accuracy), registered by `trainers.data`.
Config names a task as `data.task: NAME`, or `package.module:attr` for a task outside this
package (a `Task` object, or a class instantiated with no arguments), as
`latency.backend` names a latency backend. `tests/toy_task.py` is one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.dataloader import default_collate

from prunetune.errors import ConfigError
from prunetune.registry import Registry

from .settings import DataConfig, TrainConfig

__all__ = [
    "DEFAULT_TASK",
    "DataBundle",
    "DatasetShape",
    "Inputs",
    "ModelInput",
    "Task",
    "TaskBase",
    "TaskLoader",
    "as_inputs",
    "as_model_input",
    "get_task",
    "register_task",
    "task_names",
]

DEFAULT_TASK = "image-classification"

Inputs = tuple[torch.Tensor, ...]
"""A model's positional inputs: the model is called as `model(*inputs)`."""

ModelInput = torch.Tensor | Inputs
"""What analysis, cost counting and latency take: a lone tensor is a model's one input."""


def as_inputs(value: ModelInput) -> Inputs:
    """`value` as a tuple of positional inputs (a lone tensor is one)."""
    return (value,) if isinstance(value, torch.Tensor) else tuple(value)


def as_model_input(inputs: Inputs) -> ModelInput:
    """The one tensor of a one-input model (what every single-input caller took before there
    were tasks), else the tuple."""
    return inputs[0] if len(inputs) == 1 else inputs


@dataclass(frozen=True)
class DatasetShape:
    """What a model must take and give for a dataset, known without reading the data: the
    model factory is called with `in_channels=` and `num_classes=`. For an image task,
    channels, `(H, W)` and classes; another task says what they mean for it (a vector task:
    features, `()`, outputs)."""

    in_channels: int
    image_size: tuple[int, ...]
    num_classes: int


class TaskLoader(DataLoader):
    """A DataLoader that knows the task its batches are for, so `evaluate(model, loader)` and
    `fit` score a loader of any task without being told."""

    def __init__(self, dataset: Dataset, *, task: Task, **kwargs: object) -> None:
        super().__init__(dataset, **kwargs)  # type: ignore[arg-type]
        self.task = task


@dataclass
class DataBundle:
    """The three splits of one dataset plus what a model needs to know about it."""

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    image_size: tuple[int, ...]
    config: DataConfig
    # Indices of each split in its source set ("train" and "val" index the source training
    # set, "test" the source test set): lets callers check the splits are disjoint and stable.
    split_indices: dict[str, torch.Tensor | None] | None = None

    @property
    def task(self) -> Task:
        """The task of this data (the config's `task`)."""
        return get_task(self.config.task)

    @property
    def shape(self) -> DatasetShape:
        return DatasetShape(self.in_channels, tuple(self.image_size), self.num_classes)

    def loader(self, split: Literal["train", "val", "test"], *, shuffle: bool | None = None,
               seed: int = 0) -> TaskLoader:
        """A DataLoader for one split; the training split shuffles with a seeded generator."""
        dataset = {"train": self.train, "val": self.val, "test": self.test}[split]
        is_train = split == "train"
        shuffle = is_train if shuffle is None else shuffle
        generator = torch.Generator().manual_seed(seed) if shuffle else None
        return TaskLoader(
            dataset,
            task=self.task,
            batch_size=self.config.batch_size if is_train else self.config.eval_batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=self.config.workers,
            drop_last=False,
        )

    def example_input(self, batch: int = 1) -> ModelInput:
        """The task's example input for `batch` samples (image classification: a zero tensor
        `batch x C x H x W`); a tuple for a model of several inputs."""
        return as_model_input(self.task.example_input(self.shape, batch))


@runtime_checkable
class Task(Protocol):
    """What training, evaluation, pruning and trials need of a task (`TaskBase` gives the
    defaults of a one-input classifier)."""

    # The config name (`data.task`).
    name: str
    # What the metric is, for people: trials report it as `accuracy` (higher is better).
    metric_name: str

    def shape(self, cfg: DataConfig) -> DatasetShape:
        """The data's shape from the config alone (no data read): seconds, before training."""

    def check_data(self, cfg: DataConfig) -> None:
        """Raise (a `PrunetuneError`) when the data is not where the config says."""

    def load_data(self, cfg: DataConfig) -> DataBundle:
        """The data's train / val / test splits, as `cfg` says."""

    def example_input(self, shape: DatasetShape, batch: int) -> Inputs:
        """Inputs for `batch` samples that the model accepts (zeros will do): what analysis,
        cost counting, the fit check and latency trace."""

    def split(self, batch: object) -> tuple[Inputs, torch.Tensor]:
        """One loader batch as (the model's positional inputs, the targets)."""

    def forward(self, model: nn.Module, inputs: Inputs) -> torch.Tensor:
        """The model's outputs for `inputs`."""

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, cfg: TrainConfig | None,
             reduction: Literal["mean", "sum"] = "mean") -> torch.Tensor:
        """The loss; `cfg` is the training config (label smoothing), None when evaluating."""

    def distill(self, outputs: torch.Tensor, teacher_outputs: torch.Tensor,
                cfg: TrainConfig) -> torch.Tensor:
        """The distillation term (`cfg.kd_alpha` weighs it against `loss`)."""

    def metric(self, outputs: torch.Tensor, targets: torch.Tensor) -> float:
        """The metric summed over the batch's samples (mean = sum / samples): accuracy counts
        the correct ones."""

    def calibration_inputs(self, data: DataBundle, n: int) -> Inputs | None:
        """A fixed batch of `n` training samples' inputs, BatchNorm statistics are re-estimated
        on; None when n is 0."""

    def check_output(self, outputs: torch.Tensor, shape: DatasetShape, batch: int
                     ) -> str | None:
        """Why the model's outputs for `batch` example samples do not fit the data (None: they
        do): a model that cannot be scored is refused before any training."""

    def describe_input(self, shape: DatasetShape) -> str:
        """The inputs in words, for errors ("1x28x28 images")."""


class TaskBase:
    """Defaults of a one-input classifier: a batch is `(x, y)`, `outputs = model(x)`,
    cross-entropy (with label smoothing in training), KL distillation at temperature
    `kd_temperature`, top-1 accuracy, `(batch, num_classes)` outputs. A task overrides what
    differs; `shape` and `load_data` it must give (they say what its data is)."""

    name = "base"
    metric_name = "accuracy"
    sample_noun = "sample"  # what one input is called in messages ("image" for images)
    source_noun = "data"  # what holds the classes ("dataset")

    def shape(self, cfg: DataConfig) -> DatasetShape:
        raise ConfigError(f"task {self.name!r} does not say its data's shape: define "
                          "shape(cfg) on it (see prunetune.trainers.tasks.TaskBase)")

    def check_data(self, cfg: DataConfig) -> None:
        return None

    def load_data(self, cfg: DataConfig) -> DataBundle:
        raise ConfigError(f"task {self.name!r} does not load data: define load_data(cfg) on "
                          "it (see prunetune.trainers.tasks.TaskBase)")

    def example_input(self, shape: DatasetShape, batch: int) -> Inputs:
        return (torch.zeros(batch, shape.in_channels, *shape.image_size),)

    def split(self, batch: object) -> tuple[Inputs, torch.Tensor]:
        x, y = batch  # type: ignore[misc]
        return (x,), y

    def forward(self, model: nn.Module, inputs: Inputs) -> torch.Tensor:
        return model(*inputs)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, cfg: TrainConfig | None,
             reduction: Literal["mean", "sum"] = "mean") -> torch.Tensor:
        smoothing = cfg.label_smoothing if cfg is not None else 0.0
        return F.cross_entropy(outputs, targets, label_smoothing=smoothing, reduction=reduction)

    def distill(self, outputs: torch.Tensor, teacher_outputs: torch.Tensor,
                cfg: TrainConfig) -> torch.Tensor:
        t = cfg.kd_temperature
        return F.kl_div(F.log_softmax(outputs / t, 1), F.log_softmax(teacher_outputs / t, 1),
                        reduction="batchmean", log_target=True) * t * t

    def metric(self, outputs: torch.Tensor, targets: torch.Tensor) -> float:
        return float((outputs.argmax(1) == targets).sum().item())

    def calibration_inputs(self, data: DataBundle, n: int) -> Inputs | None:
        # The first n training samples without augmentation: the same fixed batch for every
        # policy of a dataset split (the split itself is a seeded permutation).
        if n <= 0:
            return None
        train = data.train
        with_augment = getattr(train, "with_augment", None)
        if callable(with_augment):
            train = with_augment(False)
        samples = [train[i] for i in range(min(n, len(train)))]  # type: ignore[arg-type]
        inputs, _ = self.split(default_collate(samples))
        return inputs

    def check_output(self, outputs: torch.Tensor, shape: DatasetShape, batch: int
                     ) -> str | None:
        if tuple(outputs.shape) != (batch, shape.num_classes):
            return (f"gives outputs of shape {tuple(outputs.shape)[1:]} per "
                    f"{self.sample_noun}, the {self.source_noun} has {shape.num_classes} "
                    "classes")
        return None

    def describe_input(self, shape: DatasetShape) -> str:
        dims = "x".join(str(d) for d in (shape.in_channels, *shape.image_size))
        plural = "inputs" if self.sample_noun == "sample" else f"{self.sample_noun}s"
        return f"{dims} {plural}"

    def __repr__(self) -> str:
        return f"<task {self.name}>"


_TASKS: Registry[Task] = Registry("task", Task, ConfigError, field="data.task",
                                  base="prunetune.trainers.tasks.TaskBase")


def register_task(task: Task) -> Task:
    """Add `task` under its `name` (a later one of the same name replaces it)."""
    return _TASKS.register(task)


def task_names() -> Sequence[str]:
    """The registered tasks' names."""
    return _TASKS.names()


def get_task(name: str | Task) -> Task:
    """The task registered as `name`, or the object `package.module:attr` names (a class is
    instantiated, once per process); a task object passes through. An unknown name is a
    `ConfigError` naming `data.task`, raised in seconds (a search checks it before it creates
    anything)."""
    # The built-in task is registered by trainers.data (it owns the image datasets); the
    # package's get_task imports it first.
    hint = ("" if _TASKS.names() else "; no task is registered yet: use "
            "prunetune.trainers.get_task, which registers the built-in ones")
    return _TASKS.get(name, hint)
