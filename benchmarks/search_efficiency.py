"""Search efficiency: BOCR (BO with clustering and roll-back) and the RL searcher against
random search, the uniform-ratio baseline and plain BO, on real pruning.

    python benchmarks/search_efficiency.py [--seeds 0 1 2 3 4] [--trials 200]
        [--methods random,uniform,bo-full,bo-clustered,bo-rollback] [--val-subset 500]
        [--threads 1] [--report]
    python benchmarks/search_efficiency.py --seeds 0 1 2 --methods rl,rl-transfer,rl-transfer-budget
    python benchmarks/search_efficiency.py --suggest-cost 300   # BO's suggest at d = 60, n <= 300

RL methods: `rl` (AMC's DDPG from scratch), `rl-transfer` (warm-started from an RL search on
ResNet-20, same recipe), `rl-transfer-budget` (from an RL search on this ResNet-56 at a 70%
FLOPs budget), `rl-transfer-explore` (from ResNet-20, exploring like a fresh agent), and
`rl-gnn` (from scratch, with the graph-network state); `rl-relative`, `rl-transfer-relative`
and `rl-transfer-budget-relative` are the same with budget-relative actions. The source
searches run once per recipe (seed 100, 200 episodes) and are kept in --work. Runs named
`*-v1` in the results are of the agent up to commit 34d1dbe (AMC's moving-baseline rewards
stored in the buffer), whose code is gone; they are kept as a record, not rerun.
The summary's "transfer" compares, per seed, the episodes each needs to reach 99% of plain
RL's best reward (and reports two looser readings beside it, see `transfer_speedup`).

Objective (as AMC and BOCR): ResNet-56 pretrained on Fashion-MNIST, channel pruning under a
50% FLOPs budget (every decoded policy meets it), reward = validation accuracy of the pruned
model *without fine-tuning* (no weight is updated) on a fixed validation subset. BatchNorm
statistics are re-estimated on a fixed batch of training images first ("adaptive BN",
EagleEye, ECCV 2020): without it every pruned policy of this model scored at chance (9-16%
measured for random and uniform policies), a flat landscape no searcher can climb. The
searchers run directly (no Ray): suggest, evaluate the suggested policy, report
`{"accuracy": r, "final": True}`.

Writes benchmarks/results/search_efficiency.json, `{"objective": {...}, "runs": [{"method",
"seed", "rewards", "suggest_s", ...}], "summary": {...}}`, and search_efficiency.png (best
reward so far, mean over seeds). Resumable: finished (method, seed) runs are kept and skipped,
and a run in progress is checkpointed (searcher state included) every few trials, so the
script can be killed and started again with the same arguments.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _efficiency_checks import pareto_check, suggest_cost_check
from _efficiency_methods import (
    BUDGET,
    CLUSTER_GROUPS,
    DEFAULT_METHODS,
    DEFAULT_TRIALS,
    MAIN_METHODS,
    METHODS,
    OBJECTIVES,
    PRETRAIN_DATA,
    PRETRAIN_MODEL,
    PRETRAIN_TRAIN,
    RL_METHODS,
    ROLLBACK,
    SOURCE_SEED,
    SOURCE_TRIALS,
    SOURCES,
    Method,
)
from _efficiency_report import (
    plot,
    summarise,
)
from _machine import machine_info, restore_dense_models

from prunetune.files import atomic_write_json
from prunetune.orchestrator.config import PrunetuneConfig
from prunetune.orchestrator.searchers import make_searcher
from prunetune.orchestrator.spaces import space_from_analysis
from prunetune.orchestrator.stages import baseline_start_policies
from prunetune.search_spaces import Budget, Policy, PruningSpace, analyze
from prunetune.trainers import (
    DataConfig,
    FinetuneConfig,
    ModelConfig,
    TrainConfig,
    default_cache_dir,
    evaluate,
    load_data,
    pretrain_dense,
    prune_and_evaluate,
)


class Objective:
    """Reward of a pruning policy: what a prunetune trial with `finetune.epochs: 0` reports,
    the validation accuracy of the pruned model after BatchNorm calibration, no fine-tuning
    (`prunetune.trainers.prune_and_evaluate`, the one path trials, apply and promote take).

    The validation split is cut to `val_subset` images of the pretraining's validation split
    (never trained on); BatchNorm statistics are re-estimated on the first `bn_calib` training
    images (`finetune.bn_calibration`). Rewards of identical policies are cached (BO may
    propose a point twice once the box is narrow)."""

    def __init__(self, val_subset: int, *, bn_calib: int = 256, cache_size: int = 4096,
                 model: ModelConfig = PRETRAIN_MODEL, budget: Budget = BUDGET,
                 data: DataConfig = PRETRAIN_DATA, pretrain: TrainConfig = PRETRAIN_TRAIN
                 ) -> None:
        self.model, self.budget = model, budget
        self.data_cfg, self.pretrain_cfg = data, pretrain
        restore_dense_models()  # a new machine's empty cache: the committed dense models
        pre = pretrain_dense(model, data, pretrain)
        self.pretrain_metrics = pre.metrics
        self.dense = pre.model.eval()
        self.data = load_data(data.model_copy(update={"val_subset": val_subset}))
        self.proxy = FinetuneConfig(epochs=0, bn_calibration=bn_calib, device="cpu")
        self.bn_calib = bn_calib
        self.example = self.data.example_input(1)
        self.analysis = analyze(self.dense, self.example)
        self.val_subset = len(self.data.val)
        # dense: its own trained statistics
        self.dense_accuracy = evaluate(self.dense, self.data.loader("val")).accuracy
        self._cache: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._cache_size = cache_size
        self.eval_s: list[float] = []

    def space(self, grouping: str, budget: Budget | None | str = "objective",
              scheme_search: bool = False) -> PruningSpace:
        n_groups = None if grouping == "full" else CLUSTER_GROUPS
        schemes = ("channel", "block") if scheme_search else ("channel",)
        return PruningSpace(None, budget=self.budget if budget == "objective" else budget,
                            n_groups=n_groups, analysis=self.analysis, schemes=schemes,
                            scheme_search=scheme_search, device="cpu")

    @staticmethod
    def config_for(method: Method, model: ModelConfig, budget: Budget) -> PrunetuneConfig:
        """The config a user would write for `model` under `budget` with `method`'s searcher,
        with the method's overrides."""
        from prunetune.orchestrator.config import apply_overrides

        raw = {"model": {"name": model.name},
               "space": {"budget": {"kind": budget.kind, "keep": budget.keep}},
               "search": {"searcher": method.searcher}}
        return PrunetuneConfig.model_validate(apply_overrides(raw, dict(method.overrides)))

    def default_space(self, method: Method) -> tuple[PruningSpace, PrunetuneConfig]:
        """The space `prunetune search` builds for `method` over this model, and the config."""
        cfg = self.config_for(method, self.model, self.budget)
        return space_from_analysis(cfg, self.analysis), cfg

    def __call__(self, policy_json: str) -> float:
        return self.evaluate(policy_json)[0]

    def evaluate(self, policy_json: str) -> tuple[float, float]:
        """(accuracy, FLOPs of the pruned model / dense FLOPs) of a policy."""
        if policy_json in self._cache:
            self._cache.move_to_end(policy_json)
            return self._cache[policy_json]
        t0 = time.perf_counter()
        scored = prune_and_evaluate(self.dense, Policy.from_json(policy_json), self.data,
                                    self.proxy, seed=0)
        out = (scored.scores["val"].accuracy, scored.cost_metrics()["flops_ratio"])
        self.eval_s.append(time.perf_counter() - t0)
        self._cache[policy_json] = out
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return out

    def describe(self) -> dict[str, Any]:
        clustered = self.space("clustered")
        return {
            "model": self.model.name, "dataset": self.data_cfg.name,
            "pretrain": {"data": self.data_cfg.model_dump(),
                         "train": self.pretrain_cfg.model_dump(),
                         "metrics": self.pretrain_metrics},
            "dense_val_accuracy": self.dense_accuracy,
            "budget": self.budget.to_dict(), "schemes": ["channel"],
            "reward": "validation accuracy without fine-tuning; BatchNorm statistics "
                      "re-estimated on bn_calib training images first (prunetune's "
                      "prune_and_evaluate with finetune.epochs 0)",
            "val_subset": self.val_subset,
            "bn_calib": self.bn_calib, "units": len(clustered.units),
            "clustered_groups": len(clustered.groups), "default_trials": DEFAULT_TRIALS,
            "methods": {k: {"searcher": m.searcher, "grouping": m.grouping,
                            "options": m.options, "overrides": m.overrides}
                        for k, m in METHODS.items()},
        }


