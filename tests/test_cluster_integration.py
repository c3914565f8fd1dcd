"""A real 2-node Ray cluster on 127.0.0.1 (clusters/local-cluster.sh: head and worker are
separate `ray start` processes with their own temp dirs and 1 CPU each) and a real
`mlflow server`: `prunetune submit` runs a search through the Jobs API, its trials run on both
nodes, the job succeeds and MLflow holds the parent run and every child run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from prunetune.orchestrator.cli_cluster import main
from prunetune.orchestrator.jobs import jobs_client
from prunetune.orchestrator.results import find_search, search_trials

from .test_registry import (
    await_mlflow_server,
    digits_config,
    launch_mlflow_server,
    stop_process_group,
)

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "clusters" / "local-cluster.sh"
TRIALS = 8
NAME = "cluster-it"


def _processes_naming(text: str) -> list[int]:
    """Pids of processes whose command line contains `text`."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="ignore")
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(proc.name))
    return pids


def _leftovers(folder: Path) -> list[int]:
    """Pids of processes whose command line names the cluster folder."""
    return _processes_naming(f"{folder}/")


@pytest.fixture(scope="module")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    # Short folder: Ray's unix sockets live under each node's temp dir (path length limit).
    folder = Path(tempfile.mkdtemp(prefix="ptc", dir="/tmp"))
    env = {**os.environ, "PRUNETUNE_CLUSTER_DIR": str(folder), "CPUS_PER_NODE": "1",
           "OBJECT_STORE_BYTES": "200000000"}
    server, url = launch_mlflow_server(tmp_path_factory.mktemp("mlflow-cluster"))
    try:
        started = subprocess.run(["bash", str(SCRIPT), "start", "1"], env=env,
                                 capture_output=True, text=True, timeout=300, check=False)
        assert started.returncode == 0, started.stdout + started.stderr
        await_mlflow_server(server, url)
        addresses = dict(line.split("=", 1)
                         for line in (folder / "cluster.env").read_text().split())
        yield {"dashboard": addresses["RAY_DASHBOARD"], "gcs": addresses["RAY_ADDRESS"],
               "mlflow": url, "folder": folder}
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True,
                       timeout=120, check=False)
        stop_process_group(server)
        left = _leftovers(folder)
        shutil.rmtree(folder, ignore_errors=True)
    assert left == [], f"processes of the cluster outlived `local-cluster.sh stop`: {left}"


def _alive_node_ids(dashboard: str) -> set[str]:
    from ray.util.state import list_nodes

    jobs_client(dashboard)  # checks the address and sends Ray's auth token as prunetune does
    return {n.node_id for n in list_nodes(address=dashboard) if n.state == "ALIVE"}


def test_submitted_search_runs_on_both_nodes(infra: dict, tmp_path: Path,
                                             tmp_path_factory: pytest.TempPathFactory,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from ray.job_submission import JobSubmissionClient

    dashboard, server = infra["dashboard"], infra["mlflow"]
    nodes = _alive_node_ids(dashboard)
    assert len(nodes) == 2  # head + worker, one CPU each

    raw = digits_config(tmp_path, NAME, tmp_path_factory.getbasetemp() / "cache",
                        search={"trials": TRIALS, "max_concurrent": 2, "cpus_per_trial": 1,
                                "latency_repeats": 3},
                        finetune={"epochs": 0.25})
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump(raw))

    capsys.readouterr()
    rc = main(["submit", str(config), "--address", dashboard, "--wait",
               "--tracking-uri", server, "--experiment", NAME])
    out = capsys.readouterr()
    job_id = out.out.split()[0]
    assert job_id.startswith("raysubmit_"), out.out
    assert rc == 0, out.err[-4000:]
    assert JobSubmissionClient(dashboard).get_job_status(job_id) == "SUCCEEDED"

    # The job commands agree.
    assert main(["status", job_id, "--address", dashboard, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "SUCCEEDED"
    assert main(["logs", job_id, "--address", dashboard]) == 0
    assert f"{TRIALS} trials finished" in capsys.readouterr().out
    assert main(["stop", job_id, "--address", dashboard]) == 0
    assert "already ended" in capsys.readouterr().out
    assert main(["status", "raysubmit_doesnotexist", "--address", dashboard]) == 2
    assert "no job 'raysubmit_doesnotexist'" in capsys.readouterr().err

    # MLflow on the server holds the parent run and every child run.
    client = MlflowClient(server)
    parent = find_search(client, NAME, NAME)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["trials_finished"] == TRIALS
    trials = search_trials(client, parent)
    assert len(trials) == TRIALS and len({t.trial_id for t in trials}) == TRIALS
    assert all(t.status == "finished" and "accuracy" in t.metrics for t in trials)
    assert all(t.tags.get("node") for t in trials)
    # Both nodes share IP and hostname; the Ray node id recorded per trial tells them apart.
    ran_on = {t.tags.get("node_id") for t in trials}
    assert ran_on == nodes, f"trials ran on {ran_on}, cluster nodes are {nodes}"


def test_a_search_survives_losing_its_worker_node(infra: dict, tmp_path: Path,
                                                  tmp_path_factory: pytest.TempPathFactory
                                                  ) -> None:
    """The worker node of the 2-node cluster dies (every one of its processes, kill -9)
    mid-search: Tune retries its trial on the head, and the search ends with every trial
    finished once. Runs after the test above: the cluster has one node afterwards."""
    import signal
    import sys
    import time

    from .search_helpers import children

    name = "node-lost"
    raw = digits_config(tmp_path, name, tmp_path_factory.getbasetemp() / "cache",
                        search={"trials": TRIALS, "max_concurrent": 2, "cpus_per_trial": 1,
                                "latency_repeats": 3},
                        finetune={"epochs": 1})
    raw["ray"] = {"address": infra["gcs"]}
    raw["tracking"] = {"uri": infra["mlflow"]}
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump(raw))
    proc = subprocess.Popen([sys.executable, "-m", "prunetune.orchestrator.cli", "search",
                             str(config)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 400
    while sum(t.status == "finished" for t in children(infra["mlflow"], name)) < 2:
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "the search did not get going"
        time.sleep(0.5)
    worker = f"{infra['folder']}/worker-1"  # the node's temp dir names its processes
    for pid in _processes_naming(worker):
        os.kill(pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-4000:]
    client = MlflowClient(infra["mlflow"])
    trials = search_trials(client, find_search(client, "prunetune", name))
    assert len(trials) == TRIALS and all(t.status == "finished" for t in trials)
    assert len({t.params["seed"] for t in trials}) == TRIALS
    for t in trials:
        assert len(client.get_metric_history(t.run_id, "accuracy")) == 1
