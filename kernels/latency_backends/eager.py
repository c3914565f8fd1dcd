"""Eager PyTorch: the model runs as trials run it, with block-sparse and 2:4 modules swapped in
where they pay (`prunetune.kernels.deploy`). The default backend."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..layers import deploy
from .base import Inputs, LatencyBackendBase, register_backend

__all__ = ["EagerBackend"]


class EagerBackend(LatencyBackendBase):
    """PyTorch eager on the trials' device; its clock is named by the device alone, so latency
    tables measured before backends existed stay valid."""

    name = "eager"
    runs_sparse_kernels = True

    def clock_name(self, device_name: str) -> str:
        return device_name

    def torch_form(self, model: nn.Module, device: torch.device) -> nn.Module:
        return deploy(model, device)

    def runner(self, model: nn.Module, example_input: Inputs, device: torch.device,
               threads: int) -> Callable[..., Any] | nn.Module:
        return model  # the measurer moves it to the device and calls it in inference mode


register_backend(EagerBackend())
