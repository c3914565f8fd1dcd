"""TensorRT on an NVIDIA GPU: each model exported to ONNX, built into a TensorRT engine for
the example input's shape (FP32 weights and activations; TensorRT may use TF32 math, as cuDNN
does for PyTorch's convolutions), and timed with CUDA events like eager models. Engines are
cached by architecture, as ONNX Runtime's sessions are.

Needs the `tensorrt` package (10.x) and a CUDA device; anywhere else it is refused in seconds
by `check`, before any export or build.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunetune.errors import LatencyBackendError, LatencyBackendUnavailableError

from .base import Inputs, LatencyBackendBase, register_backend
from .onnx_export import ArchitectureCache, export_onnx, input_names

__all__ = ["TensorRTBackend"]

# Engines kept per process (by architecture and GPU), as ONNX Runtime keeps its sessions.
_ENGINES = ArchitectureCache(max_size=64)


def _tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError:
        raise LatencyBackendUnavailableError(
            "latency.backend tensorrt needs NVIDIA's tensorrt package (10.x) on a CUDA "
            "machine; pip install 'tensorrt>=10,<11' there, or choose latency.backend: "
            "eager / onnxruntime") from None
    return tensorrt


def _build_engine(onnx: bytes, example_input: Inputs) -> Any:
    """A deserialised TensorRT engine for `onnx` at exactly the example's shapes."""
    trt = _tensorrt()
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx):
        problems = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise LatencyBackendError(f"TensorRT cannot parse the exported model: {problems}")
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for name, t in zip(input_names(len(example_input)), example_input, strict=True):
        profile.set_shape(name, tuple(t.shape), tuple(t.shape), tuple(t.shape))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise LatencyBackendError("TensorRT could not build an engine for the model (see its "
                                  "log above); use latency.backend: eager for it")
    return trt.Runtime(logger).deserialize_cuda_engine(serialized)


class _EngineRunner:
    """Runs an engine on CUDA tensors on the current stream (what CUDA events time)."""

    def __init__(self, engine: Any, example_input: Inputs, device: torch.device) -> None:
        self.context = engine.create_execution_context()
        self.names = input_names(len(example_input))
        for name, t in zip(self.names, example_input, strict=True):
            self.context.set_input_shape(name, tuple(t.shape))
        shape = tuple(self.context.get_tensor_shape("output"))
        self.output = torch.empty(shape, device=device, dtype=torch.float32)
        self.context.set_tensor_address("output", self.output.data_ptr())

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        for name, t in zip(self.names, inputs, strict=True):
            self.context.set_tensor_address(name, t.contiguous().data_ptr())
        self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream)
        return self.output


class TensorRTBackend(LatencyBackendBase):
    name = "tensorrt"
    export_format = "onnx"  # engines are built per GPU from it (trtexec --onnx=...)
    compiles_graph = True

    def default_device(self, trial_device: torch.device) -> torch.device:
        return torch.device("cuda")

    def check(self, device: torch.device) -> None:
        if device.type != "cuda" or not torch.cuda.is_available():
            raise LatencyBackendUnavailableError(
                f"latency backend tensorrt needs a CUDA GPU, got latency.device {device} "
                f"(CUDA available: {torch.cuda.is_available()}); on a CPU machine use "
                "latency.backend: onnxruntime or eager")
        _tensorrt()

    def clock_name(self, device_name: str) -> str:
        return f"tensorrt {_tensorrt().__version__}: {device_name}"

    def runner(self, model: nn.Module, example_input: Inputs, device: torch.device,
               threads: int) -> Callable[..., Any]:
        self.check(device)
        with torch.cuda.device(device):
            engine = _ENGINES.get(model, example_input, str(device),
                                  lambda onnx: _build_engine(onnx, example_input))
        return _EngineRunner(engine, example_input, device)

    def export(self, model: nn.Module, example_input: Inputs, path: Path) -> Path:
        return export_onnx(model, example_input, path)


register_backend(TensorRTBackend())
