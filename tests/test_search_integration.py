"""End-to-end searches on a real local Ray runtime with a real MLflow sqlite store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from prunetune.orchestrator.cli import main
from prunetune.orchestrator.config import load_config
from prunetune.orchestrator.driver import SearchError, run_search
from prunetune.orchestrator.results import find_search, search_trials
from prunetune.search_spaces import Policy

from .search_helpers import children, final_reports, write_config

FINAL_METRICS = ("accuracy", "accuracy_drop", "flops", "params", "sparsity", "latency_ms",
                 "speedup")


def test_search_tracks_every_trial_in_mlflow(local_ray, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    cfg = load_config(write_config(tmp_path, "it-basic"))
    summary = run_search(cfg, progress=False)
    assert summary.trials_finished == 6
    finals = final_reports(summary.storage_dir)
    assert len(finals) == 6 and set(finals.values()) == {1}  # each trial ran once

    client = MlflowClient(cfg.tracking_uri())
    parent = find_search(client, "prunetune", "it-basic")
    assert parent.info.run_id == summary.parent_run_id and parent.info.status == "FINISHED"
    exp = client.get_experiment_by_name("prunetune")
    parents = client.search_runs([exp.experiment_id], "tags.`prunetune.role` = 'search'")
    assert len(parents) == 1
    trials = search_trials(client, parent)
    assert len(trials) == 6 and len({t.trial_id for t in trials}) == 6
    for t in trials:
        assert t.status == "finished"
        assert all(k in t.metrics for k in FINAL_METRICS), sorted(t.metrics)
        assert t.metrics["flops_ratio"] <= 0.6 + 0.01  # the budget holds
        assert t.tags.get("node")
        assert any(k.startswith("policy.") for k in t.params)
        assert {"policy.json", "policy.png"} <= {a.path for a in client.list_artifacts(t.run_id)}
        # One param per unit: its ratio and scheme, as in policy.json.
        policy = Policy.from_json(Path(client.download_artifacts(
            t.run_id, "policy.json", str(tmp_path / "dl" / t.trial_id))).read_text())
        assert {k: v for k, v in t.params.items() if k.startswith("ratio.")} == {
            f"ratio.{n}": f"{u.ratio:.4f}" for n, u in policy.units.items()}
        assert {t.params[f"scheme.{n}"] for n in policy.units} == {"channel"}
        png = Path(client.download_artifacts(t.run_id, "policy.png",
                                             str(tmp_path / "dl" / t.trial_id)))
        with Image.open(png) as img:  # a real picture, one bar per unit
            assert img.format == "PNG" and img.size[0] >= 600
    # People read trial-001 .. trial-006, in the order Tune started them.
    assert sorted(t.name for t in trials) == [f"trial-{i:03d}" for i in range(1, 7)]
    # The experiment opens in MLflow's model-training view, on the key metrics.
    exp_tags = client.get_experiment_by_name("prunetune").tags
    assert exp_tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(exp_tags["mlflow.sharedViewState.prunetune"])
    assert "metrics.`accuracy`" in view["selectedColumns"]
    # One dense reference latency: latency and speedup agree across trials.
    (dense_ms,) = {t.metrics["dense_latency_ms"] for t in trials}
    for t in trials:
        assert t.metrics["latency_ms"] * t.metrics["speedup"] == pytest.approx(dense_ms)
        assert t.metrics["measured_latency_ms"] > 0
    # Each trial fine-tunes with its own seed, derived from the config's `seed` (0 here).
    derived = {int(np.random.SeedSequence([cfg.seed, i]).generate_state(1)[0]) for i in range(6)}
    assert {int(t.params["seed"]) for t in trials} == derived
    assert summary.best["seed"] in derived
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"results.csv", "pareto.png", "best_policy.json", "best_policy.png", "config.json",
            "space.json"} <= artifacts
    best = max(t.metrics["accuracy"] for t in trials)
    assert parent.data.metrics["best_accuracy"] == pytest.approx(best)

    # The results command agrees with MLflow.
    args = ["results", "it-basic", "--tracking-uri", cfg.tracking_uri(), "--json"]
    capsys.readouterr()
    assert main(args) == 0
    shown = json.loads(capsys.readouterr().out)
    assert sorted(r["accuracy"] for r in shown["trials"]) == sorted(
        t.metrics["accuracy"] for t in trials)
    assert shown["pareto"] and max(r["accuracy"] for r in shown["pareto"]) == pytest.approx(best)
    assert main(args[:-1]) == 0
    table = capsys.readouterr().out
    assert "Pareto front" in table and f"{best:.4g}" in table
    assert main(["results", "no-such-search", "--tracking-uri", cfg.tracking_uri()]) == 2


def test_bn_calibration_makes_unfinetuned_trials_a_usable_proxy(local_ray,
                                                                tmp_path: Path) -> None:
    """With finetune.epochs 0, a trial's accuracy is the proxy searches learn from: with
    BatchNorm re-estimated (the default) it must be well above chance, and above the same
    policies scored with the dense model's statistics."""
    scores = {}
    for calib in (512, 0):
        name = f"it-proxy-{calib}"
        cfg = load_config(write_config(
            tmp_path, name, finetune={"epochs": 0, "bn_calibration": calib},
            space={"budget": {"kind": "flops", "keep": 0.5}},
            search={"trials": 4, "searcher": "same_ratio", "max_concurrent": 1}))
        run_search(cfg, progress=False)
        client = MlflowClient(cfg.tracking_uri())
        trials = search_trials(client, find_search(client, "prunetune", name))
        scores[calib] = {t.name: ({k: v for k, v in t.params.items() if k.startswith("ratio.")},
                                  t.metrics["accuracy"]) for t in trials}
    # The same seed proposes the same policies, trial for trial.
    assert scores[512].keys() == scores[0].keys() and len(scores[0]) == 4
    assert all(scores[512][n][0] == scores[0][n][0] for n in scores[0])
    calibrated = np.array([scores[512][n][1] for n in sorted(scores[0])])
    stale = np.array([scores[0][n][1] for n in sorted(scores[0])])
    # Measured: 0.507 for three of the four same-ratio policies (0.125 for the one that prunes
    # every unit near its bound) against 0.08-0.15 stale, where one class is predicted.
    assert np.median(calibrated) > 0.3  # chance is 0.1 on digits' 10 classes
    assert calibrated.mean() > stale.mean() + 0.1


