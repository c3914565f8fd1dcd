"""The stages of a search, each a Ray Tune experiment: a proxy (or single) stage whose
searcher proposes the policies, and the finalists, the best first-stage policies fine-tuned.

`run_stage` runs (or resumes) one stage: its trial function and resources, its MLflow tracker
callback, its search algorithm (the search's searcher, or `FinalistSearcher` over the chosen
first-stage policies), and what becomes of an interruption or a Ray failure.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune.search import Searcher

from prunetune.errors import SearchError
from prunetune.files import atomic_write, atomic_write_json

from .config import PrunetuneConfig
from .interrupts import keep_sigint_handler, sigterm_count
from .results import TAG_STAGE, TrialRecord, latency_share, search_trials, select_finalists
from .spaces import latency_table_file

if TYPE_CHECKING:
    from torch import nn

    from prunetune.search_spaces import PruningSpace
    from prunetune.trainers import DataConfig

__all__ = ["FINALIST_SUFFIX", "DenseBaseline", "FinalistSearcher", "SearchRun", "Stage",
           "baseline_start_policies",
           "journal_dir", "progress_callback", "run_stage", "search_stages", "settle_tracking",
           "stage_done", "stage_results", "stage_tracker", "start_policies", "trial_dirname"]


# A two-stage search's finalists run as a Tune experiment of their own beside the first
# stage's, named after it with this suffix.
FINALIST_SUFFIX = ".finalists"


@dataclass(frozen=True)
class Stage:
    """One stage of a search: its name (`results.STAGES`), Tune experiment, trial count and
    the fine-tuning epochs of its trials."""

    name: str
    experiment: str
    trials: int
    epochs: float


def search_stages(cfg: PrunetuneConfig, name: str) -> list[Stage]:
    """The stages of search `name`: one (trials, each fine-tuned `finetune.epochs`), or a
    proxy stage and the finalists (`search.finalists`)."""
    fin = cfg.search.finalists
    if fin.count == 0:
        return [Stage("trial", name, cfg.search.trials, cfg.finetune.epochs)]
    return [Stage("proxy", name, cfg.search.trials, cfg.finetune.epochs),
            Stage("finalist", f"{name}{FINALIST_SUFFIX}", fin.count, fin.epochs)]



def progress_callback(stage: Stage, tracker: Any) -> Any:
    from ray.tune import Callback

    class ProgressPrinter(Callback):
        """One line per finished trial (running count, metrics, best so far), per finalist
        epoch, and per trial failure (with the file holding its traceback). Trials are named
        as the tracker (an earlier callback) named their child runs."""

        def __init__(self) -> None:
            self.done: set[str] = set()
            self.best, self.t0 = -math.inf, time.perf_counter()

        def setup(self, **info: Any) -> None:
            # Also on resume: count from the trials the tracker (set up first) found finished;
            # a trial Tune runs again after that counts once.
            self.done = {self._name(t) for t in tracker._finished}
            self.best = tracker.best_finished  # so "best" never drops after a resume
            self.t0 = time.perf_counter()

        def _name(self, trial: Any) -> str:
            trial_id = getattr(trial, "trial_id", trial)
            return tracker._names.get(trial_id, trial_id)

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                            **info: Any) -> None:
            if stage.name != "finalist" or result.get("final") or "accuracy" not in result:
                return
            print(f"[search] {self._name(trial)} epoch {result.get('epoch', '?')}/"
                  f"{math.ceil(stage.epochs)}: accuracy {result['accuracy']:.4f} "
                  f"({time.perf_counter() - self.t0:.0f}s)", flush=True)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any,
                              **info: Any) -> None:
            res = trial.last_result or {}
            name = self._name(trial)
            self.done.add(name)
            if res.get("final"):
                self.best = max(self.best, res.get("accuracy", -math.inf))
                line = (f"accuracy {res['accuracy']:.4f}  flops x{res['flops_ratio']:.2f}  "
                        f"speedup {res['speedup']:.2f}x  latency {res['latency_ms']:.2f} ms")
            else:
                line = f"stopped early at epoch {res.get('epoch', '?')}"
            print(f"[search] {min(len(self.done), stage.trials)}/{stage.trials} {name}: "
                  f"{line}  (best {self.best:.4f}, {time.perf_counter() - self.t0:.0f}s)",
                  flush=True)

        def on_trial_recover(self, iteration: int, trials: list, trial: Any,
                             **info: Any) -> None:
            print(f"[search] {self._name(trial)} failed ({_error_line(trial)}); running it "
                  f"again (traceback: {trial.error_file})", flush=True)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            print(f"[search] {self._name(trial)} failed ({_error_line(trial)}; traceback: "
                  f"{trial.error_file})", flush=True)

    return ProgressPrinter()


def _error_line(trial: Any) -> str:
    """The last `Type: message` line of the traceback Tune kept for a failed trial."""
    try:
        lines = [line.strip() for line in Path(trial.error_file).read_text().splitlines()
                 if line.strip()]
    except (OSError, TypeError):
        return "no traceback kept"
    line = _last_raised(lines) or (lines[-1] if lines else "no message")
    return line.split(". ")[0][:120]  # its first sentence: the file holds the rest


def _latency_table_path(cfg: PrunetuneConfig, workdir: Path) -> str | None:
    """The table trials predict latency from; None when they time whole models."""
    return str(latency_table_file(cfg, workdir)) if cfg.search.latency == "table" else None



@dataclass
class DenseBaseline:
    """The dense model a search prunes, and its baseline."""

    result: Any  # trainers.PretrainResult
    example: Any  # a `1 x C x H x W` input
    val_accuracy: float
    metrics: dict[str, float]  # val and test accuracy / loss, logged on the parent run
    reference_latency: tuple[str, float] | None = None  # (device, ms): see TrialSetup
    steps_per_epoch: int = 0  # batches in one epoch of the training split



@dataclass
class SearchRun:
    """What every stage of one search shares."""

    cfg: PrunetuneConfig
    name: str
    storage: Path
    workdir: Path
    dense: DenseBaseline
    space: Any  # the PruningSpace
    options: dict[str, Any]  # the searcher's options (warm_start resolved)
    progress: bool
    # One key for the dense model and data in the trial processes' caches, every stage.
    context_key: str = field(default_factory=lambda: uuid.uuid4().hex)
    # Earlier searches' trials for the first stage's searcher (`search.warm_start`).
    prior: list[Any] = field(default_factory=list)


def _trainable(run: SearchRun, stage: Stage) -> Any:
    """The trial function with its setup (shipped once through the object store) and
    resources, fine-tuning for the stage's epochs."""
    from ray import tune

    from prunetune.trainers import TrialSetup, run_trial

    cfg, dense = run.cfg, run.dense
    threads = cfg.search.trial_threads or max(1, math.ceil(cfg.search.cpus_per_trial))
    setup = TrialSetup(dense_checkpoint=dense.result.checkpoint, data=cfg.data,
                       finetune=cfg.finetune.model_copy(update={"epochs": stage.epochs}),
                       dense_val_accuracy=dense.val_accuracy,
                       seed=cfg.seed, threads=threads,
                       reference_latency=dense.reference_latency,
                       latency_repeats=cfg.search.latency_repeats,
                       latency_table=_latency_table_path(cfg, run.workdir),
                       latency_backend=cfg.latency.backend,
                       latency_threads=cfg.latency.threads,
                       latency_device=(None if cfg.latency.device == "auto"
                                       else cfg.latency.device),
                       context_key=run.context_key)
    resources = {"cpu": cfg.search.cpus_per_trial, "gpu": cfg.search.gpus_per_trial}
    return tune.with_resources(tune.with_parameters(run_trial, setup=setup), resources)


