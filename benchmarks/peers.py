"""prunetune beside the tools a user would pick instead: Optuna's TPE driven through Ray Tune,
and NVIDIA ModelOpt's FastNAS, on the search-efficiency benchmark's proxy objective.

    python benchmarks/peers.py [--seeds 0 1 2 3 4] [--trials 200]
        [--methods fastnas-div8,fastnas-div4,optuna-tpe,optuna-tpe-raw,optuna-tpe-fill]
        [--report]
    python benchmarks/peers.py --objective resnet56-converged \
        --methods optuna-tpe-fill,optuna-gp-fill,optuna-cmaes-fill     # issue 27's fair peers
    python benchmarks/peers.py --smoke --out /tmp/peers-smoke.json   # tiny, ~1 minute

Objective (`--objective`, one of `search_efficiency.OBJECTIVES`; default `resnet56`,
`Objective(500, bn_calib=256)`): ResNet-56 pretrained on Fashion-MNIST, channel pruning under a
50% FLOPs budget, reward = validation accuracy on 500 images after BatchNorm re-estimation on
256 training images, no fine-tuning. `resnet56-converged` / `mobilenetv2-converged`: the
end-to-end benchmark's dense models (trained to their plateau) at 50% / 30% FLOPs, the reward
on 3000 validation images, 150 trials; results in `peers_<objective>.json`, prunetune's runs
read from that objective's search_efficiency file.

- `bo-default`, `rl-default`, `random` (and `-nofill`: the defaults before budget fill was
  on): prunetune's searchers, read (never rerun) from results/search_efficiency.json at
  report time, when that file's objective is this one.
- `optuna-tpe`: `TPESampler(multivariate=True, seed=seed)` through Tune's `OptunaSearch`, a
  real `tune.Tuner` (one trial at a time, reused actors), over prunetune's space: one
  `tune.uniform(0, 1)` per dimension of the space `random` gets from a config; a trial decodes
  its point with the product's decode (budget projection included), without budget fill;
  `optuna-tpe-fill` the same with `space.budget.fill` (every point decoded onto the budget).
- `optuna-gp-fill`, `optuna-cmaes-fill`: Optuna's `GPSampler(seed=seed)` and
  `CmaEsSampler(seed=seed)` (defaults otherwise) in place of TPE, as `optuna-tpe-fill`.
- `optuna-tpe-raw`: the same over the raw per-unit channel ratios (`tune.uniform(0, 0.8)` per
  prunable unit), what a Tune user writes without prunetune: Optuna sees
  `accuracy - PENALTY * (flops_ratio - keep)` over the budget. For the yardsticks a trial over
  the budget has no result and is counted as a budget violation.
- `fastnas-divN`: `modelopt.torch.prune.prune(mode="fastnas")` on the same dense model, FLOPs
  constraint "50%", channel choices in multiples of N (the default, 32, leaves ResNet-56's
  16- and 32-channel layers no choice, see `fastnas_space`), score function = the same
  accuracy after the same BatchNorm calibration. Its evaluations are the score function's
  calls. It is deterministic (a sensitivity sweep, then a binary search over it), so it runs
  once, not per seed. Its subnet is scored again by prunetune's yardstick (count_cost FLOPs,
  calibration and evaluation on the objective's images).

Resumable: finished runs in --out are skipped; an Optuna run in progress is checkpointed
(rewards, pickled OptunaSearch) every few trials under --work; FastNAS restarts whole.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from _efficiency_report import (  # noqa: E402
    peer_summary,
    peer_table,
    plot_peers,
    single_result_run,
)
from _machine import machine_info  # noqa: E402
from _peers_fastnas import fastnas_space, run_fastnas  # noqa: E402

from prunetune.files import atomic_write_json  # noqa: E402
from prunetune.search_spaces import Policy, UnitPolicy  # noqa: E402
from prunetune.trainers import default_cache_dir  # noqa: E402

RESULTS = BENCH / "results"
OUT = RESULTS / "peers.json"
# What a config gets now; `random` and (-nofill) the searchers without `space.budget.fill`.
PRUNETUNE_METHODS = ("bo-default", "rl-default", "random-default", "random",
                     "bo-default-nofill", "rl-default-nofill", "bo-default-start",
                     "rl-default-start", "random-default-start")
# Penalty per unit of FLOPs ratio over the budget in optuna-tpe-raw's score: 1% over costs 0.1
# accuracy, so any policy more than ~8% over scores below every feasible one (>= chance, 0.1),
# while those just over still rank among themselves and steer TPE to the boundary.
PENALTY = 10.0
RAW_MAX_RATIO = 0.8  # prunetune's own ratio bounds, (0, 0.8)


@dataclass(frozen=True)
class Peer:
    """A peer method: Optuna (its `sampler`, see `SAMPLERS`) over "prunetune" (the product's
    space) or "raw" ratios, or FastNAS with channel choices in multiples of `divisor`."""

    kind: str  # "optuna" | "fastnas"
    space: str = ""
    divisor: int = 0
    sampler: str = "tpe"


PEERS: dict[str, Peer] = {
    "fastnas-div8": Peer("fastnas", divisor=8),
    "fastnas-div4": Peer("fastnas", divisor=4),
    "optuna-tpe": Peer("optuna", space="prunetune"),
    "optuna-tpe-raw": Peer("optuna", space="raw"),
    "optuna-tpe-fill": Peer("optuna", space="prunetune-fill"),
    # Optuna's other model-based samplers over the same decode with fill (issue 27): its
    # Gaussian-process BO and CMA-ES (the `cmaes` package)
    "optuna-gp-fill": Peer("optuna", space="prunetune-fill", sampler="gp"),
    "optuna-cmaes-fill": Peer("optuna", space="prunetune-fill", sampler="cmaes"),
}
# Each sampler: its class in `optuna.samplers` and the arguments it gets besides the seed
# (defaults otherwise).
SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {"tpe": ("TPESampler", {"multivariate": True}),
                                                   "gp": ("GPSampler", {}),
                                                   "cmaes": ("CmaEsSampler", {})}


def sampler_record(name: str) -> str:
    """The sampler as a run records it: `TPESampler(multivariate=True, seed=seed)`."""
    cls, kwargs = SAMPLERS[name]
    return f"{cls}({''.join(f'{k}={v!r}, ' for k, v in kwargs.items())}seed=seed)"


def make_sampler(name: str, seed: int) -> Any:
    import optuna

    cls, kwargs = SAMPLERS[name]
    return getattr(optuna.samplers, cls)(seed=seed, **kwargs)
# prunetune's space for `random`, with `space.budget.fill` pinned: "prunetune" without fill
# (the default when this benchmark was first run), "prunetune-fill" with it (the default
# since): a change of the product's default must not change what a method's runs measure.
SPACE_METHOD = {"prunetune": "random-default-nofill", "prunetune-fill": "random-default-fill"}


@dataclass(frozen=True)
class Problem:
    """How a process builds the objective; small and picklable, so Tune ships it to trials.
    A name of `search_efficiency.OBJECTIVES` ("resnet56", the first one; "resnet56-converged",
    "mobilenetv2-converged": from dense models trained to their plateau); "smoke": ResNet-20
    on scikit-learn digits (the test's)."""

    kind: str = "resnet56"
    val_subset: int = 500
    bn_calib: int = 256


# ------------------------------------------------------------------------------------------
# The objective, built once per process


_CACHE: dict[Problem, Any] = {}
_BUILDS = [0]  # objectives built by this process (the smoke test checks trials reuse one)


def build_objective(problem: Problem) -> Any:
    """The problem's `Objective`, cached per process: a reused Tune trial actor keeps the
    dense model and the data between trials instead of rebuilding them."""
    if problem not in _CACHE:
        from search_efficiency import OBJECTIVES, Objective

        torch.set_num_threads(1)  # one core per process on the shared machine
        if problem.kind == "smoke":
            _CACHE[problem] = _smoke_objective(Objective, problem)
        else:
            spec = OBJECTIVES[problem.kind]
            _CACHE[problem] = Objective(problem.val_subset, bn_calib=problem.bn_calib,
                                        model=spec.model, budget=spec.budget, data=spec.data,
                                        pretrain=spec.pretrain)
        _BUILDS[0] += 1
    return _CACHE[problem]


def _smoke_objective(objective_cls: type, problem: Problem) -> Any:
    """ResNet-20 on scikit-learn's digits, pretrained for 2 epochs: the same `Objective`
    (its evaluate, spaces and describe) on a problem a test can build in seconds."""
    from collections import OrderedDict

    from prunetune.search_spaces import Budget, analyze
    from prunetune.trainers import (
        DataConfig,
        FinetuneConfig,
        ModelConfig,
        TrainConfig,
        evaluate,
        load_data,
        pretrain_dense,
    )

    obj = objective_cls.__new__(objective_cls)
    data_cfg = DataConfig(name="digits", batch_size=64, val_subset=problem.val_subset)
    obj.model, obj.budget = ModelConfig(name="resnet20"), Budget(kind="flops", keep=0.5)
    obj.data_cfg, obj.pretrain_cfg = data_cfg, TrainConfig(epochs=2, lr=0.05)
    pre = pretrain_dense(obj.model, data_cfg, obj.pretrain_cfg, progress=False)
    obj.pretrain_metrics, obj.dense = pre.metrics, pre.model.eval()
    obj.data = load_data(data_cfg)
    obj.proxy = FinetuneConfig(epochs=0, bn_calibration=problem.bn_calib, device="cpu")
    obj.bn_calib, obj.example = problem.bn_calib, obj.data.example_input(1)
    obj.analysis = analyze(obj.dense, obj.example)
    obj.val_subset = len(obj.data.val)
    obj.dense_accuracy = evaluate(obj.dense, obj.data.loader("val")).accuracy
    obj._cache, obj._cache_size, obj.eval_s = OrderedDict(), 4096, []
    return obj


def prunetune_space(obj: Any, kind: str = "prunetune") -> Any:
    """The space `prunetune search` builds for the `random` searcher from a config (fill as
    `SPACE_METHOD` pins it): one dimension per unit, the product's decode and budget
    projection; cached per objective."""
    from search_efficiency import METHODS

    spaces = obj.__dict__.setdefault("_peers_spaces", {})
    if kind not in spaces:
        spaces[kind] = obj.default_space(METHODS[SPACE_METHOD[kind]])[0]
    return spaces[kind]


def channel_units(obj: Any) -> list[str]:
    return [u.name for u in obj.analysis.units if "channel" in u.schemes]


def _write_json(path: Path, data: Any) -> None:
    atomic_write_json(path, data, indent=1)


def code_state() -> dict[str, Any]:
    """The product's code a run used: commit, files changed in the working tree and a hash of
    that diff (the product may be edited while a long benchmark runs)."""
    import subprocess

    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=BENCH.parent, capture_output=True,
                              text=True, check=False).stdout

    product = ["prunetune", "orchestrator", "search_spaces", "trainers", "kernels"]
    diff = git("diff", "HEAD", "--", *product)
    return {"commit": git("rev-parse", "HEAD").strip(),
            "modified": git("diff", "HEAD", "--name-only", "--", *product).split(),
            "diff_sha256": hashlib.sha256(diff.encode()).hexdigest()[:16]}


