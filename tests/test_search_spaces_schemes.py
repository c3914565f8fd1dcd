"""Pruning schemes on the zoo models: expected effective cost, masks that survive training steps,
JSON round trips that reproduce outputs exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prunetune.search_spaces import (
    Policy,
    UnitPolicy,
    analyze,
    apply_policy,
    block_sparse_weight,
    count_cost,
    enforce_masks,
    from_gemm_view,
    gemm_view,
)
from prunetune.search_spaces.channel import kept_channels
from prunetune.trainers import build_model

MODELS = ("resnet20", "resnet56", "mobilenetv2", "vgg16")
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module", params=MODELS)
def zoo(request):
    torch.manual_seed(0)
    model = build_model(request.param).eval()
    return request.param, model, analyze(model, X[:1])


def _masked(model):
    return {n: m for n, m in model.named_modules() if "weight_mask" in m._buffers}


def _policy(analysis, scheme, ratio=0.5):
    return Policy({u.name: UnitPolicy(scheme, ratio) for u in analysis.units
                   if scheme in u.schemes and (scheme != "nm" or u.sparse_layers["nm4"])})


def _train_step(model):
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    loss = torch.nn.functional.cross_entropy(model(X), torch.tensor([1, 2]))
    loss.backward()
    opt.step()
    enforce_masks(model)
    model.eval()


@pytest.mark.parametrize("scheme", ["unstructured", "nm", "block", "pattern"])
def test_sparse_scheme_at_half(zoo, scheme):
    name, model, analysis = zoo
    policy = _policy(analysis, scheme)
    if not policy.units:
        pytest.skip(f"{scheme} applies to no unit of {name}")
    dense = count_cost(model, X[:1])
    pruned = apply_policy(model, policy, X[:1])
    assert pruned(X).shape == model(X).shape
    masked = _masked(pruned)
    expected_layers = {n for u in policy.units for n in analysis.unit(u).sparse_layers[
        "nm4" if scheme == "nm" else scheme]}
    assert set(masked) == expected_layers
    removed_p, removed_f = 0, 0.0
    cost = count_cost(pruned, X[:1])
    for lname, layer in masked.items():
        mask, w = layer.weight_mask, layer.weight
        numel, kept = mask.numel(), int(mask.sum())
        assert torch.all(w[mask == 0] == 0)
        if scheme == "unstructured":  # exactly half of every layer
            assert numel - kept == round(0.5 * numel)
        elif scheme == "nm":  # 2 of every 4 consecutive reduction entries
            assert torch.all(mask.flatten(1).reshape(-1, 4).sum(1) == 2)
        elif scheme == "block":
            bo, bi = layer.prune_block
            m2 = gemm_view(mask)
            if m2.shape[0] % bo == 0 and m2.shape[1] % bi == 0:
                blocks = m2.reshape(m2.shape[0] // bo, bo, m2.shape[1] // bi, bi)
                assert torch.all(blocks.amax((1, 3)) == blocks.amin((1, 3)))
                assert abs(kept / numel - 0.5) <= bo * bi / numel
        else:  # each 3x3 kernel: dense, a 4-entry pattern with the centre, or removed
            per_kernel = mask.reshape(-1, 9).sum(1)
            assert set(per_kernel.unique().tolist()) <= {0.0, 4.0, 9.0}
            assert torch.all(mask.reshape(-1, 9)[per_kernel == 4, 4] == 1)
            assert abs(kept / numel - 0.5) <= 9 / mask[:, :, 0, 0].numel() + 1e-9
        removed_p += numel - kept
        removed_f += cost.per_layer[lname]["flops"] - cost.per_layer[lname]["effective_flops"]
    assert cost.params == dense.params and cost.flops == dense.flops
    assert cost.effective_params == dense.params - removed_p
    assert cost.effective_flops == pytest.approx(dense.flops - removed_f)
    if scheme in ("unstructured", "nm"):  # half of the pruned layers' weight MACs go
        weight_macs = sum(cost.per_layer[n]["flops"] for n in masked)
        assert removed_f == pytest.approx(0.5 * weight_macs, rel=0.02)
    # Masks persist through an optimiser step (momentum and weight decay included).
    _train_step(pruned)
    for layer in masked.values():
        assert torch.all(layer.weight[layer.weight_mask == 0] == 0)


def test_channel_at_half(zoo):
    _, model, analysis = zoo
    policy = _policy(analysis, "channel")
    pruned = apply_policy(model, policy, X[:1])
    assert pruned(X).shape == model(X).shape
    modules = dict(pruned.named_modules())
    for uname in policy.units:
        u = analysis.unit(uname)
        layer = modules[u.name]
        width = getattr(layer, "out_channels", getattr(layer, "out_features", None))
        assert width == kept_channels(u.channels, u.ch_groups, 0.5, u.multiple)
    cost = count_cost(pruned, X[:1])
    assert not _masked(pruned)
    n = len(analysis.units)
    ratio = np.array([0.5 if u.name in policy.units else 0.0 for u in analysis.units])
    flops, params = analysis.cost_model.evaluate(ratio, ratio > 0, np.full(n, -1))
    assert cost.params == params  # parameter counts are exact
    assert cost.flops <= flops <= cost.flops * 1.01  # only activations / pooling are not modelled
    assert cost.effective_flops == cost.flops and cost.sparsity == 0.0
    assert cost.flops < 0.5 * analysis.dense_flops
    _train_step(pruned)


def test_mixed_policy_json_round_trip_reproduces_outputs(zoo, tmp_path):
    _, model, analysis = zoo
    order = ["channel", "block", "nm", "unstructured", "pattern"]
    units = {}
    for i, u in enumerate(analysis.units):
        scheme = next(s for s in order[i % 5:] + order if s in u.schemes and
                      (s != "nm" or u.sparse_layers["nm4"]))
        units[u.name] = UnitPolicy(scheme, 0.25 if scheme == "channel" else 0.5)
    policy = Policy(units, round_to=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = apply_policy(model, policy, X[:1])
    loaded = Policy.load(policy.save(tmp_path / "p.json"))
    assert loaded == policy
    again = apply_policy(model, Policy.from_json(loaded.to_json()), X[:1])
    with torch.no_grad():
        assert torch.equal(pruned(X), again(X))
    # The input model is untouched: same weights, no masks.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not _masked(model)


def test_block_mask_converts_to_bsr():
    model = build_model("resnet20").eval()
    analysis = analyze(model, X[:1])
    unit = analysis.unit("layer1.0.conv1")
    pruned = apply_policy(model, Policy({unit.name: UnitPolicy("block", 0.5, block=(8, 4))}),
                          X[:1])
    layer = dict(pruned.named_modules())["layer1.0.conv1"]
    assert layer.prune_block == (8, 4)
    bsr = block_sparse_weight(layer)
    assert torch.equal(bsr.to_dense(), gemm_view(layer.weight.detach()))
    assert bsr.values().shape[0] == 16 * 144 // 32 // 2  # half of the 8x4 blocks remain
    assert torch.equal(from_gemm_view(gemm_view(layer.weight), layer.weight.shape), layer.weight)


def test_block_pruned_3x3_convolutions_run_as_block_sparse_kernels():
    """Blocks lie on the kernels' tap-major GEMM view, so a block-pruned k x k convolution is
    swapped for the block-sparse module at the density the policy asked for (on the
    `in*kh*kw` view its blocks mixed channels and taps, and no kernel block was ever empty)."""
    from prunetune.kernels.modules import BlockSparseConv2d, sparsify_model

    model = build_model("resnet20").eval()
    unit = "layer3.1.conv1"  # two 64 x 64 x 3 x 3 convolutions
    pruned = apply_policy(model, Policy({unit: UnitPolicy("block", 0.5, block=(16, 16))}), X[:1])
    deployed = dict(sparsify_model(pruned, backend="torch").named_modules())
    masked = {n: m for n, m in pruned.named_modules() if hasattr(m, "weight_mask")}
    assert masked and all(m.kernel_size == (3, 3) for m in masked.values())
    for name, conv in masked.items():
        layer = deployed[name]
        assert isinstance(layer, BlockSparseConv2d), (name, type(layer))
        assert layer.density == pytest.approx(0.5, abs=0.02)
        with torch.no_grad():
            x = torch.randn(2, conv.in_channels, 8, 8)
            assert torch.allclose(layer(x), conv(x), atol=1e-4)
