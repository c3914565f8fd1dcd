"""Deployable export (issue 28, point 4): `prunetune export` of a policy and of a search's
trial, and `prunetune promote` of an onnxruntime search registering its ONNX model beside the
PyTorch one; ONNX Runtime must reproduce the PyTorch outputs within 1e-4. Real ResNet-20 on
scikit-learn digits, real Ray, real MLflow sqlite store."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from prunetune.errors import LatencyBackendError
from prunetune.kernels.latency_backends import (
    LatencyBackendBase,
    export_onnx,
    get_backend,
    onnxruntime_session,
)
from prunetune.orchestrator.cli import main
from prunetune.orchestrator.config import load_config
from prunetune.orchestrator.deployable import check_round_trip, write_deployable
from prunetune.search_spaces import Policy, UnitPolicy
from prunetune.trainers.pruned_file import load_pruned, load_pruned_with_spec

from .search_helpers import write_config, write_engine_config

ATOL = 1e-4


def _fixed_input(shape: list[int], batch: int = 5) -> torch.Tensor:
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0))


def _onnx_vs_torch(onnx_path: Path, model: torch.nn.Module, x: torch.Tensor) -> float:
    session = onnxruntime_session(Path(onnx_path))
    assert [i.name for i in session.get_inputs()] == ["input"]
    got = session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = model.eval()(x).numpy()
    assert got.shape == want.shape
    return float(np.max(np.abs(got - want)))


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no error message"
    return err[-1]


# ---------------------------------------------------------------------------------------------
# A policy file with a config


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = write_engine_config(tmp_path_factory.mktemp("export-cli"),
                               "{schemes: [channel, unstructured], groups: 3}")
    path.write_text(path.read_text() + "latency: {backend: onnxruntime}\n")
    return path


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Channels removed and weights masked: both must survive the export.
    policy = Policy({"layer1.0.conv1": UnitPolicy("channel", 0.5),
                     "layer2.0.conv1": UnitPolicy("channel", 0.25),
                     "layer3.0.conv2": UnitPolicy("unstructured", 0.5)})
    return policy.save(tmp_path_factory.mktemp("export-policy") / "policy.json")


def test_export_of_a_policy_writes_onnx_that_matches_pytorch(
        config: Path, policy_file: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "deploy"
    assert main(["export", str(config), "--policy", str(policy_file), "--out", str(out),
                 "--finetune-epochs", "0.1", "--json", "--quiet"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert (manifest["latency_backend"], manifest["format"]) == ("onnxruntime", "onnx")
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.onnx", "policy.json",
                                                     "pruned.pt"]
    assert 0.0 <= manifest["onnx_max_abs_diff"] <= ATOL
    assert json.loads((out / "export.json").read_text()) == manifest
    assert manifest["files"] == {"onnx": "model.onnx", "pruned": "pruned.pt",
                                 "policy": "policy.json", "manifest": "export.json"}
    # The PyTorch file holds no objects: torch.load(weights_only=True) reads it, and
    # load_pruned rebuilds the pruned, fine-tuned model from it.
    saved = torch.load(out / "pruned.pt", weights_only=True)
    assert set(saved) == {"format", "spec", "state_dict"}
    model, spec = load_pruned_with_spec(out / "pruned.pt")
    assert Policy.load(out / "policy.json") == Policy.load(policy_file)
    assert Policy.from_dict(spec["policy"]) == Policy.load(policy_file)
    assert model.layer1[0].conv1.out_channels == 8  # 16 channels, half removed
    assert spec["input_shape"] == manifest["input_shape"] == [1, 8, 8]
    # ONNX Runtime loads the file and reproduces the PyTorch model on a fixed input, at the
    # batch it was exported with and at others (the batch axis is dynamic).
    for batch in (1, 5, 32):
        assert _onnx_vs_torch(out / "model.onnx", model, _fixed_input(spec["input_shape"],
                                                                       batch)) <= ATOL
    # The masked layer kept its mask through fine-tuning and the export.
    layer = dict(model.named_modules())["layer3.0.conv2"]
    assert torch.all(layer.weight[layer.weight_mask == 0] == 0)


def test_export_human_output_and_eager_backend(config: Path, policy_file: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eager"
    assert main(["export", str(config), "--policy", str(policy_file), "--out", str(out),
                 "--backend", "eager", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "latency backend eager, format pytorch" in text and str(out / "pruned.pt") in text
    # Eager deploys the PyTorch model itself: no ONNX file.
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "policy.json", "pruned.pt"]
    assert load_pruned(out / "pruned.pt").layer1[0].conv1.out_channels == 8


@pytest.mark.parametrize(("extra", "message"), [
    (["--backend", "eager", "--format", "onnx"], "has no deployment format"),
    (["--backend", "nope"], "latency backend must be one of"),
    (["--trial", "trial-001"], "give one or the other"),
    (["--finetune-epochs", "-1"], "--finetune-epochs must be >= 0"),
])
def test_export_refusals_are_one_line_exit_2(config: Path, policy_file: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str], extra: list[str],
                                             message: str) -> None:
    out = tmp_path / "refused"
    assert main(["export", str(config), "--policy", str(policy_file), "--out", str(out),
                 "--quiet", *extra]) == 2
    line = _error_line(capsys)
    assert line.startswith("prunetune export: error:") and message in line
    assert not out.exists() or not any(out.iterdir())


def test_export_bad_policy_is_one_line_exit_2(config: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": 1, "units": {"nope": {"scheme": "channel",
                                                               "ratio": 0.2}}}))
    assert main(["export", str(config), "--policy", str(bad), "--out", str(tmp_path / "o"),
                 "--quiet"]) == 2
    assert "unknown unit 'nope'" in _error_line(capsys)
    assert main(["export", str(config), "--policy", str(tmp_path / "missing.json"), "--out",
                 str(tmp_path / "o"), "--quiet"]) == 2
    assert "does not exist" in _error_line(capsys)
    assert not (tmp_path / "o").exists()


class _WrongWeightsBackend(LatencyBackendBase):
    """A user's backend whose export does not reproduce the model (its weights halved)."""

    name = "wrong-weights"
    export_format = "onnx"

    def export(self, model, example_input, path):  # type: ignore[no-untyped-def]
        import copy

        bad = copy.deepcopy(model)
        with torch.no_grad():
            for p in bad.parameters():
                p.mul_(0.5)
        return export_onnx(bad, example_input, path)


