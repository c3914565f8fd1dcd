"""An interrupted dense pretraining resumes from its last completed epoch: after each epoch
`pretrain_dense` writes `<cached checkpoint>.partial.pt` (model, optimiser, epoch, curve, RNG
and loader-generator states, fingerprint); a rerun of the same config continues from it and
ends with the weights an uninterrupted run ends with, bit for bit (CPU, same threads). A
partial checkpoint of another run, or one that cannot be read, is ignored with a message."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from prunetune.trainers import DataConfig, ModelConfig, TrainConfig, pretrain_dense
from prunetune.trainers import pretrain as pretrain_module
from prunetune.trainers.pretrain import pretrain_checkpoint_path
from prunetune.trainers.resume import partial_path

ROOT = Path(__file__).resolve().parents[1]
MODEL = ModelConfig(name="resnet20")
# augmented (digits: a random 1-pixel crop from the global torch RNG), shuffled by the
# loader's generator, cosine schedule with warm-up, momentum: every state a resume restores
DATA = DataConfig(name="digits", batch_size=32, train_subset=256, val_subset=96, test_subset=96)
TRAIN = TrainConfig(epochs=4, lr=0.05, warmup_epochs=1, threads=1, device="cpu")

# The interrupted run: a real `pretrain_dense` in its own process, killed with SIGTERM while
# its third epoch is under way. The wrapper around `save_partial` only says when epoch 2's
# partial checkpoint is on disk and then stands in for a long third epoch, so the signal
# lands there on any machine, however loaded.
CHILD = textwrap.dedent("""
    import sys, time
    from prunetune.trainers import DataConfig, ModelConfig, TrainConfig, pretrain_dense
    from prunetune.trainers import pretrain as module

    real = module.save_partial

    def save_partial(path, **kw):
        real(path, **kw)
        print(f"[child] partial epoch {kw['epoch']}", flush=True)
        if kw["epoch"] == 2:
            time.sleep(300)

    module.save_partial = save_partial
    pretrain_dense(ModelConfig.model_validate_json(sys.argv[1]),
                   DataConfig.model_validate_json(sys.argv[2]),
                   TrainConfig.model_validate_json(sys.argv[3]), cache_dir=sys.argv[4],
                   progress=False)
""")


def _kill_after_epoch_2(cache: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, MODEL.model_dump_json(), DATA.model_dump_json(),
         TRAIN.model_dump_json(), str(cache)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        lines = []
        for line in child.stdout:
            lines.append(line)
            if "[child] partial epoch 2" in line:
                break
        assert lines and "epoch 2" in lines[-1], f"the child ended early: {lines}"
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=60) == -signal.SIGTERM
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def _weights(result) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    return result.model.state_dict()


def test_a_pretraining_killed_with_sigterm_resumes_and_ends_with_the_same_weights(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    whole = pretrain_dense(MODEL, DATA, TRAIN, cache_dir=tmp_path / "whole", progress=False)
    assert not partial_path(whole.checkpoint_path).exists()  # removed once the model is saved

    cache = tmp_path / "killed"
    _kill_after_epoch_2(cache)
    partial = partial_path(pretrain_checkpoint_path(MODEL, DATA, TRAIN, cache))
    assert partial.is_file() and not pretrain_checkpoint_path(MODEL, DATA, TRAIN, cache).exists()
    capsys.readouterr()

    resumed = pretrain_dense(MODEL, DATA, TRAIN, cache_dir=cache, progress=True)
    out = capsys.readouterr().out
    assert f"[pretrain] resuming from epoch 2 of 4: {partial}" in out
    trained = [n for n in range(1, 5) if f"[pretrain] epoch {n}/4:" in out]
    assert trained == [3, 4]  # the epochs this run trained: only those after the resume
    assert not resumed.cached and partial_path(resumed.checkpoint_path) == partial
    assert not partial.exists()

    w, r = _weights(whole), _weights(resumed)
    assert w.keys() == r.keys()
    differing = [k for k in w if not torch.equal(w[k], r[k])]
    assert differing == []  # bit for bit, BatchNorm statistics included
    assert resumed.checkpoint["curve"] == whole.checkpoint["curve"]
    for k in ("test_accuracy", "val_accuracy", "train_loss", "train_accuracy"):
        assert resumed.metrics[k] == whole.metrics[k]


class _Interrupt(KeyboardInterrupt):
    """A Ctrl-C at an epoch's end, once its partial checkpoint is written."""


