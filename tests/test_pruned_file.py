"""Pruned-model files (`prunetune apply --out`, trainers/pruned_file.py): read with
`torch.load(weights_only=True)`, rebuilt into a model that computes what the saved one did."""

from __future__ import annotations

import pickle

import pytest
import torch

from prunetune.errors import CheckpointError, PrunetuneError
from prunetune.search_spaces import Policy, UnitPolicy, apply_policy, enforce_masks
from prunetune.trainers import build_model
from prunetune.trainers.pruned_file import load_pruned, load_pruned_with_spec, save_pruned

X = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _fine_tuned_pruned_model():
    torch.manual_seed(0)
    dense = build_model("resnet20", num_classes=10, in_channels=3).eval()
    policy = Policy({"layer1.0.conv1": UnitPolicy("channel", 0.5),
                     "layer2.0.conv1": UnitPolicy("channel", 0.25),
                     "layer2.1.conv1": UnitPolicy("unstructured", 0.6),
                     "layer3.0.conv2": UnitPolicy("block", 0.5, block=(8, 4)),
                     "layer3.1.conv1": UnitPolicy("nm", 0.5, n=2, m=4),
                     "layer1.1.conv1": UnitPolicy("pattern", 0.6)})
    pruned = apply_policy(dense, policy, X[:1])
    # Weights unlike the dense model's, as after fine-tuning: the file must carry them all.
    with torch.no_grad():
        for p in pruned.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        for m in pruned.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    enforce_masks(pruned)
    return pruned.eval(), policy


def test_saved_model_loads_with_weights_only_and_computes_the_same(tmp_path):
    pruned, policy = _fine_tuned_pruned_model()
    path = save_pruned(tmp_path / "pruned.pt", pruned, policy, model_name="resnet20",
                       num_classes=10, in_channels=3, input_shape=(3, 32, 32),
                       result={"val_accuracy": 0.5})
    payload = torch.load(path, weights_only=True)  # raises on any pickled object
    assert payload["format"] == "prunetune-pruned/2"
    rebuilt, spec = load_pruned_with_spec(path)
    assert Policy.from_dict(spec["policy"]) == policy
    assert spec["result"] == {"val_accuracy": 0.5}
    with torch.no_grad():
        assert torch.equal(rebuilt(X), pruned(X))
    masked = {n for n, m in rebuilt.named_modules() if "weight_mask" in m._buffers}
    assert masked == {n for n, m in pruned.named_modules() if "weight_mask" in m._buffers}
    assert rebuilt.layer3[0].conv2.prune_block == (8, 4)  # what the sparse kernels read
    assert rebuilt.layer1[0].conv1.out_channels == pruned.layer1[0].conv1.out_channels == 8


def test_a_pickled_model_file_is_refused_not_run(tmp_path):
    """The format before this one pickled the model object: reading such a file could run code
    and is refused with one line naming the file and what to do."""
    old = tmp_path / "old.pt"
    torch.save({"format": "prunetune-pruned/1", "model": torch.nn.Linear(2, 2)}, old)
    with pytest.raises(CheckpointError, match=r"old\.pt is not a file torch\.load\(weights_only"
                                              r"=True\) reads .*run `prunetune apply"):
        load_pruned(old)
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(print))
    with pytest.raises(PrunetuneError, match="evil.pt"):
        load_pruned(evil)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pruned(tmp_path / "missing.pt")
    other = tmp_path / "other.pt"
    torch.save({"format": "prunetune-dense/1"}, other)
    with pytest.raises(CheckpointError, match="expected format 'prunetune-pruned/2'"):
        load_pruned(other)
