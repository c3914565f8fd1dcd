"""Policies: validation with clear errors, file I/O, summaries, scheme mapping, analysis."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from prunetune.search_spaces import (
    Policy,
    PolicyError,
    UnitPolicy,
    analyze,
    apply_policy,
    map_schemes,
)
from prunetune.trainers import build_model

X = torch.randn(1, 3, 32, 32)


@pytest.fixture(scope="module")
def resnet():
    model = build_model("resnet20").eval()
    return model, analyze(model, X)


@pytest.fixture(scope="module")
def mobilenet():
    model = build_model("mobilenetv2").eval()
    return model, analyze(model, X)


def _write(tmp_path, raw):
    path = tmp_path / "policy.json"
    path.write_text(raw if isinstance(raw, str) else json.dumps(raw))
    return path


def test_analysis_units_and_protected_output(resnet):
    _, analysis = resnet
    names = analysis.names
    assert analysis.protected == ["fc"] and "fc" not in names
    # Residual coupling: a stage's second convolutions share one unit with the stem.
    stem = analysis.unit("conv1")
    assert {"layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"} <= set(stem.layers)
    assert "layer1.0.conv1" in names and len(names) == 12
    for u in analysis.units:
        f = u.features
        assert f["flops"] > 0 and 0 < f["flops_share"] < 1 and 0 <= f["depth"] <= 1
        assert f["imp_median"] > 0 and set(u.schemes) >= {"channel", "unstructured"}
    assert pickle.loads(pickle.dumps(analysis)).names == names


def test_depthwise_units_are_coupled(mobilenet):
    _, analysis = mobilenet
    dw = [u for u in analysis.units if u.features["depthwise"]]
    assert dw and all(len(u.layers) >= 2 for u in dw)  # expansion conv + its depthwise conv
    assert all("pattern" not in u.schemes for u in dw if u.features["type"] == "conv1x1")


def test_bad_policy_files_get_clear_errors(resnet, tmp_path):
    model, analysis = resnet
    with pytest.raises(PolicyError, match="does not exist"):
        Policy.load(tmp_path / "missing.json")
    with pytest.raises(PolicyError, match="not valid JSON"):
        Policy.load(_write(tmp_path, "{not json"))
    with pytest.raises(PolicyError, match="unsupported policy schema 7"):
        Policy.load(_write(tmp_path, {"schema": 7, "units": {}}))
    with pytest.raises(PolicyError, match=r"ratio must be in \[0, 0.9\] for unit "
                                          r"'layer2.0.conv1'.*got 1.2"):
        Policy.load(_write(tmp_path, {"schema": 1, "units": {
            "layer2.0.conv1": {"scheme": "channel", "ratio": 1.2}}}))
    with pytest.raises(PolicyError, match="unknown scheme 'prune' for unit 'conv1'"):
        Policy.load(_write(tmp_path, {"schema": 1, "units": {
            "conv1": {"scheme": "prune", "ratio": 0.2}}}))
    with pytest.raises(PolicyError, match="unknown field.*'ration'"):
        Policy.load(_write(tmp_path, {"schema": 1, "units": {
            "conv1": {"scheme": "channel", "ratio": 0.2, "ration": 1}}}))
    with pytest.raises(PolicyError, match=r"block must be one of .* got \(3, 3\)"):
        Policy.load(_write(tmp_path, {"schema": 1, "units": {
            "conv1": {"scheme": "block", "ratio": 0.2, "block": [3, 3]}}}))
    with pytest.raises(PolicyError, match="ratio must equal 1 - n/m = 0.5"):
        Policy.load(_write(tmp_path, {"schema": 1, "units": {
            "conv1": {"scheme": "nm", "ratio": 0.3, "n": 2, "m": 4}}}))
    with pytest.raises(PolicyError, match="'block' applies only to scheme 'block'"):
        UnitPolicy("channel", 0.3, block=(8, 8))
    # Errors that need the model: unknown / protected unit, scheme that does not apply.
    unknown = Policy({"layer9.conv": UnitPolicy("channel", 0.3)})
    with pytest.raises(PolicyError, match="unknown unit 'layer9.conv'"):
        apply_policy(model, unknown, X)
    with pytest.raises(PolicyError, match="'fc'.*protected"):
        Policy({"fc": UnitPolicy("channel", 0.3)}).validate(analysis)


def test_scheme_that_does_not_apply(mobilenet):
    model, analysis = mobilenet
    unit = next(u for u in analysis.units if "pattern" not in u.schemes)
    with pytest.raises(PolicyError, match=f"scheme 'pattern' does not apply to unit "
                                          f"'{unit.name}'.*allowed: channel"):
        apply_policy(model, Policy({unit.name: UnitPolicy("pattern", 0.5)}), X)


def test_save_is_atomic_and_round_trips(tmp_path):
    policy = Policy({"conv1": UnitPolicy("channel", 0.25),
                     "layer1.0.conv1": UnitPolicy("nm", 0.5),
                     "layer1.1.conv1": UnitPolicy("block", 0.4, block=(16, 16)),
                     "layer1.2.conv1": UnitPolicy("pattern", 0.6, pattern="row")},
                    importance="l1", round_to=4)
    path = policy.save(tmp_path / "sub" / "p.json")
    assert sorted(p.name for p in path.parent.iterdir()) == ["p.json"]  # no temp file left
    loaded = Policy.load(path)
    assert loaded == policy and loaded.units["layer1.0.conv1"].n == 2
    assert json.loads(path.read_text())["schema"] == 1
    summary = policy.summary()
    assert all(isinstance(v, (float, str)) for v in summary.values())
    assert summary["policy.units"] == 4.0 and summary["policy.channel.units"] == 1.0
    assert summary["policy.ratio.mean"] == pytest.approx((0.25 + 0.5 + 0.4 + 0.6) / 4)


def test_rule_based_mapping(resnet, mobilenet):
    _, r_analysis = resnet
    _, m_analysis = mobilenet
    gpu = map_schemes(m_analysis, "gpu")
    for u in m_analysis.units:
        if u.features["depthwise"]:
            assert gpu[u.name].scheme == "channel"
        elif u.features["type"] == "conv1x1":
            assert gpu[u.name].scheme == "block"
            bo, bi = gpu[u.name].block
            assert all(o % bo == 0 and k % bi == 0 for o, k in u.shapes.values())
    cpu = map_schemes(r_analysis, "cpu")
    assert all(p.scheme == "pattern" for p in cpu.values())  # all 3x3 convolutions
    only = map_schemes(r_analysis, "gpu", schemes=("unstructured",))
    assert {p.scheme for p in only.values()} == {"unstructured"}
    with pytest.raises(PolicyError, match="device must be one of gpu, cpu"):
        map_schemes(r_analysis, "tpu")


class _ShuffleNet(torch.nn.Module):
    """A channel shuffle (a rank-5 view) between two convolutions, as in ShuffleNet."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.conv3 = torch.nn.Conv2d(16, 16, 1)
        self.fc = torch.nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        b, c, h, w = x.shape
        x = x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
        x = torch.relu(self.conv3(torch.relu(self.conv2(x))))
        return self.fc(x.mean((2, 3)))