def test_asha_stopped_trials_are_not_final(local_ray, tmp_path: Path) -> None:
    cfg = load_config(write_config(
        tmp_path, "it-asha", finetune={"epochs": 3},
        search={"trials": 8, "scheduler": {"kind": "asha", "grace_period": 1,
                                           "reduction_factor": 3}}))
    summary = run_search(cfg, progress=False)
    client = MlflowClient(cfg.tracking_uri())
    trials = search_trials(client, find_search(client, "prunetune", "it-asha"))
    stopped = {t.trial_id for t in trials if t.status == "stopped"}
    finished = {t.trial_id for t in trials if t.status == "finished"}
    assert stopped and finished and len(stopped | finished) == 8
    for t in trials:
        assert client.get_run(t.run_id).info.status == ("KILLED" if t.trial_id in stopped
                                                        else "FINISHED")
    assert summary.trials_finished == len(finished)
    # The searcher's saved state: stopped trials are recorded as such, never with a value.
    state_file = next(summary.storage_dir.glob("searcher-state-*.pkl"))
    state = json.loads(state_file.read_text())
    obs = {o["trial_id"]: o for o in state["observations"]}
    assert {t for t, o in obs.items() if o["status"] == "stopped"} == stopped
    assert all(obs[t]["value"] is None for t in stopped)
    assert {t for t, o in obs.items() if o["status"] == "final"} == finished


def test_rl_search_warm_starts_from_an_earlier_search_by_name(local_ray,
                                                               tmp_path: Path) -> None:
    source = load_config(write_config(
        tmp_path, "it-rl-source", finetune={"epochs": 0},
        search={"searcher": "rl", "trials": 4, "searcher_options": {"warmup": 1}}))
    run_search(source, progress=False)
    client = MlflowClient(source.tracking_uri())
    parent = find_search(client, "prunetune", "it-rl-source")
    saved = json.loads(Path(client.download_artifacts(
        parent.info.run_id, "searcher/state.json", str(tmp_path / "dl"))).read_text())
    assert saved["searcher"] == "RLSearcher"
    assert len(saved["algorithm"]["history"]) == 4  # every episode learned from

    target = load_config(write_config(
        tmp_path, "it-rl-target", finetune={"epochs": 0},
        search={"searcher": "rl", "trials": 2,
                "searcher_options": {"warm_start": "it-rl-source"}}))
    summary = run_search(target, progress=False)
    assert summary.trials_finished == 2
    state = json.loads(next(summary.storage_dir.glob("searcher-state-*")).read_text())
    assert state["algorithm"]["warm_started"]
    assert len(state["algorithm"]["source_history"]) == 4

    bad = load_config(write_config(
        tmp_path, "it-rl-bad", search={"searcher": "rl", "trials": 1,
                                       "searcher_options": {"warm_start": "no-such-search"}}))
    with pytest.raises(SearchError, match="neither a file nor a search"):
        run_search(bad, progress=False)


