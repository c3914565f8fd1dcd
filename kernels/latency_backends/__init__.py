"""Latency backends: how a model runs when it is timed (`eager` PyTorch, `onnxruntime` on the
CPU, `tensorrt` on an NVIDIA GPU), behind one protocol (`base.LatencyBackend`).

Importing this package registers the three; `get_backend(name)` returns one by config name or
`package.module:attr`. A new backend is one module that subclasses `LatencyBackendBase` and
calls `register_backend`.
"""

from . import eager, onnx_runtime, tensorrt  # noqa: F401 - each registers its backend
from .base import (
    LatencyBackend,
    LatencyBackendBase,
    backend_names,
    get_backend,
    register_backend,
    timing_device,
)
from .eager import EagerBackend
from .onnx_export import architecture_key, export_onnx, onnx_bytes
from .onnx_runtime import OnnxRuntimeBackend, onnxruntime_session
from .tensorrt import TensorRTBackend

__all__ = [
    "EagerBackend",
    "LatencyBackend",
    "LatencyBackendBase",
    "OnnxRuntimeBackend",
    "TensorRTBackend",
    "architecture_key",
    "backend_names",
    "export_onnx",
    "get_backend",
    "onnx_bytes",
    "onnxruntime_session",
    "register_backend",
    "timing_device",
]
