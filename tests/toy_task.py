"""Tasks a user adds in one module, touching nothing in the package: regression on vectors.

`ToyRegression`: 8 features -> 2 targets, mean squared error as the loss (and as the
distillation term, against the teacher's outputs), and as its metric the share of samples
whose every output is within `TOLERANCE` of its target. Its data is synthetic and seeded; its
model (`toy_mlp`) is an MLP with BatchNorm, so calibration matters. Named in a config as
`data.task: tests.toy_task:ToyRegression`, `model.name: tests.toy_task:toy_mlp`.

`PairRegression`: the same targets from the features given as two inputs (4 + 4), to a model
called as `model(a, b)` (`pair_mlp`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from prunetune.trainers import DataBundle, DataConfig, DatasetShape, TaskBase, TrainConfig
from prunetune.trainers.tasks import Inputs

FEATURES, OUTPUTS = 8, 2
TOLERANCE = 0.3
_SIZES = {"train": 768, "val": 256, "test": 256}


def targets_of(x: torch.Tensor) -> torch.Tensor:
    """The function the toy data samples (a smooth one an MLP learns in a few epochs)."""
    return torch.stack([x[:, :4].sum(1) * 0.5, torch.tanh(x[:, 4:] @ torch.tensor(
        [1.0, -1.0, 0.5, 2.0]))], dim=1)


def within_tolerance(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per sample: 1 when every output is within TOLERANCE of its target."""
    return ((outputs - targets).abs() <= TOLERANCE).all(dim=1).float()


def _splits(cfg: DataConfig) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(cfg.split_seed)
    out = {}
    for split, n in _SIZES.items():
        limit = {"train": cfg.train_subset, "val": cfg.val_subset, "test": cfg.test_subset}[split]
        x = torch.randn(n, FEATURES, generator=gen)
        y = targets_of(x) + 0.02 * torch.randn(n, OUTPUTS, generator=gen)
        out[split] = (x[:limit], y[:limit])
    return out


class ToyRegression(TaskBase):
    name = "toy-regression"
    metric_name = f"share within {TOLERANCE}"

    def shape(self, cfg: DataConfig) -> DatasetShape:
        return DatasetShape(FEATURES, (), OUTPUTS)

    def load_data(self, cfg: DataConfig) -> DataBundle:
        s = _splits(cfg)
        return DataBundle(self.name, TensorDataset(*s["train"]), TensorDataset(*s["val"]),
                          TensorDataset(*s["test"]), num_classes=OUTPUTS,
                          in_channels=FEATURES, image_size=(), config=cfg)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, cfg: TrainConfig | None,
             reduction: Literal["mean", "sum"] = "mean") -> torch.Tensor:
        per_sample = F.mse_loss(outputs, targets, reduction="none").mean(dim=1)
        return per_sample.sum() if reduction == "sum" else per_sample.mean()

    def distill(self, outputs: torch.Tensor, teacher_outputs: torch.Tensor,
                cfg: TrainConfig) -> torch.Tensor:
        return F.mse_loss(outputs, teacher_outputs)

    def metric(self, outputs: torch.Tensor, targets: torch.Tensor) -> float:
        return float(within_tolerance(outputs, targets).sum().item())

    def check_output(self, outputs: torch.Tensor, shape: DatasetShape, batch: int
                     ) -> str | None:
        if tuple(outputs.shape) != (batch, OUTPUTS):
            return f"gives {tuple(outputs.shape)[1:]} outputs per sample, not ({OUTPUTS},)"
        return None


class PairRegression(ToyRegression):
    """ToyRegression's data given to the model as two inputs: the first and last 4 features."""

    name = "pair-regression"

    def example_input(self, shape: DatasetShape, batch: int) -> Inputs:
        return torch.zeros(batch, FEATURES // 2), torch.zeros(batch, FEATURES // 2)

    def split(self, batch: object) -> tuple[Inputs, torch.Tensor]:
        x, y = batch  # type: ignore[misc]
        return (x[:, :FEATURES // 2], x[:, FEATURES // 2:]), y


def toy_mlp(num_classes: int = OUTPUTS, in_channels: int = FEATURES,
            outputs: int | None = None) -> nn.Module:
    """The model factory (`model.name: tests.toy_task:toy_mlp`); `outputs` overrides the
    number of outputs (a model that does not fit the task)."""
    return nn.Sequential(nn.Linear(in_channels, 64), nn.BatchNorm1d(64), nn.ReLU(),
                         nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(),
                         nn.Linear(64, outputs or num_classes))


class PairMLP(nn.Module):
    """Two input branches joined: `model(a, b)`."""

    def __init__(self, num_classes: int = OUTPUTS, in_channels: int = FEATURES) -> None:
        super().__init__()
        half = in_channels // 2
        self.a = nn.Sequential(nn.Linear(half, 32), nn.BatchNorm1d(32), nn.ReLU())
        self.b = nn.Sequential(nn.Linear(half, 32), nn.BatchNorm1d(32), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(),
                                  nn.Linear(64, num_classes))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.a(a), self.b(b)], dim=1))


def pair_mlp(num_classes: int = OUTPUTS, in_channels: int = FEATURES) -> nn.Module:
    return PairMLP(num_classes, in_channels)