def test_channels_through_a_shuffle_are_not_channel_pruned():
    model = _ShuffleNet().eval()
    analysis = analyze(model, X)
    shuffled = analysis.unit("conv1")
    assert "channel" not in shuffled.schemes and "unstructured" in shuffled.schemes
    with pytest.raises(PolicyError, match="scheme 'channel' does not apply to unit 'conv1'"):
        apply_policy(model, Policy({"conv1": UnitPolicy("channel", 0.5)}), X)
    policy = Policy({"conv1": UnitPolicy("unstructured", 0.5),
                     "conv2": UnitPolicy("channel", 0.5)})
    pruned = apply_policy(model, policy, X)
    assert pruned.conv2.out_channels == 8 and pruned(X).shape == (1, 4)


@pytest.mark.parametrize("importance", ["l1", "bn_scale", "lamp", "fpgm"])
def test_importance_criteria_keep_the_same_widths(resnet, importance):
    model, analysis = resnet
    units = {"layer1.0.conv1": UnitPolicy("channel", 0.5), "conv1": UnitPolicy("channel", 0.3)}
    pruned = apply_policy(model, Policy(units, importance=importance, round_to=4), X)
    assert pruned.layer1[0].conv1.out_channels == 8 and pruned.conv1.out_channels == 8
    assert pruned(X).shape == model(X).shape


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
def test_channel_pruning_removes_exactly_the_channels_it_zeroes(name: str) -> None:
    from prunetune.search_spaces.apply import zero_pruned_channels

    model = build_model(name).eval()
    with torch.no_grad():  # BatchNorm statistics away from their defaults, so shifts matter
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.3, 0.3)
    x = torch.randn(2, 3, 32, 32)
    units = {u.name: UnitPolicy("channel", min(0.3, u.max_ratio("channel")))
             for u in analyze(model, x).units if "channel" in u.schemes}
    policy = Policy(units)
    zeroed, inexact = zero_pruned_channels(model, policy, x)
    assert inexact == []
    with torch.no_grad():
        ref, dense = zeroed.eval()(x), model(x)
        pruned = apply_policy(model, policy, x).eval()(x)
        # Another importance removes other channels of the same counts: same shapes, other
        # outputs, which the comparison must catch.
        other = apply_policy(model, Policy(units, importance="l1"), x).eval()(x)
    assert torch.allclose(pruned, ref, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(other, ref, rtol=1e-2, atol=1e-3)
    assert not torch.allclose(dense, ref, rtol=1e-2, atol=1e-3)
