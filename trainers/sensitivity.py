"""The sensitivity scan behind the measured scheme mapping (AMC / NetAdapt style).

Every unit is pruned alone with every candidate of `search_spaces.scan_candidates` at a few
ratios; each probe records the latency it saves on the target device (the latency table's
prediction of the deployed model: block-sparse layers run as sparse modules only where that
pays, other masks leave dense work) and the proxy accuracy it loses (the one prune-and-evaluate
path with no fine-tuning and BatchNorm calibration, as a proxy trial scores a policy).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import nn

from prunetune.search_spaces import (
    SCAN_RATIOS,
    SCHEMES,
    ModelAnalysis,
    Policy,
    SchemeProbe,
    SchemeScan,
    UnitPolicy,
    scan_candidates,
)

from .data import DataBundle
from .prune import prune_and_evaluate
from .train import FinetuneConfig, evaluate, resolve_device

__all__ = ["LatencyOracle", "scan_schemes"]


class LatencyOracle(Protocol):
    """What the scan needs of a device's latency (`prunetune.kernels.LatencyService` is one)."""

    def predict_ms(self, model: nn.Module, dense_model: nn.Module,
                   example_input: torch.Tensor) -> float: ...


def _probe_policy(up: UnitPolicy, unit: str, ratio: float, cap: float) -> Policy:
    return Policy({unit: UnitPolicy(up.scheme, min(ratio, cap), block=up.block, m=up.m,
                                    pattern=up.pattern)})


def scan_schemes(dense: nn.Module, data: DataBundle, analysis: ModelAnalysis,
                 latency: LatencyOracle, *, device_name: str,
                 schemes: Sequence[str] = SCHEMES, ratios: Sequence[float] = SCAN_RATIOS,
                 proxy: FinetuneConfig | None = None, seed: int = 0,
                 units: Sequence[str] | None = None,
                 progress: Callable[[str], None] | None = None) -> SchemeScan:
    """Probe each unit (or `units`) with each candidate of `schemes` at `ratios` (clipped to
    what the unit allows). `proxy`: the scoring recipe (its `epochs` are ignored: a probe is
    never fine-tuned; default: 512 calibration images). `device_name` names the latency's
    device in the scan. `progress(line)` hears one line per unit."""
    proxy = (proxy or FinetuneConfig()).model_copy(update={"epochs": 0})
    example = data.example_input(1)
    dev = resolve_device(proxy.device)
    dense = dense.eval()
    dense_ms = latency.predict_ms(dense, dense, example)
    dense_acc = evaluate(dense.to(dev), data.loader("val"), dev).accuracy
    wanted = set(units) if units is not None else None
    scan = SchemeScan(device_name, dense_ms, dense_acc,
                      meta={"schemes": list(schemes), "ratios": [float(r) for r in ratios]})
    todo = [u for u in analysis.units if wanted is None or u.name in wanted]
    for i, unit in enumerate(todo, 1):
        t0 = time.perf_counter()
        for up in scan_candidates(unit, schemes):
            cap = unit.max_ratio(up.scheme)
            for ratio in sorted({min(float(r), cap) for r in ratios}):
                policy = _probe_policy(up, unit.name, ratio, cap)
                pruned = prune_and_evaluate(dense, policy, data, proxy, seed=seed, device=dev)
                ms = latency.predict_ms(pruned.model, dense, example)
                scan.probes.append(SchemeProbe(unit.name, up, ratio, dense_ms - ms,
                                               dense_acc - pruned.scores["val"].accuracy))
        if progress is not None:
            progress(f"[map] {i}/{len(todo)} {unit.name}: "
                     f"{len(scan.of_unit(unit.name))} probes in {time.perf_counter() - t0:.1f} s")
    return scan
