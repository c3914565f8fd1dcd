"""The free baselines (search_spaces/baselines.py) and `prunetune baselines` (cli_baselines.py):
every baseline policy meets its budget, measured on the pruned model, within 1% of it."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from prunetune.errors import CLIError, SpaceError
from prunetune.orchestrator.cli_baselines import add_baselines_command
from prunetune.orchestrator.cli_engine import add_engine_commands
from prunetune.search_spaces import Budget, Policy, PruningSpace, apply_policy, count_cost
from prunetune.search_spaces.baselines import (
    BASELINE_METHODS,
    baseline_policies,
    tp_global_policy,
    uniform_policy,
)
from prunetune.trainers import build_model

from .search_helpers import write_engine_config


def _trained_like(name: str, seed: int = 0) -> torch.nn.Module:
    """A zoo model with spread-out BatchNorm scales, as training leaves them (untrained ones
    are all 1 and give BN-scale importance nothing to rank)."""
    torch.manual_seed(seed)
    model = build_model(name, num_classes=10, in_channels=3).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.data.uniform_(0.2, 1.5)
    return model


def _measured_share(model, policy, example, kind):
    dense = count_cost(model, example)
    pruned = count_cost(apply_policy(model, policy, example), example)
    if kind == "flops":
        return pruned.effective_flops / dense.flops
    return pruned.effective_params / dense.params


CASES = [("resnet20", "flops", BASELINE_METHODS),
         ("resnet20", "params", ("uniform", "tp-magnitude")),
         ("vgg11", "flops", ("uniform", "tp-bn-scale")),
         ("torchvision:resnet18", "flops", BASELINE_METHODS)]


@pytest.mark.parametrize(("name", "kind", "methods"), CASES)
def test_each_baseline_meets_its_budget_within_one_percent(name, kind, methods):
    model = _trained_like(name)
    example = torch.randn(1, 3, 32, 32)
    keep = 0.5
    space = PruningSpace(model, example, budget=Budget(kind, keep))
    batch = (torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    results = baseline_policies(space, model, example, methods, batch=batch)
    assert [b.method for b in results] == list(methods)
    for b in results:
        share = _measured_share(model, b.policy, example, kind)
        assert share <= keep + 1e-9, (b.method, share)  # never above the budget
        assert share >= keep - 0.01, (b.method, share)  # and within 1% of the dense cost
        reported = b.flops_share if kind == "flops" else b.params_share
        assert reported == pytest.approx(share, abs=2e-3)
        assert b.units_pruned == sum(up.ratio > 0 for up in b.policy.units.values()) > 0
        # The policy survives its own JSON format, as `prunetune apply` reads it.
        assert Policy.from_json(b.policy.to_json()) == b.policy


def test_uniform_prunes_every_unit_alike():
    model = _trained_like("resnet20")
    example = torch.randn(1, 3, 32, 32)
    policy = uniform_policy(PruningSpace(model, example, budget=Budget("flops", 0.4)))
    ratios = np.array([up.ratio for up in policy.units.values()])
    assert (ratios > 0).all() and ratios.max() - ratios.min() < 0.1
    # A looser budget prunes less, everywhere.
    looser = uniform_policy(PruningSpace(model, example, budget=Budget("flops", 0.7)))
    assert np.mean([up.ratio for up in looser.units.values()]) < ratios.mean()


def test_taylor_needs_a_batch_and_tied_scores_are_told():
    example = torch.randn(1, 3, 32, 32)
    model = _trained_like("resnet20")
    space = PruningSpace(model, example, budget=Budget("flops", 0.5))
    with pytest.raises(SpaceError, match="tp-taylor needs a labelled calibration batch"):
        tp_global_policy(space, model, example, "tp-taylor")
    untrained = build_model("resnet20", num_classes=10, in_channels=3).eval()
    space = PruningSpace(untrained, example, budget=Budget("flops", 0.5))
    with pytest.raises(SpaceError, match="scores tie across all channels"):
        tp_global_policy(space, untrained, example, "tp-bn-scale")
    with pytest.raises(SpaceError, match="unknown baseline method"):
        baseline_policies(space, untrained, example, ["random"])
    no_bn = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.GroupNorm(1, 16),
                                torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(16, 10)).eval()
    space = PruningSpace(no_bn, example, budget=Budget("flops", 0.7))
    with pytest.raises(SpaceError, match="the model has no BatchNorm; leave tp-bn-scale out"):
        tp_global_policy(space, no_bn, example, "tp-bn-scale")


def _run(argv):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    add_engine_commands(sub)
    add_baselines_command(sub)
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return write_engine_config(tmp_path_factory.mktemp("baselines-cli"),
                               "{budget: {kind: flops, keep: 0.5}}")


def test_cli_writes_policies_that_apply_accepts(config, tmp_path, capsys):
    out = tmp_path / "baselines"
    assert _run(["baselines", str(config), "--methods", "uniform,tp-magnitude,tp-taylor",
                 "--out", str(out), "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in result["baselines"]] == ["uniform", "tp-magnitude",
                                                          "tp-taylor"]
    for row in result["baselines"]:
        assert 0.49 <= row["flops_ratio"] <= 0.5 and row["units_pruned"] > 0
        policy_file = out / f"{row['method']}.json"
        assert row["policy"] == str(policy_file)
        assert _run(["apply", str(config), "--policy", str(policy_file), "--json",
                     "--latency-repeats", "2", "--quiet"]) == 0
        applied = json.loads(capsys.readouterr().out)
        assert 0.49 <= applied["flops_ratio"] <= 0.5
    assert _run(["baselines", str(config), "--methods", "uniform", "--out", str(out),
                 "--quiet"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:3] == ["method", "flops", "params"]
    assert "uniform" in table and "prunetune apply" in table


def test_cli_bad_methods_is_one_line(config):
    with pytest.raises(CLIError, match="--methods must be a comma-separated subset"):
        _run(["baselines", str(config), "--methods", "uniform,magic"])


def test_latency_budget_is_met_through_the_spaces_latency_model():
    from prunetune.search_spaces import LatencyWeights, analyze

    model = _trained_like("resnet20", seed=1)
    example = torch.randn(1, 3, 32, 32)
    analysis = analyze(model, example)
    cm = analysis.cost_model
    latency = LatencyWeights(0.2, cm.w_flops / 1e6, cm.o_flops / 1e7)
    space = PruningSpace(None, budget=Budget("latency", 0.6), analysis=analysis,
                         latency=latency)
    for b in baseline_policies(space, model, example, ("uniform", "tp-magnitude")):
        ms = space.cost(space.encode(b.policy), project=False)["latency_ms"]
        assert space.limit - 0.01 * latency.dense_ms <= ms <= space.limit, (b.method, ms)
