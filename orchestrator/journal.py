"""MLflow writes that survive a tracking-server outage: the tracker's one writer.

Each write is tried at once. When the tracking server does not answer, it is kept, with every
write after it (in order), in a journal on disk (`ops.jsonl` plus the artifact files), and a
background thread retries the journal's head until the server answers again; Tune's loop never
waits on the server. A run created during the outage gets a placeholder id (`pending-N`) that
later writes name and that the journal resolves to the real id once the run exists. A journal
left behind by a driver that ended during an outage is picked up and written by the next one
(`prunetune search CONFIG --resume`). Stores other than a server (sqlite) are written
directly: an error there is an error.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from prunetune.files import atomic_write_json

__all__ = ["TrackingJournal"]

logger = logging.getLogger(__name__)

PENDING = "pending-"
_OPS_FILE = "ops.jsonl"
# One journal per folder in a process: a resumed Tune experiment runs the tracker it restored,
# the driver reads through its own; both must write through the same journal, in order.
_OPEN: dict[str, TrackingJournal] = {}
_OPEN_LOCK = threading.Lock()


def _is_outage(err: Exception) -> bool:
    """A write failed because the server did not answer (not because it refused the write)."""
    text = f"{type(err).__name__}: {err}".lower()
    return any(s in text for s in ("connection", "max retries", "timed out", "timeout",
                                   "failed to establish", "remote end closed",
                                   "temporarily unavailable", "503", "502", "504"))


class TrackingJournal:
    """The MlflowClient writes the tracker makes, kept on disk in `folder` while the server
    at `client`'s URI does not answer (see the module docstring). `retry_s`: seconds between
    retries of the journal's head."""

    def __init__(self, client: MlflowClient, folder: Path, *, buffered: bool,
                 retry_s: float = 5.0) -> None:
        self.client, self.folder, self.buffered, self.retry_s = client, folder, buffered, retry_s
        self._lock = threading.RLock()
        self._ops: list[dict[str, Any]] = []
        self._ids: dict[str, str] = {}  # placeholder -> real run id
        self._next = 0
        self._thread: threading.Thread | None = None
        self._load()

    @classmethod
    def open(cls, client: MlflowClient, folder: Path, *, buffered: bool) -> TrackingJournal:
        """The process's journal for `folder` (created on first use)."""
        key = str(Path(folder).resolve())
        with _OPEN_LOCK:
            if key not in _OPEN:
                _OPEN[key] = cls(client, Path(folder), buffered=buffered)
            return _OPEN[key]

    # -- the writes the tracker makes -----------------------------------------------------------
    def create_run(self, experiment_id: str, run_name: str, tags: dict[str, str]) -> str:
        ref = f"{PENDING}{self._new_ref()}"
        self._write({"op": "create_run", "ref": ref, "experiment_id": experiment_id,
                     "run_name": run_name, "tags": tags})
        return self.resolve(ref)

    def log_batch(self, run_id: str, metrics: Iterable[Metric] = (),
                  params: Iterable[Param] = (), tags: Iterable[RunTag] = ()) -> None:
        self._write({"op": "log_batch", "run": run_id,
                     "metrics": [[m.key, m.value, m.timestamp, m.step] for m in metrics],
                     "params": [[p.key, p.value] for p in params],
                     "tags": [[t.key, t.value] for t in tags]})

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self.log_batch(run_id, tags=[RunTag(key, str(value))])

    def set_terminated(self, run_id: str, status: str) -> None:
        self._write({"op": "set_terminated", "run": run_id, "status": status})

    def update_run(self, run_id: str, status: str) -> None:
        self._write({"op": "update_run", "run": run_id, "status": status})

    def delete_run(self, run_id: str) -> None:
        self._write({"op": "delete_run", "run": run_id})

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self._artifact(run_id, artifact_file, lambda path: path.write_text(text))

    def log_dict(self, run_id: str, obj: Any, artifact_file: str) -> None:
        self._artifact(run_id, artifact_file,
                       lambda path: path.write_text(json.dumps(obj, indent=2, default=str)))

    def log_figure(self, run_id: str, fig: Any, artifact_file: str) -> None:
        self._artifact(run_id, artifact_file, lambda path: fig.savefig(path))

    # -- state ----------------------------------------------------------------------------------
    def resolve(self, run_id: str) -> str:
        """The real id of a run (a placeholder's once its run exists; else the placeholder)."""
        with self._lock:
            return self._ids.get(run_id, run_id)

    @property
    def pending(self) -> int:
        """Writes kept for the server, not written yet."""
        with self._lock:
            return len(self._ops)

    def flush(self, timeout_s: float) -> bool:
        """Try to write what is kept until it is all written or `timeout_s` passed; True when
        nothing is left."""
        deadline = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < deadline:
            if not self._drain():
                time.sleep(min(self.retry_s, max(0.0, deadline - time.monotonic())))
        return not self.pending

    # -- internals ------------------------------------------------------------------------------
    def _new_ref(self) -> int:
        with self._lock:
            self._next += 1
            return self._next

    def _artifact(self, run_id: str, artifact_file: str, write: Any) -> None:
        path = Path(artifact_file)
        with self._lock:
            local = self.folder / "files" / str(self._new_ref()) / path.name
        local.parent.mkdir(parents=True, exist_ok=True)
        write(local)
        self._write({"op": "log_artifact", "run": run_id, "local": str(local),
                     "artifact_path": str(path.parent) if str(path.parent) != "." else None})

    def _write(self, op: dict[str, Any]) -> None:
        with self._lock:
            if not self._ops:
                try:
                    self._apply(op)
                    return
                except Exception as err:
                    if not (self.buffered and _is_outage(err)):
                        if op["op"] == "log_artifact":  # refused: its copy is not kept
                            shutil.rmtree(Path(op["local"]).parent, ignore_errors=True)
                        raise
                    logger.warning("the MLflow tracking server does not answer (%s); keeping "
                                   "its writes in %s until it does", str(err)[:160],
                                   self.folder)
            self._ops.append(op)
            self._save()
            self._start_retries()

    def _apply(self, op: dict[str, Any]) -> None:
        kind = op["op"]
        if kind == "create_run":
            run = self.client.create_run(op["experiment_id"], run_name=op["run_name"],
                                         tags={k: self.resolve(v) for k, v in op["tags"].items()})
            self._ids[op["ref"]] = run.info.run_id
            return
        run_id = self.resolve(op["run"])
        if kind == "log_batch":
            self.client.log_batch(run_id, metrics=[Metric(*m) for m in op["metrics"]],
                                  params=[Param(*p) for p in op["params"]],
                                  tags=[RunTag(*t) for t in op["tags"]])
        elif kind == "set_terminated":
            self.client.set_terminated(run_id, status=op["status"])
        elif kind == "update_run":
            self.client.update_run(run_id, status=op["status"])
        elif kind == "delete_run":
            self.client.delete_run(run_id)
        elif kind == "log_artifact":
            self.client.log_artifact(run_id, op["local"], op["artifact_path"])
            shutil.rmtree(Path(op["local"]).parent, ignore_errors=True)

    def _drain(self) -> bool:
        """Write the kept writes in order until one fails; True when all are written."""
        with self._lock:
            while self._ops:
                try:
                    self._apply(self._ops[0])
                except Exception as err:  # still down (or refused: kept for a person)
                    logger.debug("MLflow write still failing: %s", err)
                    return False
                self._ops.pop(0)
                self._save()
            return True

    def _start_retries(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return

        def retry() -> None:
            while self.pending:
                time.sleep(self.retry_s)
                if self._drain():
                    logger.warning("the MLflow tracking server answers again; its kept writes "
                                   "are written")

        self._thread = threading.Thread(target=retry, name="mlflow-journal", daemon=True)
        self._thread.start()

    def _save(self) -> None:
        """The kept writes and the placeholder ids, on disk (atomically), or no file when
        nothing is kept."""
        path = self.folder / _OPS_FILE
        if not self._ops:
            path.unlink(missing_ok=True)
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"ops": self._ops, "ids": self._ids, "next": self._next})

    def _load(self) -> None:
        """Pick up the writes a driver that ended during an outage left behind."""
        path = self.folder / _OPS_FILE
        if path.is_file():
            state = json.loads(path.read_text())
            self._ops, self._ids = list(state["ops"]), dict(state["ids"])
            self._next = int(state["next"])
