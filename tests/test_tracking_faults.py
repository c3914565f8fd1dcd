"""The tracking store off the search's control path, on real searches (real Ray, a real MLflow
sqlite store): an artifact store that refuses writes mid-search leaves no run FINISHED without
its artifacts and a resume that writes them and finishes; the progress lines a search prints
(counted once per trial across a resume, one per finalist epoch); the metric names on the
parent run."""

from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from prunetune.orchestrator import stages
from prunetune.orchestrator.config import load_config
from prunetune.orchestrator.driver import SearchError, run_search
from prunetune.orchestrator.results import find_search, search_trials
from prunetune.orchestrator.stages import Stage, progress_callback
from prunetune.orchestrator.tracking import MLflowTracker

from .search_helpers import final_reports, write_config

# The artifact folder a `BreakingTracker` breaks once, after its first trial completed.
_BREAK: dict[str, Path] = {}


class BreakingTracker(MLflowTracker):
    """The search's tracker; after the first trial it sees complete, the store's artifact
    folder is replaced by a file, so that MLflow refuses every artifact write from then on
    (as an immutable or full artifact folder does)."""

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        super().on_trial_complete(iteration, trials, trial, **info)
        folder = _BREAK.pop("folder", None)
        if folder is not None:
            folder.rename(folder.with_name("mlartifacts.saved"))
            folder.write_text("not a folder: every artifact write fails\n")


def _artifacts(client: MlflowClient, run_id: str) -> set[str]:
    return {Path(f.path).name for f in client.list_artifacts(run_id)}


def _tracker(tmp_path: Path, **kwargs: Any) -> MLflowTracker:
    return MLflowTracker(**{"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                            "experiment": "prunetune", "search_name": "unit", "config": {},
                            "space_description": {}, "journal_dir": str(tmp_path / "journal"),
                            "dense_metrics": {}, **kwargs})


@pytest.mark.slow
def test_an_artifact_store_refusing_writes_mid_search_is_repaired_by_the_resume(
        local_ray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, "refused", finetune={"epochs": 0},
                        search={"trials": 4, "max_concurrent": 1,
                                "finalists": {"count": 2, "epochs": 2}})
    cfg = load_config(path)
    artifacts, saved = cfg.workdir_path() / "mlartifacts", cfg.workdir_path() / "mlartifacts.saved"
    real_tracker = stages.stage_tracker

    def breaking_tracker(run: Any, stage: Any) -> MLflowTracker:
        tracker = real_tracker(run, stage)
        tracker.__class__ = BreakingTracker
        return tracker

    monkeypatch.setattr(stages, "stage_tracker", breaking_tracker)
    _BREAK["folder"] = artifacts
    for resume in (False, True):  # the search, then a resume while the store still refuses
        with pytest.raises(SearchError) as err:
            run_search(cfg, resume=resume, progress=False)
        message = str(err.value)
        assert "\n" not in message and "--resume --name refused" in message
        assert "MLflow tracking store refused" in message
        client = MlflowClient(cfg.tracking_uri())
        parent = find_search(client, "prunetune", "refused")
        assert parent.info.status == "KILLED"  # not left RUNNING
        trials = search_trials(client, parent)
        assert len(trials) == 4 and all(t.status == "finished" for t in trials)
        status = {t.name: client.get_run(t.run_id).info.status for t in trials}
        # The trials' results are in; only the one that ended before the fault is FINISHED.
        assert sorted(status.values()) == ["FINISHED", "KILLED", "KILLED", "KILLED"], status
    artifacts.unlink()
    saved.rename(artifacts)
    for t in trials:  # a FINISHED run has its artifacts; the others lack them
        whole = _artifacts(client, t.run_id) >= {"policy.json", "policy.png"}
        assert whole == (status[t.name] == "FINISHED"), (t.name, _artifacts(client, t.run_id))

    capsys.readouterr()
    summary = run_search(cfg, resume=True, progress=True)
    out = capsys.readouterr().out
    assert "wrote what MLflow lacked for 3 trial run(s)" in out
    # The finalists report each epoch but the last (that one is their result line).
    for rank in (1, 2):
        assert f"finalist-{rank} epoch 1/2: accuracy " in out, out
    parent = find_search(client, "prunetune", "refused")
    assert parent.info.status == "FINISHED" and summary.trials_finished == 6
    trials = search_trials(client, parent)
    assert sorted(t.name for t in trials) == ["finalist-1", "finalist-2", "proxy-001",
                                              "proxy-002", "proxy-003", "proxy-004"]
    for t in trials:
        assert t.status == "finished" and client.get_run(t.run_id).info.status == "FINISHED"
        assert _artifacts(client, t.run_id) >= {"policy.json", "policy.png"}, t.name
    assert set(final_reports(cfg.storage_dir() / "refused").values()) == {1}  # ran once


