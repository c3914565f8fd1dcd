"""Latency backends on a GPU machine: eager PyTorch and TensorRT on the GPU, ONNX Runtime on its
CPU, for dense and channel-pruned models (part of `benchmarks/gpu_suite.sh`).

    python benchmarks/gpu_backends.py                        # CUDA machine (untrained models)
    python benchmarks/gpu_backends.py --smoke --out F.json   # CPU plumbing: ResNet-20, batch 1

Per model (ResNet-20, ResNet-56, MobileNetV2; 3 x 32 x 32 inputs; untrained weights: latency
does not depend on their values) the dense model and the uniform policy at 50% of its FLOPs
(`search_spaces.baselines.uniform_policy`), kept widths of any size and rounded to multiples
of 8, are timed in turn by each backend at each batch (`measured_models_ms`: interleaved
bursts; CUDA events with the L2 cache flushed on the GPU, one thread and the thread clock on
the CPU). A backend that cannot run here (TensorRT without its package or a GPU) is recorded
with the reason it gave, in seconds, and the others still run. Writes
`benchmarks/results/latency_backends-<gpu>.json`.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info, write_result

RESULTS = Path(__file__).resolve().parent / "results"
# Backend -> the device it times on here.
PLACES = {"eager": "cuda", "tensorrt": "cuda", "onnxruntime": "cpu"}
WIDTHS = {"any": None, "x8": 8}


def variants(name: str, shape: tuple[int, ...]) -> dict[str, torch.nn.Module]:
    """The dense model and its uniform 50%-FLOPs policies, by label."""
    from prunetune.search_spaces import Budget, PruningSpace, apply_policy
    from prunetune.search_spaces.baselines import uniform_policy
    from prunetune.trainers import build_model

    torch.manual_seed(0)
    dense = build_model(name, num_classes=10, in_channels=shape[0]).eval()
    x = torch.zeros(1, *shape)
    models = {"dense": dense}
    for label, multiple in WIDTHS.items():
        space = PruningSpace(dense, x, budget=Budget("flops", 0.5), round_to=multiple)
        models[f"uniform-{label}"] = apply_policy(dense, uniform_policy(space), x).eval()
    return models


def time_backend(backend: str, device: str, models: dict[str, torch.nn.Module],
                 shape: tuple[int, ...], batches: list[int], repeats: int) -> dict[str, Any]:
    """ms per model label and batch, speedups over dense; or the refusal."""
    from prunetune.errors import PrunetuneError
    from prunetune.kernels import get_backend, measured_models_ms

    try:
        get_backend(backend).check(torch.device(device))
    except PrunetuneError as err:
        return {"device": device, "refused": str(err)}
    out: dict[str, Any] = {"device": device, "batches": {}}
    for batch in batches:
        t0 = time.perf_counter()
        ms = measured_models_ms(list(models.values()), torch.zeros(batch, *shape),
                                device=device, repeats=repeats, bursts=4, backend=backend)
        timing = dict(zip(models, ms, strict=True))
        out["batches"][str(batch)] = {
            "ms": timing, "wall_s": time.perf_counter() - t0,
            "speedup": {k: timing["dense"] / v for k, v in timing.items() if k != "dense"}}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU plumbing check, tiny")
    parser.add_argument("--models", nargs="+", default=["resnet20", "resnet56", "mobilenetv2"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    places = dict(PLACES)
    if args.smoke:
        places = {"eager": "cpu", "tensorrt": "cuda", "onnxruntime": "cpu"}
        args.models, args.batches, args.repeats = ["resnet20"], [1], 4
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu-smoke"
    tag = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    shape = (3, 32, 32)
    rows: dict[str, Any] = {}
    for name in args.models:
        models = variants(name, shape)
        rows[name] = {backend: time_backend(backend, device, models, shape, args.batches,
                                            args.repeats)
                      for backend, device in places.items()}
    result = {"benchmark": "gpu_backends", "gpu": gpu, "smoke": args.smoke, "input": shape,
              "places": places, "widths": WIDTHS, "models": rows, "machine": machine_info()}
    summary = {name: {backend: (r["refused"][:80] if "refused" in r else
                                {b: {k: round(v, 2) for k, v in t["speedup"].items()}
                                 for b, t in r["batches"].items()})
                      for backend, r in per.items()} for name, per in rows.items()}
    result["summary"] = summary
    write_result(args.out or RESULTS / f"latency_backends-{tag}.json", result, show=summary)
    return result


if __name__ == "__main__":
    main()