# ------------------------------------------------------------------------------------------
# Optuna's TPE through Ray Tune


def tune_trial(config: dict[str, Any], problem: Problem, space_kind: str,
               penalty: float = PENALTY) -> None:
    """One Tune trial: the point (or raw ratios) to a policy, the objective's accuracy and
    FLOPs ratio, and the score Optuna sees (the accuracy, minus the penalty over budget)."""
    from ray import tune

    obj = build_objective(problem)
    if space_kind in SPACE_METHOD:
        space = prunetune_space(obj, space_kind)
        x = np.asarray([config[f"x{i:02d}"] for i in range(space.dim)], dtype=float)
        policy = space.decode(x).to_json()
    else:
        policy = Policy({u: UnitPolicy("channel", float(config[f"r{i:02d}"]))
                         for i, u in enumerate(channel_units(obj))}).to_json()
    t0 = time.perf_counter()
    accuracy, flops = obj.evaluate(policy)
    over = max(0.0, flops - obj.budget.keep)
    tune.report({"score": accuracy - penalty * over if over > 0 else accuracy,
                 "accuracy": accuracy, "flops_ratio": flops,
                 "eval_s": time.perf_counter() - t0, "pid": os.getpid(), "builds": _BUILDS[0]})


def param_space(space_kind: str, n: int) -> dict[str, Any]:
    from ray import tune

    if space_kind in SPACE_METHOD:
        return {f"x{i:02d}": tune.uniform(0.0, 1.0) for i in range(n)}
    return {f"r{i:02d}": tune.uniform(0.0, RAW_MAX_RATIO) for i in range(n)}


