"""The latency backend seam: what a backend is, and the registry that names them.

A latency backend says how a model runs when it is timed: eager PyTorch, ONNX Runtime, TensorRT,
or a user's own. It turns a PyTorch model into a callable that runs one inference, names the
clock its numbers come from (table keys and MLflow metrics carry that name, so numbers of two
backends are never mixed), and writes the model in the format it deploys. The timing itself
(`prunetune.kernels.measure_interleaved`: CPU timer blocks or CUDA events, serialised per
device) is shared by every backend.

A new backend is one module: a `LatencyBackendBase` subclass, registered with
`register_backend`. Config names it as `latency.backend: NAME`, or `package.module:attr` for a
backend outside this package (the module registers nothing then; the attribute is used).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from prunetune.errors import LatencyBackendError, LatencyBackendUnavailableError
from prunetune.registry import Registry

__all__ = [
    "LatencyBackend",
    "LatencyBackendBase",
    "backend_names",
    "get_backend",
    "register_backend",
    "timing_device",
]

Inputs = tuple[torch.Tensor, ...]


@runtime_checkable
class LatencyBackend(Protocol):
    """What the latency code needs of a backend (`LatencyBackendBase` gives the defaults)."""

    # The config name, and the prefix of every clock name this backend gives.
    name: str
    # The deployment file `export` writes ("onnx", ...); None: the PyTorch state dict is it.
    export_format: str | None
    # True where it runs a compiled graph of the model (a runtime session, an engine): the
    # graph's constant parts fold away, so the latency table cannot time a model's skeleton
    # there, and one call has a fixed cost that a model pays once, not once per layer.
    compiles_graph: bool
    # True where `torch_form` swaps in block-sparse / 2:4 kernels, so masked weights can pay.
    runs_sparse_kernels: bool

    def default_device(self, trial_device: torch.device) -> torch.device:
        """Where this backend times when the config does not say (`latency.device: auto`)."""

    def check(self, device: torch.device) -> None:
        """Raise `LatencyBackendUnavailableError` (in seconds) when it cannot run here."""

    def channel_multiple(self, device: torch.device) -> int:
        """The channel count multiple this backend runs fastest on `device` (1: any width)."""

    def clock_name(self, device_name: str) -> str:
        """The name of this backend's clock on a device (`device_name` names the device, its
        threads and clock): the device part of latency-table keys and of trials' metrics."""

    def torch_form(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The PyTorch model whose layers this backend runs (eager: block-sparse modules
        swapped in; a runtime: the model as it is, masked weights as zeros)."""

    def runner(self, model: nn.Module, example_input: Inputs, device: torch.device,
               threads: int) -> Callable[..., Any] | nn.Module:
        """A callable that runs one inference of `model` on the positional inputs it is given
        (shaped like `example_input`), with `threads` CPU threads."""

    def export(self, model: nn.Module, example_input: Inputs, path: Path) -> Path:
        """Write `model` in this backend's deployment format at `path`; return the path."""


class LatencyBackendBase:
    """Defaults for a backend that runs on the trials' device and needs no extra package."""

    name = "base"
    export_format: str | None = None
    compiles_graph = False
    runs_sparse_kernels = False

    def default_device(self, trial_device: torch.device) -> torch.device:
        return trial_device

    def check(self, device: torch.device) -> None:
        if device.type == "cuda" and not torch.cuda.is_available():
            raise LatencyBackendUnavailableError(
                f"latency backend {self.name!r} was asked to time on {device}, but CUDA is not "
                "available here; set latency.device: cpu (or auto)")

    def channel_multiple(self, device: torch.device) -> int:
        return 1

    def clock_name(self, device_name: str) -> str:
        return f"{self.name}: {device_name}"

    def torch_form(self, model: nn.Module, device: torch.device) -> nn.Module:
        return model

    def runner(self, model: nn.Module, example_input: Inputs, device: torch.device,
               threads: int) -> Callable[..., Any] | nn.Module:
        return model

    def export(self, model: nn.Module, example_input: Inputs, path: Path) -> Path:
        raise LatencyBackendError(
            f"latency backend {self.name!r} has no deployment format of its own; the pruned "
            "PyTorch model (state dict + policy) is what it runs")

    def __repr__(self) -> str:
        return f"<latency backend {self.name}>"


_BACKENDS: Registry[LatencyBackend] = Registry(
    "latency backend", LatencyBackend, LatencyBackendError, field="latency backend",
    base="prunetune.kernels.latency_backends.LatencyBackendBase")


def register_backend(backend: LatencyBackend) -> LatencyBackend:
    """Add `backend` under its `name` (a later one of the same name replaces it)."""
    return _BACKENDS.register(backend)


def backend_names() -> Sequence[str]:
    """The registered backends' names."""
    return _BACKENDS.names()


def timing_device(backend: str | LatencyBackend, requested: str,
                  trial_device: torch.device | str) -> torch.device:
    """Where `backend` times: `requested` ("cpu", "cuda[:i]"), or with "auto" the backend's
    own choice given the device trials run on; checked (`LatencyBackend.check`)."""
    backend = get_backend(backend)
    device = (backend.default_device(torch.device(trial_device)) if requested == "auto"
              else torch.device(requested))
    backend.check(device)
    return device


def get_backend(name: str | LatencyBackend) -> LatencyBackend:
    """The backend registered as `name`, or the object `package.module:attr` names (a class
    is instantiated, once per process). A backend object passes through."""
    return _BACKENDS.get(name)
