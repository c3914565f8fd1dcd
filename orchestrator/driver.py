"""The search driver: dense model, space, searcher, Ray Tune experiment, MLflow tracking."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from prunetune.errors import SearchError

from .config import PrunetuneConfig
from .results import trial_name
from .spaces import build_space, latency_table_file

__all__ = ["SearchSummary", "SearchError", "run_search", "build_space", "search_name"]


@dataclass
class SearchSummary:
    name: str
    parent_run_id: str
    tracking_uri: str
    experiment: str
    trials_finished: int
    trials_planned: int
    best: dict[str, Any] | None  # final metrics of the best trial (policy JSON included)
    storage_dir: Path


def search_name(cfg: PrunetuneConfig) -> str:
    if cfg.name:
        return cfg.name
    slug = cfg.model.name.replace(":", "-").replace("/", "-").replace(".", "-")
    return f"{slug}-{cfg.data.name}-{datetime.now():%Y%m%d-%H%M%S}"


def _quiet_start_up() -> None:
    """Keep the driver's output to prunetune's own lines: no MLflow run URLs per trial, no Ray
    start-up notices (Ray's token authentication stays on; only its notice is silenced), no
    Tune bookkeeping INFO lines."""
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    levels = {"ray._private.authentication.authentication_token_setup": logging.ERROR,
              "ray.tune": logging.WARNING}
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def _init_ray(cfg: PrunetuneConfig, progress: bool) -> None:
    import ray

    if ray.is_initialized():
        return
    if progress:
        where = (f"joining the Ray cluster at {cfg.ray.address}" if cfg.ray.address else
                 f"starting a local Ray ({cfg.ray.num_cpus or os.cpu_count()} CPUs)")
        print(f"[search] {where} ...", flush=True)
    # Trials import prunetune from the driver's environment; on a cluster the nodes must
    # have it installed (see clusters/).
    env = {"env_vars": {"PYTHONWARNINGS": "ignore::DeprecationWarning,ignore::FutureWarning"}}
    try:
        if cfg.ray.address:
            ray.init(address=cfg.ray.address, runtime_env=env, log_to_driver=False,
                     logging_level=logging.WARNING)
        else:
            ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, runtime_env=env,
                     log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise SearchError(f"cannot connect to the Ray cluster at {cfg.ray.address!r}: {err}. "
                          "Check the address (auto, HOST:6379 of a running head) or leave "
                          "ray.address empty for a local Ray.") from err


def _progress_callback(total: int) -> Any:
    from ray.tune import Callback

    class ProgressPrinter(Callback):
        """One line per finished trial: running count, metrics, best so far."""

        def __init__(self) -> None:
            self.done, self.best, self.t0 = 0, -math.inf, time.perf_counter()
            self.names: dict[str, str] = {}  # trial id -> `trial-007`, as the tracker names

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.names.setdefault(trial.trial_id, trial_name(len(self.names) + 1))

        def on_trial_complete(self, iteration: int, trials: list, trial: Any,
                              **info: Any) -> None:
            res = trial.last_result or {}
            self.done += 1
            if res.get("final"):
                self.best = max(self.best, res.get("accuracy", -math.inf))
                line = (f"accuracy {res['accuracy']:.4f}  flops x{res['flops_ratio']:.2f}  "
                        f"speedup {res['speedup']:.2f}x  latency {res['latency_ms']:.2f} ms")
            else:
                line = f"stopped early at epoch {res.get('epoch', '?')}"
            name = self.names.get(trial.trial_id, trial.trial_id)
            print(f"[search] {self.done}/{total} {name}: {line}  "
                  f"(best {self.best:.4f}, {time.perf_counter() - self.t0:.0f}s)", flush=True)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            name = self.names.get(trial.trial_id, trial.trial_id)
            print(f"[search] {name} failed: see {trial.error_file}", flush=True)

    return ProgressPrinter()


def _latest_experiment(storage: Path) -> str | None:
    candidates = [p for p in storage.glob("*") if (p / "tuner.pkl").is_file()]
    return max(candidates, key=lambda p: p.stat().st_mtime).name if candidates else None


SEARCHER_ARTIFACT = "searcher/state.json"


def _latency_table_path(cfg: PrunetuneConfig, workdir: Path) -> str | None:
    """The table trials predict latency from; None when they time whole models."""
    return str(latency_table_file(cfg, workdir)) if cfg.search.latency == "table" else None


def _log_searcher_state(tracker: Any, parent: str, experiment_dir: Path) -> None:
    """Keep the searcher's final state (Tune saved it with the experiment) with the search in
    MLflow, so a later search can warm-start from it by name (the RL searcher's transfer)."""
    states = sorted(experiment_dir.glob("searcher-state-*"), key=lambda p: p.stat().st_mtime)
    if not states:
        return
    tracker.client.log_text(parent, states[-1].read_text(), SEARCHER_ARTIFACT)


def _resolve_warm_start(cfg: PrunetuneConfig, workdir: Path,
                        tracking_uri: str) -> dict[str, Any]:
    """Searcher options with `warm_start` as a file: a path is kept, a search name is looked
    up in MLflow and its saved searcher state downloaded."""
    options = dict(cfg.search.searcher_options)
    ref = options.get("warm_start")
    if ref is None or Path(str(ref)).expanduser().exists():
        return options
    from mlflow import MlflowClient

    from .results import SearchNotFoundError, find_search

    client = MlflowClient(tracking_uri)
    try:
        parent = find_search(client, cfg.tracking.experiment, str(ref))
    except SearchNotFoundError as err:
        raise SearchError(f"searcher_options.warm_start {ref!r} is neither a file nor a search "
                          f"in {tracking_uri}: {err}") from err
    dest = workdir / "warm_start" / parent.info.run_id
    dest.mkdir(parents=True, exist_ok=True)
    try:
        options["warm_start"] = client.download_artifacts(parent.info.run_id, SEARCHER_ARTIFACT,
                                                          str(dest))
    except Exception as err:  # MLflow raises several types for a missing artifact
        raise SearchError(f"search {ref!r} has no saved searcher state ({SEARCHER_ARTIFACT}): "
                          f"it ran before searcher states were kept, or did not finish") from err
    return options


@dataclass
class _Dense:
    """The dense model a search prunes, and its baseline."""

    result: Any  # trainers.PretrainResult
    example: Any  # a `1 x C x H x W` input
    val_accuracy: float
    metrics: dict[str, float]  # val and test accuracy / loss, logged on the parent run
    reference_latency: tuple[str, float] | None = None  # (device, ms): see TrialSetup


def _schemes_line(space: Any) -> str:
    """How the space uses `space.schemes`: searched per group, or one per unit by mapping."""
    d = space.describe()
    counts: dict[str, int] = {}
    for unit in d["units"].values():
        counts[unit["scheme"]] = counts.get(unit["scheme"], 0) + 1
    mapped = ", ".join(f"{s} on {n} units" for s, n in sorted(counts.items()))
    if d["scheme_search"]:
        return (f"schemes {d['schemes']}: searched per group (space.scheme_search); the "
                f"{d['device']} mapping's choice first ({mapped})")
    return (f"schemes {d['schemes']}: one per unit, by the rule-based {d['device']} mapping: "
            f"{mapped} (space.scheme_search: true searches them per group)")


def _experiment_name(cfg: PrunetuneConfig, storage: Path, resume: bool) -> str:
    """The Tune experiment (= search) name; refuses a resume with nothing to resume and a new
    search over an existing one."""
    from ray import tune

    if resume:
        name = cfg.name or _latest_experiment(storage)
        if name is None or not tune.Tuner.can_restore(str(storage / name)):
            raise SearchError(f"nothing to resume: no search {cfg.name or ''} in {storage}. "
                              "Give the search's name (config 'name') and the same storage_path.")
        return name
    name = search_name(cfg)
    if (storage / name / "tuner.pkl").exists():
        raise SearchError(f"a search named {name!r} already exists in {storage}; use "
                          "--resume to continue it or choose another name")
    return name


def _dense_baseline(cfg: PrunetuneConfig, progress: bool) -> _Dense:
    from prunetune.trainers import (
        dense_reference_ms,
        evaluate,
        load_data,
        pretrain_dense,
        resolve_device,
    )

    dense = pretrain_dense(cfg.model, cfg.data, cfg.pretrain, cache_dir=cfg.cache_dir,
                           progress=progress)
    data = load_data(cfg.data)
    val = evaluate(dense.model, data.loader("val"))
    metrics = {"val_accuracy": val.accuracy, "val_loss": val.loss,
               **{k: v for k, v in dense.metrics.items() if k.startswith("test_")}}
    reference = None
    if cfg.search.latency == "measured":  # with a latency table, trials share its prediction
        reference = dense_reference_ms(dense.model.eval(), data.example_input(1),
                                       str(resolve_device(cfg.finetune.device)),
                                       cfg.search.latency_repeats)
        metrics["dense_latency_ms"] = reference[1]
    return _Dense(dense, data.example_input(1), val.accuracy, metrics, reference)


def _trainable(cfg: PrunetuneConfig, dense: _Dense, workdir: Path) -> Any:
    """The trial function with its setup (shipped once through the object store) and
    resources."""
    from ray import tune

    from prunetune.trainers import TrialSetup, run_trial

    threads = cfg.search.trial_threads or max(1, math.ceil(cfg.search.cpus_per_trial))
    setup = TrialSetup(dense_checkpoint=dense.result.checkpoint, data=cfg.data,
                       finetune=cfg.finetune, dense_val_accuracy=dense.val_accuracy,
                       seed=cfg.seed, threads=threads,
                       reference_latency=dense.reference_latency,
                       latency_repeats=cfg.search.latency_repeats,
                       latency_table=_latency_table_path(cfg, workdir))
    resources = {"cpu": cfg.search.cpus_per_trial, "gpu": cfg.search.gpus_per_trial}
    return tune.with_resources(tune.with_parameters(run_trial, setup=setup), resources)


def _tracker(cfg: PrunetuneConfig, name: str, space: Any, dense: _Dense,
             workdir: Path) -> Any:
    from .tracking import MLflowTracker

    uri = cfg.tracking_uri()
    # A sqlite store keeps artifacts beside it; a tracking server decides for itself.
    artifact_root = (workdir / "mlartifacts").as_uri() if uri.startswith("sqlite") else None
    return MLflowTracker(tracking_uri=uri, experiment=cfg.tracking.experiment,
                         search_name=name, config=cfg.model_dump(mode="json"),
                         space_description=space.describe(), dense_metrics=dense.metrics,
                         artifact_root=artifact_root)


def _new_tuner(cfg: PrunetuneConfig, name: str, storage: Path, trainable: Any, space: Any,
               options: dict[str, Any], callbacks: list[Any]) -> Any:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from .searchers import make_searcher

    searcher = make_searcher(cfg.search.searcher, space=space, metric="accuracy", mode="max",
                             seed=cfg.seed, options=options)
    scheduler = None
    if cfg.search.scheduler.kind == "asha":
        scheduler = ASHAScheduler(time_attr="training_iteration",
                                  max_t=max(1, math.ceil(cfg.finetune.epochs)),
                                  grace_period=cfg.search.scheduler.grace_period,
                                  reduction_factor=cfg.search.scheduler.reduction_factor)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                    num_samples=cfg.search.trials,
                                    max_concurrent_trials=cfg.search.max_concurrent,
                                    metric="accuracy", mode="max",
                                    # A fresh actor per trial costs a process start.
                                    reuse_actors=True),
        run_config=tune.RunConfig(name=name, storage_path=str(storage), callbacks=callbacks,
                                  verbose=0, failure_config=tune.FailureConfig(
                                      max_failures=cfg.search.max_failures)))


