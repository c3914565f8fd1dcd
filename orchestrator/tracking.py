"""MLflow tracking through a driver-side Ray Tune callback: the only MLflow writer.

One parent run per search (config, space, dense baseline, and at the end the results CSV, the
Pareto plot and the best policy) and one nested child run per trial (policy summary as params,
the full policy JSON, per-epoch metrics, final metrics, status and node), tagged with the
search stage it ran in. Child runs are keyed by the Tune trial id, so a resumed search reuses
them instead of logging duplicates. The search's summary on the parent run is written once,
by the driver after its last stage (`finish_search`), from the child runs themselves.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from prunetune.errors import SearchError

from .journal import TrackingJournal
from .mlflow_params import (
    dense_metric_names,
    flatten,
    get_or_create_experiment,
    tracking_failed,
    unit_params,
)
from .mlflow_ui import run_url, set_up_ui, ui_url, ui_view_state
from .results import (
    TAG_LATENCY_CLOCK,
    TAG_ROLE,
    TAG_SEARCH,
    TAG_STAGE,
    TAG_STATUS,
    TAG_TRIAL,
    TrialRecord,
    deciding_trials,
    pareto_front,
    trial_name,
)

__all__ = ["BEST_POLICY_PICTURE", "POLICY_PICTURE", "MLflowTracker", "flatten",
           "get_or_create_experiment", "run_url", "set_up_ui", "tracking_failed", "ui_url",
           "ui_view_state", "unit_params"]

logger = logging.getLogger(__name__)

_FINAL_METRICS = ("accuracy", "val_loss", "accuracy_drop", "flops", "params", "flops_ratio",
                  "params_ratio", "sparsity", "latency_ms", "dense_latency_ms", "speedup",
                  "measured_latency_ms", "measured_dense_latency_ms", "finetune_s")
_EPOCH_METRICS = ("accuracy", "val_loss", "train_loss")
# MLflow takes at most 100 params in one log_batch call.
_PARAMS_PER_BATCH = 100
POLICY_PICTURE = "policy.png"  # per finished trial: ratio and width per layer, by scheme
POLICY_FILE = "policy.json"  # per trial: the policy it ran
BEST_POLICY_PICTURE = "best_policy.png"  # on the parent run


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class MLflowTracker(Callback):
    """Ray Tune callback logging a search to MLflow (parent run + one child run per trial)."""

    def __init__(self, *, tracking_uri: str, experiment: str, search_name: str,
                 config: dict[str, Any], space_description: dict[str, Any],
                 dense_metrics: dict[str, float], artifact_root: str | None = None,
                 maximize: str = "accuracy", minimize: str = "latency_ms",
                 stage: str = "trial", epochs: float | None = None,
                 journal_dir: str | None = None) -> None:
        # Where writes wait while a tracking server does not answer (`journal.py`); None: a
        # temporary folder (nothing survives this process then).
        self.journal_dir = journal_dir
        self.stage = stage  # the stage this callback's experiment runs (`results.STAGES`)
        self.epochs = epochs  # its trials' fine-tuning epochs, recorded on each child run
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.search_name = search_name
        self.config = config
        self.space_description = space_description
        self.dense_metrics = dense_metrics
        self.artifact_root = artifact_root
        self.maximize, self.minimize = maximize, minimize
        self.parent_run_id: str | None = None
        self._children: dict[str, str] = {}  # trial id -> run id
        self._names: dict[str, str] = {}  # trial id -> run name (`trial-007`)
        self._finished: set[str] = set()  # trial ids whose final result is logged
        self.best_finished = -math.inf  # the best accuracy among them (progress after resume)
        self._seeds: dict[str, str] = {}  # trial id -> its seed param (which suggestion it is)
        # Child runs an artifact of which the store refused: they stay open until `repair`.
        self._missing: set[str] = set()
        self._client: MlflowClient | None = None
        self._journal: TrackingJournal | None = None

    # The client holds connections and the journal a thread; a restored Tuner unpickles this
    # callback without them (the journal's kept writes are on disk).
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_client"] = state["_journal"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A search saved by an earlier prunetune lacks the attributes added since; they take
        # their defaults so that `--resume` still works after an upgrade.
        self.__dict__.update(journal_dir=None, stage="trial", epochs=None, _names={},
                             _seeds={}, _finished=set(), _missing=set(), _client=None,
                             _journal=None, best_finished=-math.inf)
        self.__dict__.update(state)

    @property
    def client(self) -> MlflowClient:
        """For reading; every write goes through `journal`."""
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    @property
    def journal(self) -> TrackingJournal:
        if self._journal is None:
            folder = (Path(self.journal_dir) if self.journal_dir else
                      Path(tempfile.mkdtemp(prefix="prunetune-journal-")))
            self._journal = TrackingJournal.open(
                self.client, folder,
                buffered=self.tracking_uri.startswith(("http://", "https://")))
        return self._journal

    # -- parent run ---------------------------------------------------------------------------
    def start_search(self) -> str:
        """Create the parent run, or find it again when the search is resumed."""
        if self.parent_run_id is not None:
            return self.parent_run_id
        exp_id = get_or_create_experiment(self.client, self.experiment, self.artifact_root)
        found = self._find_parent(exp_id)
        self._exp_id = exp_id
        if found is not None:
            self.parent_run_id = found
            self.journal.update_run(self.parent_run_id, status="RUNNING")
            self._sync_children()
            return self.parent_run_id
        self.parent_run_id = self.journal.create_run(
            exp_id, self.search_name, tags={TAG_ROLE: "search", TAG_SEARCH: self.search_name})
        set_up_ui(self.client, exp_id)
        params = flatten(self.config)
        self.journal.log_batch(self.parent_run_id,
                               params=[Param(k, v[:6000]) for k, v in params.items()])
        self._log_search_files(self.parent_run_id, only=("config.json", "space.json"),
                               refused_ok=True)
        self._log_metrics(self.parent_run_id, dense_metric_names(self.dense_metrics))
        return self.parent_run_id

    def _find_parent(self, exp_id: str) -> str | None:
        found = self.client.search_runs(
            [exp_id], filter_string=(f"tags.`{TAG_ROLE}` = 'search' and "
                                     f"tags.`{TAG_SEARCH}` = '{self.search_name}'"),
            max_results=1)
        return found[0].info.run_id if found else None

    def find_search(self) -> str:
        """The parent run's id, without changing its status (a resumed search's driver holds a
        fresh tracker: Tune ran the one it pickled with the experiment)."""
        if self.parent_run_id is None:
            exp = self.client.get_experiment_by_name(self.experiment)
            found = None if exp is None else self._find_parent(exp.experiment_id)
            if found is None:
                raise SearchError(f"search {self.search_name!r} has no parent run in "
                                  f"{self.tracking_uri} (experiment {self.experiment!r})")
            self.parent_run_id, self._exp_id = found, exp.experiment_id
        return self.parent_run_id

    def _experiment_id(self) -> str:
        if getattr(self, "_exp_id", None) is None:
            self._exp_id = self.client.get_run(
                self.journal.resolve(self.find_search())).info.experiment_id
        return self._exp_id

    def _sync_children(self) -> None:
        """Re-read the child runs (and which trials finished) from MLflow: a resumed search's
        callback was pickled at Tune's last checkpoint and may have missed the last results."""
        parent = self.journal.resolve(self.parent_run_id)
        children = self.client.search_runs(
            [self._experiment_id()], filter_string=(f"tags.`mlflow.parentRunId` = '{parent}' "
                                                    f"and tags.`{TAG_STAGE}` = '{self.stage}'"),
            max_results=10000)
        self._children = {r.data.tags[TAG_TRIAL]: r.info.run_id for r in children
                          if TAG_TRIAL in r.data.tags}
        self._names = {r.data.tags[TAG_TRIAL]: r.info.run_name for r in children
                       if TAG_TRIAL in r.data.tags}
        finished = [r for r in children if r.data.tags.get(TAG_STATUS) == "finished"]
        self._finished = {r.data.tags[TAG_TRIAL] for r in finished}
        self.best_finished = max((r.data.metrics["accuracy"] for r in finished
                                  if "accuracy" in r.data.metrics), default=-math.inf)
        self._seeds = {r.data.tags[TAG_TRIAL]: r.data.params["seed"] for r in children
                       if TAG_TRIAL in r.data.tags and "seed" in r.data.params}

    def setup(self, **info: Any) -> None:
        if self.parent_run_id is None:
            self.start_search()
        else:  # a resumed search
            self.journal.update_run(self.parent_run_id, status="RUNNING")
            self._sync_children()

    def mark_interrupted(self) -> None:
        """The search stopped before its end (Ctrl-C, a Ray failure): its parent run and the
        child runs of the trials that were running end KILLED, tagged `interrupted`, until a
        resume picks them up again; a run whose final result is in ends FINISHED."""
        parent = self.find_search()
        open_runs = self.client.search_runs(
            [self._experiment_id()],
            filter_string=(f"tags.`mlflow.parentRunId` = '{self.journal.resolve(parent)}' "
                           "and attributes.status = 'RUNNING'"), max_results=10000)
        for run in open_runs:
            if run.data.tags.get(TAG_STATUS) == "finished":  # its final result is in
                # FINISHED only with its artifacts: else KILLED until a resume writes them
                whole = not self.missing_artifacts(run.info.run_id, finished=True)
                self.journal.set_terminated(run.info.run_id,
                                            status="FINISHED" if whole else "KILLED")
            else:
                self.journal.set_tag(run.info.run_id, TAG_STATUS, "interrupted")
                self.journal.set_terminated(run.info.run_id, status="KILLED")
        self.journal.set_terminated(parent, status="KILLED")

    def _done_before(self, trial: Any) -> bool:
        """The trial's final result is already in MLflow. Tune re-runs a trial whose result
        arrived just before an interruption but after its last checkpoint; MLflow keeps the
        first final result, so each trial has exactly one."""
        return trial.trial_id in self._finished

    # -- child runs ---------------------------------------------------------------------------
    def _adopt(self, trial: Any, known: set[str]) -> str | None:
        """The child run of an earlier trial that this one repeats, taken over by it: after
        the driver died, Tune's saved state may lack trials it had started (and even finished);
        resumed, the searcher asks for the same suggestion (the same seed) under a new trial
        id. That trial gets the run, so each suggestion has exactly one; a repeat of a finished
        one keeps the first result."""
        seed = (trial.config or {}).get("seed")
        if seed is None:
            return None
        old = next((t for t, s in self._seeds.items()
                    if s == str(seed) and t not in known and t != trial.trial_id), None)
        if old is None:
            return None
        run_id = self._children.pop(old)
        self._children[trial.trial_id] = run_id
        self._names[trial.trial_id] = self._names.pop(old, trial.trial_id)
        self._seeds[trial.trial_id] = self._seeds.pop(old)
        if old in self._finished:
            self._finished.add(trial.trial_id)
        self.journal.set_tag(run_id, TAG_TRIAL, trial.trial_id)
        return run_id

    def _child(self, trial: Any, known: set[str] | None = None,
               name: str | None = None) -> str:
        """The trial's child run, created on first use (or adopted, see `_adopt`) and named
        `name` (default: the next trial number). `known`: the trial ids Tune has now."""
        run_id = self._children.get(trial.trial_id)
        if run_id is not None:
            return run_id
        run_id = self._adopt(trial, known or {trial.trial_id})
        if run_id is not None:
            return run_id
        parent = self.start_search()
        exp_id = self._experiment_id()
        config = trial.config or {}
        # finalists by their rank among the proxy trials, others in the order Tune started them
        name = name or trial_name(int(config.get("finalist", len(self._children) + 1)),
                                  self.stage)
        tags = {"mlflow.parentRunId": parent, TAG_ROLE: "trial", TAG_SEARCH: self.search_name,
                TAG_TRIAL: trial.trial_id, TAG_STATUS: "running", TAG_STAGE: self.stage}
        if "proxy_trial" in config:  # a finalist: the proxy trial whose policy it fine-tunes
            tags["prunetune.proxy_trial"] = str(config["proxy_trial"])
        run_id = self.journal.create_run(exp_id, name, tags=tags)
        self._children[trial.trial_id] = run_id
        self._names[trial.trial_id] = name
        params: dict[str, str] = {"dim": str(config.get("dim", len(config.get("x", []))))}
        if "stage" in config:  # the searcher's space stage (a BO roll-back bumps it)
            params["space_stage"] = str(config["stage"])
        if "start_from" in config:  # a start policy: the baseline it runs verbatim
            params["start_from"] = str(config["start_from"])
        backend = (self.config.get("latency") or {}).get("backend")
        if backend:  # what latency_ms and speedup were measured with
            params["latency_backend"] = str(backend)
        if self.epochs is not None:  # what promote fine-tunes the trial's policy for
            params["finetune_epochs"] = f"{self.epochs:g}"
        if "seed" in config:  # the trial's fine-tuning seed, which promote reuses
            params["seed"] = str(config["seed"])
            self._seeds[trial.trial_id] = params["seed"]
        if "proxy_accuracy" in config:
            self._log_metrics(run_id, {"proxy_accuracy": config["proxy_accuracy"]})
        if "policy" in config:
            from prunetune.search_spaces import Policy

            policy = Policy.from_json(config["policy"])
            params.update({k: str(v) for k, v in policy.summary().items()})
            params.update(unit_params(policy))
            self._artifact(run_id, POLICY_FILE,
                           lambda: self.journal.log_text(run_id, config["policy"], POLICY_FILE))
        if "x" in config:
            params["x"] = json.dumps([round(v, 4) for v in config["x"]])[:6000]
        batch = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(batch), _PARAMS_PER_BATCH):
            self.journal.log_batch(run_id, params=batch[i:i + _PARAMS_PER_BATCH])
        return run_id

    def _artifact(self, run_id: str, path: str, write: Callable[[], None]) -> bool:
        """One artifact of a child run, written by `write`; False, with one warning line, when
        the store refuses it: the run then stays open until `repair` writes it (a tracking
        server that does not answer is the journal's to wait for: that raises nothing)."""
        try:
            write()
            return True
        except Exception as err:  # MlflowException, OSError: whatever the store raises
            self._missing.add(run_id)
            logger.warning("MLflow did not take %s of run %s (%s: %s); the run stays open "
                           "until the search writes it at the end of its stage or on --resume",
                           path, run_id, type(err).__name__, str(err).splitlines()[0][:200]
                           if str(err) else "")
            return False

    def missing_artifacts(self, run_id: str, finished: bool) -> list[str]:
        """What a child run lacks of what it must hold: its policy, and the policy picture once
        its trial finished (all of it when the store cannot list them)."""
        want = [POLICY_FILE] + ([POLICY_PICTURE] if finished else [])
        have = self._artifact_names(run_id)
        return [w for w in want if w not in have]

    def _artifact_names(self, run_id: str) -> set[str]:
        """The names of a run's top-level artifacts; none when the store cannot list them."""
        try:
            return {Path(f.path).name for f in self.client.list_artifacts(run_id)}
        except Exception:  # noqa: BLE001 - an unreadable artifact folder holds nothing usable
            return set()

    def _log_search_files(self, parent: str, only: tuple[str, ...], refused_ok: bool) -> None:
        """The parent run's `config.json` and `space.json` (those of them in `only`): what
        promote rebuilds a trial from. `refused_ok`: a refusal leaves them to `repair`."""
        files = {"config.json": self.config, "space.json": self.space_description}
        for name in only:
            def write(name: str = name) -> None:
                self.journal.log_dict(parent, files[name], name)
            if refused_ok:
                self._artifact(parent, name, write)
            else:
                write()

    def repair(self, policies: dict[str, str]) -> int:
        """Write what this stage's child runs lack (`missing_artifacts`) from their trials'
        policies as Ray Tune kept them (`policies`: trial id -> policy JSON), and end FINISHED
        each run whose final result is in; and the search's own config and space files when
        its parent run lacks them. Returns how many runs it wrote to; raises what the store
        raises when it still refuses."""
        parent = self.journal.resolve(self.find_search())
        have = self._artifact_names(parent)  # unreadable: write them again
        lacking = tuple(n for n in ("config.json", "space.json") if n not in have)
        if lacking:
            self._log_search_files(parent, only=lacking, refused_ok=False)
        runs = self.client.search_runs(
            [self._experiment_id()],
            filter_string=(f"tags.`mlflow.parentRunId` = '{parent}' and "
                           f"tags.`{TAG_STAGE}` = '{self.stage}' and tags.`{TAG_ROLE}` = 'trial'"),
            max_results=10000)
        repaired = 0
        for run in runs:
            run_id, policy = run.info.run_id, policies.get(run.data.tags.get(TAG_TRIAL, ""))
            finished = run.data.tags.get(TAG_STATUS) == "finished"
            missing = self.missing_artifacts(run_id, finished)
            if missing and policy is None:
                continue  # a trial Tune no longer has: nothing to write it from
            if POLICY_FILE in missing:
                self.journal.log_text(run_id, policy, POLICY_FILE)
            if POLICY_PICTURE in missing:
                self._log_policy_picture(run_id, policy, POLICY_PICTURE,
                                         f"{self.search_name} {run.info.run_name}")
            if finished and run.info.status != "FINISHED":
                self.journal.set_terminated(run_id, status="FINISHED")
            self._missing.discard(run_id)
            repaired += bool(missing) or (finished and run.info.status != "FINISHED")
        return repaired + bool(lacking)

    def _log_policy_picture(self, run_id: str, policy_json: str, path: str, title: str) -> None:
        from prunetune.search_spaces import Policy

        from .pictures import log_figure, policy_figure

        log_figure(self.journal, run_id, policy_figure(
            Policy.from_json(policy_json), self.space_description.get("units", {}), title), path)

    def _log_metrics(self, run_id: str, metrics: dict[str, Any], step: int = 0) -> None:
        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, step) for k, v in metrics.items() if _finite(v)]
        if batch:
            self.journal.log_batch(run_id, metrics=batch)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        known = {t.trial_id for t in trials}
        existed = trial.trial_id in self._children or self._adopt(trial, known) is not None
        if existed and not self._done_before(trial):  # run again: resumed, retried, adopted
            # The attempt that counts gets a run of its own under the same name: the earlier
            # attempt's epoch points are not its history.
            name, old = self._names.pop(trial.trial_id, None), self._children.pop(trial.trial_id)
            self.journal.delete_run(old)
            self._missing.discard(old)
            self._child(trial, known, name=name)
            return
        self._child(trial, known)  # a new child run starts out running

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        if self._done_before(trial):
            return
        run_id = self._child(trial)
        node = result.get("node_ip") or result.get("hostname")
        tags = [RunTag(TAG_STATUS, "running")]
        if node:
            tags += [RunTag("node", str(node)), RunTag("hostname", str(result.get("hostname")))]
        if result.get("node_id"):
            tags.append(RunTag("node_id", str(result["node_id"])))
        if result.get("latency_clock"):  # which backend, device and threads timed it
            tags.append(RunTag(TAG_LATENCY_CLOCK, str(result["latency_clock"])))
        step = int(result.get("epoch", result.get("training_iteration", 0)) or 0)
        final = bool(result.get("final"))
        keys = _FINAL_METRICS if final else _EPOCH_METRICS
        metrics = {k: result[k] for k in keys if k in result}
        if final:  # marked at once: an interruption may come before on_trial_complete
            tags[0] = RunTag(TAG_STATUS, "finished")
        ts = int(time.time() * 1000)
        self.journal.log_batch(run_id, metrics=[Metric(k, float(v), ts, step)
                                               for k, v in metrics.items() if _finite(v)],
                              tags=tags)
        if final:
            self._finished.add(trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self._child(trial)
        final = self._done_before(trial) or bool((trial.last_result or {}).get("final"))
        # A trial that completes without its final report was stopped by the scheduler.
        status = "finished" if final else "stopped"
        policy = (trial.config or {}).get("policy")
        if final and policy:
            name = self._names.get(trial.trial_id, trial.trial_id)
            self._artifact(run_id, POLICY_PICTURE, lambda: self._log_policy_picture(
                run_id, policy, POLICY_PICTURE, f"{self.search_name} {name}"))
        self.journal.set_tag(run_id, TAG_STATUS, status)
        if final and run_id in self._missing:
            return  # FINISHED once its artifacts are in (`repair`)
        self.journal.set_terminated(run_id, status="FINISHED" if final else "KILLED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self._done_before(trial):
            return
        run_id = self._child(trial)
        self.journal.set_tag(run_id, TAG_STATUS, "error")
        error_file = getattr(trial, "error_file", None) or ""
        if error_file and os.path.isfile(error_file):
            self.journal.log_text(run_id, Path(error_file).read_text()[-20000:], "error.txt")
        self.journal.set_terminated(run_id, status="FAILED")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Reconcile with Tune's trials when the stage's experiment ends (or is interrupted):
        a child run of a trial Tune no longer has that never finished (the driver died after
        starting it and before Tune saved its state, and no resumed trial took it over) holds
        no result and is deleted, so every child run is a trial of the search."""
        known = {t.trial_id for t in trials}
        for trial_id in [t for t in self._children if t not in known and t not in self._finished]:
            self.journal.delete_run(self._children.pop(trial_id))
            self._names.pop(trial_id, None)
            self._seeds.pop(trial_id, None)

    # -- end of the search ----------------------------------------------------------------------
    def policy_json(self, trial: TrialRecord) -> str:
        """A trial's policy, as its child run keeps it (`policy.json`)."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            return Path(self.client.download_artifacts(trial.run_id, "policy.json",
                                                       tmp)).read_text()

    def finish_search(self, trials: list[TrialRecord]) -> dict[str, Any] | None:
        """Summarise the search on its parent run from its child runs (`trials`, every stage)
        and end it FINISHED: the best trial of the deciding stage (finalists when there are
        any) with its policy and picture, `results.csv` of every finished trial, the Pareto
        front and its plot. Returns the best trial's metrics with `policy`, `seed`, `trial`
        and `stage` (None when no trial finished). A store that refuses a write ends the
        parent KILLED and raises SearchError with the resume command (which writes it all
        again)."""
        from prunetune.errors import PrunetuneError

        try:
            return self._finish_search(trials)
        except PrunetuneError:
            raise
        except Exception as err:  # MlflowException, OSError: the store refused
            try:
                self.journal.set_terminated(self.find_search(), status="KILLED")
            except Exception:  # noqa: BLE001 - the store may refuse this too; resume redoes it
                pass
            raise tracking_failed(self.search_name, err) from err

    def _finish_search(self, trials: list[TrialRecord]) -> dict[str, Any] | None:
        parent = self.find_search()
        finished = [t for t in trials if t.status == "finished"]
        deciding = deciding_trials(trials)
        best = None
        if deciding:
            top = max(deciding, key=lambda t: (t.get(self.maximize, -math.inf), t.name))
            best = {**top.metrics, "policy": self.policy_json(top), "trial": top.name,
                    "trial_id": top.trial_id, "stage": top.stage}
            if "seed" in top.params:
                best["seed"] = int(top.params["seed"])
            self.journal.log_text(parent, best["policy"], "best_policy.json")
            self._log_metrics(parent, {f"best_{k}": v for k, v in top.metrics.items()})
            self.journal.set_tag(parent, "best_trial_id", top.trial_id)
            self.journal.set_tag(parent, "best_trial", top.name)
            self._log_policy_picture(parent, best["policy"], BEST_POLICY_PICTURE,
                                     f"{self.search_name}: best policy ({top.name})")
            self._log_results_csv(parent, finished)
            front = pareto_front(deciding, maximize=self.maximize, minimize=self.minimize)
            self.journal.log_dict(parent, [{"trial": t.name, "trial_id": t.trial_id,
                                           "stage": t.stage, **t.metrics} for t in front],
                                 "pareto_front.json")
            self._log_pareto_plot(parent, deciding, front)
        counts = {"trials_finished": len(finished),
                  "finalists_finished": sum(t.stage == "finalist" for t in finished)}
        self._log_metrics(parent, counts)
        self.journal.set_terminated(parent, status="FINISHED")
        return best

    def _log_results_csv(self, parent: str, trials: list[TrialRecord]) -> None:
        columns = ["trial", "trial_id", "stage", *_FINAL_METRICS, "proxy_accuracy", "seed",
                   "policy"]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for t in sorted(trials, key=lambda t: (t.stage != "finalist", t.name)):
            writer.writerow({"trial": t.name, "trial_id": t.trial_id, "stage": t.stage,
                             **t.metrics, "seed": t.params.get("seed", ""),
                             "policy": self.policy_json(t)})
        self.journal.log_text(parent, buf.getvalue(), "results.csv")

    def _log_pareto_plot(self, parent: str, trials: list[TrialRecord],
                         front: list[TrialRecord]) -> None:
        from .pictures import log_figure, pareto_figure

        rows = [{**t.metrics, "trial": t.name} for t in trials]
        dense_y = self.dense_metrics.get(f"val_{self.maximize}", math.nan)
        dense_x = next((r["dense_latency_ms"] for r in rows
                        if self.minimize == "latency_ms" and _finite(r.get("dense_latency_ms"))),
                       math.nan)
        labelled = [{**t.metrics, "trial": t.name} for t in front]
        stage = trials[0].stage if trials else "trial"
        log_figure(self.journal, parent, pareto_figure(
            rows, labelled, x=self.minimize, y=self.maximize, dense=(dense_x, dense_y),
            title=f"search {self.search_name}" + (" (finalists)" if stage == "finalist"
                                                  else "")), "pareto.png")
