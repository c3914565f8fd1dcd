"""Latency budgets: the space's linear latency model, fitted from the latency table."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from prunetune.kernels import LatencyMeasurement, LatencyPredictor, LatencyTable
from prunetune.kernels.modules import BlockSparseConv2d, BlockSparseLinear
from prunetune.search_spaces import (
    Budget,
    LatencyWeights,
    PruningSpace,
    analyze,
    apply_policy,
)
from prunetune.trainers import build_model

X = torch.zeros(1, 3, 16, 16)


class MacsClock:
    """A deterministic stand-in for a device: a call costs 0.01 ms plus 1 ms per million
    convolution / linear MACs. Real timings are noisy; this makes exactness checkable."""

    name, threads = "macs-clock", 1
    layer_types: tuple[type, ...] = (nn.Conv2d, nn.Linear)  # the layers that cost time

    def macs(self, m: nn.Module, out: torch.Tensor) -> float:
        return out.numel() * m.weight[0].numel()  # weights per output element (input x kernel)

    def measure(self, model: Any, x: torch.Tensor, **_: Any) -> LatencyMeasurement:
        macs = [0.0]

        def hook(m: nn.Module, args: tuple, out: torch.Tensor) -> None:
            macs[0] += self.macs(m, out)

        layers = [m for m in model.modules() if isinstance(m, self.layer_types)]
        handles = [m.register_forward_hook(hook) for m in layers]
        try:
            with torch.inference_mode():
                model(*(x if isinstance(x, tuple) else (x,)))
        finally:
            for h in handles:
                h.remove()
        ms = 0.01 + macs[0] / 1e6
        now = time.time()
        return LatencyMeasurement(ms, ms, ms, ms, 1, self.name, "macs", now, now)

    def measure_interleaved(self, items: list[tuple[Any, torch.Tensor]],
                            **_: Any) -> list[LatencyMeasurement]:
        return [self.measure(model, x) for model, x in items]


@pytest.fixture(scope="module")
def resnet20() -> tuple[nn.Module, Any]:
    model = build_model("resnet20").eval()
    return model, analyze(model, X)


def _space(analysis: Any, weights: LatencyWeights, keep: float = 0.6) -> PruningSpace:
    return PruningSpace(None, budget=Budget("latency", keep), analysis=analysis,
                        latency=weights, device="cpu")


def test_linear_terms_match_the_table_prediction(resnet20: tuple) -> None:
    model, analysis = resnet20
    predictor = LatencyPredictor(model, X, LatencyTable(), measurer=MacsClock())
    base, layers = predictor.linear_terms(model)
    assert base > 0 and all(w >= 0 and o >= 0 for w, o in layers.values())
    weights = LatencyWeights.from_layers(analysis.cost_model, base, layers)
    assert weights.dense_ms == pytest.approx(predictor(model), rel=1e-9)
    # Every layer landed on its cost-model module (none fell back into the fixed part).
    assert set(layers) <= set(analysis.cost_model.names)
    assert weights.base_ms == pytest.approx(base)
    space = _space(analysis, weights)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        x = torch.rand(space.dim, generator=gen, dtype=torch.float64)
        pruned = apply_policy(model, space.decode(x), X)
        cost = space.cost(x)
        # MACs-linear layer times: the linear model is the table's prediction, up to the
        # fit's delta term being applied to per-call overheads too.
        assert cost["latency_ms"] == pytest.approx(predictor(pruned), rel=0.02)
        assert cost["latency_ms"] <= space.limit * (1 + 1e-9)


def test_every_vector_meets_a_latency_budget(resnet20: tuple) -> None:
    _, analysis = resnet20
    cm = analysis.cost_model
    weights = LatencyWeights(0.2, cm.w_flops / 1e6, cm.o_flops / 1e7)
    space = _space(analysis, weights, keep=0.5)
    assert space.limit == pytest.approx(0.5 * weights.dense_ms)
    rng = np.random.default_rng(0)
    shares = [space.cost(rng.random(space.dim))["latency_share"] for _ in range(200)]
    assert max(shares) <= 0.5 + 1e-9
    assert min(shares) < 0.45  # vectors already inside the budget are left alone
    untouched = space.cost(np.ones(space.dim), project=False)
    assert untouched["latency_share"] < 0.5 and "latency_ms" in untouched


class DensityClock(MacsClock):
    """Block-sparse modules cost their stored blocks' MACs: the kernels pay in full."""

    layer_types = (nn.Conv2d, nn.Linear, BlockSparseConv2d, BlockSparseLinear)

    def macs(self, m: nn.Module, out: torch.Tensor) -> float:
        if isinstance(m, (BlockSparseConv2d, BlockSparseLinear)):
            return out.numel() * m.taps * m.channels * m.density
        return super().macs(m, out)


class ZerosCostClock(DensityClock):
    """Block-sparse modules cost as much as dense ones: the kernels never pay."""

    def macs(self, m: nn.Module, out: torch.Tensor) -> float:
        if isinstance(m, (BlockSparseConv2d, BlockSparseLinear)):
            return out.numel() * m.taps * m.channels
        return MacsClock.macs(self, m, out)


