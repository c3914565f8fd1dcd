"""`LatencyService`: one device's latency table, and the measurements that fill it, in one object.

It predicts a model's latency from the table (measuring missing layer entries on its device),
fits a latency budget's linear terms, and saves the table. A search shares one per device
between its trials as a Ray actor (`prunetune.trainers.latency_actor`); this package itself
knows nothing of Ray. Its `DeviceMeasurer` keeps measurements on the device one at a time,
across processes too.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .latency import DeviceMeasurer
from .latency_backends import get_backend
from .predict import LatencyPredictor, clock_name, measured_models_ms
from .table import LatencyTable

__all__ = ["LatencyService"]


class LatencyService:
    """A device's latency table with its measurer (also the body of the shared Ray actor)."""

    def __init__(self, table_path: str | None = None, device: str = "cpu",
                 repeats: int = 15, backend: str = "eager", threads: int = 1) -> None:
        self.table_path = table_path
        self.table = LatencyTable.load(table_path) if table_path else LatencyTable()
        self.measurer = DeviceMeasurer(device, threads=threads)
        self.device, self.repeats, self.backend = device, repeats, backend
        get_backend(backend).check(torch.device(device))

    @property
    def clock(self) -> str:
        """The name of the clock this service's numbers come from (device and backend)."""
        return clock_name(self.backend, self.measurer)

    def _predictor(self, dense_model: nn.Module, example_input: torch.Tensor,
                   ) -> LatencyPredictor:
        return LatencyPredictor(dense_model, example_input, self.table, device=self.device,
                                measurer=self.measurer, repeats=self.repeats,
                                backend=self.backend)

    def predict_ms(self, model: nn.Module, dense_model: nn.Module,
                   example_input: torch.Tensor) -> float:
        """Predicted latency of `model`, residual from `dense_model` (cached in the table)."""
        return self._predictor(dense_model, example_input)(model)

    def linear_terms(self, dense_model: nn.Module, example_input: torch.Tensor,
                     ) -> tuple[float, dict[str, tuple[float, float]]]:
        """`LatencyPredictor.linear_terms` of `dense_model`, for a latency budget."""
        return self._predictor(dense_model, example_input).linear_terms(dense_model)

    def sparse_gains(self, dense_model: nn.Module, example_input: torch.Tensor,
                     ) -> dict[str, float]:
        """`LatencyPredictor.sparse_gains` of `dense_model`, for a latency budget."""
        return self._predictor(dense_model, example_input).sparse_gains(dense_model)

    def measure_ms(self, model: nn.Module, example_input: torch.Tensor) -> float:
        """Measured latency of `model`'s deployment form, run by this service's backend."""
        (ms,) = measured_models_ms([model], example_input, device=self.device,
                                   repeats=self.repeats, bursts=1, backend=self.backend,
                                   threads=self.measurer.threads)
        return ms

    def entries(self) -> dict[str, dict[str, Any]]:
        return dict(self.table.entries)

    def save(self) -> int:
        """Merge into the table file (if any); returns the number of entries."""
        if self.table_path:
            self.table.save(self.table_path)
        return len(self.table)
