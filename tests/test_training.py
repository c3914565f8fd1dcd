from pathlib import Path

import pytest
import torch

from prunetune.trainers import (
    CheckpointError,
    DataConfig,
    ModelConfig,
    TrainConfig,
    build_model,
    evaluate,
    fit,
    load_checkpoint,
    load_data,
    pretrain_dense,
    save_checkpoint,
    seed_everything,
)

DIGITS = DataConfig(name="digits", batch_size=32)


def test_one_epoch_on_digits_beats_chance() -> None:
    data = load_data(DIGITS)
    seed_everything(0)
    model = build_model("resnet20", num_classes=10, in_channels=1)
    fit(model, data.loader("train"), TrainConfig(epochs=1, lr=0.05), progress=False)
    acc = evaluate(model, data.loader("test")).accuracy
    assert acc > 0.5, f"one epoch on digits gave {acc:.3f}; chance is 0.1"


def test_seeded_training_is_deterministic() -> None:
    data = load_data(DataConfig(name="digits", batch_size=64, train_subset=256))
    outs = []
    for _ in range(2):
        seed_everything(3)
        model = build_model("resnet20", num_classes=10, in_channels=1)
        fit(model, data.loader("train", seed=3), TrainConfig(epochs=1, lr=0.05), progress=False)
        outs.append(model.eval()(data.example_input(2) + 0.5))
    assert torch.allclose(outs[0], outs[1])


def test_pretrain_cache_round_trip(tmp_path: Path) -> None:
    cfgs = (ModelConfig(name="resnet20"), DataConfig(name="digits", train_subset=128),
            TrainConfig(epochs=0.5, lr=0.05))
    first = pretrain_dense(*cfgs, cache_dir=tmp_path, progress=False)
    second = pretrain_dense(*cfgs, cache_dir=tmp_path, progress=False)
    assert not first.cached and second.cached
    assert second.checkpoint_path == first.checkpoint_path
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(first.model.eval()(x), second.model(x))
    assert second.metrics == pytest.approx(first.metrics)
    # A different training config is a different cache entry.
    third = pretrain_dense(cfgs[0], cfgs[1], TrainConfig(epochs=0.5, lr=0.02), cache_dir=tmp_path,
                           progress=False)
    assert not third.cached and third.checkpoint_path != first.checkpoint_path


def test_checkpoint_rejects_foreign_and_unsafe_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a prunetune checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    import argparse  # any class outside weights_only's allow-list stands for "code in a pickle"

    unsafe = {"format": "prunetune-dense/1", "obj": argparse.Namespace(a=1)}
    torch.save(unsafe, tmp_path / "code.pt")
    with pytest.raises(CheckpointError, match="could not be read safely"):
        load_checkpoint(tmp_path / "code.pt")
    # Atomic save leaves no temp files behind.
    save_checkpoint(tmp_path / "ok.pt", {"format": "prunetune-dense/1", "x": torch.ones(2)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["code.pt", "foreign.pt", "ok.pt"]


def test_adamw_trains_and_is_its_own_cache_entry_while_sgd_keeps_the_old_keys() -> None:
    from prunetune.trainers.pretrain import pretrain_cache_key

    data = load_data(DIGITS)
    seed_everything(0)
    model = build_model("resnet20", num_classes=10, in_channels=1)
    fit(model, data.loader("train"), TrainConfig(optimizer="adamw", epochs=1, lr=2e-3,
                                                  weight_decay=0.05), progress=False)
    acc = evaluate(model, data.loader("test")).accuracy
    assert acc > 0.5, f"one AdamW epoch on digits gave {acc:.3f}; chance is 0.1"
    model_cfg, data_cfg = ModelConfig(), DataConfig(name="digits")
    sgd, adamw = (pretrain_cache_key(model_cfg, data_cfg, TrainConfig(epochs=3, optimizer=o))
                  for o in ("sgd", "adamw"))
    # the key this config had before the optimizer could be chosen: cached models stay found
    assert sgd == "e077cc19046b7185" and adamw != sgd
