"""The benchmarks' committed dense models (`benchmarks/_machine.py`): a finished checkpoint is
kept under its cache name, and a machine with an empty cache gets it back, so `pretrain_dense`
loads it instead of training for hours."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from prunetune.orchestrator.config import DataConfig, ModelConfig, TrainConfig
from prunetune.trainers import pretrain_dense

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
MODEL = ModelConfig(name="resnet20")
DATA = DataConfig(name="digits", batch_size=32, train_subset=128, val_subset=64, test_subset=64)
TRAIN = TrainConfig(epochs=1, lr=0.05, threads=1, device="cpu")


@pytest.fixture(scope="module")
def machine():  # noqa: ANN201 - a benchmark script imported by name
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module("_machine")


def test_a_kept_dense_model_is_loaded_from_an_empty_cache_without_training(
        machine, tmp_path: Path) -> None:
    trained = pretrain_dense(MODEL, DATA, TRAIN, cache_dir=tmp_path / "old", progress=False)
    store = tmp_path / "store"
    stored = machine.keep_dense_model(trained.checkpoint_path, store)
    assert stored.name == trained.checkpoint_path.name
    assert stored.read_bytes() == trained.checkpoint_path.read_bytes()

    new_cache = tmp_path / "new"
    copied = machine.restore_dense_models(new_cache, store)
    assert [p.name for p in copied] == [stored.name]
    loaded = pretrain_dense(MODEL, DATA, TRAIN, cache_dir=new_cache, progress=False)
    assert loaded.cached and loaded.metrics == trained.metrics
    assert machine.restore_dense_models(new_cache, store) == []  # already there: left alone


def test_keeping_again_leaves_the_stored_copy_as_it_is(machine, tmp_path: Path) -> None:
    first, second = tmp_path / "a" / "m.pt", tmp_path / "b" / "m.pt"
    for path, data in ((first, b"first"), (second, b"second")):
        path.parent.mkdir()
        path.write_bytes(data)
    store = tmp_path / "store"
    machine.keep_dense_model(first, store)
    assert machine.keep_dense_model(second, store).read_bytes() == b"first"
    assert not list(store.glob(".*tmp"))  # no half-written copy left beside it
