"""`prunetune analyze` / `prunetune apply` (orchestrator/cli_engine.py) on scikit-learn digits."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from prunetune.errors import CLIError
from prunetune.orchestrator.cli_engine import add_engine_commands
from prunetune.search_spaces import Policy, UnitPolicy
from prunetune.trainers.pruned_file import load_pruned

from .search_helpers import write_engine_config


def _run(argv):
    parser = argparse.ArgumentParser()
    add_engine_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return write_engine_config(tmp_path_factory.mktemp("engine-cli"),
                               "{schemes: [channel, unstructured], groups: 3}")


def test_analyze_prints_units_and_groups(config, capsys):
    assert _run(["analyze", str(config), "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["protected"] == ["fc"] and len(out["groups"]) == 3
    assert {r["group"] for r in out["units"]} == {0, 1, 2}
    assert _run(["analyze", str(config), "--groups", "2", "--untrained"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:3] == ["unit", "group", "type"]
    assert "12 units in 2 groups" in table


def test_apply_prints_costs_and_saves(config, tmp_path, capsys):
    policy = Policy({"layer1.0.conv1": UnitPolicy("channel", 0.5),
                     "layer3.0.conv2": UnitPolicy("unstructured", 0.5)})
    ppath = policy.save(tmp_path / "policy.json")
    out = tmp_path / "pruned.pt"
    assert _run(["apply", str(config), "--policy", str(ppath), "--out", str(out), "--json",
                 "--finetune-epochs", "0.1", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["flops_ratio"] < 1 and result["after"]["sparsity"] > 0
    assert 0 <= result["val_accuracy"] <= 1
    # Latency measured on the device, dense and pruned in turn.
    assert result["latency_ms"] > 0 and result["dense_latency_ms"] > 0
    assert result["speedup"] == pytest.approx(result["dense_latency_ms"] / result["latency_ms"])
    assert result["latency_device"]
    # The file holds no pickled objects (a file from someone else runs no code when read),
    # and load_pruned rebuilds the fine-tuned pruned model from it exactly.
    saved = torch.load(out, weights_only=True)
    spec = json.loads(saved["spec"])
    assert Policy.from_dict(spec["policy"]) == policy and spec["model"]["name"] == "resnet20"
    rebuilt = load_pruned(out)
    assert rebuilt.state_dict().keys() == saved["state_dict"].keys()
    assert all(torch.equal(v, saved["state_dict"][k]) for k, v in rebuilt.state_dict().items())
    layer = dict(rebuilt.named_modules())["layer3.0.conv2"]
    assert torch.all(layer.weight[layer.weight_mask == 0] == 0)  # fine-tuning kept the mask
    assert layer.weight_mask.mean() < 0.6 and rebuilt.layer1[0].conv1.out_channels == 8
    assert rebuilt(torch.zeros(1, *spec["input_shape"])).shape == (1, 10)
    assert _run(["apply", str(config), "--policy", str(ppath)]) == 0
    table = capsys.readouterr().out
    assert "val accuracy" in table and "latency (ms)" in table and "speedup" in table


def test_apply_bad_policy_is_a_clear_error(config, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": 1, "units": {"nope": {"scheme": "channel",
                                                               "ratio": 0.2}}}))
    with pytest.raises(CLIError, match="unknown unit 'nope'"):
        _run(["apply", str(config), "--policy", str(bad), "--quiet"])
    with pytest.raises(CLIError, match="does not exist"):
        _run(["apply", str(config), "--policy", str(tmp_path / "missing.json")])


@pytest.mark.parametrize("model", ["torchvision:resnet18", "timm:resnet18"])
def test_analyze_any_model_without_data(model, tmp_path, capsys):
    """`analyze --input-size C,H,W --untrained` needs no dataset: here one that is not there."""
    if model.startswith("timm:"):
        pytest.importorskip("timm", reason="timm is an optional extra (pip install "
                                           "'prunetune[timm]'); CI installs it")
    path = tmp_path / "cfg.yaml"
    path.write_text(f"model: {{name: '{model}'}}\n"
                    f"data: {{name: imagefolder, root: {tmp_path / 'no-such-folder'}}}\n")
    assert _run(["analyze", str(path), "--input-size", "3,224,224", "--untrained"]) == 0
    table = capsys.readouterr().out
    assert "layer4.0.conv1" in table and "protected (feed the output): fc" in table
    # ResNet-18 at 224 x 224: the MACs of what runs (FlopCounterMode's 3.63 GFLOPs / 2)
    assert "1813.57 MFLOPs" in table
    with pytest.raises(SystemExit):
        _run(["analyze", str(path), "--input-size", "3,224", "--untrained"])


def test_analyze_shows_attention_heads(tmp_path, capsys):
    pytest.importorskip("timm", reason="timm is an optional extra (pip install "
                                       "'prunetune[timm]'); CI installs it")
    path = tmp_path / "cfg.yaml"
    path.write_text("model: {name: 'timm:vit_tiny_patch16_224', kwargs: {img_size: 32, "
                    "patch_size: 8, depth: 2}}\n"
                    f"data: {{name: imagefolder, root: {tmp_path / 'no-such-folder'}}}\n")
    assert _run(["analyze", str(path), "--input-size", "3,32,32", "--untrained"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    rows = {line.split()[0]: line.split() for line in lines[1:] if line.strip()}
    heads = header.index("heads")
    assert header[heads - 1] == "ch"
    assert rows["blocks.0.attn.qkv"][heads] == "3" and rows["blocks.1.attn.qkv"][heads] == "3"
    assert rows["blocks.0.mlp.fc1"][heads] == "-"