def stage_tracker(run: SearchRun, stage: Stage) -> Any:
    from .tracking import MLflowTracker

    cfg = run.cfg
    uri = cfg.tracking_uri()
    # A sqlite store keeps artifacts beside it; a tracking server decides for itself.
    artifact_root = (run.workdir / "mlartifacts").as_uri() if uri.startswith("sqlite") else None
    return MLflowTracker(tracking_uri=uri, experiment=cfg.tracking.experiment,
                         search_name=run.name, config=cfg.model_dump(mode="json"),
                         space_description=run.space.describe(),
                         dense_metrics=run.dense.metrics, artifact_root=artifact_root,
                         stage=stage.name, epochs=stage.epochs,
                         journal_dir=str(journal_dir(run.workdir, run.name)))


def journal_dir(workdir: Path, name: str) -> Path:
    """Where a search's MLflow writes wait while its tracking server does not answer."""
    return workdir / "journal" / name


def settle_tracking(run: SearchRun, tracker: Any) -> None:
    """Wait (up to `tracking.wait_s`) for the writes kept during a tracking-server outage to
    be written; raise SearchError with the resume command when the server stays silent."""
    journal = tracker.journal
    if not journal.pending:
        return
    wait = run.cfg.tracking.wait_s
    if run.progress:
        print(f"[search] waiting up to {wait:.0f} s for the MLflow server at "
              f"{run.cfg.tracking_uri()} ({journal.pending} writes kept in {journal.folder})",
              flush=True)
    if not journal.flush(wait):
        raise SearchError(
            f"the MLflow tracking server at {run.cfg.tracking_uri()} has not answered for "
            f"{wait:.0f} s; {journal.pending} writes of search {run.name} are kept in "
            f"{journal.folder}. Once it answers, `prunetune search CONFIG --resume --name "
            f"{run.name}` writes them and goes on")