# ------------------------------------------------------------------------------------------
# Running, resumably


def _write_json(path: Path, data: Any) -> None:
    """Write atomically: a crash leaves the old file or the new one, never half of one."""
    atomic_write_json(path, data, indent=1)


def _locked(path: Path) -> FileLock:
    """Several benchmark processes (e.g. one per seed group) may share one results file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path.with_name(f".{path.name}.lock"))


# Searcher options added after runs were made, at the default that keeps what those runs did:
# left out of a method's definition, so the runs stay current.
# learn_from_stopped: these runs report every trial as finished; start_policies: the searcher
# alone, as every run here is (the product's path gives it the free baselines).
UNCHANGED_BEHAVIOUR = {("warmup_from", "'actions'"), ("learn_from_stopped", "False"),
                       ("start_policies", "None")}


def method_config(method: str) -> dict[str, Any]:
    """What defines a method's runs; a run made with another definition is redone. For the
    product's defaults that is what they resolve to now (grouping, budget fill, the
    searcher's constructor defaults), so a change of a default makes new runs."""
    m = METHODS[method]
    if m.grouping != "defaults":
        return {"searcher": m.searcher, "grouping": m.grouping, "options": m.options,
                "groups": None if m.grouping == "full" else CLUSTER_GROUPS}
    import inspect
    from dataclasses import asdict

    from prunetune.orchestrator.searchers import RollbackSchedule, searcher_class
    from prunetune.orchestrator.spaces import space_defaults
    from prunetune.search_spaces.clustering import auto_floor

    cfg = Objective.config_for(m, PRETRAIN_MODEL, BUDGET)
    groups, fill = space_defaults(cfg)
    params = inspect.signature(searcher_class(m.searcher).__init__).parameters
    defaults = {k: repr(p.default) for k, p in params.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY and k not in ("space", "seed")
                and (k, repr(p.default)) not in UNCHANGED_BEHAVIOUR}
    if m.searcher == "bo":
        defaults["rollback_schedule"] = repr(asdict(RollbackSchedule()))
    out = {"searcher": m.searcher, "grouping": "defaults", "overrides": m.overrides,
           "groups": groups, "auto_floor_30_units": auto_floor(30), "fill_budget": fill,
           "searcher_defaults": defaults, "options": cfg.search.searcher_options}
    if m.start:  # runs of the searcher alone have no such key
        out["start_from"] = list(cfg.search.start_from)
    return out


