"""PyTorch to ONNX, shared by the backends that run ONNX (ONNX Runtime, TensorRT).

`export_onnx` writes a model with a dynamic batch axis (one file serves batch 1 and 64).
`architecture_key` names what a model's speed depends on (module types and tensor shapes, not
weight values), so policies that leave the same widths share one export and one session.
"""

from __future__ import annotations

import copy
import hashlib
import io
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunetune.errors import LatencyBackendError, LatencyBackendUnavailableError

__all__ = ["ONNX_OPSET", "ArchitectureCache", "architecture_key", "export_onnx", "input_names",
           "onnx_bytes"]

# An opset every current runtime reads in full (ONNX Runtime >= 1.20, TensorRT >= 10), and the
# lowest the torch.export based exporter writes.
ONNX_OPSET = 18


def input_names(count: int) -> list[str]:
    """The exported graph's input names: `input`, or `input_0`, `input_1`, ..."""
    return ["input"] if count == 1 else [f"input_{i}" for i in range(count)]


def architecture_key(model: nn.Module, example_input: tuple[torch.Tensor, ...]) -> str:
    """A digest of every module's class and its parameters' and buffers' shapes and dtypes,
    and of the inputs' shapes: equal for two models whose ONNX graphs differ only in weights."""
    h = hashlib.sha1()
    h.update(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    for name, module in model.named_modules():
        h.update(f"|{name}:{type(module).__qualname__}".encode())
        for tname, t in [*module.named_parameters(recurse=False),
                         *module.named_buffers(recurse=False)]:
            h.update(f"{tname}{tuple(t.shape)}{t.dtype}".encode())
    for t in example_input:
        h.update(f"|in{tuple(t.shape)}{t.dtype}".encode())
    return h.hexdigest()[:16]


class ArchitectureCache:
    """What a runtime built from a model's ONNX export (a session, an engine), kept per
    architecture and setting, least recently used dropped beyond `max_size` (each holds its
    weights). Safe across threads; a build runs outside the lock."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._built: OrderedDict[tuple[str, Hashable], Any] = OrderedDict()
        self._guard = threading.Lock()

    def __len__(self) -> int:
        return len(self._built)

    def get(self, model: nn.Module, example_input: tuple[torch.Tensor, ...], setting: Hashable,
            build: Callable[[bytes], Any]) -> Any:
        """The cached object for `model`'s architecture and `setting`, else `build(onnx)`."""
        key = (architecture_key(model, example_input), setting)
        with self._guard:
            if key in self._built:
                self._built.move_to_end(key)
                return self._built[key]
        built = build(onnx_bytes(model, example_input))
        with self._guard:
            self._built[key] = built
            while len(self._built) > self.max_size:
                self._built.popitem(last=False)
        return built


def onnx_bytes(model: nn.Module, example_input: tuple[torch.Tensor, ...]) -> bytes:
    """`model` (a CPU copy, in eval mode) as an ONNX graph, batch axis dynamic.

    TorchScript-based export first (under a second for a CIFAR ResNet); the `torch.export`
    based exporter (needs onnxscript) where the first cannot trace the model."""
    try:
        import onnx  # noqa: F401 - both exporters need it; say so before either fails
    except ImportError:
        raise LatencyBackendUnavailableError(
            "exporting to ONNX needs the onnx package; pip install 'onnx>=1.17,<2'") from None
    model = copy.deepcopy(model).cpu().eval()
    inputs = tuple(t.detach().cpu() for t in example_input)
    names = input_names(len(inputs))
    axes = {n: {0: "batch"} for n in names} | {"output": {0: "batch"}}
    errors: list[str] = []
    for dynamo in (False, True):
        buffer = io.BytesIO()
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                kwargs = ({"dynamic_axes": axes} if not dynamo
                          else {"dynamic_shapes": [{0: torch.export.Dim("batch")}] * len(names),
                                "verbose": False})
                torch.onnx.export(model, inputs, buffer, input_names=names,
                                  output_names=["output"], opset_version=ONNX_OPSET,
                                  dynamo=dynamo, **kwargs)
            return buffer.getvalue()
        except Exception as err:  # noqa: BLE001 - each exporter fails its own way
            errors.append(f"{'torch.export' if dynamo else 'TorchScript'}: "
                          f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    raise LatencyBackendError(
        f"{type(model).__name__} cannot be exported to ONNX ({'; '.join(errors)}); use "
        "latency.backend: eager for this model, or make its forward traceable")


def export_onnx(model: nn.Module, example_input: tuple[torch.Tensor, ...], path: Path) -> Path:
    """Write `onnx_bytes(model, example_input)` to `path` (atomically); return the path."""
    from prunetune.files import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, onnx_bytes(model, example_input))
    return path
