"""What a new user meets on the way, made plain: bad names fail before any training, the
commands say which store they read and never create an empty one, a busy port is an error,
and a search says how it uses the schemes it was given."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from prunetune.errors import SearcherError
from prunetune.orchestrator.cli import main
from prunetune.orchestrator.config import PrunetuneConfig
from prunetune.orchestrator.driver import _schemes_line, run_search
from prunetune.search_spaces import PruningSpace
from prunetune.trainers import build_model


def _config(tmp_path: Path, **search: object) -> PrunetuneConfig:
    return PrunetuneConfig.model_validate({
        "name": "surprise", "workdir": str(tmp_path / "work"),
        "cache_dir": str(tmp_path / "cache"), "model": {"name": "resnet20"},
        "data": {"name": "digits"}, "search": search})


def test_a_bad_searcher_or_option_fails_before_any_training(tmp_path: Path) -> None:
    for search, match in (({"searcher": "uniform"}, "unknown searcher 'uniform'"),
                          ({"searcher": "bo", "searcher_options": {"n_inti": 3}},
                           r"\['n_inti'\] not options of searcher 'bo'")):
        t0 = time.monotonic()
        with pytest.raises(SearcherError, match=match):
            run_search(_config(tmp_path, **search), progress=False)
        assert time.monotonic() - t0 < 30
        assert not (tmp_path / "cache").exists()  # nothing was pretrained


def test_a_search_refuses_a_silent_tracking_server_before_any_work(tmp_path: Path,
                                                                     capsys) -> None:
    cfg = _config(tmp_path).model_copy(
        update={"tracking": {"uri": "http://127.0.0.1:9", "experiment": "prunetune"}})
    path = tmp_path / "dead.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    t0 = time.monotonic()
    assert main(["search", str(path)]) == 2
    assert time.monotonic() - t0 < 30
    err = capsys.readouterr().err
    assert "tracking server at http://127.0.0.1:9 does not answer" in err
    assert "prunetune server" in err
    # nothing was trained, no Tune state left to block the same command later
    assert not (tmp_path / "cache").exists() and not (tmp_path / "work").exists()


def test_commands_name_the_store_and_never_create_one(tmp_path: Path, monkeypatch,
                                                      capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["results", "some-search"]) == 2
    err = capsys.readouterr().err
    assert f"no MLflow store at {tmp_path / 'runs' / 'mlflow.db'}" in err and "--workdir" in err
    assert not (tmp_path / "runs").exists()
    t0 = time.monotonic()
    assert main(["results", "x", "--tracking-uri", "http://127.0.0.1:9"]) == 2
    assert time.monotonic() - t0 < 15
    assert "tracking server at http://127.0.0.1:9 does not answer" in capsys.readouterr().err
    assert main(["load", "models:/m@champion", "--tracking-uri", "http://127.0.0.1:9"]) == 2


def test_ui_on_a_busy_port_exits_with_an_error(tmp_path: Path, capsys) -> None:
    store = tmp_path / "runs"
    store.mkdir()
    MlflowClient(f"sqlite:///{store / 'mlflow.db'}").search_experiments()  # an existing store
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["ui", "--workdir", str(store), "--port", str(port)]) == 2
    assert f"port {port} on 127.0.0.1 is in use" in capsys.readouterr().err


def test_the_search_says_how_it_uses_the_schemes() -> None:
    model = build_model("resnet20", num_classes=10, in_channels=1)
    x = torch.zeros(1, 1, 8, 8)
    mapped = PruningSpace(model, x, schemes=("channel", "block"), n_groups=2)
    line = _schemes_line(mapped)
    assert "one per unit, by the rule-based gpu mapping" in line
    assert "scheme_search: true searches them per group" in line
    searched = PruningSpace(model, x, schemes=("channel", "block"), n_groups=2,
                            scheme_search=True)
    assert "searched per group" in _schemes_line(searched)
