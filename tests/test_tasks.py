"""The task seam (`prunetune.trainers.tasks`): a task outside the package (`tests/toy_task.py`,
named as `package.module:attr`, nothing in the package edited) is pretrained, fine-tuned,
scored by its own loss and metric, pruned and run through a trial; a two-input model through
the prune path; a bad task name is a ConfigError in seconds; the default task is image
classification as before."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from prunetune.errors import ConfigError, ModelMismatchError
from prunetune.search_spaces import PruningSpace
from prunetune.trainers import (
    DataConfig,
    FinetuneConfig,
    ModelConfig,
    TrainConfig,
    build_model,
    evaluate,
    fit,
    get_task,
    load_data,
    model_from_checkpoint,
    pretrain_dense,
    prune_and_evaluate,
)
from prunetune.trainers.pretrain import check_dense_inputs
from prunetune.trainers.prune import calibration_images
from prunetune.trainers.trial import TrialSetup, evaluate_policy

from . import toy_task

ROOT = Path(__file__).resolve().parents[1]
TOY = "tests.toy_task:ToyRegression"
PAIR = "tests.toy_task:PairRegression"
TOY_MODEL = ModelConfig(name="tests.toy_task:toy_mlp")
TOY_TRAIN = TrainConfig(epochs=6, lr=0.05, weight_decay=0.0, threads=1)


def _by_hand(model: torch.nn.Module, data_split: torch.utils.data.TensorDataset,
             pair: bool = False) -> tuple[float, float]:
    """(share within tolerance, mean per-sample MSE) of `model` on a split, computed here."""
    x, y = data_split.tensors
    with torch.no_grad():
        out = model.eval()(x[:, :4], x[:, 4:]) if pair else model.eval()(x)
    share = toy_task.within_tolerance(out, y).mean().item()
    mse = F.mse_loss(out, y, reduction="none").mean(1).mean().item()
    return share, mse


@pytest.fixture(scope="module")
def toy_dense(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    cfg = DataConfig(task=TOY, batch_size=64)
    result = pretrain_dense(TOY_MODEL, cfg, TOY_TRAIN, progress=False,
                            cache_dir=tmp_path_factory.mktemp("toy-cache"))
    return cfg, result


def test_a_bad_task_is_a_config_error_naming_it_in_seconds() -> None:
    t0 = time.perf_counter()
    cases = {"nope": ("data.task", "'nope'", "image-classification", "package.module:attr"),
             "tests.toy_task:Missing": ("data.task", "cannot be imported", "attribute"),
             "tests.nosuch_module:Task": ("data.task", "cannot be imported"),
             "tests.toy_task:toy_mlp": ("data.task", "is not a task", "TaskBase")}
    for name, words in cases.items():
        with pytest.raises(ConfigError) as err:
            check_dense_inputs(ModelConfig(), DataConfig(name="digits", task=name))
        assert all(w in str(err.value) for w in words), str(err.value)
        with pytest.raises(ConfigError):
            pretrain_dense(ModelConfig(), DataConfig(name="digits", task=name),
                           TrainConfig(epochs=1), progress=False)
    assert time.perf_counter() - t0 < 10


def test_the_command_line_refuses_a_bad_task_before_it_creates_anything(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("model: {name: resnet20}\n"
                                       "data: {name: digits, task: imagenet-classification}\n")
    before = set(tmp_path.rglob("*"))
    proc = subprocess.run([sys.executable, "-m", "prunetune.orchestrator.cli", "search",
                           "bad.yaml"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("prunetune search: error: "), lines
    assert "data.task" in lines[0] and "imagenet-classification" in lines[0], lines
    assert set(tmp_path.rglob("*")) == before


def test_the_default_task_is_image_classification_scored_as_before() -> None:
    assert DataConfig().task == "image-classification"
    data = load_data(DataConfig(name="digits", val_subset=64, augment=False))
    assert data.task is get_task("image-classification")
    assert data.loader("val").task is data.task
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=1).eval()
    x = torch.stack([data.val[i][0] for i in range(64)])
    y = torch.stack([data.val[i][1] for i in range(64)])
    with torch.no_grad():
        logits = model(x)
    res = evaluate(model, data.loader("val"))
    assert res.accuracy == (logits.argmax(1) == y).float().mean().item()
    assert res.loss == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert torch.equal(calibration_images(data, 5), torch.stack(
        [data.train.with_augment(False)[i][0] for i in range(5)]))
    assert tuple(data.example_input(2).shape) == (2, 1, 8, 8)


def test_a_toy_task_pretrains_on_its_own_loss_and_logs_its_own_metric(toy_dense) -> None:
    cfg, result = toy_dense
    curve = result.checkpoint["curve"]
    # its own loss (MSE), learned: the last epoch's training loss is under half the first's
    assert curve["train_loss"][-1] < 0.5 * curve["train_loss"][0], curve["train_loss"]
    data = load_data(cfg)
    model = model_from_checkpoint(result.checkpoint)
    share, mse = _by_hand(model, data.val)
    # what is logged as accuracy / loss is the toy's metric / loss, nothing else
    assert result.metrics["val_accuracy"] == pytest.approx(share)
    assert result.metrics["val_loss"] == pytest.approx(mse, rel=1e-5)
    assert 0.3 < share < 1.0 and result.metrics["val_accuracy"] == curve["val_accuracy"][-1]
    share_test, _ = _by_hand(model, data.test)
    assert result.metrics["test_accuracy"] == pytest.approx(share_test)


def test_fit_and_evaluate_take_the_task_from_the_loader(toy_dense) -> None:
    cfg, result = toy_dense
    data = load_data(cfg)
    model = model_from_checkpoint(result.checkpoint)
    before = evaluate(model, data.loader("val"))
    seen: list[dict[str, float]] = []
    fit(model, data.loader("train"), TrainConfig(epochs=2, lr=0.01, threads=1),
        val_loader=data.loader("val"), teacher=model_from_checkpoint(result.checkpoint),
        progress=False, on_epoch_end=lambda epoch, m: seen.append(m))
    after = evaluate(model, data.loader("val"))
    assert [m["val_accuracy"] for m in seen][-1] == pytest.approx(after.accuracy)
    assert after.accuracy == pytest.approx(_by_hand(model, data.val)[0])
    assert after.samples == before.samples == len(data.val)


def test_a_toy_task_trial_reports_its_metric_for_a_pruned_model(toy_dense) -> None:
    cfg, result = toy_dense
    data = load_data(cfg)
    space = PruningSpace(result.model, data.example_input(1))
    policy = space.decode(np.full(space.dim, 0.5))
    finetune = FinetuneConfig(epochs=2, lr=0.01, threads=1, bn_calibration=128)
    setup = TrialSetup(dense_checkpoint=result.checkpoint, data=cfg, finetune=finetune,
                       dense_val_accuracy=result.metrics["val_accuracy"], latency_repeats=3)
    reports: list[dict] = []
    final = evaluate_policy(policy.to_json(), setup, report=reports.append, seed=1)
    assert [r["final"] for r in reports] == [False, True] and reports[-1] is final
    # the same prune-and-evaluate, its model scored here by hand: the trial's accuracy is the
    # toy metric of the pruned, fine-tuned, calibrated model
    pruned = prune_and_evaluate(model_from_checkpoint(result.checkpoint), policy, data,
                                finetune, seed=1)
    share, mse = _by_hand(pruned.model.cpu(), data.val)
    assert final["accuracy"] == pytest.approx(share)
    assert final["val_loss"] == pytest.approx(mse, rel=1e-5)
    assert final["accuracy_drop"] == pytest.approx(result.metrics["val_accuracy"] - share)
    assert final["flops_ratio"] < 0.7 and final["latency_ms"] > 0


def test_a_two_input_model_is_pretrained_pruned_and_calibrated(tmp_path: Path) -> None:
    cfg = DataConfig(task=PAIR, batch_size=64)
    model_cfg = ModelConfig(name="tests.toy_task:pair_mlp")
    check_dense_inputs(model_cfg, cfg)
    result = pretrain_dense(model_cfg, cfg, TOY_TRAIN, progress=False, cache_dir=tmp_path)
    data = load_data(cfg)
    example = data.example_input(1)
    assert isinstance(example, tuple) and len(example) == 2
    assert result.metrics["val_accuracy"] == pytest.approx(_by_hand(result.model, data.val,
                                                                    pair=True)[0])
    space = PruningSpace(result.model, example)
    policy = space.decode(np.full(space.dim, 0.5))
    calibration = calibration_images(data, 64)
    assert isinstance(calibration, tuple) and [t.shape for t in calibration] == [
        torch.Size([64, 4]), torch.Size([64, 4])]
    calibrated = prune_and_evaluate(result.model, policy, data,
                                    FinetuneConfig(epochs=0, bn_calibration=64), seed=0)
    stale = prune_and_evaluate(result.model, policy, data,
                               FinetuneConfig(epochs=0, bn_calibration=0), seed=0)
    # calibration ran the two-input forward: the first branch's BN mean is the mean of its
    # pre-activations over the calibration batch
    a0 = calibrated.model.a[0]
    with torch.no_grad():
        expected = a0(calibration[0]).mean(0)
    assert torch.allclose(calibrated.model.a[1].running_mean, expected, atol=1e-5)
    assert not torch.allclose(stale.model.a[1].running_mean, expected, atol=1e-3)
    share, _ = _by_hand(calibrated.model.cpu(), data.val, pair=True)
    assert calibrated.scores["val"].accuracy == pytest.approx(share)
    assert calibrated.cost_metrics()["flops_ratio"] < 0.7
    # timing takes one input tensor so far: a trial says so in one line
    setup = TrialSetup(dense_checkpoint=result.checkpoint, data=cfg,
                       finetune=FinetuneConfig(epochs=0, threads=1), dense_val_accuracy=0.5)
    with pytest.raises(ConfigError, match="gives its model 2 inputs"):
        evaluate_policy(policy.to_json(), setup, seed=0)


def test_a_model_the_task_cannot_score_is_refused_before_training() -> None:
    with pytest.raises(ModelMismatchError) as err:
        check_dense_inputs(ModelConfig(name="tests.toy_task:toy_mlp",
                                       kwargs={"outputs": 3}), DataConfig(task=TOY))
    assert "(3,)" in str(err.value) and "not (2,)" in str(err.value)
    with pytest.raises(ModelMismatchError) as err:
        check_dense_inputs(ModelConfig(name="tests.toy_task:toy_mlp"), DataConfig(task=PAIR))
    assert "does not take" in str(err.value)


@pytest.mark.slow  # real Ray searches: `make test-slow` runs it
def test_a_search_on_the_toy_task_reports_its_metric(local_ray, tmp_path: Path) -> None:
    """A whole search (real Ray trials, real MLflow store) on the toy task: the config names
    it, nothing else changes; the dense baseline and every trial are scored by its metric."""
    from mlflow.tracking import MlflowClient

    from prunetune.orchestrator.config import load_config
    from prunetune.orchestrator.driver import run_search
    from prunetune.orchestrator.results import find_search, search_trials

    from .search_helpers import write_config

    cfg = load_config(write_config(
        tmp_path, "it-toy-task", model={"name": "tests.toy_task:toy_mlp"},
        data={"task": TOY}, pretrain={"epochs": 6, "lr": 0.05, "weight_decay": 0.0},
        space={"groups": 2}, search={"trials": 2}))
    summary = run_search(cfg, progress=False)
    assert summary.trials_finished == 2
    client = MlflowClient(cfg.tracking_uri())
    trials = search_trials(client, find_search(client, "prunetune", "it-toy-task"))
    data = load_data(cfg.data)
    dense = pretrain_dense(cfg.model, cfg.data, cfg.pretrain, progress=False)  # cached
    assert dense.cached
    dense_share = _by_hand(dense.model, data.val)[0]
    for t in trials:
        # accuracy is a share of the 256 val samples within tolerance, the drop from the dense
        # model's own share (never argmax accuracy on regression outputs)
        assert (t.metrics["accuracy"] * 256) == pytest.approx(round(t.metrics["accuracy"] * 256))
        assert t.metrics["accuracy_drop"] == pytest.approx(dense_share - t.metrics["accuracy"])


def test_refusals_name_what_the_task_calls_a_sample() -> None:
    from prunetune.trainers.tasks import DatasetShape, TaskBase

    shape = DatasetShape(1, (28, 28), 10)
    image = get_task("image-classification")
    wrong = torch.zeros(2, 7)
    assert image.check_output(wrong, shape, 2) == (
        "gives outputs of shape (7,) per image, the dataset has 10 classes")
    assert image.describe_input(shape) == "1x28x28 images"
    assert TaskBase().check_output(wrong, shape, 2) == (
        "gives outputs of shape (7,) per sample, the data has 10 classes")
    assert TaskBase().describe_input(shape) == "1x28x28 inputs"
    assert image.check_output(torch.zeros(2, 10), shape, 2) is None
