import json
import subprocess
import sys
from pathlib import Path

import pytest

from prunetune.orchestrator.cli import main
from prunetune.orchestrator.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_commands() -> None:
    out = subprocess.run([sys.executable, "-m", "prunetune.orchestrator.cli", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "pretrain" in out


def test_examples_validate() -> None:
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        load_config(path)


def test_config_errors_name_field_value_and_rule(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  name: mnist-ish\npretrain:\n  lr: -1\n  epoch: 3\n"
                   "space: {ratio_bounds: [0.5, 0.2], schemes: [channel]}\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    msg = str(err.value)
    assert "data.name" in msg and "mnist-ish" in msg and "fashion-mnist" in msg
    assert "pretrain.lr" in msg and "greater than 0" in msg
    assert "pretrain.epoch: unknown field" in msg
    # A rule on one field names that field, not its section (nor dumps the section).
    assert "space.ratio_bounds:" in msg and "0 <= low <= high < 1" in msg
    assert "schemes" not in msg
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")


def test_pretrain_command_trains_then_hits_cache(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "digits.yaml"
    cfg.write_text("model: {name: resnet20}\ndata: {name: digits, train_subset: 128}\n"
                   "pretrain: {epochs: 0.5, lr: 0.05}\n")
    args = ["pretrain", str(cfg), "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert not first["cached"] and second["cached"]
    assert second["test_accuracy"] == first["test_accuracy"]


def test_cli_reports_bad_config_without_traceback(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model: {name: resnet21}\ndata: {name: digits}\n")
    assert main(["pretrain", str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'resnet21'" in err and "Traceback" not in err
