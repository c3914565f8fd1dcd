"""An optional Ray actor that owns one device's latency table and measures on it, one at a time.

Ray is imported only when `latency_service` is called, so `prunetune.kernels` itself never
imports Ray. All trials of a search get the same named actor (`get_if_exists`); its methods run
one at a time (`max_concurrency=1`), and its `DeviceMeasurer` also excludes measurements from
other processes on the node.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .latency import DeviceMeasurer
from .layers import deploy
from .predict import LatencyPredictor
from .table import LatencyTable

__all__ = ["LatencyService", "latency_service"]


class LatencyService:
    """The actor's body (usable directly, without Ray, e.g. in tests)."""

    def __init__(self, table_path: str | None = None, device: str = "cpu",
                 repeats: int = 15) -> None:
        self.table_path = table_path
        self.table = LatencyTable.load(table_path) if table_path else LatencyTable()
        self.measurer = DeviceMeasurer(device)
        self.device, self.repeats = device, repeats

    def _predictor(self, dense_model: nn.Module, example_input: torch.Tensor,
                   ) -> LatencyPredictor:
        return LatencyPredictor(dense_model, example_input, self.table, device=self.device,
                                measurer=self.measurer, repeats=self.repeats)

    def predict_ms(self, model: nn.Module, dense_model: nn.Module,
                   example_input: torch.Tensor) -> float:
        """Predicted latency of `model`, residual from `dense_model` (cached in the table)."""
        return self._predictor(dense_model, example_input)(model)

    def linear_terms(self, dense_model: nn.Module, example_input: torch.Tensor,
                     ) -> tuple[float, dict[str, tuple[float, float]]]:
        """`LatencyPredictor.linear_terms` of `dense_model`, for a latency budget."""
        return self._predictor(dense_model, example_input).linear_terms(dense_model)

    def measure_ms(self, model: nn.Module, example_input: torch.Tensor) -> float:
        """Measured latency of `model`'s deployment form."""
        return self.measurer.measure(deploy(model, self.device), example_input,
                                     repeats=self.repeats).median_ms

    def entries(self) -> dict[str, dict[str, Any]]:
        return dict(self.table.entries)

    def save(self) -> int:
        """Merge into the table file (if any); returns the number of entries."""
        if self.table_path:
            self.table.save(self.table_path)
        return len(self.table)


def latency_service(table_path: str | None = None, *, device: str = "cpu",
                    name: str = "prunetune-latency", num_gpus: float = 0.0,
                    repeats: int = 15) -> Any:
    """The named `LatencyService` actor for `device` (created on first call, then shared).

    `num_gpus`: the actor's GPU share on a GPU node (a small fraction, e.g. 0.01, so it can sit
    beside training trials). Needs `ray.init()` (or a Ray Tune run) first.
    """
    import ray  # lazily: kernels must not depend on Ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    actor = ray.remote(max_concurrency=1)(LatencyService)
    # Outside any placement group: a Tune trial that creates the actor must not have it
    # counted against (and blocked by) the trial's own reserved resources. No CPU reserved:
    # the actor only measures while the per-device lock is held.
    return actor.options(name=f"{name}-{device}", get_if_exists=True, num_cpus=0,
                         num_gpus=num_gpus,
                         scheduling_strategy=PlacementGroupSchedulingStrategy(
                             placement_group=None)).remote(table_path, device, repeats)