def _recorder(run: dict[str, Any], part: Path, searcher: Any, every: int, keep: float) -> Any:
    """A Tune callback that records each finished trial in order (one trial at a time, so
    completion order is trial order) and checkpoints the run and the searcher."""
    from ray import tune

    class Recorder(tune.Callback):
        def __init__(self) -> None:
            self.t_last = time.perf_counter()

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                            **info: Any) -> None:
            if "score" not in result:
                return
            now = time.perf_counter()
            ok = result["flops_ratio"] <= keep + 1e-9
            run["rewards"].append(result["accuracy"] if ok else None)
            for key in ("score", "accuracy", "flops_ratio", "eval_s"):
                run[key].append(result[key])
            run["trial_s"].append(now - self.t_last)
            run["trial_pid"].append(result["pid"])
            run["objective_builds"] = max(run.get("objective_builds", 0), result["builds"])
            run["wall_s"] += now - self.t_last
            self.t_last = now

        def on_trial_complete(self, iteration: int, trials: list, trial: Any,
                              **info: Any) -> None:
            # Tune hands the searcher its result before the callbacks, so the study saved
            # here already holds this trial.
            n = len(run["rewards"])
            if n % every == 0 or n == run["trials"]:
                searcher.save(str(part.with_suffix(".optuna.pkl")))
                _write_json(part, run)
            if n % 10 == 0:
                best = max((r for r in run["rewards"] if r is not None), default=None)
                print(f"  {run['method']} seed {run['seed']}: {n}/{run['trials']} best "
                      f"{best} ({run['wall_s']:.0f}s)", flush=True)

    return Recorder()


