"""A pruned model in the deployment format of the latency backend its search was timed with.

`prunetune promote` and `prunetune export` share this: `resolve_backend` names the backend
(and its format) before any work, `write_deployable` writes the model in that format (ONNX for
`onnxruntime` and `tensorrt`; nothing beyond the PyTorch files for `eager`), and an ONNX file
is kept only when ONNX Runtime reproduces the PyTorch model's outputs on a fixed input within
`ROUND_TRIP_ATOL` (`check_round_trip`): a file that does not is never written or registered.
`log_deployable` logs it in an MLflow run (MLflow's ONNX flavour) and gives the model
version's tags: the backend, the chosen trial's measured latency and where the file is.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunetune.errors import LatencyBackendError

__all__ = [
    "ONNX_FILE",
    "ONNX_MODEL_NAME",
    "ROUND_TRIP_ATOL",
    "Deployable",
    "check_round_trip",
    "deploy_tags",
    "log_deployable",
    "resolve_backend",
    "write_deployable",
]

ONNX_FILE = "model.onnx"
ONNX_MODEL_NAME = "onnx"  # the ONNX flavour's name in the promote run
ROUND_TRIP_ATOL = 1e-4  # largest |ONNX Runtime - PyTorch| output allowed on the fixed input
TAG_PREFIX = "prunetune."


@dataclass
class Deployable:
    """What `write_deployable` wrote (or, for a backend without a format, did not)."""

    backend: str  # the latency backend's name
    format: str | None  # "onnx", a user backend's own format, or None (PyTorch files only)
    path: Path | None  # the file written, None without a format
    max_abs_diff: float | None = None  # ONNX round trip on the fixed input; None: not checked


def resolve_backend(name: str, fmt: str | None = None) -> Any:
    """The latency backend `name` (a config name or `package.module:attr`); with `fmt` given,
    one whose deployment format is `fmt`, else a LatencyBackendError saying which to choose."""
    from prunetune.kernels.latency_backends import get_backend

    backend = get_backend(name)
    if fmt is not None and backend.export_format != fmt:
        has = (f"writes {backend.export_format!r}" if backend.export_format
               else "has no deployment format of its own (its deployment is the PyTorch state "
                    "dict + policy)")
        raise LatencyBackendError(
            f"--format {fmt} was asked for, but latency backend {backend.name!r} {has}; give "
            "--backend onnxruntime (or tensorrt), whose format is onnx, or leave --format out")
    return backend


def _outputs(model: Any, x: Any) -> Any:
    import torch

    with torch.no_grad():
        out = model(x)
    return (out[0] if isinstance(out, (tuple, list)) else out).detach().cpu().numpy()


def check_round_trip(model: Any, path: Path, example: Any,
                     atol: float = ROUND_TRIP_ATOL) -> float:
    """Run the ONNX file at `path` in ONNX Runtime on `example` (and on its first row alone:
    the batch axis is dynamic) and compare with `model`'s outputs; the largest |difference|,
    or a LatencyBackendError when it exceeds `atol` or the shapes differ."""
    import numpy as np

    from prunetune.kernels.latency_backends import onnxruntime_session

    model = model.cpu().eval()
    session = onnxruntime_session(Path(path))
    name = session.get_inputs()[0].name
    worst = 0.0
    for x in (example.cpu(), example[:1].cpu()):
        want = _outputs(model, x)
        got = np.asarray(session.run(None, {name: x.numpy()})[0])
        diff = (float(np.max(np.abs(got - want))) if got.shape == want.shape else math.inf)
        if not diff <= atol:  # also catches NaN
            raise LatencyBackendError(
                f"the ONNX export of the pruned model does not reproduce its PyTorch outputs: "
                f"max |difference| {diff:.3g} (output shapes {list(got.shape)} vs "
                f"{list(want.shape)}) on a fixed input of shape {list(x.shape)}, allowed "
                f"{atol:g}; nothing was written or registered. Deploy the PyTorch state dict "
                "instead (latency backend eager), or report the model and policy")
        worst = max(worst, diff)
    return worst


def write_deployable(model: Any, example: Any, backend: Any, folder: Path) -> Deployable:
    """Write `model` in `backend`'s format into `folder` (`model.onnx` for ONNX), round-trip
    checked before it takes its name; nothing for a backend without a format."""
    fmt = backend.export_format
    if fmt is None:
        return Deployable(backend.name, None, None)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / (ONNX_FILE if fmt == "onnx" else f"model.{fmt}")
    # Exported beside its final name, renamed only once it passed: a failed check leaves no file.
    with tempfile.TemporaryDirectory(dir=folder, prefix=".export-") as tmp:
        written = Path(backend.export(model.cpu().eval(), (example.cpu(),),
                                      Path(tmp) / final.name))
        diff = check_round_trip(model, written, example) if fmt == "onnx" else None
        os.replace(written, final)
    return Deployable(backend.name, fmt, final, diff)


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def deploy_tags(dep: Deployable, trial: Any) -> dict[str, str]:
    """A model version's tags for the deployment: the backend, the chosen trial's measured
    latency and the clock that measured it (its run's `latency_*` params and its
    `prunetune.latency_clock` tag), and the file's format and round trip."""
    tags = {f"{TAG_PREFIX}{k}": str(v) for k, v in trial.params.items()
            if k.startswith("latency_")}
    clock = trial.tags.get(f"{TAG_PREFIX}latency_clock")
    if clock:
        tags[f"{TAG_PREFIX}latency_clock"] = clock
    tags[f"{TAG_PREFIX}latency_backend"] = dep.backend
    tags[f"{TAG_PREFIX}deploy_format"] = dep.format or "pytorch"
    for metric in ("latency_ms", "dense_latency_ms", "speedup"):
        value = trial.metrics.get(metric)
        if value is not None and math.isfinite(value):
            tags[f"{TAG_PREFIX}{metric}"] = _fmt(float(value))
    if dep.max_abs_diff is not None:
        tags[f"{TAG_PREFIX}onnx_max_abs_diff"] = _fmt(dep.max_abs_diff)
    return tags


def log_deployable(dep: Deployable, inputs: Any) -> dict[str, str]:
    """Log the deployable file in the active MLflow run (an ONNX model with MLflow's ONNX
    flavour, any other format as an artifact); the tags that say where it is."""
    if dep.path is None:
        return {}
    import mlflow

    if dep.format != "onnx":
        mlflow.log_artifact(str(dep.path), artifact_path=dep.format)
        return {f"{TAG_PREFIX}deploy_artifact": f"{dep.format}/{dep.path.name}"}
    import onnx
    import onnxruntime

    info = mlflow.onnx.log_model(
        onnx.load(str(dep.path)), name=ONNX_MODEL_NAME, input_example=inputs.numpy(),
        onnx_execution_providers=["CPUExecutionProvider"],
        # One self-contained file (a pruned network is far below protobuf's 2 GB).
        save_as_external_data=False,
        pip_requirements=[f"onnx=={onnx.__version__}",
                          f"onnxruntime=={onnxruntime.__version__}"])
    return {f"{TAG_PREFIX}onnx_model_uri": info.model_uri,
            f"{TAG_PREFIX}onnx_file": ONNX_FILE}
