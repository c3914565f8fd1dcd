"""Faults a user's bad day brings, on real searches (real Ray, real MLflow): damaged state files
on --resume, a driver killed (twice) and resumed. Each drill checks that nothing is lost or
duplicated and that a refusal is one clear message in seconds. The slow drills run in
`make test-slow`; a silent tracking server at start is in test_user_surprises.py."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from prunetune.orchestrator.config import load_config
from prunetune.orchestrator.driver import SearchError, run_search
from prunetune.orchestrator.results import find_search, search_trials

from .search_helpers import children, final_reports, write_config


def _config(tmp_path: Path, name: str, **search: object) -> Path:
    return write_config(tmp_path, name, search=search)


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
    # Names are unique; a trial lost with the driver before Tune saved it, whose suggestion
    # the resumed searcher does not repeat (it may have learned from a result saved after its
    # own state), leaves its number unused and its replacement takes the next one.
    names = sorted(t.name for t in trials)
    assert len(set(names)) == 8 and all(re.fullmatch(r"trial-\d{3}", n) for n in names)
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


def _server_on(folder: Path, port: int) -> subprocess.Popen:
    """A real `mlflow server` on 127.0.0.1:`port` over `folder` (the same store each time)."""
    from prunetune.orchestrator.jobs import server_command, server_env, wait_for_http

    cmd = server_command(host="127.0.0.1", port=port, workdir=str(folder))
    log = open(folder / f"server-{time.monotonic_ns()}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=server_env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    wait_for_http(f"http://127.0.0.1:{port}/health", timeout_s=180,
                  alive=lambda: proc.poll() is None)
    return proc


def test_tracker_writes_wait_on_disk_while_the_server_is_down(tmp_path: Path,
                                                              monkeypatch) -> None:
    """A tracking server stops: the tracker's writes return at once (kept in its journal,
    not MLflow's minutes of retries), and land, in order, once the server is back."""
    from types import SimpleNamespace

    from prunetune.orchestrator.tracking import MLflowTracker

    from .test_registry import free_port, stop_process_group

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _server_on(tmp_path, port)
    tracker = MLflowTracker(tracking_uri=uri, experiment="prunetune", search_name="outage",
                            config={}, space_description={}, dense_metrics={},
                            journal_dir=str(tmp_path / "journal"))
    tracker.journal.retry_s = 0.5
    tracker.setup()
    trials = [SimpleNamespace(trial_id=f"t{i}", config={"seed": i}, error_file=None,
                              last_result={"accuracy": 0.1 * i, "final": True})
              for i in range(4)]

    def run(trial: SimpleNamespace) -> float:
        t0 = time.monotonic()
        tracker.on_trial_start(0, trials, trial)
        tracker.on_trial_result(0, trials, trial, {**trial.last_result, "epoch": 1})
        tracker.on_trial_complete(0, trials, trial)
        return time.monotonic() - t0

    run(trials[0])
    stop_process_group(server)
    assert max(run(t) for t in trials[1:]) < 10  # no write waits on the silent server
    assert tracker.journal.pending > 0
    assert (tmp_path / "journal" / "ops.jsonl").is_file()  # kept on disk, not in memory only
    server = _server_on(tmp_path, port)
    try:
        assert tracker.journal.flush(60) and tracker.journal.pending == 0
        client = MlflowClient(uri)
        runs = search_trials(client, find_search(client, "prunetune", "outage"))
        assert sorted(r.trial_id for r in runs) == ["t0", "t1", "t2", "t3"]
        for r in runs:
            assert r.status == "finished"
            assert client.get_run(r.run_id).info.status == "FINISHED"
            assert r.metrics["accuracy"] == pytest.approx(0.1 * int(r.trial_id[1:]))
    finally:
        stop_process_group(server)


# How long the first outage of the drill lasts; `benchmarks/faults.py` also runs it for ten
# minutes (the search's trials end within the first minute, the search then waits).
OUTAGE_S = float(os.environ.get("PRUNETUNE_DRILL_OUTAGE_S", "40"))