def test_an_export_that_does_not_round_trip_is_refused_and_not_written(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 3)).eval()
    x = _fixed_input([1, 8, 8], 4)
    with pytest.raises(LatencyBackendError, match="does not reproduce its PyTorch outputs"):
        write_deployable(model, x, _WrongWeightsBackend(), tmp_path / "out")
    assert not any((tmp_path / "out").iterdir())  # no file, no temporary left behind
    good = write_deployable(model, x, get_backend("onnxruntime"), tmp_path / "out")
    assert good.path == tmp_path / "out" / "model.onnx" and good.max_abs_diff <= ATOL
    assert check_round_trip(model, good.path, x) <= ATOL


# ---------------------------------------------------------------------------------------------
# A search timed with ONNX Runtime: promote and export of its trials


@pytest.fixture(scope="module")
def ort_search(local_ray, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from prunetune.orchestrator.driver import run_search

    tmp = tmp_path_factory.mktemp("ort-search")
    path = write_config(tmp, "ort-export", latency={"backend": "onnxruntime"},
                        search={"trials": 3, "max_concurrent": 2},
                        finetune={"epochs": 0.3})
    cfg = load_config(path)
    summary = run_search(cfg, progress=False)
    assert summary.trials_finished == 3
    return {"cfg": cfg, "uri": cfg.tracking_uri(), "tmp": tmp}


@pytest.mark.slow  # a search (about 30 s) and a promote with fine-tuning (30 s or more)
def test_promote_of_an_onnxruntime_search_registers_its_onnx_model(
        ort_search: dict, tmp_path: Path) -> None:
    from prunetune.orchestrator.registry import _mlflow_uri, load_promoted, promote
    from prunetune.orchestrator.results import find_search, search_trials

    uri = ort_search["uri"]
    client = MlflowClient(uri, registry_uri=uri)
    trials = search_trials(client, find_search(client, "prunetune", "ort-export"))
    # The trials were timed in ONNX Runtime, and say so.
    assert {t.params.get("latency_backend") for t in trials} == {"onnxruntime"}
    result = promote("ort-export", "ort-model", tracking_uri=uri, progress=False)
    chosen = next(t for t in trials if t.trial_id == result.trial_id)
    assert result.latency_backend == "onnxruntime" and result.onnx_uri
    tags = client.get_model_version("ort-model", str(result.version)).tags
    assert tags["prunetune.latency_backend"] == "onnxruntime"
    assert tags["prunetune.deploy_format"] == "onnx"
    assert float(tags["prunetune.latency_ms"]) == pytest.approx(
        chosen.metrics["latency_ms"], rel=1e-5)
    assert float(tags["prunetune.speedup"]) == pytest.approx(chosen.metrics["speedup"], rel=1e-5)
    assert tags["prunetune.latency_clock"].startswith("onnxruntime")
    assert tags["prunetune.onnx_model_uri"] == result.onnx_uri
    assert float(tags["prunetune.onnx_max_abs_diff"]) <= ATOL
    promote_run = client.get_run(tags["prunetune.promote_run_id"])
    assert promote_run.data.params["latency_backend"] == "onnxruntime"
    # Both models are logged in the one promote run: PyTorch (registered) and ONNX beside it.
    assert sorted(m.name for m in client.search_logged_models(
        experiment_ids=[promote_run.info.experiment_id],
        filter_string=f"source_run_id = '{promote_run.info.run_id}'")) == ["model", "onnx"]
    # The ONNX model, downloaded from the registry's pointer, loads in ONNX Runtime and gives
    # the registered PyTorch model's outputs.
    with _mlflow_uri(uri):
        local = Path(mlflow.artifacts.download_artifacts(tags["prunetune.onnx_model_uri"],
                                                         dst_path=str(tmp_path)))
    model = load_promoted("models:/ort-model@champion", tracking_uri=uri)
    assert (local / "model.onnx").is_file()
    x = _fixed_input([1, 8, 8], 8)
    assert _onnx_vs_torch(local / "model.onnx", model, x) <= ATOL
    with torch.no_grad():
        assert torch.allclose(model(x), result.model(x), atol=1e-6)


def test_export_of_a_search_trial(ort_search: dict, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    from prunetune.orchestrator.results import find_search, search_trials

    uri = ort_search["uri"]
    client = MlflowClient(uri)
    trials = search_trials(client, find_search(client, "prunetune", "ort-export"))
    trial = sorted(trials, key=lambda t: t.name)[0]
    out = tmp_path / "trial"
    capsys.readouterr()
    assert main(["export", "ort-export", "--trial", trial.name, "--out", str(out),
                 "--tracking-uri", uri, "--finetune-epochs", "0", "--json", "--quiet"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["source"]["trial"] == trial.name and manifest["format"] == "onnx"
    assert manifest["trial_metrics"]["latency_ms"] == pytest.approx(trial.metrics["latency_ms"])
    model = load_pruned(out / "pruned.pt")
    assert _onnx_vs_torch(out / "model.onnx", model, _fixed_input([1, 8, 8])) <= ATOL
    # Unknown trial / search: one line, exit 2, nothing written.
    for argv, message in ((["ort-export", "--trial", "trial-999"], "is not a trial of search"),
                          (["no-such-search"], "no-such-search")):
        assert main(["export", *argv, "--out", str(tmp_path / "none"), "--tracking-uri", uri,
                     "--quiet"]) == 2
        assert message in _error_line(capsys)
    assert not (tmp_path / "none").exists()


def test_promote_of_an_eager_search_logs_no_onnx_but_names_the_backend(
        ort_search: dict, tmp_path: Path) -> None:
    from prunetune.orchestrator.driver import run_search
    from prunetune.orchestrator.registry import promote

    # The same dense model (its pretraining cached by the search above), one trial, eager.
    cfg = load_config(write_config(tmp_path, "eager-export",
                                   search={"trials": 1, "max_concurrent": 1},
                                   finetune={"epochs": 0}))
    assert cfg.latency.backend == "eager"
    assert run_search(cfg, progress=False).trials_finished == 1
    uri = cfg.tracking_uri()
    result = promote("eager-export", "eager-model", tracking_uri=uri, progress=False)
    assert (result.latency_backend, result.onnx_uri) == ("eager", None)
    client = MlflowClient(uri, registry_uri=uri)
    tags = client.get_model_version("eager-model", str(result.version)).tags
    assert tags["prunetune.latency_backend"] == "eager"
    assert tags["prunetune.deploy_format"] == "pytorch"
    assert float(tags["prunetune.speedup"]) > 0
    assert not any(k.startswith("prunetune.onnx") for k in tags)
    run = tags["prunetune.promote_run_id"]
    assert [m.name for m in client.search_logged_models(
        experiment_ids=[client.get_run(run).info.experiment_id],
        filter_string=f"source_run_id = '{run}'")] == ["model"]
