"""Predicted vs measured whole-model latency for random pruning policies (CPU).

    python benchmarks/latency_table.py                       # ResNet-20/56, MobileNetV2, 50 each
    python benchmarks/latency_table.py --smoke --out F.json  # 2 policies of ResNet-20 (plumbing)
    python benchmarks/latency_table.py --device cuda --batch 32 --schemes channel block nm
    python benchmarks/latency_table.py --backend onnxruntime --policies 30   # ONNX Runtime, CPU

For each model: random points of the `PruningSpace` box are decoded to policies, applied
(`apply_policy`), put in deployment form, and both predicted from the latency table (sum of
per-layer entries measured on demand + the residual measured on the dense model) and measured
as a whole. Layer entries are measured right before the whole model they belong to, so both
see the same machine load. A whole model is timed in bursts spread over a few seconds, in turn
with the dense model (`measure_interleaved`): the host's speed drifts over seconds, so one burst
is a snapshot of it. Both the median-based and the min-based predictions are scored against
the measured median / min, and the predicted speedup over the dense model against the speedup
measured from those interleaved timings. Timing: one thread, thread CPU clock, batch 1 by
default. The linear latency model a latency budget uses (`LatencyPredictor.linear_terms`) is
scored too, against the min-based table prediction and the measured minimum. Writes
`benchmarks/results/latency_table-cpu.json`.
Target (issue 7): >= 90% of predictions within +-10%.

`--backend onnxruntime` (issue 28) runs every timed layer and model through that latency
backend (`prunetune.kernels.latency_backends`): the table's entries carry its clock, and the
result goes to `latency_table-<device>-onnxruntime.json` (`-round16` appended with
`--round-to 16`: kept widths rounded as `space.round_to` does). Its default schemes are `channel`
alone (ONNX Runtime's CPU kernels multiply masked zeros like any weight). Each finished model
is kept in `<out>.partial.json` and skipped on a re-run with the same settings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info, write_result

from prunetune.kernels import DeviceMeasurer, LatencyPredictor, LatencyTable
from prunetune.trainers import build_model

RESULTS = Path(__file__).resolve().parent / "results"
WITHIN = 0.10


def score(errors: list[float]) -> dict[str, float]:
    """Share within +-10%, and the median / 90th-percentile absolute relative error."""
    if not errors:
        return {"n": 0}
    absolute = sorted(abs(e) for e in errors)
    return {"n": len(errors), "within_10pct": sum(a <= WITHIN for a in absolute) / len(errors),
            "median_abs_err": statistics.median(absolute),
            "p90_abs_err": absolute[min(len(absolute) - 1, int(0.9 * len(absolute)))],
            "mean_err": statistics.fmean(errors)}


def repeat_errors(rows: list[dict[str, Any]]) -> list[float]:
    dense = [r["dense_measured_ms"] for r in rows]
    middle = statistics.median(dense) if dense else 0.0
    return [d / middle - 1.0 for d in dense]


def drift_correlation(rows: list[dict[str, Any]]) -> float | None:
    errors = [r["err_min"] for r in rows]
    dense = [r["dense_measured_min_ms"] for r in rows]
    if len(rows) < 3 or len(set(errors)) < 2 or len(set(dense)) < 2:
        return None
    return statistics.correlation(errors, dense)


def gemm_out_elements(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Elements the model's convolution and linear layers output for `x` (one forward): what
    element-wise work scales with (the residual's `c1` term), kept in each row so that other
    residual models can be fitted to the rows afterwards."""
    total = 0

    def count(_module: Any, _args: Any, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel()

    gemm = (torch.nn.Conv2d, torch.nn.Linear)
    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, gemm)]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return total


def aligned_share(model: torch.nn.Module, multiple: int = 16) -> float:
    """Share of the convolutions whose output channels are a multiple of `multiple` (ONNX
    Runtime's CPU convolutions run blocked, NCHWc, only on such widths)."""
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    return sum(m.out_channels % multiple == 0 for m in convs) / max(1, len(convs))


def make_space(model: torch.nn.Module, x: torch.Tensor, schemes: tuple[str, ...], seed: int,
               predictor: LatencyPredictor, mapping_device: str = "cpu",
               round_to: int | None = None) -> Any:
    """A PruningSpace on the device's rule-based mapping without a budget (policies spread
    over the whole ratio range), with the linear latency model a latency budget would use
    (`cost(x)["latency_ms"]`)."""
    from prunetune.orchestrator.spaces import scheme_gains
    from prunetune.search_spaces import LatencyWeights, PruningSpace, analyze

    analysis = analyze(model, x)
    weights = LatencyWeights.from_layers(analysis.cost_model, *predictor.linear_terms(model),
                                         sparse_gain=scheme_gains(predictor.sparse_gains(model)))
    return PruningSpace(None, schemes=schemes, budget=None, seed=seed, device=mapping_device,
                        analysis=analysis, latency=weights, round_to=round_to)