def _finished(out: Path, method: str, seed: int, trials: int) -> bool:
    """Whether `out` has a finished run of `method` at `seed` as it is defined now (or of a
    variant that is the same definition: see `_default_aliases`)."""
    if not out.is_file():
        return False
    runs = json.loads(out.read_text())["runs"]
    want = method_config(method)
    return any(r["seed"] == seed and len(r["rewards"]) >= trials and r.get("config")
               and (r["method"] == method and r["config"] == want
                    or METHODS[method].grouping == "defaults"
                    and _same_definition(r["config"], want))
               for r in runs)


def _update(out: Path, objective: dict[str, Any] | None, run: dict[str, Any] | None,
            trials: int) -> dict[str, Any]:
    """Merge `run` (replacing the same method and seed) into the results file under a lock,
    then refresh the summary and the plot. A file of another objective is refused."""
    with _locked(out):
        results = (json.loads(out.read_text()) if out.is_file()
                   else {"objective": None, "runs": []})
        if objective is not None:
            if results["objective"] is not None:
                old, new = _identity(results["objective"]), _identity(objective)
                if old != new:
                    raise SystemExit(f"{out} holds runs of another objective ({old}); this one "
                                     f"is {new}. Use --out for a new file, or the same "
                                     "--val-subset.")
            results["objective"] = objective  # same objective: refresh methods, machine
        if run is not None:
            results["runs"] = [r for r in results["runs"]
                               if not (r["method"] == run["method"]
                                       and r["seed"] == run["seed"])] + [run]
        # Runs of an earlier definition of a method wait here until they are redone.
        current = [r for r in results["runs"] if r["method"] not in METHODS
                   or r.get("config") == method_config(r["method"])]
        current += _default_aliases(results["runs"])
        results["summary"] = summarise(current, trials, default_trials=DEFAULT_TRIALS)
        _write_json(out, results)
        if results["objective"] is not None:
            plot(current, trials, results["objective"], out.with_suffix(".png"),
                 list(METHODS), MAIN_METHODS)
    return results


