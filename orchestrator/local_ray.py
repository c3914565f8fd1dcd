"""The local Ray a search starts when it joins no cluster, and what a killed driver left of it.

- Bound to 127.0.0.1: `ray.init` turns a loopback node address into the machine's reachable
  one, so every Ray server (GCS, raylet, agents, workers, the Prometheus metrics exporters,
  which answer without Ray's token) would listen on every interface. A search's local Ray is
  for this machine only, so it starts as Ray's single-machine mode starts it (the node address
  is 127.0.0.1, and every server binds to it).
- Trial workers at the driver's priority: Ray starts workers `nice`d by 15 (its
  `worker_niceness`), so any ordinary process on the machine starves the search.
- A record of its processes in the workdir (`.ray-sessions/driver-PID.json`): Ray's GCS and
  raylet die with the driver, its dashboard and runtime-env agents do not (they stay, orphaned,
  ignoring SIGTERM, ~235 MB). The next search started in the same workdir stops the processes
  of a record whose driver has died, and only those: each is identified by its pid and start
  time, on this host, so a process that reused a pid is never touched.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import time
from pathlib import Path
from typing import Any

import psutil

from prunetune.files import atomic_write_json

__all__ = ["LOCAL_NODE_IP", "SESSIONS_DIR", "record_local_ray", "start_local_ray",
           "stop_leftovers"]

LOCAL_NODE_IP = "127.0.0.1"
SESSIONS_DIR = ".ray-sessions"  # in the workdir

# Ray's worker processes lower their priority by this much; 0 keeps the raylet's, which is
# the driver's.
_SYSTEM_CONFIG = {"worker_niceness": 0}


def start_local_ray(num_cpus: int | None, runtime_env: dict[str, Any]) -> None:
    """`ray.init` of a local Ray bound to 127.0.0.1, its workers at the driver's priority."""
    import ray
    from ray._private import ray_constants

    # Ray's single-machine mode (its default on macOS and Windows): the node address is the
    # loopback one. Read by `ray.init` only while it starts the node; the started node then
    # answers for its own address.
    single_machine = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    # SIGTERM to the driver's whole process group (`timeout`, Slurm's scancel) would reach
    # Ray's processes too: the GCS and raylet would die while the driver ends the search as
    # Ctrl-C ends it (Tune then waits 60 s for the GCS and the driver dies, exit 1). Processes
    # inherit the signal mask of the thread that starts them: with SIGTERM blocked, they leave
    # it to the driver, which stops them as it ends (they die with it, killed or not: Ray's
    # fate sharing; the agents that do not, the next start stops).
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env=runtime_env,
                 log_to_driver=False, logging_level=logging.WARNING,
                 _system_config=_SYSTEM_CONFIG)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        ray_constants.ENABLE_RAY_CLUSTER = single_machine


def _identity(proc: psutil.Process) -> dict[str, Any]:
    return {"pid": proc.pid, "created": proc.create_time(), "name": proc.name()}


def record_local_ray(workdir: Path) -> Path | None:
    """Write the record of the local Ray this driver started (its processes, by pid and start
    time); None when this driver started none."""
    import ray

    node = ray._private.worker._global_node
    if node is None or not node.head:
        return None
    me = psutil.Process()
    processes = []
    for child in me.children(recursive=True):
        try:
            processes.append(_identity(child))
        except psutil.Error:  # ended meanwhile
            continue
    path = workdir / SESSIONS_DIR / f"driver-{me.pid}.json"
    atomic_write_json(path, {"host": socket.gethostname(), "driver": _identity(me),
                             "session_dir": node.get_session_dir_path(),
                             "processes": processes}, indent=1)
    return path


def _same_process(entry: dict[str, Any]) -> psutil.Process | None:
    """The process `entry` describes, if it still runs (same pid and start time)."""
    try:
        proc = psutil.Process(int(entry["pid"]))
        if abs(proc.create_time() - float(entry["created"])) > 0.01:
            return None  # the pid was reused
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc
    except (psutil.Error, KeyError, TypeError, ValueError):
        return None


def stop_leftovers(workdir: Path) -> list[str]:
    """Stop the Ray processes that drivers of this workdir started and left when they died;
    one line per dead driver whose processes were stopped (empty when there was none)."""
    folder = workdir / SESSIONS_DIR
    host, lines = socket.gethostname(), []
    for path in sorted(folder.glob("driver-*.json")) if folder.is_dir() else []:
        try:
            record = json.loads(path.read_text())
            if record["host"] != host:  # a workdir shared between machines: not ours to judge
                continue
            if _same_process(record["driver"]) is not None:
                continue  # its driver still runs
            left = [p for p in map(_same_process, record["processes"]) if p is not None]
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)  # not a record this module wrote whole
            continue
        if left:
            lines.append(_stop(left, record))
        path.unlink(missing_ok=True)
    return lines


def _gone(proc: psutil.Process) -> bool:
    try:  # a killed orphan stays a zombie until its new parent reaps it
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    alive = [p for p in procs if not _gone(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if not _gone(p)]
    return alive


def _stop(procs: list[psutil.Process], record: dict[str, Any]) -> str:
    """SIGTERM, then SIGKILL for what is still there after 3 s (Ray's agents ignore SIGTERM)."""
    names, memory = set(), 0
    for proc in procs:
        try:
            names.add(proc.name())
            memory += proc.memory_info().rss
            proc.terminate()
        except psutil.Error:
            continue
    for proc in _wait_gone(procs, 3):
        try:
            proc.kill()
        except psutil.Error:
            continue
    _wait_gone(procs, 3)
    driver = record["driver"]
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(driver["created"])))
    return (f"stopped {len(procs)} Ray process(es) ({', '.join(sorted(names))}, "
            f"{memory / 2**20:.0f} MB) left running by a driver of this workdir that died "
            f"(pid {driver['pid']}, started {since}; Ray session {record.get('session_dir')})")