def run_optuna(method: str, seed: int, trials: int, problem: Problem, dim: int, keep: float,
               work: Path, every: int = 5) -> dict[str, Any]:
    """One Optuna-through-Tune run of `trials` trials, resumed from `work` if checkpointed."""
    import optuna
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    peer = PEERS[method]
    # Without the trial count: a longer run continues a shorter one's checkpoint.
    # A TPE peer's record as before there was a choice of sampler: its checkpoints stay valid.
    described = {k: v for k, v in asdict(peer).items() if k != "sampler" or v != "tpe"}
    config = {"peer": described, "penalty": PENALTY, "sampler": sampler_record(peer.sampler),
              "optuna": optuna.__version__, "ray": ray.__version__, "problem": asdict(problem)}
    tag = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]
    part = work / f"{method}-{tag}-seed{seed}.json"
    searcher = OptunaSearch(OptunaSearch.convert_search_space(param_space(peer.space, dim)),
                            metric="score", mode="max", sampler=make_sampler(peer.sampler, seed))
    run: dict[str, Any] = {"method": method, "seed": seed, "config": config, "trials": trials,
                           "rewards": [], "score": [], "accuracy": [], "flops_ratio": [],
                           "eval_s": [], "trial_s": [], "trial_pid": [], "wall_s": 0.0,
                           "resumed_at": [], "code": []}
    if part.is_file() and part.with_suffix(".optuna.pkl").is_file():
        run = {**run, **json.loads(part.read_text())}  # fields newer than the file: empty
        searcher.restore(str(part.with_suffix(".optuna.pkl")))
        run["resumed_at"].append(len(run["rewards"]))
        run["trials"] = trials
    left = trials - len(run["rewards"])
    run.setdefault("code", []).append({"from_trial": len(run["rewards"]), **code_state()})
    if left > 0:
        import peers  # by reference: a trial process imports it (start_ray), keeping its cache

        trainable = tune.with_parameters(peers.tune_trial, problem=problem,
                                         space_kind=peer.space)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=left,
                                        max_concurrent_trials=1, reuse_actors=True),
            run_config=tune.RunConfig(name=f"{method}-seed{seed}-{tag}-from{trials - left}",
                                      storage_path=str(work / "ray_results"), verbose=0,
                                      callbacks=[_recorder(run, part, searcher, every, keep)]))
        grid = tuner.fit()
        if grid.errors:
            raise RuntimeError(f"{method} seed {seed}: trials failed: {grid.errors[0]}")
    if len(run["rewards"]) != trials:
        raise RuntimeError(f"{method} seed {seed}: {len(run['rewards'])} of {trials} recorded")
    run["optuna_trials_in_study"] = len(searcher._ot_study.trials)
    return run


