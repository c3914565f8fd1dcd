"""True cost (issue 29): prunetune's FLOPs are the MACs PyTorch's own aten-level counter
(`torch.utils.flop_counter.FlopCounterMode`) counts, attention and functional linear calls
included, and budgets hold by that counter, on real torchvision models with untrained weights.

The reference is FlopCounterMode itself (`cost.flop_counter_macs`: its totals, not prunetune's
attribution to modules): a policy is decoded by the space, applied, and the pruned model is
measured by PyTorch's counter.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torchvision

from prunetune.errors import BudgetError
from prunetune.search_spaces import Budget, PruningSpace, analyze, apply_policy, count_cost
from prunetune.search_spaces.cost import flop_counter_macs

KEEP = 0.3


def _model(name: str, size: int) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return (torchvision.models.get_model(name, weights=None).eval(),
            torch.randn(1, 3, size, size))


def _measured_share(model, analysis, policy, x) -> float:
    return flop_counter_macs(apply_policy(model, policy, x), x) / analysis.dense_flops


def test_dense_count_is_the_aten_count_with_functional_linear_and_attention():
    model, x = _model("swin_t", 64)
    cost = count_cost(model, x)
    assert cost.flops == pytest.approx(flop_counter_macs(model, x), rel=1e-9)
    # Swin runs qkv / proj through F.linear on the weights: counted as those layers' work
    qkv = cost.per_layer["features.1.0.attn.qkv"]
    assert qkv["flops"] > 0 and qkv["effective_flops"] == qkv["flops"]
    resnet, x = _model("resnet18", 64)
    assert count_cost(resnet, x).flops == pytest.approx(flop_counter_macs(resnet, x), rel=1e-9)


@pytest.mark.slow  # a 224-px model: `make test-slow` runs it
def test_vit_budget_holds_by_aten_count_and_prediction_matches():
    model, x = _model("vit_b_16", 224)  # its forward checks the input size
    analysis = analyze(model, x)
    assert analysis.dense_flops == pytest.approx(flop_counter_macs(model, x), rel=1e-9)
    space = PruningSpace(None, analysis=analysis, budget=Budget("flops", KEEP),
                         schemes=("channel",), fill_budget=True, n_groups=3)
    rng = np.random.default_rng(0)
    for point in (np.ones(space.dim), rng.random(space.dim)):
        predicted = space.cost(point)["flops_share"]
        measured = _measured_share(model, analysis, space.decode(point), x)
        assert measured <= 1.01 * KEEP
        assert abs(predicted - measured) <= 0.02 * measured
        assert measured >= 0.97 * KEEP  # filled onto the budget: none of it goes unused


def _advised(message: str) -> tuple[float, float | None]:
    """(keep, ratio_bounds high) of a refusal's last piece of advice."""
    keep = float(re.findall(r"budget\.keep to (?:at least )?([0-9.]+)", message)[-1])
    high = re.search(r"to [0-9.]+ with ratio_bounds high=([0-9.]+)", message)
    return keep, float(high.group(1)) if high else None


@pytest.mark.slow  # a 224-px model: `make test-slow` runs it
def test_maxvit_refusal_advice_followed_is_accepted_and_holds():
    model, x = _model("maxvit_t", 224)  # its windows need 224 px
    analysis = analyze(model, x)
    with pytest.raises(BudgetError) as refused:
        PruningSpace(None, analysis=analysis, budget=Budget("flops", KEEP), schemes=("channel",))
    keep, high = _advised(str(refused.value))
    bounds = (0.0, high if high is not None else 0.8)
    space = PruningSpace(None, analysis=analysis, budget=Budget("flops", keep),
                         schemes=("channel",), ratio_bounds=bounds, n_groups=2)
    point = np.ones(space.dim)
    measured = _measured_share(model, analysis, space.decode(point), x)
    assert measured <= 1.01 * keep
    assert space.cost(point)["flops_share"] == pytest.approx(measured, rel=0.02)


def test_swin_attention_counted_so_channel_only_budgets_are_honest():
    model, x = _model("swin_t", 64)
    analysis = analyze(model, x)
    # qkv / proj / attention counted, and each block's heads a unit (swin_heads.py): a
    # channel-only budget at KEEP is accepted (refused below ~0.77 before heads were units)
    space = PruningSpace(None, analysis=analysis, budget=Budget("flops", KEEP),
                         schemes=("channel",))
    point = np.ones(space.dim)
    measured = _measured_share(model, analysis, space.decode(point), x)
    assert measured <= 1.01 * KEEP
    assert space.cost(point)["flops_share"] == pytest.approx(measured, rel=0.02)