def with_errors(row: dict[str, Any], dense_predicted_min: float) -> dict[str, Any]:
    """`row` with each prediction's relative error against what it is scored on."""
    row["err"] = row["predicted_ms"] / row["measured_ms"] - 1.0
    row["err_min"] = row["predicted_min_ms"] / row["measured_min_ms"] - 1.0
    row["err_speedup"] = row["speedup_predicted"] / row["speedup_measured"] - 1.0
    row["err_speedup_min"] = ((dense_predicted_min / row["predicted_min_ms"])
                              / (row["dense_measured_min_ms"] / row["measured_min_ms"]) - 1.0)
    row["err_linear_table"] = row["linear_ms"] / row["predicted_min_ms"] - 1.0
    row["err_linear"] = row["linear_ms"] / row["measured_min_ms"] - 1.0
    return row


def run_model(name: str, args: argparse.Namespace, measurer: DeviceMeasurer,
              ) -> dict[str, Any]:
    from prunetune.search_spaces import apply_policy

    gen = torch.Generator().manual_seed(args.seed)
    dense = build_model(name).eval()
    x = torch.randn(args.batch, 3, 32, 32, generator=gen)
    table = LatencyTable()
    started, load_before = time.time(), os.getloadavg()
    predictors = {stat: LatencyPredictor(dense, x, table, device=args.device, measurer=measurer,
                                         repeats=args.repeats, statistic=stat,
                                         backend=args.backend)
                  for stat in ("median", "min")}
    dense_predicted = predictors["median"].predict(dense).total_ms
    dense_layers_min = predictors["min"].predict(dense).layers_ms
    dense_predicted_min = predictors["min"].predict(dense).total_ms
    space = make_space(dense, x, tuple(args.schemes), args.seed, predictors["min"],
                       "gpu" if args.device == "cuda" else "cpu", args.round_to)
    rows = []
    for i in range(args.policies):
        vector = torch.rand(space.dim, generator=gen, dtype=torch.float64)
        policy = space.decode(vector)
        pruned = apply_policy(dense, policy, x)
        predicted = {stat: p.predict(pruned) for stat, p in predictors.items()}
        # Pruned and dense timed in turn, in bursts spread over a few seconds: the host's
        # speed drifts over seconds, and the speedup is then immune to that drift.
        measured, dense_now = predictors["median"].measure_interleaved(
            [pruned, dense], bursts=args.bursts, repeats=args.whole_repeats)
        row = {
            "policy": i,
            "schemes": sorted({u.scheme for u in policy.units.values() if u.ratio > 0}),
            "predicted_ms": predicted["median"].total_ms,
            "layers_ms": predicted["median"].layers_ms,
            "layers_min_ms": predicted["min"].layers_ms,
            "residual_ms": predicted["median"].residual_ms,
            "measured_ms": measured.median_ms,
            "measured_iqr_ms": [measured.p25_ms, measured.p75_ms],
            "predicted_min_ms": predicted["min"].total_ms,
            "measured_min_ms": measured.min_ms,
            "dense_measured_ms": dense_now.median_ms,
            "dense_measured_min_ms": dense_now.min_ms,
            "speedup_measured": dense_now.median_ms / measured.median_ms,
            "speedup_predicted": dense_predicted / predicted["median"].total_ms,
            # The latency budget's linear model (fitted on min-based entries).
            "linear_ms": space.cost(vector)["latency_ms"],
            "gemm_out_elements": gemm_out_elements(pruned, x),
            "convs_width_mult16_share": aligned_share(pruned),
        }
        rows.append(with_errors(row, dense_predicted_min))
        print(f"{name} {i:3d} predicted {row['predicted_ms']:8.3f} measured "
              f"{row['measured_ms']:8.3f} ms  err {100 * row['err']:+6.1f}%  "
              f"(min {100 * row['err_min']:+6.1f}%, speedup {100 * row['err_speedup']:+6.1f}%, "
              f"linear {100 * row['err_linear_table']:+6.1f}% of table)", flush=True)
    return {
        "model": name, "batch": args.batch, "backend": args.backend,
        "clock": predictors["min"].device_name, "dense_predicted_ms": dense_predicted,
        "dense_predicted_min_ms": dense_predicted_min, "dense_layers_min_ms": dense_layers_min,
        "dense_gemm_out_elements": gemm_out_elements(dense, x),
        "residual_fit": {stat: {"c0_ms": p.c0_ms, "c1_ms_per_element": p.c1_ms_per_elem,
                                "delta_ratio": p.delta_ratio} for stat, p in predictors.items()},
        "call_overhead_ms": ({"median": predictors["median"].call_overhead.median_ms,
                              "min": predictors["min"].call_overhead.min_ms}
                             if predictors["min"].call_overhead is not None else None),
        "table_entries": len(table), "wall_s": time.time() - started,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "median_based": score([r["err"] for r in rows]),
        "min_based": score([r["err_min"] for r in rows]),
        "speedup": score([r["err_speedup"] for r in rows]),
        "speedup_min": score([r["err_speedup_min"] for r in rows]),
        "linear_vs_table": score([r["err_linear_table"] for r in rows]),
        "linear_vs_measured_min": score([r["err_linear"] for r in rows]),
        # The noise floor: the same dense model, re-measured next to every policy, against the
        # median of those measurements. No prediction can beat the truth's own repeatability.
        "dense_repeatability": score(repeat_errors(rows)),
        # How much of the min-based error follows the host's speed at the time (the dense
        # model's latency measured next to each policy): near -1, the error is the host's drift.
        "err_min_vs_dense_now_r": drift_correlation(rows),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "resnet56", "mobilenetv2"])
    parser.add_argument("--policies", type=int, default=50)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15, help="timing blocks per layer entry")
    parser.add_argument("--whole-repeats", type=int, default=21,
                        help="timing blocks per burst of a whole-model measurement")
    parser.add_argument("--bursts", type=int, default=6,
                        help="bursts per whole-model measurement (interleaved with the dense "
                             "model's)")
    parser.add_argument("--schemes", nargs="+", default=None,
                        help="default: channel block (eager); channel (a runtime backend)")
    parser.add_argument("--backend", choices=("eager", "onnxruntime"), default="eager",
                        help="the latency backend every layer and model is timed with")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--round-to", type=int, default=None,
                        help="kept channels rounded down to a multiple of this (the space's "
                             "round_to; default: any width)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where the models run (cuda: CUDA events; block-sparse layers "
                             "with the Triton kernels)")
    parser.add_argument("--smoke", action="store_true", help="2 policies of ResNet-20, batch 2")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        args.models, args.policies, args.batch = ["resnet20"], 2, 2
        args.repeats = args.whole_repeats = 3
        args.bursts = 2
    if args.schemes is None:
        args.schemes = ["channel", "block"] if args.backend == "eager" else ["channel"]
    torch.manual_seed(args.seed)
    # Everything (shape passes, apply_policy) at the measured thread count: on a shared machine
    # extra torch threads only wait for each other.
    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is visible here; use --device cpu")
    measurer = DeviceMeasurer(args.device, threads=args.threads)
    load_before = os.getloadavg()
    suffix = ("" if args.backend == "eager" else f"-{args.backend}") + (
        f"-round{args.round_to}" if args.round_to else "")
    out = args.out or RESULTS / f"latency_table-{args.device}{suffix}.json"
    models = run_models(args, measurer, out.with_suffix(".partial.json"))
    result = {
        "device": measurer.name, "backend": args.backend, "clock": models[0]["clock"],
        "round_to": args.round_to,
        "smoke": args.smoke, "policies_per_model": args.policies,
        "batch": args.batch, "threads": args.threads, "schemes": args.schemes,
        "repeats": args.repeats, "whole_repeats": args.whole_repeats, "bursts": args.bursts,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "machine": machine_info(),
        "overall": {
            "median_based": score([r["err"] for m in models for r in m["rows"]]),
            "min_based": score([r["err_min"] for m in models for r in m["rows"]]),
            "speedup": score([r["err_speedup"] for m in models for r in m["rows"]]),
            "speedup_min": score([r["err_speedup_min"] for m in models for r in m["rows"]]),
            "linear_vs_table": score([r["err_linear_table"] for m in models for r in m["rows"]]),
            "linear_vs_measured_min": score([r["err_linear"] for m in models
                                             for r in m["rows"]]),
            "dense_repeatability": score([e for m in models for e in repeat_errors(m["rows"])]),
        },
        "models": models,
    }
    write_result(out, result, show=result["overall"])
    out.with_suffix(".partial.json").unlink(missing_ok=True)
    return result


def run_models(args: argparse.Namespace, measurer: DeviceMeasurer, partial: Path,
               ) -> list[dict[str, Any]]:
    """`run_model` for each of `args.models`, each finished model kept in `partial` (a re-run
    with the same settings skips it: a model takes minutes, and the machine is shared)."""
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "models")}
    done: dict[str, Any] = {}
    if partial.exists():
        saved = json.loads(partial.read_text())
        if saved.get("settings") == settings:
            done = saved["models"]
            print(f"reusing {sorted(done)} from {partial}", flush=True)
    for name in args.models:
        if name not in done:
            done[name] = run_model(name, args, measurer)
            write_result(partial, {"settings": settings, "models": done}, show={})
    return [done[name] for name in args.models]


if __name__ == "__main__":
    main()