def _scheduler(cfg: PrunetuneConfig, stage: Stage) -> Any:
    """ASHA over the stage's fine-tuning epochs, when asked for and the stage fine-tunes."""
    from ray.tune.schedulers import ASHAScheduler

    if cfg.search.scheduler.kind != "asha" or stage.epochs <= 0:
        return None
    return ASHAScheduler(time_attr="training_iteration", max_t=max(1, math.ceil(stage.epochs)),
                         grace_period=cfg.search.scheduler.grace_period,
                         reduction_factor=cfg.search.scheduler.reduction_factor)


def _new_tuner(run: SearchRun, stage: Stage, search_alg: Any, callbacks: list[Any]) -> Any:
    from ray import tune

    cfg = run.cfg
    return tune.Tuner(
        _trainable(run, stage),
        tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=_scheduler(cfg, stage),
                                    num_samples=stage.trials,
                                    max_concurrent_trials=cfg.search.max_concurrent,
                                    metric="accuracy", mode="max",
                                    # A fresh actor per trial costs a process start.
                                    reuse_actors=True,
                                    trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(name=stage.experiment, storage_path=str(run.storage),
                                  callbacks=callbacks, verbose=0,
                                  failure_config=tune.FailureConfig(
                                      max_failures=cfg.search.max_failures)))


def trial_dirname(trial: Any) -> str:
    """A trial's folder in the Tune experiment: `run_trial_<id>` (Tune's default spells out
    the config, a whole policy here)."""
    return f"{trial.trainable_name}_{trial.trial_id}"


def _searcher(run: SearchRun) -> Any:
    from .searchers import make_searcher

    return make_searcher(run.cfg.search.searcher, space=run.space, metric="accuracy",
                         mode="max", seed=run.cfg.seed, options=run.options,
                         start_policies=start_policies(run), prior=run.prior)


def start_policies(run: SearchRun) -> dict[str, Any]:
    """The `search.start_from` baselines at the space's budget, by method, for the first
    stage's searcher to run first; one line printed per baseline (`baseline_start_policies`)."""
    say = (lambda line: print(f"[search] {line}", flush=True)) if run.progress else (
        lambda line: None)
    return baseline_start_policies(list(run.cfg.search.start_from), run.space,
                                   lambda: (run.dense.result.model, run.dense.example),
                                   run.cfg.data, say)


