"""A search's first stage scores a model without BatchNorm after a short fine-tune, unless the
config says otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

from prunetune.orchestrator.config import load_config
from prunetune.orchestrator.fidelity import (
    NO_BATCHNORM_FINALIST_FACTOR,
    NO_BATCHNORM_PROXY_STEPS,
    first_stage_fidelity,
)

from .search_helpers import write_config

LAYERNORM_MODEL = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.LayerNorm(32), nn.GELU(),
                                nn.Linear(32, 10))
BATCHNORM_MODEL = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU())


def _cfg(tmp_path: Path, search: dict | None = None, **finetune: float):  # noqa: ANN202
    """The smoke config (a PrunetuneConfig) with `search` merged in and `finetune` as given;
    without `finetune`, a default section: its epochs left unset."""
    cfg = load_config(write_config(tmp_path, "fid", search=search or {}, finetune=finetune))
    return cfg if finetune else cfg.model_copy(update={"finetune": type(cfg.finetune)()})


@pytest.mark.parametrize("steps_per_epoch", [94, 400, 7])
def test_a_model_without_batchnorm_fine_tunes_a_few_steps_at_most_an_epoch(
        tmp_path: Path, steps_per_epoch: int) -> None:
    cfg = _cfg(tmp_path)
    assert "epochs" not in cfg.finetune.model_fields_set and cfg.finetune.epochs == 0
    chosen, line = first_stage_fidelity(cfg, LAYERNORM_MODEL, steps_per_epoch)
    steps = min(NO_BATCHNORM_PROXY_STEPS, steps_per_epoch)
    assert chosen.finetune.epochs == pytest.approx(steps / steps_per_epoch)
    assert chosen.finetune.epochs <= 1.0
    assert f"fine-tune {steps} steps" in line and "set finetune.epochs" in line
    # everything else as it was; the caller's config untouched
    assert chosen.finetune.lr == cfg.finetune.lr and chosen.search == cfg.search
    assert cfg.finetune.epochs == 0


def test_its_finalists_fine_tune_longer_than_its_first_stage_unless_set(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, search={"finalists": {"count": 4}})
    assert "epochs" not in cfg.search.finalists.model_fields_set
    chosen, line = first_stage_fidelity(cfg, LAYERNORM_MODEL, 94)
    # one epoch of 94 steps first; the finalists 3x that, not the same epoch again
    assert chosen.finetune.epochs == 1.0
    assert chosen.search.finalists.epochs == NO_BATCHNORM_FINALIST_FACTOR * 1.0
    assert chosen.search.finalists.count == 4 and "the finalists 3 epochs" in line
    assert cfg.search.finalists.epochs == 1.0  # the caller's config untouched
    given = _cfg(tmp_path, search={"finalists": {"count": 4, "epochs": 2}})
    assert first_stage_fidelity(given, LAYERNORM_MODEL, 94)[0].search.finalists.epochs == 2


def test_batchnorm_models_and_a_set_epochs_keep_the_config(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    assert first_stage_fidelity(cfg, BATCHNORM_MODEL, 94) == (cfg, None)
    for epochs in (0.0, 0.5):  # the user's choice, 0 included
        given = _cfg(tmp_path, epochs=epochs)
        assert first_stage_fidelity(given, LAYERNORM_MODEL, 94) == (given, None)


@pytest.mark.slow  # a real Ray search: `make test-slow` runs it
def test_a_search_of_a_model_without_batchnorm_fine_tunes_its_first_stage(
        local_ray, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml
    from mlflow.tracking import MlflowClient

    from prunetune.orchestrator.driver import run_search
    from prunetune.orchestrator.results import find_search, search_trials

    path = write_config(tmp_path, "fid-ln", model={"name": "tests.fixtures_models:"
                                                           "tiny_layernorm_cnn"},
                        search={"trials": 2})
    raw = yaml.safe_load(path.read_text())
    del raw["finetune"]["epochs"]  # left to the search
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    summary = run_search(cfg, progress=True)
    assert summary.trials_finished == 2
    out = capsys.readouterr().out
    assert "the model has no BatchNorm to re-estimate: first-stage trials fine-tune" in out
    client = MlflowClient(cfg.tracking_uri())
    trials = search_trials(client, find_search(client, "prunetune", "fid-ln"))
    # digits: 1437 training images at batch 64 (the smoke's), 23 batches: one epoch of them
    assert {t.params["finetune_epochs"] for t in trials} == {"1"}, out