def start_ray() -> bool:
    """A local Ray whose workers can import this module and search_efficiency by name (the
    trial function is pickled by reference); False when one was already running."""
    import ray

    if ray.is_initialized():
        return False
    path = os.pathsep.join(p for p in (str(BENCH), os.environ.get("PYTHONPATH", "")) if p)
    # Two malloc arenas: a trial process's many threads otherwise keep ~1 GB more of freed
    # memory than the same evaluations in one thread, on a machine other benchmarks share.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, "MALLOC_ARENA_MAX": "2",
                                       "PYTHONWARNINGS":
                                       "ignore::DeprecationWarning,ignore::FutureWarning"}})
    return True


# ------------------------------------------------------------------------------------------
# The runs the yardsticks read


def prunetune_runs(path: Path, objective: dict[str, Any], trials: int) -> dict[str, Any]:
    """prunetune's finished runs of PRUNETUNE_METHODS from search_efficiency.json, when its
    objective is this one, marked with their source: those of the method's definition now,
    and as search_efficiency.py lists them, runs of another method that are exactly that
    definition (after a default changed); the stale ones are counted, not used."""
    from search_efficiency import _default_aliases, _identity, method_config

    if not path.is_file():
        return {"source": _rel(path), "runs": [], "note": "file absent"}
    data = json.loads(path.read_text())
    if _identity(data.get("objective") or {}) != _identity(objective):
        return {"source": _rel(path), "runs": [],
                "note": "another objective: its runs are not comparable, none copied"}
    runs, stale = [], 0
    for r in data["runs"] + _default_aliases(data["runs"]):
        if r["method"] not in PRUNETUNE_METHODS or len(r["rewards"]) < trials:
            continue
        if "alias_of" not in r and r.get("config") != method_config(r["method"]):
            stale += 1
            continue
        keep = objective["budget"]["keep"]
        rewards = [a if f <= keep + 1e-9 else None
                   for a, f in zip(r["rewards"][:trials], r["flops_ratio"][:trials], strict=True)]
        runs.append({"method": r["method"], "seed": r["seed"], "rewards": rewards,
                     "flops_ratio": r["flops_ratio"][:trials], "wall_s": r.get("wall_s"),
                     "source": _rel(path), "alias_of": r.get("alias_of")})
    return {"source": _rel(path), "runs": runs, "stale_runs_left_out": stale}


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(BENCH.parent))
    except ValueError:
        return str(path)


