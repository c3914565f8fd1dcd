"""`space.importance`: which channels a pruning ratio removes is a config choice (issue 25, item 3).

The same ratio policy on the same ResNet-20 keeps other channels under another criterion, and
the config's choice reaches the policies a search decodes and the uniform baseline.
"""

from __future__ import annotations

import typing

import pytest
import torch
from torch import nn

from prunetune.errors import ConfigError
from prunetune.orchestrator.config import SpaceConfig, load_config
from prunetune.orchestrator.spaces import space_from_analysis
from prunetune.search_spaces import IMPORTANCES, Policy, UnitPolicy, analyze, apply_policy
from prunetune.search_spaces.baselines import baseline_policies
from prunetune.trainers import build_model

X = torch.zeros(1, 1, 8, 8)


@pytest.fixture(scope="module")
def trained_like() -> nn.Module:
    """ResNet-20 with heavy-tailed conv weights (as trained ones are; L1 and L2 then rank
    channels differently) and distinct BatchNorm scales (fresh ones are all 1: no ranking)."""
    torch.manual_seed(0)
    model = build_model("resnet20", in_channels=1, num_classes=10)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                heavy = torch.distributions.StudentT(1.5).sample(m.weight.shape)
                m.weight.copy_(heavy.clamp(-20, 20) * 0.05)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features) * 0.9 + 0.1)
                m.bias.copy_(torch.randn(m.num_features) * 0.1)
    return model.eval()


def _kept(dense: nn.Module, pruned: nn.Module) -> dict[str, tuple[int, ...]]:
    """Per BatchNorm layer, the dense channel indices the pruned model kept (found by the
    BN scales, which are distinct and copied exactly)."""
    dense_bns = dict(dense.named_modules())
    out = {}
    for name, bn in pruned.named_modules():
        if isinstance(bn, nn.BatchNorm2d):
            ref = dense_bns[name].weight.detach()
            idx = [int(torch.nonzero(ref == w).flatten()[0]) for w in bn.weight.detach()]
            out[name] = tuple(sorted(idx))
    return out


def _half_of_every_unit(model: nn.Module, importance: str) -> Policy:
    units = analyze(model, X).units
    return Policy({u.name: UnitPolicy("channel", 0.5) for u in units}, importance=importance)


def test_the_criterion_changes_which_channels_a_ratio_removes(trained_like: nn.Module) -> None:
    kept = {imp: _kept(trained_like, apply_policy(trained_like, _half_of_every_unit(
        trained_like, imp), X)) for imp in ("magnitude", "l1", "bn_scale")}
    # the same widths: only which channels differs
    widths = {imp: {k: len(v) for k, v in layers.items()} for imp, layers in kept.items()}
    assert widths["magnitude"] == widths["l1"] == widths["bn_scale"]
    assert any(len(v) < trained_like.get_submodule(k).num_features
               for k, v in kept["magnitude"].items())
    for other in ("l1", "bn_scale"):
        differ = [k for k in kept["magnitude"] if kept["magnitude"][k] != kept[other][k]]
        assert differ, f"magnitude and {other} kept the same channels in every layer"
    # inside a block, bn_scale keeps exactly the channels of largest BatchNorm scale (that BN
    # alone is in the unit; the residual stream's units couple several)
    gamma = trained_like.get_submodule("layer1.0.bn1").weight.detach()
    top = gamma.argsort(descending=True)[:len(kept["bn_scale"]["layer1.0.bn1"])]
    assert kept["bn_scale"]["layer1.0.bn1"] == tuple(sorted(top.tolist()))


def test_the_config_choice_reaches_decoded_policies_and_the_uniform_baseline(
        trained_like: nn.Module) -> None:
    cfg = load_config(None, {"space.importance": "l1", "space.round_to": None})
    assert cfg.space.importance == "l1"
    space = space_from_analysis(cfg, analyze(trained_like, X, importance="l1"))
    assert space.importance == "l1" and space.describe()["importance"] == "l1"
    policy = space.decode(torch.full((space.dim,), 0.5).numpy())
    assert policy.importance == "l1"
    assert Policy.from_json(policy.to_json()).importance == "l1"  # what trials receive
    (uniform,) = baseline_policies(space, trained_like, X, ["uniform"])
    assert uniform.policy.importance == "l1"
    default = space_from_analysis(load_config(None, {"space.round_to": None}),
                                  analyze(trained_like, X))
    assert default.decode(torch.full((default.dim,), 0.5).numpy()).importance == "magnitude"


def test_a_config_file_sets_it_and_a_bad_value_names_the_field(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "c.yaml"
    path.write_text("space:\n  importance: fpgm\n")
    assert load_config(path).space.importance == "fpgm"
    path.write_text("space:\n  importance: taylor\n")
    with pytest.raises(ConfigError, match=r"space\.importance.*'taylor'"):
        load_config(path)


def test_the_config_offers_exactly_the_criteria_the_pruner_knows() -> None:
    offered = typing.get_args(SpaceConfig.model_fields["importance"].annotation)
    assert set(offered) == set(IMPORTANCES)
