"""Attention heads as prunable units (issue 29, "heads and widths"): timm's ViT / DeiT
`Attention` (a fused qkv Linear) and torchvision's ViT (`nn.MultiheadAttention`) lose whole
heads under `channel`, the space's cost prediction is the pruned model's count, and budgets
hold by PyTorch's aten-level counter. Small untrained models at 32 px."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

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
from prunetune.search_spaces.heads import HeadsAttention

timm = pytest.importorskip("timm")

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
TV_ATTN = "encoder.layers.encoder_layer_{}.self_attention"


def _timm_vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2,
                             num_classes=10).eval()


def _tv_vit() -> nn.Module:
    torch.manual_seed(0)
    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=3,
                             hidden_dim=192, mlp_dim=768, num_classes=10).eval()


@pytest.fixture(scope="module")
def timm_vit():
    model = _timm_vit()
    return model, analyze(model, X[:1])


@pytest.fixture(scope="module")
def tv_vit():
    model = _tv_vit()
    return model, analyze(model, X[:1])


def predicted_cost(analysis, policy: Policy) -> tuple[float, float]:
    """The analytic cost model's (effective FLOPs, effective params) of `policy`."""
    cm = analysis.cost_model
    ratio, channel = np.zeros(cm.n_units), np.zeros(cm.n_units, dtype=bool)
    row = np.full(cm.n_units, -1)
    for i, unit in enumerate(analysis.units):
        up = policy.units.get(unit.name)
        if up is not None:
            ratio[i], channel[i] = up.ratio, up.spec.structural
            row[i] = -1 if up.spec.structural else cm.keys.index(up.spec.key(up))
    return cm.evaluate(ratio, channel, row, policy.round_to)


def test_timm_attention_is_a_heads_unit_and_loses_whole_heads(timm_vit) -> None:
    model, analysis = timm_vit
    unit = analysis.unit("blocks.0.attn.qkv")
    assert (unit.heads, unit.head_dim, unit.channels, unit.ch_groups, unit.multiple) == (
        3, 64, 576, 3, 64)
    assert {"channel", "block", "nm", "unstructured"} <= set(unit.schemes)
    assert unit.max_ratio("channel") == pytest.approx(2 / 3)  # at least one head stays
    assert analysis.unit("blocks.0.mlp.fc1").channels == 768  # MLP widths: channel units
    policy = Policy({"blocks.0.attn.qkv": UnitPolicy("channel", 0.34)})  # 3 * 0.66 -> 1 head
    pruned = apply_policy(model, policy, X[:1])
    attn, other = pruned.blocks[0].attn, pruned.blocks[1].attn
    assert (attn.num_heads, attn.attn_dim) == (1, 64)
    assert tuple(attn.qkv.weight.shape) == (3 * 64, 192) and attn.proj.in_features == 64
    assert other.num_heads == 3 and model.blocks[0].attn.num_heads == 3  # input untouched
    out = pruned(X)
    assert out.shape == model(X).shape == (2, 10)
    # the cut heads' q, k, v rows zeroed in the dense model compute exactly the same
    zeroed, inexact = zero_pruned_channels(model, policy, X[:1])
    assert inexact == []
    torch.testing.assert_close(zeroed(X), out, rtol=1e-5, atol=1e-5)


def test_multihead_attention_heads_unit_becomes_heads_attention(tv_vit) -> None:
    model, analysis = tv_vit
    unit = analysis.unit(TV_ATTN.format(0))
    assert (unit.heads, unit.head_dim, unit.channels, unit.schemes) == (3, 64, 192, ("channel",))
    policy = Policy({TV_ATTN.format(0): UnitPolicy("channel", 0.34),
                     TV_ATTN.format(1): UnitPolicy("channel", 0.2)})
    pruned = apply_policy(model, policy, X[:1])
    first = pruned.get_submodule(TV_ATTN.format(0))
    second = pruned.get_submodule(TV_ATTN.format(1))
    assert isinstance(first, HeadsAttention) and first.num_heads == 1
    assert tuple(first.in_proj_weight.shape) == (3 * 64, 192)
    assert (first.out_proj.in_features, first.out_proj.out_features) == (64, 192)
    assert isinstance(second, HeadsAttention) and second.num_heads == 2
    out = pruned(X)
    assert out.shape == model(X).shape == (2, 10)
    zeroed, inexact = zero_pruned_channels(model, policy, X[:1])
    assert inexact == []
    torch.testing.assert_close(zeroed(X), out, rtol=1e-5, atol=1e-5)


