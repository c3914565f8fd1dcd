"""torchvision Swin attention heads as prunable units (issue 29, "heads and widths"): each
`ShiftedWindowAttention` / `ShiftedWindowAttentionV2` is a heads unit, replaced at apply time
by `SwinHeadsAttention` with fewer heads and the dense output width; the space's prediction is
the pruned model's count, and budgets hold by PyTorch's aten-level counter. Small untrained
Swins at 32 px (two stages of two blocks, so both plain and shifted windows run), swin_t at
64 px (slow); timm's Swin and Swin V2 `WindowAttention`, whose heads are cut in place."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import swin_transformer as tv_swin

from prunetune.search_spaces import (
    Budget,
    Policy,
    PruningSpace,
    UnitPolicy,
    analyze,
    apply_policy,
    count_cost,
)
from prunetune.search_spaces.apply import zero_pruned_channels
from prunetune.search_spaces.baselines import baseline_policies
from prunetune.search_spaces.cost import flop_counter_macs
from prunetune.search_spaces.swin_heads import SwinHeadsAttention, swin_head_scores

from .test_heads import assert_channel_budget_holds, predicted_cost

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
ATTN = "features.{}.{}.attn"  # stage 1: 2 heads of 12, stage 3: 4 heads of 12


def _swin(v2: bool) -> nn.Module:
    torch.manual_seed(0)
    kw = ({"block": tv_swin.SwinTransformerBlockV2, "downsample_layer": tv_swin.PatchMergingV2}
          if v2 else {})
    return tv_swin.SwinTransformer(patch_size=[4, 4], embed_dim=24, depths=[2, 2],
                                   num_heads=[2, 4], window_size=[4, 4], num_classes=10,
                                   **kw).eval()


@pytest.fixture(scope="module", params=[False, True], ids=["v1", "v2"])
def swin(request):
    model = _swin(request.param)
    return model, analyze(model, X[:1]), request.param


def test_each_swin_attention_is_a_heads_unit(swin) -> None:
    _, analysis, _ = swin
    heads = {u.name: (u.heads, u.head_dim, u.channels, u.multiple, u.schemes)
             for u in analysis.units if u.heads}
    assert heads == {ATTN.format(s, b): (h, 12, 12 * h, 12, ("channel",))
                     for s, h in ((1, 2), (3, 4)) for b in (0, 1)}
    unit = analysis.unit(ATTN.format(3, 1))
    assert unit.max_ratio("channel") == pytest.approx(3 / 4)  # at least one head stays
    # its work: qkv, the attention products and proj (the graph sees none of them)
    assert unit.features["flops"] > 0.05 * analysis.dense_flops


def test_swin_heads_attention_with_every_head_is_the_dense_module(swin) -> None:
    model, _, v2 = swin
    x = torch.randn(2, 8, 8, 24, generator=torch.Generator().manual_seed(1))
    for block in (0, 1):  # plain and shifted windows
        dense = model.get_submodule(ATTN.format(1, block))
        assert dense.shift_size == ([0, 0] if block == 0 else [2, 2])
        kept = SwinHeadsAttention.from_swin(dense, [0, 1]).eval()
        assert set(kept.state_dict()) == set(dense.state_dict())
        torch.testing.assert_close(kept(x), dense(x), rtol=1e-6, atol=1e-6)
    # with padding (a 6x6 map under 4x4 windows) and the other stage's width
    dense = model.get_submodule(ATTN.format(3, 1))
    x = torch.randn(1, 6, 6, 48, generator=torch.Generator().manual_seed(2))
    kept = SwinHeadsAttention.from_swin(dense, [0, 1, 2, 3]).eval()
    torch.testing.assert_close(kept(x), dense(x), rtol=1e-6, atol=1e-6)
    assert kept.v2 == v2


def test_head_pruned_swin_runs_with_fewer_heads_and_the_dense_width(swin) -> None:
    model, _, v2 = swin
    policy = Policy({ATTN.format(1, 1): UnitPolicy("channel", 0.5),   # 2 -> 1 head
                     ATTN.format(3, 0): UnitPolicy("channel", 0.5),   # 4 -> 2 heads
                     ATTN.format(3, 1): UnitPolicy("channel", 0.75),  # 4 -> 1 head
                     "features.1.0.mlp.0": UnitPolicy("channel", 0.5)})
    pruned = apply_policy(model, policy, X[:1])
    for (stage, block), heads in {(1, 1): 1, (3, 0): 2, (3, 1): 1}.items():
        attn = pruned.get_submodule(ATTN.format(stage, block))
        dim = 24 * (stage + 1) // 2
        assert isinstance(attn, SwinHeadsAttention) and attn.num_heads == heads
        assert tuple(attn.qkv.weight.shape) == (3 * 12 * heads, dim)
        assert (attn.proj.in_features, attn.proj.out_features) == (12 * heads, dim)
        if v2:
            assert tuple(attn.logit_scale.shape) == (heads, 1, 1)
            assert attn.cpb_mlp[2].out_features == heads
        else:
            assert attn.relative_position_bias_table.shape[1] == heads
    # the lowest-magnitude heads went
    dense = model.get_submodule(ATTN.format(3, 0))
    kept = pruned.get_submodule(ATTN.format(3, 0)).kept_heads
    assert kept == tuple(sorted(torch.argsort(swin_head_scores(dense))[2:].tolist()))
    assert type(pruned.get_submodule(ATTN.format(1, 0))) is type(model.features[1][0].attn)
    out = pruned(X)
    assert out.shape == model(X).shape == (2, 10)
    # the cut heads' q, k, v rows and proj columns zeroed in the dense model: the same outputs
    zeroed, inexact = zero_pruned_channels(model, policy, X[:1])
    assert inexact == []
    torch.testing.assert_close(zeroed(X), out, rtol=1e-5, atol=1e-5)
    loaded = apply_policy(_swin(v2), policy, X[:1])  # the rebuild a pruned file loads into
    loaded.load_state_dict(pruned.state_dict())
    torch.testing.assert_close(loaded(X), out)


def test_a_head_pruned_swin_analysed_again_loses_more_heads(swin) -> None:
    model, _, _ = swin
    first = apply_policy(model, Policy({ATTN.format(3, 0): UnitPolicy("channel", 0.25)}), X[:1])
    analysis = analyze(first, X[:1])
    unit = analysis.unit(ATTN.format(3, 0))
    assert (unit.heads, unit.channels, unit.head_dim) == (3, 36, 12)
    policy = Policy({ATTN.format(3, 0): UnitPolicy("channel", 0.5)})  # 3 -> 1 head
    second = apply_policy(first, policy, X[:1])
    attn = second.get_submodule(ATTN.format(3, 0))
    assert attn.num_heads == 1 and attn.dense_heads == 4
    assert set(attn.kept_heads) < set(first.get_submodule(ATTN.format(3, 0)).kept_heads)
    assert second(X).shape == (2, 10)
    assert predicted_cost(analysis, policy)[0] == pytest.approx(
        count_cost(second, X[:1]).effective_flops, rel=1e-6)


POLICIES = [
    {ATTN.format(1, 0): UnitPolicy("channel", 0.5), ATTN.format(3, 1): UnitPolicy("channel", 0.6),
     "features.3.0.mlp.0": UnitPolicy("channel", 0.5)},
    {ATTN.format(1, 1): UnitPolicy("channel", 0.5), ATTN.format(3, 0): UnitPolicy("channel", 0.3),
     "features.0.0": UnitPolicy("block", 0.5), "features.2.reduction": UnitPolicy(
         "unstructured", 0.5)},
]


@pytest.mark.parametrize("units", POLICIES)
@pytest.mark.parametrize("round_to", [None, 8])
def test_swin_heads_prediction_is_the_pruned_models_count(swin, units, round_to) -> None:
    model, analysis, _ = swin
    policy = Policy(units, round_to=round_to)
    pruned = apply_policy(model, policy, X[:1])
    assert pruned(X).shape == (2, 10)
    cost = count_cost(pruned, X[:1])
    # FLOPs and params both: the bias table, logit scale and cpb_mlp.2 lose the cut heads
    assert predicted_cost(analysis, policy) == pytest.approx(
        (cost.effective_flops, cost.effective_params), rel=1e-6)
    assert cost.flops == pytest.approx(flop_counter_macs(pruned, X[:1]), rel=0.01)
    assert cost.flops < analysis.dense_flops


def test_half_flops_budget_on_a_swin_holds_by_the_aten_count(swin) -> None:
    model, analysis, _ = swin
    for pruned in assert_channel_budget_holds(model, analysis, keep=0.5, heads_units=4):
        assert any(isinstance(m, SwinHeadsAttention) for m in pruned.modules())


@pytest.mark.parametrize("method", [
    "uniform", pytest.param("tp-magnitude", marks=pytest.mark.slow)])  # ~20 s of bisection
def test_baselines_on_a_swin_keep_the_budget(method) -> None:
    model = _swin(False)
    analysis = analyze(model, X[:1])
    space = PruningSpace(None, analysis=analysis, budget=Budget("flops", 0.6),
                         schemes=("channel",))
    (baseline,) = baseline_policies(space, model, X[:1], methods=(method,))
    pruned = apply_policy(model, baseline.policy, X[:1])
    share = flop_counter_macs(pruned, X[:1]) / analysis.dense_flops
    assert share <= 0.6 * 1.01
    assert share == pytest.approx(baseline.flops_share, rel=1e-6)
    # uniform cuts heads too; Torch-Pruning cannot see Swin's heads: they stay whole
    cut = any(isinstance(m, SwinHeadsAttention) for m in pruned.modules())
    assert cut == (method == "uniform")


def _timm_swin(kind: str) -> nn.Module:
    """A small timm Swin: V1 with explicit products (`matmul`) or SDPA, or V2 (`v2`, its q and
    v biases made non-zero, so that a cut head's zeroed biases matter)."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    name = "swinv2_tiny_window8_256" if kind == "v2" else "swin_tiny_patch4_window7_224"
    model = timm.create_model(name, img_size=32, patch_size=4, window_size=4, embed_dim=24,
                              depths=(2, 2), num_heads=(2, 4), num_classes=10,
                              pretrained=False).eval()
    for module in model.modules():
        if hasattr(module, "fused_attn"):  # SDPA or the explicit products
            module.fused_attn = kind == "sdpa"
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if param_name.endswith(("q_bias", "v_bias")):
                param.normal_(0.0, 0.5)
    return model


TIMM_ATTN = "layers.{}.blocks.{}.attn"


@pytest.mark.parametrize("kind", ["matmul", "sdpa", "v2"])
def test_timm_swin_window_attention_loses_heads_in_place(kind) -> None:
    model = _timm_swin(kind)
    analysis = analyze(model, X[:1])
    assert {u.name: (u.heads, u.channels, u.schemes) for u in analysis.units if u.heads} == {
        TIMM_ATTN.format(s, b): (h, 12 * h, ("channel",)) for s, h in ((0, 2), (1, 4))
        for b in (0, 1)}
    heads = {TIMM_ATTN.format(0, 1): UnitPolicy("channel", 0.5),
             TIMM_ATTN.format(1, 1): UnitPolicy("channel", 0.75)}
    policy = Policy({**heads, "layers.0.blocks.0.mlp.fc1": UnitPolicy("channel", 0.5)})
    pruned = apply_policy(model, policy, X[:1])
    attn = pruned.get_submodule(TIMM_ATTN.format(1, 1))
    assert isinstance(attn, type(model.get_submodule(TIMM_ATTN.format(1, 1))))
    assert attn.num_heads == 1 and tuple(attn.qkv.weight.shape) == (36, 48)
    assert attn.proj.in_features == 12
    if kind == "v2":
        assert tuple(attn.logit_scale.shape) == (1, 1, 1) and attn.cpb_mlp[-1].out_features == 1
        assert attn.q_bias.shape == attn.k_bias.shape == attn.v_bias.shape == (12,)
    else:
        assert attn.relative_position_bias_table.shape[1] == 1
    out = pruned(X)
    assert out.shape == (2, 10)
    # the zeroed dense model runs timm's own forward: the pruned one computes the same
    zeroed, inexact = zero_pruned_channels(model, policy, X[:1])
    assert inexact == []
    torch.testing.assert_close(zeroed(X), out, rtol=1e-5, atol=1e-5)
    assert [u.heads for u in analyze(pruned, X[:1]).units if u.heads] == [2, 4]
    # heads and a sparse qkv of the same block (V2 runs its qkv weight through F.linear: it is
    # in no unit): prediction == count == aten count
    if kind != "v2":
        heads[TIMM_ATTN.format(1, 1) + ".qkv"] = UnitPolicy("unstructured", 0.5)
    policy = Policy(heads)
    sparse = apply_policy(model, policy, X[:1])
    cost = count_cost(sparse, X[:1])
    assert predicted_cost(analysis, policy) == pytest.approx(
        (cost.effective_flops, cost.effective_params), rel=1e-6)
    assert cost.flops == pytest.approx(flop_counter_macs(sparse, X[:1]), rel=0.01)
    if kind != "v2":
        assert float(sparse.get_submodule(TIMM_ATTN.format(1, 1)).qkv.weight_mask.mean()) == 0.5
    space = PruningSpace(None, analysis=analysis, budget=Budget("flops", 0.5),
                         schemes=("channel",), fill_budget=True)
    point = np.random.default_rng(0).random(space.dim)
    share = flop_counter_macs(apply_policy(model, space.decode(point), X[:1]), X[:1])
    share /= analysis.dense_flops
    assert share <= 0.5 * 1.01
    assert space.cost(point)["flops_share"] == pytest.approx(share, rel=0.01)


@pytest.mark.slow  # swin_t: about 20 s, `make test-slow` runs it
def test_swin_t_takes_a_half_flops_channel_budget() -> None:
    torch.manual_seed(0)
    model = tv_swin.swin_t().eval()
    x = torch.randn(1, 3, 64, 64)
    analysis = analyze(model, x)
    assert sum(1 for u in analysis.units if u.heads) == 12
    # refused below ~0.77 of the dense MACs before Swin's heads were units
    space = PruningSpace(None, analysis=analysis, budget=Budget("flops", 0.5),
                         schemes=("channel",), fill_budget=True)
    point = np.random.default_rng(0).random(space.dim)
    share = flop_counter_macs(apply_policy(model, space.decode(point), x), x)
    share /= analysis.dense_flops
    assert share <= 0.5 * 1.01
    assert space.cost(point)["flops_share"] == pytest.approx(share, rel=0.01)
