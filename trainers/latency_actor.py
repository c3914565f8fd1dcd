"""The Ray actor that shares one device's `LatencyService` between the trials of a search.

All trials get the same named actor (`get_if_exists`); its methods run one at a time
(`max_concurrency=1`), and its `DeviceMeasurer` also excludes measurements from other processes
on the node, so latency measurements never overlap.
"""

from __future__ import annotations

from typing import Any

from prunetune.kernels.service import LatencyService

__all__ = ["latency_service"]


def latency_service(table_path: str | None = None, *, device: str = "cpu",
                    name: str = "prunetune-latency", num_gpus: float = 0.0,
                    repeats: int = 15, backend: str = "eager", threads: int = 1) -> Any:
    """The named `LatencyService` actor for `device` (created on first call, then shared).

    `num_gpus`: the actor's GPU share on a GPU node (a small fraction, e.g. 0.01, so it can sit
    beside training trials). `backend`: the latency backend that runs what it times (one actor
    per device and backend) on `threads` CPU threads. Needs `ray.init()` (or a Ray Tune run) first.
    """
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    actor = ray.remote(max_concurrency=1)(LatencyService)
    # Outside any placement group: a Tune trial that creates the actor must not have it
    # counted against (and blocked by) the trial's own reserved resources. No CPU reserved:
    # the actor only measures while the per-device lock is held.
    label = f"{name}-{device}" if backend == "eager" else f"{name}-{backend}-{device}"
    return actor.options(name=label, get_if_exists=True, num_cpus=0,
                         num_gpus=num_gpus,
                         scheduling_strategy=PlacementGroupSchedulingStrategy(
                             placement_group=None)).remote(table_path, device, repeats, backend,
                                                                    threads)