def test_sparse_gains_are_what_the_device_saves(resnet20: tuple) -> None:
    model, analysis = resnet20
    paying = LatencyPredictor(model, X, LatencyTable(), measurer=DensityClock())
    gains = paying.sparse_gains(model)
    # About 0.6: the 16-channel layers take no kernel block, the others pay in full.
    assert 0.4 < gains["bsr"] < 1.0 and gains["nm"] == 0.0  # no Linear 2:4 on a CPU
    flat = LatencyPredictor(model, X, LatencyTable(), measurer=ZerosCostClock())
    assert flat.sparse_gains(model) == {"bsr": 0.0, "nm": 0.0}
    # The latency model then credits a sparse unit only as far as its kernels pay: with no
    # measured gain, pruning unstructured or block weights saves nothing on paper either.
    base, layers = flat.linear_terms(model)
    none = LatencyWeights.from_layers(analysis.cost_model, base, layers)
    full = LatencyWeights.from_layers(analysis.cost_model, base, layers,
                                      sparse_gain={"block": 1.0})
    for weights, saves in ((none, False), (full, True)):
        space = PruningSpace(None, schemes=("block",), analysis=analysis, latency=weights,
                             device="gpu")
        ms = space.cost(np.full(space.dim, 0.8), project=False)["latency_ms"]
        assert (ms < 0.9 * weights.dense_ms) is saves, (ms, weights.dense_ms)
    with pytest.raises(ValueError, match="sparse_gain must map names"):
        LatencyWeights.from_layers(analysis.cost_model, base, layers, sparse_gain={"x": 0.5})


def test_latency_budget_errors(resnet20: tuple) -> None:
    _, analysis = resnet20
    with pytest.raises(ValueError, match="a latency budget needs latency= weights"):
        PruningSpace(None, budget=Budget("latency", 0.5), analysis=analysis)
    with pytest.raises(ValueError, match="one entry per cost-model module"):
        _space(analysis, LatencyWeights(1.0, np.ones(3), np.ones(3)))
    with pytest.raises(ValueError, match="budget kind must be one of flops, params, latency"):
        Budget("energy", 0.5)
    with pytest.raises(ValueError, match="finite and >= 0 ms"):
        LatencyWeights.from_layers(analysis.cost_model, 0.1, {"conv1": (-1.0, 0.0)})
    # A layer the cost model does not know counts in full, in the fixed part.
    weights = LatencyWeights.from_layers(analysis.cost_model, 0.1, {"nowhere": (1.0, 0.5)})
    assert weights.base_ms == pytest.approx(1.6) and weights.w_ms.sum() == 0.0
    # Too little left to prune: overheads alone exceed the budget.
    heavy = LatencyWeights(100.0, analysis.cost_model.w_flops / 1e6,
                           analysis.cost_model.o_flops / 1e6)
    with pytest.raises(ValueError, match="budget keep=0.5 of latency cannot be met"):
        _space(analysis, heavy, keep=0.5)


def test_rollback_keeps_the_latency_model(resnet20: tuple) -> None:
    _, analysis = resnet20
    cm = analysis.cost_model
    space = PruningSpace(None, budget=Budget("latency", 0.6), analysis=analysis, n_groups=3,
                         latency=LatencyWeights(0.2, cm.w_flops / 1e6, cm.o_flops / 1e7))
    X_ = np.random.default_rng(1).random((6, space.dim))
    finer, X_new = space.refine(X_, np.arange(6.0))
    assert finer.latency is space.latency and finer.limit == space.limit
    for a, b in zip(X_, X_new, strict=True):
        assert finer.decode(b) == space.decode(a)


def test_driver_fits_the_latency_budget_from_the_table(tmp_path: Path) -> None:
    from prunetune.orchestrator.config import PrunetuneConfig
    from prunetune.orchestrator.driver import SearchError, build_space

    table = tmp_path / "table.json"

    def config(keep: float) -> PrunetuneConfig:
        return PrunetuneConfig.model_validate({
            "model": {"name": "resnet20"}, "data": {"name": "digits"},
            "space": {"budget": {"kind": "latency", "keep": keep}, "groups": 3},
            "search": {"latency_table": str(table), "latency_repeats": 3}})

    model = build_model("resnet20", num_classes=10, in_channels=1).eval()
    # How far latency can fall depends on the machine (fixed per-layer costs dominate 8 x 8
    # inputs), so the budget is set halfway between that floor and the dense latency.
    loose = build_space(config(1.0), model, torch.zeros(1, 1, 8, 8), tmp_path)
    keep = 0.5 * (1.0 + loose.cost(np.ones(loose.dim))["latency_share"])
    cfg = config(keep)
    space = build_space(cfg, model, torch.zeros(1, 1, 8, 8), tmp_path)
    assert space.latency is not None and table.is_file()
    assert space.limit == pytest.approx(keep * space.latency.dense_ms)
    rng = np.random.default_rng(0)
    assert all(space.cost(rng.random(space.dim))["latency_share"] <= keep + 1e-9
               for _ in range(20))
    # A budget below what the space can reach is a config error that says what to change.
    tight = cfg.model_copy(update={"space": cfg.space.model_copy(
        update={"budget": cfg.space.budget.model_copy(update={"keep": 0.05})})})
    with pytest.raises(SearchError, match=r"space.budget: budget keep=0.05 of latency cannot "
                                          r"be met.*raise budget.keep"):
        build_space(tight, model, torch.zeros(1, 1, 8, 8), tmp_path)
