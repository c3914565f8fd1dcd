"""Latency backends (kernels/latency_backends): the protocol as the seam, ONNX Runtime timing
searches on real Ray and MLflow, and backends that cannot run here refused in seconds."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from prunetune.errors import ConfigError, LatencyBackendError
from prunetune.kernels import (
    LatencyPredictor,
    LatencyTable,
    get_backend,
    measured_models_ms,
)
from prunetune.kernels.latency_backends import onnx_bytes, onnx_runtime, onnxruntime_session
from prunetune.orchestrator.cli_engine import add_engine_commands
from prunetune.orchestrator.config import load_config
from prunetune.orchestrator.driver import run_search
from prunetune.orchestrator.results import TAG_LATENCY_CLOCK, find_search, search_trials
from prunetune.orchestrator.spaces import round_to
from prunetune.search_spaces import Policy, UnitPolicy, apply_policy
from prunetune.trainers import build_model

from . import toy_latency_backend
from .search_helpers import write_config, write_engine_config

TOY = "tests.toy_latency_backend:ChannelsLastBackend"


def _resnet20() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return build_model("resnet20", num_classes=10, in_channels=1).eval(), torch.randn(1, 1, 8, 8)


def test_a_backend_in_one_module_times_models_and_names_the_table_entries() -> None:
    """The toy backend (tests/toy_latency_backend.py) is found by its config name and runs every
    measurement of whole models and of the latency table; nothing else was edited for it."""
    model, x = _resnet20()
    backend = get_backend(TOY)
    before = toy_latency_backend.ChannelsLastBackend.prepared
    dense_ms, = measured_models_ms([model], x, backend=TOY, repeats=3)
    assert dense_ms > 0 and toy_latency_backend.ChannelsLastBackend.prepared == before + 1
    table = LatencyTable()
    predictor = LatencyPredictor(model, x, table, backend=backend, repeats=3)
    assert predictor.device_name.startswith("channels-last: ")
    assert predictor.predict(model).total_ms > 0
    assert {k.device for k in table} == {predictor.device_name}  # its own clock, never mixed
    assert toy_latency_backend.ChannelsLastBackend.prepared > before + 10  # layers + skeletons


def test_apply_times_with_the_backend_it_is_given(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    config = write_engine_config(tmp_path, "{schemes: [channel], groups: 3}")
    policy = Policy({"layer1.0.conv1": UnitPolicy("channel", 0.5)}).save(tmp_path / "p.json")
    parser = argparse.ArgumentParser()
    add_engine_commands(parser.add_subparsers(dest="command", required=True))
    for backend, clock in ((TOY, "channels-last: "), ("onnxruntime", "onnxruntime ")):
        args = parser.parse_args(["apply", str(config), "--policy", str(policy), "--json",
                                  "--quiet", "--latency-repeats", "3", "--backend", backend])
        assert args.func(args) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["latency_backend"] == backend
        assert result["latency_device"].startswith(clock) and result["latency_ms"] > 0


def test_onnxruntime_shares_one_session_between_models_of_the_same_widths() -> None:
    model, x = _resnet20()
    policy = Policy({"layer1.0.conv1": UnitPolicy("channel", 0.5)})
    first = apply_policy(model, policy, x).eval()
    torch.manual_seed(1)
    other_weights, _ = _resnet20()
    for p in other_weights.parameters():
        p.data.normal_()
    second = apply_policy(other_weights, policy, x).eval()
    backend = get_backend("onnxruntime")
    run_first = backend.runner(first, (x,), torch.device("cpu"), 1)
    sessions = len(onnx_runtime._SESSIONS)
    run_second = backend.runner(second, (x,), torch.device("cpu"), 1)
    assert len(onnx_runtime._SESSIONS) == sessions  # not exported again: same architecture
    assert run_first.session is run_second.session
    narrower = apply_policy(model, Policy({"layer1.0.conv1": UnitPolicy("channel", 0.75)}), x)
    assert backend.runner(narrower.eval(), (x,), torch.device("cpu"), 1).session \
        is not run_first.session
    # An export of the model itself (not the timing cache's) computes what PyTorch computes.
    session = onnxruntime_session(onnx_bytes(first, (x,)))
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(session.run(None, {"input": x.numpy()})[0]),
                              first(x), atol=1e-4)


def test_the_threads_latency_names_are_the_ones_models_are_timed_with() -> None:
    """`latency.threads` reaches the runtime (ONNX Runtime's intra-op threads) and the clock
    name every table key and trial metric carries."""
    from prunetune.trainers.trial import latency_clock

    model, x = _resnet20()
    runner = get_backend("onnxruntime").runner(model, (x,), torch.device("cpu"), 2)
    assert runner.session.get_session_options().intra_op_num_threads == 2
    assert "(2 threads, wall clock)" in latency_clock("onnxruntime", "cpu", 2)
    assert "(1 threads, thread clock)" in latency_clock("onnxruntime", "cpu")
    ms = measured_models_ms([model], x, backend="onnxruntime", repeats=2, threads=2)
    assert ms[0] > 0
    assert load_config(None, {"latency.threads": 2}).latency.threads == 2
    with pytest.raises(ConfigError, match="latency.threads"):
        load_config(None, {"latency.threads": 0})


def test_round_to_auto_follows_the_backend(tmp_path: Path) -> None:
    eager = load_config(None, {"latency.backend": "eager"})
    ort = load_config(None, {"latency.backend": "onnxruntime"})
    assert round_to(eager) is None
    assert round_to(ort) in (8, 16)
    assert round_to(load_config(None, {"latency.backend": "onnxruntime",
                                       "space.round_to": 4})) == 4


def test_a_backend_that_cannot_run_here_is_refused_in_seconds(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("the refusal is for machines without CUDA")
    path = write_config(tmp_path, "no-trt", latency={"backend": "tensorrt"})
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "prunetune.orchestrator.cli", "search",
                           str(path)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert time.monotonic() - start < 30
    assert "latency.backend" in done.stderr and "CUDA" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "work" / "mlflow.db").exists()  # refused before anything was made
    with pytest.raises(ConfigError, match="latency.backend"):
        load_config(None, {"latency.backend": "no-such-backend"})
    with pytest.raises(LatencyBackendError, match="cannot be imported"):
        get_backend("no_such_module:Backend")


def test_a_search_timed_by_onnxruntime_tracks_its_latencies(local_ray, tmp_path: Path) -> None:
    path = write_config(tmp_path, "it-ort", latency={"backend": "onnxruntime"},
                        search={"trials": 3}, finetune={"epochs": 0})
    cfg = load_config(path)
    summary = run_search(cfg, progress=False)
    assert summary.trials_finished == 3
    client = MlflowClient(cfg.tracking_uri())
    parent = find_search(client, "prunetune", "it-ort")
    assert parent.data.params["latency.backend"] == "onnxruntime"
    trials = search_trials(client, parent)
    assert len(trials) == 3
    dense = build_model("resnet20", num_classes=10, in_channels=1)
    for t in trials:
        assert t.params["latency_backend"] == "onnxruntime"
        assert t.tags[TAG_LATENCY_CLOCK].startswith("onnxruntime ")
        assert t.metrics["speedup"] == pytest.approx(t.metrics["dense_latency_ms"]
                                                     / t.metrics["latency_ms"])
    # The numbers are ONNX Runtime's: the best trial's model, timed here by ONNX Runtime,
    # takes about what its run says (eager PyTorch takes several times longer on it).
    best = min(trials, key=lambda t: t.metrics["latency_ms"])
    policy = Policy.from_json(Path(client.download_artifacts(
        best.run_id, "policy.json", str(tmp_path / "dl"))).read_text())
    pruned = apply_policy(dense, policy, torch.zeros(1, 1, 8, 8)).eval()
    ort_ms, = measured_models_ms([pruned], torch.zeros(1, 1, 8, 8), backend="onnxruntime",
                                 repeats=8)
    assert 0.5 < ort_ms / best.metrics["measured_latency_ms"] < 2.0
    # Widths the backend runs fast: rounded to its channel multiple.
    multiple = round_to(cfg)
    assert all(m.out_channels % multiple == 0 for m in pruned.modules()
               if isinstance(m, torch.nn.Conv2d))
