"""A latency backend a user adds in one module, touching nothing else: eager PyTorch in the
channels-last memory layout (what a CPU deployment with oneDNN often runs).

It counts the models it prepared, so a test can tell that it, and nothing else, timed them.
Named in a config as `latency.backend: tests.toy_latency_backend:ChannelsLastBackend`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from prunetune.kernels import LatencyBackendBase


class ChannelsLastBackend(LatencyBackendBase):
    name = "channels-last"
    prepared = 0  # models this backend turned into a runner, in this process

    def runner(self, model: nn.Module, example_input: tuple[torch.Tensor, ...],
               device: torch.device, threads: int) -> Callable[..., Any]:
        type(self).prepared += 1
        model = model.eval().to(device=device, memory_format=torch.channels_last)

        def run(*inputs: torch.Tensor) -> Any:
            with torch.inference_mode():
                return model(*(t.contiguous(memory_format=torch.channels_last)
                               if t.dim() == 4 else t for t in inputs))

        return run