def test_heads_attention_is_multihead_attention_math() -> None:
    torch.manual_seed(1)
    for batch_first in (True, False):
        mha = nn.MultiheadAttention(12, 3, batch_first=batch_first).eval()
        x = torch.randn(2, 5, 12) if batch_first else torch.randn(5, 2, 12)
        mask = torch.rand(5, 5) > 0.7
        mask.fill_diagonal_(False)
        padding = torch.zeros(2, 5, dtype=torch.bool)
        padding[0, 4] = True
        heads = HeadsAttention.from_mha(mha, [0, 1, 2]).eval()
        for kwargs in ({"need_weights": True}, {"need_weights": False, "attn_mask": mask,
                                                "key_padding_mask": padding}):
            want, want_w = mha(x, x, x, **kwargs)
            got, got_w = heads(x, x, x, **kwargs)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
            if want_w is not None:
                torch.testing.assert_close(got_w, want_w, rtol=1e-5, atol=1e-6)


TIMM_POLICIES = [
    {"blocks.0.attn.qkv": UnitPolicy("channel", 0.6),
     "blocks.1.attn.qkv": UnitPolicy("channel", 0.3),
     "patch_embed.proj": UnitPolicy("channel", 0.5)},
    {"blocks.0.attn.qkv": UnitPolicy("channel", 0.4), "blocks.0.mlp.fc1": UnitPolicy(
        "channel", 0.5), "blocks.1.attn.qkv": UnitPolicy("block", 0.5)},
]
TV_POLICIES = [
    {TV_ATTN.format(0): UnitPolicy("channel", 0.6), "conv_proj": UnitPolicy("channel", 0.5),
     "encoder.layers.encoder_layer_1.mlp.0": UnitPolicy("channel", 0.3)},
    {TV_ATTN.format(1): UnitPolicy("channel", 0.5), "conv_proj": UnitPolicy("block", 0.5)},
]


@pytest.mark.parametrize("which, units", [("timm", u) for u in TIMM_POLICIES]
                         + [("tv", u) for u in TV_POLICIES])
@pytest.mark.parametrize("round_to", [None, 16])
def test_heads_policy_prediction_is_the_pruned_models_count(which, units, round_to, timm_vit,
                                                             tv_vit) -> None:
    model, analysis = timm_vit if which == "timm" else tv_vit
    policy = Policy(units, round_to=round_to)
    pruned = apply_policy(model, policy, X[:1])
    assert pruned(X).shape == (2, 10)
    flops, _ = predicted_cost(analysis, policy)
    cost = count_cost(pruned, X[:1])
    assert flops == pytest.approx(cost.effective_flops, rel=1e-9)
    assert cost.flops == pytest.approx(flop_counter_macs(pruned, X[:1]), rel=0.01)
    assert cost.flops < analysis.dense_flops


def test_sparse_schemes_on_qkv_keep_the_heads(timm_vit) -> None:
    model, analysis = timm_vit
    for up in (UnitPolicy("block", 0.5), UnitPolicy("nm", 0.5), UnitPolicy("unstructured", 0.7)):
        policy = Policy({"blocks.0.attn.qkv": up})
        pruned = apply_policy(model, policy, X[:1])
        qkv = pruned.blocks[0].attn.qkv
        assert pruned.blocks[0].attn.num_heads == 3 and tuple(qkv.weight.shape) == (576, 192)
        assert float(qkv.weight_mask.mean()) <= 1 - up.ratio + 1e-6
        assert pruned(X).shape == (2, 10)
        assert predicted_cost(analysis, policy)[0] == pytest.approx(
            count_cost(pruned, X[:1]).effective_flops, rel=1e-6)


