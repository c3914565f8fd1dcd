"""ONNX Runtime on the CPU: each model exported to ONNX and timed in an `InferenceSession`
with the measurer's thread count (all graph optimisations on, as a deployment runs it).

Sessions are cached by architecture (`architecture_key`), not by weights: policies that leave
the same widths share one export, and a reused trial actor exports each shape once. Masked
weights stay dense: ONNX Runtime's CPU kernels do not skip zeros, so only channel pruning pays.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prunetune.errors import LatencyBackendUnavailableError

from .base import Inputs, LatencyBackendBase, register_backend
from .onnx_export import ArchitectureCache, export_onnx, input_names

__all__ = ["OnnxRuntimeBackend", "onnxruntime_session"]

# Sessions kept per process (by architecture and threads): a search's distinct architectures
# are few; each holds its weights.
_SESSIONS = ArchitectureCache(max_size=64)


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise LatencyBackendUnavailableError(
            "latency.backend onnxruntime needs the onnxruntime package; pip install "
            "'onnxruntime>=1.20,<2' (or choose latency.backend: eager)") from None
    return onnxruntime


def onnxruntime_session(onnx: bytes | str | Path, threads: int = 1) -> Any:
    """An `onnxruntime.InferenceSession` on the CPU with `threads` intra-op threads, one
    inter-op thread and every graph optimisation (what a CPU deployment uses)."""
    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # warnings about unused initialisers are not the user's
    source = str(onnx) if isinstance(onnx, Path) else onnx
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


class _SessionRunner:
    """Calls a session with torch tensors (zero-copy to numpy); returns its first output."""

    def __init__(self, session: Any, count: int) -> None:
        self.session, self.names = session, input_names(count)

    def __call__(self, *inputs: torch.Tensor) -> np.ndarray:
        feeds = {n: t.numpy() for n, t in zip(self.names, inputs, strict=True)}
        return self.session.run(None, feeds)[0]


class OnnxRuntimeBackend(LatencyBackendBase):
    name = "onnxruntime"
    export_format = "onnx"
    compiles_graph = True

    def default_device(self, trial_device: torch.device) -> torch.device:
        return torch.device("cpu")

    def check(self, device: torch.device) -> None:
        if device.type != "cpu":
            raise LatencyBackendUnavailableError(
                f"latency backend onnxruntime times on the CPU, got latency.device {device}; "
                "set latency.device: cpu (or auto), or use latency.backend: tensorrt on a GPU")
        _onnxruntime()

    def channel_multiple(self, device: torch.device) -> int:
        """8. ONNX Runtime's CPU convolutions work on channel blocks (MLAS NCHWc: 8 floats with
        AVX2, 16 with AVX-512) and other widths take a slower path. On an AVX-512 CPU widths
        of 16 run fastest per FLOP, but are too coarse for narrow networks: searched under an
        ONNX Runtime latency budget, ResNet-20 kept 3.4 points more accuracy with widths of 8,
        at the same latency (benchmarks/README.md, "Latency backends")."""
        return 8

    def clock_name(self, device_name: str) -> str:
        return f"onnxruntime {_onnxruntime().__version__}: {device_name}"

    def runner(self, model: nn.Module, example_input: Inputs, device: torch.device,
               threads: int) -> Callable[..., Any]:
        self.check(device)
        session = _SESSIONS.get(model, example_input, threads,
                                lambda onnx: onnxruntime_session(onnx, threads))
        return _SessionRunner(session, len(example_input))

    def export(self, model: nn.Module, example_input: Inputs, path: Path) -> Path:
        return export_onnx(model, example_input, path)


register_backend(OnnxRuntimeBackend())