def _reachable_latency_share(cfg_path: Path) -> float:
    """The least latency share the config's space can reach on this machine (fixed per-layer
    costs dominate digits' 8 x 8 inputs, so it differs from machine to machine)."""
    import numpy as np
    import torch

    from prunetune.orchestrator.spaces import build_space
    from prunetune.trainers import build_model

    cfg = load_config(cfg_path, {"space.budget.keep": 1.0})
    model = build_model(cfg.model.name, num_classes=10, in_channels=1).eval()
    space = build_space(cfg, model, torch.zeros(1, 1, 8, 8))
    return space.cost(np.ones(space.dim))["latency_share"]


def test_trials_take_latency_from_the_shared_latency_table(local_ray, tmp_path: Path) -> None:
    table = tmp_path / "cpu-table.json"
    path = write_config(tmp_path, "it-latency-table", finetune={"epochs": 0},
                         space={"budget": {"kind": "latency", "keep": 1.0}},
                         search={"trials": 3, "latency": "table", "latency_table": str(table)})
    keep = 0.5 * (1.0 + _reachable_latency_share(path))  # halfway to the floor
    cfg = load_config(path, {"space.budget.keep": keep})
    summary = run_search(cfg, progress=False)
    assert summary.trials_finished == 3
    client = MlflowClient(cfg.tracking_uri())
    trials = search_trials(client, find_search(client, "prunetune", "it-latency-table"))
    dense = {t.metrics["dense_latency_ms"] for t in trials}
    assert len(dense) == 1  # one dense prediction, shared by every trial through the table
    dense_ms = dense.pop()
    for t in trials:
        assert t.metrics["latency_ms"] > 0
        assert t.metrics["speedup"] == pytest.approx(dense_ms / t.metrics["latency_ms"])
        # The latency budget holds on the space's linear model; the table's own prediction
        # (pruned shapes measured later, under the trials' load) is within a loose margin.
        assert t.metrics["latency_ms"] <= keep * 1.3 * dense_ms
    table_file = json.loads(table.read_text())
    assert table_file["format"] == "prunetune-latency-table"
    assert table_file["entries"]  # the layer entries measured are kept for the next search


def test_tracker_keeps_the_first_final_result_of_a_rerun_trial(tmp_path: Path) -> None:
    """Tune re-runs a trial whose final result arrived after its last checkpoint; the resumed
    search's tracker must not log a second final result into the trial's MLflow run."""
    from types import SimpleNamespace

    from prunetune.orchestrator.tracking import MLflowTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def tracker() -> MLflowTracker:
        return MLflowTracker(tracking_uri=uri, experiment="prunetune", search_name="rerun",
                             config={}, space_description={}, dense_metrics={},
                             artifact_root=(tmp_path / "art").as_uri())

    trial = SimpleNamespace(trial_id="t0", config={}, error_file=None,
                            last_result={"accuracy": 0.8, "final": True})
    first = tracker()
    first.setup()
    first.on_trial_start(0, [], trial)
    first.on_trial_result(0, [], trial, {"accuracy": 0.8, "final": True, "epoch": 1})
    first.on_trial_complete(0, [], trial)

    resumed = tracker()  # a new process: it finds the parent and the finished child
    resumed.setup()
    trial.last_result = {"accuracy": 0.7, "final": True}
    resumed.on_trial_start(0, [], trial)
    resumed.on_trial_result(0, [], trial, {"accuracy": 0.7, "final": True, "epoch": 1})
    resumed.on_trial_complete(0, [], trial)
    client = MlflowClient(uri)
    history = client.get_metric_history(first._children["t0"], "accuracy")
    assert [m.value for m in history] == [0.8]
    assert client.get_run(first._children["t0"]).info.status == "FINISHED"