def baseline_start_policies(methods: list[str], space: PruningSpace,
                            dense: Callable[[], tuple[nn.Module, Any]], data_cfg: DataConfig,
                            say: Callable[[str], None]) -> dict[str, Any]:
    """`methods`' baseline policies (`search.start_from`) at `space`'s budget, by method, each
    described by a call of `say`. None without a budget (they are defined by one); a method
    that cannot give one here (no channel unit, an unreachable budget, a model Torch-Pruning
    cannot prune) is skipped with its reason. `dense()`: the dense model and an example
    input, asked for only when a baseline is computed; tp-taylor's gradients come from one
    batch of `data_cfg`'s training split."""
    from prunetune.errors import SpaceError
    from prunetune.search_spaces.baselines import baseline_policies, taylor_batch
    from prunetune.trainers import load_data

    if not methods:
        return {}
    if space.budget is None:
        say(f"start_from {', '.join(methods)}: skipped, the baselines are defined by a budget "
            "and space.budget is not set; the searcher starts from its own points")
        return {}
    batch = (taylor_batch(load_data(data_cfg).loader("train")) if "tp-taylor" in methods
             else None)
    out = {}
    model, example = dense()
    for method in methods:
        try:
            [b] = baseline_policies(space, model, example, [method], batch=batch)
        except SpaceError as err:  # BudgetError among them
            say(f"start_from {method}: skipped ({err})")
            continue
        out[method] = b.policy
        say(f"start_from {method}: flops x{b.flops_share:.3f}, params x{b.params_share:.3f}, "
            f"{b.units_pruned}/{len(b.policy.units)} units pruned, {b.seconds:.1f} s (runs "
            "as a first trial)")
    return out


class FinalistSearcher(Searcher):
    """Hands Tune a fixed list of trial configs, in order (the finalists), and saves how far
    it got, so a resumed finalist stage neither repeats nor skips one."""

    def __init__(self, points: list[dict[str, Any]]) -> None:
        super().__init__(metric="accuracy", mode="max")
        self.points, self.given = list(points), 0

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self.given >= len(self.points):
            return Searcher.FINISHED
        self.given += 1
        return dict(self.points[self.given - 1])

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        """Nothing to learn: the points are fixed."""

    def save(self, checkpoint_path: str) -> None:
        atomic_write_json(checkpoint_path, {"points": self.points, "given": self.given})

    def restore(self, checkpoint_path: str) -> None:
        state = json.loads(Path(checkpoint_path).read_text())
        self.points, self.given = state["points"], int(state["given"])