def _interrupt_after(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    real = pretrain_module.save_partial

    def save_partial(path: Path, **kw):  # type: ignore[no-untyped-def]
        real(path, **kw)
        if kw["epoch"] == epoch:
            raise _Interrupt

    monkeypatch.setattr(pretrain_module, "save_partial", save_partial)


def test_a_partial_checkpoint_of_another_run_or_unreadable_is_ignored_with_a_message(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    short = TRAIN.model_copy(update={"epochs": 2})
    other = short.model_copy(update={"lr": 0.02})  # another cache key
    with monkeypatch.context() as patch:
        _interrupt_after(patch, 1)
        with pytest.raises(_Interrupt):
            pretrain_dense(MODEL, DATA, short, cache_dir=tmp_path, progress=False)
    theirs = _partial_of(short, tmp_path)
    assert theirs.is_file()

    # the same file name the other config's partial checkpoint would have: its fingerprint
    # (the cache key inside it) says it is not this run's
    mine = _partial_of(other, tmp_path)
    shutil.copy(theirs, mine)
    capsys.readouterr()
    result = pretrain_dense(MODEL, DATA, other, cache_dir=tmp_path, progress=True)
    out, err = capsys.readouterr()
    assert f"[pretrain] ignoring the partial checkpoint {mine}: it was trained for another " \
           "run: cache_key" in err and "training from epoch 0" in err
    assert "resuming" not in out and "[pretrain] epoch 1/2:" in out
    assert not mine.exists() and result.checkpoint_path.is_file()
    assert theirs.exists()  # another run's partial checkpoint is not touched

    # a file that is not a checkpoint at all (a disk that filled up, say)
    garbage = _partial_of(short.model_copy(update={"lr": 0.03}), tmp_path)
    garbage.write_bytes(b"not a checkpoint")
    pretrain_dense(MODEL, DATA, short.model_copy(update={"lr": 0.03}), cache_dir=tmp_path,
                   progress=False)
    err = capsys.readouterr().err
    assert f"ignoring the partial checkpoint {garbage}: it cannot be read safely" in err
    assert not garbage.exists()

    # force trains from epoch 0 even with a matching partial checkpoint (and replaces it)
    with monkeypatch.context() as patch:
        _interrupt_after(patch, 1)
        with pytest.raises(_Interrupt):
            pretrain_dense(MODEL, DATA, short, cache_dir=tmp_path, force=True, progress=True)
    out = capsys.readouterr().out
    assert "resuming" not in out and "[pretrain] epoch 1/2:" in out and theirs.is_file()

    # resumed with another thread count (not in the cache key): the same training goes on,
    # with a note that it is not bit-identical to an uninterrupted run
    resumed = pretrain_dense(MODEL, DATA, short.model_copy(update={"threads": 2}),
                             cache_dir=tmp_path, progress=True)
    out, err = capsys.readouterr()
    assert f"[pretrain] resuming from epoch 1 of 2: {theirs}" in out
    assert "[pretrain] epoch 1/2:" not in out and "[pretrain] epoch 2/2:" in out
    assert "with 1 threads, these run on cpu with 2" in err and "not bit-identical" in err
    assert not theirs.exists() and resumed.checkpoint["curve"]["epoch"] == [1.0, 2.0]


def _partial_of(cfg: TrainConfig, cache: Path) -> Path:
    return partial_path(pretrain_checkpoint_path(MODEL, DATA, cfg, cache))
