"""The search driver: dense model, space, the search's stages (`stages.py`), its summary."""

from __future__ import annotations

import io
import json
import logging
import math
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunetune.errors import SearchError

from .config import PrunetuneConfig
from .fidelity import first_stage_fidelity
from .interrupts import keep_sigterm_handler
from .local_ray import record_local_ray, start_local_ray, stop_leftovers
from .results import format_table, search_trials
from .search_lock import hold_search_lock
from .spaces import build_space
from .stages import (
    FINALIST_SUFFIX,
    DenseBaseline,
    FinalistSearcher,
    SearchRun,
    Stage,
    run_stage,
    search_stages,
    settle_tracking,
    stage_done,
    stage_tracker,
)
from .tune_logs import drop_state_upload_races
from .warm_start import SEARCHER_ARTIFACT, History, prior_trials, read_history

if TYPE_CHECKING:
    from prunetune.search_spaces import SchemeScan

__all__ = ["FINALIST_SUFFIX", "FinalistSearcher", "SearchSummary", "SearchError", "Stage",
           "build_space", "run_search", "search_name", "search_stages"]


@dataclass
class SearchSummary:
    name: str
    parent_run_id: str
    tracking_uri: str
    experiment: str
    trials_finished: int  # finished child runs, every stage
    trials_planned: int
    # final metrics of the best trial of the deciding stage (finalists when there are any),
    # with its policy JSON, seed, name and stage
    best: dict[str, Any] | None
    storage_dir: Path  # the first stage's Tune experiment
    finalists: list[dict[str, Any]] = field(default_factory=list)  # their rows, best first


def search_name(cfg: PrunetuneConfig) -> str:
    if cfg.name:
        return cfg.name
    slug = cfg.model.name.replace(":", "-").replace("/", "-").replace(".", "-")
    return f"{slug}-{cfg.data.name}-{datetime.now():%Y%m%d-%H%M%S}"


def _quiet_start_up() -> None:
    """The driver's start-up settings: its output kept to prunetune's own lines (no MLflow run
    URLs per trial, no Ray start-up notices: Ray's token authentication stays on, only its
    notice is silenced; no Tune bookkeeping INFO lines), and Tune's state saved often."""
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    levels = {"ray._private.authentication.authentication_token_setup": logging.ERROR,
              "ray.tune": logging.WARNING}
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    drop_state_upload_races()  # a harmless race's traceback on an interrupt (tune_logs.py)
    # Tune saves its experiment state (trials, searcher) at most this often; its default of
    # 10 s or more leaves a resumed search re-running trials that finished since. A save
    # writes a few hundred KB; one a second costs the driver little.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    # A tracking server that does not answer fails a write in seconds, not after MLflow's
    # minutes of retries: the tracker keeps the write on disk and retries it itself, so
    # Tune's loop never waits on the server (orchestrator/journal.py).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


def _init_ray(cfg: PrunetuneConfig, progress: bool, workdir: Path) -> None:
    import ray

    if ray.is_initialized():
        return
    if progress:
        where = (f"joining the Ray cluster at {cfg.ray.address}" if cfg.ray.address else
                 f"starting a local Ray on 127.0.0.1 "
                 f"({cfg.ray.num_cpus or os.cpu_count()} CPUs)")
        print(f"[search] {where} ...", flush=True)
    # Trials import prunetune from the driver's environment; on a cluster the nodes must
    # have it installed (see clusters/).
    env = {"env_vars": {"PYTHONWARNINGS": "ignore::DeprecationWarning,ignore::FutureWarning"}}
    try:
        with keep_sigterm_handler():  # ray.init sets its own, which aborts the driver
            if cfg.ray.address:
                from .jobs import use_ray_token_if_present

                use_ray_token_if_present()  # a token-authenticated cluster, as `ray start`
                ray.init(address=cfg.ray.address, runtime_env=env, log_to_driver=False,
                         logging_level=logging.WARNING)
            else:
                start_local_ray(cfg.ray.num_cpus, env)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise SearchError(f"cannot connect to the Ray cluster at {cfg.ray.address!r}: {err}. "
                          "Check the address (auto, HOST:6379 of a running head) or leave "
                          "ray.address empty for a local Ray.") from err
    if not cfg.ray.address:
        record_local_ray(workdir)  # for the next start, should this driver be killed
    elif progress:
        print(f"[search] {_cluster_line(cfg.ray.address)}", flush=True)