def stage_results(run: SearchRun, stage: Stage) -> tuple[list[TrialRecord], dict[str, str]]:
    """A stage's trials as Ray Tune kept them in its experiment folder (each trial's last
    result, with its policy and seed), not as MLflow has them: the search decides from its
    own results. Returns the trials (`finished` when their last result is final; named as
    their child runs when MLflow answers, else by Tune id) and their policies by trial id."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(run.storage / stage.experiment))
    names = _run_names(run, stage)
    records, policies = [], {}
    for trial in analysis.trials:
        res = trial.last_result or {}
        policy = res.get("policy") or (trial.config or {}).get("policy")
        if policy:
            policies[trial.trial_id] = policy
        seed = res.get("seed", (trial.config or {}).get("seed"))
        metrics = {k: float(v) for k, v in res.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        records.append(TrialRecord(
            trial_id=trial.trial_id, run_id="", name=names.get(trial.trial_id, trial.trial_id),
            status="finished" if res.get("final") else str(trial.status).lower(),
            metrics=metrics, params={} if seed is None else {"seed": str(seed)},
            tags={TAG_STAGE: stage.name}))
    return records, policies


def _run_names(run: SearchRun, stage: Stage) -> dict[str, str]:
    """Trial id -> child run name (`proxy-003`), for the labels people read; empty when the
    tracking store does not answer (then trials go by their Tune ids)."""
    try:
        tracker = stage_tracker(run, stage)
        trials = search_trials(tracker.client, tracker.client.get_run(tracker.find_search()))
    except Exception:  # noqa: BLE001 - names are labels: the search goes on without them
        return {}
    return {t.trial_id: t.name for t in trials if t.stage == stage.name}


def _finalist_points(run: SearchRun, first: Stage) -> list[dict[str, Any]]:
    """The trial configs of the finalists: the chosen first-stage trials' policies and seeds,
    from the first stage's own results (`stage_results`), with the proxy trial and its
    score."""
    fin = run.cfg.search.finalists
    trials, policies = stage_results(run, first)
    budget = run.cfg.space.budget
    share = (budget.keep if budget is not None and budget.kind == "latency"
             and run.cfg.search.latency == "measured" else None)
    chosen = select_finalists([t for t in trials if t.trial_id in policies], fin.count,
                              fin.select, max_latency_share=share)
    if not chosen:
        raise SearchError(f"search {run.name}: no {first.name} trial finished, so there is no "
                          "policy to fine-tune as a finalist; see the errors above")
    over = [t.name for t in chosen if share is not None and latency_share(t) > share]
    if over and run.progress:
        print(f"[search] finalists over the latency budget as measured (x{share:g} of the "
              f"dense latency): {', '.join(over)}; too few {first.name} trials met it",
              flush=True)
    return [{"policy": policies[t.trial_id], "finalist": rank,
             "seed": int(t.params.get("seed", run.cfg.seed)), "proxy_trial": t.name,
             "proxy_trial_id": t.trial_id, "proxy_accuracy": t.get("accuracy")}
            for rank, t in enumerate(chosen, start=1)]


def _repair_stage(run: SearchRun, stage: Stage, index: int) -> None:
    """Write what the stage's child runs lack (an artifact the store refused during the
    stage, or before an interruption) from the stage's own results, and end FINISHED the runs
    whose trial finished: a finished trial's run is FINISHED only with its artifacts. A store
    that still refuses ends the search with one line and the resume command."""
    tracker = stage_tracker(run, stage)
    try:
        _, policies = stage_results(run, stage)
        repaired = tracker.repair(policies)
    except Exception as err:  # MlflowException, OSError: whatever the store raises
        from .mlflow_params import tracking_failed

        try:
            tracker.mark_interrupted()
        except Exception:  # noqa: BLE001 - the store may refuse this too; resume redoes it
            pass
        raise tracking_failed(run.name, err) from err
    if repaired and run.progress:
        print(f"[search] stage {index + 1} ({stage.name}): wrote what MLflow lacked for "
              f"{repaired} trial run(s)", flush=True)


def run_stage(run: SearchRun, stages: list[Stage], index: int, resume: bool) -> None:
    """Run (or resume) one stage as its own Tune experiment."""
    from ray import tune

    stage = stages[index]
    # A failed trial is one line of ours naming the file with its traceback (the progress
    # callback), not Tune's 60-120 lines of it on the terminal.
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    tracker = stage_tracker(run, stage)
    callbacks = [tracker] + ([progress_callback(stage, tracker)] if run.progress else [])
    path = run.storage / stage.experiment
    if resume and tune.Tuner.can_restore(str(path)):
        # Tune runs the callbacks it saved with the experiment, ours are not used.
        tuner = _restored_tuner(run, stage, path)
    elif stage.name == "finalist":
        points = _finalist_points(run, stages[0])
        stage = Stage(stage.name, stage.experiment, len(points), stage.epochs)
        if run.progress:
            chosen = ", ".join(f"{p['proxy_trial']} ({p['proxy_accuracy']:.4f})"
                               for p in points)
            print(f"[search] finalists ({run.cfg.search.finalists.select}): {chosen}",
                  flush=True)
        tuner = _new_tuner(run, stage, FinalistSearcher(points), callbacks)
    else:
        tuner = _new_tuner(run, stage, _searcher(run), callbacks)
    if run.progress:
        what = (f"fine-tuning {stage.trials} finalists for {stage.epochs:g} epoch(s) each"
                if stage.name == "finalist" else
                f"{stage.trials} trials" + (" scored after BatchNorm calibration, without "
                                            "fine-tuning" if stage.epochs == 0 else
                                            f", each fine-tuned {stage.epochs:g} epoch(s)"))
        print(f"[search] stage {index + 1}/{len(stages)} ({stage.name}): {what}", flush=True)
    sigterms = sigterm_count()
    grid = _fit(run, stage, index, tuner, tracker)
    for _ in range(run.cfg.search.max_failures):
        lost = [r for r in grid if r.error is not None and worker_died(r.error)]
        if not lost:
            break
        # Tune counts one dead worker twice when it dies while being handed its next trial
        # (the actor and its reset task both fail), so such a trial ends `error` without its
        # retry. Its worker died, not its code: it runs again, as `--resume` would run it.
        if run.progress:
            print(f"[search] {len(lost)} trial(s) lost their worker process; running them "
                  "again", flush=True)
        tuner = _restored_tuner(run, stage, path)
        grid = _fit(run, stage, index, tuner, tracker)
    # Tune ran the tracker it restored with the experiment when resuming; its kept writes are
    # in the same journal folder, which this one reads.
    settle_tracking(run, stage_tracker(run, stage))
    if stage_stopped(grid, stage.trials, sigterms):
        tracker.mark_interrupted()
        if run.progress:
            print(f"[search] {run.name} interrupted in stage {index + 1} ({stage.name}); "
                  f"continue it with: prunetune search CONFIG --resume --name {run.name}",
                  flush=True)
        raise KeyboardInterrupt
    _repair_stage(run, stage, index)


def stage_stopped(grid: Any, trials: int, sigterms_before: int) -> bool:
    """Whether a stage's Tune run (its ResultGrid) ended before its `trials` did: Tune returns
    normally from Ctrl-C after saving its state, and the next stage must not start from a
    partial one. A SIGTERM since the stage began (`sigterm_count()` was `sigterms_before`)
    stops it even when its last trials ended meanwhile: a scheduler's stop is not lost."""
    return (len(grid) < trials or grid.num_terminated + grid.num_errors < len(grid)
            or sigterm_count() > sigterms_before)


