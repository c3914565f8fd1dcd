"""NVIDIA ModelOpt's FastNAS on the peers benchmark's objective (see `peers.py`): its space at
each channel divisor, its search with the objective's score function, and its subnet scored
again by prunetune's yardstick."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch

from prunetune.search_spaces import Policy, UnitPolicy


def _fastnas_config(divisor: int) -> Any:
    import modelopt.torch.prune as mtp

    cfg = mtp.fastnas.FastNASConfig()
    cfg["nn.Conv2d"]["*"]["channel_divisor"] = divisor
    cfg["nn.BatchNorm2d"]["*"]["feature_divisor"] = divisor
    return cfg


def fastnas_space(obj: Any, divisors: tuple[int, ...] = (32, 16, 8, 4)) -> dict[str, Any]:
    """FastNAS's space at each channel divisor: how many hparams have a choice, and the least
    FLOPs ratio it reaches (modelopt's own count), i.e. whether the budget is reachable."""
    import modelopt.torch.nas as mtn
    from modelopt.torch.nas.utils import sample
    from modelopt.torch.opt.utils import named_hparams

    out = {}
    for d in divisors:
        model = mtn.convert(copy.deepcopy(obj.dense), mode=[("fastnas", _fastnas_config(d))])
        searchable = sum(len(h.choices) > 1 for _, h in named_hparams(model, configurable=True))
        sample(model, min)
        low = _modelopt_flops(model, obj.example) / _modelopt_flops(obj.dense, obj.example)
        out[str(d)] = {"searchable_hparams": searchable, "min_flops_ratio": low,
                       "budget_reachable": low <= obj.budget.keep}
    return out


def _modelopt_flops(model: Any, example: torch.Tensor) -> float:
    from modelopt.torch.nas.utils import inference_flops

    return float(inference_flops(model, dummy_input=example, unit=1.0))


def run_fastnas(obj: Any, method: str, divisor: int, work: Path, code: dict[str, Any]
                ) -> dict[str, Any]:
    """FastNAS on a copy of the dense model, channel choices in multiples of `divisor`; its
    subnet scored by prunetune's yardstick. A failure is recorded (exception, versions), not
    raised: the benchmark reports it. `code`: the state of the code that ran it."""
    import traceback

    import modelopt

    record: dict[str, Any] = {"method": method, "seed": None, "deterministic": True,
                              "divisor": divisor, "modelopt": modelopt.__version__,
                              "constraint": f"flops <= {obj.budget.keep:.0%}",
                              "torch": torch.__version__, "code": code}
    t0 = time.perf_counter()
    try:
        record.update(_fastnas_search(obj, divisor, work))
        record["status"] = "ok"
    except Exception as err:  # noqa: BLE001 - what failed is the result here
        record.update(status="failed", error=f"{type(err).__name__}: {err}",
                      traceback=traceback.format_exc()[-4000:])
    record["wall_s"] = time.perf_counter() - t0
    return record


def _fastnas_search(obj: Any, divisor: int, work: Path, resume_as: str | None = None
                    ) -> dict[str, Any]:
    """FastNAS on `obj`'s dense model under its FLOPs budget. With `resume_as`, ModelOpt's
    search checkpoint (its per-layer sensitivity map, saved layer by layer) keeps that name
    until the search ends, so an interrupted run picks up where it stopped; without, it
    starts whole."""
    import modelopt.torch.prune as mtp
    from torch.utils.data import DataLoader, TensorDataset

    from prunetune.search_spaces import count_cost
    from prunetune.trainers import evaluate
    from prunetune.trainers.prune import calibration_images, recalibrate_bn

    images = calibration_images(obj.data, obj.bn_calib)
    val = obj.data.loader("val")
    calls: list[float] = []

    def score(model: torch.nn.Module) -> float:
        # A copy: re-estimating BatchNorm statistics in place would leak one candidate's
        # statistics into the search's model. The copy is exported to a plain pruned model.
        import modelopt.torch.nas as mtn

        sub = mtn.export(copy.deepcopy(model))
        calls.append(evaluate(recalibrate_bn(sub, images), val).accuracy)
        return calls[-1]

    loader = DataLoader(TensorDataset(images, torch.zeros(len(images), dtype=torch.long)),
                        batch_size=128)
    model = copy.deepcopy(obj.dense)
    ckpt = work / f"fastnas-div{divisor}-{resume_as or time.time_ns()}.pth"
    work.mkdir(parents=True, exist_ok=True)
    try:
        subnet, state = mtp.prune(model, mode=[("fastnas", _fastnas_config(divisor))],
                                  constraints={"flops": f"{obj.budget.keep:.0%}"},
                                  dummy_input=obj.example,
                                  config={"data_loader": loader, "score_func": score,
                                          "checkpoint": str(ckpt), "verbose": False})
    except BaseException:
        if resume_as is None:
            ckpt.unlink(missing_ok=True)
        raise
    ckpt.unlink(missing_ok=True)
    subnet = recalibrate_bn(copy.deepcopy(subnet), images)
    accuracy = evaluate(subnet, val).accuracy
    flops = count_cost(subnet, obj.example).effective_flops / count_cost(
        obj.dense, obj.example).flops
    widths = _widths(subnet, obj)
    # The same widths through prunetune's own channel removal (magnitude importance), to
    # tell the search apart from which channels each tool keeps; prunetune removes at most
    # 90% of a unit's channels, so narrower FastNAS widths are clipped (and listed).
    units = {u.name: u for u in obj.analysis.units}
    ratios = {u: min(1.0 - k / c, units[u].max_ratio("channel")) for u, (k, c) in widths.items()}
    clipped = sorted(u for u, (k, c) in widths.items() if ratios[u] < 1.0 - k / c)
    as_policy = obj.evaluate(Policy({u: UnitPolicy("channel", r)
                                     for u, r in ratios.items()}).to_json())
    best = state.get("best", {})
    return {"score_calls": len(calls), "calls": calls, "accuracy": accuracy,
            # FastNAS's own view of its subnet: its search metric (minus the largest
            # single-layer accuracy drop) and its FLOPs count
            "modelopt_dense_flops": _modelopt_flops(obj.dense, obj.example),
            "modelopt_best": {"metric": float(best.get("metric", float("nan"))),
                              "constraints": {k: float(v) for k, v in
                                              (best.get("constraints") or {}).items()}},
            "flops_ratio": flops, "within_budget": flops <= obj.budget.keep + 1e-9,
            "widths": {u: k for u, (k, _) in widths.items()},
            "as_prunetune_policy": {"accuracy": as_policy[0], "flops_ratio": as_policy[1],
                                    "clipped_units": clipped}}


def _widths(subnet: torch.nn.Module, obj: Any) -> dict[str, tuple[int, int]]:
    """Kept and dense output channels of each prunable unit's root convolution."""
    dense = dict(obj.dense.named_modules())
    units = {u.name for u in obj.analysis.units if "channel" in u.schemes}
    out = {}
    for name, module in subnet.named_modules():
        if name in units and isinstance(module, torch.nn.Conv2d):
            out[name] = (module.out_channels, dense[name].out_channels)
    return out
