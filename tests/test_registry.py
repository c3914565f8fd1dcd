"""Promotion to the MLflow model registry, on a real `mlflow server` (sqlite backend) after a
real local search; selection parsing; and the errors that must register nothing."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from prunetune.orchestrator.cli_cluster import main
from prunetune.orchestrator.jobs import server_command, server_env, wait_for_http
from prunetune.orchestrator.registry import (
    NoMatchingTrialError,
    SelectionError,
    parse_select,
    select_trial,
)
from prunetune.orchestrator.results import TrialRecord

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "registry-test"
SEARCH = "reg-search"


# ---------------------------------------------------------------------------------------------
# Helpers shared with test_cluster_integration.py


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_mlflow_server(folder: Path) -> tuple[subprocess.Popen, str]:
    """Start a real `mlflow server` on 127.0.0.1 (sqlite backend, served artifacts) in its own
    process group, without waiting for it; returns the process and its URL."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = server_command(host="127.0.0.1", port=port, workdir=str(folder))
    with open(folder / "server.log", "w") as log:
        proc = subprocess.Popen(cmd, env=server_env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


def await_mlflow_server(proc: subprocess.Popen, url: str) -> None:
    try:
        wait_for_http(f"{url}/health", timeout_s=180, alive=lambda: proc.poll() is None)
    except Exception:
        stop_process_group(proc)
        raise


def stop_process_group(proc: subprocess.Popen) -> None:
    """Stop a process started with start_new_session=True and everything it started."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=20)
            return
        except subprocess.TimeoutExpired:
            continue


def digits_config(tmp: Path, name: str, cache_dir: Path, **sections: dict) -> dict:
    """examples/digits-smoke.yaml as a dict, with a private checkpoint cache and overrides."""
    cfg = yaml.safe_load((ROOT / "examples" / "digits-smoke.yaml").read_text())
    cfg.update(name=name, workdir=str(tmp / "work"), cache_dir=str(cache_dir))
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value)
    return cfg


# ---------------------------------------------------------------------------------------------
# Selection (no servers)


def _trial(tid: str, status: str = "finished", **metrics: float) -> TrialRecord:
    return TrialRecord(trial_id=tid, run_id=f"run-{tid}", name=f"trial-{tid}", status=status,
                       metrics=metrics, params={})


def test_parse_select_forms() -> None:
    s = parse_select("max accuracy where speedup >= 2")
    assert (s.mode, s.metric) == ("max", "accuracy")
    assert [(c.metric, c.op, c.value) for c in s.conditions] == [("speedup", ">=", 2.0)]
    s = parse_select("  MIN latency_ms WHERE accuracy>=0.9 and params_ratio < 5e-1  ")
    assert (s.mode, s.metric) == ("min", "latency_ms")
    assert [(c.metric, c.op, c.value) for c in s.conditions] == [
        ("accuracy", ">=", 0.9), ("params_ratio", "<", 0.5)]
    assert parse_select("max accuracy").conditions == ()
    assert str(parse_select("max accuracy where speedup >= 2")) == "max accuracy where speedup >= 2"


@pytest.mark.parametrize("expr", ["", "best accuracy", "max", "max accuracy where",
                                  "max accuracy where speedup >> 2",
                                  "max accuracy where speedup >= two",
                                  "max accuracy where speedup >= 2 or accuracy > 1"])
def test_parse_select_rejects(expr: str) -> None:
    with pytest.raises(SelectionError, match="max\\|min METRIC"):
        parse_select(expr)


def test_select_trial_picks_best_among_matching() -> None:
    trials = [_trial("a", accuracy=0.95, speedup=1.5, latency_ms=2.0),
              _trial("b", accuracy=0.90, speedup=2.5, latency_ms=1.0),
              _trial("c", accuracy=0.93, speedup=2.1, latency_ms=1.2),
              _trial("d", status="stopped", accuracy=0.99, speedup=3.0, latency_ms=0.5)]
    assert select_trial(trials, parse_select("max accuracy")).trial_id == "a"
    assert select_trial(trials, parse_select("max accuracy where speedup >= 2")).trial_id == "c"
    assert select_trial(trials, parse_select(
        "min latency_ms where accuracy >= 0.92")).trial_id == "c"
    assert select_trial(trials, parse_select(
        "max accuracy where speedup > 2 and latency_ms <= 1.0")).trial_id == "b"
    with pytest.raises(NoMatchingTrialError, match="speedup ranges 1.5..2.5"):
        select_trial(trials, parse_select("max accuracy where speedup >= 3"), search="s")
    with pytest.raises(SelectionError, match="known metrics: accuracy, latency_ms, speedup"):
        select_trial(trials, parse_select("max top5"))
    with pytest.raises(NoMatchingTrialError, match="no finished trial"):
        select_trial([trials[3]], parse_select("max accuracy"))


# ---------------------------------------------------------------------------------------------
# A real tracking server and a real search


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = launch_mlflow_server(tmp_path_factory.mktemp("mlflow-server"))
    await_mlflow_server(proc, url)
    yield url
    stop_process_group(proc)


@pytest.fixture(scope="module")
def searched(server: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    import ray

    from prunetune.orchestrator.config import PrunetuneConfig
    from prunetune.orchestrator.driver import run_search

    tmp = tmp_path_factory.mktemp("reg-search")
    # The session's private cache (conftest's PRUNETUNE_CACHE is function-scoped).
    raw = digits_config(tmp, SEARCH, tmp_path_factory.getbasetemp() / "cache",
                        search={"trials": 2, "max_concurrent": 2, "latency_repeats": 3},
                        finetune={"epochs": 0.25}, ray={"num_cpus": 2},
                        tracking={"uri": server, "experiment": EXPERIMENT})
    cfg = PrunetuneConfig.model_validate(raw)
    try:
        summary = run_search(cfg, progress=False)
    finally:
        ray.shutdown()
    assert summary.trials_finished == 2
    return {"cfg": cfg, "summary": summary}


def _no_versions(client: MlflowClient, name: str) -> bool:
    try:
        client.get_registered_model(name)
    except MlflowException:
        return True
    return not client.search_model_versions(f"name='{name}'")


def test_bad_input_registers_nothing(server: str, searched: dict,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    client = MlflowClient(server, registry_uri=server)
    base = ["--model-name", "never-registered", "--tracking-uri", server, "--experiment",
            EXPERIMENT, "--quiet"]
    capsys.readouterr()
    assert main(["promote", "no-such-search", *base]) == 2
    err = capsys.readouterr().err
    assert "no search named" in err and SEARCH in err  # names what exists

    assert main(["promote", SEARCH, *base, "--select", "max accuracy where speedup >= 1000"]) == 2
    err = capsys.readouterr().err
    assert "no finished trial" in err and "speedup ranges" in err and "--trial" in err

    assert main(["promote", SEARCH, *base, "--select", "max accuracy where"]) == 2
    assert "cannot read --select" in capsys.readouterr().err
    assert main(["promote", SEARCH, *base, "--trial", "nope_00042"]) == 2
    assert "is not a trial of search" in capsys.readouterr().err
    assert main(["promote", SEARCH, *base[:1], "bad/name", *base[2:]]) == 2
    assert "--model-name" in capsys.readouterr().err
    assert _no_versions(client, "never-registered")
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id],
                              "tags.`prunetune.role` = 'promote'")
    assert runs == []  # no promote run was even started

    # An unreachable cluster: a clear error, exit code 2, for submit and the job commands.
    cfg = Path(searched["cfg"].workdir) / "bad-submit.yaml"
    cfg.write_text(yaml.safe_dump(searched["cfg"].model_dump(mode="json")))
    dead = f"http://127.0.0.1:{free_port()}"
    assert main(["submit", str(cfg), "--address", dead]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the Ray Jobs API" in err and dead in err
    assert main(["status", "raysubmit_x", "--address", dead]) == 2
    assert "cannot reach" in capsys.readouterr().err
    # A bad config fails first, naming the field, before any cluster is contacted.
    assert main(["submit", str(cfg), "--address", dead, "--trials", "0"]) == 2
    assert "search.trials" in capsys.readouterr().err


_FRESH = textwrap.dedent("""
    import json, sys, torch, mlflow
    from prunetune.orchestrator.registry import load_promoted
    from prunetune.search_spaces import count_cost
    uri, inputs_path, out_path = sys.argv[1:4]
    x = torch.load(inputs_path, weights_only=True)
    model = load_promoted(uri)
    with torch.no_grad():
        y = model(x)
        y_pt2 = mlflow.pytorch.load_model(uri)(x)  # MLflow's own flavor (torch.export)
    cost = count_cost(model, x[:1])
    torch.save({"y": y, "y_pt2": y_pt2, "flops": cost.effective_flops,
                "params": cost.effective_params, "cls": type(model).__name__}, out_path)
""")


def _load_in_fresh_process(server: str, uri: str, x: torch.Tensor, tmp: Path) -> dict:
    torch.save(x, tmp / "inputs.pt")
    env = {**os.environ, "MLFLOW_TRACKING_URI": server}
    proc = subprocess.run([sys.executable, "-c", _FRESH, uri, str(tmp / "inputs.pt"),
                           str(tmp / "out.pt")], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(tmp / "out.pt", weights_only=True)


def test_promote_registers_versions_and_moves_the_alias(
        server: str, searched: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from prunetune.orchestrator.registry import promote
    from prunetune.orchestrator.results import find_search, search_trials
    from prunetune.search_spaces import Policy, apply_policy
    from prunetune.trainers import load_data, pretrain_dense
    from prunetune.trainers.prune import calibration_images, recalibrate_bn

    cfg = searched["cfg"]
    client = MlflowClient(server, registry_uri=server)
    trials = search_trials(client, find_search(client, EXPERIMENT, SEARCH))
    best = max(trials, key=lambda t: t.metrics["accuracy"])
    name = "digits-pruned"

    # Version 1 through the command line, without fine-tuning: the promoted model is exactly
    # the trial's policy applied to the dense checkpoint and calibrated, which this test
    # rebuilds itself.
    capsys.readouterr()
    assert main(["promote", SEARCH, "--model-name", name, "--tracking-uri", server,
                 "--experiment", EXPERIMENT, "--finetune-epochs", "0", "--quiet"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["version"], shown["alias"], shown["trial"], shown["trial_id"]) == (
        1, "champion", best.name, best.trial_id)
    mv1 = client.get_model_version_by_alias(name, "champion")
    assert mv1.version == "1"
    tags = mv1.tags
    assert tags["prunetune.search"] == SEARCH and tags["prunetune.trial_id"] == best.trial_id
    assert tags["prunetune.trial_run_id"] == best.run_id
    # The search links to its promotion: the promote run is nested under it, and its page
    # names the registered version; the trials stay the search's only trials.
    parent = find_search(client, EXPERIMENT, SEARCH)
    promote_run = client.get_run(shown["run_id"])
    assert promote_run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert promote_run.info.run_name == f"promote-{SEARCH}-{best.name}"
    assert parent.data.tags[f"prunetune.registered.{name}"] == "1"
    assert f"{name} version 1" in parent.data.tags["mlflow.note.content"]
    assert len(search_trials(client, parent)) == len(trials)
    policy_json = client.download_artifacts(best.run_id, "policy.json", str(tmp_path))
    policy = Policy.load(policy_json)
    assert Policy.from_json(tags["prunetune.policy"]).to_dict() == policy.to_dict()
    assert 0.0 <= float(tags["metric.test_accuracy"]) <= 1.0
    promote_run = client.get_run(tags["prunetune.promote_run_id"])
    assert promote_run.data.tags["prunetune.role"] == "promote"
    assert promote_run.data.metrics["test_accuracy"] == pytest.approx(
        float(tags["metric.test_accuracy"]), rel=1e-5)

    data = load_data(cfg.data)
    x = next(iter(data.loader("test", shuffle=False)))[0][:16]
    dense = pretrain_dense(cfg.model, cfg.data, cfg.pretrain, cache_dir=cfg.cache_dir,
                           progress=False)
    # Its BatchNorm statistics re-estimated on the search's calibration images, as its trial's.
    expected = recalibrate_bn(apply_policy(dense.model, policy, data.example_input(1)),
                              calibration_images(data, cfg.finetune.bn_calibration))
    with torch.no_grad():
        y_expected = expected(x)
    fresh = _load_in_fresh_process(server, f"models:/{name}@champion", x, tmp_path)
    assert torch.allclose(fresh["y"], y_expected, atol=1e-5)
    assert torch.allclose(fresh["y_pt2"], y_expected, atol=1e-4)
    assert math.isclose(fresh["flops"], best.metrics["flops"], rel_tol=1e-9)
    assert math.isclose(fresh["params"], best.metrics["params"], rel_tol=1e-9)

    # `prunetune load` prints the same cost, and the widths per layer the policy left.
    assert main(["load", f"models:/{name}/1", "--tracking-uri", server, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert math.isclose(summary["flops"], best.metrics["flops"], rel_tol=1e-9)
    assert summary["output_shape"] == [10] and summary["source"]["trial_id"] == best.trial_id
    widths = {r["layer"]: (r["dense_out"], r["out"]) for r in summary["layers"]}
    pruned_layer = next(n for n, u in policy.units.items() if u.ratio > 0.1)
    assert widths[pruned_layer][1] < widths[pruned_layer][0]
    assert main(["load", f"models:/{name}/1", "--tracking-uri", server]) == 0
    table = capsys.readouterr().out
    assert f"read from {server}" in table and pruned_layer in table and "dense_out" in table

    # Version 2 (another trial, fine-tuned as the search did) takes the alias; the trial is
    # named as `results` and the UI name it, and the version says that name.
    other = next(t for t in trials if t.trial_id != best.trial_id)
    result = promote(SEARCH, name, tracking_uri=server, experiment=EXPERIMENT,
                     trial=other.name, progress=False)
    assert (result.version, result.uri) == (2, f"models:/{name}@champion")
    assert (result.trial, result.trial_id) == (other.name, other.trial_id)
    description = client.get_model_version(name, "2").description
    assert f"trial {other.name} " in description and other.trial_id not in description
    assert client.get_model_version_by_alias(name, "champion").version == "2"
    assert client.get_model_version(name, "1").aliases == []
    assert client.get_model_version(name, "2").tags["prunetune.trial_id"] == other.trial_id
    with torch.no_grad():
        y2 = result.model(x)
    fresh2 = _load_in_fresh_process(server, f"models:/{name}@champion", x, tmp_path)
    assert torch.allclose(fresh2["y"], y2, atol=1e-5)
    assert math.isclose(fresh2["flops"], other.metrics["flops"], rel_tol=1e-9)
    assert math.isclose(fresh2["params"], other.metrics["params"], rel_tol=1e-9)
