"""Ray Jobs API: submit a search to a running Ray cluster, follow it, stop it.

A submission carries its config in the job's runtime environment: a temporary folder holding
`config.yaml` (the user's file with the command-line overrides merged in) becomes the job's
`working_dir`, and the entrypoint is `prunetune search config.yaml --address auto` on the head
node. The nodes must have prunetune installed (see clusters/).
"""

from __future__ import annotations

import asyncio
import os
import shlex
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from prunetune.errors import CLIError, ClusterError, JobNotFoundError

from .config import apply_overrides, load_config

__all__ = [
    "TERMINAL_STATUSES",
    "ClusterError",
    "JobNotFoundError",
    "SubmittedJob",
    "follow_logs",
    "job_info",
    "jobs_client",
    "normalize_address",
    "quote_command",
    "server_command",
    "server_env",
    "stop_job",
    "submit_search",
    "wait_for_http",
    "wait_for_job",
]

TERMINAL_STATUSES = ("SUCCEEDED", "FAILED", "STOPPED")
DEFAULT_DASHBOARD_PORT = 8265
_ADDRESS_ENV = ("RAY_API_SERVER_ADDRESS", "RAY_DASHBOARD_ADDRESS")


@dataclass
class SubmittedJob:
    job_id: str
    address: str
    entrypoint: str
    config: dict[str, Any]


def normalize_address(address: str | None) -> str:
    """`http://HOST:PORT` of a cluster's Jobs API (the dashboard) from what the user gave.

    Accepts `http(s)://HOST[:PORT]` or `HOST[:PORT]` (port 8265 when left out); None falls back
    to $RAY_API_SERVER_ADDRESS, then $RAY_DASHBOARD_ADDRESS.
    """
    if not address:
        address = next((os.environ[k] for k in _ADDRESS_ENV if os.environ.get(k)), None)
    if not address:
        raise ClusterError("no cluster address: pass --address http://HEAD:8265 (the head node's "
                           "dashboard URL) or set RAY_API_SERVER_ADDRESS")
    if "://" not in address:
        address = f"http://{address}"
    parsed = urlparse(address)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ClusterError(f"--address must look like http://HEAD:8265, got {address!r}")
    try:
        port = parsed.port or DEFAULT_DASHBOARD_PORT
    except ValueError as err:
        raise ClusterError(f"--address {address!r} has a bad port: {err}") from None
    return f"{parsed.scheme}://{parsed.hostname}:{port}"


def _reachable(address: str, timeout: float) -> None:
    parsed = urlparse(address)
    try:
        with socket.create_connection((parsed.hostname, parsed.port), timeout=timeout):
            pass
    except OSError as err:
        raise ClusterError(
            f"cannot reach the Ray Jobs API at {address}: {err}. --address must be the dashboard "
            f"URL of a running Ray head node (http://HEAD:{DEFAULT_DASHBOARD_PORT}); start one "
            "(clusters/local-cluster.sh start 1, ray up clusters/aws.yaml, ...) or check the "
            "host, the port and any firewall in between") from None


def use_ray_token_if_present() -> None:
    """Send Ray's auth token when there is one and RAY_AUTH_MODE is unset, as `ray start` and
    a bare `ray.init()` do (the Jobs SDK, and `ray.init` given an address, send it only when
    RAY_AUTH_MODE=token)."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication
        return
    import logging

    log = logging.getLogger(maybe_enable_token_auth_if_token_available.__module__)
    level = log.level
    log.setLevel(logging.ERROR)  # its "token authentication is enabled" notice is noise here
    try:
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    finally:
        log.setLevel(level)


def jobs_client(address: str | None, *, timeout: float = 10.0) -> Any:
    """A `JobSubmissionClient` for the cluster, after checking the address answers."""
    from ray.job_submission import JobSubmissionClient

    url = normalize_address(address)
    _reachable(url, timeout)
    use_ray_token_if_present()
    try:
        return JobSubmissionClient(url)
    except Exception as err:  # noqa: BLE001 - the SDK raises ConnectionError / RuntimeError
        if "401" in str(err) or "403" in str(err) or "uthentication" in str(err):
            raise ClusterError(
                f"the cluster at {url} requires Ray token authentication and refused this "
                f"client's token ({str(err).splitlines()[0]}); set RAY_AUTH_MODE=token and put "
                "the cluster's token in ~/.ray/auth_token or $RAY_AUTH_TOKEN") from None
        raise ClusterError(
            f"{url} answers but is not a Ray Jobs API ({err}). Give the dashboard port "
            f"(default {DEFAULT_DASHBOARD_PORT}), not the GCS port (6379), and make sure the head "
            "runs the dashboard (pip install 'ray[default]')") from None


def _call(fn: Callable[..., Any], job_id: str, *args: Any) -> Any:
    try:
        return fn(job_id, *args)
    except RuntimeError as err:
        if "does not exist" in str(err) or "404" in str(err):
            raise JobNotFoundError(f"no job {job_id!r} on this cluster; list the jobs with "
                                   "`ray job list --address ...`") from None
        raise ClusterError(f"the Jobs API refused the request for job {job_id!r}: {err}") from None


def submit_search(config_path: str | os.PathLike, address: str | None, *,
                  overrides: dict[str, Any] | None = None, submission_id: str | None = None,
                  client: Any = None) -> SubmittedJob:
    """Submit `prunetune search` of one config file to a cluster through the Jobs API.

    The config is validated here first (a bad field fails before anything is submitted). A
    tracking URI that is not a server (`http(s)://`) would put MLflow inside the job's
    temporary working dir on the head node, so a warning says so.
    """
    overrides = dict(overrides or {})
    overrides.pop("ray.address", None)
    cfg = load_config(config_path, overrides)  # raises ConfigError naming the bad field
    raw = yaml.safe_load(Path(config_path).read_text()) or {}
    raw = apply_overrides(raw, overrides)
    raw.setdefault("ray", {})["address"] = None
    if not (cfg.tracking.uri or "").startswith(("http://", "https://", "databricks")):
        print("prunetune submit: warning: tracking.uri is not an MLflow server (http://...); the "
              "runs will be written inside the job's working dir on the head node. Pass "
              "--tracking-uri http://HOST:5000 (see `prunetune server`).", flush=True)
    client = client or jobs_client(address)
    entrypoint = "prunetune search config.yaml --address auto"
    with tempfile.TemporaryDirectory(prefix="prunetune-job-") as tmp:
        (Path(tmp) / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        runtime_env = {"working_dir": tmp, "env_vars": {"PYTHONUNBUFFERED": "1"}}
        metadata = {"prunetune.config": Path(config_path).name,
                    "prunetune.search": str(cfg.name or "")}
        try:
            job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env,
                                       submission_id=submission_id, metadata=metadata)
        except RuntimeError as err:
            raise ClusterError(f"the cluster refused the job: {err}") from None
    return SubmittedJob(job_id=job_id, address=normalize_address(address), entrypoint=entrypoint,
                        config=raw)


def job_info(client: Any, job_id: str) -> Any:
    """The Jobs API's `JobDetails` of one job (status, message, entrypoint, times)."""
    return _call(client.get_job_info, job_id)