def _cluster_line(address: str) -> str:
    """Which cluster the driver joined: its address, live nodes, CPUs and GPUs."""
    import ray

    nodes = sum(bool(n.get("Alive")) for n in ray.nodes())
    total = ray.cluster_resources()
    return (f"joined the Ray cluster at {_resolved_address(address)}: {nodes} node(s), "
            f"{total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs")


_NO_CLUSTER_HINT = "leave out --address (ray.address) for a local Ray"


def _resolved_address(address: str) -> str:
    """The cluster `ray.init(address=...)` joins: `auto` is $RAY_ADDRESS, else the latest
    `ray start` head on this machine."""
    from ray._private.services import get_ray_address_from_environment

    if address != "auto":
        return address
    try:
        return get_ray_address_from_environment("auto", None)
    except ConnectionError:
        raise SearchError(f"--address auto: no running Ray cluster found on this machine "
                          f"($RAY_ADDRESS is unset and no `ray start` head runs here). Start "
                          f"one (`ray start --head`), give its HOST:PORT, or "
                          f"{_NO_CLUSTER_HINT}") from None


def _reachable_cluster(address: str) -> None:
    """Refuse, in seconds, a cluster address nothing answers at (`ray.init` would wait for
    it for ever)."""
    import socket

    resolved = _resolved_address(address)
    host, _, port = resolved.split("://")[-1].rpartition(":")
    if not host or not port.isdigit():
        raise SearchError(f"ray.address {address!r} is not auto or HOST:PORT (e.g. "
                          f"10.0.0.5:6379); give a running head's address, or "
                          f"{_NO_CLUSTER_HINT}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as err:
        raise SearchError(
            f"the Ray cluster at {resolved} does not answer ({err.strerror or err}): no Ray "
            f"head listens there. Start it (`ray start --head --port {port}`, or "
            f"clusters/local-cluster.sh start N), check the address, or "
            f"{_NO_CLUSTER_HINT}") from None


def _latest_experiment(storage: Path) -> str | None:
    """The newest search in `storage` (its first stage's experiment)."""
    candidates = [p for p in storage.glob("*") if (p / "tuner.pkl").is_file()
                  and not p.name.endswith(FINALIST_SUFFIX)]
    return max(candidates, key=lambda p: p.stat().st_mtime).name if candidates else None


def _log_searcher_state(tracker: Any, parent: str, experiment_dir: Path) -> None:
    """Keep the searcher's final state (Tune saved it with the experiment) with the search in
    MLflow, so a later search can warm-start from it by name (the RL searcher's transfer)."""
    # Tune names each state file by when its run started (a resumed run writes a new one);
    # by name, not by mtime: a resumed run's end re-syncs the old file too, a moment later.
    states = sorted(experiment_dir.glob("searcher-state-*"), key=lambda p: p.name)
    if not states:
        return
    try:
        tracker.client.log_text(parent, states[-1].read_text(), SEARCHER_ARTIFACT)
    except Exception as err:  # MLflow raises several types for a refused artifact write
        # Only a later search's warm start by name needs it: the search itself is complete.
        print(f"[search] warning: the searcher's state was not kept in MLflow "
              f"({type(err).__name__}: {str(err).strip()[:200]}); a later search can still "
              f"warm-start from its file: searcher_options.warm_start: {states[-1]}",
              flush=True)


def _resolve_warm_start(cfg: PrunetuneConfig, workdir: Path,
                        tracking_uri: str) -> tuple[dict[str, Any], History]:
    """The searcher's options with `searcher_options.warm_start` as a file (a path is kept, a
    search name is looked up in MLflow and its saved searcher state downloaded), and what
    `search.warm_start` names (`warm_start.read_history`). A searcher that transfers a saved
    state (rl) takes the first one of its kind those searches kept unless its own option names
    one; the trials are then not given to it as prior trials (the state holds them)."""
    from .searchers import check_options

    options = dict(cfg.search.searcher_options)
    ref = options.get("warm_start")
    if ref is not None and not Path(str(ref)).expanduser().exists():
        options["warm_start"] = _downloaded_state(cfg, workdir, tracking_uri, str(ref))
    cls = check_options(cfg.search.searcher, options)
    history = read_history(cfg, tracking_uri, workdir, cls)
    if history.state is not None and "warm_start" not in options:
        options["warm_start"] = history.state
    if "warm_start" in options:
        history.trials = []
    return options, history


def _downloaded_state(cfg: PrunetuneConfig, workdir: Path, tracking_uri: str, ref: str) -> str:
    """The saved searcher state of search `ref`, downloaded into the workdir."""
    from mlflow import MlflowClient

    from .results import SearchNotFoundError, find_search

    client = MlflowClient(tracking_uri)
    try:
        parent = find_search(client, cfg.tracking.experiment, ref)
    except SearchNotFoundError as err:
        raise SearchError(f"searcher_options.warm_start {ref!r} is neither a file nor a search "
                          f"in {tracking_uri}: {err}") from err
    dest = workdir / "warm_start" / parent.info.run_id
    dest.mkdir(parents=True, exist_ok=True)
    try:
        return client.download_artifacts(parent.info.run_id, SEARCHER_ARTIFACT, str(dest))
    except Exception as err:  # MLflow raises several types for a missing artifact
        raise SearchError(f"search {ref!r} has no saved searcher state ({SEARCHER_ARTIFACT}): "
                          f"it ran before searcher states were kept, or did not finish") from err


def _schemes_line(space: Any, mapping: str = "rules") -> str:
    """How the space uses `space.schemes`: searched per group, or one per unit by mapping."""
    d = space.describe()
    counts: dict[str, int] = {}
    for unit in d["units"].values():
        counts[unit["scheme"]] = counts.get(unit["scheme"], 0) + 1
    mapped = ", ".join(f"{s} on {n} units" for s, n in sorted(counts.items()))
    # Which channels a ratio removes: the criterion is a config choice (space.importance).
    chosen = (f"; channel pruning removes each unit's lowest-{d['importance']} channels "
              "(space.importance)" if "channel" in d["schemes"] else "")
    if d["scheme_search"]:
        return (f"schemes {d['schemes']}: searched per group (space.scheme_search); the "
                f"{d['device']} mapping's choice first ({mapped}){chosen}")
    how = ("measured mapping (prunetune map)" if mapping == "measured" else
           f"rule-based {d['device']} mapping")
    return (f"schemes {d['schemes']}: one per unit, by the {how}: "
            f"{mapped} (space.scheme_search: true searches them per group){chosen}")


def _requested_name(cfg: PrunetuneConfig, storage: Path, resume: bool) -> str | None:
    """The search's name: the config's; else, resuming, the newest search in `storage` (None
    when there is none), or a new one made from the model and data."""
    if cfg.name:
        return cfg.name
    return _latest_experiment(storage) if resume else search_name(cfg)


def _experiment_name(name: str | None, storage: Path, resume: bool) -> str:
    """The Tune experiment (= search) name; refuses a resume with nothing to resume and a new
    search over an existing one."""
    from ray import tune

    if resume:
        if name is None or not tune.Tuner.can_restore(str(storage / name)):
            raise SearchError(f"nothing to resume: no search {name or ''} in {storage}. "
                              "Give the search's name (config 'name') and the same storage_path.")
        for folder in (storage / name, storage / f"{name}{FINALIST_SUFFIX}"):
            if folder.is_dir():
                _check_tune_state(folder, name)
        return name
    if (storage / name / "tuner.pkl").exists():
        raise SearchError(f"a search named {name!r} already exists in {storage}; use "
                          "--resume to continue it or choose another name")
    return name


def _check_tune_state(folder: Path, name: str) -> None:
    """Refuse, in seconds, to resume from Tune state files that do not read whole: Tune itself
    would silently start the experiment afresh (a damaged experiment state), wait for ever (a
    damaged searcher state) or fail minutes later (a damaged tuner.pkl)."""
    import pickletools

    # Tune pickles its tuner and its search generator's state (whatever the file is called);
    # the experiment state and prunetune's searcher states are JSON.
    files = [folder / "tuner.pkl", *sorted(folder.glob("experiment_state-*.json")),
             *sorted(folder.glob("search_gen_state-*")), *sorted(folder.glob("searcher-state-*"))]
    for path in files:
        try:
            data = path.read_bytes()
            if data[:1] == b"\x80":  # a pickle: walk its opcodes, build no object
                for _ in pickletools.genops(io.BytesIO(data)):
                    pass
            elif not isinstance(json.loads(data), dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError, UnicodeDecodeError) as err:
            raise SearchError(
                f"cannot resume search {name!r}: Ray Tune's state file {path} is damaged "
                f"({err}). Restore it from a backup, or start the search again under another "
                f"name (--name); the trials it finished stay in MLflow (prunetune results "
                f"{name})") from None


def _dense_baseline(cfg: PrunetuneConfig, progress: bool) -> DenseBaseline:
    from prunetune.trainers import dense_reference_ms, evaluate, load_data, pretrain_dense

    from .config import latency_device

    dense = pretrain_dense(cfg.model, cfg.data, cfg.pretrain, cache_dir=cfg.cache_dir,
                           progress=progress)
    data = load_data(cfg.data)
    val = evaluate(dense.model, data.loader("val"))
    metrics = {"val_accuracy": val.accuracy, "val_loss": val.loss,
               **{k: v for k, v in dense.metrics.items() if k.startswith("test_")}}
    reference = None
    if cfg.search.latency == "measured":  # with a latency table, trials share its prediction
        reference = dense_reference_ms(dense.model.eval(), data.example_input(1),
                                       latency_device(cfg), cfg.search.latency_repeats,
                                       backend=cfg.latency.backend,
                                       threads=cfg.latency.threads)
        metrics["dense_latency_ms"] = reference[1]
    return DenseBaseline(dense, data.example_input(1), val.accuracy, metrics, reference,
                         steps_per_epoch=len(data.loader("train")))


def _measured_scan(cfg: PrunetuneConfig, dense: DenseBaseline, workdir: Path,
                   progress: bool) -> SchemeScan | None:
    """`space.mapping: measured`: the sensitivity scan on the trials' device (cached per dense
    model, so a `prunetune map` before the search measured it already)."""
    import torch

    from .config import latency_device
    from .scheme_map import measured_scan

    if cfg.space.mapping != "measured":
        return None
    device = torch.device(latency_device(cfg)).type
    scan, path = measured_scan(cfg, dense.result.model, device=device, workdir=workdir,
                               progress=progress)
    if progress:
        print(f"[search] measured scheme mapping: {path}", flush=True)
    return scan


def _hold_latency_actor(cfg: PrunetuneConfig, workdir: Path) -> Any:
    """With `search.latency: table`, the device's latency-table actor, created by the driver:
    a non-detached actor lives as long as its creator holds it, so one that a trial created
    died with that trial's handle while other trials were still asking it. None otherwise."""
    if cfg.search.latency != "table":
        return None
    from prunetune.trainers.latency_actor import latency_service

    from .config import latency_device
    from .spaces import latency_table_file

    return latency_service(str(latency_table_file(cfg, workdir)), device=latency_device(cfg),
                           repeats=cfg.search.latency_repeats, backend=cfg.latency.backend,
                           threads=cfg.latency.threads)


def _latency_line(cfg: PrunetuneConfig, space: Any) -> str:
    """What times the trials, where, and the widths kept channels are rounded to."""
    from .config import latency_device

    rounding = (f"kept channels rounded to multiples of {space.round_to}" if space.round_to
                else "kept channels of any width")
    how = "predicted from the latency table" if cfg.search.latency == "table" else "measured"
    threads = f"{cfg.latency.threads} thread{'s' if cfg.latency.threads > 1 else ''}"
    return (f"latency {how} by the {cfg.latency.backend} backend on {latency_device(cfg)} "
            f"({threads}); {rounding} (space.round_to: {cfg.space.round_to})")


def run_search(cfg: PrunetuneConfig, *, resume: bool = False,
               progress: bool = True) -> SearchSummary:
    """Run (or resume) a search: its stages as Ray Tune experiments, tracked in MLflow."""
    from .results import check_store

    _quiet_start_up()
    if cfg.tracking_uri().startswith(("http://", "https://")):
        # A tracking server that does not answer fails now, in seconds, before any training,
        # Ray start or Tune state (a sqlite store is created by the search itself).
        check_store(cfg.tracking_uri())
    if cfg.ray.address:  # as the tracking server: in seconds, before any training
        _reachable_cluster(cfg.ray.address)
    storage = cfg.storage_dir()
    storage.mkdir(parents=True, exist_ok=True)
    requested = _requested_name(cfg, storage, resume)
    if requested is None:  # nothing to resume
        _experiment_name(requested, storage, resume)
    # One driver per search, from before anything writes its MLflow store or Tune state.
    with hold_search_lock(storage, str(requested), progress):
        return _run_locked(cfg, _experiment_name(requested, storage, resume), storage, resume,
                           progress)


def _run_locked(cfg: PrunetuneConfig, name: str, storage: Path, resume: bool,
                progress: bool) -> SearchSummary:
    """`run_search` once the driver holds the search's lock."""
    from ray import tune

    workdir = cfg.workdir_path()
    workdir.mkdir(parents=True, exist_ok=True)
    for line in stop_leftovers(workdir):  # what a killed driver's local Ray left running
        print(f"[search] {line}", flush=True)
    # Before any training: a bad searcher, option or warm_start fails in seconds. A resumed
    # first stage restores its searcher with what it learned (warm start included) from
    # Tune's saved state; one that never started builds it again, warm start and all.
    restored = resume and tune.Tuner.can_restore(str(storage / name))
    options, history = ({}, History()) if restored else _resolve_warm_start(
        cfg, workdir, cfg.tracking_uri())

    dense = _dense_baseline(cfg, progress)
    cfg, fidelity = first_stage_fidelity(cfg, dense.result.model, dense.steps_per_epoch)
    if progress and cfg.space.budget is not None and cfg.space.budget.kind == "latency":
        print("[search] latency budget: fitting it from the latency table (measuring missing "
              "layer entries)", flush=True)
    space = build_space(cfg, dense.result.model, dense.example, workdir,
                        _measured_scan(cfg, dense, workdir, progress))
    stages = search_stages(cfg, name)
    if progress:
        plan = " then ".join(f"{s.trials} {'proxy trial' if s.name == 'proxy' else s.name}"
                             f"{'s' if s.trials > 1 else ''}" for s in stages)
        print(f"[search] {name}: {space.dim}-dimensional space over {space.n_units} units, "
              f"{plan} ({cfg.search.max_concurrent} at a time), searcher "
              f"{cfg.search.searcher}; dense val accuracy {dense.val_accuracy:.4f}", flush=True)
        print(f"[search] {_schemes_line(space, cfg.space.mapping)}", flush=True)
        print(f"[search] {_latency_line(cfg, space)}", flush=True)
        note = searcher_note(cfg.search.searcher)
        if note:
            print(f"[search] {note}", flush=True)
        if fidelity:
            print(f"[search] {fidelity}", flush=True)
    prior = _warm_start_line(cfg, history, space, options, progress)
    _init_ray(cfg, progress, workdir)
    table_actor = _hold_latency_actor(cfg, workdir)  # noqa: F841 (held until the search ends)
    run = SearchRun(cfg, name, storage, workdir, dense, space, options, progress, prior=prior)
    # Writes a driver that ended during a tracking outage kept go in before anything is read.
    settle_tracking(run, stage_tracker(run, stages[0]))
    for index, stage in enumerate(stages):
        if stage_done(run, stages, index, resume):
            if progress:
                print(f"[search] stage {index + 1}/{len(stages)} ({stage.name}): finished "
                      "before the interruption", flush=True)
            continue
        run_stage(run, stages, index, resume)
    return _summarise(run, stages)


def searcher_note(name: str) -> str | None:
    """The line a search prints when its searcher is experimental (`PolicySearcher`), else
    None."""
    from .searchers import searcher_class

    why = searcher_class(name).experimental
    return f"note: searcher {name} is experimental: {why}" if why else None


def _warm_start_line(cfg: PrunetuneConfig, history: History, space: Any,
                     options: dict[str, Any], progress: bool) -> list[Any]:
    """`search.warm_start`'s trials mapped into `space` (the searcher's prior trials), and
    the line saying what the search takes from the earlier ones."""
    prior, line = prior_trials(history, space)
    if "warm_start" in options:
        kept = (f"search {history.state_from} kept" if options["warm_start"] == history.state
                else "searcher_options.warm_start names")
        line = (f"warm start from {', '.join(history.searches)}: {cfg.search.searcher} "
                f"transfers the searcher state {kept}, in place of their trials")
    if progress and history.searches:
        print(f"[search] {line}", flush=True)
    return prior


def _summarise(run: SearchRun, stages: list[Stage]) -> SearchSummary:
    """Write the search's summary on its parent run from the child runs and end it."""
    cfg = run.cfg
    tracker = stage_tracker(run, stages[-1])
    settle_tracking(run, tracker)
    from mlflow.exceptions import MlflowException

    from .mlflow_params import tracking_failed

    try:
        parent = tracker.find_search()
        trials = search_trials(tracker.client, tracker.client.get_run(parent))
    except (MlflowException, OSError) as err:
        raise tracking_failed(run.name, err) from err
    _log_searcher_state(tracker, parent, run.storage / run.name)
    best = tracker.finish_search(trials)
    finalists = sorted(({"trial": t.name, **t.metrics} for t in trials
                        if t.stage == "finalist" and t.status == "finished"),
                       key=lambda r: -r.get("accuracy", -math.inf))
    summary = SearchSummary(name=run.name, parent_run_id=parent, tracking_uri=cfg.tracking_uri(),
                            experiment=cfg.tracking.experiment,
                            trials_finished=sum(t.status == "finished" for t in trials),
                            trials_planned=sum(s.trials for s in stages), best=best,
                            storage_dir=run.storage / run.name, finalists=finalists)
    if run.progress:
        _print_summary(summary)
    return summary


def _print_summary(s: SearchSummary) -> None:
    print(f"\n[search] {s.name}: {s.trials_finished} trials finished "
          f"(MLflow parent run {s.parent_run_id})")
    if s.finalists:
        cols = ["trial", "proxy_accuracy", "accuracy", "accuracy_drop", "flops_ratio",
                "speedup", "latency_ms"]
        print("[search] finalists (proxy score, then fine-tuned):")
        print(format_table(s.finalists, cols))
    if s.best:
        b = s.best
        print(f"[search] best: {b['trial']}, accuracy {b['accuracy']:.4f} (drop "
              f"{b['accuracy_drop']:+.4f}), speedup {b['speedup']:.2f}x, FLOPs "
              f"x{b['flops_ratio']:.2f}, params x{b['params_ratio']:.2f}")
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
