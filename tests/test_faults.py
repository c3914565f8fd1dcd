"""Faults a user's bad day brings, on real searches (real Ray, real MLflow): damaged state files
on --resume, a driver killed (twice) and resumed. Each drill checks that nothing is lost or
duplicated and that a refusal is one clear message in seconds. The slow drills run in
`make test-slow`; a silent tracking server at start is in test_user_surprises.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import yaml
from mlflow.tracking import MlflowClient

from prunetune.orchestrator.config import load_config
from prunetune.orchestrator.driver import SearchError, run_search
from prunetune.orchestrator.results import find_search, search_trials

from .search_helpers import children, final_reports

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, name: str, **search: object) -> Path:
    base = yaml.safe_load((ROOT / "examples" / "digits-smoke.yaml").read_text())
    base.update(name=name, workdir=str(tmp_path / "work"))
    base["search"].update(search)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_damaged_state_files_are_refused_on_resume(local_ray, tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path, "damaged", trials=2, searcher="bo",
                              searcher_options={"n_init": 2}))
    run_search(cfg, progress=False)
    folder = cfg.storage_dir() / "damaged"
    files = [folder / "tuner.pkl", *folder.glob("experiment_state-*.json"),
             *folder.glob("search_gen_state-*.json"), *folder.glob("searcher-state-*")]
    assert len(files) == 4
    for path in files:
        whole = path.read_bytes()
        for damaged in (whole[: len(whole) // 2], b""):  # truncated, then empty
            path.write_bytes(damaged)
            t0 = time.monotonic()
            with pytest.raises(SearchError, match="state file .* is damaged") as err:
                run_search(cfg, resume=True, progress=False)
            assert time.monotonic() - t0 < 20
            assert str(path) in str(err.value) and "--name" in str(err.value)
            assert path.read_bytes() == damaged  # refused, not rewritten
        path.write_bytes(whole)
    client = MlflowClient(cfg.tracking_uri())
    trials = search_trials(client, find_search(client, "prunetune", "damaged"))
    assert len(trials) == 2 and all(t.status == "finished" for t in trials)


def _wait_for(uri: str, name: str, finished: int, proc: subprocess.Popen,
              timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while sum(t.status == "finished" for t in children(uri, name)) < finished:
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, f"fewer than {finished} trials finished"
        time.sleep(0.3)


@pytest.mark.slow
def test_a_driver_killed_twice_resumes_to_exactly_one_run_per_trial(tmp_path: Path) -> None:
    path = _config(tmp_path, "killed", trials=8, searcher="bo",
                   searcher_options={"n_init": 3})
    cfg = load_config(path)
    uri = cfg.tracking_uri()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "prunetune.orchestrator.cli", "search", str(path)]
    for step, at in enumerate((2, 5)):
        proc = subprocess.Popen(cmd + (["--resume"] if step else []), env=env, cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        _wait_for(uri, "killed", at, proc)
        # Tune saves its state every second: a kill within a second of a trial's end may
        # leave that trial to run again (MLflow would still keep one run with its first
        # result); outside that window nothing runs twice, which this drill checks.
        time.sleep(1.5)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started, at once
        proc.wait(timeout=60)
    done = subprocess.run(cmd + ["--resume"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    client = MlflowClient(uri)
    parent = find_search(client, "prunetune", "killed")
    assert parent.info.status == "FINISHED"
    trials = search_trials(client, parent)
    # Exactly one child run per trial, every one finished, no run of a lost trial left over.
    assert len(trials) == 8, sorted((t.name, t.status) for t in trials)
    assert all(t.status == "finished" for t in trials)
    assert len({t.params["seed"] for t in trials}) == 8
    assert sorted(t.name for t in trials) == [f"trial-{i:03d}" for i in range(1, 9)]
    # Tune ends with 8 trials that each reported one final result: none ran twice.
    finals = final_reports(cfg.storage_dir() / "killed")
    assert sorted(n for n in finals.values() if n) == [1] * 8, finals
    for t in trials:
        assert len(client.get_metric_history(t.run_id, "accuracy")) == 1


def test_a_ray_failure_ends_the_search_with_one_line_and_the_resume_command(
        local_ray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray or Tune giving up mid-search (here: the tracker callback raising what Ray raised
    for a worker killed for memory) ends the search with the cause and the command that
    continues it, the runs that were running KILLED, the traceback kept in a file."""
    from prunetune.orchestrator import stages
    from prunetune.orchestrator.tracking import MLflowTracker

    class Failing(MLflowTracker):
        def on_trial_result(self, iteration, trials, trial, result, **info):  # noqa: ANN001
            super().on_trial_result(iteration, trials, trial, result, **info)
            if result.get("final"):
                raise RuntimeError("1 worker(s) were killed due to the node running low on "
                                   "memory.\nMore lines of Ray's report")

    def failing_tracker(run, stage):  # noqa: ANN001, ANN202
        real = stages_tracker(run, stage)
        real.__class__ = Failing
        return real

    stages_tracker = stages.stage_tracker
    monkeypatch.setattr(stages, "stage_tracker", failing_tracker)
    cfg = load_config(_config(tmp_path, "ray-fails", trials=4, max_concurrent=1))
    with pytest.raises(SearchError) as err:
        run_search(cfg, progress=False)
    message = str(err.value)
    assert "stopped in stage 1 (trial): RuntimeError: 1 worker(s) were killed" in message
    assert "search.max_concurrent" in message and "--resume --name ray-fails" in message
    log = cfg.workdir_path() / "ray-fails-error.txt"
    assert log.is_file() and "More lines of Ray's report" in log.read_text()
    client = MlflowClient(cfg.tracking_uri())
    parent = find_search(client, "prunetune", "ray-fails")
    assert parent.info.status == "KILLED"
    for t in search_trials(client, parent):
        assert t.status in ("finished", "interrupted")
        assert client.get_run(t.run_id).info.status in ("FINISHED", "KILLED")