@pytest.mark.slow
def test_a_search_outlives_tracking_outages(tmp_path: Path) -> None:
    """The tracking server stops mid-search for `OUTAGE_S` and comes back: the search goes on
    and every result lands. In a second search it stops and stays down past the search's end:
    the search stops with the command that resumes it, which, once the server is back, writes
    what was kept and finishes the search."""
    from .test_registry import free_port, stop_process_group

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    (tmp_path / "server").mkdir()
    server = _server_on(tmp_path / "server", port)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def start(name: str, wait_s: float) -> tuple[list[str], subprocess.Popen]:
        path = _config(tmp_path, name, trials=10, max_concurrent=1)
        raw = yaml.safe_load(path.read_text())
        raw["tracking"] = {"uri": uri, "wait_s": wait_s}
        raw["finetune"]["epochs"] = 0
        path.write_text(yaml.safe_dump(raw))
        cmd = [sys.executable, "-m", "prunetune.orchestrator.cli", "search", str(path)]
        return cmd, subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)

    def check(name: str) -> None:
        client = MlflowClient(uri)
        parent = find_search(client, "prunetune", name)
        assert parent.info.status == "FINISHED"
        trials = search_trials(client, parent)
        assert sorted(t.name for t in trials) == [f"trial-{i:03d}" for i in range(1, 11)]
        for t in trials:
            assert t.status == "finished"
            assert len(client.get_metric_history(t.run_id, "accuracy")) == 1
        finals = final_reports(load_config(tmp_path / f"{name}.yaml").storage_dir() / name)
        assert sorted(n for n in finals.values() if n) == [1] * 10  # nothing ran twice

    try:
        _, proc = start("outage", wait_s=OUTAGE_S + 300)
        _wait_for(uri, "outage", 3, proc)
        stop_process_group(server)  # down while the trials go on, and after they end
        time.sleep(OUTAGE_S)
        assert proc.poll() in (None, 0)  # neither stopped nor crashed
        server = _server_on(tmp_path / "server", port)
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out
        check("outage")

        cmd, proc = start("long-outage", wait_s=10)
        _wait_for(uri, "long-outage", 3, proc)
        stop_process_group(server)  # down until after the search's end
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 2, out
        assert f"tracking server at {uri} has not answered" in out and "--resume" in out
        assert "Traceback" not in out
        server = _server_on(tmp_path / "server", port)
        done = subprocess.run(cmd + ["--resume"], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        check("long-outage")
    finally:
        stop_process_group(server)


def _trial_workers() -> list[int]:
    """PIDs of Ray worker processes running a trial (Tune's function trainable actors)."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines()[1:]
            if "ray::ImplicitFunc" in line]


@pytest.mark.slow
def test_a_killed_trial_worker_is_retried_and_counted_once(tmp_path: Path) -> None:
    """Trial workers killed after their trial's first epoch: each such trial runs again, is
    counted once, keeps only the history of the attempt that counts, and its failure is one
    line naming the file with the traceback (not Tune's screens of it)."""
    path = write_config(tmp_path, "worker-killed", search={"trials": 6},
                        finetune={"epochs": 2})
    cfg = load_config(path)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "prunetune.orchestrator.cli", "search", str(path)]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not any(t.status == "running" and "accuracy" in t.metrics
                  for t in children(cfg.tracking_uri(), "worker-killed")):
        assert time.monotonic() < deadline and proc.poll() is None, "no epoch reported"
        time.sleep(0.2)
    workers = _trial_workers()
    assert workers, "no trial worker running"
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    client = MlflowClient(cfg.tracking_uri())
    trials = search_trials(client, find_search(client, "prunetune", "worker-killed"))
    assert sorted((t.name, t.status) for t in trials) == [
        (f"trial-{i:03d}", "finished") for i in range(1, 7)], out
    assert len({t.params["seed"] for t in trials}) == 6
    for t in trials:  # epoch 1 and the final result, of one attempt
        steps = [m.step for m in client.get_metric_history(t.run_id, "accuracy")]
        assert sorted(steps) == [1, 2], (t.name, steps)
    assert "Traceback" not in out, out
    failures = [line for line in out.splitlines() if " failed (" in line]
    assert failures and all("traceback: " in line and len(line) < 400 for line in failures), out
    counts = [line.split()[1] for line in out.splitlines() if re.match(r"\[search\] \d+/6 ", line)]
    assert counts == [f"{i}/6" for i in range(1, 7)], out


def test_a_mixed_scheme_search_runs_every_trial(local_ray, tmp_path: Path) -> None:
    """Channel and N:M searched per layer group: every decoded policy applies and meets the
    budget on the pruned model (such policies failed in apply_policy before)."""
    cfg = load_config(_config(tmp_path, "mixed", trials=4, searcher="random"))
    cfg = cfg.model_copy(update={"space": cfg.space.model_copy(update={
        "schemes": ["channel", "nm"], "scheme_search": True})})
    summary = run_search(cfg, progress=False)
    assert summary.trials_finished == 4
    client = MlflowClient(cfg.tracking_uri())
    trials = search_trials(client, find_search(client, "prunetune", "mixed"))
    assert all(t.status == "finished" for t in trials)
    assert all(t.metrics["flops_ratio"] <= cfg.space.budget.keep for t in trials)
    schemes = {v for t in trials for k, v in t.params.items() if k.startswith("scheme.")}
    assert schemes == {"channel", "nm"}


def test_one_latency_table_actor_serves_every_trial_of_a_search(local_ray,
                                                                 tmp_path: Path) -> None:
    """The driver holds the device's table actor: trials that get it and drop their handle
    (as a trial does when it ends) all reach the same live actor; one a trial created died
    with that trial's handle while another trial was still asking it."""
    import ray

    from prunetune.orchestrator.driver import _hold_latency_actor
    from prunetune.trainers.latency_actor import latency_service

    cfg = load_config(_config(tmp_path, "table", trials=2, searcher="random"))
    cfg = cfg.model_copy(update={"search": cfg.search.model_copy(update={"latency": "table"})})
    held = _hold_latency_actor(cfg, tmp_path)

    @ray.remote(num_cpus=0)
    def trial_asks() -> str:
        svc = latency_service(None, device="cpu")
        ray.get(svc.entries.remote())
        return svc._actor_id.hex()

    for _ in range(3):  # one after another: each drops its handle before the next asks
        assert ray.get(trial_asks.remote()) == held._actor_id.hex()
    assert ray.get(held.save.remote()) == 0