def _restored_tuner(run: SearchRun, stage: Stage, path: Path) -> Any:
    """The stage's Tune experiment at `path`, restored to run its unfinished and errored
    trials."""
    from ray import tune

    return tune.Tuner.restore(str(path), trainable=_trainable(run, stage),
                              resume_unfinished=True, resume_errored=True)


def _fit(run: SearchRun, stage: Stage, index: int, tuner: Any, tracker: Any) -> Any:
    """`tuner.fit()`, a Ray or Tune failure turned into the search's one-line error; Ctrl-C
    and SIGTERM work as before once it returns (`keep_sigint_handler`)."""
    try:
        with keep_sigint_handler():
            return tuner.fit()
    except Exception as err:  # Ray / Tune failures (a worker killed for memory, a lost head)
        tracker.mark_interrupted()
        raise _stage_failed(run, stage, index, err) from err


def worker_died(error: BaseException) -> bool:
    """The trial's error is its worker process dying (killed, out of memory, its node lost),
    not an exception its own code raised."""
    from ray.exceptions import RayActorError

    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, RayActorError):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def _stage_failed(run: SearchRun, stage: Stage, index: int, err: Exception) -> SearchError:
    """The one-line error for a stage Ray or Tune gave up on, with its cause and the command
    that continues the search; the whole traceback goes to a file in the workdir."""
    import traceback

    log = run.workdir / f"{run.name}-error.txt"
    atomic_write(log, "".join(traceback.format_exception(err)))
    cause = _root_cause(err)
    hint = (" Give the trials more memory (fewer at a time: search.max_concurrent) or "
            "free some." if "memory" in cause.lower() else "")
    return SearchError(f"search {run.name} stopped in stage {index + 1} ({stage.name}): "
                       f"{cause[:300]}.{hint} Its finished trials are kept; continue it "
                       f"with: prunetune search CONFIG --resume --name {run.name} "
                       f"(traceback: {log})")


# "RuntimeError: ..." as the last line of a traceback Tune put into its own error's message.
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*")


def _last_raised(lines: list[str]) -> str | None:
    """The last `Type: message` line of a traceback's lines: the exception that ended it."""
    raised = [line for line in lines if _EXCEPTION_LINE.match(line)]
    return raised[-1] if raised else None


def _root_cause(err: BaseException) -> str:
    """`Type: first line` of the innermost exception behind `err` (Tune wraps what a
    callback or Ray raised, as a chained exception or as a traceback in its message)."""
    while err.__cause__ is not None or (err.__context__ is not None
                                        and not err.__suppress_context__):
        err = err.__cause__ or err.__context__
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if lines and lines[0].startswith("Traceback") and (raised := _last_raised(lines)):
        return raised
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def stage_done(run: SearchRun, stages: list[Stage], index: int, resume: bool) -> bool:
    """Whether a resumed search finished stage `index` before it was interrupted (a later
    stage's experiment exists)."""
    from ray import tune

    return resume and any(tune.Tuner.can_restore(str(run.storage / s.experiment))
                          for s in stages[index + 1:])