def stop_job(client: Any, job_id: str) -> bool:
    """Ask the cluster to stop a job; False when it had already ended."""
    return bool(_call(client.stop_job, job_id))


def follow_logs(client: Any, job_id: str, write: Callable[[str], Any]) -> None:
    """Stream a job's log lines to `write` until the job ends."""
    _call(client.get_job_status, job_id)  # unknown job -> JobNotFoundError

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    asyncio.run(tail())


def wait_for_job(client: Any, job_id: str, *, timeout_s: float | None = None,
                 poll_s: float = 2.0) -> str:
    """Block until the job ends; returns its final status."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        status = str(_call(client.get_job_status, job_id))
        if status in TERMINAL_STATUSES:
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise ClusterError(f"job {job_id} still {status} after {timeout_s:.0f}s")
        time.sleep(poll_s)


# ---------------------------------------------------------------------------------------------
# MLflow tracking server


def server_command(*, host: str = "127.0.0.1", port: int = 5000,
                   backend_store_uri: str | None = None,
                   artifacts_destination: str | None = None, workdir: str = "runs",
                   python: str | None = None) -> list[str]:
    """The `mlflow server` command line: a database backend and a served artifact root.

    Defaults: `sqlite:///<workdir>/mlflow-server.db` and `<workdir>/mlartifacts`. Clients log
    artifacts through the server (`--serve-artifacts`), so they need no access to its disk.
    """
    import sys

    if not 0 < port < 65536:  # before any folder is made
        raise CLIError(f"--port must lie in 1..65535, got {port}")
    base = Path(workdir).expanduser().resolve()
    if backend_store_uri is None:
        base.mkdir(parents=True, exist_ok=True)
        backend_store_uri = f"sqlite:///{base / 'mlflow-server.db'}"
    if artifacts_destination is None:
        artifacts_destination = str(base / "mlartifacts")
    if "://" not in artifacts_destination:
        Path(artifacts_destination).expanduser().mkdir(parents=True, exist_ok=True)
        artifacts_destination = str(Path(artifacts_destination).expanduser().resolve())
    return [python or sys.executable, "-m", "mlflow", "server", "--host", host, "--port",
            str(port), "--backend-store-uri", backend_store_uri, "--serve-artifacts",
            "--artifacts-destination", artifacts_destination, "--workers", "1"]


def server_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for `mlflow server`: its GenAI job runner (a pool of huey worker processes,
    unused by prunetune) is off unless MLFLOW_SERVER_ENABLE_JOB_EXECUTION says otherwise."""
    env = dict(os.environ if base is None else base)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return env


def wait_for_http(url: str, *, timeout_s: float = 60.0, alive: Callable[[], bool] | None = None,
                  ) -> None:
    """Poll `url` until it answers 200; `alive()` False (the server process died) fails fast."""
    import urllib.request

    deadline, last = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise ClusterError(f"the server for {url} exited before it answered")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError as err:
            last = str(err)
        time.sleep(0.5)
    raise ClusterError(f"{url} did not answer within {timeout_s:.0f}s ({last})")


def quote_command(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)