def _default_aliases(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs listed under another method too, for the seeds it has none of, when they are
    exactly that method's definition now: after a default changed, `X-default` runs made
    before are what `X-default-nofill` is, and `X-default-fill` runs what `X-default` is.
    No run is made twice for one definition."""
    have = {(r["method"], r["seed"]) for r in runs if r.get("config") is not None
            and r["method"] in METHODS and r["config"] == method_config(r["method"])}
    out = []
    for method in (m for m in METHODS if METHODS[m].grouping == "defaults"):
        want = method_config(method)
        for r in runs:
            if ((method, r["seed"]) not in have and r["method"] != method
                    and r.get("config") is not None and _same_definition(r["config"], want)):
                out.append({**r, "method": method, "alias_of": r["method"]})
                have.add((method, r["seed"]))
    return out


def _same_definition(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two resolved method definitions build the same space and searcher (their
    overrides may differ: one may set explicitly what the other gets by default)."""
    return {k: v for k, v in a.items() if k != "overrides"} == {
        k: v for k, v in b.items() if k != "overrides"}


def _identity(objective: dict[str, Any]) -> dict[str, Any]:
    """What makes two objectives the same: the model and how it was pretrained (not how long
    that took), the budget, the reward's images and the dense model's accuracy on them."""
    keys = ("model", "val_subset", "bn_calib", "budget", "dense_val_accuracy")
    pre = objective.get("pretrain") or {}
    metrics = {k: v for k, v in (pre.get("metrics") or {}).items() if k != "wall_s"}
    return {**{k: objective.get(k) for k in keys},
            "pretrain": {"data": pre.get("data"), "train": pre.get("train"),
                         "metrics": metrics}}


def source_search(name: str, obj: Objective, work: Path,
                  options: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """The saved state of transfer source `name` (see SOURCES), searched once with the RL
    `options` and kept in `work`; and a record of it (model, budget, rewards)."""
    model_name, budget = SOURCES[name]
    tag = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:8]
    path = work / "sources" / f"rl-{name}-{tag}-seed{SOURCE_SEED}-t{SOURCE_TRIALS}.json"
    record_path = path.with_suffix(".record.json")
    if path.is_file() and record_path.is_file():
        return path, json.loads(record_path.read_text())
    src = obj if model_name == obj.model.name else Objective(
        obj.val_subset, bn_calib=obj.bn_calib,
        model=ModelConfig(name=model_name))
    searcher = make_searcher("rl", space=src.space("full", budget=budget), metric="accuracy",
                             mode="max", seed=SOURCE_SEED, options=options)
    print(f"transfer source {name}: RL on {model_name} at {budget.keep:.0%} {budget.kind}, "
          f"{SOURCE_TRIALS} episodes", flush=True)
    rewards = []
    for i in range(SOURCE_TRIALS):
        cfg = searcher.suggest(f"source-{i}")
        rewards.append(src(cfg["policy"]))
        searcher.on_trial_complete(f"source-{i}", {"accuracy": rewards[-1], "final": True})
        if (i + 1) % 20 == 0:
            print(f"  source {name}: {i + 1}/{SOURCE_TRIALS} best {max(rewards):.4f}", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    searcher.save(str(path))
    record = {"name": name, "model": model_name, "budget": budget.to_dict(), "options": options,
              "seed": SOURCE_SEED, "dense_val_accuracy": src.dense_accuracy,
              "rewards": rewards}
    _write_json(record_path, record)
    return path, record


def run_one(obj: Objective, method: str, seed: int, trials: int, work: Path,
            checkpoint_every: int = 5) -> dict[str, Any]:
    """One (method, seed) search of `trials` trials, resumed from `work` if checkpointed."""
    m = METHODS[method]
    options, source = dict(m.options), None
    if str(options.get("warm_start", "")).startswith("source:"):
        recipe = {k: v for k, v in options.items() if k != "warm_start"}
        path, source = source_search(options["warm_start"].split(":", 1)[1], obj, work, recipe)
        options["warm_start"] = str(path)
    starts: dict[str, Any] = {}
    if m.grouping == "defaults":  # what `prunetune search` builds from the config
        space, cfg = obj.default_space(m)
        options = dict(cfg.search.searcher_options)
        if m.start:
            starts = baseline_start_policies(list(cfg.search.start_from), space,
                                             lambda: (obj.dense, obj.example), obj.data_cfg,
                                             print)
    else:
        space = obj.space(m.grouping)
    searcher = make_searcher(m.searcher, space=space, metric="accuracy", mode="max", seed=seed,
                             options=options, start_policies=starts)
    config = method_config(method)
    tag = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]
    part = work / f"{method}-{tag}-seed{seed}.json"
    run: dict[str, Any] = {"method": method, "seed": seed, "config": config, "rewards": [],
                           "suggest_s": [], "suggest_cpu_s": [], "dim": [], "stage": [],
                           "flops_ratio": [], "wall_s": 0.0}
    if source is not None:
        run["source"] = source
    if part.is_file():
        saved = json.loads(part.read_text())
        searcher.set_state(saved.pop("searcher"))
        run = saved
    t_start = time.perf_counter() - run["wall_s"]
    for i in range(len(run["rewards"]), trials):
        tid = f"{method}-{seed}-{i}"
        # Wall time is what Tune waits for; CPU time is what the searcher costs regardless of
        # how loaded the shared machine is (the two differ several-fold on 2 busy cores).
        t0, c0 = time.perf_counter(), time.process_time()
        cfg = searcher.suggest(tid)
        run["suggest_s"].append(time.perf_counter() - t0)
        run["suggest_cpu_s"].append(time.process_time() - c0)
        if cfg is None:
            raise RuntimeError(f"{method} returned no suggestion for trial {i}")
        reward, flops = obj.evaluate(cfg["policy"])
        searcher.on_trial_complete(tid, {"accuracy": reward, "final": True})
        if cfg.get("start_from"):  # a free baseline, run verbatim: which trial it was
            run.setdefault("start_trials", {})[cfg["start_from"]] = i
        run["rewards"].append(reward)
        run["flops_ratio"].append(flops)
        run["dim"].append(cfg["dim"])
        run["stage"].append(cfg["stage"])
        run["wall_s"] = time.perf_counter() - t_start
        if (i + 1) % checkpoint_every == 0 or i + 1 == trials:
            _write_json(part, {**run, "searcher": searcher.get_state()})
        if (i + 1) % 10 == 0:
            print(f"  {method} seed {seed}: {i + 1}/{trials} best {max(run['rewards']):.4f} "
                  f"dim {cfg['dim']} suggest {run['suggest_s'][-1]:.2f}s "
                  f"({run['wall_s']:.0f}s)", flush=True)
    return run


# ------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objective", choices=sorted(OBJECTIVES), default="resnet56",
                        help="the pruning problem (model, FLOPs budget, results file)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--trials", type=int, default=None,
                        help="trials per run (default: the objective's, 200 or 150)")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"comma-separated, from {', '.join(METHODS)} (the RL ones: "
                             f"{','.join(RL_METHODS)})")
    parser.add_argument("--val-subset", type=int, default=None,
                        help="validation images the reward is measured on (default: the "
                             "objective's, 500 or 3000)")
    parser.add_argument("--bn-calib", type=int, default=256,
                        help="training images BatchNorm statistics are re-estimated on "
                             "(0: keep the dense model's statistics)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is fastest on a shared, loaded machine)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results file (default: the objective's)")
    parser.add_argument("--work", type=Path,
                        default=default_cache_dir() / "search_efficiency",
                        help="checkpoints of runs in progress")
    parser.add_argument("--report", action="store_true",
                        help="only recompute the summary and plot from --out")
    parser.add_argument("--pareto", type=int, default=0, metavar="TRIALS",
                        help="run only the multi-objective check with this many trials "
                             "(writes search_efficiency_pareto.json / .png)")
    parser.add_argument("--suggest-cost", type=int, default=0, metavar="TRIALS",
                        help="run only the searcher-cost check at d = 60 with this many trials "
                             "(writes search_efficiency_suggest_cost.json)")
    args = parser.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    torch.set_num_threads(args.threads)
    spec = OBJECTIVES[args.objective]
    args.out = args.out or spec.out
    args.trials = args.trials or spec.trials
    args.val_subset = args.val_subset or spec.val_subset

    def objective() -> Objective:
        return Objective(args.val_subset, bn_calib=args.bn_calib, model=spec.model,
                         budget=spec.budget, data=spec.data, pretrain=spec.pretrain)

    if args.suggest_cost:
        obj = objective()
        res = suggest_cost_check(obj, args.suggest_cost, args.seeds[0],
                                 args.out.with_name(args.out.stem + "_suggest_cost.json"))
        print(json.dumps({k: res[k] for k in ("dim", "suggest_s", "last_100", "targets")},
                         indent=1))
        return
    if args.pareto:
        obj = objective()
        res = pareto_check(obj, args.pareto, args.seeds[0],
                           args.out.with_name(args.out.stem + "_pareto.json"),
                           rollback=ROLLBACK, groups=CLUSTER_GROUPS)
        print(json.dumps(res["budgets"], indent=1))
        return

    if not args.report:
        obj = objective()
        described = {**obj.describe(), "threads": args.threads, "machine": machine_info()}
        _update(args.out, described, None, args.trials)  # refuses another objective's file
        print(f"dense val accuracy {obj.dense_accuracy:.4f} on {obj.val_subset} images; "
              f"{described['units']} units, {described['clustered_groups']} groups", flush=True)
        work = args.work / (f"{spec.work_prefix}{spec.model.name}-keep{spec.budget.keep:g}-"
                            f"val{obj.val_subset}-bn{args.bn_calib}-t{args.trials}")
        for seed in args.seeds:  # seed-major: an interrupted benchmark has whole seeds
            for method in methods:
                if _finished(args.out, method, seed, args.trials):
                    continue
                print(f"{method} seed {seed}", flush=True)
                obj.eval_s = []
                run = run_one(obj, method, seed, args.trials, work)
                run["eval_s_mean"] = float(np.mean(obj.eval_s)) if obj.eval_s else None
                _update(args.out, described, run, args.trials)
    results = _update(args.out, None, None, args.trials)
    print(json.dumps(results["summary"], indent=1))


if __name__ == "__main__":
    main()