def run_search(cfg: PrunetuneConfig, *, resume: bool = False,
               progress: bool = True) -> SearchSummary:
    """Run (or resume) a search as a Ray Tune experiment tracked in MLflow."""
    from ray import tune

    from .searchers import check_options

    _quiet_start_up()
    storage = cfg.storage_dir()
    storage.mkdir(parents=True, exist_ok=True)
    name = _experiment_name(cfg, storage, resume)
    workdir = cfg.workdir_path()
    workdir.mkdir(parents=True, exist_ok=True)
    # Before any training: a bad searcher, option or warm_start fails in seconds.
    options = {} if resume else _resolve_warm_start(cfg, workdir, cfg.tracking_uri())
    if not resume:
        check_options(cfg.search.searcher, options)

    dense = _dense_baseline(cfg, progress)
    if progress and cfg.space.budget is not None and cfg.space.budget.kind == "latency":
        print("[search] latency budget: fitting it from the latency table (measuring missing "
              "layer entries)", flush=True)
    space = build_space(cfg, dense.result.model, dense.example, workdir)
    if progress:
        print(f"[search] {name}: {space.dim}-dimensional space over {space.n_units} units, "
              f"{cfg.search.trials} trials ({cfg.search.max_concurrent} at a time), searcher "
              f"{cfg.search.searcher}; dense val accuracy {dense.val_accuracy:.4f}", flush=True)
        print(f"[search] {_schemes_line(space)}", flush=True)
    trainable = _trainable(cfg, dense, workdir)
    _init_ray(cfg, progress)
    tracker = _tracker(cfg, name, space, dense, workdir)
    callbacks = [tracker] + ([_progress_callback(cfg.search.trials)] if progress else [])
    if resume:
        tuner = tune.Tuner.restore(str(storage / name), trainable=trainable,
                                   resume_unfinished=True, resume_errored=True)
    else:
        tuner = _new_tuner(cfg, name, storage, trainable, space, options, callbacks)
    grid = tuner.fit()
    return _summarise(cfg, name, storage, grid, tracker, progress)