def test_a_resumed_tracker_adopts_the_runs_of_trials_tune_lost(tmp_path: Path) -> None:
    """After a driver died, Tune's saved state may lack trials it had started or finished; the
    resumed searcher asks for the same suggestions (same seeds) under new trial ids. Those take
    the old runs over; a run of a lost trial nobody repeats, with no result, is deleted."""
    from types import SimpleNamespace

    from prunetune.orchestrator.tracking import MLflowTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def tracker() -> MLflowTracker:
        return MLflowTracker(tracking_uri=uri, experiment="prunetune", search_name="lost",
                             config={}, space_description={}, dense_metrics={},
                             artifact_root=(tmp_path / "art").as_uri())

    def trial(tid: str, seed: int) -> SimpleNamespace:
        return SimpleNamespace(trial_id=tid, config={"seed": seed}, error_file=None,
                               last_result=None)

    first = tracker()
    first.setup()
    old = {tid: trial(tid, seed) for tid, seed in (("a", 1), ("b", 2), ("c", 3), ("d", 4))}
    for t in old.values():
        first.on_trial_start(0, list(old.values()), t)
    for tid in ("a", "c"):  # a and c finished; b and d were running when the driver died
        first.on_trial_result(0, [], old[tid], {"accuracy": 0.5, "final": True, "epoch": 1})
        old[tid].last_result = {"accuracy": 0.5, "final": True}
        first.on_trial_complete(0, [], old[tid])
    names = dict(first._names)

    resumed = tracker()  # Tune's saved state knows only a; the searcher repeats b and c
    resumed.setup()
    now = [old["a"], trial("b2", 2), trial("c2", 3)]
    for t in now[1:]:
        resumed.on_trial_start(0, now, t)
    resumed.on_trial_result(0, now, now[2], {"accuracy": 0.9, "final": True, "epoch": 1})
    resumed.on_trial_result(0, now, now[1], {"accuracy": 0.7, "final": True, "epoch": 1})
    resumed.on_experiment_end(now)
    client = MlflowClient(uri)
    runs = search_trials(client, find_search(client, "prunetune", "lost"))
    assert sorted(r.trial_id for r in runs) == ["a", "b2", "c2"]  # d's run held nothing
    by_id = {r.trial_id: r for r in runs}
    assert by_id["b2"].name == names["b"] and by_id["c2"].name == names["c"]
    assert by_id["b2"].status == "finished"
    # c had finished before: its run keeps its first result
    assert [m.value for m in client.get_metric_history(by_id["c2"].run_id, "accuracy")] == [0.5]


def _finished_children(uri: str, name: str) -> int:
    return sum(t.status == "finished" for t in children(uri, name))


@pytest.mark.slow
def test_interrupted_search_resumes_without_rerunning(tmp_path: Path) -> None:
    path = write_config(tmp_path, "it-resume", search={"trials": 8, "max_concurrent": 1})
    uri = load_config(path).tracking_uri()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "prunetune.orchestrator.cli", "search", str(path)]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while _finished_children(uri, "it-resume") < 3:
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "search did not get going"
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    first_output, _ = proc.communicate(timeout=120)
    # What a person sees while it starts: a line before Ray's start-up, no library noise.
    assert "[search] starting a local Ray" in first_output
    for noise in ("FutureWarning", "Token authentication is enabled", "View run",
                  "No CUDA runtime"):
        assert noise not in first_output, noise
    before = _finished_children(uri, "it-resume")
    assert 3 <= before < 8

    done = subprocess.run(cmd + ["--resume"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    client = MlflowClient(uri)
    parent = find_search(client, "prunetune", "it-resume")
    assert parent.info.status == "FINISHED"  # the resumed driver does not reopen it
    trials = search_trials(client, parent)
    assert len(trials) == 8 and len({t.trial_id for t in trials}) == 8
    assert all(t.status == "finished" for t in trials)
    # No trial ran twice. MLflow keeps a trial's first final result whatever happens, so the
    # witness is Tune's own record: every run of a trial appends its reports to the trial's
    # result.json.
    finals = final_reports(load_config(path).storage_dir() / "it-resume")
    assert sum(finals.values()) == 8 and set(finals.values()) == {1}, finals
    for t in trials:
        assert len(client.get_metric_history(t.run_id, "accuracy")) == 1
