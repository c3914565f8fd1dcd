"""`prunetune pretrain` warns when its dense model is still improving at the end (issue 25,
item 1): the training curve is kept in the checkpoint, judged when training and on a cache hit,
and a model that levelled off, a curve too short to judge or an older checkpoint say nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prunetune.orchestrator.cli import main
from prunetune.trainers import DataConfig, ModelConfig, TrainConfig, pretrain_dense
from prunetune.trainers.checkpoint import load_checkpoint, save_checkpoint
from prunetune.trainers.pretrain import STILL_IMPROVING_RATE, still_improving

# 4 epochs at a small constant learning rate on 320 digits: val accuracy still climbing
# (0.17, 0.26, 0.24, 0.55 on seed 0), far beyond the 144-image val split's noise.
RISING = ("model: {name: resnet20}\n"
          "data: {name: digits, batch_size: 32, train_subset: 320}\n"
          "pretrain: {epochs: 4, lr: 0.01, schedule: constant}\n")


def test_a_pretraining_still_improving_warns_when_trained_and_on_a_cache_hit(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "rising.yaml"
    cfg.write_text(RISING)
    args = ["pretrain", str(cfg), "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert main(args) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert not summary["cached"]
    assert "warning: resnet20 on digits was still improving" in captured.err
    assert "Set pretrain.epochs: 8" in captured.err and summary["warning"] in captured.err
    assert len(captured.err.strip().splitlines()) == 1  # one line
    assert 0.0 <= summary["train_accuracy"] <= 1.0

    ckpt = load_checkpoint(summary["checkpoint"])
    curve = ckpt["curve"]
    assert curve["epoch"] == [1.0, 2.0, 3.0, 4.0] and len(curve["val_accuracy"]) == 4
    assert len(curve["train_loss"]) == 4 and curve["val_samples"] > 0

    # a cache hit of the same model warns again (a search pretrains through the same call)
    hit = pretrain_dense(ModelConfig(name="resnet20"),
                         DataConfig(name="digits", batch_size=32, train_subset=320),
                         TrainConfig(epochs=4, lr=0.01, schedule="constant"),
                         cache_dir=tmp_path / "cache", progress=False)
    assert hit.cached and hit.warning == summary["warning"]
    assert summary["warning"] in capsys.readouterr().err
    given = pretrain_dense(ModelConfig(name="resnet20", checkpoint=summary["checkpoint"]),
                           DataConfig(name="digits"), TrainConfig(), progress=False)
    assert given.warning and "model.checkpoint" in given.warning
    assert given.warning in capsys.readouterr().err

    # a checkpoint written before curves were kept loads as before, silently
    del ckpt["curve"]
    save_checkpoint(summary["checkpoint"], ckpt)
    assert main(args) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["cached"] and "warning" not in captured.err


def test_a_fractional_pretraining_has_no_curve_to_judge(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    result = pretrain_dense(ModelConfig(name="resnet20"),
                            DataConfig(name="digits", train_subset=128),
                            TrainConfig(epochs=0.3, lr=0.05), cache_dir=tmp_path,
                            progress=False)
    assert result.warning is None and "warning" not in capsys.readouterr().err
    assert result.checkpoint["curve"]["epoch"] == [0.3]


def test_levelled_off_short_and_noisy_curves_are_not_still_improving() -> None:
    plateau = [0.50, 0.80, 0.88, 0.900, 0.903, 0.901, 0.904, 0.903]
    assert still_improving(list(range(1, 9)), plateau, 10_000) is None
    # a long cosine run: its low-learning-rate end still rises, slowly (0.02 points / epoch)
    epochs = list(range(1, 201))
    slow = [0.92 - 0.3 * 0.97 ** e + 0.0002 * e for e in epochs]
    assert still_improving(epochs, slow, 10_000) is None
    assert still_improving([1, 2], [0.3, 0.6], 10_000) is None  # two points: no curve
    assert still_improving([1, 2, 3], [0.3, 0.6, 0.9], 0) is None  # no val split
    # a rise within the val split's noise (0.5 points on 144 images) is chance
    assert still_improving([1, 2, 3, 4], [0.90, 0.905, 0.90, 0.91], 144) is None
    assert still_improving([1, 2, 3, 4], [0.90, 0.905, 0.90, 0.91], 1_000_000) is not None


def test_a_curve_still_rising_is_still_improving() -> None:
    gain, span = still_improving([1, 2, 3, 4], [0.70, 0.78, 0.82, 0.845], 10_000)
    assert gain == pytest.approx(0.025) and span == 1
    assert gain / span > STILL_IMPROVING_RATE
    # over the last quarter of a longer run, against the best before it
    epochs = list(range(1, 41))
    rising = [0.6 + 0.005 * e for e in epochs]  # half a point per epoch, to the end
    gain, span = still_improving(epochs, rising, 10_000)
    assert span == 10 and gain == pytest.approx(0.05)
