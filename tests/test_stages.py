"""Two-stage, proxy-first searches: proxy trials scored after BatchNorm calibration, the best
policies fine-tuned as finalists, on a real local Ray and a real MLflow sqlite store; and the
pieces they are made of (stage plan, finalist choice, the space a config's defaults build)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from prunetune.orchestrator.cli import main
from prunetune.orchestrator.config import PrunetuneConfig, load_config
from prunetune.orchestrator.driver import FinalistSearcher, run_search, search_stages
from prunetune.orchestrator.registry import promote
from prunetune.orchestrator.results import (
    TrialRecord,
    find_search,
    search_trials,
    select_finalists,
)
from prunetune.orchestrator.spaces import space_defaults

from .search_helpers import children, final_reports, write_config


def _config(tmp_path: Path, name: str, **sections: dict) -> Path:
    """examples/digits-smoke.yaml as a two-stage search: 8 proxy trials (no fine-tuning),
    then the best 2 fine-tuned for one epoch."""
    search = {"trials": 8, "finalists": {"count": 2, "epochs": 1}, **sections.pop("search", {})}
    return write_config(tmp_path, name, search=search,
                        finetune={"epochs": 0, **sections.pop("finetune", {})}, **sections)


def _record(name: str, accuracy: float, latency: float, status: str = "finished"
            ) -> TrialRecord:
    return TrialRecord(trial_id=name, run_id=f"run-{name}", name=name, status=status,
                       metrics={"accuracy": accuracy, "latency_ms": latency}, params={})


# ---------------------------------------------------------------------------------------------
# The pieces


def test_defaults_are_proxy_first_with_finalists() -> None:
    cfg = PrunetuneConfig()
    assert cfg.finetune.epochs == 0 and cfg.finetune.bn_calibration > 0
    fin = cfg.search.finalists
    assert fin.count > 0 and fin.epochs > 0 and fin.select == "top"
    stages = search_stages(cfg, "s")
    assert [s.name for s in stages] == ["proxy", "finalist"]
    assert (stages[0].trials, stages[0].epochs) == (cfg.search.trials, 0)
    assert (stages[1].trials, stages[1].epochs, stages[1].experiment) == (
        fin.count, fin.epochs, "s.finalists")
    one = cfg.model_copy(update={"search": cfg.search.model_copy(
        update={"finalists": fin.model_copy(update={"count": 0})})})
    assert [(s.name, s.experiment) for s in search_stages(one, "s")] == [("trial", "s")]


def test_finalists_are_the_best_or_spread_along_the_front() -> None:
    trials = [_record("p1", 0.50, 1.0), _record("p2", 0.80, 3.0), _record("p3", 0.70, 2.0),
              _record("p4", 0.60, 2.5), _record("p5", 0.90, 4.0, status="stopped"),
              _record("p6", 0.40, 0.5)]
    assert [t.name for t in select_finalists(trials, 2, "top")] == ["p2", "p3"]
    # The front (by latency): p6 0.40, p1 0.50, p3 0.70, p2 0.80; three spread along it are
    # its two ends and the point nearest its middle; p4 (dominated by p3) and the stopped p5
    # never are.
    assert [t.name for t in select_finalists(trials, 3, "pareto")] == ["p2", "p3", "p6"]
    # A front shorter than the count is topped up with the best of the rest.
    chosen = select_finalists(trials, 5, "pareto")
    assert {t.name for t in chosen} == {"p1", "p2", "p3", "p4", "p6"}
    assert select_finalists(trials, 2, "top") == select_finalists(list(reversed(trials)), 2,
                                                                  "top")


def test_finalists_meet_a_latency_budget_as_measured_where_enough_trials_do() -> None:
    # dense latency 4.0 ms: shares 0.25 .. 1.0; a budget of 0.6 keeps p1, p3 (2.0), p6 (0.5).
    trials = [_record("p1", 0.50, 1.0), _record("p2", 0.80, 3.0), _record("p3", 0.70, 2.0),
              _record("p4", 0.60, 2.5), _record("p6", 0.40, 0.5)]
    for t in trials:
        t.metrics["dense_latency_ms"] = 4.0
    assert [t.name for t in select_finalists(trials, 2, "top", max_latency_share=0.6)] == [
        "p3", "p1"]
    # Too few within: topped up with the least over budget (p4 at 0.625, not the better p2).
    chosen = select_finalists(trials, 4, "top", max_latency_share=0.6)
    assert [t.name for t in chosen] == ["p3", "p4", "p1", "p6"]
    assert [t.name for t in select_finalists(trials, 2, "top")] == ["p2", "p3"]  # no budget


def test_finalist_searcher_hands_out_its_points_once_across_a_restore(tmp_path: Path) -> None:
    points = [{"policy": "a", "finalist": 1}, {"policy": "b", "finalist": 2}]
    searcher = FinalistSearcher(points)
    assert searcher.suggest("t1") == points[0]
    searcher.save(str(tmp_path / "state.json"))
    restored = FinalistSearcher([])
    restored.restore(str(tmp_path / "state.json"))
    assert restored.suggest("t2") == points[1]
    assert restored.suggest("t3") == FinalistSearcher.FINISHED


@pytest.mark.parametrize(("searcher", "groups", "fill"), [
    ("bo", "auto", True), ("random", None, True), ("rl", None, True),
    ("same_ratio", None, False)])
def test_a_configs_defaults_take_the_searchers_own_space(searcher: str, groups: object,
                                                         fill: bool) -> None:
    cfg = PrunetuneConfig.model_validate({"search": {"searcher": searcher}})
    assert space_defaults(cfg) == (groups, fill)
    told = PrunetuneConfig.model_validate({"search": {"searcher": searcher},
                                           "space": {"groups": 3,
                                                     "budget": {"fill": not fill}}})
    assert space_defaults(told) == (3, not fill)


# ---------------------------------------------------------------------------------------------
# A real two-stage search


def test_two_stage_search_fine_tunes_the_best_proxy_policies(
        local_ray, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = load_config(_config(tmp_path, "two-stage"))
    summary = run_search(cfg, progress=False)
    client = MlflowClient(cfg.tracking_uri())
    parent = find_search(client, "prunetune", "two-stage")
    assert parent.info.status == "FINISHED"
    trials = search_trials(client, parent)
    assert len(trials) == 10 and summary.trials_finished == 10
    proxies = [t for t in trials if t.stage == "proxy"]
    finalists = [t for t in trials if t.stage == "finalist"]
    assert sorted(t.name for t in proxies) == [f"proxy-{i:03d}" for i in range(1, 9)]
    assert sorted(t.name for t in finalists) == ["finalist-1", "finalist-2"]
    assert all(t.status == "finished" for t in trials)
    # The finalists are the two best proxy policies, fine-tuned with the proxy trial's seed.
    best_proxies = sorted(proxies, key=lambda t: (-t.metrics["accuracy"], t.name))[:2]
    by_source = {t.tags["prunetune.proxy_trial"]: t for t in finalists}
    assert set(by_source) == {t.name for t in best_proxies}
    for rank, proxy in enumerate(best_proxies, start=1):
        fin = by_source[proxy.name]
        assert fin.name == f"finalist-{rank}"
        assert fin.metrics["proxy_accuracy"] == pytest.approx(proxy.metrics["accuracy"])
        assert fin.params["seed"] == proxy.params["seed"]
        assert (fin.params["finetune_epochs"], proxy.params["finetune_epochs"]) == ("1", "0")
        assert fin.metrics["flops_ratio"] == pytest.approx(proxy.metrics["flops_ratio"])
    # The search's best is the best fine-tuned finalist, not a proxy score.
    top = max(finalists, key=lambda t: t.metrics["accuracy"])
    assert summary.best["trial"] == top.name and summary.best["stage"] == "finalist"
    assert parent.data.metrics["best_accuracy"] == pytest.approx(top.metrics["accuracy"])
    assert parent.data.metrics["finalists_finished"] == 2
    capsys.readouterr()
    assert main(["results", "two-stage", "--tracking-uri", cfg.tracking_uri(), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert {r["stage"] for r in shown["trials"]} == {"proxy", "finalist"}
    assert {r["trial"] for r in shown["pareto"]} <= {"finalist-1", "finalist-2"}
    # promote takes the best finalist by default and fine-tunes it as the finalist was.
    done = promote("two-stage", "two-stage-model", tracking_uri=cfg.tracking_uri(),
                   progress=False)
    assert done.trial_id == top.trial_id
    assert done.metrics["finetune_epochs"] == 1.0


@pytest.mark.slow
def test_interrupted_in_the_finalist_stage_resumes_without_redoing_the_proxy_stage(
        tmp_path: Path) -> None:
    path = _config(tmp_path, "two-resume",
                   # epochs enough that the first finalist is still running 2 s after it
                   # started, on an idle machine too
                   search={"max_concurrent": 1, "finalists": {"count": 2, "epochs": 6}})
    cfg = load_config(path)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "prunetune.orchestrator.cli", "search", str(path)]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 420
    while not any(t.stage == "finalist" for t in children(cfg.tracking_uri(), "two-resume")):
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "the finalist stage did not start"
        time.sleep(0.5)
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    first_output, _ = proc.communicate(timeout=180)
    assert proc.returncode == 130, first_output
    assert "interrupted in stage 2 (finalist)" in first_output and "--resume" in first_output
    client = MlflowClient(cfg.tracking_uri())
    assert find_search(client, "prunetune", "two-resume").info.status == "KILLED"
    before = children(cfg.tracking_uri(), "two-resume")
    assert sum(t.stage == "proxy" and t.status == "finished" for t in before) == 8
    assert any(t.stage == "finalist" and t.status != "finished" for t in before)

    done = subprocess.run(cmd + ["--resume"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "stage 1/2 (proxy): finished before the interruption" in done.stdout
    parent = find_search(client, "prunetune", "two-resume")
    assert parent.info.status == "FINISHED"
    trials = search_trials(client, parent)
    assert len(trials) == 10 and all(t.status == "finished" for t in trials)
    assert sorted(t.name for t in trials if t.stage == "finalist") == ["finalist-1",
                                                                       "finalist-2"]
    # The proxy stage ran once: each of its trials reported one final result, ever.
    proxy_finals = final_reports(cfg.storage_dir() / "two-resume")
    assert len(proxy_finals) == 8 and set(proxy_finals.values()) == {1}
    finalist_finals = final_reports(cfg.storage_dir() / "two-resume.finalists")
    assert sum(finalist_finals.values()) == 2


def test_a_dead_worker_is_told_apart_from_an_error_of_the_trial_code() -> None:
    """Only trials whose worker process died are run again after the stage (their own
    exceptions are not: they would raise again)."""
    from ray.exceptions import RayActorError

    from prunetune.orchestrator.stages import worker_died

    assert worker_died(RayActorError())
    try:
        try:
            raise RayActorError()
        except RayActorError as dead:
            raise RuntimeError("trial failed") from dead
    except RuntimeError as wrapped:
        assert worker_died(wrapped)
    assert not worker_died(ValueError("N:M needs ..."))


def test_a_tracker_saved_by_an_earlier_version_resumes_with_its_new_attributes(
        tmp_path: Path) -> None:
    # Tune restores its callbacks by unpickling them: a search saved before the journal and the
    # per-trial names existed must still start its next stage after an upgrade.
    from prunetune.orchestrator.tracking import MLflowTracker
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MLflowTracker(tracking_uri=uri, experiment="prunetune", search_name="old",
                            config={}, space_description={}, dense_metrics={})
    state = tracker.__getstate__()
    for added in ("journal_dir", "_journal", "_names", "_seeds", "stage", "epochs"):
        state.pop(added)
    restored = MLflowTracker.__new__(MLflowTracker)
    restored.__setstate__(state)
    restored.setup()
    parent = MlflowClient(uri).get_run(restored.parent_run_id)
    assert parent.info.run_name == "old" and restored.stage == "trial"
