"""The driver under faults an operator brings (issue 26): a second driver of the same search, a
SIGTERM, a driver killed with its local Ray's agents left running, a cluster address nothing
answers at, and what the local Ray it starts exposes (listening sockets, worker priority).
Real Ray, real MLflow, real `prunetune search` processes; the slow drills run in
`make test-slow`."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from prunetune.errors import EXIT_TERMINATED, EXIT_USER_ERROR, SearchError
from prunetune.orchestrator.config import load_config
from prunetune.orchestrator.local_ray import SESSIONS_DIR, stop_leftovers
from prunetune.orchestrator.results import find_search, search_trials
from prunetune.orchestrator.search_lock import hold_search_lock

from .search_helpers import final_reports, write_config
from .test_faults import _wait_for
from .test_registry import free_port

CLI = [sys.executable, "-m", "prunetune.orchestrator.cli", "search"]


def _env() -> dict[str, str]:
    # Read when a process starts, not at import: conftest's private PRUNETUNE_CACHE is set
    # after collection, and a copy taken at import sends the CLI's dense models to the user's
    # cache.
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def _start(path: Path, *flags: str, cwd: Path) -> subprocess.Popen:
    """`prunetune search` in a process group of its own (with the Ray it starts)."""
    return subprocess.Popen([*CLI, str(path), *flags], env=_env(), cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _run(path: Path, *flags: str, cwd: Path, timeout: float = 600,
         env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, str(path), *flags], env=env or _env(), cwd=cwd, text=True,
                          capture_output=True, timeout=timeout)


def _one_run_per_trial(uri: str, name: str, trials: int, storage: Path) -> None:
    """The search ended FINISHED with one finished child run per trial, each run once."""
    client = MlflowClient(uri)
    parent = find_search(client, "prunetune", name)
    assert parent.info.status == "FINISHED"
    runs = search_trials(client, parent)
    assert len(runs) == trials and len({r.name for r in runs}) == trials, [
        (r.name, r.status) for r in runs]
    assert all(r.status == "finished" for r in runs)
    for r in runs:
        assert len(client.get_metric_history(r.run_id, "accuracy")) == 1
    finals = final_reports(storage / name)
    assert sorted(n for n in finals.values() if n) == [1] * trials, finals


# ---- one driver per search ----------------------------------------------------------------

def test_a_second_driver_of_a_running_search_is_refused_naming_the_first(tmp_path: Path) -> None:
    """While a driver holds the search (here: this process, through the driver's own lock), a
    second `prunetune search` of the same name and workdir stops in seconds with one line
    naming the holder, before it creates the MLflow store or any Tune state."""
    path = write_config(tmp_path, "held")
    cfg = load_config(path)
    storage = cfg.storage_dir()
    storage.mkdir(parents=True)
    with hold_search_lock(storage, "held", progress=False):
        t0 = time.monotonic()
        refused = _run(path, cwd=tmp_path, timeout=120)
        took = time.monotonic() - t0
    print(f"refused after {took:.1f} s (process start and imports included)")
    assert refused.returncode == EXIT_USER_ERROR, refused.stdout + refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in refused.stdout + refused.stderr, lines
    assert "search 'held' is already running" in lines[0]
    assert f"driver pid {os.getpid()} on host {socket.gethostname()}, since " in lines[0]
    assert not (cfg.workdir_path() / "mlflow.db").exists() and not (storage / "held").exists()
    # The lock is per search: another name in the same workdir is free, the same one is not.
    with hold_search_lock(storage, "held", progress=False):
        with hold_search_lock(storage, "other", progress=False):
            with pytest.raises(SearchError, match="'held' is already running"):
                with hold_search_lock(storage, "held", progress=False):
                    pass


@pytest.mark.slow
def test_two_drivers_started_together_run_the_search_once(tmp_path: Path) -> None:
    """Two `prunetune search` of one name started at the same moment on a fresh workdir: one
    runs the search, the other is refused in one line naming it (no sqlite traceback), and
    the search has exactly one child run per trial."""
    path = write_config(tmp_path, "twice", search={"trials": 4})
    cfg = load_config(path)
    procs = [_start(path, cwd=tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, EXIT_USER_ERROR], outs
    winner = procs[[p.returncode for p in procs].index(0)]
    refused = outs[[p.returncode for p in procs].index(EXIT_USER_ERROR)]
    assert "Traceback" not in refused and "sqlite" not in refused, refused
    assert f"search 'twice' is already running (driver pid {winner.pid} on host" in refused
    _one_run_per_trial(cfg.tracking_uri(), "twice", 4, cfg.storage_dir())


def _recorded(workdir: Path, pid: int) -> dict:
    path = workdir / SESSIONS_DIR / f"driver-{pid}.json"
    deadline = time.monotonic() + 60
    while not path.is_file():
        assert time.monotonic() < deadline, f"no record of the local Ray at {path}"
        time.sleep(0.2)
    return json.loads(path.read_text())


def _alive(entry: dict) -> bool:
    try:
        proc = psutil.Process(entry["pid"])
        return (abs(proc.create_time() - entry["created"]) < 0.01
                and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


@pytest.mark.slow
def test_a_killed_drivers_lock_and_leftover_ray_processes_are_taken_over(tmp_path: Path) -> None:
    """kill -9 of the driver alone (not its process group, as an OOM killer or a lost shell
    does it): Ray's agents outlive it. `--resume` takes the search's lock over, says so, stops
    exactly those leftovers (one line), and finishes the search with one run per trial."""
    path = write_config(tmp_path, "killed-alone", search={"trials": 6})
    cfg = load_config(path)
    proc = _start(path, cwd=tmp_path)
    _wait_for(cfg.tracking_uri(), "killed-alone", 2, proc)
    record = _recorded(cfg.workdir_path(), proc.pid)
    time.sleep(1.5)  # Tune saves its state every second
    proc.kill()
    proc.wait(timeout=60)
    time.sleep(5)
    left = [p for p in record["processes"] if _alive(p)]
    assert {p["name"] for p in left} >= {"ray::DashboardAgent"}, record["processes"]
    done = _run(path, "--resume", cwd=tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert f"its last driver (pid {proc.pid} on host {socket.gethostname()}" in out
    assert "takes it over" in out
    stopped = [line for line in out.splitlines() if "left running by a driver" in line]
    assert len(stopped) == 1 and f"pid {proc.pid}," in stopped[0], out
    assert "ray::DashboardAgent" in stopped[0] and record["session_dir"] in stopped[0]
    assert [p for p in record["processes"] if _alive(p)] == []
    _one_run_per_trial(cfg.tracking_uri(), "killed-alone", 6, cfg.storage_dir())


def test_only_the_processes_of_a_dead_drivers_record_are_stopped(tmp_path: Path) -> None:
    """`stop_leftovers` proves a process is its own before it stops it: the record's driver is
    dead, on this host, and the process has the recorded pid and start time. A leftover that
    ignores SIGTERM (as Ray's agents do) is killed; a live driver's processes, and a process
    whose pid no longer matches its recorded start, are left alone."""
    stubborn = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('ready', flush=True); time.sleep(600)")
    procs = [subprocess.Popen([sys.executable, "-c", stubborn], stdout=subprocess.PIPE,
                              text=True) for _ in range(3)]
    for p in procs:  # SIGTERM ignored from here on (a busy machine starts them slowly)
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_identity = {"pid": dead.pid, "created": psutil.Process(dead.pid).create_time()}
    dead.wait()
    me = psutil.Process()
    ident = [{"pid": p.pid, "created": psutil.Process(p.pid).create_time(), "name": "x"}
             for p in procs]
    folder = tmp_path / SESSIONS_DIR
    folder.mkdir()
    host = socket.gethostname()
    records = {
        "dead": {"host": host, "driver": dead_identity, "processes": [ident[0]]},
        "live": {"host": host, "driver": {"pid": me.pid, "created": me.create_time()},
                 "processes": [ident[1]]},
        "reused": {"host": host, "driver": dead_identity,
                   "processes": [{**ident[2], "created": ident[2]["created"] - 100}]},
        "other-host": {"host": host + "-elsewhere", "driver": dead_identity,
                       "processes": [ident[2]]},
    }
    for name, record in records.items():
        (folder / f"driver-{name}.json").write_text(json.dumps(record))
    try:
        lines = stop_leftovers(tmp_path)
        assert len(lines) == 1 and f"pid {dead.pid}," in lines[0], lines
        assert procs[0].wait(timeout=10) == -signal.SIGKILL  # SIGTERM ignored, then killed
        assert procs[1].poll() is None and procs[2].poll() is None
        # Records of dead drivers are done with; the live driver's and the other host's stay.
        assert sorted(p.name for p in folder.iterdir()) == ["driver-live.json",
                                                           "driver-other-host.json"]
    finally:
        for p in procs:
            p.kill()
            p.wait()


# ---- SIGTERM --------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("to", ["driver", "process group"])
def test_sigterm_ends_a_search_as_ctrl_c_does(to: str, tmp_path: Path) -> None:
    """SIGTERM to the driver (as Kubernetes sends it), or to its whole process group, Ray's
    processes included (as `timeout` and Slurm send it): Tune stops and saves, the parent run
    ends KILLED, the resume command is printed, exit EXIT_TERMINATED; the resume then
    finishes the search with one run per trial."""
    path = write_config(tmp_path, "termed", search={"trials": 6})
    cfg = load_config(path)
    proc = _start(path, cwd=tmp_path)
    _wait_for(cfg.tracking_uri(), "termed", 1, proc)
    if to == "driver":
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == EXIT_TERMINATED, out
    assert "continue it with: prunetune search CONFIG --resume --name termed" in out
    assert out.rstrip().splitlines()[-1] == "prunetune search: terminated (SIGTERM)", out
    assert "Traceback" not in out and "SIGABRT" not in out and "*** " not in out, out
    client = MlflowClient(cfg.tracking_uri())
    assert find_search(client, "prunetune", "termed").info.status == "KILLED"
    before = [t.metrics["accuracy"] for t in search_trials(
        client, find_search(client, "prunetune", "termed")) if "accuracy" in t.metrics]
    done = _run(path, "--resume", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    _one_run_per_trial(cfg.tracking_uri(), "termed", 6, cfg.storage_dir())
    # the resumed progress lines' "best" starts from the trials finished before the signal
    best_after = [float(b) for b in re.findall(r"\(best ([0-9.]+),", done.stdout)]
    assert before and best_after, (before, done.stdout)
    assert min(best_after) >= max(before) - 1e-4, (before, best_after)  # printed to 4 places


# ---- cluster addresses ----------------------------------------------------------------------

def test_a_cluster_address_nothing_answers_at_fails_in_seconds(tmp_path: Path) -> None:
    """`--address 127.0.0.1:PORT` with no Ray head there: one line naming the address and
    what to do, before any training, Ray start or store (Ray itself waits for ever)."""
    path = write_config(tmp_path, "nowhere")
    cfg = load_config(path)
    port = free_port()
    t0 = time.monotonic()
    done = _run(path, "--address", f"127.0.0.1:{port}", cwd=tmp_path, timeout=120)
    print(f"refused after {time.monotonic() - t0:.1f} s (process start and imports included)")
    assert done.returncode == EXIT_USER_ERROR, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert f"the Ray cluster at 127.0.0.1:{port} does not answer" in lines[0]
    assert "ray start --head" in lines[0] and "leave out --address" in lines[0]
    assert "[pretrain]" not in done.stdout and not cfg.workdir_path().exists()


@pytest.fixture
def ray_head() -> Iterator[str]:
    """A real Ray head (`clusters/local-cluster.sh start 0`, 1 CPU); its GCS address."""
    script = Path(__file__).resolve().parents[1] / "clusters" / "local-cluster.sh"
    folder = Path(tempfile.mkdtemp(prefix="pth", dir="/tmp"))
    env = {**os.environ, "PRUNETUNE_CLUSTER_DIR": str(folder), "CPUS_PER_NODE": "1",
           "OBJECT_STORE_BYTES": "200000000"}
    try:
        started = subprocess.run(["bash", str(script), "start", "0"], env=env, text=True,
                                 capture_output=True, timeout=300, check=False)
        assert started.returncode == 0, started.stdout + started.stderr
        yield dict(line.split("=", 1) for line in
                   (folder / "cluster.env").read_text().split())["RAY_ADDRESS"]
    finally:
        subprocess.run(["bash", str(script), "stop"], env=env, capture_output=True,
                       timeout=120, check=False)


@pytest.mark.slow
def test_address_auto_says_which_cluster_it_joined(ray_head: str, tmp_path: Path) -> None:
    path = write_config(tmp_path, "joined", search={"trials": 2, "max_concurrent": 1})
    env = {**_env(), "RAY_ADDRESS": ray_head, "RAY_AUTH_MODE": "token"}
    done = _run(path, "--address", "auto", cwd=tmp_path, env=env)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    lines = out.splitlines()
    joined = [i for i, line in enumerate(lines) if "joined the Ray cluster at" in line]
    first_trial = next(i for i, line in enumerate(lines) if line.startswith("[search] 1/2 "))
    assert len(joined) == 1 and joined[0] < first_trial, out
    assert lines[joined[0]] == (f"[search] joined the Ray cluster at {ray_head}: 1 node(s), "
                                "1 CPUs, 0 GPUs")


# ---- the local Ray a search starts ----------------------------------------------------------

@pytest.fixture(scope="module")
def driver_ray(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The local Ray exactly as a search's driver starts it (in this process); its workdir."""
    import ray

    from prunetune.orchestrator import driver

    folder = tmp_path_factory.mktemp("driver-ray")
    cfg = load_config(write_config(folder, "local"), {"ray.num_cpus": 1})
    driver._init_ray(cfg, False, folder)
    yield folder
    ray.shutdown()


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


def test_the_local_ray_listens_on_loopback_only(driver_ray: Path) -> None:
    """Every listening socket of the local Ray (GCS, raylet, agents, the metrics exporters
    that answer without Ray's token, workers, the driver's own) is on 127.0.0.1."""
    import ray

    @ray.remote(num_cpus=0)
    def started() -> int:  # a worker up, with its own server
        return os.getpid()

    ray.get(started.remote())
    me = psutil.Process()
    listening = {}
    for proc in [me, *me.children(recursive=True)]:
        try:
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    listening[f"{proc.name()}:{conn.laddr.port}"] = conn.laddr.ip
        except psutil.Error:
            continue
    assert len(listening) >= 6, listening
    exposed = {where: ip for where, ip in listening.items() if not _loopback(ip)}
    assert exposed == {}, f"Ray sockets reachable from other machines: {exposed}"
    # The driver recorded them, for the next start to stop should it be killed.
    record = json.loads((driver_ray / SESSIONS_DIR / f"driver-{os.getpid()}.json").read_text())
    assert {"gcs_server", "raylet", "ray::DashboardAgent"} <= {
        p["name"] for p in record["processes"]}


def test_trial_workers_run_at_the_drivers_priority(driver_ray: Path) -> None:
    """Ray's default lowers its workers' priority by 15 (`worker_niceness`): any other
    process on the machine would starve the trials."""
    import ray

    @ray.remote(num_cpus=1)
    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, 0)

    assert ray.get(niceness.remote()) == os.getpriority(os.PRIO_PROCESS, 0)
