"""Triton block-sparse kernels, the sparse layer modules that use them, latency measurement and
the latency table (see docs/CONTRACTS.md for the mask contract these read).

Latency backends (`latency_backends/`: eager, ONNX Runtime, TensorRT) say what runs a model
when it is timed; the measurement, the table and its predictor take one by name.

Ray is not imported here: `LatencyService` (`service.py`) is a plain object; the Ray actor that
shares it between trials lives in `prunetune.trainers.latency_actor`.
"""

from .bsr import (
    KERNEL_BLOCKS,
    BSRWeight,
    bsr_to_dense,
    choose_block,
    conv_weight_to_taps,
    dense_to_bsr,
    stored_density,
    taps_to_conv_weight,
)
from .latency import (
    DeviceMeasurer,
    LatencyMeasurement,
    default_measurer,
    device_name,
    measure_interleaved,
    measure_latency,
)
from .latency_backends import (
    LatencyBackend,
    LatencyBackendBase,
    backend_names,
    get_backend,
    register_backend,
)
from .layers import LayerSpec, build_layer, deploy, layer_specs
from .modules import (
    BlockSparseConv2d,
    BlockSparseLinear,
    SemiStructuredLinear,
    is_nm_mask,
    resolve_backend,
    semi_structured_supported,
    sparsify_model,
)
from .predict import (
    LatencyPrediction,
    LatencyPredictor,
    clock_name,
    measured_models_ms,
    model_latency_ms,
    predict_latency,
    skeleton,
    speedup,
)
from .table import LatencyKey, LatencyTable, bucket_density
from .triton_bsr import bsr_conv2d, bsr_linear, interpreter_enabled, triton_supported

__all__ = [
    "KERNEL_BLOCKS",
    "BSRWeight",
    "BlockSparseConv2d",
    "BlockSparseLinear",
    "DeviceMeasurer",
    "LatencyBackend",
    "LatencyBackendBase",
    "LatencyKey",
    "LatencyMeasurement",
    "LatencyPrediction",
    "LatencyPredictor",
    "LatencyTable",
    "LayerSpec",
    "SemiStructuredLinear",
    "backend_names",
    "bsr_conv2d",
    "bsr_linear",
    "bsr_to_dense",
    "clock_name",
    "bucket_density",
    "build_layer",
    "choose_block",
    "conv_weight_to_taps",
    "default_measurer",
    "dense_to_bsr",
    "get_backend",
    "deploy",
    "device_name",
    "interpreter_enabled",
    "is_nm_mask",
    "layer_specs",
    "measure_interleaved",
    "measure_latency",
    "measured_models_ms",
    "model_latency_ms",
    "predict_latency",
    "register_backend",
    "resolve_backend",
    "semi_structured_supported",
    "skeleton",
    "sparsify_model",
    "speedup",
    "stored_density",
    "taps_to_conv_weight",
    "triton_supported",
]