def _summarise(cfg: PrunetuneConfig, name: str, storage: Path, grid: Any, tracker: Any,
               progress: bool) -> SearchSummary:
    # On resume Tune ran the callbacks it pickled with the experiment, not `tracker`; the
    # parent run is found again by its tags, without reopening it.
    finals = [r.metrics for r in grid if r.metrics and r.metrics.get("final")]
    best = max(finals, key=lambda m: m["accuracy"]) if finals else None
    parent = tracker.find_search()
    _log_searcher_state(tracker, parent, storage / name)
    summary = SearchSummary(name=name, parent_run_id=parent, tracking_uri=cfg.tracking_uri(),
                            experiment=cfg.tracking.experiment, trials_finished=len(finals),
                            trials_planned=cfg.search.trials, best=best,
                            storage_dir=storage / name)
    if progress:
        _print_summary(summary)
    return summary


def _print_summary(s: SearchSummary) -> None:
    print(f"\n[search] {s.name}: {s.trials_finished} trials finished "
          f"(MLflow parent run {s.parent_run_id})")
    if s.best:
        b = s.best
        print(f"[search] best: accuracy {b['accuracy']:.4f} (drop {b['accuracy_drop']:+.4f}), "
              f"speedup {b['speedup']:.2f}x, FLOPs x{b['flops_ratio']:.2f}, params "
              f"x{b['params_ratio']:.2f}")
        units = json.loads(b["policy"]).get("units", {})
        shown = ", ".join(f"{name} {u.get('scheme')} {u.get('ratio', 0):.2f}"
                          for name, u in units.items())
        print(f"[search] best policy ({len(units)} units): {shown}")
    print(f"[search] results: prunetune results {s.name} --tracking-uri {s.tracking_uri}")
    if s.tracking_uri.startswith(("http://", "https://")):
        from mlflow import MlflowClient

        from .tracking import ui_url

        exp = MlflowClient(s.tracking_uri).get_run(s.parent_run_id).info.experiment_id
        print(f"[search] browse:  {ui_url(s.tracking_uri, exp)}")
    else:
        print(f"[search] browse:  prunetune ui --tracking-uri {s.tracking_uri}  (then open the "
              "runs address it prints)")