@pytest.mark.parametrize("which", ["timm", "tv"])
def test_budget_on_a_vit_holds_by_the_aten_count(which, timm_vit, tv_vit) -> None:
    model, analysis = timm_vit if which == "timm" else tv_vit
    assert_channel_budget_holds(model, analysis, keep=0.4, heads_units=2)


def assert_channel_budget_holds(model: nn.Module, analysis, keep: float, heads_units: int
                                ) -> list[nn.Module]:
    """A channel-only FLOPs budget `keep` on `model`, decoded at full and at random points:
    each applied policy is within the budget by the aten-level count, the space predicts that
    count, and its `heads_units` heads units lose heads. The pruned models, for more checks."""
    space = PruningSpace(None, analysis=analysis, budget=Budget("flops", keep),
                         schemes=("channel",), fill_budget=True)
    heads = [u.name for u in space.units if u.heads]
    assert len(heads) == heads_units
    rng = np.random.default_rng(0)
    pruned_models = []
    for point in (np.ones(space.dim), rng.random(space.dim)):
        policy = space.decode(point)
        pruned = apply_policy(model, policy, X[:1])
        share = flop_counter_macs(pruned, X[:1]) / analysis.dense_flops
        assert share <= 1.01 * keep
        assert space.cost(point)["flops_share"] == pytest.approx(share, rel=0.01)
        assert any(policy.units[n].ratio > 0 for n in heads)
        pruned_models.append(pruned)
    return pruned_models


def test_baselines_prune_whole_heads(timm_vit) -> None:
    model, analysis = timm_vit
    space = PruningSpace(None, analysis=analysis, budget=Budget("flops", 0.5),
                         schemes=("channel",))
    for baseline in baseline_policies(space, model, X[:1], methods=("uniform", "tp-magnitude")):
        pruned = apply_policy(model, baseline.policy, X[:1])
        for block in pruned.blocks:
            attn = block.attn
            assert attn.qkv.out_features == 3 * attn.num_heads * attn.head_dim
        share = flop_counter_macs(pruned, X[:1]) / analysis.dense_flops
        assert share <= 0.5 * 1.01
        assert share == pytest.approx(baseline.flops_share, rel=1e-6)


def test_an_unbind_of_no_known_attention_is_not_channel_pruned() -> None:
    class Fused(nn.Module):  # a fused q, k, v layer no heads unit knows
        def __init__(self) -> None:
            super().__init__()
            self.qkv, self.out = nn.Linear(16, 48), nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q, k, v = self.qkv(x).reshape(x.shape[0], 3, 16).unbind(1)
            return self.out(q * k + v)

    unit = analyze(Fused(), torch.randn(1, 16)).unit("qkv")
    assert "channel" not in unit.schemes and "unstructured" in unit.schemes


def test_policy_picture_labels_heads(timm_vit) -> None:
    from prunetune.orchestrator.pictures import policy_figure

    model, analysis = timm_vit
    space = PruningSpace(None, analysis=analysis, schemes=("channel",), budget=None)
    policy = Policy({"blocks.0.attn.qkv": UnitPolicy("channel", 0.34),
                     "blocks.0.mlp.fc1": UnitPolicy("channel", 0.5)})
    fig = policy_figure(policy, space.describe()["units"], "heads")
    labels = [t.get_text() for t in fig.axes[1].get_xticklabels()]
    assert labels == ["blocks.0.attn.qkv [1/3 heads]", "blocks.0.mlp.fc1"]


def test_a_cost_model_pickled_before_heads_units_still_evaluates(timm_vit) -> None:
    _, analysis = timm_vit
    cm = analysis.cost_model
    old = {k: v for k, v in cm.__dict__.items() if k not in ("m_out", "m_in")}
    restored = type(cm).__new__(type(cm))
    restored.__setstate__(old)  # what unpickling a space of an earlier search does
    ratio = np.full(cm.n_units, 0.3)
    args = (ratio, np.ones(cm.n_units, dtype=bool), np.full(cm.n_units, -1))
    assert restored.evaluate(*args) == cm.evaluate(*args)