# ------------------------------------------------------------------------------------------
# The results file


def _locked(path: Path) -> Any:
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path.with_name(f".{path.name}.lock"))


def _update(out: Path, objective: dict[str, Any] | None = None,
            run: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge an Optuna run (by method and seed) or a FastNAS record (by method) into the
    results file under a lock. A file of another objective is refused."""
    from search_efficiency import _identity

    with _locked(out):
        res = (json.loads(out.read_text()) if out.is_file()
               else {"objective": None, "runs": [], "fastnas": []})
        if objective is not None:
            if res["objective"] and _identity(res["objective"]) != _identity(objective):
                raise SystemExit(f"{out} holds runs of another objective; use --out")
            res["objective"] = objective
        if run is not None and run["method"].startswith("fastnas"):
            res["fastnas"] = [r for r in res["fastnas"] if r["method"] != run["method"]] + [run]
        elif run is not None:
            res["runs"] = [r for r in res["runs"] if (r["method"], r["seed"])
                           != (run["method"], run["seed"])] + [run]
        _write_json(out, res)
    return res


def report(out: Path, prunetune_from: Path, trials: int) -> dict[str, Any]:
    """Recompute the summary and the plot from the runs in `out` and prunetune's runs in
    `prunetune_from` (copied into `out`, marked with their source)."""
    with _locked(out):
        res = json.loads(out.read_text())
        pt = prunetune_runs(prunetune_from, res["objective"], trials)
        ours = [{**r, "rewards": r["rewards"][:trials]} for r in res["runs"]
                if len(r["rewards"]) >= trials]
        # FastNAS: its one result (the subnet, scored by the yardstick) with its last call
        fastnas = [single_result_run(r["method"], r["score_calls"], r["accuracy"],
                                     not r["within_budget"])
                   for r in res["fastnas"] if r.get("status") == "ok"]
        runs = pt["runs"] + ours + fastnas
        res["prunetune"] = pt
        res["summary"] = {"trials": trials, **peer_summary(runs, list(PEERS)),
                          "fastnas": {r["method"]: {k: r.get(k) for k in (
                              "status", "error", "score_calls", "accuracy", "flops_ratio",
                              "within_budget", "modelopt", "divisor")} for r in res["fastnas"]}}
        _write_json(out, res)
    order = [*PRUNETUNE_METHODS, *PEERS]
    if runs:
        plot_peers(runs, res["objective"], out.with_suffix(".png"), order)
    print(peer_table(res["summary"], order, list(PEERS)))
    return res


# ------------------------------------------------------------------------------------------


def _smoke_prunetune(obj: Any, path: Path, seeds: list[int], trials: int, work: Path) -> None:
    """The smoke test's prunetune runs (bo alone and as `prunetune search` runs it, from the
    free baselines, and random; through search_efficiency's own loop) on the smoke
    objective, in search_efficiency's format."""
    from search_efficiency import run_one

    if path.is_file():
        return
    runs = [run_one(obj, m, s, trials, work / "prunetune") for s in seeds
            for m in ("bo-default", "bo-default-start", "random")]
    _write_json(path, {"objective": _describe(obj), "runs": runs})


def _describe(obj: Any) -> dict[str, Any]:
    described = {k: v for k, v in obj.describe().items() if k != "methods"}
    return {**described, "penalty": PENALTY, "machine": machine_info()}


def _run_all(args: argparse.Namespace, problem: Problem, methods: list[str]) -> None:
    obj = build_objective(problem)
    objective = _describe(obj)
    _update(args.out, objective)
    done = json.loads(args.out.read_text())
    for method in (m for m in methods if PEERS[m].kind == "fastnas"):  # first: learn early
        if any(r["method"] == method and r.get("status") == "ok" for r in done["fastnas"]):
            continue
        print(f"{method}", flush=True)
        rec = run_fastnas(obj, method, PEERS[method].divisor, args.work, code_state())
        if not any("space_by_divisor" in r for r in done["fastnas"]):
            rec["space_by_divisor"] = fastnas_space(obj)
        print(f"  {method}: {rec['status']} {rec.get('error', '')}", flush=True)
        _update(args.out, run=rec)
    if args.smoke:
        _smoke_prunetune(obj, args.prunetune_from, args.seeds, args.trials, args.work)
    dim, keep = prunetune_space(obj).dim, obj.budget.keep  # the same d with fill
    n_units = len(channel_units(obj))
    _CACHE.clear()  # the trials build their own; the driver needs its memory no longer
    del obj
    gc.collect()
    optuna_methods = [m for m in methods if PEERS[m].kind == "optuna"]
    started = start_ray() if optuna_methods else False
    try:
        for seed in args.seeds:  # seed-major: an interrupted benchmark has whole seeds
            for method in optuna_methods:
                if any(r["method"] == method and r["seed"] == seed
                       and len(r["rewards"]) >= args.trials for r in done["runs"]):
                    continue
                print(f"{method} seed {seed}", flush=True)
                n = dim if PEERS[method].space in SPACE_METHOD else n_units
                run = run_optuna(method, seed, args.trials, problem, n, keep, args.work)
                _update(args.out, run=run)
    finally:
        if started:
            import ray

            ray.shutdown()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from search_efficiency import OBJECTIVES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objective", choices=sorted(OBJECTIVES), default="resnet56",
                        help="the pruning problem (search_efficiency.py's objectives)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--trials", type=int, default=None,
                        help="evaluations per Optuna run (default: the objective's, 200 or 150)")
    parser.add_argument("--methods", default=",".join(PEERS),
                        help=f"comma-separated, from {', '.join(PEERS)}")
    parser.add_argument("--out", type=Path, default=None,
                        help="results file (default: peers.json for resnet56, else "
                             "peers_<objective>.json)")
    parser.add_argument("--prunetune-from", type=Path, default=None,
                        help="search_efficiency results holding prunetune's runs (default: "
                             "the objective's)")
    parser.add_argument("--work", type=Path, default=default_cache_dir() / "peers",
                        help="checkpoints of runs in progress")
    parser.add_argument("--report", action="store_true",
                        help="only recompute the summary and the plot from --out")
    parser.add_argument("--smoke", action="store_true",
                        help="ResNet-20 on digits, 1 seed, 8 evaluations (the test)")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if unknown := [m for m in methods if m not in PEERS]:
        parser.error(f"unknown method(s) {unknown}; choose from {', '.join(PEERS)}")
    spec = OBJECTIVES[args.objective]
    problem = (Problem("smoke", 300, 64) if args.smoke
               else Problem(args.objective, spec.val_subset))
    args.seeds = args.seeds or ([0] if args.smoke else [0, 1, 2, 3, 4])
    args.trials = args.trials or (8 if args.smoke else spec.trials)
    args.out = args.out or (OUT if args.objective == "resnet56" else
                            RESULTS / f"peers_{args.objective.replace('-', '_')}.json")
    if args.smoke:
        args.work = args.work / "smoke"
        # not an objective's: the smoke makes its own
        args.prunetune_from = args.prunetune_from or (
            args.work / f"search_efficiency-smoke-t{args.trials}.json")
    args.prunetune_from = args.prunetune_from or spec.out
    if not args.report:
        _run_all(args, problem, methods)
    if not args.out.is_file():
        raise SystemExit(f"{args.out} does not exist: run the benchmark first")
    return report(args.out, args.prunetune_from, args.trials)


if __name__ == "__main__":
    main()