def test_the_progress_count_counts_a_trial_run_again_once(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Tune re-runs, on resume, a trial whose final result reached MLflow after Tune's last
    save: the count shows it once (it showed 4/3 before)."""
    tracker = _tracker(tmp_path)
    tracker.setup()
    result = {"accuracy": 0.5, "flops_ratio": 0.5, "speedup": 1.2, "latency_ms": 1.0,
              "epoch": 1, "final": True}
    trials = [SimpleNamespace(trial_id=f"t{i}", config={"seed": i}, error_file=None,
                              last_result=result) for i in range(3)]
    for trial in trials[:2]:
        tracker.on_trial_start(0, trials, trial)
        tracker.on_trial_result(0, trials, trial, result)
        tracker.on_trial_complete(0, trials, trial)
    resumed = pickle.loads(pickle.dumps(tracker))  # as Tune restores its callbacks
    printer = progress_callback(Stage("trial", "unit", 3, 1), resumed)
    resumed.setup()
    printer.setup()
    capsys.readouterr()
    for trial in trials[1:]:  # t1 again (its result was in MLflow), then t2
        resumed.on_trial_start(0, trials, trial)
        resumed.on_trial_result(0, trials, trial, result)
        resumed.on_trial_complete(0, trials, trial)
        printer.on_trial_complete(0, trials, trial)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines] == ["2/3", "3/3"], lines
    assert "trial-002" in lines[0] and "trial-003" in lines[1]


def test_a_trial_run_again_keeps_only_the_history_of_the_attempt_that_counts(
        tmp_path: Path) -> None:
    """A trial whose worker died after its epoch-1 report runs again: its child run (same
    name) holds the points of the attempt that counts, not the dead attempt's too."""
    tracker = _tracker(tmp_path)
    tracker.setup()
    trial = SimpleNamespace(trial_id="t0", config={"seed": 0}, error_file=None,
                            last_result=None)
    tracker.on_trial_start(0, [trial], trial)
    tracker.on_trial_result(0, [trial], trial, {"accuracy": 0.1, "epoch": 1})
    tracker.on_trial_start(0, [trial], trial)  # Tune retries it on a fresh worker
    for epoch, accuracy in ((1, 0.3), (2, 0.4)):
        tracker.on_trial_result(0, [trial], trial, {"accuracy": accuracy, "epoch": epoch,
                                                     "final": epoch == 2})
    trial.last_result = {"final": True}
    tracker.on_trial_complete(0, [trial], trial)
    client = MlflowClient(tracker.tracking_uri)
    (run,) = search_trials(client, client.get_run(tracker.parent_run_id))
    assert run.name == "trial-001" and run.status == "finished"
    history = sorted((m.step, m.value) for m in client.get_metric_history(run.run_id,
                                                                           "accuracy"))
    assert history == [(1, 0.3), (2, 0.4)]


def test_finalists_report_each_epoch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tracker = _tracker(tmp_path, stage="finalist")
    printer = progress_callback(Stage("finalist", "unit.finalists", 2, 3), tracker)
    tracker._names["t0"] = "finalist-1"
    trial = SimpleNamespace(trial_id="t0")
    printer.on_trial_result(0, [trial], trial, {"accuracy": 0.81234, "epoch": 2,
                                                "final": False})
    printer.on_trial_result(0, [trial], trial, {"accuracy": 0.9, "epoch": 3, "final": True})
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("[search] finalist-1 epoch 2/3: accuracy 0.8123 (")


def test_the_dense_baseline_metrics_are_named_once(tmp_path: Path) -> None:
    tracker = _tracker(tmp_path, dense_metrics={"val_accuracy": 0.9, "dense_latency_ms": 2.5})
    tracker.setup()
    metrics = MlflowClient(tracker.tracking_uri).get_run(tracker.parent_run_id).data.metrics
    assert metrics == {"dense_val_accuracy": 0.9, "dense_latency_ms": 2.5}


def test_the_search_files_a_refused_start_lacks_are_written_by_the_repair(
        tmp_path: Path) -> None:
    """The store refuses the parent run's config.json and space.json (what promote rebuilds
    a trial from) as the search starts: the search goes on, and the repair writes them."""
    art = tmp_path / "artifacts"
    art.write_text("not a folder: every artifact write fails\n")
    tracker = _tracker(tmp_path, config={"seed": 3}, space_description={"units": {}},
                       artifact_root=art.as_uri())
    tracker.setup()  # raised before
    art.unlink()
    client = MlflowClient(tracker.tracking_uri)
    assert _artifacts(client, tracker.parent_run_id) == set()
    assert tracker.repair({}) == 1
    assert _artifacts(client, tracker.parent_run_id) == {"config.json", "space.json"}
    assert tracker.repair({}) == 0  # nothing left to write
